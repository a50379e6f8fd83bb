"""``netplane run --workers N``: worker processes sharing the listeners, fed by one owner.

The daemon runs as a process with DNS and the L4 proxy on; clients are
dnspython and curl from fresh sockets (so the kernel spreads them over the
workers), and each worker's sockets are read from /proc.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
from ingress_fakes import curl
from l4_world import (
    Backends,
    endpoints,
    needs_curl,
    service,
    sockets_of,
    udp_port_holders,
    udp_sockets,
    write,
)
from prometheus_client.parser import text_string_to_metric_families

from netplane.l4.steer import steer_by_source
from netplane.metrics_merge import merge
from netplane.testing.ports import free_port, free_udp_tcp_port
from netplane.testing.process import Netplane

pytestmark = pytest.mark.e2e


class Owner:
    """The owner process of ``--workers N`` and what its admin server says."""

    def __init__(self, np: Netplane, dns_port: int) -> None:
        self.np = np
        self.admin = np.admin_url
        self.dns_port = dns_port

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{self.admin}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def workers(self) -> list[dict[str, Any]]:
        import json

        status, body = self.get("/debug/state?summary=1")
        return json.loads(body)["planes"]["workers"] if status == 200 else []

    def metrics(self) -> dict[tuple[str, tuple], float]:
        _, text = self.get("/metrics")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    async def until(self, what: str, check: Any, timeout: float = 20) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not await asyncio.to_thread(check):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    def query(self, name: str, rdtype: str = "A") -> list[str]:
        """One query from a fresh UDP socket: the answer's addresses."""
        q = dns.message.make_query(name, rdtype)
        r = dns.query.udp(q, "127.0.0.1", port=self.dns_port, timeout=2)
        return sorted(rr.to_text() for rrset in r.answer for rr in rrset)


@pytest.fixture
def owner(tmp_path: Path, start_netplane: Callable[..., Netplane]) -> Callable:
    """``await owner(workers, *extra)``: ``netplane run --workers N``, ready; stopped after."""

    async def start(workers: int = 2, *extra: str) -> Owner:
        dns_port = free_udp_tcp_port()
        np = start_netplane(
            "run", "-f", str(tmp_path / "m"), "--mode", "local",
            "--dns", f"127.0.0.1:{dns_port}", "--ingress-http", "off", "--ingress-https", "off",
            "--manifest-poll-seconds", "0.05", "--shutdown-grace", "5",
            "--workers", str(workers), *extra,
        )  # fmt: skip
        await np.await_ready()
        return Owner(np, dns_port)

    (tmp_path / "m").mkdir()
    return start


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture
async def web(tmp_path: Path, backends: Backends) -> None:
    """Service t/web at 127.77.0.40:8080 with two HTTP endpoints that answer their names."""
    port = free_port()
    await backends.http("127.0.40.1", port)
    await backends.http("127.0.40.2", port)
    write(tmp_path / "m", "web", [
        service("web", "127.77.0.40", 8080),
        endpoints("web", [("127.0.40.1", port), ("127.0.40.2", port)]),
    ])  # fmt: skip


