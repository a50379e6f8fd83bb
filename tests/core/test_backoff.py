"""The one backoff (netplane/backoff.py): its delays, its cap, its jitter, its reset."""

from __future__ import annotations

import random

import pytest

from netplane.backoff import Backoff


class FixedRandom(random.Random):
    """random() always returns ``value``: the jitter is pinned."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def delays(b: Backoff, n: int) -> list[float]:
    return [round(b.next(), 6) for _ in range(n)]


def test_doubles_from_initial_to_the_cap_without_jitter():
    b = Backoff(initial=0.2, maximum=10.0, jitter=0.0)
    assert delays(b, 8) == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]


def test_reset_starts_again_from_initial():
    b = Backoff(initial=1.0, maximum=30.0, jitter=0.0)
    assert delays(b, 3) == [1.0, 2.0, 4.0]
    b.reset()
    assert delays(b, 2) == [1.0, 2.0]


def test_factor_other_than_two():
    assert delays(Backoff(initial=1.0, maximum=100.0, factor=3.0, jitter=0.0), 5) == [
        1.0, 3.0, 9.0, 27.0, 81.0,
    ]  # fmt: skip


@pytest.mark.parametrize(("draw", "stretch"), [(0.0, 1.0), (0.5, 1.25), (0.999, 1.4995)])
def test_jitter_stretches_each_delay_by_the_injected_draw(draw, stretch):
    b = Backoff(initial=0.5, maximum=30.0, jitter=0.5, rng=FixedRandom(draw))
    assert delays(b, 3) == [
        round(0.5 * stretch, 6),
        round(1.0 * stretch, 6),
        round(2.0 * stretch, 6),
    ]


def test_jitter_spreads_two_clients_that_fail_together():
    a = Backoff(rng=random.Random(1))
    b = Backoff(rng=random.Random(2))
    first_a, first_b = a.next(), b.next()
    assert first_a != first_b
    assert 0.5 <= first_a < 0.75 and 0.5 <= first_b < 0.75  # the default: 0.5 s, +0..50 %


def test_a_long_outage_stays_at_the_cap_and_never_overflows():
    b = Backoff(initial=0.5, maximum=30.0, jitter=0.0)
    for _ in range(5000):
        delay = b.next()
    assert delay == 30.0
