"""Addresses: the one ``host:port`` formatter, and AnyIP for node mode.

:func:`hostport` and :func:`bracket_host` write an address the way URLs, Host
headers, log lines and ``/debug/state`` show it: an IPv6 address in brackets
(RFC 3986 section 3.2.2), so its colons cannot be read as the port's. Every
plane formats addresses through them.

AnyIP makes the service CIDRs (and externalIPs, LB IPs) local in node mode.
A ``local`` route on ``lo`` in the kernel's ``local`` table makes every
address of a prefix local to the host, so the proxy can bind any ClusterIP
without adding one address per service (the "AnyIP" technique). netplane
tags the routes it adds with its own route protocol number,
:data:`RTPROT_NETPLANE`, so it can find them again: ``sync()`` adds what is
missing and removes what it owns but no longer wants, which also repairs
what a crashed run left behind, and ``clear()`` removes them all on shutdown.

It never replaces a route it does not own: an externalIP that is already
local (the node's own address, say) keeps the kernel's route.

pyroute2 runs its own event loop, so the daemon calls these methods from a
worker thread (``asyncio.to_thread``), and each call opens and closes its own
netlink socket so that no pyroute2 object crosses threads. Route changes are
rare (a service CIDR, an externalIP), so that costs nothing that matters.
:func:`plan` is the pure part.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # The methods import pyroute2 when they run, so a process that changes no routes never loads it.
    from pyroute2 import IPRoute

log = logging.getLogger("netplane.addresses")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: The route protocol number on netplane's routes (``ip route show table local proto 77``).
RTPROT_NETPLANE = 77
LOCAL_TABLE = 255
SCOPE_HOST = 254


def bracket_host(host: str) -> str:
    """``host`` as it goes before ``:port`` or into a URL: ``[v6]`` for an IPv6 address.

    Any host with a colon is taken for IPv6 (a zone, ``fe80::1%eth0``, stays
    as it is); one already in brackets, a host name or an IPv4 address is
    returned unchanged.
    """
    return f"[{host}]" if ":" in host and host[:1] != "[" else host


def hostport(host: str, port: int) -> str:
    """``host:port``, or ``[v6]:port`` for an IPv6 address (see :func:`bracket_host`)."""
    return f"{bracket_host(host)}:{port}"


def peer_ip(peername: Any) -> str:
    """The client address of a socket's ``peername``, an IPv4-mapped IPv6 one as plain IPv4."""
    ip: str = peername[0] if peername else ""
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return ip


def plan(
    owned: set[IPNetwork], others: set[IPNetwork], desired: Iterable[IPNetwork]
) -> tuple[set[IPNetwork], set[IPNetwork]]:
    """(to add, to remove): ``owned`` are ours, ``others`` local routes we must not touch."""
    want = {n for n in desired if n not in others}
    return want - owned, owned - want


class LocalRoutes:
    """The AnyIP routes netplane owns on this host (or network namespace)."""

    def _local_routes(self, ipr: IPRoute) -> tuple[set[IPNetwork], set[IPNetwork]]:
        owned: set[IPNetwork] = set()
        others: set[IPNetwork] = set()
        for family in (2, 10):  # AF_INET, AF_INET6
            for r in ipr.route("dump", table=LOCAL_TABLE, family=family):
                dst = r.get_attr("RTA_DST")
                if dst is None:
                    continue
                net = ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)
                (owned if r["proto"] == RTPROT_NETPLANE else others).add(net)
        return owned, others - owned

    def sync(self, desired: Iterable[IPNetwork]) -> tuple[set[IPNetwork], set[IPNetwork]]:
        """Make the owned routes exactly ``desired`` (less what is already local)."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            owned, others = self._local_routes(ipr)
            add, remove = plan(owned, others, desired)
            for command, nets in (("replace", add), ("del", remove)):
                for net in sorted(nets, key=str):
                    ipr.route(
                        command,
                        dst=str(net),
                        type="local",
                        table=LOCAL_TABLE,
                        oif=lo,
                        proto=RTPROT_NETPLANE,
                        scope=SCOPE_HOST,
                        family=2 if net.version == 4 else 10,
                    )
                    log.info(
                        "%s local route %s on lo (AnyIP)",
                        "added" if nets is add else "removed",
                        net,
                    )
        return add, remove

    def clear(self) -> set[IPNetwork]:
        """Remove every route netplane owns."""
        _, removed = self.sync(())
        return removed
