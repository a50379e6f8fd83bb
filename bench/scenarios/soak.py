"""``soak``: mixed L4, ingress (HTTP, TLS) and DNS traffic at half of capacity, a change a second.

netplane runs with ``--workers 2`` (unpinned), the L4 proxy, the ingress on
HTTP and HTTPS (``--ingress-tls-resumption off``) and DNS, from a manifest
directory polled every 0.2 s (``--manifest-poll-seconds 0.2``). Five kinds
of traffic: ``http``, keep-alive requests to the Ingress host; ``tls``, the
same over TLS; ``tls_new``, new TLS connections (a full handshake, one
request, close); ``l4``, new TCP connections through the ClusterIP (one
request each, ``Connection: close``); ``dns``, A queries over UDP for the
Services' names.

Capacity. Before the soak, the same netplane process (no change written
yet) is loaded with one kind at a time at full speed by a native generator
on the load core: ``wrk -t1 -c50`` (``-H "Connection: close"`` for
``tls_new`` and ``l4``) and ``dnsperf -c 10 -T 1`` over the names' A
queries, 5 s each after a 1 s warm-up (quick: 1 s, wrk's shortest run, no
warm-up). What each sustains is that kind's capacity. TLS resumption is off
because wrk resumes sessions (with two workers, each with its own ticket
keys, about half succeed) and the driver does not: both make full
handshakes, so the two phases measure the same work.

Half of capacity. The soak runs every kind at once, each at the same share
of its own capacity, the shares summing to one half: with five kinds, 10%
of each kind's solo maximum. If each request's cost is fixed and costs
add up, that keeps netplane half as busy as any one kind at capacity does
(every kind at half its own maximum at once would be 2.5 times capacity).
netplane's CPU during each capacity run and during the soak is reported to
check that.

The load comes from two Python driver processes (asyncio, uvloop) on the
load core, each taking half of every kind's rate, so that every request
and query is checked and timed. Requests go out at their due times (open
loop), over a bounded number of connections per kind (keep-alive: one per
100 req/s, at least 4 for HTTP and 2 for TLS; new connections in flight:
one per 20 TLS or 50 TCP connections/s, at least 4); DNS over 8 UDP sockets
per driver, which ``SO_REUSEPORT`` spreads over the workers. A driver that
cannot keep up (no free connection, or its own CPU) falls behind its
schedule: reported as lag p99 per kind, and as an achieved rate below the
target. The soak lasts 10 minutes (``--soak-minutes``; quick: 12 s). Every
second the harness rewrites one manifest in turn (written aside, then
renamed into the directory): the live EndpointSlice (one endpoint, then
two), a second Service (port 8081, then 8082), a second Ingress (host
churn-a, then churn-b) and the live TLS Secret (two certificates from one
CA, alternately).

Reported: capacity, target and achieved rate per kind; requests and failed
requests (by category: timeout, refused, reset, tls, status, dns; none is
expected), beside the DNS datagrams the kernel dropped for a full socket
buffer (netplane's sockets, the drivers'), which explain DNS timeouts; RSS
and open descriptors summed over every netplane process after the warm-up
(30 s; quick 2 s) and at the end (each the median of samples over 2 s;
goal: drift < 5%); p99 latency per kind and per minute (quick: per 5 s;
from histograms of 1%-wide buckets); netplane's and the drivers' CPU.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from bench.harness import NETPLANE, Context, Metric, Proc, Scenario, netplane_cmd, vmrss_mb
from bench.scenarios.dns import manifests as dns_manifests
from bench.scenarios.dns import names, parse_dnsperf, tree_cpu
from bench.scenarios.l4 import parse_wrk, program
from netplane.testing.ports import free_udp_tcp_port

NS = "bench"
HOST = "h0.bench.test"
WEB_IP, WEB_PORT = "127.77.50.10", 8080
CHURN_IP = "127.77.50.20"
DNS_SERVICES = 100
KINDS = ("http", "tls", "tls_new", "l4", "dns")
UNITS = {"http": "req/s", "tls": "req/s", "tls_new": "conn/s", "l4": "conn/s", "dns": "QPS"}
CATEGORIES = ("timeout", "refused", "reset", "tls", "status", "dns", "other")
CHANGES = ("endpointslice", "service", "ingress", "secret")
#: the sum over the kinds of (soak rate / capacity)
SHARE = 0.5
#: connections per kind at once (keep-alive: open; new connections: in flight): at least
#: the first figure, and one per the second requests/s (so 10 ms, 20 ms or 50 ms each)
CONNS = {"http": (4, 100), "tls": (2, 100), "tls_new": (4, 20), "l4": (4, 50)}
DNS_SOCKETS = 8
OP_TIMEOUT = 5.0
DNS_TIMEOUT = 2.0
#: histogram buckets: bucket b holds [STEP**b, STEP**(b + 1)) µs
STEP = 1.01
_LOST = re.compile(r"Queries lost:\s+(\d+)")


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, grew = {pid}, True
    while grew:
        grew = False
        for p, pp in parents.items():
            if pp in out and p not in out:
                out.add(p)
                grew = True
    return sorted(out)


def footprint(pid: int) -> tuple[float, int]:
    """(RSS MB, open descriptors) summed over ``pid``'s process tree."""
    rss, fds = 0.0, 0
    for p in tree(pid):
        try:
            rss += vmrss_mb(p)
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except (OSError, RuntimeError):
            continue  # exited meanwhile
    return rss, fds


