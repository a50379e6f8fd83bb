"""Shared fixtures, and the import path every test sees.

``python -m pytest`` puts the working directory, the repository root, first
on sys.path (``python -m`` always does; ``pytest`` does not). From there the
top-level ``dns/`` folder, the source of ``netplane.dns``, would be found as
the top-level ``dns`` and hide dnspython's. This file is imported before any
test module, so it takes the root back off sys.path: netplane,
netplane.ingress and netplane.dns then come from the install (the test
command's editable one), with either command. ``bench/`` is not installed; it
is registered by its location instead of by putting the root on the path.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]


def _register_bench() -> None:
    """Make ``import bench`` (and its submodules) load ROOT/bench without ROOT on sys.path."""
    spec = importlib.util.spec_from_file_location(
        "bench", ROOT / "bench" / "__init__.py", submodule_search_locations=[str(ROOT / "bench")]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)


_register_bench()

import dns.message  # noqa: E402  # after the cut above: dnspython's, never ./dns
import pytest  # noqa: E402
import secret_scan  # noqa: E402  # tests/secret_scan.py
import uvloop  # noqa: E402

import netplane  # noqa: E402
from netplane.testing.process import Netplane  # noqa: E402

# Fixtures shared by test files in several folders, by module (tests/ is on sys.path).
pytest_plugins = ["l4_world"]

assert Path(dns.message.__file__).resolve().parent.parent != ROOT
if Path(netplane.__file__).resolve().parent.parent != ROOT:
    # Another checkout's editable install would be tested in this one's place.
    raise pytest.UsageError(
        f"netplane is imported from {netplane.__file__}, not from this checkout ({ROOT}):"
        " install it first (pip install -e '.[test,bench]')"
    )


# Before any test module makes a key: every trustme key, fake API token and
# kubeconfig secret is registered from here on (see tests/secret_scan.py).
secret_scan.install()
_OUTPUTS = pytest.StashKey[secret_scan.Outputs]()


@pytest.fixture(autouse=True)
def no_secret_in_output(request: pytest.FixtureRequest) -> secret_scan.Outputs:
    """Every test: no registered key or token in what it made netplane print or serve.

    Searched when the test ends (``pytest_runtest_makereport`` below): its
    captured stdout, stderr and log, the output of every netplane process,
    every in-process admin response, and a last /debug/state and /metrics of
    each netplane process still running. A find turns the test's teardown
    into an error that names the secret and where it was seen.
    """
    out = secret_scan.Outputs()
    request.node.stash[_OUTPUTS] = out
    secret_scan.CURRENT = out
    return out


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Any:
    # Before the fixtures stop the processes: their last /debug/state and /metrics.
    if item.stash.get(_OUTPUTS, None) is not None:
        item.stash[_OUTPUTS].fetch_admin()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    out = item.stash.get(_OUTPUTS, None)
    if call.when != "teardown" or out is None:
        return report
    secret_scan.CURRENT = None
    out.read_processes()
    leaks = out.leaks(report.sections)  # pytest's captured stdout, stderr and log, all phases
    if leaks:
        report.outcome = "failed"
        report.longrepr = "a test secret appears in its output:\n  " + "\n  ".join(leaks)
    return report


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable:
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(coro)

    return runner


@pytest.fixture
def start_netplane(tmp_path: Path) -> Iterator[Callable[..., Netplane]]:
    """``start_netplane(*args, **kw)``: a launched :class:`Netplane`, stopped (by PID) after the test.

    It returns at once; a test then waits with ``await np.await_ready()`` (async)
    or ``np.wait_ready()`` (sync), or for a start failure with ``np.wait_exit()``.
    Keyword arguments go to :class:`Netplane` (``admin``, ``prefix``, ``env``,
    ``name``); ``workdir`` defaults to the test's tmp_path. Each process gets a
    name of its own (netplane, netplane-2, ...), hence its own log files.
    """
    started: list[Netplane] = []

    def start(*args: str, **kw: Any) -> Netplane:
        kw.setdefault("workdir", tmp_path)
        kw.setdefault("name", "netplane" if not started else f"netplane-{len(started) + 1}")
        np = Netplane(*args, **kw)
        started.append(np)
        return np.launch()

    yield start
    for np in reversed(started):
        np.stop()
