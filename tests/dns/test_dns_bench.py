"""The DNS bench's pieces that can be wrong without a run: one generator for every side,
dnsperf's output read right, and the programming probe's answer parsing."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rrset

# bench/ is not installed: tests/conftest.py registers it by location
from bench.progfake import dns_probe
from bench.scenarios.dns import (
    dnsmasq_hosts,
    latency_ms,
    manifests,
    names,
    nsd_zone,
    parse_dnsperf,
    query_files,
)

DNSPERF = """
  Queries sent:         100000
  Queries completed:    99990 (99.99%)
  Queries lost:         10 (0.01%)

  Response codes:       NOERROR 99990 (100.00%)
  Average packet size:  request 44, response 60
  Run time (s):         2.000000
  Queries per second:   49995.000000

  Average Latency (s):  0.001234 (min 0.000010, max 0.020000)
  Latency StdDev (s):   0.000500
"""


def test_every_side_serves_the_same_names() -> None:
    n = 25
    every = {f"{svc}.{ns}.svc.cluster.local": ip for svc, ns, ip in names(n)}
    assert len(every) == n and len(set(every.values())) == n
    hosts = dict(line.split()[::-1] for line in dnsmasq_hosts(n).splitlines())
    assert hosts == every
    zone = nsd_zone(n)
    for name, ip in every.items():
        assert f"{name.removesuffix('.cluster.local')} IN A {ip}" in zone
    objs = manifests(n)["items"]
    services = {
        f"{o['metadata']['name']}.{o['metadata']['namespace']}.svc.cluster.local": o["spec"][
            "clusterIP"
        ]
        for o in objs
        if o["kind"] == "Service"
    }
    assert services == every
    slices = [o for o in objs if o["kind"] == "EndpointSlice"]
    assert sum(len(s["endpoints"]) for s in slices) == 10 * n
    files = query_files(n)
    mix = files["mix"].splitlines()
    assert len(mix) == n and sum(line.endswith(" SRV") for line in mix) == n // 10
    assert all(line.split()[0].removeprefix("no") in every for line in files["nx"].splitlines())
    assert not any(line.split()[0] in every for line in files["nx"].splitlines())


def test_dnsperf_summary_and_verbose_lines() -> None:
    got = parse_dnsperf(DNSPERF)
    assert got == {"qps": 49995.0, "avg_ms": 1.234, "done": 99990.0, "resp_bytes": 60.0}
    lines = "\n".join(f"> NOERROR svc{i}.ns0.svc.cluster.local A 0.{i:06d}" for i in range(1, 101))
    avg, p99, count = latency_ms(lines)
    assert count == 100 and abs(avg - 0.0505) < 1e-9 and p99 == 0.1


def test_programming_dns_probe_reads_the_first_address() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)

    def answer() -> None:
        data, addr = server.recvfrom(4096)
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.answer.append(
            dns.rrset.from_text(q.question[0].name, 5, "IN", "A", "127.0.32.4", "127.0.32.5")
        )
        server.sendto(r.to_wire(), addr)

    t = threading.Thread(target=answer)
    t.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        got = dns_probe(client, server.getsockname()[1], "dns-probe.ns0.svc.cluster.local", 5)
    t.join(5)
    server.close()
    assert got in (b"127.0.32.4", b"127.0.32.5")  # dnspython orders an rrset as it likes
