"""Faults: what a client sees when part of the world breaks, and what netplane keeps.

- an endpoint killed (SIGKILL) while it streams a large body: the client's
  response is cut, never complete-looking; no socket or pooled connection
  leaks; the next requests go to the live endpoint;
- a worker of ``--workers 2`` killed under load: only requests in flight on
  it fail, it comes back, the node stays ready;
- the access log's disk full (``/dev/full``: every write is ENOSPC):
  traffic is served, the lost lines are counted and said once in the log;
- the DNS upstreams silent or sending garbage: SERVFAIL before the
  client's own timeout, cluster names answered meanwhile.

The blackholed endpoint (SYNs dropped) needs a network namespace:
test_faults_netns.py. Each test prints its figure (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
import yaml
from ingress_fakes import Backends, Request
from ingress_world import endpoints, ingress, ingress_class, path, service
from l4_world import endpoints as l4_endpoints
from l4_world import service as l4_service
from l4_world import write
from prometheus_client.parser import text_string_to_metric_families

from netplane.testing.http import Stream
from netplane.testing.ports import free_port, free_udp_tcp_port
from netplane.testing.process import Netplane

pytestmark = pytest.mark.e2e

HOST = b"faults.test"
BIG = 64 << 20  # the streamed body: far more than is read before the kill

# A backend as a process of its own, so that it can be SIGKILLed: ``GET /big``
# streams BIG bytes slowly (Content-Length set, X-Name: its name); any other
# target answers its name. It prints "ready" once listening.
BACKEND = r"""
import asyncio, sys

host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
BIG = int(sys.argv[4])
CHUNK = b"x" * 65536


async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            if head.split(b" ", 2)[1] == b"/big":
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Name: %s\r\n\r\n" % (BIG, name))
                for _ in range(BIG // len(CHUNK)):
                    w.write(CHUNK)
                    await w.drain()
                    await asyncio.sleep(0.005)
            else:
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name))
                await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        w.close()


