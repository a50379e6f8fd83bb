"""``ingress``: the HTTP/TLS ingress against nginx given the same routes.

One set of Ingress objects (N Ingresses, host ``hI.bench.test`` each, path
``/`` Prefix to Service ``bench/web``, all with ``spec.tls`` naming one
Secret) gives both netplane's manifests and an nginx.conf generated from
them: a ``server`` per host on the same HTTP and HTTPS ports, an upstream
with ``keepalive`` per Service, HTTP/1.1 upstream, the X-Forwarded-*,
X-Real-IP and X-Request-ID headers an ingress controller sets, and an access
log on both (to a file, buffered). The backend is nginx answering a small
200 (1 worker, no log), or a Python server when nginx is missing.

Per round and size N (1, and 1,000 in full runs), both proxies are started
on the server core and measured by wrk on the load core against the last
host, taking turns: each measure runs twice per side, in the order
netplane, nginx, nginx, netplane, and a side's figure is the mean of its
two. This machine's speed drifts by a factor of up to two within minutes;
taking turns every few seconds lets both sides see the same machine, which
a whole run of one side after the other did not. Measures:

- keep-alive req/s over HTTP and over TLS (``wrk -t1 -c50 --latency``), with
  p50/p99 latency of the HTTP run;
- new TLS handshakes/s (``wrk -H "Connection: close"`` over HTTPS) with
  session resumption off on both sides (netplane
  ``--ingress-tls-resumption off``, nginx ``ssl_session_tickets off;
  ssl_session_cache off``), ECDSA P-256 certificate on both;
- the proxy's CPU per keep-alive request (utime+stime from /proc);
- HTTP/2 over TLS (ALPN h2): ``h2load -c10 -m10`` (10 connections, 10
  streams each), req/s, p99 latency (from h2load's per-request log) and the
  proxy's CPU per request; nginx with ``http2`` on its TLS listener.

wrk sends no SNI name it could resolve (it connects to 127.0.0.1), so both
sides serve their default certificate; routing is by the Host header.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import NETPLANE, Context, Metric, Proc, Scenario, netplane_cmd
from bench.scenarios.l4 import children_cpu, cpu_seconds, parse_wrk, program

NGINX = "nginx"
NAMESPACE = "bench"
SERVICE = "web"
LISTEN = "127.0.0.1"
FULL_SIZES = (1, 1000)
#: wrk runs per measure, side and round, taking turns with the other side (full runs)
REPS = 2
QUICK_SIZES = (1,)

_PY_BACKEND = """
import asyncio, sys
import uvloop
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d):
        n = d.count(b"\\r\\n\\r\\n")
        self.t.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n" * n)
async def main():
    s = await asyncio.get_running_loop().create_server(P, sys.argv[1], int(sys.argv[2]), backlog=4096)
    await s.serve_forever()
