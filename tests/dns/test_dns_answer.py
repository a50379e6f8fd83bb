"""Answer synthesis, record form by record form: what a client would find in each section."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netplane.dns.answer import NOERROR, NXDOMAIN, SERVFAIL, Answer, answer
from netplane.dns.zone import (
    AAAA,
    ANY,
    CNAME,
    HINFO,
    NS,
    PTR,
    SOA,
    SRV,
    TXT,
    A,
    Srv,
    Zone,
    dashed,
    reverse_zones,
    undashed,
)

from netplane.model import ObjectKey, parse_object
from netplane.service_table import ServiceEntry, build_entry

SERVICE_CIDRS = (ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00:96::/112"))
POD_CIDR = ipaddress.ip_network("10.244.0.0/16")


def service(name: str, ns: str = "demo", **spec: object) -> dict:
    spec.setdefault("ports", [{"name": "http", "port": 80}])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def endpoint_slice(svc: str, endpoints: list[dict], ns: str = "demo", port: int = 8080) -> dict:
    family = "IPv6" if ":" in endpoints[0]["addresses"][0] else "IPv4"
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-1",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": family,
        "ports": [{"name": "http", "port": port}],
        "endpoints": endpoints,
    }


def entry(svc: dict, *slices: dict) -> ServiceEntry:
    return build_entry(parse_object(svc), [parse_object(s) for s in slices])


def zone_with(*entries: ServiceEntry, pods: str = "disabled") -> Zone:
    z = Zone(
        "cluster.local",
        ttl=5,
        reverse_cidrs=(*SERVICE_CIDRS, POD_CIDR),
        pods=pods,
        ns_addresses=("10.96.0.10",),
    )
    for e in entries:
        z.update_service(e.key, e)
    z.ready = True
    return z


def ask(z: Zone, name: str, qtype: int = A) -> Answer:
    ans = answer(z, name, qtype)
    assert ans is not None, f"{name} is not in the zone"
    return ans


def rdatas(ans: Answer, section: str = "answer") -> list[tuple[str, int, object]]:
    return [(rr.name, rr.rtype, rr.rdata) for rr in getattr(ans, section)]


WEB = entry(service("web", clusterIP="10.96.0.20"))
DUAL = entry(
    service(
        "dual",
        clusterIPs=["10.96.0.30", "fd00:96::30"],
        ipFamilies=["IPv4", "IPv6"],
        ports=[{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}],
    )
)
HEADLESS = entry(
    service("db", clusterIP="None", ports=[{"name": "http", "port": 80}]),
    endpoint_slice(
        "db",
        [
            {"addresses": ["10.244.0.5"], "hostname": "db-0"},
            {"addresses": ["10.244.0.6"], "hostname": "db-1"},
            {"addresses": ["10.244.0.7"], "hostname": "db-2", "conditions": {"ready": False}},
        ],
    ),
)
BARE = entry(
    service("cache", clusterIP="None"),
    endpoint_slice("cache", [{"addresses": ["10.244.1.5"]}, {"addresses": ["10.244.1.6"]}]),
)


def test_clusterip_a_record_and_the_negative_answers_around_it() -> None:
    z = zone_with(WEB)
    ans = ask(z, "web.demo.svc.cluster.local")
    assert ans.rcode == NOERROR and ans.authoritative
    assert rdatas(ans) == [("web.demo.svc.cluster.local", A, "10.96.0.20")]
    assert [rr.ttl for rr in ans.answer] == [5]
    assert ans.authority == ()

    # the name exists without AAAA: NODATA with the SOA
    nodata = ask(z, "web.demo.svc.cluster.local", AAAA)
    assert nodata.rcode == NOERROR and nodata.answer == ()
    assert [(rr.name, rr.rtype) for rr in nodata.authority] == [("cluster.local", SOA)]
    assert nodata.authority[0].ttl == 5

    # no such service: NXDOMAIN with the SOA
    nx = ask(z, "nope.demo.svc.cluster.local")
    assert nx.rcode == NXDOMAIN and nx.answer == ()
    assert [(rr.name, rr.rtype) for rr in nx.authority] == [("cluster.local", SOA)]

    # names above a service exist (empty non-terminals): NODATA, not NXDOMAIN
    for name in ("demo.svc.cluster.local", "svc.cluster.local"):
        ans = ask(z, name)
        assert (ans.rcode, ans.answer) == (NOERROR, ()), name
        assert ans.authority[0].rtype == SOA
    assert ask(z, "other.svc.cluster.local").rcode == NXDOMAIN
    assert ask(z, "x.web.demo.svc.cluster.local").rcode == NXDOMAIN


def test_the_query_case_is_kept_in_the_answer() -> None:
    ans = ask(zone_with(WEB), "WeB.Demo.SVC.cluster.LOCAL")
    assert rdatas(ans) == [("WeB.Demo.SVC.cluster.LOCAL", A, "10.96.0.20")]


def test_dual_stack_a_aaaa_srv_with_additional_and_ptr_both_families() -> None:
    z = zone_with(DUAL)
    name = "dual.demo.svc.cluster.local"
    assert rdatas(ask(z, name)) == [(name, A, "10.96.0.30")]
    assert rdatas(ask(z, name, AAAA)) == [(name, AAAA, "fd00:96::30")]

    srv = ask(z, f"_http._tcp.{name}", SRV)
    assert rdatas(srv) == [(f"_http._tcp.{name}", SRV, Srv(0, 100, 80, name))]
    assert rdatas(srv, "additional") == [(name, A, "10.96.0.30"), (name, AAAA, "fd00:96::30")]
    udp = ask(z, f"_dns._udp.{name}", SRV)
    assert rdatas(udp) == [(f"_dns._udp.{name}", SRV, Srv(0, 100, 53, name))]
    assert ask(z, f"_dns._tcp.{name}", SRV).rcode == NXDOMAIN  # the port is UDP
    # the SRV name exists, so other types there are NODATA
    assert (ask(z, f"_http._tcp.{name}", A).rcode, ask(z, f"_http._tcp.{name}", A).answer) == (
        NOERROR,
        (),
    )
    assert ask(z, f"_tcp.{name}").rcode == NOERROR  # an empty non-terminal

    assert rdatas(ask(z, "30.0.96.10.in-addr.arpa", PTR)) == [
        ("30.0.96.10.in-addr.arpa", PTR, name)
    ]
    v6 = ipaddress.ip_address("fd00:96::30").reverse_pointer
    assert v6.startswith("0.3.0.0.0.0.0.0.") and v6.endswith(".6.9.0.0.0.0.d.f.ip6.arpa")
    assert len(v6.split(".")) == 34  # 32 nibbles + ip6.arpa
    assert rdatas(ask(z, v6, PTR)) == [(v6, PTR, name)]
    # an address of the reverse zone that no one holds
    nx = ask(z, "31.0.96.10.in-addr.arpa", PTR)
    assert nx.rcode == NXDOMAIN and nx.authority[0].name == "96.10.in-addr.arpa"


def test_unnamed_ports_have_no_srv() -> None:
    z = zone_with(entry(service("one", clusterIP="10.96.0.40", ports=[{"port": 80}])))
    assert ask(z, "one.demo.svc.cluster.local").answer
    assert ask(z, "_tcp.one.demo.svc.cluster.local", SRV).rcode == NXDOMAIN
    assert ask(z, "__tcp.one.demo.svc.cluster.local", SRV).rcode == NXDOMAIN


def test_headless_with_hostnames() -> None:
    z = zone_with(HEADLESS)
    base = "db.demo.svc.cluster.local"
    # every ready endpoint; the not-ready one is left out
    assert rdatas(ask(z, base)) == [(base, A, "10.244.0.5"), (base, A, "10.244.0.6")]
    assert rdatas(ask(z, f"db-0.{base}")) == [(f"db-0.{base}", A, "10.244.0.5")]
    assert ask(z, f"db-2.{base}").rcode == NXDOMAIN

    srv = ask(z, f"_http._tcp.{base}", SRV)
    assert rdatas(srv) == [
        (f"_http._tcp.{base}", SRV, Srv(0, 50, 8080, f"db-0.{base}")),
        (f"_http._tcp.{base}", SRV, Srv(0, 50, 8080, f"db-1.{base}")),
    ]
    assert rdatas(srv, "additional") == [
        (f"db-0.{base}", A, "10.244.0.5"),
        (f"db-1.{base}", A, "10.244.0.6"),
    ]
    # PTR for endpoints with a hostname, inside a reverse zone (the pod CIDR here)
    assert rdatas(ask(z, "5.0.244.10.in-addr.arpa", PTR)) == [
        ("5.0.244.10.in-addr.arpa", PTR, f"db-0.{base}")
    ]


def test_headless_without_hostnames_uses_dashed_addresses_and_has_no_ptr() -> None:
    z = zone_with(BARE)
    base = "cache.demo.svc.cluster.local"
    assert rdatas(ask(z, f"10-244-1-5.{base}")) == [(f"10-244-1-5.{base}", A, "10.244.1.5")]
    assert ask(z, "5.1.244.10.in-addr.arpa", PTR).rcode == NXDOMAIN
    srv = ask(z, f"_http._tcp.{base}", SRV)
    assert [rr.rdata.target for rr in srv.answer] == [f"10-244-1-5.{base}", f"10-244-1-6.{base}"]


def test_headless_without_ready_endpoints_is_nxdomain_unless_not_ready_ones_are_published() -> None:
    eps = [{"addresses": ["10.244.2.5"], "conditions": {"ready": False}}]
    z = zone_with(entry(service("q", clusterIP="None"), endpoint_slice("q", eps)))
    assert ask(z, "q.demo.svc.cluster.local").rcode == NXDOMAIN
    published = entry(
        service("q", clusterIP="None", publishNotReadyAddresses=True), endpoint_slice("q", eps)
    )
    z = zone_with(published)
    assert rdatas(ask(z, "q.demo.svc.cluster.local")) == [
        ("q.demo.svc.cluster.local", A, "10.244.2.5")
    ]


def test_headless_ipv6_endpoints() -> None:
    eps = [{"addresses": ["fd00:244::5"], "hostname": "v6"}]
    z = zone_with(entry(service("six", clusterIP="None"), endpoint_slice("six", eps)))
    assert rdatas(ask(z, "six.demo.svc.cluster.local", AAAA)) == [
        ("six.demo.svc.cluster.local", AAAA, "fd00:244::5")
    ]
    assert ask(z, "six.demo.svc.cluster.local", A).answer == ()
    assert dashed("fd00:244::5") == "fd00-244--5" and undashed("fd00-244--5") == "fd00:244::5"


def test_externalname_is_a_cname_followed_inside_the_cluster_only() -> None:
    outside = entry(service("ext", type="ExternalName", externalName="db.example.com.", ports=[]))
    inside = entry(
        service("alias", type="ExternalName", externalName="web.demo.svc.cluster.local", ports=[])
    )
    z = zone_with(WEB, outside, inside)
    ans = ask(z, "ext.demo.svc.cluster.local")
    assert rdatas(ans) == [("ext.demo.svc.cluster.local", CNAME, "db.example.com")]
    ans = ask(z, "alias.demo.svc.cluster.local")
    assert rdatas(ans) == [
        ("alias.demo.svc.cluster.local", CNAME, "web.demo.svc.cluster.local"),
        ("web.demo.svc.cluster.local", A, "10.96.0.20"),
    ]
    assert "web.demo.svc.cluster.local" in ans.touched
    # asked for the CNAME itself: only the CNAME
    assert rdatas(ask(z, "alias.demo.svc.cluster.local", CNAME)) == [
        ("alias.demo.svc.cluster.local", CNAME, "web.demo.svc.cluster.local")
    ]
    # the target has no AAAA: the chain, then NODATA with the SOA
    ans = ask(z, "alias.demo.svc.cluster.local", AAAA)
    assert ans.rcode == NOERROR and [rr.rtype for rr in ans.answer] == [CNAME]
    assert ans.authority[0].rtype == SOA


def test_txt_dns_version_soa_and_ns_at_the_apex() -> None:
    z = zone_with(WEB)
    assert rdatas(ask(z, "dns-version.cluster.local", TXT)) == [
        ("dns-version.cluster.local", TXT, "1.1.0")
    ]
    soa = ask(z, "cluster.local", SOA).answer[0].rdata
    assert (soa.mname, soa.rname, soa.minimum) == (
        "ns.dns.cluster.local",
        "hostmaster.cluster.local",
        5,
    )
    ns = ask(z, "cluster.local", NS)
    assert rdatas(ns) == [("cluster.local", NS, "ns.dns.cluster.local")]
    assert rdatas(ns, "additional") == [("ns.dns.cluster.local", A, "10.96.0.10")]
    # the kube-dns Service's address wins over the configured one
    z.update_service(
        ("kube-system", "kube-dns"),
        entry(service("kube-dns", "kube-system", clusterIP="10.96.0.53")),
    )
    assert rdatas(ask(z, "cluster.local", NS), "additional") == [
        ("ns.dns.cluster.local", A, "10.96.0.53")
    ]
    nodata = ask(z, "dns.cluster.local")  # above the NS host: NODATA, not NXDOMAIN
    assert (nodata.rcode, nodata.answer) == (NOERROR, ())
    # the reverse zones have their own apex
    assert ask(z, "96.10.in-addr.arpa", SOA).answer[0].name == "96.10.in-addr.arpa"


def test_any_gets_one_hinfo_record() -> None:
    ans = ask(zone_with(WEB), "web.demo.svc.cluster.local", ANY)
    assert rdatas(ans) == [("web.demo.svc.cluster.local", HINFO, ("RFC8482", ""))]


@pytest.mark.parametrize(
    ("mode", "name", "rcode", "records"),
    [
        ("disabled", "10-244-0-9.demo.pod.cluster.local", NXDOMAIN, []),
        ("insecure", "10-244-0-9.demo.pod.cluster.local", NOERROR, ["10.244.0.9"]),
        ("insecure", "10-1-2-3.anything.pod.cluster.local", NOERROR, ["10.1.2.3"]),
        ("insecure", "not-an-ip.demo.pod.cluster.local", NXDOMAIN, []),
        ("verified", "10-244-0-9.demo.pod.cluster.local", NOERROR, ["10.244.0.9"]),
        ("verified", "10-244-0-9.other.pod.cluster.local", NXDOMAIN, []),
        ("verified", "10-244-0-8.demo.pod.cluster.local", NXDOMAIN, []),
        ("verified", "demo.pod.cluster.local", NOERROR, []),
    ],
)
def test_pod_records_in_each_mode(mode: str, name: str, rcode: int, records: list[str]) -> None:
    z = zone_with(pods=mode)
    pod = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "demo"},
            "status": {"podIP": "10.244.0.9"},
        }
    )
    changed = z.update_pod(pod.key, pod)
    assert "10-244-0-9.demo.pod.cluster.local" in changed
    ans = ask(z, name)
    assert ans.rcode == rcode
    assert [rr.rdata for rr in ans.answer] == records


def test_verified_pod_record_goes_with_the_pod() -> None:
    z = zone_with(pods="verified")
    pod = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "demo"},
            "status": {"podIP": "10.244.0.9"},
        }
    )
    z.update_pod(pod.key, pod)
    assert ask(z, "10-244-0-9.demo.pod.cluster.local").answer
    z.update_pod(ObjectKey("Pod", "demo", "p"), None)
    assert ask(z, "10-244-0-9.demo.pod.cluster.local").rcode == NXDOMAIN


def test_outside_names_are_not_ours_and_an_unsynced_zone_says_servfail() -> None:
    z = zone_with(WEB)
    assert answer(z, "example.com", A) is None
    assert answer(z, "1.0.0.192.in-addr.arpa", PTR) is None  # outside the reverse CIDRs
    z.ready = False
    ans = ask(z, "web.demo.svc.cluster.local")
    assert ans.rcode == SERVFAIL and not ans.cacheable


def test_a_change_re_derives_one_service_and_reports_the_names_it_touched() -> None:
    z = zone_with(WEB, HEADLESS)
    moved = entry(
        service("db", clusterIP="None", ports=[{"name": "http", "port": 80}]),
        endpoint_slice("db", [{"addresses": ["10.244.0.5"], "hostname": "db-0"}]),
    )
    changed = z.update_service(moved.key, moved)
    base = "db.demo.svc.cluster.local"
    assert {base, f"db-1.{base}", f"_http._tcp.{base}", "6.0.244.10.in-addr.arpa"} <= changed
    assert "web.demo.svc.cluster.local" not in changed
    assert ask(z, f"db-1.{base}").rcode == NXDOMAIN
    # the last service of a namespace goes: its empty non-terminals go too
    z.update_service(WEB.key, None)
    z.update_service(moved.key, None)
    assert ask(z, "demo.svc.cluster.local").rcode == NXDOMAIN
    assert z.names == 0


def test_two_services_sharing_a_pod_address_share_its_ptr() -> None:
    a = entry(
        service("a", clusterIP="None"),
        endpoint_slice("a", [{"addresses": ["10.244.3.3"], "hostname": "h"}]),
    )
    b = entry(
        service("b", clusterIP="None"),
        endpoint_slice("b", [{"addresses": ["10.244.3.3"], "hostname": "h"}]),
    )
    z = zone_with(a, b)
    name = "3.3.244.10.in-addr.arpa"
    assert sorted(rr.rdata for rr in ask(z, name, PTR).answer) == [
        "h.a.demo.svc.cluster.local",
        "h.b.demo.svc.cluster.local",
    ]
    z.update_service(a.key, None)
    assert [rr.rdata for rr in ask(z, name, PTR).answer] == ["h.b.demo.svc.cluster.local"]


def test_reverse_zones_follow_label_boundaries() -> None:
    assert reverse_zones([ipaddress.ip_network("10.96.0.0/12")]) == [
        f"{i}.10.in-addr.arpa" for i in range(96, 112)
    ]
    assert reverse_zones([ipaddress.ip_network("127.77.0.0/16")]) == ["77.127.in-addr.arpa"]
    v6 = reverse_zones([ipaddress.ip_network("fd00:96::/110")])
    assert len(v6) == 4
    assert [name.split(".", 1)[0] for name in v6] == ["0", "1", "2", "3"]
    for name in v6:
        assert name.endswith(".6.9.0.0.0.0.d.f.ip6.arpa") and len(name.split(".")) == 28 + 2


def _headless(name: str, hosts: list[tuple[str, str]], ns: str = "demo") -> ServiceEntry:
    eps = [{"addresses": [ip], "hostname": h} if h else {"addresses": [ip]} for ip, h in hosts]
    return entry(
        service(name, ns=ns, clusterIP="None"), *([endpoint_slice(name, eps, ns)] if eps else [])
    )


# A pool of versions per service: headless ones sharing pod addresses (so
# PTR names with several owners), ClusterIP ones, and None (deleted).
_POOL: dict[str, list[ServiceEntry | None]] = {
    "a": [
        None,
        _headless("a", [("10.244.3.3", "h"), ("10.244.3.4", "")]),
        _headless("a", [("10.244.3.4", "h")]),
    ],
    "b": [
        None,
        _headless("b", [("10.244.3.3", "h")]),
        _headless("b", [("10.244.3.3", "h"), ("10.244.3.4", "h2")]),
    ],
    "c": [
        None,
        entry(service("c", clusterIP="10.96.0.40")),
        entry(service("c", ns="other", clusterIP="10.96.0.41")),
    ],
}


def _every_name(z: Zone) -> dict[str, object]:
    return {n: z.lookup(n) for n in z._names}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(_POOL)), st.integers(0, 2)), max_size=12))
def test_any_sequence_of_changes_leaves_the_zone_a_fresh_build_would_give(
    steps: list[tuple[str, int]],
) -> None:
    z = zone_with()
    current: dict[str, ServiceEntry | None] = {}
    for name, version in steps:
        e = _POOL[name][version]
        key = ("demo", name)
        # a service that moves namespace is a delete here and an add there
        old = current.get(name)
        if old is not None and e is not None and old.key != e.key:
            z.update_service(old.key, None)
        z.update_service(e.key if e is not None else (old.key if old else key), e)
        current[name] = e
    fresh = zone_with(*(e for e in current.values() if e is not None))
    assert _every_name(z) == _every_name(fresh)
    assert z._ent == fresh._ent
    fresh.serial = z.serial  # the serial counts changes; it is all that may differ
    for qname in [
        "h.a.demo.svc.cluster.local",
        "3.3.244.10.in-addr.arpa",
        "demo.svc.cluster.local",
    ]:
        for qtype in (A, PTR):
            assert answer(z, qname, qtype) == answer(fresh, qname, qtype)


def test_names_of_many_services_are_derived_again_when_asked() -> None:
    # More services than the zone keeps derived: each still answers right.
    entries = [entry(service(f"s{i}", clusterIP=f"10.96.1.{i + 1}")) for i in range(200)]
    z = zone_with(*entries)
    for i in (0, 77, 199, 0):
        ans = ask(z, f"s{i}.demo.svc.cluster.local")
        assert rdatas(ans) == [(f"s{i}.demo.svc.cluster.local", A, f"10.96.1.{i + 1}")]
        srv = ask(z, f"_http._tcp.s{i}.demo.svc.cluster.local", SRV)
        assert [rr.rdata.target for rr in srv.answer] == [f"s{i}.demo.svc.cluster.local"]
        assert rdatas(srv, "additional") == [
            (f"s{i}.demo.svc.cluster.local", A, f"10.96.1.{i + 1}")
        ]
    assert z.names == 600  # A, SRV and PTR names of each