def udp_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped for a full receive buffer on the UDP sockets whose
    local port is in ``ports`` (the ``drops`` column of /proc/net/udp)."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) in ports:
            total += int(f[-1])
    return total


# -- manifests ------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def base_objects() -> list[dict[str, Any]]:
    """What never changes (the changing objects are :func:`change`'s)."""
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": "netplane"},
            "spec": {"controller": "netplane.io/ingress"},
        },
        service("web", WEB_IP, WEB_PORT),
        ingress("web", HOST, "web", WEB_PORT, tls=True),
        endpoint_slice("churn", ["127.0.0.1"], 1),
        *dns_manifests(DNS_SERVICES)["items"],
    ]


def service(name: str, ip: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
    }


def endpoint_slice(svc: str, addrs: list[str], port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-1",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addrs],
    }


def ingress(name: str, host: str, svc: str, port: int | str, tls: bool = False) -> dict[str, Any]:
    by = {"name": port} if isinstance(port, str) else {"number": port}
    backend = {"service": {"name": svc, "port": by}}
    path = {"path": "/", "pathType": "Prefix", "backend": backend}
    spec: dict[str, Any] = {
        "ingressClassName": "netplane",
        "rules": [{"host": host, "http": {"paths": [path]}}],
    }
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if tls:
        spec["tls"] = [{"hosts": [host], "secretName": "bench-tls"}]
        # the same requests over HTTP and HTTPS: no redirect
        meta["annotations"] = {"nginx.ingress.kubernetes.io/ssl-redirect": "false"}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": meta,
        "spec": spec,
    }


def change(i: int, backend_port: int, certs: list[tuple[bytes, bytes]]) -> tuple[str, dict]:
    """The ``i``-th change: (file name, object); kinds in turn, each flipping between two states."""
    kind, flip = CHANGES[i % len(CHANGES)], (i // len(CHANGES)) % 2
    if kind == "endpointslice":
        addrs = ["127.0.0.1", "127.0.0.2"][: 1 + flip]
        return kind, endpoint_slice("web", addrs, backend_port)
    if kind == "service":
        return kind, service("churn", CHURN_IP, 8081 + flip)
    if kind == "ingress":
        # by the port's name: the churn Service's number flips between 8081 and 8082
        return kind, ingress("churn", f"churn-{'ab'[flip]}.bench.test", "churn", "http")
    cert, key = certs[flip]
    return kind, {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "bench-tls", "namespace": NS},
        "data": {"tls.crt": _b64(cert), "tls.key": _b64(key)},
    }


# -- rates and histograms (pure) ------------------------------------------------------


def targets(capacity: dict[str, float], share: float = SHARE) -> dict[str, float]:
    """The soak rate per kind: the same fraction of each kind's capacity, summing to ``share``."""
    each = share / len(capacity)
    return {kind: each * c for kind, c in capacity.items()}


def connections(kind: str, rate: float) -> int:
    """Connections at once for ``kind`` at ``rate`` requests/s (see :data:`CONNS`)."""
    least, per_conn = CONNS[kind]
    return max(least, math.ceil(rate / per_conn))


def bucket(us: float) -> int:
    """The histogram bucket of ``us`` microseconds (1 µs and less: bucket 0)."""
    return int(math.log(max(us, 1.0)) / math.log(STEP))


