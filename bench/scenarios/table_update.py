"""``table_update``: programming latency, the state → table part (bench/state_scale.py).

Runs bench/state_scale.py as a subprocess on the server core at two cluster
sizes and reads its JSON: the time for one EndpointSlice change to go from
raw API object to an updated ServiceTable (p50, p99, max), the initial build
and the RSS. No peer: kube-proxy's rule-programming figures need a cluster.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.harness import Context, Metric, Scenario, latency_series

PER_SLICE = 10
PERCENTILES = ("p50", "p99", "max")


def _sizes(ctx: Context) -> tuple[list[int], int]:
    return ([100, 300], 50) if ctx.quick else ([1_000, 10_000], 1_000)


def _rss(doc: dict[str, Any]) -> float:
    """VmRSS once loaded; tolerant of how state_scale nests its RSS figures."""
    rss = doc["rss_mb"]
    for key in ("loaded", "end"):
        value = rss.get(key)
        if isinstance(value, dict):
            value = value.get("vmrss") or value.get("ru_maxrss")
        if isinstance(value, int | float) and value > 0:
            return float(value)
    raise ValueError(f"no RSS figure in {rss!r}")


def _build(doc: dict[str, Any]) -> float:
    build = doc["initial_build_s"]
    return float(build["total"] if isinstance(build, dict) else build)


class TableUpdate(Scenario):
    name = "table_update"
    title = "Programming latency, state → table part"
    description = (
        "bench/state_scale.py runs as a subprocess on the server core with N ClusterIP "
        "Services of 10 endpoints; after the initial build it applies single-EndpointSlice "
        "changes (an endpoint's readiness flipped or its address moved), each timed from the "
        "raw API object through parse, ClusterState and ServiceTable. The end-to-end "
        "programming latency (a new connection reaches the new endpoint, DNS answers the new "
        "address) needs the L4 and DNS planes and is added with them."
    )
    peer_note = (
        "Not yet: kube-proxy's programming latency needs a real cluster and is not "
        "measurable here. Absolute figures."
    )
    warmup_runs = 0  # each run is a fresh process that builds its world from scratch
    budget_s = 300.0

    def metrics(self, ctx: Context) -> list[Metric]:
        sizes, _ = _sizes(ctx)
        out = []
        for n in sizes:
            for p in PERCENTILES:
                out.append(Metric(f"change_{p}_ms@{n}", "ms", "lower", f"change {p}, {n:,} svc"))
            out.append(Metric(f"initial_build_s@{n}", "s", "lower", f"initial build, {n:,} svc"))
            out.append(Metric(f"rss_mb@{n}", "MB", "lower", f"RSS loaded, {n:,} svc"))
        return out

    def params(self, ctx: Context) -> dict[str, Any]:
        sizes, changes = _sizes(ctx)
        return {"services": sizes, "endpoints_per_slice": PER_SLICE, "changes": changes}

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        sizes, changes = _sizes(ctx)
        values: dict[str, float] = {}
        for n in sizes:
            out = ctx.workdir / f"table-{n}-{index}.json"
            argv = [
                *ctx.pin("server"),
                sys.executable,
                str(ctx.root / "bench" / "state_scale.py"),
                "--services",
                str(n),
                "--endpoints-per-slice",
                str(PER_SLICE),
                "--changes",
                str(changes),
                "--seed",
                str(index + 1),
            ]
            proc = ctx.procs.start(
                argv,
                name="state_scale",
                log=ctx.workdir / f"table-{n}-{index}.log",
                stdout=out,
                cwd=ctx.root,
            )
            code = ctx.procs.wait(proc, timeout=120)
            if code != 0:
                raise RuntimeError(f"state_scale exited with {code}; see {proc.log}")
            doc = json.loads(out.read_text())
            for p in PERCENTILES:
                values[f"change_{p}_ms@{n}"] = float(doc["change_ms"][p])
            values[f"initial_build_s@{n}"] = _build(doc)
            values[f"rss_mb@{n}"] = _rss(doc)
        return values

    def series(self, ctx: Context, samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        sizes, _ = _sizes(ctx)
        return latency_series(
            samples,
            sizes,
            metric="change",
            group="{n:,} services",
            stage="state → table",
            per_slice=PER_SLICE,
            percentiles=PERCENTILES,
        )
