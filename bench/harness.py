"""The Scenario API, the run context and the process manager the scenarios share.

A scenario declares its sides (``netplane`` first, then its peers), the Debian
packages it needs, and its metrics (unit, and whether higher or lower is
better). The harness calls ``setup``, then ``run_side`` for every side in
alternation (warm-ups first, then the measured runs: netplane, peer, netplane,
peer, ...), then ``teardown``, always. Every process a scenario starts goes
through :class:`ProcessManager`, which stops it by PID (SIGTERM, then SIGKILL
after a timeout) at the latest when the harness exits, on error or Ctrl-C too.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

NETPLANE = "netplane"
ROOT = Path(__file__).resolve().parent.parent
BETTER = ("higher", "lower")


@dataclass(frozen=True)
class Metric:
    """One measured quantity; ``better`` is ``"higher"`` or ``"lower"``."""

    name: str
    unit: str
    better: str
    title: str = ""

    def __post_init__(self) -> None:
        if self.better not in BETTER:
            raise ValueError(f"metric {self.name}: better must be one of {BETTER}")

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "unit": self.unit, "better": self.better, "title": self.title}


class Scenario:
    """Base class; see bench/README.md ("Adding a scenario") for the contract."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    sides: ClassVar[tuple[str, ...]] = (NETPLANE,)
    # Shown under the scenario's table: what the peer is, or why there is none.
    peer_note: ClassVar[str] = ""
    packages: ClassVar[tuple[str, ...]] = ()  # Debian packages (see bench/setup.py)
    warmup_runs: ClassVar[int] = 1
    budget_s: ClassVar[float] = 300.0  # measured runs stop being scheduled after this
    #: True: every side runs in each round, their load runs interleaved (see run_round)
    interleaved: ClassVar[bool] = False

    @property
    def peers(self) -> tuple[str, ...]:
        return self.sides[1:]

    def metrics(self, ctx: Context) -> list[Metric]:
        raise NotImplementedError

    def params(self, ctx: Context) -> dict[str, Any]:
        """Sizes and settings of this run, recorded in the JSON."""
        return {}

    def setup(self, ctx: Context) -> None:
        """Start what all runs share (a fake API server, a backend); write configs."""

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        """Measure ``side`` once; return ``{metric name: value}`` (a subset is fine)."""
        raise NotImplementedError

    def run_round(self, ctx: Context, index: int) -> dict[str, dict[str, float]]:
        """Measure every side once, for an ``interleaved`` scenario: ``{side: {metric: value}}``.

        For figures that drift with the machine faster than one side's whole
        run takes: the sides' servers run together and their load runs take
        turns, so both sides see the same moment of the machine.
        """
        raise NotImplementedError

    def teardown(self, ctx: Context) -> None:
        """Undo ``setup``; processes started through ``ctx.procs`` are stopped anyway."""

    def series(self, ctx: Context, samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        """Data for the plots, from the samples (see bench/README.md for the keys)."""
        return {}


def schedule(sides: Sequence[str], runs: int, warmup: int) -> list[tuple[str, int, bool]]:
    """The order of runs: ``(side, index, is_warmup)``, sides alternating within each round."""
    order = [(side, i, True) for i in range(warmup) for side in sides]
    order += [(side, i, False) for i in range(runs) for side in sides]
    return order


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child before exec
    # If the harness dies without cleaning up (SIGKILL), the kernel sends the
    # child SIGTERM, so nothing outlives it.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None
    started: float  # time.perf_counter() just before the spawn

    @property
    def pid(self) -> int:
        return self.popen.pid


class ProcessManager:
    """Starts processes and stops them by PID: SIGTERM, then SIGKILL after ``term_timeout``."""

    def __init__(self, term_timeout: float = 5.0) -> None:
        self.term_timeout = term_timeout
        self._procs: dict[int, Proc] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout: Path | None = None,
    ) -> Proc:
        """Spawn ``argv`` in its own session; output goes to ``log`` (stdout to ``stdout`` if set)."""
        err = self._open(log)
        out = self._open(stdout) if stdout is not None else err
        started = time.perf_counter()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,  # Ctrl-C reaches the harness only; it stops the rest
            preexec_fn=_set_pdeathsig,
        )
        proc = Proc(name, popen, log, started)
        self._procs[popen.pid] = proc
        return proc

    def _open(self, path: Path | None) -> IO[bytes] | int:
        if path is None:
            return subprocess.DEVNULL
        fh = open(path, "ab")  # noqa: SIM115 - closed in stop_all()
        self._logs.append(fh)
        return fh

    def wait(self, proc: Proc, timeout: float) -> int:
        """Wait for ``proc`` to exit by itself; stop it and raise TimeoutError after ``timeout``."""
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise TimeoutError(f"{proc.name} ran longer than {timeout:.0f} s") from None
        finally:
            if proc.popen.returncode is not None:
                self._procs.pop(proc.pid, None)

    @property
    def running(self) -> list[Proc]:
        return [p for p in self._procs.values() if p.popen.poll() is None]

    def stop(self, proc: Proc, timeout: float | None = None) -> int | None:
        """Stop one process by PID; returns its exit status (negative: killed by that signal)."""
        timeout = self.term_timeout if timeout is None else timeout
        popen = proc.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(popen.pid, signal.SIGKILL)
                popen.wait(timeout)
        self._procs.pop(popen.pid, None)
        return popen.returncode

    def stop_all(self) -> None:
        for proc in list(self._procs.values()):
            with contextlib.suppress(Exception):
                self.stop(proc)
        for fh in self._logs:
            fh.close()
        self._logs.clear()


def allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def vmrss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (VmRSS from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def netplane_cmd() -> list[str]:
    """The netplane of this checkout, run by this interpreter.

    Not the ``netplane`` on PATH: that may be a shim (pyenv's adds start-up
    time that would be measured) or an install of another checkout.

    ``run`` gets ``--workers 1`` unless the command names a count: the
    side-by-side scenarios pin one netplane process and one single-worker
    peer to the same core, and the workers scenario passes its own.
    """
    return [sys.executable, "-c", f"{checkout_boot(ROOT)}; " + _RUN_ONE_WORKER]


_RUN_ONE_WORKER = (
    "a = sys.argv[1:]; "
    "sys.exit(main(a + ['--workers', '1'] if a[:1] == ['run'] and '--workers' not in a else a))"
)


def checkout_boot(root: Path) -> str:
    """Python source that imports ``netplane.cli.main``, refusing any netplane but root's.

    netplane comes from the interpreter's install (``pip install -e .`` of
    this checkout), never from root put on ``sys.path``: from there the
    top-level ``dns/`` would hide dnspython's ``dns``. The check makes an
    install of another checkout fail loudly instead of being measured; it
    finds the modules without running them, so start-up costs stay as they are.
    """
    return (
        "import sys, importlib.util as u; "
        "bad = [f'{n} from {o}' for n in ('netplane', 'netplane.ingress', 'netplane.dns') "
        "for s in [u.find_spec(n)] for o in [s and s.origin or 'nowhere'] "
        f"if not o.startswith({str(root) + '/'!r})]; "
        f"bad and sys.exit(f'not the checkout {root}: ' + ', '.join(bad) + '; pip install -e it'); "
        "from netplane.cli import main"
    )


@dataclass
class Context:
    """What a scenario gets: the run's settings, the process manager and helpers."""

    quick: bool
    runs: int
    workdir: Path
    procs: ProcessManager = field(default_factory=ProcessManager)
    root: Path = ROOT
    cpus: list[int] = field(default_factory=allowed_cpus)
    echo: Callable[[str], None] = field(default=lambda msg: print(msg, flush=True))

    @property
    def cores(self) -> int:
        return len(self.cpus)

    def pin(self, role: str) -> list[str]:
        """``taskset -c N`` prefix: the load generator on one core, server and peers on another."""
        if role not in ("load", "server", "peer"):
            raise ValueError(f"unknown role {role!r}")
        if self.cores < 2 or not shutil.which("taskset"):
            return []
        cpu = self.cpus[0] if role == "load" else self.cpus[1]
        return ["taskset", "-c", str(cpu)]

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def wait_file(self, path: Path, proc: Proc, timeout: float, what: str) -> None:
        """Poll until ``path`` exists (a server's "I am up" file, such as a kubeconfig it
        publishes). Raises RuntimeError if ``proc`` exits, TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{what} exited; see {proc.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not start within {timeout:.0f} s")
            time.sleep(0.05)

    def wait_http(
        self,
        url: str,
        status: int = 200,
        timeout: float = 30.0,
        proc: Proc | None = None,
        interval: float = 0.002,
    ) -> float:
        """Poll ``url`` (http://127.x.x.x:PORT/path) until it answers ``status``.

        Returns the seconds since ``proc`` was spawned (or since the call).
        Raises TimeoutError after ``timeout`` s, RuntimeError if ``proc`` exits.
        """
        host, _, rest = url.removeprefix("http://").partition("/")
        hostname, _, port = host.partition(":")
        start = proc.started if proc else time.perf_counter()
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if proc is not None and proc.popen.poll() is not None:
                raise RuntimeError(
                    f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}"
                )
            conn = http.client.HTTPConnection(hostname, int(port or 80), timeout=2)
            try:
                conn.request("GET", "/" + rest)
                if conn.getresponse().status == status:
                    return time.perf_counter() - start
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(interval)
        raise TimeoutError(f"{url} did not answer {status} within {timeout:.0f} s")


def result_skeleton(sc: Scenario) -> dict[str, Any]:
    """A scenario's result before anything ran (also what a failed setup reports)."""
    return {
        "name": sc.name,
        "title": sc.title,
        "description": sc.description,
        "sides": list(sc.sides),
        "peer_note": sc.peer_note,
        "packages": list(sc.packages),
        "params": {},
        "metrics": [],
        "samples": {},
        "order": [],
        "interleaved": sc.interleaved,
        "series": {},
        "errors": [],
    }


def latency_series(
    samples: dict[str, dict[str, list[float]]],
    sizes: list[int],
    *,
    metric: str,
    group: str,
    stage: str,
    per_slice: int,
    percentiles: tuple[str, ...] = ("p50", "p99", "max"),
) -> dict[str, Any]:
    """Plot data from netplane's ``{metric}_{p}_ms@{size}`` medians: percentiles and
    programming latency against cluster size (in endpoints)."""
    mine = samples.get(NETPLANE, {})
    points, programming = [], []
    for n in sizes:
        med = {
            p: statistics.median(mine[f"{metric}_{p}_ms@{n}"])
            for p in percentiles
            if mine.get(f"{metric}_{p}_ms@{n}")
        }
        if not med:
            continue
        points.append({"group": group.format(n=n), "side": NETPLANE, "unit": "ms", "values": med})
        programming.append(
            {
                "side": NETPLANE,
                "stage": stage,
                "size": n * per_slice,
                "p50": med.get("p50"),
                "p99": med.get("p99"),
            }
        )
    return {
        "latency_percentiles": points,
        "programming_latency": {"x": "endpoints", "unit": "ms", "points": programming},
    }


def run_scenario(ctx: Context, sc: Scenario) -> dict[str, Any]:
    """Run one scenario in alternation and return its result (errors recorded, not raised)."""
    metrics = sc.metrics(ctx)
    names = {m.name for m in metrics}
    samples: dict[str, dict[str, list[float]]] = {side: {} for side in sc.sides}
    result = result_skeleton(sc)
    result.update(params=sc.params(ctx), metrics=[m.as_dict() for m in metrics], samples=samples)
    t0 = time.perf_counter()
    try:
        sc.setup(ctx)
        if sc.interleaved:
            rounds = [((*sc.sides,), i, True) for i in range(sc.warmup_runs)]
            rounds += [((*sc.sides,), i, False) for i in range(ctx.runs)]
        else:
            rounds = [((side,), i, warm) for side, i, warm in schedule(sc.sides, ctx.runs, sc.warmup_runs)]  # fmt: skip
        for sides, index, warm in rounds:
            if not warm and time.perf_counter() - t0 > sc.budget_s:
                result["errors"].append(f"time budget {sc.budget_s:.0f} s reached; runs cut short")
                break
            label = "warm-up" if warm else f"run {index + 1}/{ctx.runs}"
            ctx.echo(f"  {sc.name}: {' + '.join(sides)} {label}")
            if sc.interleaved:
                by_side = sc.run_round(ctx, index)
            else:
                by_side = {sides[0]: sc.run_side(ctx, sides[0], index)}
            for side in sides:
                values = by_side.get(side, {})
                unknown = set(values) - names
                if unknown:
                    raise ValueError(f"{sc.name}: undeclared metrics {sorted(unknown)}")
                if warm or not values:
                    continue
                result["order"].append(side)
                for key, value in values.items():
                    samples[side].setdefault(key, []).append(float(value))
        result["series"] = sc.series(ctx, samples)
    except Exception as e:  # recorded and reported; the other scenarios still run
        result["errors"].append(f"{type(e).__name__}: {e}")
        ctx.echo(traceback.format_exc())
    finally:
        try:
            sc.teardown(ctx)
        finally:
            ctx.procs.stop_all()
    result["duration_s"] = round(time.perf_counter() - t0, 2)
    return result


def install_exit_handlers(procs: ProcessManager) -> None:
    """Stop every started process at exit, and turn SIGTERM/SIGHUP into a clean exit."""
    atexit.register(procs.stop_all)

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)