def merge(hists: list[dict[Any, int]]) -> dict[int, int]:
    """Sum histograms (``{bucket: count}``; JSON gives the buckets as strings)."""
    out: dict[int, int] = {}
    for h in hists:
        for b, n in h.items():
            out[int(b)] = out.get(int(b), 0) + n
    return out


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile in ms: the middle of the bucket holding the value of rank
    ``int(q * n)`` among the ``n`` sorted values, so within 0.5% of it; None if empty."""
    n = sum(hist.values())
    if not n:
        return None
    rank, seen = min(n - 1, int(q * n)), 0
    for b in sorted(hist):
        seen += hist[b]
        if seen > rank:
            return float(STEP ** (b + 0.5) / 1000)
    raise AssertionError("unreachable")


# -- the driver (separate processes on the load core) ---------------------------------


def drive_main(argv: list[str]) -> None:
    """``CONFIG_JSON``: this process's part of the mixed load; one JSON summary line at the end.

    Prints ``ready`` once set up, then waits for the config's go file, which holds the
    wall-clock start of the schedule that every driver process shares.
    """
    import asyncio
    import socket
    import ssl
    import struct

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    cfg = json.loads(argv[0])
    warm, secs, bin_s = cfg["warmup"], cfg["seconds"], cfg["bin"]
    rates: dict[str, float] = cfg["rates"]
    conns: dict[str, int] = cfg["conns"]
    phase: float = cfg["phase"]  # this process's offset in the schedule, in periods
    lat: dict[str, dict[int, dict[int, int]]] = {k: {} for k in KINDS}  # kind -> bin -> hist
    lag: dict[str, dict[int, int]] = {k: {} for k in KINDS}
    started = dict.fromkeys(KINDS, 0)
    fails: dict[str, dict[str, int]] = {k: dict.fromkeys(CATEGORIES, 0) for k in KINDS}
    warm_fails = dict.fromkeys(CATEGORIES, 0)
    examples: dict[str, str] = {}
    cpu = [0.0, 0.0]  # process CPU time at the warm-up's end, and CPU % after it
    drops = [0]  # answers the kernel dropped on the way to the driver's DNS sockets

    class StatusError(Exception):
        pass

    class DnsError(Exception):
        pass

    def category(err: BaseException) -> str:
        if isinstance(err, StatusError):
            return "status"
        if isinstance(err, DnsError):
            return "dns"
        if isinstance(err, TimeoutError | asyncio.TimeoutError):
            return "timeout"
        if isinstance(err, ConnectionRefusedError):
            return "refused"
        if isinstance(err, ssl.SSLError):
            return "tls"
        if isinstance(err, ConnectionError | asyncio.IncompleteReadError | EOFError):
            return "reset"
        return "other"

    def record(kind: str, due: float, start: float, err: BaseException | None) -> None:
        if start < t_meas:
            if err is not None:
                warm_fails[cat := category(err)] += 1
                examples.setdefault(f"{kind}/{cat}", f"{type(err).__name__}: {err}"[:200])
            return
        started[kind] += start < t_end
        b = bucket(1e6 * (start - due))
        lag[kind][b] = lag[kind].get(b, 0) + 1
        if err is None:
            hist = lat[kind].setdefault(int((start - t_meas) // bin_s), {})
            b = bucket(1e6 * (time.monotonic() - start))
            hist[b] = hist.get(b, 0) + 1
            return
        cat = category(err)
        fails[kind][cat] += 1
        examples.setdefault(f"{kind}/{cat}", f"{type(err).__name__}: {err}"[:200])

    req = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    req_close = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()

    tls_ctx = ssl.create_default_context(cafile=cfg["ca"])
    tls_ctx.check_hostname = False  # wrk-like: no name to check; routed by Host

    async def response(reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        if status != 200:
            raise StatusError(status)

    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def paced(kind: str, fire: Any) -> None:
        """Fire ``kind``'s requests at their due times, in batches at most every 1 ms.

        ``fire(due)`` returns once the request is under way; it waits only for a free
        connection (or place among the new connections in flight), and while it waits
        the driver falls behind its schedule: that shows as lag, and as an achieved rate
        below the target if it lasts.
        """
        rate = rates.get(kind, 0.0)
        k = 0
        while rate > 0 and (due := t0 + (k + phase) / rate) < t_end:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(max(due - now, 0.001))
                continue
            while due <= now and due < t_end:
                await fire(due)
                k += 1
                due = t0 + (k + phase) / rate

    pools: list[asyncio.Queue[Any]] = []

    def keepalive(kind: str, port: int, tls: bool) -> Any:
        """Requests over ``conns[kind]`` keep-alive connections, each opened when first needed."""
        pool: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(conns[kind]):
            pool.put_nowait(None)  # a free connection: None until opened
        pools.append(pool)

        async def run(due: float, conn: Any) -> None:
            start = time.monotonic()
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    if conn is None:
                        conn = await asyncio.open_connection(
                            "127.0.0.1", port, ssl=tls_ctx if tls else None,
                            server_hostname=HOST if tls else None,
                        )  # fmt: skip
                    conn[1].write(req)
                    await response(conn[0])
                record(kind, due, start, None)
            except Exception as e:
                record(kind, due, start, e)
                if conn is not None:
                    conn[1].close()
                    conn = None
            finally:
                pool.put_nowait(conn)

        async def fire(due: float) -> None:
            spawn(run(due, await pool.get()))

        return fire

    def one_shot(kind: str, host: str, port: int, tls: bool) -> Any:
        """A new connection per request (``Connection: close``), ``conns[kind]`` at most at once."""
        places = asyncio.Semaphore(conns[kind])

        async def run(due: float) -> None:
            start = time.monotonic()
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    reader, writer = await asyncio.open_connection(
                        host, port, ssl=tls_ctx if tls else None,
                        server_hostname=HOST if tls else None,
                    )  # fmt: skip
                    try:
                        writer.write(req_close)
                        await response(reader)
                    finally:
                        writer.close()
                record(kind, due, start, None)
            except Exception as e:
                record(kind, due, start, e)
            finally:
                places.release()

        async def fire(due: float) -> None:
            await places.acquire()
            spawn(run(due))

        return fire

    packets = []
    for svc, ns in cfg["names"]:  # everything after the ID: flags RD, one question, type A
        name = f"{svc}.{ns}.svc.cluster.local"
        wire = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
        packets.append(struct.pack("!HHHHH", 0x0100, 1, 0, 0, 0) + wire + b"\0\x01\0\x01")
    pending: dict[int, tuple[float, float]] = {}  # query ID -> (due, sent), in sending order
    socks: list[asyncio.DatagramTransport] = []
    queries = [0]

    class Dns(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if (
                len(data) < 12
                or (got := pending.pop(struct.unpack_from("!H", data)[0], None)) is None
            ):
                return  # late (counted as a timeout already) or not ours
            rcode, answers = data[3] & 0x0F, struct.unpack_from("!H", data, 6)[0]
            err = None if rcode == 0 and answers else DnsError(f"rcode {rcode}, {answers} answers")
            record("dns", got[0], got[1], err)

    async def dns_query(due: float) -> None:
        k = queries[0]
        queries[0] += 1
        qid = k % 65536
        if qid in pending:  # 65,536 queries in flight: the oldest is long lost
            d, s = pending.pop(qid)
            record("dns", d, s, TimeoutError("query ID reused"))
        sent = time.monotonic()
        socks[k % DNS_SOCKETS].sendto(struct.pack("!H", qid) + packets[k % len(packets)])
        pending[qid] = (due, sent)

    def expire(now: float) -> None:
        old = []
        for qid, (_, sent) in pending.items():
            if now - sent < DNS_TIMEOUT:
                break
            old.append(qid)
        for qid in old:
            due, sent = pending.pop(qid)
            record("dns", due, sent, TimeoutError(f"no answer in {DNS_TIMEOUT:g} s"))

    async def sweep() -> None:
        while True:
            await asyncio.sleep(0.1)
            expire(time.monotonic())

    def cpu_mark() -> None:
        cpu[0] = time.process_time()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(DNS_SOCKETS):
            transport, _ = await loop.create_datagram_endpoint(
                Dns, remote_addr=("127.0.0.1", cfg["dns_port"]), family=socket.AF_INET
            )
            socks.append(transport)
        sweeper = asyncio.ensure_future(sweep())
        loop.call_later(max(0.0, t_meas - time.monotonic()), cpu_mark)
        await asyncio.gather(
            paced("http", keepalive("http", cfg["http_port"], False)),
            paced("tls", keepalive("tls", cfg["https_port"], True)),
            paced("tls_new", one_shot("tls_new", "127.0.0.1", cfg["https_port"], True)),
            paced("l4", one_shot("l4", WEB_IP, WEB_PORT, False)),
            paced("dns", dns_query),
        )
        cpu[1] = 100 * (time.process_time() - cpu[0]) / max(time.monotonic() - t_meas, 1e-3)
        while tasks:  # the last requests (each ends within OP_TIMEOUT)
            await asyncio.gather(*list(tasks))
        while pending and time.monotonic() < t_end + DNS_TIMEOUT + 0.5:
            await asyncio.sleep(0.1)
        sweeper.cancel()
        expire(math.inf)
        drops[0] = udp_drops({t.get_extra_info("sockname")[1] for t in socks})
        for transport in socks:
            transport.close()
        for pool in pools:
            while not pool.empty():
                if (conn := pool.get_nowait()) is not None:
                    conn[1].close()

    # every driver process keeps one schedule: it starts at the wall-clock time written
    # to the go file once every driver has said it is ready
    print("ready", flush=True)
    go, deadline = Path(cfg["go"]), time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go file in 120 s")
        time.sleep(0.005)
    t0 = time.monotonic() + float(go.read_text()) - time.time()
    t_meas, t_end = t0 + warm, t0 + warm + secs
    asyncio.run(main())
    print(
        json.dumps(
            {
                "lat": lat,
                "lag": lag,
                "started": started,
                "fails": fails,
                "warm_fails": warm_fails,
                "examples": examples,
                "cpu_pct": cpu[1],
                "udp_drops": drops[0],
            }
        ),
        flush=True,
    )


# -- the scenario ---------------------------------------------------------------------


class Soak(Scenario):
    name = "soak"
    title = "Soak: mixed L4/HTTP/TLS/DNS traffic at half of capacity, a change every second, --workers 2"
    description = __doc__.split("\n\n", 1)[1].replace("\n", " ") if __doc__ else ""
    sides = (NETPLANE,)
    peer_note = (
        "No peer: absolute figures. Goals: no failed request (or every one explained by its "
        "category), RSS and descriptor drift between start and end < 5%, achieved rates at "
        "their targets."
    )
    packages = ("nginx", "wrk", "dnsperf")
    warmup_runs = 0
    budget_s = 7200.0
    #: set by ``python -m bench --soak-minutes M``
    minutes: ClassVar[float] = 10.0
    #: driver processes sharing the soak load
    drivers: ClassVar[int] = 2

    def __init__(self) -> None:
        self.work = Path()
        self.backend: Proc | None = None
        self.backend_port = 0
        self.certs: list[tuple[bytes, bytes]] = []
        self.totals: dict[str, dict[str, float | None]] = {}
        self.examples: dict[str, str] = {}

    def timing(self, ctx: Context) -> tuple[float, float, float]:
        """(warm-up s, measured s, latency bin s)."""
        if ctx.quick:
            return 2.0, 10.0, 5.0
        return 30.0, 60.0 * self.minutes, 60.0

    def capacity_timing(self, ctx: Context) -> tuple[int, int]:
        """(warm-up s, measured s) of each kind's capacity run (wrk counts whole seconds)."""
        return (0, 1) if ctx.quick else (1, 5)

    def bins(self, ctx: Context) -> int:
        _, secs, bin_s = self.timing(ctx)
        return max(1, int(-(-secs // bin_s)))

    def metrics(self, ctx: Context) -> list[Metric]:
        unit = "5 s bin" if ctx.quick else "minute"
        out = [
            Metric("requests", "ops", "higher", "requests and queries answered (after warm-up)"),
            Metric("failed", "ops", "lower", "failed requests and queries (after warm-up)"),
            *(Metric(f"failed_{c}", "ops", "lower", f"failed: {c}") for c in CATEGORIES),
            Metric("failed_warmup", "ops", "lower", "failed during the warm-up"),
            Metric("changes", "changes", "higher", "manifest changes written (one a second)"),
            Metric("rss_mb@start", "MB", "lower", "RSS of all netplane processes, start"),
            Metric("rss_mb@end", "MB", "lower", "RSS of all netplane processes, end"),
            Metric("rss_drift_pct", "%", "lower", "RSS drift, end over start (goal < 5%)"),
            Metric(
                "fds@start", "fds", "lower", "open descriptors of all netplane processes, start"
            ),
            Metric("fds@end", "fds", "lower", "open descriptors of all netplane processes, end"),
            Metric("fd_drift_pct", "%", "lower", "descriptor drift, end over start (goal < 5%)"),
            Metric("cpu_pct", "%", "lower", "netplane CPU during the soak (% of one core)"),
            Metric("driver_cpu_pct", "%", "lower", "the drivers' CPU (% of one core)"),
            Metric(
                "udp_drops@netplane",
                "datagrams",
                "lower",
                "DNS queries dropped by the kernel, netplane's sockets full (after warm-up)",
            ),
            Metric(
                "udp_drops@driver",
                "datagrams",
                "lower",
                "DNS answers dropped by the kernel, the drivers' sockets full (whole run)",
            ),
            Metric("capacity_errors", "ops", "lower", "errors of the capacity runs (wrk, dnsperf)"),
        ]
        for kind in KINDS:
            u = UNITS[kind]
            out += [
                Metric(f"capacity@{kind}", u, "higher", f"{kind} capacity (alone, full speed)"),
                Metric(
                    f"capacity_cpu_pct@{kind}", "%", "lower", f"netplane CPU at {kind} capacity"
                ),
                Metric(
                    f"target@{kind}",
                    u,
                    "higher",
                    f"{kind} soak target ({SHARE / len(KINDS):.0%} of capacity)",
                ),
                Metric(f"achieved@{kind}", u, "higher", f"{kind} soak rate achieved"),
                Metric(f"achieved_pct@{kind}", "%", "higher", f"{kind} achieved / target"),
                Metric(f"lag_p99_ms@{kind}", "ms", "lower", f"{kind}: driver late to send, p99"),
            ]
        for kind in KINDS:
            out.append(Metric(f"p99_ms@{kind}", "ms", "lower", f"{kind} p99, whole run"))
            out += [
                Metric(f"p99_ms@{kind}/{b + 1}", "ms", "lower", f"{kind} p99, {unit} {b + 1}")
                for b in range(self.bins(ctx))
            ]
        return out

    def params(self, ctx: Context) -> dict[str, Any]:
        warm, secs, bin_s = self.timing(ctx)
        cap_warm, cap_secs = self.capacity_timing(ctx)
        return {
            "warmup_s": warm,
            "seconds": secs,
            "latency_bin_s": bin_s,
            "capacity_run_s": cap_secs,
            "capacity_warmup_s": cap_warm,
            "capacity_generators": "wrk -t1 -c50 (tls_new, l4: Connection: close); "
            "dnsperf -c 10 -T 1",
            "share": f"{SHARE:g} in all: each kind at {SHARE / len(KINDS):g} of its capacity",
            "driver_processes": self.drivers,
            "dns_sockets_per_driver": DNS_SOCKETS,
            "change_every_s": 1,
            "changes": list(CHANGES),
            "workers": 2,
            "dns_services": DNS_SERVICES,
            "runs": "1",
        }

    def setup(self, ctx: Context) -> None:
        import trustme

        program("wrk")
        program("dnsperf")
        self.work = work = ctx.workdir / self.name
        (work / "manifests").mkdir(parents=True, exist_ok=True)
        (work / "nginx").mkdir(exist_ok=True)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(work / "ca.pem"))
        for _ in range(2):
            leaf = ca.issue_cert("*.bench.test", HOST)
            self.certs.append((leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes()))
        (work / "queries.txt").write_text(
            "".join(f"{s}.{ns}.svc.cluster.local A\n" for s, ns, _ in names(DNS_SERVICES))
        )
        self.backend_port = port = ctx.free_port()
        nginx = program("nginx")
        conf = work / "backend.conf"
        conf.write_text(
            f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {work}/backend.pid;\n"
            f"error_log {work}/backend-error.log warn;\nevents {{ worker_connections 8192; }}\n"
            f"http {{\n    access_log off;\n    keepalive_requests 1000000;\n"
            f"    client_body_temp_path {work}/nginx/body;\n    proxy_temp_path {work}/nginx/proxy;\n"
            f"    fastcgi_temp_path {work}/nginx/fastcgi;\n    uwsgi_temp_path {work}/nginx/uwsgi;\n"
            f"    scgi_temp_path {work}/nginx/scgi;\n"
            f"    server {{ listen 127.0.0.1:{port} backlog=4096; listen 127.0.0.2:{port};\n"
            f'        location / {{ return 200 "ok\\n"; }} }}\n}}\n'
        )
        self.backend = ctx.procs.start(
            [*ctx.pin("server"), nginx, "-p", str(work), "-c", str(conf)],
            name="backend",
            log=work / "backend.log",
        )
        ctx.wait_http(f"http://127.0.0.1:{port}/", 200, timeout=15, proc=self.backend)
        self._write("base", {"apiVersion": "v1", "kind": "List", "items": base_objects()})
        for i in range(len(CHANGES)):
            self._write(*change(i, port, self.certs))

    def _write(self, name: str, obj: dict[str, Any]) -> None:
        tmp = self.work / f"{name}.json.tmp"
        tmp.write_text(json.dumps(obj))
        tmp.replace(self.work / "manifests" / f"{name}.json")  # atomic: never half a file

    def _sample(self, pid: int, seconds: float = 2.0) -> tuple[float, float]:
        """Median (RSS MB, fds) of netplane's processes over ``seconds``."""
        got = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            got.append(footprint(pid))
            time.sleep(0.2)
        return statistics.median(r for r, _ in got), statistics.median(f for _, f in got)

    # -- the capacity phase -----------------------------------------------------------

    def _generator(self, kind: str, secs: int, ports: dict[str, int]) -> list[str]:
        if kind == "dns":
            return [
                program("dnsperf"), "-s", "127.0.0.1", "-p", str(ports["dns"]),
                "-d", str(self.work / "queries.txt"), "-c", "10", "-T", "1", "-l", str(secs),
            ]  # fmt: skip
        url = {
            "http": f"http://127.0.0.1:{ports['http']}/",
            "tls": f"https://127.0.0.1:{ports['https']}/",
            "tls_new": f"https://127.0.0.1:{ports['https']}/",
            "l4": f"http://{WEB_IP}:{WEB_PORT}/",
        }[kind]
        close = ["-H", "Connection: close"] if kind in ("tls_new", "l4") else []
        return [program("wrk"), "-t1", "-c50", f"-d{secs}s", "-H", f"Host: {HOST}", *close, url]

    def _generate(self, ctx: Context, kind: str, secs: int, ports: dict[str, int]) -> str:
        out = self.work / f"capacity-{kind}.out"
        out.write_text("")
        proc = ctx.procs.start(
            [*ctx.pin("load"), *self._generator(kind, secs, ports)],
            name=f"capacity-{kind}", log=self.work / "capacity.log", stdout=out,
        )  # fmt: skip
        rc = ctx.procs.wait(proc, timeout=secs + 60)
        if rc != 0:
            raise RuntimeError(f"the {kind} capacity run exited with {rc}; see {proc.log}")
        return out.read_text()

    def capacity(self, ctx: Context, pid: int, ports: dict[str, int]) -> dict[str, float]:
        """Each kind alone at full speed: ``capacity@``, ``capacity_cpu_pct@`` per kind."""
        warm, secs = self.capacity_timing(ctx)
        res: dict[str, float] = {"capacity_errors": 0}
        for kind in KINDS:
            if warm:
                self._generate(ctx, kind, warm, ports)
            cpu0, t0 = tree_cpu(pid), time.monotonic()
            text = self._generate(ctx, kind, secs, ports)
            cpu = 100 * (tree_cpu(pid) - cpu0) / (time.monotonic() - t0)
            if kind == "dns":
                rate = parse_dnsperf(text)["qps"]
                lost = _LOST.search(text)
                errors = int(lost.group(1)) if lost else 0
            else:
                rate, _, errors = parse_wrk(text)
            if rate <= 0:
                raise RuntimeError(f"no {kind} capacity: {text[-300:]!r}")
            res[f"capacity@{kind}"], res[f"capacity_cpu_pct@{kind}"] = rate, cpu
            res["capacity_errors"] += errors
        return res

    # -- the soak ---------------------------------------------------------------------

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        if index > 0:
            return {}  # one long run is the measure
        work = self.work
        ports = {"http": ctx.free_port(), "https": ctx.free_port(), "dns": free_udp_tcp_port()}
        admin = ctx.free_port()
        argv = [
            *netplane_cmd(), "run", "-f", str(work / "manifests"), "--mode", "local",
            "--service-cidr", "127.77.0.0/16", "--proxy", "on",
            "--ingress-http", f"127.0.0.1:{ports['http']}",
            "--ingress-https", f"127.0.0.1:{ports['https']}",
            "--ingress-access-log", str(work / "access.log"),
            "--dns", f"127.0.0.1:{ports['dns']}", "--admin", f"127.0.0.1:{admin}",
            "--ingress-tls-resumption", "off",
            "--manifest-poll-seconds", "0.2", "--workers", "2",
            "--log-level", "warning", "--shutdown-grace", "1",
        ]  # fmt: skip
        proc = ctx.procs.start(argv, name="netplane", log=work / "netplane.log")
        ctx.wait_http(f"http://127.0.0.1:{admin}/readyz", 200, timeout=120, proc=proc)
        try:
            res = self.capacity(ctx, proc.pid, ports)
            goal = targets({k: res[f"capacity@{k}"] for k in KINDS})
            ctx.echo(
                "    capacity "
                + ", ".join(f"{k} {res[f'capacity@{k}']:.0f}" for k in KINDS)
                + "; targets "
                + ", ".join(f"{k} {goal[k]:.0f}" for k in KINDS)
            )
            res.update(self._soak(ctx, proc, ports, goal))
        finally:
            ctx.procs.stop(proc)
        for kind in KINDS:
            res[f"target@{kind}"] = goal[kind]
            res[f"achieved_pct@{kind}"] = 100 * res[f"achieved@{kind}"] / goal[kind]
        return res

    def _soak(
        self, ctx: Context, proc: Proc, ports: dict[str, int], goal: dict[str, float]
    ) -> dict[str, float]:
        warm, secs, bin_s = self.timing(ctx)
        work, n = self.work, self.drivers
        go = work / "go"
        go.unlink(missing_ok=True)
        drivers, outs = [], []
        for i in range(n):
            cfg = {
                "go": str(go),
                "warmup": warm,
                "seconds": secs,
                "bin": bin_s,
                "rates": {k: r / n for k, r in goal.items()},
                "conns": {k: -(-connections(k, goal[k]) // n) for k in CONNS},
                "phase": i / n,
                "ca": str(work / "ca.pem"),
                "http_port": ports["http"],
                "https_port": ports["https"],
                "dns_port": ports["dns"],
                "names": [(s, ns) for s, ns, _ in names(DNS_SERVICES)],
            }
            outs.append(out := work / f"driver-{i}.out")
            out.write_text("")
            boot = (
                f"import sys; sys.path.insert(0, {str(ctx.root)!r}); "
                "from bench.scenarios.soak import drive_main; drive_main(sys.argv[1:])"
            )
            argv = [*ctx.pin("load"), sys.executable, "-c", boot, json.dumps(cfg)]
            drivers.append(
                ctx.procs.start(
                    argv, name=f"soak-driver-{i}", log=work / f"driver-{i}.log", stdout=out
                )
            )
        deadline = time.monotonic() + 120
        for d, out in zip(drivers, outs, strict=True):
            while "ready" not in out.read_text():
                if d.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the soak driver did not start; see {d.log}")
                time.sleep(0.02)
        start = time.time() + 0.2  # the shared schedule's start
        (tmp := work / "go.tmp").write_text(repr(start))
        tmp.replace(go)
        t0 = time.monotonic() + start - time.time()
        samples: dict[str, tuple[float, float]] = {}
        changes = [0]
        stop = threading.Event()

        def churn() -> None:  # one change a second, in turn, until the drivers are done
            while not stop.wait(1.0):
                self._write(*change(len(CHANGES) + changes[0], self.backend_port, self.certs))
                changes[0] += 1

        churner = threading.Thread(target=churn, daemon=True)
        churner.start()
        try:
            time.sleep(max(0.0, t0 + warm - time.monotonic()))
            cpu0, c0 = tree_cpu(proc.pid), time.monotonic()
            drops0 = udp_drops({ports["dns"]})
            samples["start"] = self._sample(proc.pid)
            time.sleep(max(0.0, t0 + warm + secs - 2.5 - time.monotonic()))
            cpu = 100 * (tree_cpu(proc.pid) - cpu0) / (time.monotonic() - c0)
            samples["end"] = self._sample(proc.pid)
            drops = udp_drops({ports["dns"]}) - drops0
            rcs = [
                ctx.procs.wait(d, timeout=max(60.0, t0 + warm + secs + 60 - time.monotonic()))
                for d in drivers
            ]
        finally:
            stop.set()
            churner.join(5)
            for d in drivers:
                ctx.procs.stop(d)
        for d, rc in zip(drivers, rcs, strict=True):
            if rc != 0:
                raise RuntimeError(f"the soak driver exited with {rc}; see {d.log}")
        parts = [json.loads(out.read_text().splitlines()[-1]) for out in outs]
        res: dict[str, float] = {"changes": changes[0], "cpu_pct": cpu}
        res["driver_cpu_pct"] = sum(p["cpu_pct"] for p in parts)
        res["udp_drops@netplane"] = drops
        res["udp_drops@driver"] = sum(p["udp_drops"] for p in parts)
        res["requests"] = 0
        for c in CATEGORIES:
            res[f"failed_{c}"] = sum(p["fails"][k][c] for p in parts for k in KINDS)
        res["failed"] = sum(res[f"failed_{c}"] for c in CATEGORIES)
        res["failed_warmup"] = sum(sum(p["warm_fails"].values()) for p in parts)
        (rss0, fd0), (rss1, fd1) = samples["start"], samples["end"]
        res.update({"rss_mb@start": rss0, "rss_mb@end": rss1, "fds@start": fd0, "fds@end": fd1})
        res["rss_drift_pct"] = 100 * (rss1 - rss0) / rss0
        res["fd_drift_pct"] = 100 * (fd1 - fd0) / fd0
        self.totals, self.examples = {}, {}
        for p in parts:
            for key, text in p["examples"].items():
                self.examples.setdefault(key, text)
        for kind in KINDS:
            res[f"achieved@{kind}"] = sum(p["started"][kind] for p in parts) / secs
            if (lag := percentile(merge([p["lag"][kind] for p in parts]), 0.99)) is not None:
                res[f"lag_p99_ms@{kind}"] = lag
            every = merge([h for p in parts for h in p["lat"][kind].values()])
            res["requests"] += sum(every.values())
            self.totals[kind] = {"p50": percentile(every, 0.5), "p99": percentile(every, 0.99)}
            if (p99 := self.totals[kind]["p99"]) is not None:
                res[f"p99_ms@{kind}"] = p99
            for b in range(self.bins(ctx)):
                hist = merge([p["lat"][kind].get(str(b), {}) for p in parts])
                if (p99 := percentile(hist, 0.99)) is not None:
                    res[f"p99_ms@{kind}/{b + 1}"] = p99
        failed: dict[str, int] = {}
        for p in parts:
            for k, f in p["fails"].items():
                for c, v in f.items():
                    if v:
                        failed[f"{k}/{c}"] = failed.get(f"{k}/{c}", 0) + v
        ctx.echo(
            f"    {res['requests']:.0f} ok, failed {failed or 'none'}, {changes[0]} changes; "
            "achieved "
            + ", ".join(f"{k} {res[f'achieved@{k}']:.0f}/{goal[k]:.0f}" for k in KINDS)
            + f"; netplane CPU {cpu:.0f}%, drivers {res['driver_cpu_pct']:.0f}%; UDP drops "
            f"netplane {drops}, drivers {res['udp_drops@driver']:.0f}"
        )
        if self.examples:
            ctx.echo(f"    failure examples: {self.examples}")
        return res

    def series(self, ctx: Context, samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        # per-kind p50/p99 for the percentiles plot; the failure examples for the JSON
        points = [
            {
                "group": f"soak {kind}",
                "side": NETPLANE,
                "unit": "ms",
                "values": {"p50": t["p50"], "p99": t["p99"]},
            }
            for kind, t in self.totals.items()
            if t["p99"] is not None
        ]
        # p99 per minute (quick: per 5 s bin) and kind, for the latency-over-time plot
        bins = self.bins(ctx)
        _, _, bin_s = self.timing(ctx)
        lines = {
            kind: [
                statistics.median(v)
                if (v := samples.get(NETPLANE, {}).get(f"p99_ms@{kind}/{b + 1}"))
                else None
                for b in range(bins)
            ]
            for kind in KINDS
        }
        over_time = {
            "title": "Soak: p99 latency per " + ("minute" if bin_s == 60 else f"{bin_s:.0f} s bin"),
            "x": "minute" if bin_s == 60 else f"{bin_s:.0f} s bin",
            "unit": "ms",
            "lines": lines,
        }
        return {
            "latency_percentiles": points,
            "latency_over_time": over_time,
            "soak_failure_examples": self.examples,
        }

    def teardown(self, ctx: Context) -> None:
        if self.backend is not None:
            ctx.procs.stop(self.backend)
            self.backend = None