@needs_curl
async def test_workers_share_every_listener_and_answer_as_one(owner, web):
    o = await owner(2)
    workers = await asyncio.to_thread(o.workers)
    pids = {w["pid"] for w in workers}
    assert len(pids) == 2 and all(w["ready"] for w in workers)
    assert {parent_of(pid) for pid in pids} == {o.np.pid}
    # both workers hold the DNS port; the owner holds no listener of its own
    assert udp_port_holders(o.dns_port) == pids

    before = await asyncio.to_thread(o.metrics)
    for _ in range(20):
        assert await asyncio.to_thread(o.query, "web.t.svc.cluster.local.") == ["127.77.0.40"]
    bodies = collections.Counter([(await curl("http://127.77.0.40:8080/"))[1] for _ in range(6)])
    assert bodies == {"127.0.40.1": 3, "127.0.40.2": 3}

    # /metrics adds the workers up: every query and connection is counted once
    after = await asyncio.to_thread(o.metrics)
    key = ("netplane_dns_requests_total", (("rcode", "NOERROR"), ("type", "A")))
    assert after[key] - before.get(key, 0.0) == 20
    conns = sum(v for (name, labels), v in after.items() if name == "netplane_l4_connections_total")
    assert conns == 6
    assert after[("netplane_workers_ready", (("worker", "0"),))] == 1
    assert after[("netplane_workers_ready", (("worker", "1"),))] == 1
    # /debug/state shows the planes as the workers see them
    status, body = await asyncio.to_thread(o.get, "/debug/state")
    assert status == 200 and '"127.77.0.40:8080/TCP"' in body


@needs_curl
async def test_a_killed_worker_is_restarted_while_the_others_answer(owner, web):
    o = await owner(2)
    victim = (await asyncio.to_thread(o.workers))[0]["pid"]
    held = sockets_of(victim, o.dns_port)
    assert held
    os.kill(victim, signal.SIGKILL)
    # its socket gone from the kernel's table, not just from its fd list
    await o.until(
        "the killed worker's sockets to close", lambda: not held & udp_sockets(o.dns_port)
    )
    # the other worker answers everyone meanwhile: queries and connections
    for _ in range(30):
        assert await asyncio.to_thread(o.query, "web.t.svc.cluster.local.") == ["127.77.0.40"]
    for _ in range(6):
        assert (await curl("http://127.77.0.40:8080/"))[0] == 0

    def restarted() -> bool:
        w = o.workers()
        return bool(w) and w[0]["pid"] != victim and w[0]["ready"] and w[0]["restarts"] == 1

    await o.until("worker 0 to be started again", restarted)
    new = (await asyncio.to_thread(o.workers))[0]["pid"]
    assert parent_of(new) == o.np.pid
    assert new in udp_port_holders(o.dns_port)
    assert o.get("/readyz")[0] == 200
    metrics = await asyncio.to_thread(o.metrics)
    assert metrics[("netplane_worker_restarts_total", (("worker", "0"),))] == 1
    assert metrics[("netplane_worker_restarts_total", (("worker", "1"),))] == 0


async def test_changes_reach_every_worker(tmp_path, owner):
    write(tmp_path / "m", "db", [
        service("db", "None", 5432),
        endpoints("db", [("127.0.41.1", 5432)]),
    ])  # fmt: skip
    o = await owner(3)
    name = "db.t.svc.cluster.local."
    assert await asyncio.to_thread(o.query, name) == ["127.0.41.1"]
    write(tmp_path / "m", "db", [
        service("db", "None", 5432),
        endpoints("db", [("127.0.41.2", 5432), ("127.0.41.3", 5432)]),
    ])  # fmt: skip
    await o.until("the new endpoints", lambda: o.query(name) == ["127.0.41.2", "127.0.41.3"])
    # every worker has the change: 30 fresh sockets spread over all three
    answers = {tuple(await asyncio.to_thread(o.query, name)) for _ in range(30)}
    assert answers == {("127.0.41.2", "127.0.41.3")}


@needs_curl
async def test_one_client_stays_with_one_worker(tmp_path, owner):
    """ClientIP affinity and round-robin both hold across workers: each client
    address is steered to one worker, which keeps that client's state."""
    b, port = Backends(), free_port()
    for host in ("127.0.42.1", "127.0.42.2", "127.0.42.3"):
        await b.http(host, port)
    write(tmp_path / "m", "sticky", [
        service("sticky", "127.77.0.42", 8080, sessionAffinity="ClientIP"),
        endpoints("sticky", [(h, port) for h in ("127.0.42.1", "127.0.42.2", "127.0.42.3")]),
        service("rr", "127.77.0.43", 8080),
        endpoints("rr", [(h, port) for h in ("127.0.42.1", "127.0.42.2", "127.0.42.3")]),
    ])  # fmt: skip
    try:
        await owner(3)
        sticky = {(await curl("http://127.77.0.42:8080/"))[1] for _ in range(9)}
        assert len(sticky) == 1
        spread = collections.Counter(
            [(await curl("http://127.77.0.43:8080/"))[1] for _ in range(9)]
        )
        assert spread == {"127.0.42.1": 3, "127.0.42.2": 3, "127.0.42.3": 3}
    finally:
        b.close()