uvloop.run(main())
"""

_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_SCALE = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_latency(text: str) -> dict[str, float]:
    """{"p50": ms, "p99": ms} from ``wrk --latency`` output."""
    out = {}
    for pct, value, unit in _LATENCY.findall(text):
        out[f"p{pct}"] = float(value) * _SCALE[unit]
    return out


_H2_DONE = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
_H2_COUNTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded")


def parse_h2load(text: str, log: str) -> dict[str, float]:
    """req/s, p99 (ms) and the request count of one h2load run; its log has a line per request.

    The log's lines are ``start-µs<TAB>status<TAB>duration-µs``; a run where
    more than 1% of requests failed is an error, not a figure.
    """
    m, counts = _H2_DONE.search(text), _H2_COUNTS.search(text)
    if m is None or counts is None:
        raise RuntimeError(f"h2load printed no summary: {text[-300:]}")
    _, done, ok = (int(g) for g in counts.groups())
    if done - ok > 0.01 * max(done, 1):
        raise RuntimeError(f"h2load: {done - ok} of {done} requests failed")
    times = sorted(int(line.split("\t")[2]) for line in log.splitlines() if line.count("\t") == 2)
    if not times:
        raise RuntimeError("h2load logged no request")
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))] / 1000
    return {"h2_rps": float(m.group(1)), "h2_p99_ms": p99, "total": float(done)}


def h2load(ctx: Context, work: Path, url: str, seconds: float, *extra: str) -> dict[str, float]:
    """One ``h2load -t1 -c10 -m10`` run of ``seconds`` on the load core (see :func:`parse_h2load`)."""
    out, log = work / "h2load.out", work / "h2load-requests.log"
    out.write_text("")  # (the harness appends to it)
    proc = ctx.procs.start(
        [*ctx.pin("load"), program("h2load"), "-t1", "-c10", "-m10", "-D", f"{seconds:g}",
         *extra, f"--log-file={log}", url],
        name="h2load", log=work / "h2load.log", stdout=out,
    )  # fmt: skip
    rc = ctx.procs.wait(proc, timeout=seconds + 30)
    text = out.read_text()
    if rc != 0:
        raise RuntimeError(f"h2load exited with {rc}: {text[-300:]}")
    return parse_h2load(text, log.read_text())


def objects(n: int, backend: tuple[str, int], cert: bytes, key: bytes) -> list[dict[str, Any]]:
    """The Kubernetes objects both sides are configured from."""
    objs: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": "netplane"},
            "spec": {"controller": "netplane.io/ingress"},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{SERVICE}-1",
                "namespace": NAMESPACE,
                "labels": {"kubernetes.io/service-name": SERVICE},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": backend[1]}],
            "endpoints": [{"addresses": [backend[0]], "conditions": {"ready": True}}],
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": "bench-tls", "namespace": NAMESPACE},
            "data": {
                "tls.crt": base64.b64encode(cert).decode(),
                "tls.key": base64.b64encode(key).decode(),
            },
        },
    ]
    for i in range(n):
        host = f"h{i}.bench.test"
        objs.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": {
                    "name": f"r{i}",
                    "namespace": NAMESPACE,
                    # the same requests over HTTP and HTTPS on both sides: no redirect
                    "annotations": {"nginx.ingress.kubernetes.io/ssl-redirect": "false"},
                },
                "spec": {
                    "ingressClassName": "netplane",
                    "tls": [{"hosts": [host], "secretName": "bench-tls"}],
                    "rules": [
                        {
                            "host": host,
                            "http": {
                                "paths": [
                                    {
                                        "path": "/",
                                        "pathType": "Prefix",
                                        "backend": {
                                            "service": {"name": SERVICE, "port": {"number": 80}}
                                        },
                                    }
                                ]
                            },
                        }
                    ],
                },
            }
        )
    return objs


def nginx_conf(
    objs: list[dict[str, Any]], work: Path, http_port: int, https_port: int, access_log: Path
) -> str:
    """nginx.conf for the same Ingresses: a server per rule host, an upstream per Service port."""
    slices = {
        (o["metadata"]["namespace"], o["metadata"]["labels"]["kubernetes.io/service-name"]): o
        for o in objs
        if o["kind"] == "EndpointSlice"
    }
    secrets = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o
        for o in objs
        if o["kind"] == "Secret"
    }
    upstreams: dict[str, list[str]] = {}
    servers: list[str] = []
    for ing in (o for o in objs if o["kind"] == "Ingress"):
        ns = ing["metadata"]["namespace"]
        tls_secret = {h: t["secretName"] for t in ing["spec"].get("tls", []) for h in t["hosts"]}
        for rule in ing["spec"]["rules"]:
            host = rule["host"]
            locations = []
            for p in rule["http"]["paths"]:
                svc = p["backend"]["service"]["name"]
                name = f"{ns}_{svc}"
                eps = slices[(ns, svc)]
                port = eps["ports"][0]["port"]
                upstreams[name] = [f"{a}:{port}" for e in eps["endpoints"] for a in e["addresses"]]
                locations.append(f"        location {p['path']} {{ proxy_pass http://{name}; }}")
            ssl_lines = ""
            if host in tls_secret:
                sec = secrets[(ns, tls_secret[host])]
                crt, key = (
                    work / f"{ns}-{tls_secret[host]}.crt",
                    work / f"{ns}-{tls_secret[host]}.key",
                )
                crt.write_bytes(base64.b64decode(sec["data"]["tls.crt"]))
                key.write_bytes(base64.b64decode(sec["data"]["tls.key"]))
                ssl_lines = (
                    f"        listen {LISTEN}:{https_port} ssl;\n"
                    f"        ssl_certificate {crt};\n        ssl_certificate_key {key};\n"
                )
            servers.append(
                "    server {\n"
                f"        listen {LISTEN}:{http_port};\n{ssl_lines}"
                f"        server_name {host};\n" + "\n".join(locations) + "\n    }"
            )
    default_server = f"""    server {{
        listen {LISTEN}:{http_port} default_server;
        listen {LISTEN}:{https_port} ssl http2 default_server;
        ssl_certificate {work}/{NAMESPACE}-bench-tls.crt;
        ssl_certificate_key {work}/{NAMESPACE}-bench-tls.key;
        return 404;
    }}"""
    return nginx_http(work, access_log, [nginx_upstreams(upstreams), default_server, *servers])


def nginx_upstreams(upstreams: dict[str, list[str]]) -> str:
    """``upstream`` blocks with ``keepalive``, one per Service port."""
    return "\n".join(
        f"    upstream {name} {{\n"
        + "".join(f"        server {a};\n" for a in addrs)
        + "        keepalive 320;\n    }"
        for name, addrs in upstreams.items()
    )


def nginx_http(work: Path, access_log: Path, blocks: list[str]) -> str:
    """The whole nginx.conf: what an ingress controller sets for every request, then ``blocks``.

    One worker, the buffered access log, HTTP/1.1 upstreams and the
    X-Forwarded-*, X-Real-IP and X-Request-ID headers; ``blocks`` are the
    ``map``, ``upstream`` and ``server`` blocks of the routes.
    """
    body = "\n".join(blocks)
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx-proxy.pid;
error_log {work}/nginx-proxy-error.log warn;
events {{ worker_connections 8192; }}
http {{
    log_format ingress '$time_iso8601 $remote_addr "$request" $status $body_bytes_sent host=$host upstream=$upstream_addr rt=$request_time urt=$upstream_response_time id=$rid';
    access_log {access_log} ingress buffer=64k flush=1s;
    client_body_temp_path {work}/nginx/body;
    proxy_temp_path {work}/nginx/proxy;
    fastcgi_temp_path {work}/nginx/fastcgi;
    uwsgi_temp_path {work}/nginx/uwsgi;
    scgi_temp_path {work}/nginx/scgi;
    server_names_hash_max_size 4096;
    server_names_hash_bucket_size 128;
    keepalive_requests 1000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache off;
    map $http_x_request_id $rid {{ default $http_x_request_id; "" $request_id; }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Request-ID $rid;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Host $host;
    proxy_set_header X-Forwarded-Port $server_port;
    proxy_set_header X-Forwarded-Proto $scheme;
    add_header X-Request-ID $rid;
{body}
}}
"""


