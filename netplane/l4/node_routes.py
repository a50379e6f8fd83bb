"""Node mode's AnyIP routes, kept in line with the ServiceTable.

The service CIDRs, and every externalIP and LoadBalancer IP in the table,
get a ``local`` route (see :class:`netplane.addresses.LocalRoutes`) so that
the host accepts traffic for them before anything binds them. The L4 proxy
keeps them when it runs in the daemon's process; with ``--workers N`` the
owner process keeps them alone, so workers never race on netlink.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from netplane.service_table import ServiceKey, ServiceTable

log = logging.getLogger("netplane.l4.proxy")

_ROUTED_KINDS = ("ExternalIP", "LoadBalancer")


class NodeRoutes:
    """What should be routed locally, and the netlink calls that make it so."""

    def __init__(self, local_routes: Any, service_cidrs: Sequence[Any]) -> None:
        self.local_routes = local_routes
        self.service_cidrs = tuple(service_cidrs)
        self._extra_ips: dict[ServiceKey, frozenset[str]] = {}
        self._routed: set[Any] | None = None
        self._task: asyncio.Task | None = None
        self._stream: Any = None

    def note(self, table: ServiceTable, services: Iterable[ServiceKey]) -> None:
        """Take the externalIPs and LB IPs of ``services`` from the table."""
        for sk in services:
            entry = table.get(*sk)
            ips = frozenset(
                f.ip
                for p in (entry.ports if entry is not None else ())
                for f in p.frontends
                if f.ip is not None and f.kind in _ROUTED_KINDS
            )
            if ips:
                self._extra_ips[sk] = ips
            else:
                self._extra_ips.pop(sk, None)

    async def sync(self) -> None:
        """Program the routes when what is wanted changed; failures are logged, not raised."""
        desired = set(self.service_cidrs)
        for ips in self._extra_ips.values():
            desired |= {ipaddress.ip_network(ip) for ip in ips}
        if desired == self._routed:
            return
        try:
            await asyncio.to_thread(self.local_routes.sync, desired)
        except Exception as e:  # pyroute2's NetlinkError, or no netlink at all
            log.error(
                "cannot program the AnyIP routes (node mode needs root or CAP_NET_ADMIN): %s", e
            )
            return
        self._routed = desired

    async def clear(self) -> None:
        """Remove every route this process added."""
        try:
            await asyncio.to_thread(self.local_routes.clear)
        except Exception as e:
            log.error("cannot remove the AnyIP routes: %s", e)

    # -- following a dataplane on its own (the owner process of --workers N) --

    async def start(self, dataplane: Any) -> None:
        """Route the CIDRs now, then follow the dataplane's table until :meth:`close`."""
        self._stream = stream = dataplane.subscribe()
        await self.sync()
        if dataplane.ready:
            self.note(dataplane.table, (e.key for e in dataplane.table))
            await self.sync()

        async def follow() -> None:
            async for change in stream:
                self.note(dataplane.table, change.services)
                await self.sync()

        self._task = asyncio.create_task(follow(), name="node-routes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._stream is not None:
            self._stream.close()
        await self.clear()
