"""netplane.l4: the user-space L4 service proxy (kube-proxy's job) on uvloop.

Layers, each its own module:

- :mod:`.picker` (sans-IO): per service port, which endpoint a new
  connection or UDP flow gets: readiness with the terminating fallback,
  traffic policies, topology hints, session affinity, round-robin or
  least-connections.
- :mod:`.proxy_protocol` (sans-IO): the PROXY protocol v2 header.
- :mod:`.flow_control`: pause one side's reading while the other's write
  buffer is above the high-water mark.
- :mod:`.tcp` and :mod:`.udp`: the relays, thin asyncio Protocols;
  :mod:`.splice`: the zero-copy TCP relay on Linux, with its pipes in
  :mod:`.pipes`. Both TCP relays see their proxy only through
  :class:`.relay_host.RelayHost`, and take its routing steps (first
  endpoint, connect retry); :mod:`.relay_shared` holds what all three
  relays share.
- :mod:`.routes` and :mod:`.proxy`: which frontend address goes to which
  service port, listeners that follow the ServiceTable, and draining.
- :mod:`.healthcheck`: kube-proxy's healthCheckNodePort servers, and the
  proxy's own health that they report.

The contract between the relays and the rest is :class:`Route` below: the
relays ask it for a target per new connection or flow, and report opens,
closes and failed connects; they never read the ServiceTable themselves, so
a table change swaps the routes and open connections stay where they are.
"""

from __future__ import annotations

from typing import Protocol

from netplane.l4.picker import RelayCounts, Target


class Route(Protocol):
    """What a listener needs from the service port behind a frontend address."""

    #: "TCP" or "UDP"
    protocol: str
    #: send a PROXY protocol v2 header to the endpoint first (TCP only)
    proxy_protocol: bool
    #: where the relays add the bytes they move (shared by a service port's routes)
    counts: RelayCounts

    def pick(self, client_ip: str, exclude: frozenset[Target] = frozenset()) -> Target | None:
        """An endpoint for a new connection or flow from ``client_ip``, or None (refuse)."""

    def usable(self, target: Target) -> bool:
        """Whether ``target`` may still take new traffic (UDP flows re-pick when not)."""

    def opened(self, target: Target) -> None:
        """A connection or flow to ``target`` started (least-connections counts these)."""

    def closed(self, target: Target) -> None:
        """A connection or flow to ``target`` ended."""

    def failed(self, target: Target) -> None:
        """Connecting to ``target`` was refused or timed out."""


__all__ = ["RelayCounts", "Route", "Target"]
