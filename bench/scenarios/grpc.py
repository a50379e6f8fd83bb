"""``grpc``: unary gRPC calls through the ingress against nginx's ``grpc_pass``, one backend.

The backend is a grpcio server (generic ``bench.Echo/Unary``, bytes back as
they came) on the server core. netplane routes an Ingress (host
``g.bench.test``, path ``/`` Prefix, ``backend-protocol: GRPC``) to it and
nginx a ``server`` with ``grpc_pass`` to the same port through an upstream
with ``keepalive``; both listen in cleartext HTTP/2 (prior knowledge) and
write an access log. h2load on the load core makes the calls: the gRPC
request frame of a 12-byte message, ``content-type: application/grpc`` and
``te: trailers``, 10 connections of 10 streams each. The sides take turns
(ABBA) within each round, as in ``ingress``. Measures: calls/s, p99 latency
(from h2load's per-request log) and the proxy's CPU per call. A grpcio
client checks first, through each side, that a call returns its message.

The backend is Python, on the same core as the proxy, and costs both sides
the same; it caps both figures, so the ratio understates the gap between
the proxies themselves, which the CPU per call shows.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import NETPLANE, Context, Metric, Proc, Scenario, netplane_cmd
from bench.scenarios.ingress import h2load
from bench.scenarios.l4 import cpu_seconds, program

NGINX = "nginx"
LISTEN = "127.0.0.1"
HOST = "g.bench.test"
METHOD = "/bench.Echo/Unary"
MESSAGE = b"hello, grpc!"
REPS = 2

_BACKEND = """
import asyncio, sys
import grpc
async def unary(request, context):
    return request
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}),))
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""

_CHECK = """
import sys, grpc
with grpc.insecure_channel(sys.argv[1], options=[("grpc.default_authority", sys.argv[2])]) as ch:
    print(ch.unary_unary(sys.argv[3])(sys.argv[4].encode(), timeout=5).decode())
"""


def manifests(backend_port: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": "netplane"},
            "spec": {"controller": "netplane.io/ingress"},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "echo", "namespace": "bench"},
            "spec": {"ports": [{"name": "grpc", "port": 50051}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "echo-1",
                "namespace": "bench",
                "labels": {"kubernetes.io/service-name": "echo"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": backend_port}],
            "endpoints": [{"addresses": [LISTEN], "conditions": {"ready": True}}],
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": "echo",
                "namespace": "bench",
                "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"},
            },
            "spec": {
                "ingressClassName": "netplane",
                "rules": [
                    {
                        "host": HOST,
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {
                                        "service": {"name": "echo", "port": {"number": 50051}}
                                    },
                                }
                            ]
                        },
                    }
                ],
            },
        },
    ]