async def test_sigterm_stops_every_worker(tmp_path, owner):
    write(tmp_path / "m", "db", [service("db", "None", 5432)])
    o = await owner(2)
    pids = [w["pid"] for w in await asyncio.to_thread(o.workers)]
    assert await o.np.astop(15) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")


def test_steering_keeps_each_source_address_on_one_socket():
    """The BPF program alone: datagrams from one address, whatever their source
    port, all reach one socket of the group; two addresses reach both sockets."""
    socks = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", 0 if not socks else socks[0].getsockname()[1]))
            s.setblocking(False)
            socks.append(s)
        steer_by_source(socks[0], 2)
        where: dict[str, set[int]] = collections.defaultdict(set)
        for src in ("127.0.43.1", "127.0.43.2"):
            for _ in range(10):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                    c.bind((src, 0))
                    c.sendto(b"x", socks[0].getsockname())
        for i, s in enumerate(socks):
            while True:
                try:
                    _, (addr, _) = s.recvfrom(16)
                except BlockingIOError:
                    break
                where[addr].add(i)
        assert where == {"127.0.43.1": {1}, "127.0.43.2": {0}}
    finally:
        for s in socks:
            s.close()


def test_metrics_merge_sums_series_and_keeps_per_worker_figures_once():
    a = (
        "# HELP netplane_x_total X\n# TYPE netplane_x_total counter\n"
        'netplane_x_total{k="a"} 2.0\nnetplane_x_created{k="a"} 1.7e9\n'
        "# HELP netplane_l4_listeners L\n# TYPE netplane_l4_listeners gauge\n"
        "netplane_l4_listeners 4.0\n"
        "# HELP netplane_d_seconds D\n# TYPE netplane_d_seconds histogram\n"
        'netplane_d_seconds_bucket{le="0.1"} 1.0\nnetplane_d_seconds_bucket{le="+Inf"} 2.0\n'
        "netplane_d_seconds_count 2.0\nnetplane_d_seconds_sum 0.5\n"
    )
    b = a.replace("} 2.0\nnetplane_x_created", "} 5.0\nnetplane_x_created")
    merged = {
        (s.name, tuple(s.labels.items())): s.value
        for f in merge([a, b], same_everywhere=frozenset({"netplane_l4_listeners"}))
        for s in f.samples
    }
    assert merged == {
        ("netplane_x_total", (("k", "a"),)): 7.0,
        ("netplane_l4_listeners", ()): 4.0,
        ("netplane_d_seconds_bucket", (("le", "0.1"),)): 2.0,
        ("netplane_d_seconds_bucket", (("le", "+Inf"),)): 4.0,
        ("netplane_d_seconds_count", ()): 4.0,
        ("netplane_d_seconds_sum", ()): 1.0,
    }


def test_port_zero_becomes_one_port_every_worker_binds():
    from netplane.config import build
    from netplane.daemon import pick_free_ports

    cfg = build({}, {"mode": "local", "ingress_http": "127.0.0.1:0", "dns": "127.0.0.1:0"})
    picked = pick_free_ports(cfg)
    assert picked.ingress_http.port != 0 and picked.dns.port != 0
    assert picked.ingress_https == cfg.ingress_https  # a concrete port stays as it was
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):  # DNS's port is free for both
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", picked.dns.port))
