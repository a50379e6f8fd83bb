"""``fuzz``: every target in bench/fuzz/ under atheris (libFuzzer) for a number of inputs or seconds.

Quick mode (CI): each target for ~2 s. Full mode: each target for
``NETPLANE_FUZZ_INPUTS`` inputs (default 1,000,000), or at most
``NETPLANE_FUZZ_SECONDS`` seconds when that is set. Each target runs in a
process of its own (``python -m bench.fuzz.<target>``) on a copy of its seed
corpus; what it finds (crash files) is kept in the run's work directory and
counted as an error of the scenario. Only the first measured run fuzzes;
later runs (``--runs``) add nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from typing import Any

from bench.fuzz import CORPUS, TARGETS
from bench.harness import Context, Metric, Scenario

QUICK_SECONDS = 2
FULL_INPUTS = 1_000_000

_DONE = re.compile(rb"#(\d+)\s+DONE\s+cov: (\d+)")
_PROGRESS = re.compile(rb"#(\d+)\s+\w+\s+cov: (\d+)")


def budget(ctx: Context) -> tuple[int, int]:
    """(inputs, seconds) per target; 0 is no limit."""
    if ctx.quick:
        return 0, QUICK_SECONDS
    inputs = int(os.environ.get("NETPLANE_FUZZ_INPUTS", FULL_INPUTS))
    seconds = int(os.environ.get("NETPLANE_FUZZ_SECONDS", 0))
    return inputs, seconds


def parse_log(text: bytes) -> tuple[int, int]:
    """(inputs run, coverage edges) from libFuzzer's output (its last status line)."""
    m = _DONE.search(text)
    if m is None:
        found = _PROGRESS.findall(text)
        if not found:
            return 0, 0
        return int(found[-1][0]), int(found[-1][1])
    return int(m.group(1)), int(m.group(2))


class Fuzz(Scenario):
    name = "fuzz"
    title = "Fuzzing: every outside-input parser under atheris"
    description = (
        "Each target in bench/fuzz/ (ingress request and response parsing, HTTP/2 frames, DNS "
        "queries and upstream replies, watch streams and list pages, manifests, kubeconfig, "
        "PROXY protocol v2) runs under atheris/libFuzzer from its seed corpus: quick mode ~2 s "
        "each, a full run NETPLANE_FUZZ_INPUTS inputs each (default 1,000,000; "
        "NETPLANE_FUZZ_SECONDS caps the time). Reported per target: inputs run, inputs/s, "
        "coverage edges (libFuzzer's cov), crashes."
    )
    peer_note = "No peer: absolute figures. Any crash is an error of the run (files kept)."
    warmup_runs = 0
    budget_s = 36000.0

    def __init__(self) -> None:
        self.crashes: list[str] = []

    def metrics(self, ctx: Context) -> list[Metric]:
        out = []
        for t in TARGETS:
            out += [
                Metric(f"{t}_inputs", "inputs", "higher", f"{t}: inputs run"),
                Metric(f"{t}_rate", "inputs/s", "higher", f"{t}: inputs per second"),
                Metric(f"{t}_edges", "edges", "higher", f"{t}: coverage edges"),
                Metric(f"{t}_crashes", "crashes", "lower", f"{t}: crashes found"),
            ]
        return out

    def params(self, ctx: Context) -> dict[str, Any]:
        inputs, seconds = budget(ctx)
        return {
            "targets": list(TARGETS),
            "inputs_per_target": inputs,
            "seconds_per_target": seconds,
        }

    def setup(self, ctx: Context) -> None:
        try:
            import atheris  # noqa: F401
        except ImportError:
            raise RuntimeError("atheris is not installed: pip install -e '.[bench]'") from None

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        if index > 0:
            return {}
        inputs, seconds = budget(ctx)
        values: dict[str, float] = {}
        for target in TARGETS:
            values.update(self.run_target(ctx, target, inputs, seconds))
        return values

    def run_target(self, ctx: Context, target: str, inputs: int, seconds: int) -> dict[str, float]:
        work = ctx.workdir / "fuzz" / target
        corpus = work / "corpus"
        shutil.rmtree(work, ignore_errors=True)
        corpus.mkdir(parents=True)
        argv = [
            sys.executable, "-m", f"bench.fuzz.{target}", f"-runs={inputs or -1}",
            f"-artifact_prefix={work}/", "-print_final_stats=1", str(corpus),
            str(CORPUS / target),
        ]  # fmt: skip
        if seconds:
            argv.insert(4, f"-max_total_time={seconds}")
        log = work / "fuzz.log"
        proc = ctx.procs.start(argv, name=f"fuzz-{target}", log=log, cwd=ctx.root)
        t0 = time.perf_counter()
        limit = (seconds or 36000) + 120.0
        with contextlib.suppress(TimeoutError):
            ctx.procs.wait(proc, timeout=limit)
        elapsed = time.perf_counter() - t0
        ran, edges = parse_log(log.read_bytes())
        found = sorted(p.name for p in work.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))  # fmt: skip
        for name in found:
            self.crashes.append(f"{target}: {work / name}")
        ctx.echo(f"  fuzz {target}: {ran} inputs, {edges} edges, {len(found)} crashes")
        return {
            f"{target}_inputs": ran,
            f"{target}_rate": ran / elapsed if elapsed > 0 else 0.0,
            f"{target}_edges": edges,
            f"{target}_crashes": len(found),
        }

    def series(self, ctx: Context, samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        if self.crashes:
            raise RuntimeError("fuzz targets crashed: " + "; ".join(self.crashes))
        return {}
