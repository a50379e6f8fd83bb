"""Cluster DNS end to end: a ``netplane run`` process asked by dig and dnspython over UDP
and TCP, forwarding to a second DNS server that the test starts."""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dns_peers import NetplaneDns, Upstream, ask, dig

from netplane.testing.ports import free_udp_tcp_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (dnsutils)"),
]

ZONE = "cluster.local"


def service(name: str, **spec: object) -> dict:
    spec.setdefault("ports", [{"name": "http", "port": 80}])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


def slice_of(svc: str, addresses: list[str], hostnames: bool = True) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": [a], **({"hostname": f"{svc}-{i}"} if hostnames else {})}
            for i, a in enumerate(addresses)
        ],
    }


MANIFESTS = [
    service("web", clusterIP="127.77.0.20"),
    service(
        "dual",
        clusterIPs=["127.77.0.30", "fd00:77::30"],
        ipFamilies=["IPv4", "IPv6"],
    ),
    service("db", clusterIP="None"),
    slice_of("db", ["127.0.50.1", "127.0.50.2"]),
    service("many", clusterIP="None"),
    slice_of("many", [f"127.0.60.{i}" for i in range(1, 101)], hostnames=False),
    service("alias", type="ExternalName", externalName=f"web.shop.svc.{ZONE}", ports=[]),
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[NetplaneDns]:
    tmp = tmp_path_factory.mktemp("dns")
    manifests = tmp / "manifests"
    manifests.mkdir()
    (manifests / "shop.json").write_text(json.dumps({"kind": "List", "items": MANIFESTS}))
    d = NetplaneDns(
        tmp, manifests,
        "--service-cidr", "127.77.0.0/16", "--service-cidr", "fd00:77::/112",
        "--pod-cidr", "127.0.0.0/16",
        "--dns-upstreams", f"127.0.0.1:{upstream.port}",
    )  # fmt: skip
    yield d
    assert d.stop() == 0


def section(out: str, name: str) -> list[list[str]]:
    """The records of one dig output section, split into fields."""
    m = re.search(rf";; {name} SECTION:\n(.*?)(?:\n\n|\Z)", out, re.S)
    return [line.split() for line in m.group(1).splitlines()] if m else []


def test_dig_a_aaaa_cname_txt_soa_over_udp(server: NetplaneDns) -> None:
    out = dig(server.port, f"web.shop.svc.{ZONE}")
    assert "status: NOERROR" in out and " aa " in out.split("flags:", 1)[1].split(";", 1)[0] + " "
    assert section(out, "ANSWER") == [[f"web.shop.svc.{ZONE}.", "5", "IN", "A", "127.77.0.20"]]

    out = dig(server.port, f"dual.shop.svc.{ZONE}", "AAAA")
    assert section(out, "ANSWER") == [[f"dual.shop.svc.{ZONE}.", "5", "IN", "AAAA", "fd00:77::30"]]

    out = dig(server.port, f"alias.shop.svc.{ZONE}")
    assert section(out, "ANSWER") == [
        [f"alias.shop.svc.{ZONE}.", "5", "IN", "CNAME", f"web.shop.svc.{ZONE}."],
        [f"web.shop.svc.{ZONE}.", "5", "IN", "A", "127.77.0.20"],
    ]

    out = dig(server.port, f"dns-version.{ZONE}", "TXT")
    assert section(out, "ANSWER") == [[f"dns-version.{ZONE}.", "5", "IN", "TXT", '"1.1.0"']]

    out = dig(server.port, ZONE, "SOA")
    (soa,) = section(out, "ANSWER")
    assert soa[:6] == [f"{ZONE}.", "5", "IN", "SOA", f"ns.dns.{ZONE}.", f"hostmaster.{ZONE}."]


def test_dig_nxdomain_and_nodata_carry_the_soa(server: NetplaneDns) -> None:
    out = dig(server.port, f"nope.shop.svc.{ZONE}")
    assert "status: NXDOMAIN" in out
    assert section(out, "AUTHORITY")[0][3] == "SOA"
    out = dig(server.port, f"web.shop.svc.{ZONE}", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out
    assert section(out, "AUTHORITY")[0][3] == "SOA"


def test_dig_srv_with_additional_section_and_ptr(server: NetplaneDns) -> None:
    out = dig(server.port, f"_http._tcp.db.shop.svc.{ZONE}", "SRV")
    assert sorted(r[4:] for r in section(out, "ANSWER")) == [
        ["0", "50", "8080", f"db-0.db.shop.svc.{ZONE}."],
        ["0", "50", "8080", f"db-1.db.shop.svc.{ZONE}."],
    ]
    assert sorted((r[0], r[4]) for r in section(out, "ADDITIONAL") if r[3] == "A") == [
        (f"db-0.db.shop.svc.{ZONE}.", "127.0.50.1"),
        (f"db-1.db.shop.svc.{ZONE}.", "127.0.50.2"),
    ]
    out = dig(server.port, "-x", "127.77.0.20")
    assert section(out, "ANSWER") == [
        ["20.0.77.127.in-addr.arpa.", "5", "IN", "PTR", f"web.shop.svc.{ZONE}."]
    ]
    out = dig(server.port, "-x", "fd00:77::30")
    assert section(out, "ANSWER")[0][3:] == ["PTR", f"dual.shop.svc.{ZONE}."]
    out = dig(server.port, "-x", "127.0.50.2")  # a headless endpoint with a hostname
    assert section(out, "ANSWER")[0][3:] == ["PTR", f"db-1.db.shop.svc.{ZONE}."]


def test_dnspython_over_tcp_and_pipelined_queries(server: NetplaneDns) -> None:
    m = ask(server.port, f"_http._tcp.db.shop.svc.{ZONE}", "SRV", tcp=True)
    assert m.rcode() == dns.rcode.NOERROR and len(m.answer[0]) == 2
    assert {rrset.name.to_text() for rrset in m.additional} == {
        f"db-0.db.shop.svc.{ZONE}.",
        f"db-1.db.shop.svc.{ZONE}.",
    }
    # three queries in one write on one connection; three replies come back
    queries = []
    for i, name in enumerate(("web", "db", "nope")):
        q = dns.message.make_query(f"{name}.shop.svc.{ZONE}", "A")
        q.id = 100 + i
        queries.append(q)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        replies = {}
        buf = b""
        while len(replies) < 3:
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                size = struct.unpack("!H", buf[:2])[0]
                r = dns.message.from_wire(buf[2 : 2 + size])
                replies[r.id] = r
                buf = buf[2 + size :]
    assert replies[100].answer[0][0].address == "127.77.0.20"
    assert len(replies[101].answer[0]) == 2
    assert replies[102].rcode() == dns.rcode.NXDOMAIN


def test_truncated_over_udp_then_whole_over_tcp(server: NetplaneDns) -> None:
    name = f"many.shop.svc.{ZONE}"
    m = ask(server.port, name, use_edns=0, payload=1232)
    assert m.flags & dns.flags.TC and not m.answer
    assert ask(server.port, name).flags & dns.flags.TC  # no EDNS: 512 bytes
    m = ask(server.port, name, tcp=True)
    assert len(m.answer[0]) == 100
    out = dig(server.port, name)  # dig retries over TCP by itself
    assert "Truncated, retrying in TCP mode" in out
    assert len(section(out, "ANSWER")) == 100


def test_forwarding_with_cache_and_negative_cache(server: NetplaneDns, upstream: Upstream) -> None:
    m = ask(server.port, "www.example.test")
    assert m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.RA
    assert m.answer[0][0].address == "192.0.2.10" and m.answer[0].ttl == 300
    time.sleep(1.1)
    m = ask(server.port, "WWW.example.test")
    assert m.answer[0][0].address == "192.0.2.10"
    assert m.answer[0].ttl < 300  # counted down in the cache
    assert upstream.resolver.count("www.example.test.") == 1

    for _ in range(2):
        m = ask(server.port, "gone.example.test")
        assert m.rcode() == dns.rcode.NXDOMAIN
        assert m.authority[0].rdtype == dns.rdatatype.SOA
    assert upstream.resolver.count("gone.example.test.") == 1  # negative answer cached


def test_forwarded_truncation_is_retried_over_tcp_upstream(
    server: NetplaneDns, upstream: Upstream
) -> None:
    out = dig(server.port, "big.example.test", "TXT")
    assert "status: NOERROR" in out
    assert len(section(out, "ANSWER")) == 40
    protocols = [p for n, p in upstream.resolver.asked if n == "big.example.test."]
    assert protocols[:2] == ["udp", "tcp"]


def test_a_new_service_appears_and_a_removed_one_goes(server: NetplaneDns, tmp_path: Path) -> None:
    name = f"late.shop.svc.{ZONE}"
    assert ask(server.port, name).rcode() == dns.rcode.NXDOMAIN  # now cached as NXDOMAIN
    manifests = Path(server.log).parent / "manifests"
    extra = manifests / "late.json"
    extra.write_text(json.dumps(service("late", clusterIP="127.77.0.99")))
    deadline = time.monotonic() + 10
    m = ask(server.port, name)
    while m.rcode() != dns.rcode.NOERROR and time.monotonic() < deadline:
        time.sleep(0.05)
        m = ask(server.port, name)
    assert m.answer[0][0].address == "127.77.0.99"
    extra.unlink()
    deadline = time.monotonic() + 10
    while m.rcode() != dns.rcode.NXDOMAIN and time.monotonic() < deadline:
        time.sleep(0.05)
        m = ask(server.port, name)
    assert m.rcode() == dns.rcode.NXDOMAIN


def test_recursion_refused_outside_the_allowed_ranges(tmp_path: Path, upstream: Upstream) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "web.json").write_text(json.dumps(service("web", clusterIP="127.77.0.20")))
    d = NetplaneDns(
        tmp_path, manifests,
        "--dns-allow", "127.0.0.1/32", "--dns-upstreams", f"127.0.0.1:{upstream.port}",
    )  # fmt: skip
    try:
        out = dig(d.port, "-b", "127.0.0.2", "www.example.test")
        assert "status: REFUSED" in out
        # the cluster's own names are answered to anyone
        out = dig(d.port, "-b", "127.0.0.2", f"web.shop.svc.{ZONE}", "+short")
        assert out.strip() == "127.77.0.20"
        out = dig(d.port, "-b", "127.0.0.1", "www.example.test", "+short")
        assert out.strip() == "192.0.2.10"
    finally:
        assert d.stop() == 0


def test_servfail_when_every_upstream_fails(tmp_path: Path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "web.json").write_text(json.dumps(service("web", clusterIP="127.77.0.20")))
    dead = free_udp_tcp_port()  # nothing listens there
    d = NetplaneDns(tmp_path, manifests, "--dns-upstreams", f"127.0.0.1:{dead}")
    try:
        assert ask(d.port, "www.example.test").rcode() == dns.rcode.SERVFAIL
        assert ask(d.port, f"web.shop.svc.{ZONE}").answer  # and the zone still answers
    finally:
        assert d.stop() == 0


def test_the_demo_serves_dns_and_prints_dig_commands(start_netplane) -> None:
    port = free_udp_tcp_port()
    np = start_netplane(
        "demo", "--proxy", "off", "--ingress-http", "off", "--ingress-https", "off",
        "--dns", f"127.0.0.1:{port}",
    )  # fmt: skip
    np.wait_ready()
    text = np.wait_output("Ctrl-C stops")  # the greeting comes once the demo is ready
    line = f"dig @127.0.0.1 -p {port} web.demo.svc.{ZONE}"
    assert line in text and f"dig @127.0.0.1 -p {port} -x " in text
    web_ip = re.search(r"^  demo/web  ClusterIP  (\S+)", text, re.M).group(1)
    assert dig(port, f"web.demo.svc.{ZONE}", "+short").strip() == web_ip
    srv = dig(port, f"_pg._tcp.db.demo.svc.{ZONE}", "SRV", "+short").split("\n")
    assert sorted(s for s in srv if s) == [
        f"0 50 15432 db-0.db.demo.svc.{ZONE}.",
        f"0 50 15432 db-1.db.demo.svc.{ZONE}.",
    ]
    assert np.stop() == 0


def test_a_taken_dns_port_is_logged_and_the_rest_serves(tmp_path: Path, start_netplane) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "web.json").write_text(json.dumps(service("web", clusterIP="127.77.0.20")))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        np = start_netplane(
            "run", "-f", str(manifests), "--mode", "local",
            "--proxy", "off", "--ingress-http", "off", "--ingress-https", "off",
            "--dns", f"127.0.0.1:{port}",
        )  # fmt: skip
        np.wait_ready()
        assert f"DNS: cannot listen on 127.0.0.1:{port}" in np.log
        assert np.stop() == 0


def test_metrics_count_replies_by_type_and_rcode_and_cache_hits(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "shop.json").write_text(json.dumps({"kind": "List", "items": MANIFESTS}))
    admin = free_udp_tcp_port()
    d = NetplaneDns(tmp_path, manifests, "--admin", f"127.0.0.1:{admin}")

    def scrape() -> dict[tuple, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    try:
        before = scrape()
        for _ in range(3):  # the first is answered from the zone, the rest from the cache
            assert ask(d.port, f"web.shop.svc.{ZONE}").rcode() == dns.rcode.NOERROR
        assert ask(d.port, f"nope.shop.svc.{ZONE}", "SRV").rcode() == dns.rcode.NXDOMAIN
        after = scrape()
    finally:
        assert d.stop() == 0

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("netplane_dns_requests_total", type="A", rcode="NOERROR") == 3
    assert moved("netplane_dns_requests_total", type="SRV", rcode="NXDOMAIN") == 1
    assert moved("netplane_dns_cache_hits_total") == 2
    assert moved("netplane_dns_cache_misses_total") == 2
    assert moved("netplane_dns_request_duration_seconds_count") == 2
