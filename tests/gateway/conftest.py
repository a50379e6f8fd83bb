"""Fixtures of the Gateway API tests: the conformance suite's base world, started per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gateway_world import ConformanceWorld


@pytest.fixture
async def world() -> AsyncIterator[ConformanceWorld]:
    """The base world, not started: a test starts it with its own objects."""
    w = ConformanceWorld()
    yield w
    await w.close()
