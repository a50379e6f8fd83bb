"""/metrics after real traffic: scraped over HTTP, parsed with prometheus-client's parser.

`netplane run` serves two Services from manifests (one with endpoints, one
without) and an invalid one; curl goes through the proxy; the counters a
Prometheus server would read must have moved by what was done.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from pathlib import Path

import pytest
from ingress_fakes import curl
from l4_world import endpoints, needs_curl, service, write
from prometheus_client.parser import text_string_to_metric_families

import netplane
from netplane.config import build
from netplane.testing.ports import free_port

pytestmark = pytest.mark.e2e


def scrape(admin: str) -> tuple[str, dict[tuple[str, tuple], float]]:
    """(Content-Type, {(sample name, sorted labels): value})."""
    with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as r:
        ctype, text = r.headers["Content-Type"], r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return ctype, samples


def port_labels(name: str) -> tuple:
    return tuple(
        sorted({"namespace": "t", "service": name, "port": "p", "protocol": "TCP"}.items())
    )


@needs_curl
async def test_metrics_count_connections_refusals_objects_and_rejections(
    tmp_path: Path,
    daemon,
    backends,
):
    port = free_port()
    await backends.http("127.0.30.1", port)
    # a nodePort outside the range: the cluster-state checks refuse it (logged, counted)
    bad = service("bad", "127.77.0.32", 8080, type="NodePort")
    bad["spec"]["ports"][0]["nodePort"] = 20000
    write(tmp_path / "m", "web", [
        service("web", "127.77.0.30", 8080),
        endpoints("web", [("127.0.30.1", port)]),
        service("empty", "127.77.0.31", 8080),
    ])  # fmt: skip
    write(tmp_path / "m", "bad", [bad])
    d = await daemon()
    await d.until_listening("127.77.0.30:8080/TCP", "127.77.0.31:8080/TCP")

    ctype, before = await asyncio.to_thread(scrape, d.admin)
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    for _ in range(3):
        assert await curl("http://127.77.0.30:8080/") == (0, "127.0.30.1")
    code, _ = await curl("http://127.77.0.31:8080/")
    assert code in (7, 52, 56)  # reset: no endpoint
    _, after = await asyncio.to_thread(scrape, d.admin)

    def moved(name: str, labels: tuple) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    web, empty = port_labels("web"), port_labels("empty")
    assert moved("netplane_l4_connections_total", web) == 3
    assert after[("netplane_l4_connections_active", web)] == 0
    assert moved("netplane_l4_no_endpoint_total", empty) == 1
    assert moved("netplane_l4_no_endpoint_total", web) == 0
    assert after[("netplane_l4_connect_failures_total", web)] == 0
    assert after[("netplane_objects", (("kind", "Service"),))] == 2
    assert after[("netplane_rejected_objects_current", (("kind", "Service"),))] == 1
    assert after[("netplane_rejected_objects_total", (("kind", "Service"),))] >= 1
    assert after[("netplane_l4_listeners", ())] == 2
    # the initial build is a sync too
    assert after[("netplane_sync_proxy_rules_duration_seconds_count", ())] >= 1
    assert after[("netplane_source_synced", (("source", "manifests"),))] == 1.0
    state = json.loads(urllib.request.urlopen(f"{d.admin}/debug/state?summary=1").read())
    assert state["planes"]["proxy"]["frontends"] == 2


async def test_programming_duration_is_observed_from_the_trigger_time():
    """An EndpointSlice's last-change-trigger-time starts kube-proxy's programming clock."""
    cfg = build({}, {"mode": "local", "admin": None})
    async with netplane.Dataplane(cfg, serve=False) as dp:
        dp.apply(service("web", "127.77.0.40", 8080))
        slice_ = endpoints("web", [("127.0.40.1", 9000)])
        slice_["metadata"]["annotations"] = {
            "endpoints.kubernetes.io/last-change-trigger-time": "2000-01-01T00:00:00Z"
        }
        dp.apply(slice_)
        dp.apply({**endpoints("web", [("127.0.40.2", 9000)]), "metadata": {
            **slice_["metadata"], "annotations": {
                "endpoints.kubernetes.io/last-change-trigger-time": "not a time"
            },
        }})  # fmt: skip
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(dp.metrics.render().decode())
            for s in f.samples
        }
    # one observation (the unparsable stamp is skipped), decades long
    assert samples[("netplane_network_programming_duration_seconds_count", ())] == 1
    assert samples[("netplane_network_programming_duration_seconds_sum", ())] > 20 * 365 * 86400
    # the first build, then one per applied change
    assert samples[("netplane_sync_proxy_rules_duration_seconds_count", ())] == 4


async def tcp_echo(host: str, port: int, payload: bytes) -> bytes:
    async with asyncio.timeout(10):
        r, w = await asyncio.open_connection(host, port)
        w.write(payload)
        w.write_eof()
        data = await r.read()
        w.close()
    return data


@pytest.mark.parametrize("relay", ["splice", "protocol"])
async def test_bytes_relayed_per_service_port_and_direction_equal_what_was_sent(
    tmp_path: Path,
    daemon,
    backends,
    relay: str,
):
    tport, uport = free_port(), free_port()
    await backends.echo("127.0.31.1", tport)
    await backends.udp("127.0.31.2", uport)
    write(tmp_path / "m", "bytes", [
        service("tcp", "127.77.0.33", 7000),
        endpoints("tcp", [("127.0.31.1", tport)]),
        service("udp", "127.77.0.34", 7053, protocol="UDP"),
        endpoints("udp", [("127.0.31.2", uport)], protocol="UDP"),
    ])  # fmt: skip
    d = await daemon("--tcp-relay", relay)
    await d.until_listening("127.77.0.33:7000/TCP", "127.77.0.34:7053/UDP")

    # Two TCP connections, one of them large enough to take many reads.
    payloads = [bytes(range(256)) * 4096, b"hello"]  # 1 MiB and 5 bytes
    for p in payloads:
        assert await tcp_echo("127.77.0.33", 7000, p) == b"echo:" + p
    # Three datagrams on one UDP flow; each reply is the endpoint's name, ':' and the datagram.
    sent = received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for i in range(3):
            msg = b"datagram-%d" % i
            s.sendto(msg, ("127.77.0.34", 7053))
            data, _ = await asyncio.to_thread(s.recvfrom, 100)
            assert data == b"127.0.31.2:" + msg
            sent, received = sent + len(msg), received + len(data)

    _, after = await asyncio.to_thread(scrape, d.admin)

    def relayed(name: str, protocol: str, direction: str) -> float:
        labels = {"namespace": "t", "service": name, "port": "p", "protocol": protocol}
        return after[
            ("netplane_l4_bytes_total", tuple(sorted({**labels, "direction": direction}.items())))
        ]

    assert relayed("tcp", "TCP", "to_endpoint") == sum(len(p) for p in payloads)
    assert relayed("tcp", "TCP", "to_client") == sum(len(b"echo:" + p) for p in payloads)
    assert relayed("udp", "UDP", "to_endpoint") == sent
    assert relayed("udp", "UDP", "to_client") == received
    udp = tuple(
        sorted({"namespace": "t", "service": "udp", "port": "p", "protocol": "UDP"}.items())
    )
    assert after[("netplane_l4_connections_total", udp)] == 1  # one flow
    assert after[("netplane_udp_flows_moved_total", udp)] == 0
    assert after[("netplane_udp_dropped_total", (("reason", "no_endpoint"),))] == 0
    assert d.state()["planes"]["proxy"]["tcp_relay"] == relay