class IngressBench(Scenario):
    name = "ingress"
    title = (
        "Ingress: keep-alive req/s (HTTP, TLS), new TLS handshakes/s, latency; 1 and 1,000 rules"
    )
    description = __doc__.split("\n\n", 1)[1].replace("\n", " ") if __doc__ else ""
    sides = (NETPLANE, NGINX)
    peer_note = (
        "nginx 1 worker, the same routes generated from the same Ingress objects, upstream "
        "keepalive 320, the same forwarded headers, buffered access log on both; resumption off "
        "on both. Bar (issue 6): >= 0.6x nginx on each figure; aim 1.0x."
    )
    packages = ("nginx", "wrk", "nghttp2-client")
    warmup_runs = 0
    budget_s = 600.0
    interleaved = True

    def __init__(self) -> None:
        self.work: Path | None = None
        self.backend: Proc | None = None
        self.backend_addr: tuple[str, int] = (LISTEN, 0)
        self.cert: tuple[bytes, bytes] = (b"", b"")
        self.load_cpu = 0.0

    def sizes(self, ctx: Context) -> tuple[int, ...]:
        return QUICK_SIZES if ctx.quick else FULL_SIZES

    def seconds(self, ctx: Context) -> float:
        return 1.0 if ctx.quick else 5.0

    def metrics(self, ctx: Context) -> list[Metric]:
        out = []
        for n in self.sizes(ctx):
            out += [
                Metric(f"rps@{n}", "req/s", "higher", f"keep-alive req/s over HTTP, {n} rules"),
                Metric(f"p50_ms@{n}", "ms", "lower", f"HTTP keep-alive p50 latency, {n} rules"),
                Metric(f"p99_ms@{n}", "ms", "lower", f"HTTP keep-alive p99 latency, {n} rules"),
                Metric(f"cpu_us@{n}", "µs", "lower", f"proxy CPU per HTTP request, {n} rules"),
                Metric(f"tls_rps@{n}", "req/s", "higher", f"keep-alive req/s over TLS, {n} rules"),
                Metric(f"handshakes@{n}", "conn/s", "higher", f"new TLS handshakes/s, {n} rules"),
                Metric(f"h2_rps@{n}", "req/s", "higher", f"HTTP/2 req/s over TLS, {n} rules"),
                Metric(f"h2_p99_ms@{n}", "ms", "lower", f"HTTP/2 p99 latency, {n} rules"),
                Metric(f"h2_cpu_us@{n}", "µs", "lower", f"proxy CPU per HTTP/2 request, {n} rules"),
                Metric(
                    f"load_cpu_pct@{n}",
                    "%",
                    "lower",
                    f"wrk CPU (HTTP run), % of its core, {n} rules",
                ),
            ]
        return out

    def params(self, ctx: Context) -> dict[str, Any]:
        return {
            "wrk": f"-t1 -c50 -d{self.seconds(ctx):g}s --latency",
            "h2load": f"-t1 -c10 -m10 -D {self.seconds(ctx):g}",
            "rules": list(self.sizes(ctx)),
            "runs": "1 round (quick)"
            if ctx.quick
            else f"{ctx.runs} rounds, each wrk run {REPS}x per side, interleaved ABBA",
        }

    # -- shared -----------------------------------------------------------------

    def setup(self, ctx: Context) -> None:
        program("wrk")
        import trustme

        self.work = work = ctx.workdir / self.name
        work.mkdir(exist_ok=True)
        (work / "nginx").mkdir(exist_ok=True)
        leaf = trustme.CA().issue_cert("*.bench.test")  # ECDSA P-256
        self.cert = (leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())
        port = ctx.free_port()
        self.backend_addr = (LISTEN, port)
        server = ctx.pin("server")
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
        if nginx:
            conf = work / "backend.conf"
            conf.write_text(
                f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {work}/backend.pid;\n"
                f"error_log {work}/backend-error.log warn;\nevents {{ worker_connections 8192; }}\n"
                f"http {{\n    access_log off;\n    keepalive_requests 1000000;\n"
                f"    client_body_temp_path {work}/nginx/body;\n    proxy_temp_path {work}/nginx/proxy;\n"
                f"    fastcgi_temp_path {work}/nginx/fastcgi;\n    uwsgi_temp_path {work}/nginx/uwsgi;\n"
                f"    scgi_temp_path {work}/nginx/scgi;\n"
                f'    server {{ listen {LISTEN}:{port} backlog=4096; location / {{ return 200 "ok\\n"; }} }}\n}}\n'
            )
            argv = [
                *server,
                nginx,
                "-p",
                str(work),
                "-c",
                str(conf),
                "-e",
                str(work / "backend-error.log"),
            ]
        else:
            argv = [*server, sys.executable, "-c", _PY_BACKEND, LISTEN, str(port)]
        self.backend = ctx.procs.start(argv, name="backend", log=work / "backend.log")
        ctx.wait_http(f"http://{LISTEN}:{port}/", 200, timeout=15, proc=self.backend)

    def _wait(self, port: int, host: str, proc: Proc, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(
                    f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}"
                )
            conn = http.client.HTTPConnection(LISTEN, port, timeout=2)
            try:
                conn.request("GET", "/", headers={"Host": host})
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        raise TimeoutError(f"{proc.name} did not route {host} within {timeout:.0f} s")

    def _start(self, ctx: Context, side: str, n: int, index: int) -> tuple[Proc, int, int]:
        assert self.work is not None
        work = self.work
        http_port, https_port = ctx.free_port(), ctx.free_port()
        objs = objects(n, self.backend_addr, *self.cert)
        log = work / f"{side}-{n}-{index}.log"
        access = work / f"{side}-{n}-{index}-access.log"
        if side == NETPLANE:
            mdir = work / f"manifests-{n}"
            mdir.mkdir(exist_ok=True)
            (mdir / "objects.json").write_text(
                json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
            )
            argv = [
                *ctx.pin("server"), *netplane_cmd(),
                "run", "-f", str(mdir), "--mode", "local", "--proxy", "off", "--dns", "off",
                "--admin", "off", "--ingress-http", f"{LISTEN}:{http_port}",
                "--ingress-https", f"{LISTEN}:{https_port}", "--ingress-access-log", str(access),
                "--ingress-tls-resumption", "off", "--log-level", "warning", "--shutdown-grace", "1",
                "--workers", "1",  # one process against nginx's one worker
            ]  # fmt: skip
        else:
            nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
            conf = work / f"proxy-{n}.conf"
            conf.write_text(nginx_conf(objs, work, http_port, https_port, access))
            argv = [
                *ctx.pin("server"),
                str(nginx),
                "-p",
                str(work),
                "-c",
                str(conf),
                "-e",
                str(work / "nginx-proxy-error.log"),
            ]
        proc = ctx.procs.start(argv, name=side, log=log, cwd=work)
        self._wait(http_port, f"h{n - 1}.bench.test", proc)
        return proc, http_port, https_port

    def _wrk(self, ctx: Context, url: str, host: str, seconds: float, *extra: str) -> str:
        assert self.work is not None
        out = self.work / "wrk.out"
        out.write_text("")
        before = children_cpu()
        proc = ctx.procs.start(
            [*ctx.pin("load"), program("wrk"), "-t1", "-c50", f"-d{seconds:g}s", "--latency",
             "-H", f"Host: {host}", *extra, url],
            name="wrk", log=self.work / "wrk.log", stdout=out,
        )  # fmt: skip
        rc = ctx.procs.wait(proc, timeout=seconds + 30)
        self.load_cpu = children_cpu() - before
        text = out.read_text()
        if rc != 0:
            raise RuntimeError(
                f"wrk exited with {rc}: {(self.work / 'wrk.log').read_text()[-300:]}"
            )
        return text

    def _measure(
        self, ctx: Context, side: str, kind: str, proc: Proc, ports: tuple[int, int], host: str
    ) -> dict[str, float]:
        """One wrk run of ``kind`` (http, tls, handshakes) against one side's proxy."""
        secs = self.seconds(ctx)
        if kind == "http":
            cpu0 = cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            text = self._wrk(ctx, f"http://{LISTEN}:{ports[0]}/", host, secs)
            wall = time.perf_counter() - t0
            rps, total, errors = parse_wrk(text)
            if errors > 0.01 * max(total, 1):
                raise RuntimeError(f"wrk through {side}: {errors} errors in {total} requests")
            out = {
                "rps": rps,
                "cpu_us": 1e6 * (cpu_seconds(proc.pid) - cpu0) / max(total, 1),
                "load_cpu_pct": 100 * self.load_cpu / wall,
            }
            lat = wrk_latency(text)
            for p in ("p50", "p99"):
                if p in lat:
                    out[f"{p}_ms"] = lat[p]
            return out
        if kind == "h2":
            cpu0 = cpu_seconds(proc.pid)
            assert self.work is not None
            got = h2load(
                ctx, self.work, f"https://{LISTEN}:{ports[1]}/", secs, "-H", f":authority: {host}"
            )
            got["h2_cpu_us"] = 1e6 * (cpu_seconds(proc.pid) - cpu0) / max(got.pop("total"), 1)
            return got
        extra = ("-H", "Connection: close") if kind == "handshakes" else ()
        text = self._wrk(ctx, f"https://{LISTEN}:{ports[1]}/", host, secs, *extra)
        rps, total, errors = parse_wrk(text)
        if errors > (0.05 if extra else 0.01) * max(total, 1):
            raise RuntimeError(f"wrk ({kind}) through {side}: {errors} errors in {total}")
        return {"handshakes" if extra else "tls_rps": rps}

    def run_round(self, ctx: Context, index: int) -> dict[str, dict[str, float]]:
        if ctx.quick and index > 0:
            return {}
        has_nginx = bool(shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin"))
        if not has_nginx and not ctx.quick:
            raise RuntimeError("nginx is not installed (python -m bench.setup nginx)")
        sides = [NETPLANE, NGINX] if has_nginx else [NETPLANE]  # quick mode never fails for it
        reps = 1 if ctx.quick else REPS
        out: dict[str, dict[str, float]] = {side: {} for side in sides}
        for n in self.sizes(ctx):
            host = f"h{n - 1}.bench.test"
            running: dict[str, tuple[Proc, int, int]] = {}
            try:
                for side in sides:
                    running[side] = self._start(ctx, side, n, index)
                if not ctx.quick:
                    for side in sides:  # warm-up: pools, caches, the first log file blocks
                        self._wrk(ctx, f"http://{LISTEN}:{running[side][1]}/", host, 1)
                got: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
                for kind in ("http", "tls", "handshakes", "h2"):
                    for rep in range(reps):
                        # ABBA: neither side always goes first
                        for side in sides if rep % 2 == 0 else sides[::-1]:
                            proc, http_port, https_port = running[side]
                            values = self._measure(
                                ctx, side, kind, proc, (http_port, https_port), host
                            )
                            for key, value in values.items():
                                got[side].setdefault(key, []).append(value)
                for side in sides:
                    for key, values in got[side].items():
                        out[side][f"{key}@{n}"] = statistics.fmean(values)
            finally:
                for proc, _, _ in running.values():
                    ctx.procs.stop(proc)
        return out

    def teardown(self, ctx: Context) -> None:
        if self.backend is not None:
            ctx.procs.stop(self.backend)
            self.backend = None
