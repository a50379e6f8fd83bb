"""What ``status.loadBalancer`` each Ingress should carry (sans-IO).

Ingress controllers report where they serve an Ingress in its status, and
tools (external-dns, ``kubectl get ingress``, Argo CD health) read it.
netplane does what ingress-nginx does:

- the address is ``--publish-address`` (IPs become ``{"ip": ...}``, names
  ``{"hostname": ...}``), else the node's ExternalIPs, else its InternalIPs;
- every Ingress our IngressClass selects gets that address: the whole
  status with ``--publish-address``; beside the other nodes' entries with
  the node's address (a DaemonSet: see :class:`StatusPlanner`);
- an Ingress that was ours and no longer is (its class moved away) loses
  our address, once; Ingresses that were never ours are never touched;
- a write is planned only when the status differs from what the object
  carries, so the watch echoing our own write plans nothing; while a write
  is in flight the same write is not planned again for the same
  resourceVersion.

:class:`StatusPlanner` holds that memory and answers with plain data; the
HTTP calls live in :mod:`.status_writer`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from netplane.ingress.classes import ClassSelector
from netplane.model import Ingress, Node, ObjectKey


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """One ``status.loadBalancer``: the IPs and host names, each sorted."""

    ips: tuple[str, ...] = ()
    hostnames: tuple[str, ...] = ()

    @classmethod
    def of(cls, addresses: Iterable[str]) -> LoadBalancer:
        """Split addresses into IPs and host names (as ``--publish-address`` gives them)."""
        ips, names = set(), set()
        for a in addresses:
            try:
                ips.add(str(ipaddress.ip_address(a)))
            except ValueError:
                names.add(a.lower())
        return cls(tuple(sorted(ips)), tuple(sorted(names)))

    @classmethod
    def current(cls, ing: Ingress) -> LoadBalancer:
        """What the Ingress carries now."""
        return cls(tuple(sorted(set(ing.status_ips))), tuple(sorted(set(ing.status_hostnames))))

    def __or__(self, other: LoadBalancer) -> LoadBalancer:
        return LoadBalancer(
            tuple(sorted({*self.ips, *other.ips})),
            tuple(sorted({*self.hostnames, *other.hostnames})),
        )

    def __sub__(self, other: LoadBalancer) -> LoadBalancer:
        return LoadBalancer(
            tuple(ip for ip in self.ips if ip not in other.ips),
            tuple(h for h in self.hostnames if h not in other.hostnames),
        )

    def __bool__(self) -> bool:
        return bool(self.ips or self.hostnames)

    def __str__(self) -> str:
        return ", ".join((*self.ips, *self.hostnames)) or "(none)"

    def merge_patch(self, resource_version: str = "") -> dict[str, Any]:
        """The JSON merge patch that sets the status to this (``null`` clears it).

        With ``resource_version`` the API server applies it only to that
        version (409 Conflict otherwise), so a stale view never overwrites.
        """
        entries = [{"ip": ip} for ip in self.ips] + [{"hostname": h} for h in self.hostnames]
        patch: dict[str, Any] = {"status": {"loadBalancer": {"ingress": entries or None}}}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        return patch


def node_addresses(node: Node | None) -> tuple[str, ...]:
    """The node's ExternalIPs, else its InternalIPs (ingress-nginx's default)."""
    if node is None:
        return ()
    for kind in ("ExternalIP", "InternalIP"):
        found = tuple(a.address for a in node.addresses if a.type == kind)
        if found:
            return found
    return ()


def published(publish_addresses: Sequence[str], node: Node | None) -> LoadBalancer:
    """The address to report: the configured one, else the node's."""
    return LoadBalancer.of(publish_addresses or node_addresses(node))


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """Write ``status`` to the Ingress ``key``, planned from ``resource_version``.

    ``release``: the write takes our address out (the Ingress is no longer
    ours, or we are leaving); once it is done the Ingress is forgotten.
    """

    key: ObjectKey
    status: LoadBalancer
    resource_version: str
    release: bool = False


class StatusPlanner:
    """Decides which Ingresses need a status write; remembers which ones are ours.

    ``shared=False`` (``--publish-address``): the address is the whole status;
    every replica is told the same one, so they agree. ``shared=True`` (the
    node's address, one netplane per node): each node keeps its own entries
    in the list beside the other nodes', and takes them out when it stops
    serving the Ingress or shuts down; an address it published before and no
    longer has (the node's IP changed) is taken out too.
    """

    def __init__(self, *, shared: bool = False) -> None:
        self.shared = shared
        self.claimed: set[ObjectKey] = set()  # selected by us since start-up
        self._address = LoadBalancer()
        self._retired = LoadBalancer()  # published by us earlier, not any more
        self._in_flight: dict[ObjectKey, tuple[str, LoadBalancer]] = {}

    def _note(self, address: LoadBalancer) -> None:
        if address != self._address:
            if self._address:
                self._retired = (self._retired | self._address) - address
            self._address = address

    def _want(self, current: LoadBalancer, mine: bool) -> LoadBalancer:
        if not self.shared:
            return self._address if mine else LoadBalancer()
        others = current - self._retired - self._address
        return others | self._address if mine else others

    def plan(
        self, ing: Ingress, selector: ClassSelector, address: LoadBalancer
    ) -> StatusUpdate | None:
        """The write this Ingress needs now, or None."""
        self._note(address)
        key = ing.key
        if selector.selects(ing):
            self.claimed.add(key)
            if not address:  # nothing known to publish yet (no node, no --publish-address)
                return None
            return self._update(ing, mine=True)
        if key in self.claimed:
            return self._update(ing, mine=False)
        return None

    def plan_all(
        self, ingresses: Iterable[Ingress], selector: ClassSelector, address: LoadBalancer
    ) -> list[StatusUpdate]:
        updates = (self.plan(i, selector, address) for i in ingresses)
        return sorted((u for u in updates if u is not None), key=lambda u: u.key)

    def plan_leave(self, ingresses: Iterable[Ingress]) -> list[StatusUpdate]:
        """At shutdown, shared mode only: take our address out of every Ingress of ours."""
        if not self.shared:
            return []
        updates = (self._update(i, mine=False) for i in ingresses if i.key in self.claimed)
        return sorted((u for u in updates if u is not None), key=lambda u: u.key)

    def _update(self, ing: Ingress, *, mine: bool) -> StatusUpdate | None:
        key, rv = ing.key, ing.meta.resource_version
        current = LoadBalancer.current(ing)
        want = self._want(current, mine)
        if current == want:
            self._in_flight.pop(key, None)
            if not mine:
                self.claimed.discard(key)
            return None
        if self._in_flight.get(key) == (rv, want):
            return None  # written from this version already; its echo is on the way
        return StatusUpdate(key, want, rv, release=not mine)

    def written(self, update: StatusUpdate) -> None:
        """The API server took ``update``; a released Ingress stops being ours."""
        self._in_flight[update.key] = (update.resource_version, update.status)
        if update.release:
            self.claimed.discard(update.key)

    def gone(self, key: ObjectKey) -> None:
        """The Ingress was deleted: forget it."""
        self.claimed.discard(key)
        self._in_flight.pop(key, None)
