"""What the TCP relays (Protocol and splice) and the UDP relay share.

Address formatting for log lines, the ``SO_LINGER`` value that turns a
close into a reset, the idle-timer granularity, and the guarded endpoint
choice: a Route that raises must cost one connection (logged), never the
listener.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any

from netplane.addresses import hostport
from netplane.l4 import Route, Target

log = logging.getLogger("netplane.l4.tcp")

#: ``struct linger {on=1, seconds=0}``: close() then sends a RST, not a FIN
LINGER_RST = struct.pack("ii", 1, 0)
#: idle timers tick this many times per timeout (an idle peer goes after 1-1.25 timeouts)
IDLE_TICKS = 4


def fmt_addr(addr: tuple | Any) -> str:
    """``host:port`` or ``[v6]:port`` for a socket address; repr() for anything else."""
    if not addr or not isinstance(addr, tuple):
        return repr(addr)
    host, port = addr[0], addr[1]
    return hostport(str(host), port)


def first_target(
    resolve: Callable[[tuple, tuple], Route | None], sockname: tuple, peer: tuple
) -> tuple[Route | None, Target | None]:
    """The route of a new TCP connection and its first endpoint; (None, None) if resolving fails."""
    target = None
    try:
        route = resolve(sockname, peer)
        if route is not None:
            target = route.pick(peer[0])
    except Exception:
        log.exception("TCP %s: choosing an endpoint failed", fmt_addr(sockname))
        return None, None
    return route, target


def next_target(
    route: Route, peer: tuple, tried: Sequence[Target], sockname: tuple
) -> Target | None:
    """Another endpoint after failed connects to ``tried``; None when none is left."""
    try:
        return route.pick(peer[0], exclude=frozenset(tried))
    except Exception:
        log.exception("TCP %s: choosing an endpoint failed", fmt_addr(sockname))
        return None


def report_closed(route: Route, target: Target, sockname: tuple) -> None:
    """``route.closed(target)``, logged rather than raised if the route fails."""
    try:
        route.closed(target)
    except Exception:
        log.exception("TCP %s: route.closed failed", fmt_addr(sockname))
