"""Property: the DNS zone kept up change by change is the zone a fresh build gives (issue 17).

Random histories of Service (ClusterIP, dual-stack, headless, ExternalName,
named and unnamed ports over TCP/UDP/SCTP), EndpointSlice (hostnames,
ready or not, IPv4 and IPv6) and Pod changes go through ClusterState and
the ServiceTable, and into a :class:`DnsPlane` the way the Dataplane's
change stream feeds it (``DnsPlane.apply`` with the changed services and
pods): the incremental path, answer cache and all. After every step a
zone built from scratch over the same table (``update_service`` for each
entry, ``update_pod`` for each pod) must hold the same names, the same
empty non-terminals, the same records per name, and give byte-identical
replies to a set of probe questions -- the live side through its answer
cache (``AnswerCache.reply``, then ``Responder.handle``, as the UDP server
does), so a stale cached reply is a failure too.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import dns.message
import dns.rdatatype
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netplane.dns.plane import DnsPlane, DnsSettings
from netplane.dns.responder import Allow, Responder
from netplane.dns.zone import Zone

from netplane.allocations import Allocations
from netplane.events import WatchEvent
from netplane.model import ObjectKey, Pod, parse_object
from netplane.service_table import ServiceTable
from netplane.state import ClusterState

DOMAIN = "cluster.local"
SERVICE_V4 = ipaddress.ip_network("10.96.0.0/16")
SERVICE_V6 = ipaddress.ip_network("fd00:96::/112")
POD_V4 = ipaddress.ip_network("10.244.0.0/16")
REVERSE = (SERVICE_V4, SERVICE_V6, POD_V4)
TTL = 7

NAMESPACES = ["demo", "other"]
SERVICES = ["web", "db", "ext"]
POD_IPS = ["10.244.1.1", "10.244.1.2", "10.244.2.1", "fd00:244::1"]


# -- cluster objects ---------------------------------------------------------------------


def _port(draw, i: int) -> dict:  # type: ignore[no-untyped-def]
    p: dict[str, Any] = {"port": draw(st.sampled_from([53, 80, 443, 8080])) + i}
    name = draw(st.sampled_from(["http", "dns", "grpc-web", None]))
    if name is not None:
        p["name"] = f"{name}{i}" if i else name
    p["protocol"] = draw(st.sampled_from(["TCP", "TCP", "UDP", "SCTP"]))
    return p


@st.composite
def service_raw(draw, ns: str, name: str) -> dict:  # type: ignore[no-untyped-def]
    n = draw(st.integers(1, 3))
    ports = [_port(draw, i) for i in range(n)]
    # port names must be unique when there are several
    if n > 1:
        for i, p in enumerate(ports):
            p["name"] = p.get("name", f"p{i}")
    kind = draw(st.sampled_from(["cluster", "dual", "headless", "external"]))
    idx = SERVICES.index(name) + 10 * NAMESPACES.index(ns) + 1
    spec: dict[str, Any] = {"ports": ports}
    if kind == "cluster":
        spec["clusterIP"] = f"10.96.0.{idx}"
    elif kind == "dual":
        spec["clusterIPs"] = [f"10.96.0.{idx}", f"fd00:96::{idx:x}"]
        spec["ipFamilies"] = ["IPv4", "IPv6"]
        spec["ipFamilyPolicy"] = "RequireDualStack"
    elif kind == "headless":
        spec["clusterIP"] = "None"
        if draw(st.booleans()):
            spec["publishNotReadyAddresses"] = True
    else:
        spec = {
            "type": "ExternalName",
            "externalName": draw(
                st.sampled_from(
                    [
                        "example.com",
                        "mixed.example.org.",
                        f"web.demo.svc.{DOMAIN}",
                        f"gone.demo.svc.{DOMAIN}",
                    ]
                )
            ),
            "ports": ports,
        }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


@st.composite
def slice_raw(draw, ns: str, name: str) -> dict:  # type: ignore[no-untyped-def]
    svc = name.rsplit("-", 1)[0]
    v6 = draw(st.integers(0, 5)) == 0
    eps = []
    for n in draw(st.lists(st.integers(1, 4), max_size=3, unique=True)):
        ep: dict[str, Any] = {
            "addresses": [f"fd00:244::{n}" if v6 else f"10.244.{1 + (n > 2)}.{n}"],
            "conditions": {"ready": draw(st.booleans())},
        }
        hostname = draw(st.sampled_from([None, f"h{n}", "Shared"]))
        if hostname is not None:
            ep["hostname"] = hostname.lower()
        eps.append(ep)
    ports = [
        {"name": pn, "port": pp, "protocol": pr}
        for pn, pp, pr in draw(
            st.lists(
                st.sampled_from(
                    [
                        ("http", 8080, "TCP"),
                        ("dns", 5353, "UDP"),
                        ("grpc-web1", 9090, "TCP"),
                        ("", 8080, "TCP"),
                    ]
                ),
                max_size=2,
                unique_by=lambda t: t[0],
            )
        )
    ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv6" if v6 else "IPv4",
        "ports": ports,
        "endpoints": eps,
    }


def pod_raw(ns: str, name: str, ip: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
    }


@st.composite
def histories(draw, max_steps: int = 12) -> list[tuple[str, Any]]:  # type: ignore[no-untyped-def]
    out: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, max_steps))):
        ns = draw(st.sampled_from(NAMESPACES))
        what = draw(st.integers(0, 9))
        if what <= 3:
            name = draw(st.sampled_from(SERVICES))
            if draw(st.integers(0, 3)) == 0:
                out.append(("delete", ObjectKey("Service", ns, name)))
            else:
                out.append(("apply", draw(service_raw(ns, name))))
        elif what <= 7:
            name = draw(st.sampled_from([f"{s}-{i}" for s in SERVICES for i in "ab"]))
            if draw(st.integers(0, 3)) == 0:
                out.append(("delete", ObjectKey("EndpointSlice", ns, name)))
            else:
                out.append(("apply", draw(slice_raw(ns, name))))
        else:
            name = draw(st.sampled_from(["p1", "p2"]))
            if draw(st.booleans()):
                out.append(("delete", ObjectKey("Pod", ns, name)))
            else:
                out.append(("apply", pod_raw(ns, name, draw(st.sampled_from(POD_IPS)))))
    return out


class Cluster:
    """A state and a service table, moved on one event at a time as the Dataplane does."""

    def __init__(self) -> None:
        self.state = ClusterState(Allocations([SERVICE_V4, SERVICE_V6]))
        self.sub = self.state.subscribe()
        self.table = ServiceTable()
        self.ready = True

    def step(self, op: str, arg: Any) -> tuple[set, list[ObjectKey]]:
        """Apply one event; the services and pods it changed."""
        if op == "delete":
            self.state.apply(WatchEvent.delete(arg))
        else:
            obj = parse_object(arg)
            assert obj is not None
            r = self.state.apply(WatchEvent.upsert(obj))
            assert r.error is None, r.error
        keys = self.sub.take()
        services = self.table.apply(self.state, keys)
        return services, [k for k in keys if k.kind == "Pod"]


def new_zone(pods: str) -> Zone:
    return Zone(DOMAIN, ttl=TTL, reverse_cidrs=REVERSE, pods=pods, ns_addresses=("10.96.0.10",))


def fresh_zone(c: Cluster, pods: str, serial: int) -> Zone:
    z = new_zone(pods)
    for e in c.table:
        z.update_service(e.key, e)
    for pod in c.state.objects("Pod"):
        assert isinstance(pod, Pod)
        z.update_pod(pod.key, pod)
    z.serial = serial  # the serial counts changes; the only thing that may differ
    z.ready = True
    return z


def probe_names(c: Cluster) -> list[str]:
    names = [
        DOMAIN,
        f"svc.{DOMAIN}",
        f"dns-version.{DOMAIN}",
        f"ns.dns.{DOMAIN}",
        "96.10.in-addr.arpa",
    ]
    for ns in NAMESPACES:
        names.append(f"{ns}.svc.{DOMAIN}")
        names.append(f"{ns}.pod.{DOMAIN}")
        for ip in POD_IPS:
            names.append(f"{ip.replace('.', '-').replace(':', '-')}.{ns}.pod.{DOMAIN}")
        for s in SERVICES:
            base = f"{s}.{ns}.svc.{DOMAIN}"
            names += [base, f"h1.{base}", f"shared.{base}", f"10-244-1-1.{base}"]
            names += [f"_http._tcp.{base}", f"_dns._udp.{base}", f"_grpc-web1._tcp.{base}"]
            i = SERVICES.index(s) + 10 * NAMESPACES.index(ns) + 1
            names.append(ipaddress.ip_address(f"10.96.0.{i}").reverse_pointer)
            names.append(ipaddress.ip_address(f"fd00:96::{i:x}").reverse_pointer)
    for ip in POD_IPS:
        names.append(ipaddress.ip_address(ip).reverse_pointer)
    return names


QTYPES = ["A", "AAAA", "SRV", "PTR", "CNAME", "TXT", "ANY", "NS", "SOA"]


def query(name: str, qtype: str, qid: int = 4321) -> bytes:
    q = dns.message.make_query(name, qtype, use_edns=False)
    q.id = qid
    return q.to_wire()


def _reply(responder: Responder, data: bytes) -> bytes:
    """As the UDP server answers: the answer cache first, then the responder."""
    cached = responder.answers.reply(data)
    if cached is not None:
        return cached
    out = responder.handle(data, "127.0.0.1")
    assert isinstance(out, bytes)
    return out


def _text(rd: object) -> str:
    # A cached negative answer keeps the SOA serial of when it was made: the
    # cache drops an answer when a name it read changes, and the serial moves
    # with every change anywhere. The serial is the one field allowed to lag.
    if getattr(rd, "rdtype", None) == dns.rdatatype.SOA:
        rd = rd.replace(serial=0)  # type: ignore[attr-defined]
    return rd.to_text().lower()  # type: ignore[attr-defined]


def meaning(wire: bytes) -> tuple:
    """A reply as a client reads it: names case-folded, compression and serial aside.

    (A cached reply is the first reply's bytes with the name's case spliced in,
    so its compression can differ from a freshly packed one's; both say the same.)
    """
    m = dns.message.from_wire(wire)

    def section(rrsets: list) -> list:
        return [
            (rrset.name.to_text().lower(), rrset.rdtype, rrset.ttl, _text(rd))
            for rrset in rrsets
            for rd in rrset
        ]

    return (
        m.id, m.flags, m.rcode(), section(m.question), section(m.answer),
        section(m.authority), section(m.additional),
    )  # fmt: skip


class FakeDataplane:
    def __init__(self, c: Cluster) -> None:
        self.table, self.state, self.ready = c.table, c.state, True


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(histories(), st.sampled_from(["disabled", "insecure", "verified"]), st.integers(0, 2**32))
def test_the_zone_kept_by_changes_is_the_zone_a_fresh_build_gives(history, pods, seed) -> None:  # type: ignore[no-untyped-def]
    rnd = random.Random(seed)
    c = Cluster()
    plane = DnsPlane(
        FakeDataplane(c),
        DnsSettings(
            domain=DOMAIN, ttl=TTL, reverse_cidrs=REVERSE, pods=pods, ns_addresses=("10.96.0.10",)
        ),
    )
    plane.apply([], [])
    live = plane.zone
    names = probe_names(c)
    for op, arg in history:
        services, pod_keys = c.step(op, arg)
        plane.apply(services, pod_keys)
        fresh = fresh_zone(c, pods, live.serial)
        assert live._names == fresh._names
        assert live._ent == fresh._ent
        assert live._pods_at == fresh._pods_at
        assert live._pod_namespaces == fresh._pod_namespaces
        assert {n: live.lookup(n) for n in live._names} == {
            n: fresh.lookup(n) for n in fresh._names
        }
        responder = Responder(fresh, allow=Allow(plane.settings.allow), can_forward=False)
        # a sample of the probes each step (all of them would be slow), in random case
        for name in rnd.sample(names, 12):
            asked = "".join(ch.upper() if rnd.random() < 0.3 else ch for ch in name)
            for qtype in rnd.sample(QTYPES, 3):
                data = query(asked, qtype)
                assert meaning(_reply(plane.responder, data)) == meaning(_reply(responder, data)), (
                    asked,
                    qtype,
                )
