"""``gateway``: HTTPRoutes with header matches against Ingress and against nginx.

N HTTPRoutes (1, and 1,000 in full runs) attached to one Gateway, as users
write them per tenant: route ``rI`` has hostnames ``[hI.bench.test]`` and one
rule matching path ``/`` (PathPrefix) and header ``x-tenant: tI`` (Exact), to
Service ``bench/web``; the Gateway (class controller
``netplane.io/gateway-controller``) has one HTTP listener, bound where its
``spec.addresses`` says (127.0.0.1). nginx gets the same routing generated
from the same HTTPRoute objects: a ``map $http_x_tenant`` from each header
value to the route that asks for it, and per hostname a ``server`` whose
``location /`` answers 404 unless the map chose that server's route, so a
request without the header (or with another tenant's) is refused on both
sides. Forwarded headers, upstream keepalive and the buffered access log are
those of the ``ingress`` scenario on both sides.

Three sides run in the same rounds: netplane routing by HTTPRoute, netplane
routing the ``ingress`` scenario's Ingresses (host ``hI.bench.test`` each,
no header match: Ingress has none), and nginx. wrk (``-t1 -c50``, keep-alive,
HTTP) targets the last route (``Host: h{N-1}.bench.test``, ``x-tenant:
t{N-1}``; the Ingress side gets the same headers) on the load core; per
round and size the sides take turns (A B C, then C B A) and a side's figure
is the mean of its two runs. Before measuring, every side is checked to
route the target and, but for the Ingress, to refuse it without the header.
The ratio netplane/netplane Ingress is what routing by Gateway API costs
against routing by Ingress in the same run.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.harness import NETPLANE, Context, Metric, Proc, netplane_cmd
from bench.scenarios.ingress import (
    LISTEN,
    NAMESPACE,
    NGINX,
    REPS,
    SERVICE,
    IngressBench,
    nginx_http,
    nginx_upstreams,
    objects,
    wrk_latency,
)
from bench.scenarios.l4 import cpu_seconds, parse_wrk

INGRESS = "netplane Ingress"
GATEWAY = "bench-gw"
HEADER = "x-tenant"
CONTROLLER = "netplane.io/gateway-controller"


def host(i: int) -> str:
    return f"h{i}.bench.test"


def tenant(i: int) -> str:
    return f"t{i}"


def gateway_objects(n: int, port: int, backend: tuple[str, int]) -> list[dict[str, Any]]:
    """GatewayClass, Gateway (one HTTP listener on ``LISTEN:port``), the Service and N HTTPRoutes."""
    objs: list[dict[str, Any]] = [
        o for o in objects(0, backend, b"", b"") if o["kind"] in ("Service", "EndpointSlice")
    ]
    objs += [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": "netplane"},
            "spec": {"controllerName": CONTROLLER},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": NAMESPACE},
            "spec": {
                "gatewayClassName": "netplane",
                "addresses": [{"type": "IPAddress", "value": LISTEN}],
                "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}],
            },
        },
    ]
    for i in range(n):
        objs.append(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": f"r{i}", "namespace": NAMESPACE},
                "spec": {
                    "parentRefs": [{"name": GATEWAY, "sectionName": "http"}],
                    "hostnames": [host(i)],
                    "rules": [
                        {
                            "matches": [
                                {
                                    "path": {"type": "PathPrefix", "value": "/"},
                                    "headers": [
                                        {"type": "Exact", "name": HEADER, "value": tenant(i)}
                                    ],
                                }
                            ],
                            "backendRefs": [{"name": SERVICE, "port": 80}],
                        }
                    ],
                },
            }
        )
    return objs


def _var(header: str) -> str:
    return header.lower().replace("-", "_")


def gateway_nginx_conf(objs: list[dict[str, Any]], work: Path, access_log: Path) -> str:
    """nginx.conf routing as the HTTPRoutes do, for the shapes :func:`gateway_objects` writes.

    The listener's port comes from the Gateway. Per header name, a ``map``
    from the header's value to the route (``namespace/name``) matching it; per
    route hostname, a ``server`` with a ``location`` per path match that
    proxies only when the maps chose this route. Anything else (several
    matches per rule, other match types, filters) is refused: this is a
    bench's generator, not a translator.
    """
    (gw,) = (o for o in objs if o["kind"] == "Gateway")
    (listener,) = gw["spec"]["listeners"]
    if listener["protocol"] != "HTTP":
        raise ValueError("only an HTTP listener is generated")
    address = gw["spec"].get("addresses", [{"value": LISTEN}])[0]["value"]
    port = listener["port"]
    slices = {
        (o["metadata"]["namespace"], o["metadata"]["labels"]["kubernetes.io/service-name"]): o
        for o in objs
        if o["kind"] == "EndpointSlice"
    }
    maps: dict[str, dict[str, str]] = {}  # header variable -> value -> route
    upstreams: dict[str, list[str]] = {}
    servers: list[str] = []
    for route in (o for o in objs if o["kind"] == "HTTPRoute"):
        ns, name = route["metadata"]["namespace"], route["metadata"]["name"]
        ident = f"{ns}/{name}"
        locations = []
        for rule in route["spec"]["rules"]:
            (match,) = rule["matches"]
            (ref,) = rule["backendRefs"]
            if rule.get("filters") or set(match) - {"path", "headers"}:
                raise ValueError(f"{ident}: only path and header matches are generated")
            path = match.get("path", {"type": "PathPrefix", "value": "/"})
            if path["type"] not in ("PathPrefix", "Exact"):
                raise ValueError(f"{ident}: path type {path['type']} is not generated")
            checks = []
            for h in match.get("headers", []):
                if h.get("type", "Exact") != "Exact":
                    raise ValueError(f"{ident}: only Exact header matches are generated")
                var = f"$gw_{_var(h['name'])}"
                maps.setdefault(var, {})[h["value"]] = ident
                checks.append(f'            if ({var} != "{ident}") {{ return 404; }}\n')
            upstream = f"{ns}_{ref['name']}"
            eps = slices[(ns, ref["name"])]
            upstreams[upstream] = [
                f"{a}:{eps['ports'][0]['port']}" for e in eps["endpoints"] for a in e["addresses"]
            ]
            exact = "= " if path["type"] == "Exact" else ""
            locations.append(
                f"        location {exact}{path['value']} {{\n"
                + "".join(checks)
                + f"            proxy_pass http://{upstream};\n        }}"
            )
        for hostname in route["spec"]["hostnames"]:
            servers.append(
                "    server {\n"
                f"        listen {address}:{port};\n"
                f"        server_name {hostname};\n" + "\n".join(locations) + "\n    }"
            )
    map_blocks = [
        f'    map $http_{var.removeprefix("$gw_")} {var} {{\n        default "";\n'
        + "".join(f'        "{value}" "{ident}";\n' for value, ident in values.items())
        + "    }"
        for var, values in maps.items()
    ]
    default_server = f"    server {{\n        listen {address}:{port} default_server;\n        return 404;\n    }}"
    return nginx_http(
        work,
        access_log,
        [
            *map_blocks,
            nginx_upstreams(upstreams),
            default_server,
            *servers,
        ],
    )


class GatewayBench(IngressBench):
    name = "gateway"
    title = "Gateway API: HTTPRoutes with header matches, keep-alive req/s; 1 and 1,000 routes"
    description = __doc__.split("\n\n", 1)[1].replace("\n", " ") if __doc__ else ""
    sides = (NETPLANE, INGRESS, NGINX)
    peer_note = (
        "netplane Ingress: netplane given the ingress scenario's Ingresses (no header match) in "
        "the same rounds; nginx 1 worker, the same routing generated from the same HTTPRoutes "
        "(map $http_x_tenant, a server and location per route), the same forwarded headers and "
        "buffered access log. Bar: netplane/netplane Ingress >= 0.9 on req/s."
    )
    packages = ("nginx", "wrk")
    budget_s = 420.0

    def seconds(self, ctx: Context) -> float:
        return 1.0 if ctx.quick else 5.0

    def metrics(self, ctx: Context) -> list[Metric]:
        out = []
        for n in self.sizes(ctx):
            out += [
                Metric(f"rps@{n}", "req/s", "higher", f"keep-alive req/s over HTTP, {n} routes"),
                Metric(f"p50_ms@{n}", "ms", "lower", f"HTTP keep-alive p50 latency, {n} routes"),
                Metric(f"p99_ms@{n}", "ms", "lower", f"HTTP keep-alive p99 latency, {n} routes"),
                Metric(f"cpu_us@{n}", "µs", "lower", f"proxy CPU per HTTP request, {n} routes"),
                Metric(f"load_cpu_pct@{n}", "%", "lower", f"wrk CPU, % of its core, {n} routes"),
            ]
        return out

    def params(self, ctx: Context) -> dict[str, Any]:
        return {
            "wrk": f"-t1 -c50 -d{self.seconds(ctx):g}s --latency -H 'x-tenant: t<N-1>'",
            "routes": list(self.sizes(ctx)),
            "runs": "1 round (quick)"
            if ctx.quick
            else f"{ctx.runs} rounds, each wrk run {REPS}x per side, turns ABC then CBA",
        }

    def _get(self, port: int, headers: dict[str, str]) -> int | None:
        conn = http.client.HTTPConnection(LISTEN, port, timeout=2)
        try:
            conn.request("GET", "/", headers=headers)
            return conn.getresponse().status
        except OSError:
            return None
        finally:
            conn.close()

    def _wait_routes(self, port: int, n: int, proc: Proc, timeout: float = 60.0) -> None:
        """Until the target routes (200); then it must refuse it without the header (404)."""
        target = {"Host": host(n - 1), HEADER: tenant(n - 1)}
        deadline = time.monotonic() + timeout
        while self._get(port, target) != 200:
            if proc.popen.poll() is not None:
                raise RuntimeError(
                    f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name} did not route {target} within {timeout:.0f} s")
            time.sleep(0.05)
        for bad in ({"Host": host(n - 1)}, {"Host": host(n - 1), HEADER: tenant(n)}):
            got = self._get(port, bad)
            if got != 404:
                raise RuntimeError(f"{proc.name} answered {got} to {bad}, not 404")

    def _start_side(self, ctx: Context, side: str, n: int, index: int) -> tuple[Proc, int]:
        assert self.work is not None
        work = self.work
        if side == INGRESS:
            proc, http_port, _ = self._start(ctx, NETPLANE, n, index)
            return proc, http_port
        port = ctx.free_port()
        objs = gateway_objects(n, port, self.backend_addr)
        tag = side.replace(" ", "-")
        log, access = work / f"gw-{tag}-{n}-{index}.log", work / f"gw-{tag}-{n}-{index}-access.log"
        if side == NETPLANE:
            mdir = work / f"gateway-manifests-{n}-{index}"
            mdir.mkdir(exist_ok=True)
            (mdir / "objects.json").write_text(
                json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
            )
            argv = [
                *ctx.pin("server"), *netplane_cmd(),
                "run", "-f", str(mdir), "--mode", "local", "--proxy", "off", "--dns", "off",
                "--admin", "off", "--ingress-http", f"{LISTEN}:{ctx.free_port()}",
                "--ingress-https", "off", "--ingress-access-log", str(access),
                "--log-level", "warning", "--shutdown-grace", "1",
                "--workers", "1",  # one process against nginx's one worker
            ]  # fmt: skip
        else:
            nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
            conf = work / f"gateway-proxy-{n}.conf"
            conf.write_text(gateway_nginx_conf(objs, work, access))
            argv = [*ctx.pin("server"), str(nginx), "-p", str(work), "-c", str(conf),
                    "-e", str(work / "nginx-proxy-error.log")]  # fmt: skip
        proc = ctx.procs.start(argv, name=side, log=log, cwd=work)
        self._wait_routes(port, n, proc)
        return proc, port

    def _http(
        self, ctx: Context, side: str, proc: Proc, port: int, n: int, seconds: float = 0.0
    ) -> dict[str, float]:
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        text = self._wrk(
            ctx, f"http://{LISTEN}:{port}/", host(n - 1), seconds or self.seconds(ctx),
            "-H", f"{HEADER}: {tenant(n - 1)}",
        )  # fmt: skip
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
        out.update({f"{p}_ms": lat[p] for p in ("p50", "p99") if p in lat})
        return out

    def run_round(self, ctx: Context, index: int) -> dict[str, dict[str, float]]:
        if ctx.quick and index > 0:
            return {}
        has_nginx = bool(shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin"))
        if not has_nginx and not ctx.quick:
            raise RuntimeError("nginx is not installed (python -m bench.setup nginx)")
        sides = [NETPLANE, INGRESS, NGINX] if has_nginx else [NETPLANE, INGRESS]
        reps = 1 if ctx.quick else REPS
        out: dict[str, dict[str, float]] = {side: {} for side in sides}
        for n in self.sizes(ctx):
            running: dict[str, tuple[Proc, int]] = {}
            try:
                for side in sides:
                    running[side] = self._start_side(ctx, side, n, index)
                if not ctx.quick:
                    for side in sides:  # warm-up: pools, caches, the first log file blocks
                        self._http(ctx, side, *running[side], n, seconds=1.0)
                got: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
                for rep in range(reps):
                    for side in sides if rep % 2 == 0 else sides[::-1]:
                        for key, value in self._http(ctx, side, *running[side], n).items():
                            got[side].setdefault(key, []).append(value)
                for side in sides:
                    for key, values in got[side].items():
                        out[side][f"{key}@{n}"] = statistics.fmean(values)
            finally:
                for proc, _ in running.values():
                    ctx.procs.stop(proc)
        return out
