"""One backoff for every retry loop: the API reflector, a source's restart, a worker's respawn.

Sans-IO: :meth:`Backoff.next` returns how long to wait and the caller
sleeps; nothing here knows a clock or a loop. The n-th delay after a reset
is ``initial * factor**n``, capped at ``maximum``, then stretched by a
random factor in ``[1, 1 + jitter)`` so that many clients failing together
(every node's netplane when the API server restarts) do not retry in step.
The random source is injectable, so tests can pin the jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``initial * factor**n``, capped, times 1..1+jitter."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    _n: int = 0

    def next(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        # The exponent stops growing once the cap is reached: no float overflow
        # however long the failures last.
        base = self.initial * self.factor**self._n
        if base >= self.maximum:
            base = self.maximum
        else:
            self._n += 1
        return base * (1.0 + self.jitter * self.rng.random()) if self.jitter else base

    def reset(self) -> None:
        """Back to ``initial``: the last attempt succeeded."""
        self._n = 0
