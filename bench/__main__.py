"""``python -m bench``: run the scenarios, write results JSON, markdown and plots.

    python -m bench                    # full run, 3 runs per side
    python -m bench --quick            # smoke run for CI (never asserts timing)
    python -m bench --only scale --runs 5
    python -m bench --only soak --soak-minutes 30
    python -m bench --setup            # install every peer and load generator, then exit
    python -m bench --list

Exit status 1 when a scenario recorded an error, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import machine, report, setup
from bench.harness import (
    ROOT,
    Context,
    ProcessManager,
    install_exit_handlers,
    result_skeleton,
    run_scenario,
)
from bench.scenarios import SCENARIOS, by_name
from bench.scenarios.soak import Soak

RESULTS = ROOT / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run (CI)")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per side (default 3)")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only NAME (repeatable)")
    ap.add_argument("--setup", action="store_true", help="install peers and load generators")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument(
        "--soak-minutes", type=float, default=None, metavar="M", help="soak length (default 10)"
    )
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.soak_minutes is not None and args.soak_minutes <= 0:
        ap.error("--soak-minutes must be positive")
    unknown = set(args.only or ()) - set(by_name())
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; see --list")
    return args


def write_results(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    """``TIMESTAMP[-quick].json`` plus ``latest[-quick].json``, each with its markdown and plots.

    A quick run never replaces ``latest.json``: that is the full run the README shows.
    """
    out.mkdir(parents=True, exist_ok=True)
    stamp = doc["started_utc"].replace("-", "").replace(":", "")
    suffix = "-quick" if doc["quick"] else ""
    run_json = out / f"{stamp}{suffix}.json"
    latest = out / f"latest{suffix}.json"
    text = json.dumps(doc, indent=2) + "\n"
    tmp = out / f"{latest.name}.tmp"
    tmp.write_text(text)
    run_json.write_text(text)
    tmp.replace(latest)
    report.generate(run_json)
    return report.generate(latest)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for cls in SCENARIOS:
            print(f"{cls.name:14} {cls.title}")
        return 0
    if args.setup:
        installed = setup.ensure(setup.PACKAGES)
        print(f"setup: installed {' '.join(installed)}" if installed else "setup: all present")
        return 0
    if args.soak_minutes is not None:
        Soak.minutes = args.soak_minutes
    chosen = [cls for cls in SCENARIOS if not args.only or cls.name in args.only]
    procs = ProcessManager()
    install_exit_handlers(procs)
    workdir = Path(tempfile.mkdtemp(prefix="netplane-bench-"))
    ctx = Context(quick=args.quick, runs=args.runs, workdir=workdir, procs=procs)
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    t0 = time.perf_counter()
    results = []
    try:
        for cls in chosen:
            sc = cls()
            ctx.echo(f"{sc.name}: {sc.title}")
            try:
                setup.ensure(sc.packages)
            except Exception as e:
                results.append({**result_skeleton(sc), "errors": [f"setup failed: {e}"]})
                continue
            results.append(run_scenario(ctx, sc))
    finally:
        procs.stop_all()
    failed = [r["name"] for r in results if r["errors"]]
    pin = "not pinned (fewer than 2 cores or no taskset)"
    if ctx.pin("load"):
        pin = f"load generators on CPU {ctx.cpus[0]}, servers and peers on CPU {ctx.cpus[1]}"
    doc = {
        "started_utc": started,
        "duration_s": round(time.perf_counter() - t0, 1),
        "command": shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "runs": args.runs,
        "pinning": pin,
        "machine": machine.facts(),
        "scenarios": results,
    }
    written = write_results(doc, args.out)
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    for path in written.values():
        print(path)
    if failed:
        print(f"scenarios with errors: {', '.join(failed)} (logs kept in {workdir})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
