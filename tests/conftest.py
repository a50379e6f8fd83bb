"""Shared fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import dns.message  # noqa: F401  # DNS: dnspython claims `dns` before any test puts the repository root (and its dns/ folder) on sys.path
import pytest
import uvloop


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable:
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(coro)

    return runner
