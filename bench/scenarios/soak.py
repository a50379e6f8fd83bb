"""``soak``: mixed L4, ingress (HTTP, TLS) and DNS traffic for minutes, with a change every second.

netplane runs with ``--workers 2`` (unpinned), the L4 proxy, the ingress on
HTTP and HTTPS and DNS, from a manifest directory polled every 0.2 s
(``--manifest-poll-seconds 0.2``). A driver process on the load core
(asyncio, uvloop) sends fixed, modest rates for the whole run (default 10
minutes, ``--soak-minutes``; quick: 12 s):

- HTTP: 400 req/s over 4 keep-alive connections to the Ingress host;
- TLS: 200 req/s over 2 keep-alive connections, plus 10 new TLS
  connections/s (handshake, one request, close);
- L4: 100 new TCP connections/s through the ClusterIP (one request each,
  ``Connection: close``);
- DNS: 400 QPS over UDP, A queries for the Services' names.

These rates are far below what one worker serves; they are fixed so that a
Python driver on the shared load core keeps them exactly and its latency
figures stay honest. Every second the harness rewrites one manifest in turn
(written aside, then renamed into the directory): the live EndpointSlice
(one endpoint, then two), a second Service (port 8081, then 8082), a second
Ingress (host churn-a, then churn-b) and the live TLS Secret (two
certificates from one CA, alternately).

Reported: requests and failed requests (by category: timeout, refused,
reset, tls, status, dns; none is expected), RSS and open descriptors summed
over every netplane process after the warm-up (30 s; quick 2 s) and at the
end (each the median of samples over 2 s; goal: drift < 5%), and p99
latency per kind and per minute (quick: per 5 s).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from bench.harness import NETPLANE, Context, Metric, Proc, Scenario, netplane_cmd, vmrss_mb
from bench.scenarios.dns import manifests as dns_manifests
from bench.scenarios.dns import names
from bench.scenarios.l4 import program
from netplane.testing.ports import free_udp_tcp_port

NS = "bench"
HOST = "h0.bench.test"
WEB_IP, WEB_PORT = "127.77.50.10", 8080
CHURN_IP = "127.77.50.20"
DNS_SERVICES = 100
#: fixed rates: (per second, connections)
RATES = {"http": (400, 4), "tls": (200, 2), "tls_new": (10, 1), "l4": (100, 1), "dns": (400, 1)}
KINDS = ("http", "tls", "tls_new", "l4", "dns")
CATEGORIES = ("timeout", "refused", "reset", "tls", "status", "dns", "other")
CHANGES = ("endpointslice", "service", "ingress", "secret")
OP_TIMEOUT = 5.0


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


def ingress(name: str, host: str, svc: str, port: int, tls: bool = False) -> dict[str, Any]:
    backend = {"service": {"name": svc, "port": {"number": port}}}
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
        return kind, ingress("churn", f"churn-{'ab'[flip]}.bench.test", "churn", 8081)
    cert, key = certs[flip]
    return kind, {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "bench-tls", "namespace": NS},
        "data": {"tls.crt": _b64(cert), "tls.key": _b64(key)},
    }


# -- the driver (a separate process on the load core) ---------------------------------


def drive_main(argv: list[str]) -> None:
    """``CONFIG_JSON``: run the mixed load, print one JSON summary line."""
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
    tls_ctx = ssl.create_default_context(cafile=cfg["ca"])
    tls_ctx.check_hostname = False  # wrk-like: no SNI name to resolve; routed by Host
    lat: dict[tuple[str, int], list[float]] = {}
    fails: dict[str, dict[str, int]] = {k: dict.fromkeys(CATEGORIES, 0) for k in KINDS}
    warm_fails = dict.fromkeys(CATEGORIES, 0)
    examples: dict[str, str] = {}
    t0 = time.monotonic()
    t_end = t0 + warm + secs

    class StatusError(Exception):
        pass

    class DnsError(Exception):
        pass

    def record(kind: str, start: float, err: BaseException | None) -> None:
        if err is None:
            if start >= t0 + warm:
                b = int((start - t0 - warm) // bin_s)
                lat.setdefault((kind, b), []).append(1000 * (time.monotonic() - start))
            return
        if isinstance(err, StatusError):
            cat = "status"
        elif isinstance(err, DnsError):
            cat = "dns"
        elif isinstance(err, TimeoutError | asyncio.TimeoutError):
            cat = "timeout"
        elif isinstance(err, ConnectionRefusedError):
            cat = "refused"
        elif isinstance(err, ssl.SSLError):
            cat = "tls"
        elif isinstance(err, ConnectionError | asyncio.IncompleteReadError | EOFError):
            cat = "reset"
        else:
            cat = "other"
        if start >= t0 + warm:
            fails[kind][cat] += 1
        else:
            warm_fails[cat] += 1
        examples.setdefault(f"{kind}/{cat}", f"{type(err).__name__}: {err}"[:200])

    req = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    req_close = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()

    async def response(reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        return status

    async def paced(kind: str, op: Any) -> None:
        rate, conns = RATES[kind]
        state: list[Any] = [None] * conns

        async def worker(j: int) -> None:
            k = j
            while True:
                due = t0 + k / rate
                if due >= t_end:
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                start = time.monotonic()
                try:
                    await asyncio.wait_for(op(state, j), OP_TIMEOUT)
                    record(kind, start, None)
                except Exception as e:
                    record(kind, start, e)
                    if state[j] is not None:
                        state[j][1].close()
                        state[j] = None
                k += conns

        await asyncio.gather(*(worker(j) for j in range(conns)))
        for s in state:
            if s is not None:
                s[1].close()

    def sni(tls: bool) -> str | None:
        return HOST if tls else None

    def keepalive(port: int, tls: bool) -> Any:
        async def op(state: list[Any], j: int) -> None:
            if state[j] is None:
                state[j] = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=tls_ctx if tls else None, server_hostname=sni(tls)
                )
            reader, writer = state[j]
            writer.write(req)
            if (status := await response(reader)) != 200:
                raise StatusError(status)

        return op

    def one_shot(host: str, port: int, tls: bool) -> Any:
        async def op(state: list[Any], j: int) -> None:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls_ctx if tls else None, server_hostname=sni(tls)
            )
            try:
                writer.write(req_close)
                if (status := await response(reader)) != 200:
                    raise StatusError(status)
            finally:
                writer.close()

        return op

    qnames = [f"{s}.{ns}.svc.cluster.local" for s, ns in cfg["names"]]
    pending: dict[int, tuple[float, asyncio.Future[bytes]]] = {}

    class Dns(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            got = pending.pop(struct.unpack("!H", data[:2])[0], None)
            if got is not None and not got[1].done():
                got[1].set_result(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(
            Dns, remote_addr=("127.0.0.1", cfg["dns_port"]), family=socket.AF_INET
        )
        seq = [0]

        async def dns_op(state: list[Any], j: int) -> None:
            seq[0] += 1
            qid, name = seq[0] % 65536, qnames[seq[0] % len(qnames)]
            wire = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
            fut: asyncio.Future[bytes] = loop.create_future()
            pending[qid] = (time.monotonic(), fut)
            udp.sendto(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + wire + b"\0\x01\0\x01")
            try:
                data = await asyncio.wait_for(fut, 2.0)
            finally:
                pending.pop(qid, None)
            if data[3] & 0x0F != 0 or struct.unpack("!H", data[6:8])[0] == 0:
                raise DnsError

        await asyncio.gather(
            paced("http", keepalive(cfg["http_port"], False)),
            paced("tls", keepalive(cfg["https_port"], True)),
            paced("tls_new", one_shot("127.0.0.1", cfg["https_port"], True)),
            paced("l4", one_shot(WEB_IP, WEB_PORT, False)),
            paced("dns", dns_op),
        )
        udp.close()

    asyncio.run(main())
    bins: dict[str, dict[str, dict[str, float]]] = {}
    for (kind, b), values in sorted(lat.items()):
        values.sort()
        bins.setdefault(kind, {})[str(b)] = {
            "n": len(values),
            "p50": values[len(values) // 2],
            "p99": values[min(len(values) - 1, int(0.99 * len(values)))],
        }
    every = {k: sorted(v for (kk, _), vs in lat.items() if kk == k for v in vs) for k in KINDS}
    totals = {
        k: {
            "ok": len(v),
            "p50": v[len(v) // 2] if v else None,
            "p99": v[min(len(v) - 1, int(0.99 * len(v)))] if v else None,
        }
        for k, v in every.items()
    }
    print(
        json.dumps(
            {
                "totals": totals,
                "bins": bins,
                "fails": fails,
                "warm_fails": warm_fails,
                "examples": examples,
            }
        ),
        flush=True,
    )


# -- the scenario ---------------------------------------------------------------------


class Soak(Scenario):
    name = "soak"
    title = "Soak: mixed L4/HTTP/TLS/DNS traffic with a change every second, --workers 2"
    description = __doc__.split("\n\n", 1)[1].replace("\n", " ") if __doc__ else ""
    sides = (NETPLANE,)
    peer_note = (
        "No peer: absolute figures. Goals: no failed request (or every one explained by its "
        "category), RSS and descriptor drift between start and end < 5%."
    )
    packages = ("nginx",)
    warmup_runs = 0
    budget_s = 7200.0
    #: set by ``python -m bench --soak-minutes M``
    minutes: ClassVar[float] = 10.0

    def __init__(self) -> None:
        self.work = Path()
        self.backend: Proc | None = None
        self.backend_port = 0
        self.certs: list[tuple[bytes, bytes]] = []
        self.summary: dict[str, Any] = {}

    def timing(self, ctx: Context) -> tuple[float, float, float]:
        """(warm-up s, measured s, latency bin s)."""
        if ctx.quick:
            return 2.0, 10.0, 5.0
        return 30.0, 60.0 * self.minutes, 60.0

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
        return {
            "warmup_s": warm,
            "seconds": secs,
            "latency_bin_s": bin_s,
            "rates_per_s": {k: r for k, (r, _) in RATES.items()},
            "connections": {k: c for k, (_, c) in RATES.items()},
            "change_every_s": 1,
            "changes": list(CHANGES),
            "workers": 2,
            "dns_services": DNS_SERVICES,
            "runs": "1",
        }

    def setup(self, ctx: Context) -> None:
        import trustme

        self.work = work = ctx.workdir / self.name
        (work / "manifests").mkdir(parents=True, exist_ok=True)
        (work / "nginx").mkdir(exist_ok=True)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(work / "ca.pem"))
        for _ in range(2):
            leaf = ca.issue_cert("*.bench.test", HOST)
            self.certs.append((leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes()))
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

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        if index > 0:
            return {}  # one long run is the measure
        warm, secs, bin_s = self.timing(ctx)
        work = self.work
        http, https, admin = ctx.free_port(), ctx.free_port(), ctx.free_port()
        dns = free_udp_tcp_port()
        argv = [
            *netplane_cmd(), "run", "-f", str(work / "manifests"), "--mode", "local",
            "--service-cidr", "127.77.0.0/16", "--proxy", "on",
            "--ingress-http", f"127.0.0.1:{http}", "--ingress-https", f"127.0.0.1:{https}",
            "--ingress-access-log", str(work / "access.log"),
            "--dns", f"127.0.0.1:{dns}", "--admin", f"127.0.0.1:{admin}",
            "--manifest-poll-seconds", "0.2", "--workers", "2",
            "--log-level", "warning", "--shutdown-grace", "1",
        ]  # fmt: skip
        proc = ctx.procs.start(argv, name="netplane", log=work / "netplane.log")
        ctx.wait_http(f"http://127.0.0.1:{admin}/readyz", 200, timeout=120, proc=proc)
        cfg = {
            "warmup": warm,
            "seconds": secs,
            "bin": bin_s,
            "ca": str(work / "ca.pem"),
            "http_port": http,
            "https_port": https,
            "dns_port": dns,
            "names": [(s, ns) for s, ns, _ in names(DNS_SERVICES)],
        }
        out = work / "driver.out"
        driver = ctx.procs.start(
            [*ctx.pin("load"), sys.executable, "-c",
             f"import sys; sys.path.insert(0, {str(ctx.root)!r}); "
             "from bench.scenarios.soak import drive_main; drive_main(sys.argv[1:])",
             json.dumps(cfg)],
            name="soak-driver", log=work / "driver.log", stdout=out,
        )  # fmt: skip
        t0 = time.monotonic()
        samples: dict[str, tuple[float, float]] = {}
        changes = [0]
        stop = threading.Event()

        def churn() -> None:  # one change a second, in turn, until the driver is done
            while not stop.wait(1.0):
                self._write(*change(len(CHANGES) + changes[0], self.backend_port, self.certs))
                changes[0] += 1

        churner = threading.Thread(target=churn, daemon=True)
        churner.start()
        try:
            time.sleep(max(0.0, t0 + warm - time.monotonic()))
            samples["start"] = self._sample(proc.pid)
            time.sleep(max(0.0, t0 + warm + secs - 2.5 - time.monotonic()))
            samples["end"] = self._sample(proc.pid)
            rc = ctx.procs.wait(driver, timeout=warm + secs + 60)
        finally:
            stop.set()
            churner.join(5)
            ctx.procs.stop(driver)
            ctx.procs.stop(proc)
        if rc != 0:
            raise RuntimeError(f"the soak driver exited with {rc}; see {driver.log}")
        self.summary = s = json.loads(out.read_text().splitlines()[-1])
        res: dict[str, float] = {"changes": changes[0]}
        res["requests"] = sum(t["ok"] for t in s["totals"].values())
        for c in CATEGORIES:
            res[f"failed_{c}"] = sum(f[c] for f in s["fails"].values())
        res["failed"] = sum(res[f"failed_{c}"] for c in CATEGORIES)
        res["failed_warmup"] = sum(s["warm_fails"].values())
        (rss0, fd0), (rss1, fd1) = samples["start"], samples["end"]
        res.update({"rss_mb@start": rss0, "rss_mb@end": rss1, "fds@start": fd0, "fds@end": fd1})
        res["rss_drift_pct"] = 100 * (rss1 - rss0) / rss0
        res["fd_drift_pct"] = 100 * (fd1 - fd0) / fd0
        for kind in KINDS:
            if s["totals"][kind]["p99"] is not None:
                res[f"p99_ms@{kind}"] = s["totals"][kind]["p99"]
            for b, v in s["bins"].get(kind, {}).items():
                if int(b) < self.bins(ctx):
                    res[f"p99_ms@{kind}/{int(b) + 1}"] = v["p99"]
        failed = {f"{k}/{c}": n for k, f in s["fails"].items() for c, n in f.items() if n}
        ctx.echo(f"    {res['requests']:.0f} ok, failed {failed or 'none'}, {changes[0]} changes")
        if s["examples"]:
            ctx.echo(f"    failure examples: {s['examples']}")
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
            for kind, t in self.summary.get("totals", {}).items()
            if t["p99"] is not None
        ]
        return {
            "latency_percentiles": points,
            "soak_failure_examples": self.summary.get("examples", {}),
        }

    def teardown(self, ctx: Context) -> None:
        if self.backend is not None:
            ctx.procs.stop(self.backend)
            self.backend = None
