"""What ``status.loadBalancer`` each Ingress should carry (sans-IO).

Ingress controllers report where they serve an Ingress in its status, and
tools (external-dns, ``kubectl get ingress``, Argo CD health) read it.
netplane does what ingress-nginx does:

- the address is ``--publish-address`` (IPs become ``{"ip": ...}``, names
  ``{"hostname": ...}``), else the node's ExternalIPs, else its InternalIPs;
- every Ingress our IngressClass selects gets that address;
- an Ingress that was ours and no longer is (its class moved away) is
  cleared, once; Ingresses that were never ours are never touched;
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
    """Write ``status`` to the Ingress ``key``, planned from ``resource_version``."""

    key: ObjectKey
    status: LoadBalancer
    resource_version: str


class StatusPlanner:
    """Decides which Ingresses need a status write; remembers which ones are ours."""

    def __init__(self) -> None:
        self.claimed: set[ObjectKey] = set()  # selected by us since start-up
        self._in_flight: dict[ObjectKey, tuple[str, LoadBalancer]] = {}

    def plan(
        self, ing: Ingress, selector: ClassSelector, address: LoadBalancer
    ) -> StatusUpdate | None:
        """The write this Ingress needs now, or None."""
        key = ing.key
        if selector.selects(ing):
            self.claimed.add(key)
            if not address:  # nothing known to publish yet (no node, no --publish-address)
                return None
            want = address
        elif key in self.claimed:
            want = LoadBalancer()
        else:
            return None
        rv = ing.meta.resource_version
        if LoadBalancer.current(ing) == want:
            self._in_flight.pop(key, None)
            if not want:
                self.claimed.discard(key)
            return None
        if self._in_flight.get(key) == (rv, want):
            return None  # written from this version already; its echo is on the way
        return StatusUpdate(key, want, rv)

    def plan_all(
        self, ingresses: Iterable[Ingress], selector: ClassSelector, address: LoadBalancer
    ) -> list[StatusUpdate]:
        updates = (self.plan(i, selector, address) for i in ingresses)
        return sorted((u for u in updates if u is not None), key=lambda u: u.key)

    def written(self, update: StatusUpdate) -> None:
        """The API server took ``update``; a cleared Ingress stops being ours."""
        self._in_flight[update.key] = (update.resource_version, update.status)
        if not update.status:
            self.claimed.discard(update.key)

    def gone(self, key: ObjectKey) -> None:
        """The Ingress was deleted: forget it."""
        self.claimed.discard(key)
        self._in_flight.pop(key, None)