async def main():
    server = await asyncio.start_server(handle, host, port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


def spawn_backend(
    host: str, port: int, name: str, prefix: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start BACKEND on host:port (behind ``prefix``, e.g. ``ip netns exec NS``); ready on return."""
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", BACKEND, host, str(port), name, str(BIG)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the process prints or exits
    if line.strip() != b"ready":
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"backend {name} did not start")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this test started, by its PID."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed (by PID) after it."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        stop(p)


def write_yaml(dirpath: Path, name: str, objs: list[dict]) -> None:
    tmp = dirpath / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump_all(objs))
    tmp.replace(dirpath / f"{name}.yaml")


def web_objects(addrs: list[str], port: int, annotations: dict[str, str] | None = None) -> list:
    """Ingress faults.test -> Service web -> ``addrs`` on ``port``."""
    return [
        ingress_class("netplane"),
        service("web"),
        endpoints("web", addrs, [("http", port)]),
        ingress("faults", [(HOST.decode(), [path("/", "web")])], annotations=annotations),
    ]


def ingress_args(manifests: Path, http_port: int, *extra: str) -> list[str]:
    return [
        "run", "-f", str(manifests), "--mode", "local", "--proxy", "off", "--dns", "off",
        "--ingress-http", f"127.0.0.1:{http_port}", "--ingress-https", "off",
        "--manifest-poll-seconds", "0.05", "--shutdown-grace", "1", *extra,
    ]  # fmt: skip


async def get(port: int, target: bytes = b"/", addr: str = "127.0.0.1") -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body); status 0 when it failed."""
    try:
        async with asyncio.timeout(5):
            r, w = await asyncio.open_connection(addr, port)
            try:
                w.write(
                    b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (target, HOST)
                )
                data = await r.read()
            finally:
                w.close()
    except (OSError, TimeoutError):
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        return 0, b""


async def until(what: str, check: Callable[[], Any], timeout: float = 10) -> Any:
    """Poll ``check`` (sync, in a thread) until it returns something true."""
    try:
        async with asyncio.timeout(timeout):
            while not (got := await asyncio.to_thread(check)):
                await asyncio.sleep(0.05)
            return got
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def admin_get(np: Netplane, what: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{np.admin_url}{what}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def metrics(np: Netplane) -> dict[str, float]:
    """Every sample without labels, and label-less sums of those with: name -> value."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(admin_get(np, "/metrics")[1]):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def upstream_idle(np: Netplane) -> int:
    state = json.loads(admin_get(np, "/debug/state")[1])
    return state["planes"]["ingress"]["upstream_idle"]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def route_up(port: int) -> None:
    """Until the Ingress answers 200 (listener up, routes built)."""
    try:
        async with asyncio.timeout(10):
            while (await get(port))[0] != 200:
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError("the route did not answer 200 in 10 s") from None


# -- 1. an endpoint killed mid-response ------------------------------------------------------


async def test_an_endpoint_killed_mid_response_cuts_the_body_and_leaks_nothing(
    tmp_path, start_netplane, spawned
):
    m = tmp_path / "m"
    m.mkdir()
    port = free_port()
    procs = {
        "a": spawn_backend("127.0.51.1", port, "a"),
        "b": spawn_backend("127.0.51.2", port, "b"),
    }
    spawned.extend(procs.values())
    write_yaml(m, "web", web_objects(["127.0.51.1", "127.0.51.2"], port))
    http = free_port()
    np = start_netplane(*ingress_args(m, http, "--workers", "1"))
    await np.await_ready()
    await route_up(http)
    # one idle pooled connection to each endpoint
    assert {(await get(http))[1] for _ in range(4)} == {b"a", b"b"}
    await until("both endpoints pooled", lambda: upstream_idle(np) == 2)
    idle0, fds0 = upstream_idle(np), fd_count(np.pid)

    r, w = await asyncio.open_connection("127.0.0.1", http)
    w.write(b"GET /big HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST)
    async with asyncio.timeout(5):
        head = await r.readuntil(b"\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    fields = {k.lower(): v for k, v in fields.items()}
    assert int(fields[b"content-length"]) == BIG
    victim = fields[b"x-name"].decode()
    got = 0
    async with asyncio.timeout(5):
        while got < 1 << 20:
            got += len(await r.read(65536))
    os.kill(procs[victim].pid, signal.SIGKILL)
    t_kill = time.monotonic()
    how = "eof"
    try:
        async with asyncio.timeout(10):
            while chunk := await r.read(1 << 20):
                got += len(chunk)
    except ConnectionResetError:
        how = "reset"
    cut_after = time.monotonic() - t_kill
    w.close()
    assert got < BIG, "a killed endpoint's response must not look complete"
    print(
        f"\nkilled endpoint {victim} mid-body: client saw {how} after {got} of {BIG} bytes,"
        f" {cut_after * 1000:.0f} ms after the SIGKILL"
    )

    # the next requests all reach the live endpoint (the dead one refuses: the next target)
    live = ({"a", "b"} - {victim}).pop().encode()
    answers = [await get(http) for _ in range(6)]
    assert answers == [(200, live)] * 6

    # nothing leaked: one pooled connection (the live endpoint's) and the fds without it as before
    def settled() -> tuple[int, int] | None:
        idle, fds = upstream_idle(np), fd_count(np.pid)
        return (idle, fds) if idle == 1 and fds - idle == fds0 - idle0 else None

    try:
        idle1, fds1 = await until("the pool and fds to settle", settled, timeout=5)
    except AssertionError:
        raise AssertionError(
            f"before: {fds0} fds, {idle0} idle; after: {fd_count(np.pid)} fds,"
            f" {upstream_idle(np)} idle"
        ) from None
    print(f"netplane fds {fds0} -> {fds1}, pooled idle upstream connections {idle0} -> {idle1}")


# -- 3. a worker killed under load -----------------------------------------------------------


def victim_in_flight(pid: int, port: int) -> int:
    """Connections to ``port`` the worker holds (established) or has queued (its accept queue)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            f = line.split()
            local, state, queues, inode = f[1], f[3], f[4], f[9]
            if inode not in inodes or int(local.split(":")[1], 16) != port:
                continue
            if state == "0A":  # LISTEN: rx_queue is the accept queue's length
                count += int(queues.split(":")[1], 16)
            elif state == "01":  # ESTABLISHED
                count += 1
    return count


async def test_a_worker_killed_under_load_fails_only_its_requests(tmp_path, start_netplane):
    m = tmp_path / "m"
    m.mkdir()
    b = Backends()

    async def slow_name(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.02)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()

    try:
        port = free_port()
        await b.start(slow_name, "127.0.52.1", port)
        await b.start(slow_name, "127.0.52.2", port)
        write_yaml(m, "web", web_objects(["127.0.52.1", "127.0.52.2"], port))
        http = free_port()
        np = start_netplane(*ingress_args(m, http, "--workers", "2", "--ingress-access-log", "off"))
        await np.await_ready()
        await route_up(http)

        def workers() -> list[dict]:
            status, body = admin_get(np, "/debug/state?summary=1")
            return json.loads(body)["planes"]["workers"] if status == 200 else []

        victim = (await asyncio.to_thread(workers))[0]["pid"]
        results: list[int] = []
        failures: list[float] = []  # when each failed request was sent (monotonic)
        stopping = asyncio.Event()
        clients = 8

        async def client() -> None:
            while not stopping.is_set():
                sent = time.monotonic()
                status = (await get(http))[0]
                results.append(status)
                if status != 200:
                    failures.append(sent)

        not_ready: list[int] = []

        async def readiness() -> None:
            while not stopping.is_set():
                status, _ = await asyncio.to_thread(admin_get, np, "/readyz")
                if status != 200:
                    not_ready.append(status)
                await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        tasks.append(asyncio.create_task(readiness()))
        await asyncio.sleep(1.0)
        in_flight = victim_in_flight(victim, http)
        before = len(results)
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()

        def restarted() -> bool:
            w = workers()
            return bool(w) and w[0]["pid"] != victim and w[0]["ready"]

        await until("worker 0 to be started again", restarted)
        back_after = time.monotonic() - t_kill
        await asyncio.sleep(0.5)  # load on the restarted worker too
        stopping.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)
    finally:
        await b.close()

    failed = len(failures)
    assert failed == sum(1 for s in results if s != 200)
    late = [round(t - t_kill, 4) for t in failures if t - t_kill > 0.05]
    print(
        f"\nworker {victim} SIGKILLed under {clients} concurrent clients: {failed}/{len(results)}"
        f" requests failed ({before} done before the kill; {in_flight} connections in flight"
        f" on it at the kill); back and ready after {back_after:.2f} s;"
        f" /readyz not 200: {len(not_ready)} times; failed requests sent at"
        f" {sorted(round((t - t_kill) * 1000, 1) for t in failures)} ms from the kill"
    )
    assert not_ready == [], f"/readyz answered {not_ready} while a worker was restarted"
    assert results.count(200) > before  # served all along
    # At most those in flight on the victim: each client has one request in flight at
    # most, and none sent after the kill failed (the few ms a killed process's sockets
    # take to close aside: a connection can still be queued on its listener then).
    assert failed <= clients
    assert late == [], f"requests sent after the kill failed: {late} s"
    assert admin_get(np, "/readyz")[0] == 200


# -- 4. the access log's disk full ------------------------------------------------------------


async def test_a_full_disk_drops_access_log_lines_counts_them_and_says_so_once(
    tmp_path, start_netplane
):
    m = tmp_path / "m"
    m.mkdir()
    b = Backends()

    async def ok(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()

    try:
        port = free_port()
        await b.start(ok, "127.0.53.1", port)
        write_yaml(m, "web", web_objects(["127.0.53.1"], port))
        http = free_port()
        np = start_netplane(
            *ingress_args(m, http, "--workers", "1", "--ingress-access-log", "/dev/full")
        )
        await np.await_ready()
        await route_up(http)
        await until(
            "the first lines dropped",
            lambda: metrics(np).get("netplane_access_log_dropped_lines_total", 0) > 0,
        )
        first = metrics(np)["netplane_access_log_dropped_lines_total"]
        for _ in range(3):  # three batches, three failed writes
            assert [await get(http) for _ in range(10)] == [(200, b"ok")] * 10
            await asyncio.sleep(0.6)  # the sweeper flushes twice a second
        dropped = await until(
            "30 more lines dropped",
            lambda: (
                (v := metrics(np)["netplane_access_log_dropped_lines_total"]) >= first + 30 and v
            ),
        )
    finally:
        await b.close()
    assert dropped == first + 30
    said = [line for line in np.log.splitlines() if "access log /dev/full" in line]
    print(f"\naccess log on /dev/full: {dropped:.0f} lines dropped, said {len(said)} time(s):")
    print(said[0] if said else "")
    assert len(said) == 1 and "No space left on device" in said[0]
    assert "netplane_access_log_dropped_lines_total" in said[0]


def test_the_access_log_says_once_per_outage_and_counts_every_line(caplog):
    """In process: /dev/full, then the disk has room again (/dev/null put in its place),
    then full again: two warnings, one note of recovery, every lost line counted."""
    from types import SimpleNamespace

    from netplane.ingress.accesslog import AccessLog

    conn = SimpleNamespace(client_ip_b=b"127.0.0.1", http2=False)
    head = SimpleNamespace(host=b"faults.test", request_id=b"r1")
    ex = SimpleNamespace(
        head=head, decision=None, target=b"/", method=b"GET", http10=False, status=200,
        bytes_out=2, upstream_addr=("127.0.0.2", 80), t_up=0.5, t0=0.0, grpc_status=-1,
    )  # fmt: skip
    alog = AccessLog("/dev/full")
    full = os.open("/dev/full", os.O_WRONLY)
    null = os.open("/dev/null", os.O_WRONLY)
    try:
        with caplog.at_level("INFO", logger="netplane.ingress"):
            for target in (full, null, full):
                os.dup2(target, alog._fd)  # the disk fills up, or has room again
                for _ in range(3):  # three batches of five lines
                    for _ in range(5):
                        alog.record(conn, ex, 1.0)
                    alog.flush()
    finally:
        alog.close()
        os.close(full)
        os.close(null)
    assert alog.dropped_lines == 30
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3, said
    assert "cannot write (No space left on device)" in said[0] and "cannot write" in said[2]
    assert "writing again, 15 lines dropped so far" in said[1]
    assert alog.metrics().samples[0].value == 30


# -- 5. DNS upstreams silent or sending garbage -----------------------------------------------


class FakeUpstream(asyncio.DatagramProtocol):
    """A UDP 'DNS server' on loopback: ``silent`` never answers, ``junk`` answers random
    bytes, ``wrong-id`` answers a well-formed reply with another ID."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.asked = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.asked += 1
        if self.kind == "junk":
            self.transport.sendto(os.urandom(40), addr)
        elif self.kind == "wrong-id":
            q = dns.message.from_wire(data)
            reply = dns.message.make_response(q)
            reply.id = (q.id + 1) % 65536
            self.transport.sendto(reply.to_wire(), addr)


async def test_dns_upstreams_silent_or_garbage_give_servfail_in_time(tmp_path, start_netplane):
    m = tmp_path / "m"
    m.mkdir()
    write(m, "db", [
        l4_service("db", "None", 5432),
        l4_endpoints("db", [("127.0.41.1", 5432)]),
    ])  # fmt: skip
    loop = asyncio.get_running_loop()
    fakes: dict[str, tuple[Any, FakeUpstream]] = {}
    try:
        for kind in ("silent", "junk", "wrong-id"):
            fakes[kind] = await loop.create_datagram_endpoint(
                lambda kind=kind: FakeUpstream(kind), local_addr=("127.0.0.1", 0)
            )  # type: ignore[assignment]
        ups = [f"127.0.0.1:{t.get_extra_info('sockname')[1]}" for t, _ in fakes.values()]
        dns_port = free_udp_tcp_port()
        np = start_netplane(
            "run", "-f", str(m), "--mode", "local", "--proxy", "off",
            "--ingress-http", "off", "--ingress-https", "off", "--workers", "1",
            "--dns", f"127.0.0.1:{dns_port}", "--manifest-poll-seconds", "0.05",
            "--shutdown-grace", "1", *[a for u in ups for a in ("--dns-upstreams", u)],
        )  # fmt: skip
        await np.await_ready()

        async def ask(name: str, timeout: float = 5.0) -> tuple[str, float, list[str]]:
            t = time.monotonic()
            r = await dns.asyncquery.udp(
                dns.message.make_query(name, "A"), "127.0.0.1", port=dns_port, timeout=timeout
            )
            addrs = sorted(rr.to_text() for rrset in r.answer for rr in rrset)
            return dns.rcode.to_text(r.rcode()), time.monotonic() - t, addrs

        # three questions forwarded at once (5 s: the stub resolver's timeout, dig's and glibc's)
        forwarded = [asyncio.create_task(ask(f"name{i}.example.org.")) for i in range(3)]
        # meanwhile the cluster's names answer at once, again and again
        cluster = []
        for _ in range(20):
            cluster.append(await ask("db.t.svc.cluster.local.", timeout=1.0))
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*forwarded)
    finally:
        for t, _ in fakes.values():
            t.close()
    assert all(rcode == "NOERROR" and addrs == ["127.0.41.1"] for rcode, _, addrs in cluster)
    worst_cluster = max(took for _, took, _ in cluster)
    assert worst_cluster < 0.5
    assert [rcode for rcode, _, _ in answers] == ["SERVFAIL"] * 3
    took = [t for _, t, _ in answers]
    assert max(took) < 5.0
    assert all(p.asked >= 3 for _, p in fakes.values())  # every upstream was tried
    print(
        f"\nupstreams silent, junk, wrong-id: SERVFAIL after {min(took):.2f}-{max(took):.2f} s;"
        f" cluster name answered 20 times meanwhile, slowest {worst_cluster * 1000:.1f} ms"
    )
