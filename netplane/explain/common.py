"""Small pieces every kind of explanation shares: endpoints as data, nearest candidates."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from netplane.addresses import hostport
from netplane.service_table import Backend

#: how many nearest candidates a "matches nothing" answer offers
NEAREST = 5
#: above this many candidates, only those sharing a prefix with the word are compared
_SCAN_ALL = 2000


def endpoint(b: Backend, *, used: bool | None = None, why: str = "") -> dict[str, Any]:
    """One endpoint of a service port with its conditions and topology."""
    out: dict[str, Any] = {
        "address": hostport(b.address, b.port),
        "ready": b.ready,
        "serving": b.serving,
        "terminating": b.terminating,
        "node": b.node_name or None,
        "zone": b.zone or None,
    }
    if b.hints_for_zones:
        out["hints"] = list(b.hints_for_zones)
    if used is not None:
        out["used"] = used
        out["why"] = why
    return out


def conditions(e: dict[str, Any]) -> str:
    """``ready``, ``not ready``, ``terminating (serving)`` ...: an endpoint's conditions in words."""
    if e["terminating"]:
        return "terminating, serving" if e["serving"] else "terminating"
    return "ready" if e["ready"] else "not ready"


def nearest(word: str, candidates: Iterable[str], n: int = NEAREST) -> list[str]:
    """The candidates closest to ``word`` (difflib), best first; cheap on large sets.

    With many candidates, those sharing the word's first character are compared
    first, then the rest if that found none.
    """
    pool = list(dict.fromkeys(c for c in candidates if c))
    if len(pool) > _SCAN_ALL and word:
        first = [c for c in pool if c[:1] == word[:1]]
        got = difflib.get_close_matches(word, first, n=n, cutoff=0.6)
        if got:
            return got
    return difflib.get_close_matches(word, pool, n=n, cutoff=0.6)
