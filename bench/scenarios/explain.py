"""``explain``: how long ``netplane explain`` takes per answer against a 10k-service state.

The measurement runs in a subprocess on the server core (:data:`RUN`, which
takes ``--services N --calls K``): it loads N ClusterIP Services with their
EndpointSlices (bench/state_scale.py's objects, every 20th Service headless),
N/10 Ingresses of ten paths each, and N/100 HTTPRoutes on one Gateway into a
Dataplane through the embedding API, then times :func:`netplane.explain.explain`
plus the text rendering, in process, for each kind of target: an Ingress URL,
a Gateway URL, a URL whose host matches nothing (nearest hosts), a service
address, an address that matches nothing (nearest frontends), a DNS name,
and a name that does not exist (nearest names). The first answer of each
kind also builds the tables no plane runs here (route table, zone, Gateway
routes); it is reported on its own. The target: every answer under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import random
import statistics
import sys
import time
from typing import Any

from bench.harness import Context, Metric, Scenario

#: the measurement's command line (``-m bench.scenarios.explain`` would import this module
#: twice: bench/scenarios/__init__.py imports it before runpy runs it)
RUN = "import sys; from bench.scenarios.explain import main; sys.exit(main(sys.argv[1:]))"
KINDS = ("ingress", "gateway", "http_miss", "l4", "l4_miss", "dns", "dns_nxdomain")
PERCENTILES = ("p50", "p99")
PER_SLICE = 10


def _sizes(ctx: Context) -> tuple[int, int]:
    """(services, calls per kind)."""
    return (500, 50) if ctx.quick else (10_000, 300)


class ExplainBench(Scenario):
    name = "explain"
    title = "netplane explain, per answer"
    description = (
        "bench/scenarios/explain.py runs as a subprocess on the server core: N ClusterIP "
        "Services of 10 endpoints (every 20th headless), N/10 Ingresses of 10 paths and N/100 "
        "HTTPRoutes on one Gateway, loaded through the embedding API; then each kind of "
        "target is explained in process (explain() and the text), p50 and p99 per kind. "
        "The first answer of a kind builds the tables that no plane runs offline; it is "
        "shown as the build time. Target: every answer under 100 ms."
    )
    peer_note = "No peer: kube-proxy, ingress-nginx and CoreDNS have nothing like it."
    warmup_runs = 0
    budget_s = 300.0

    def metrics(self, ctx: Context) -> list[Metric]:
        n, _ = _sizes(ctx)
        out = [
            Metric(f"{kind}_{p}_ms", "ms", "lower", f"{kind} {p}, {n:,} svc")
            for kind in KINDS
            for p in PERCENTILES
        ]
        out.append(Metric("build_ms", "ms", "lower", f"tables built on first use, {n:,} svc"))
        return out

    def params(self, ctx: Context) -> dict[str, Any]:
        n, calls = _sizes(ctx)
        return {"services": n, "endpoints_per_slice": PER_SLICE, "calls_per_kind": calls}

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        n, calls = _sizes(ctx)
        out = ctx.workdir / f"explain-{index}.json"
        argv = [
            *ctx.pin("server"), sys.executable, "-c", RUN,
            "--services", str(n), "--calls", str(calls), "--seed", str(index + 1),
        ]  # fmt: skip
        proc = ctx.procs.start(
            argv, name="explain", log=ctx.workdir / f"explain-{index}.log", stdout=out, cwd=ctx.root
        )
        code = ctx.procs.wait(proc, timeout=240)
        if code != 0:
            raise RuntimeError(f"explain bench exited with {code}; see {proc.log}")
        doc = json.loads(out.read_text())
        values = {f"{k}_{p}_ms": float(doc["ms"][k][p]) for k in KINDS for p in PERCENTILES}
        values["build_ms"] = float(doc["build_ms"])
        return values


# -- the measurement (RUN) -------------------------------------------------------------------


def _objects(services: int) -> list[dict[str, Any]]:
    from bench.state_scale import make_service, make_slice

    out: list[dict[str, Any]] = [
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
         "metadata": {"name": "netplane"}, "spec": {"controller": "netplane.io/ingress"}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
         "metadata": {"name": "netplane"},
         "spec": {"controllerName": "netplane.io/gateway-controller"}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "gw", "namespace": "ns-0"},
         "spec": {"gatewayClassName": "netplane", "listeners": [
             {"name": "http", "port": 18088, "protocol": "HTTP",
              "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
    ]  # fmt: skip
    for i in range(services):
        svc = make_service(i)
        if i % 20 == 0:
            svc["spec"]["clusterIP"] = "None"
            svc["spec"]["clusterIPs"] = ["None"]
        out.append(svc)
        out.append(make_slice(i, PER_SLICE))
    # Ingress k: ten Services of namespace ns-(k % 50), one path each, and "/".
    for k in range((services + 9) // 10):
        ns_index, block = k % 50, k // 50
        members = [ns_index + 50 * (10 * block + j) for j in range(10)]
        members = [i for i in members if i < services]
        if not members:
            continue
        paths = [
            {"path": f"/svc-{i}", "pathType": "Prefix",
             "backend": {"service": {"name": f"svc-{i}", "port": {"number": 80}}}}
            for i in members
        ]  # fmt: skip
        paths.append({"path": "/", "pathType": "Prefix",
                      "backend": {"service": {"name": f"svc-{members[0]}", "port": {"number": 80}}}})  # fmt: skip
        out.append({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": f"app-{k}", "namespace": f"ns-{ns_index}",
                         "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"ingressClassName": "netplane",
                     "rules": [{"host": f"app-{k}.example", "http": {"paths": paths}}]},
        })  # fmt: skip
    for r in range(max(1, services // 100)):
        i = r * 100
        out.append({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": f"route-{r}", "namespace": f"ns-{(i + 1) % 50}"},
            "spec": {"parentRefs": [{"name": "gw", "namespace": "ns-0"}],
                     "hostnames": [f"route-{r}.example"],
                     "rules": [
                         {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                                       "headers": [{"name": "x-version", "value": "v2"}]}],
                          "backendRefs": [{"name": f"svc-{i + 1}", "port": 80}]},
                         {"backendRefs": [{"name": f"svc-{i + 1}", "port": 80, "weight": 3},
                                          {"name": f"svc-{i + 51}", "port": 80}]}]},
        })  # fmt: skip
    return out


def _targets(kind: str, rng: random.Random, services: int) -> str:
    from bench.state_scale import SERVICE_CIDR

    i = rng.randrange(1, services)
    if i % 20 == 0:
        i += 1
    i = min(i, services - 1)
    ns = f"ns-{i % 50}"
    m = i // 50
    k = i % 50 + 50 * (m // 10)  # the Ingress that has /svc-i (see _objects)
    if kind == "ingress":
        return f"http://app-{k}.example/svc-{i}/x?y=1"
    if kind == "gateway":
        return f"http://route-{rng.randrange(max(1, services // 100))}.example:18088/a"
    if kind == "http_miss":
        return f"http://app-{k}.exmaple/"
    if kind == "l4":
        return f"{SERVICE_CIDR.network_address + 16 + i}:80/tcp"
    if kind == "l4_miss":
        return f"10.97.{rng.randrange(256)}.{rng.randrange(256)}:80/tcp"
    if kind == "dns":
        return f"svc-{i}.{ns}.svc.cluster.local"
    return f"svc-{i}x.{ns}.svc.cluster.local"


def measure(services: int, calls: int, seed: int) -> dict[str, Any]:
    return asyncio.run(_measure(services, calls, seed))


async def _measure(services: int, calls: int, seed: int) -> dict[str, Any]:
    from bench.state_scale import SERVICE_CIDR
    from netplane import Config, Dataplane
    from netplane.explain import Views, explain, render
    from netplane.model import parse_object

    config = Config(mode="node", service_cidrs=(SERVICE_CIDR,), admin=None, node_name="node-1")
    logging.getLogger("netplane").setLevel(logging.ERROR)  # the state's problems: not measured
    gc.disable()
    dp = Dataplane(config, serve=False)
    with dp.batch():
        for raw in _objects(services):
            dp.apply(parse_object(raw))
    await dp.start()
    gc.enable()
    gc.collect()
    gc.freeze()
    views = Views(dp)
    rng = random.Random(seed)
    build = time.perf_counter()
    first: dict[str, float] = {}
    for kind in KINDS:  # the first of each kind builds what it reads
        t0 = time.perf_counter()
        render(explain(views, _targets(kind, rng, services)))
        first[kind] = (time.perf_counter() - t0) * 1000
    build_ms = (time.perf_counter() - build) * 1000
    ms: dict[str, dict[str, float]] = {}
    found: dict[str, int] = {}
    for kind in KINDS:
        times = []
        hits = 0
        for _ in range(calls):
            target = _targets(kind, rng, services)
            t0 = time.perf_counter()
            doc = explain(views, target)
            render(doc)
            times.append((time.perf_counter() - t0) * 1000)
            hits += bool(doc.get("found"))
        times.sort()
        ms[kind] = {
            "p50": round(statistics.median(times), 3),
            "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
            "max": round(times[-1], 3),
        }
        found[kind] = hits
    await dp.stop(0)
    return {
        "services": services,
        "endpoints_per_slice": PER_SLICE,
        "calls_per_kind": calls,
        "build_ms": round(build_ms, 1),
        "first_ms": {k: round(v, 1) for k, v in first.items()},
        "ms": ms,
        "found": found,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=300, help="answers timed per kind")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.services, args.calls, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