def nginx_conf(work: Path, port: int, backend_port: int, access_log: Path) -> str:
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log {access_log} combined buffer=64k flush=1s;
    client_body_temp_path {work}/nginx/body;
    proxy_temp_path {work}/nginx/proxy;
    fastcgi_temp_path {work}/nginx/fastcgi;
    uwsgi_temp_path {work}/nginx/uwsgi;
    scgi_temp_path {work}/nginx/scgi;
    keepalive_requests 1000000;
    upstream echo {{ server {LISTEN}:{backend_port}; keepalive 32; keepalive_requests 1000000; }}
    server {{
        listen {LISTEN}:{port} http2;
        server_name {HOST};
        location / {{
            grpc_set_header X-Real-IP $remote_addr;
            grpc_pass grpc://echo;
        }}
    }}
}}
"""


class GrpcBench(Scenario):
    name = "grpc"
    title = "gRPC: unary calls/s through the ingress (HTTP/2 both ways)"
    description = __doc__.split("\n\n", 1)[1].replace("\n", " ") if __doc__ else ""
    sides = (NETPLANE, NGINX)
    peer_note = (
        "nginx 1 worker, grpc_pass to the same grpcio backend through an upstream with "
        "keepalive, h2c listener, access log on both. Bar (issue 15): >= 0.5x nginx's calls/s."
    )
    packages = ("nginx", "nghttp2-client")
    warmup_runs = 0
    budget_s = 300.0
    interleaved = True

    def __init__(self) -> None:
        self.work: Path | None = None
        self.backend: Proc | None = None
        self.backend_port = 0
        self.body: Path | None = None

    def seconds(self, ctx: Context) -> float:
        return 1.0 if ctx.quick else 5.0

    def metrics(self, ctx: Context) -> list[Metric]:
        return [
            Metric("calls", "calls/s", "higher", "unary gRPC calls/s"),
            Metric("p99_ms", "ms", "lower", "unary gRPC call p99 latency"),
            Metric("cpu_us", "µs", "lower", "proxy CPU per call"),
        ]

    def params(self, ctx: Context) -> dict[str, Any]:
        return {
            "h2load": f"-t1 -c10 -m10 -D {self.seconds(ctx):g}",
            "message": f"{len(MESSAGE)} bytes",
            "runs": "1 round (quick)"
            if ctx.quick
            else f"{ctx.runs} rounds, each h2load run {REPS}x per side, interleaved ABBA",
        }

    def setup(self, ctx: Context) -> None:
        program("h2load")
        import grpc  # noqa: F401  # the backend and the check need it (the bench extra)

        self.work = work = ctx.workdir / "grpc"
        work.mkdir(exist_ok=True)
        (work / "nginx").mkdir(exist_ok=True)
        self.body = work / "call.bin"
        self.body.write_bytes(b"\0" + len(MESSAGE).to_bytes(4, "big") + MESSAGE)
        self.backend_port = ctx.free_port()
        self.backend = ctx.procs.start(
            [*ctx.pin("server"), sys.executable, "-c", _BACKEND, str(self.backend_port)],
            name="grpc-backend", log=work / "backend.log",
        )  # fmt: skip
        self._wait(self.backend_port, self.backend, authority=f"{LISTEN}:{self.backend_port}")

    def _check(self, port: int, authority: str) -> bool:
        try:
            out = subprocess.run(
                [sys.executable, "-c", _CHECK, f"{LISTEN}:{port}", authority, METHOD, "ping"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False
        return out.returncode == 0 and out.stdout.strip() == "ping"

    def _wait(self, port: int, proc: Proc, authority: str = HOST, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited; see {proc.log}")
            if self._check(port, authority):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{proc.name} did not answer a gRPC call within {timeout:.0f} s")

    def _start(self, ctx: Context, side: str, index: int) -> tuple[Proc, int]:
        assert self.work is not None
        work = self.work
        port = ctx.free_port()
        access = work / f"{side}-{index}-access.log"
        if side == NETPLANE:
            mdir = work / "manifests"
            mdir.mkdir(exist_ok=True)
            (mdir / "objects.json").write_text(
                json.dumps(
                    {"apiVersion": "v1", "kind": "List", "items": manifests(self.backend_port)}
                )
            )
            argv = [
                *ctx.pin("server"), *netplane_cmd(),
                "run", "-f", str(mdir), "--mode", "local", "--proxy", "off", "--dns", "off",
                "--admin", "off", "--ingress-http", f"{LISTEN}:{port}", "--ingress-https", "off",
                "--ingress-access-log", str(access), "--log-level", "warning",
                "--shutdown-grace", "1", "--workers", "1",
            ]  # fmt: skip
        else:
            nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
            conf = work / "nginx.conf"
            conf.write_text(nginx_conf(work, port, self.backend_port, access))
            argv = [*ctx.pin("server"), str(nginx), "-p", str(work), "-c", str(conf)]
        proc = ctx.procs.start(argv, name=side, log=work / f"{side}-{index}.log", cwd=work)
        self._wait(port, proc)
        return proc, port

    def _measure(self, ctx: Context, proc: Proc, port: int) -> dict[str, float]:
        assert self.work is not None and self.body is not None
        cpu0 = cpu_seconds(proc.pid)
        got = h2load(
            ctx, self.work, f"http://{LISTEN}:{port}{METHOD}", self.seconds(ctx),
            "-d", str(self.body), "-H", f":authority: {HOST}",
            "-H", "content-type: application/grpc", "-H", "te: trailers",
        )  # fmt: skip
        return {
            "calls": got["h2_rps"],
            "p99_ms": got["h2_p99_ms"],
            "cpu_us": 1e6 * (cpu_seconds(proc.pid) - cpu0) / max(got["total"], 1),
        }

    def run_round(self, ctx: Context, index: int) -> dict[str, dict[str, float]]:
        if ctx.quick and index > 0:
            return {}
        has_nginx = bool(shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin"))
        if not has_nginx and not ctx.quick:
            raise RuntimeError("nginx is not installed (python -m bench.setup nginx)")
        sides = [NETPLANE, NGINX] if has_nginx else [NETPLANE]
        reps = 1 if ctx.quick else REPS
        running: dict[str, tuple[Proc, int]] = {}
        got: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
        try:
            for side in sides:
                running[side] = self._start(ctx, side, index)
            for rep in range(reps):
                for side in sides if rep % 2 == 0 else sides[::-1]:
                    for key, value in self._measure(ctx, *running[side]).items():
                        got[side].setdefault(key, []).append(value)
        finally:
            for proc, _ in running.values():
                ctx.procs.stop(proc)
        return {
            side: {key: statistics.fmean(values) for key, values in got[side].items()}
            for side in sides
        }

    def teardown(self, ctx: Context) -> None:
        if self.backend is not None:
            ctx.procs.stop(self.backend)
            self.backend = None
