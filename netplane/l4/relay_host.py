"""What a TCP relay connection sees of its proxy, and the routing steps both TCP relays take.

There are two TCP relays, the Protocol relay of :mod:`.tcp` and the
zero-copy one of :mod:`.splice`, and one proxy that owns their listeners
and connections (:class:`.tcp.TcpProxy`). A relayed connection sees that
proxy only as a :class:`RelayHost`: its settings, its pool of splice
pipes, four counters, and ``add``/``remove`` for the set of open
connections that draining waits on. Nothing else of the proxy is theirs
to read or write, so neither relay module imports the other, and the
proxy can change its insides without touching them.

The steps of a connection's routing are written once here and taken by
both relays:

- :func:`first_target`: the listener's ``resolve`` finds the Route, the
  Route picks the first endpoint;
- :func:`refuse`: no route or no endpoint: counted, and the client reset;
- :func:`retry_target`: a connect that was refused or timed out is
  counted and reported (``route.failed``), and another endpoint is picked
  while fewer than ``connect_attempts`` were tried;
- :func:`report_closed`: ``route.closed`` once the connection is gone.

A Route that raises costs one connection (logged), never the listener.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from netplane.config import DEFAULTS
from netplane.l4.flow_control import HIGH_WATER
from netplane.l4.relay_shared import fmt_addr

if TYPE_CHECKING:
    from netplane.l4 import Route, Target
    from netplane.l4.pipes import PipePool

log = logging.getLogger("netplane.l4.tcp")

#: ``resolve(sockname, peername) -> Route | None``: the route of a new connection
Resolver = Callable[[tuple, tuple], "Route | None"]


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """Timeouts and buffer bounds of the TCP relay."""

    #: seconds for one connect attempt to an endpoint
    connect_timeout: float = DEFAULTS.connect_timeout
    #: endpoints tried per client connection before it is reset
    connect_attempts: int = 3
    #: seconds without a byte either way before both sides are reset
    idle_timeout: float = DEFAULTS.tcp_idle_seconds
    #: write-buffer high-water mark per socket (the low-water mark is a quarter)
    high_water: int = HIGH_WATER
    #: client bytes kept while the upstream connection is being set up
    max_buffered: int = 262144
    #: relay with os.splice where the platform can (Linux); False: always the Protocol relay
    splice: bool = DEFAULTS.tcp_relay == "splice"
    #: bytes a splice pipe may grow to in a direction that fills it (where the pipe limits allow)
    pipe_size: int = 1 << 20

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("TcpSettings: timeouts must be positive")
        if self.connect_attempts < 1:
            raise ValueError("TcpSettings: connect_attempts must be at least 1")
        if self.high_water < 1 or self.max_buffered < 1 or self.pipe_size < 1:
            raise ValueError("TcpSettings: high_water, max_buffered and pipe_size must be positive")


class RelayConnection(Protocol):
    """One relayed connection, as its host holds it (to drain or reset it)."""

    def abort(self) -> None:
        """Reset both sides now."""

    def buffered(self) -> int:
        """Bytes the relay holds for this connection now."""


class RelayHost(Protocol):
    """The proxy as a relayed connection sees it; :class:`.tcp.TcpProxy` is the one there is."""

    #: the relay's timeouts and bounds
    settings: TcpSettings
    #: empty splice pipes for the next connection (the splice relay's)
    pipes: PipePool
    #: connections accepted
    accepted: int
    #: connections reset because there was no route or no endpoint
    refused: int
    #: connect attempts that were refused or timed out
    connect_failures: int
    #: connections reset after every attempt failed
    unreachable: int

    def add(self, conn: RelayConnection) -> None:
        """``conn`` is open (counted as accepted); draining waits for it."""

    def remove(self, conn: RelayConnection) -> None:
        """``conn`` is gone: both of its sockets are closed."""


def first_target(
    resolve: Resolver, sockname: tuple, peer: tuple
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


def refuse(host: RelayHost, no_route: bool, sockname: tuple, peer: tuple) -> None:
    """Count a connection that has no route (``no_route``) or no endpoint; the caller resets it."""
    host.refused += 1
    log.debug(
        "TCP %s from %s: no %s, resetting",
        fmt_addr(sockname),
        fmt_addr(peer),
        "route" if no_route else "endpoint",
    )


def retry_target(
    host: RelayHost,
    route: Route,
    failed: Target,
    tried: list[Target],
    peer: tuple,
    sockname: tuple,
    reason: str,
) -> Target | None:
    """The step after a refused or timed-out connect to ``failed``: the endpoint to try next.

    Counts the failure, reports it with ``route.failed`` and adds ``failed``
    to ``tried``. Returns another endpoint while fewer than
    ``connect_attempts`` were tried and the route has one it did not try;
    else None, counted as unreachable: the caller resets the client.
    """
    host.connect_failures += 1
    log.debug(
        "TCP %s: connect to %s failed: %s",
        fmt_addr(sockname),
        fmt_addr((failed.address, failed.port)),
        reason,
    )
    route.failed(failed)
    tried.append(failed)
    target = None
    if len(tried) < host.settings.connect_attempts:
        try:
            target = route.pick(peer[0], exclude=frozenset(tried))
        except Exception:
            log.exception("TCP %s: choosing an endpoint failed", fmt_addr(sockname))
    if target is None:
        host.unreachable += 1
        log.debug(
            "TCP %s from %s: no endpoint answered after %d attempts, resetting",
            fmt_addr(sockname),
            fmt_addr(peer),
            len(tried),
        )
    return target


def report_closed(route: Route, target: Target, sockname: tuple) -> None:
    """``route.closed(target)``, logged rather than raised if the route fails."""
    try:
        route.closed(target)
    except Exception:
        log.exception("TCP %s: route.closed failed", fmt_addr(sockname))
