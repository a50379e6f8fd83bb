"""``overload``: keep-alive throughput beside idle and slowloris connections; DNS under a flood.

(a) Ingress. Two netplane processes with the same config and manifests
(HTTP ingress, one Ingress rule, access log on, one worker, open-files limit
set to the hard limit with ``prlimit``), both on the server core, each on its
own port. A holder process on the load core keeps 10,000 idle keep-alive
connections (each served one request, then silent) and 1,000 slowloris
connections (a request head sent one header byte every 5 s, never finished)
open on one of them, "loaded"; the other, "unloaded", holds none. Once the
holder reports every connection open, wrk (``-t1 -c50`` keep-alive) measures
req/s and p99 against the two in turn: 4 rounds of one 5 s run per process,
in ABBA order (loaded, unloaded; unloaded, loaded; ...). This machine's speed
drifts by up to 2x within minutes, so the earlier design (unloaded, loaded,
unloaded one after another with one process) measured the drift more than
the load; here both sides see the same moment of the machine and the drift
cancels in each round's ratio. The figure is the median over the rounds of
loaded / unloaded req/s (goal >= 0.9). The loaded process's own background
work (timers, the slowloris bytes) also runs during the unloaded runs, on
the same core; its CPU share then is reported, as the bias it puts on the
ratio. Memory per connection is the loaded process's RSS delta over its own
baseline before the holder started, over the connections opened (idle and
slowloris separately). The holder counts connections that failed to open
and ones the server closed (the header timeout would close the slowloris
connections after 60 s, the keep-alive timeout the idle ones after 75 s:
the runs end well before that), and reopens the latter.

(b) DNS. netplane with DNS only (1,000 services) on the server core. A
probe bound to 127.0.0.2 (load core, ``nice -n -10`` so that its own
timing does not wait behind the flooder on the shared core) sends A
queries at a modest fixed rate and measures its p50/p99 latency and the
share answered within 1 s, alone, then while dnsperf floods from
127.0.0.1 at full rate (``-c 10 -T 1``, no rate limit), then alone again
(the baseline is the mean of the two runs alone).

Quick mode: 200 idle and 20 slowloris connections (a byte every 0.5 s),
one round (loaded, unloaded), 100 services, 1 s runs.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import NETPLANE, Context, Metric, Proc, Scenario, netplane_cmd, vmrss_mb
from bench.scenarios.dns import dns_answers, manifests, names, parse_dnsperf, program, query_files
from bench.scenarios.ingress import LISTEN, IngressBench, objects, wrk_latency
from bench.scenarios.l4 import cpu_seconds, parse_wrk
from netplane.testing.ports import free_udp_tcp_port

HOST = "h0.bench.test"
# ``rounds`` x 2 runs of ``wrk_secs`` (part a) plus one drip interval must stay well
# below the 60 s header timeout, or the server closes the slowloris connections mid-run;
# ``secs`` is part (b)'s run length
FULL = {
    "idle": 10_000, "slow": 1_000, "interval": 5.0, "rounds": 4, "wrk_secs": 5.0,
    "secs": 10.0, "services": 1000,
}  # fmt: skip
QUICK = {
    "idle": 200, "slow": 20, "interval": 0.5, "rounds": 1, "wrk_secs": 1.0,
    "secs": 1.0, "services": 100,
}  # fmt: skip
#: part (a)'s two netplane processes; the holder keeps its connections on the first
LOADED, UNLOADED = "loaded", "unloaded"
PROBE_SRC = "127.0.0.2"
FLOOD_SRC = "127.0.0.1"
PROBE_QPS = {"full": 200, "quick": 100}
#: descriptors beyond the held connections: wrk's 50, listeners, upstreams, logs
FD_MARGIN = 1000


def _boot(root: Path, func: str) -> list[str]:
    """``python -c`` running ``func(sys.argv[1:])`` of this module (stdlib + uvloop only)."""
    return [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {str(root)!r}); "
        f"from bench.scenarios.overload import {func}; {func}(sys.argv[1:])",
    ]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the holder: idle and slowloris connections (a separate process) ------------------


def hold_main(argv: list[str]) -> None:
    """``host port idle slow interval status go limit``: hold connections until ``limit`` s.

    Writes ``status`` (JSON, replaced atomically) every second: the phase
    (``idle`` once every idle connection was served, ``slow`` once every
    slowloris one is open), how many are open, closed by the server and
    reopened. Starts the slowloris connections once the file ``go`` exists.
    """
    host, port, n_idle, n_slow = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    interval, status, go, limit = float(argv[4]), Path(argv[5]), Path(argv[6]), float(argv[7])
    import asyncio

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    slow_head = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode()
    st: dict[str, Any] = {
        "phase": "opening",
        "idle_open": 0,
        "idle_failed": 0,
        "idle_closed": 0,
        "slow_open": 0,
        "slow_failed": 0,
        "slow_closed": 0,
        "slow_bytes": 0,
        "nofile": hard,
    }

    class Conn(asyncio.Protocol):
        def __init__(self, kind: str, served: asyncio.Future[None]) -> None:
            self.kind, self.served, self.t = kind, served, None

        def connection_made(self, transport: Any) -> None:
            self.t = transport
            transport.write(request if self.kind == "idle" else slow_head)
            if self.kind == "slow" and not self.served.done():
                self.served.set_result(None)

        def data_received(self, data: bytes) -> None:
            if not self.served.done():
                self.served.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.served.done():
                self.served.set_exception(ConnectionError("closed before served"))
            elif running:
                st[f"{self.kind}_closed"] += 1
                st[f"{self.kind}_open"] -= 1
                conns[self.kind].discard(self)
                reopen.append(self.kind)

    conns: dict[str, set[Conn]] = {"idle": set(), "slow": set()}
    reopen: list[str] = []
    running = True

    def write_status() -> None:
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(st))
        tmp.replace(status)

    async def open_one(kind: str, sem: asyncio.Semaphore) -> None:
        async with sem:
            loop = asyncio.get_running_loop()
            served: asyncio.Future[None] = loop.create_future()
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: Conn(kind, served), host, port), 10
                )
                await asyncio.wait_for(served, 10)
            except (OSError, TimeoutError, ConnectionError):
                st[f"{kind}_failed"] += 1
                return
            conns[kind].add(proto)
            st[f"{kind}_open"] += 1

    async def drip() -> None:
        # one byte per slowloris connection per interval, spread over the interval
        while True:
            batch = list(conns["slow"])
            step = interval / max(len(batch), 1)
            for c in batch:
                if c.t is not None and not c.t.is_closing():
                    c.t.write(b"a")
                    st["slow_bytes"] += 1
                await asyncio.sleep(step)
            if not batch:
                await asyncio.sleep(interval)

    async def main() -> None:
        nonlocal running
        t_end = time.monotonic() + limit
        sem = asyncio.Semaphore(100)  # below the listener's backlog
        write_status()
        await asyncio.gather(*(open_one("idle", sem) for _ in range(n_idle)))
        st["phase"] = "idle"
        write_status()
        while not go.exists() and time.monotonic() < t_end:
            await asyncio.sleep(0.05)
        await asyncio.gather(*(open_one("slow", sem) for _ in range(n_slow)))
        st["phase"] = "slow"
        write_status()
        dripper = asyncio.create_task(drip())
        while time.monotonic() < t_end:
            await asyncio.sleep(1)
            again, reopen[:] = reopen[:], []
            await asyncio.gather(*(open_one(kind, sem) for kind in again))
            st["reopened"] = st.get("reopened", 0) + len(again)
            write_status()
        running = False
        dripper.cancel()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())


# -- the DNS probe: a modest, fixed rate from its own address -------------------------


def probe_main(argv: list[str]) -> None:
    """``src port qps seconds names_file``: print one JSON line (sent, answered, p50, p99)."""
    import select
    import socket
    import struct

    src, port, qps, secs = argv[0], int(argv[1]), float(argv[2]), float(argv[3])
    qnames = Path(argv[4]).read_text().split()
    packets = []
    for name in qnames:  # everything after the ID: flags RD, one question, type A
        wire = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
        packets.append(struct.pack("!HHHHH", 0x0100, 1, 0, 0, 0) + wire + b"\0\x01\0\x01")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.setblocking(False)
    sent: dict[int, float] = {}
    lat: list[float] = []
    late = 0
    start = time.perf_counter()
    end = start + secs
    n = 0
    while True:
        now = time.perf_counter()
        due = start + n / qps
        if now >= due and due < end:
            qid = n % 65536
            pkt = packets[n % len(packets)]
            try:
                s.sendto(struct.pack("!H", qid) + pkt, ("127.0.0.1", port))
                sent[qid] = now
            except BlockingIOError:
                pass
            n += 1
            continue
        if now > end + 1.0:  # 1 s after the last query: the rest are unanswered
            break
        wait = due - now if due < end else end + 1.0 - now
        r, _, _ = select.select([s], [], [], wait)
        while r:
            try:
                data = s.recv(4096)
            except BlockingIOError:
                break
            t0 = sent.pop(struct.unpack("!H", data[:2])[0], None)
            if t0 is not None:
                got = time.perf_counter() - t0
                if got <= 1.0:
                    lat.append(got * 1000)
                else:
                    late += 1
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    print(
        json.dumps(
            {"sent": n, "answered": len(lat), "late": late, "p50": pick(0.5), "p99": pick(0.99)}
        )
    )


# -- the scenario ---------------------------------------------------------------------


class Overload(Scenario):
    name = "overload"
    title = "Overload: keep-alive req/s beside 10k idle + 1k slowloris connections; DNS flood"
    description = __doc__.split("\n\n", 1)[1].replace("\n", " ") if __doc__ else ""
    sides = (NETPLANE,)
    peer_note = (
        "No peer: each figure is netplane under overload against netplane unloaded in the same "
        "run (ingress: two identical processes side by side on the server core, wrk "
        "alternating between them in ABBA order). Goals: loaded/unloaded req/s >= 0.9; the "
        "DNS probe's answer rate and p99 hold up while another source floods."
    )
    packages = ("wrk", "dnsperf", "nginx")
    warmup_runs = 0
    budget_s = 900.0

    def __init__(self) -> None:
        self.ingress = IngressBench()
        self.work: Path = Path()

    def size(self, ctx: Context) -> dict[str, Any]:
        return QUICK if ctx.quick else FULL

    def metrics(self, ctx: Context) -> list[Metric]:
        z = self.size(ctx)
        conns = f"{z['idle']:,} idle + {z['slow']:,} slowloris"
        per = f"median of {z['rounds']} rounds" if z["rounds"] > 1 else "1 round"
        return [
            Metric("rps_unloaded", "req/s", "higher", f"keep-alive req/s, unloaded ({per})"),
            Metric("rps_loaded", "req/s", "higher", f"keep-alive req/s beside {conns} ({per})"),
            Metric("rps_ratio", "x", "higher", f"loaded / unloaded req/s, {per} (goal >= 0.9)"),
            *(
                Metric(
                    f"rps_ratio@round{r + 1}", "x", "higher", f"loaded / unloaded, round {r + 1}"
                )
                for r in range(z["rounds"])
            ),
            Metric("p99_unloaded_ms", "ms", "lower", f"keep-alive p99, unloaded ({per})"),
            Metric("p99_loaded_ms", "ms", "lower", f"keep-alive p99 beside {conns} ({per})"),
            Metric(
                "bg_cpu_pct",
                "%",
                "lower",
                "loaded netplane's CPU while wrk drives the unloaded one (% of the shared core)",
            ),
            Metric("kb_per_idle", "kB", "lower", "RSS per idle keep-alive connection"),
            Metric("kb_per_slow", "kB", "lower", "RSS per slowloris connection"),
            Metric("fds_loaded", "fds", "lower", "netplane's open descriptors, loaded"),
            Metric("held_failed", "conns", "lower", "idle/slowloris connections not established"),
            Metric("held_closed", "conns", "lower", "held connections the server closed"),
            Metric("probe_p50_ms@alone", "ms", "lower", "DNS probe p50, alone"),
            Metric("probe_p99_ms@alone", "ms", "lower", "DNS probe p99, alone"),
            Metric("probe_answered_pct@alone", "%", "higher", "DNS probe answered in 1 s, alone"),
            Metric("probe_p50_ms@flood", "ms", "lower", "DNS probe p50, another source flooding"),
            Metric("probe_p99_ms@flood", "ms", "lower", "DNS probe p99, another source flooding"),
            Metric("probe_answered_pct@flood", "%", "higher", "DNS probe answered in 1 s, flood"),
            Metric("flood_qps", "QPS", "higher", "the flooder's answered QPS (dnsperf)"),
        ]

    def params(self, ctx: Context) -> dict[str, Any]:
        z = self.size(ctx)
        mode = "quick" if ctx.quick else "full"
        return {
            "idle": z["idle"],
            "slowloris": z["slow"],
            "slowloris_byte_every_s": z["interval"],
            "wrk": f"-t1 -c50 -d{z['wrk_secs']:g}s --latency",
            "ingress_rounds": f"{z['rounds']} x (loaded, unloaded), ABBA order",
            "dns_services": z["services"],
            "probe": f"{PROBE_QPS[mode]} QPS from {PROBE_SRC}, {z['secs']:g} s, timeout 1 s",
            "flood": f"dnsperf -a {FLOOD_SRC} -c 10 -T 1 (no -Q)",
            "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            "runs": "1 (quick)" if ctx.quick else f"{ctx.runs}",
        }

    def setup(self, ctx: Context) -> None:
        program("wrk")
        program("dnsperf")
        z = self.size(ctx)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        need = z["idle"] + z["slow"] + FD_MARGIN
        if hard != resource.RLIM_INFINITY and hard < need:
            raise RuntimeError(f"open-files hard limit {hard} < {need} needed (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.ingress.setup(ctx)  # the nginx backend and the certificate
        self.work = work = ctx.workdir / self.name
        for sub in ("http", "dns"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        objs = objects(1, self.ingress.backend_addr, *self.ingress.cert)
        (work / "http" / "objects.json").write_text(
            json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
        )
        (work / "dns" / "objects.json").write_text(json.dumps(manifests(z["services"])))
        (work / "flood.txt").write_text(query_files(z["services"])["mix"])
        (work / "probe.txt").write_text(
            "\n".join(f"{s}.{ns}.svc.cluster.local" for s, ns, _ in names(z["services"])) + "\n"
        )

    def _netplane(self, ctx: Context, sub: str, index: int, *args: str, tag: str = "") -> Proc:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        limit = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        argv = [
            *ctx.pin("server"), "prlimit", f"--nofile={limit}:{limit}", "--", *netplane_cmd(),
            "run", "-f", str(self.work / sub), "--mode", "local", "--proxy", "off",
            "--admin", "off", "--log-level", "warning", "--shutdown-grace", "1",
            "--workers", "1", *args,
        ]  # fmt: skip
        name = f"{sub}-{tag}" if tag else sub
        return ctx.procs.start(argv, name=f"netplane-{name}", log=self.work / f"{name}-{index}.log")

    def _wrk(self, ctx: Context, port: int, secs: float) -> tuple[float, float]:
        text = self.ingress._wrk(ctx, f"http://{LISTEN}:{port}/", HOST, secs)
        rps, total, errors = parse_wrk(text)
        if errors > 0.01 * max(total, 1):
            raise RuntimeError(f"wrk: {errors} errors in {total} requests")
        return rps, wrk_latency(text).get("p99", float("nan"))

    def _status(self, path: Path) -> dict[str, Any]:
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def _wait_phase(self, path: Path, phase: str, proc: Proc, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self._status(path)
            if st.get("phase") == phase:
                return st
            if proc.popen.poll() is not None:
                raise RuntimeError(f"the holder exited; see {proc.log}")
            time.sleep(0.05)
        raise TimeoutError(f"the holder did not reach {phase!r} in {timeout:.0f} s: {st}")

    def _ingress(self, ctx: Context, index: int) -> dict[str, float]:
        z = self.size(ctx)
        secs = z["wrk_secs"]
        procs: dict[str, Proc] = {}
        ports: dict[str, int] = {}
        for tag in (LOADED, UNLOADED):  # the same config; only the port and files differ
            ports[tag] = port = ctx.free_port()
            procs[tag] = self._netplane(
                ctx, "http", index, "--dns", "off", "--ingress-https", "off",
                "--ingress-http", f"{LISTEN}:{port}",
                "--ingress-access-log", str(self.work / f"access-{tag}-{index}.log"),
                tag=tag,
            )  # fmt: skip
        proc = procs[LOADED]
        rps: dict[str, list[float]] = {LOADED: [], UNLOADED: []}
        p99: dict[str, list[float]] = {LOADED: [], UNLOADED: []}
        bg_cpu = bg_wall = 0.0
        holder: Proc | None = None
        try:
            for tag in (LOADED, UNLOADED):
                self.ingress._wait(ports[tag], HOST, procs[tag])
                if not ctx.quick:
                    self._wrk(ctx, ports[tag], 1)  # warm-up: pools, caches
            time.sleep(0.5)
            rss0 = vmrss_mb(proc.pid)
            status, go = self.work / f"hold-{index}.json", self.work / f"go-{index}"
            budget = 600.0 if not ctx.quick else 60.0  # the holder's own bound
            holder = ctx.procs.start(
                [*ctx.pin("load"), *_boot(ctx.root, "hold_main"), LISTEN, str(ports[LOADED]),
                 str(z["idle"]), str(z["slow"]), str(z["interval"]), str(status), str(go),
                 str(budget)],
                name="holder", log=self.work / "holder.log",
            )  # fmt: skip
            st = self._wait_phase(status, "idle", holder, 300)
            time.sleep(0.5)
            rss1 = vmrss_mb(proc.pid)
            go.touch()
            st = self._wait_phase(status, "slow", holder, 120)
            t_slow = time.monotonic()  # every connection is open (or counted as failed)
            time.sleep(max(0.5, z["interval"]))  # one drip round
            rss2, fds = vmrss_mb(proc.pid), fd_count(proc.pid)
            for r in range(z["rounds"]):  # ABBA: loaded first in even rounds
                for tag in (LOADED, UNLOADED) if r % 2 == 0 else (UNLOADED, LOADED):
                    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
                    got, p = self._wrk(ctx, ports[tag], secs)
                    if tag == UNLOADED:  # what the loaded one takes from the shared core
                        bg_cpu += cpu_seconds(proc.pid) - cpu0
                        bg_wall += time.monotonic() - t0
                    rps[tag].append(got)
                    p99[tag].append(p)
            held_s = time.monotonic() - t_slow
            time.sleep(1.1)  # the holder's status is at most 1 s old
            st = self._status(status) or st
            if holder.popen.poll() is not None:
                raise RuntimeError(f"the holder exited during the runs; see {holder.log}")
        finally:
            if holder is not None:
                ctx.procs.stop(holder)
            for tag in (LOADED, UNLOADED):
                ctx.procs.stop(procs[tag])
        ratios = [lo / un if un else 0.0 for lo, un in zip(rps[LOADED], rps[UNLOADED], strict=True)]
        ctx.echo(f"    holder: {st}")
        ctx.echo(
            f"    req/s loaded {[round(x) for x in rps[LOADED]]}, unloaded "
            f"{[round(x) for x in rps[UNLOADED]]}, ratio per round "
            f"{[round(x, 3) for x in ratios]} (median {statistics.median(ratios):.3f}); "
            f"the slowloris connections open {held_s:.0f} s at the end of the last run"
        )
        return {
            "rps_unloaded": statistics.median(rps[UNLOADED]),
            "rps_loaded": statistics.median(rps[LOADED]),
            "rps_ratio": statistics.median(ratios),
            **{f"rps_ratio@round{r + 1}": x for r, x in enumerate(ratios)},
            "p99_unloaded_ms": statistics.median(p99[UNLOADED]),
            "p99_loaded_ms": statistics.median(p99[LOADED]),
            "bg_cpu_pct": 100 * bg_cpu / bg_wall if bg_wall else 0.0,
            "kb_per_idle": 1024 * (rss1 - rss0) / max(st.get("idle_open", 0), 1),
            "kb_per_slow": 1024 * (rss2 - rss1) / max(st.get("slow_open", 0), 1),
            "fds_loaded": fds,
            "held_failed": st.get("idle_failed", 0) + st.get("slow_failed", 0),
            "held_closed": st.get("idle_closed", 0) + st.get("slow_closed", 0),
        }

    def _probe(self, ctx: Context, port: int, secs: float) -> dict[str, float]:
        qps = PROBE_QPS["quick" if ctx.quick else "full"]
        out = self.work / "probe.out"
        out.write_text("")
        nice = ["nice", "-n", "-10"] if os.geteuid() == 0 else []
        proc = ctx.procs.start(
            [*ctx.pin("load"), *nice, *_boot(ctx.root, "probe_main"), PROBE_SRC, str(port),
             str(qps), str(secs), str(self.work / "probe.txt")],
            name="dns-probe", log=self.work / "probe.log", stdout=out,
        )  # fmt: skip
        rc = ctx.procs.wait(proc, timeout=secs + 30)
        if rc != 0:
            raise RuntimeError(f"the DNS probe exited with {rc}; see {proc.log}")
        got = json.loads(out.read_text().splitlines()[-1])
        return {
            "p50": got["p50"],
            "p99": got["p99"],
            "pct": 100 * got["answered"] / max(got["sent"], 1),
        }

    def _dns(self, ctx: Context, index: int) -> dict[str, float]:
        z = self.size(ctx)
        secs = z["secs"]
        port = free_udp_tcp_port()
        proc = self._netplane(
            ctx, "dns", index, "--dns", f"127.0.0.1:{port}",
            "--ingress-http", "off", "--ingress-https", "off",
        )  # fmt: skip
        try:
            svc, ns, _ = names(1)[0]
            deadline = time.monotonic() + 60
            while dns_answers(port, f"{svc}.{ns}.svc.cluster.local") != 0:
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"netplane does not answer DNS; see {proc.log}")
                time.sleep(0.05)
            alone = [self._probe(ctx, port, secs)]
            out = self.work / "flood.out"
            out.write_text("")
            flood = ctx.procs.start(
                [*ctx.pin("load"), program("dnsperf"), "-s", "127.0.0.1", "-p", str(port),
                 "-a", FLOOD_SRC, "-d", str(self.work / "flood.txt"), "-c", "10", "-T", "1",
                 "-l", f"{secs + 2:g}"],
                name="dnsperf-flood", log=self.work / "flood.log", stdout=out,
            )  # fmt: skip
            time.sleep(1.0)  # the flood is at full rate
            flooded = self._probe(ctx, port, secs)
            rc = ctx.procs.wait(flood, timeout=secs + 60)
            if rc != 0:
                raise RuntimeError(f"dnsperf exited with {rc}: {out.read_text()[-300:]}")
            flood_qps = parse_dnsperf(out.read_text())["qps"]
            alone.append(self._probe(ctx, port, secs))
        finally:
            ctx.procs.stop(proc)
        ctx.echo(f"    dns probe alone {alone}, flooded {flooded}, flood {flood_qps:.0f} QPS")
        res = {"flood_qps": flood_qps}
        for key, src in (("p50_ms", "p50"), ("p99_ms", "p99"), ("answered_pct", "pct")):
            res[f"probe_{key}@alone"] = statistics.fmean(a[src] for a in alone)
            res[f"probe_{key}@flood"] = flooded[src]
        return res

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        if ctx.quick and index > 0:
            return {}
        return {**self._ingress(ctx, index), **self._dns(ctx, index)}

    def teardown(self, ctx: Context) -> None:
        self.ingress.teardown(ctx)
