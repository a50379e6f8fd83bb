"""Endpoint choice for one service port, by kube-proxy's rules (sans-IO).

A :class:`Picker` answers one question per new connection or UDP flow:
which endpoint of this service port should it go to? It reads only the
ServiceTable entry it is given and a clock that the caller injects; it does
no I/O, so every rule here is tested without sockets.

Strategy: all the filtering is done once per table version, in
:meth:`Picker.update`, into two candidate pools (cluster traffic and
external traffic, one shared pool when they come out equal). A pick then
only walks a precomputed tuple: O(1) amortised for round-robin, one pass
for least-connections.

The candidate rules follow kube-proxy's ``CategorizeEndpoints``
(pkg/proxy/topology.go):

- Readiness: the ready endpoints; when none is ready anywhere, those that
  are serving *and* terminating (so a rolling update that leaves only
  terminating pods keeps working). With publishNotReadyAddresses every
  endpoint counts as ready.
- Traffic policy: external traffic (NodePort, LoadBalancer IPs,
  externalIPs) under externalTrafficPolicy Local, and cluster traffic under
  internalTrafficPolicy Local, only go to endpoints on this node; when
  there are none the connection is refused (``pick`` returns None). The
  terminating fallback applies within the local set.
- Topology: under a Cluster policy, when this node has a zone and every
  ready endpoint carries zone hints, only the endpoints hinted for this
  zone; when no endpoint is hinted for it, all of them (kube-proxy ignores
  the hints then). Hints are never applied to the terminating fallback, as
  kube-proxy only looks at ready endpoints for them.

Session affinity (ClientIP) keeps a client on its endpoint while that
endpoint is still a candidate, the client picked within the timeout, and
no connect to it has failed since. The table is an OrderedDict in order of
last use, so the expired entries are always at its front: each pick pops a
few of them, and the size is capped by evicting the least recently used.
A failed connect does not search the table: each entry remembers the
failure sequence number at which it was made, and an entry made before its
target's last failure is dead.

Connection counts (for least-connections, and kept under either policy so
a policy change starts from the truth) live as long as a target has open
connections, even after it leaves the table, so a target that leaves and
comes back keeps its true count.
"""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from netplane.model import ObjectKey
from netplane.service_table import Backend, PortEntry, ServiceEntry

LB_POLICY_ANNOTATION = "netplane.io/lb-policy"
POLICIES = ("round-robin", "least-connections")

#: Affinity entries kept per service port at most; the least recently used
#: goes first. kube-proxy's iptables mode leaves this to xt_recent, whose
#: default list size is only 200 entries per endpoint.
MAX_AFFINITY_ENTRIES = 65536
#: Expired affinity entries popped per pick (more than the one a pick can
#: add, so the table shrinks back as clients go away).
_PRUNE_PER_PICK = 4


@dataclass(frozen=True, slots=True)
class Target:
    """Where a connection goes: one endpoint address and port."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """This node, as endpoint choice needs it; empty fields match nothing."""

    name: str = ""
    zone: str = ""

    @classmethod
    def of(cls, state: Any, name: str) -> NodeInfo:
        """``name`` (``--node-name``) with the zone of its Node object in ``state``, if any."""
        zone = ""
        if name:
            node = state.get(ObjectKey("Node", "", name))
            zone = getattr(node, "zone", "") or ""
        return cls(name, zone)


class _Pool:
    """One candidate list in a stable order, its membership and its cursor."""

    __slots__ = ("cursor", "members", "targets")

    def __init__(self, targets: tuple[Target, ...], cursor: int) -> None:
        self.targets = targets
        self.members = frozenset(targets)
        self.cursor = cursor


class _Sticky:
    """An affinity entry: the target, the last pick time, the failure seq at that pick."""

    __slots__ = ("last", "seq", "target")

    def __init__(self, target: Target, last: float, seq: int) -> None:
        self.target = target
        self.last = last
        self.seq = seq


def _targets(backends: Iterable[Backend]) -> tuple[Target, ...]:
    # Sorted, so the round-robin order does not depend on slice order and a
    # table update that only reorders slices changes nothing.
    return tuple(sorted({Target(b.address, b.port) for b in backends}, key=_order))


def _order(t: Target) -> tuple[str, int]:
    return (t.address, t.port)


# -- the candidate rules, as small named predicates ------------------------------
#
# Picker.update() builds its pools from these, and explain_endpoints() gives
# each endpoint's reason from the same ones, so the two cannot disagree.


def counts_as_ready(b: Backend, publish_not_ready: bool) -> bool:
    """Ready, or any endpoint of a Service with publishNotReadyAddresses."""
    return publish_not_ready or b.ready


def on_node(b: Backend, node_name: str) -> bool:
    """The endpoint runs on this node (an empty node name matches nothing)."""
    return bool(node_name) and b.node_name == node_name


def _serving_terminating(b: Backend) -> bool:
    return b.serving and b.terminating


serving_terminating = _serving_terminating  # the fallback's test, by its public name


def hinted_for_zone(ready: Sequence[Backend], zone: str) -> list[Backend] | None:
    """The ready endpoints hinted for ``zone`` when hints apply, else None.

    kube-proxy's topologyModeFromHints: only when this node has a zone, every
    ready endpoint carries hints, and some are for this zone.
    """
    if zone and all(b.hints_for_zones for b in ready):
        in_zone = [b for b in ready if zone in b.hints_for_zones]
        if in_zone:
            return in_zone
    return None


@dataclass(frozen=True, slots=True)
class Categories:
    """kube-proxy's CategorizeEndpoints for one service port on one node."""

    cluster: list[Backend]  # candidates under a Cluster traffic policy
    local: list[Backend]  # candidates under a Local traffic policy
    cluster_fallback: bool  # ``cluster`` is the serving-and-terminating fallback
    local_fallback: bool  # ``local`` is
    hinted: bool  # topology hints narrowed ``cluster`` to this node's zone


def categorize(backends: Sequence[Backend], publish_not_ready: bool, node: NodeInfo) -> Categories:
    """The two candidate sets of a service port (see the module docstring)."""
    node_name, zone = node.name, node.zone
    ready = backends if publish_not_ready else [b for b in backends if b.ready]
    hinted = None
    if ready:
        hinted = hinted_for_zone(ready, zone)
        cluster = hinted if hinted is not None else list(ready)
    else:
        cluster = [b for b in backends if _serving_terminating(b)]
    local = [b for b in ready if on_node(b, node_name)]
    local_fallback = not local
    if local_fallback:
        local = [b for b in backends if on_node(b, node_name) and _serving_terminating(b)]
    return Categories(cluster, local, not ready, local_fallback, hinted is not None)


class RelayCounts:
    """Bytes relayed for one service port, by direction; plain integer adds on the hot path.

    ``to_endpoint`` counts what was read from clients and sent on, ``to_client``
    what came back (TCP payload or UDP datagram bytes, never a PROXY header);
    ``flows_moved`` the UDP flows that changed endpoint because theirs left.
    /metrics reads them at scrape time.
    """

    __slots__ = ("flows_moved", "to_client", "to_endpoint")

    def __init__(self) -> None:
        self.to_endpoint = 0
        self.to_client = 0
        self.flows_moved = 0


class Picker:
    """The endpoint choice of one service port; see the module docstring."""

    def __init__(
        self,
        entry: ServiceEntry,
        port: PortEntry,
        node: NodeInfo,
        *,
        default_policy: str = "round-robin",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if default_policy not in POLICIES:
            raise ValueError(
                f"default_policy {default_policy!r} is not one of {', '.join(POLICIES)}"
            )
        self.node = node
        self.default_policy = default_policy
        self._clock = clock
        # Effective policy, and why the annotation was ignored (None when it was not).
        self.policy = default_policy
        self.policy_problem: str | None = None
        self._least = False
        # Every target of the port in the current table, ready or not.
        self._all: frozenset[Target] = frozenset()
        # Session affinity: client IP -> entry, least recently used first.
        self._affinity = False
        self._timeout = 0.0
        self._sticky: OrderedDict[str, _Sticky] = OrderedDict()
        # Failed connects: a sequence number, and the last one per target.
        self._seq = 0
        self._failed: dict[Target, int] = {}
        # Open connections per target; a target at zero has no entry.
        self._conns: dict[Target, int] = {}
        # For metrics: connections or flows opened, connects failed, and
        # picks that found no endpoint (the client was refused).
        self.opened_total = 0
        self.failed_total = 0
        self.refused_total = 0
        self.counts = RelayCounts()
        # The round-robin start differs per node and service, so that nodes
        # starting together do not all send their first connection to the
        # same endpoint.
        ns, name = entry.key
        start = zlib.crc32(f"{node.name}/{ns}/{name}/{port.name}".encode())
        # Candidate pools; the same object when both kinds of traffic agree.
        self._internal = _Pool((), start)
        self._external = self._internal
        self.update(entry, port)

    # -- table versions -----------------------------------------------------

    def update(self, entry: ServiceEntry, port: PortEntry) -> None:
        """Take a new table version; affinity and counts carry over for targets that remain."""
        svc = entry.service
        self._set_policy(entry)

        backends = port.backends
        cats = categorize(backends, svc.publish_not_ready_addresses, self.node)
        cluster_targets = _targets(cats.cluster)
        local_targets = _targets(cats.local)
        internal = local_targets if svc.internal_traffic_policy == "Local" else cluster_targets
        external = local_targets if svc.external_traffic_policy == "Local" else cluster_targets

        # The round-robin positions carry over, so a table version does not
        # send the next connection back to the first endpoint.
        old_internal, old_external = self._internal.cursor, self._external.cursor
        self._internal = _Pool(internal, old_internal)
        self._external = self._internal if external == internal else _Pool(external, old_external)

        self._all = frozenset(Target(b.address, b.port) for b in backends)
        if self._failed:
            self._failed = {t: s for t, s in self._failed.items() if t in self._all}

        # Entries pointing at targets that left stay until looked up or
        # expired: a lookup checks membership, so they never match meanwhile.
        self._affinity = svc.session_affinity == "ClientIP"
        self._timeout = float(svc.affinity_timeout)
        if not self._affinity:
            self._sticky.clear()

    def _set_policy(self, entry: ServiceEntry) -> None:
        value = entry.service.meta.annotations.get(LB_POLICY_ANNOTATION)
        if value is None or value in POLICIES:
            self.policy = value or self.default_policy
            self.policy_problem = None
        else:
            self.policy = self.default_policy
            self.policy_problem = (
                f"annotation {LB_POLICY_ANNOTATION}: {value!r} is not one of "
                f"{', '.join(POLICIES)}; using {self.default_policy}"
            )
        self._least = self.policy == "least-connections"

    # -- choosing -------------------------------------------------------------

    def pick(
        self, client_ip: str, *, external: bool, exclude: frozenset[Target] = frozenset()
    ) -> Target | None:
        """An endpoint for a new connection or flow from ``client_ip``, or None (refuse).

        ``exclude`` holds the targets this connection already tried.
        """
        pool = self._external if external else self._internal
        if not pool.targets:
            return None
        if not self._affinity:
            return self._choose(pool, exclude)

        now = self._clock()
        sticky = self._sticky
        deadline = now - self._timeout
        for _ in range(_PRUNE_PER_PICK):
            if not sticky:
                break
            first = next(iter(sticky))
            if sticky[first].last > deadline:
                break
            del sticky[first]

        s = sticky.get(client_ip)
        if s is not None:
            kept = s.target
            if (
                now - s.last < self._timeout
                and kept in pool.members
                and kept not in exclude
                and self._failed.get(kept, 0) <= s.seq
            ):
                s.last = now
                s.seq = self._seq
                sticky.move_to_end(client_ip)
                return kept
        t = self._choose(pool, exclude)
        if t is None:
            if s is not None:
                del sticky[client_ip]
        elif s is not None:
            s.target, s.last, s.seq = t, now, self._seq
            sticky.move_to_end(client_ip)
        else:
            sticky[client_ip] = _Sticky(t, now, self._seq)
            if len(sticky) > MAX_AFFINITY_ENTRIES:
                sticky.popitem(last=False)
        return t

    def _choose(self, pool: _Pool, exclude: frozenset[Target]) -> Target | None:
        targets = pool.targets
        n = len(targets)
        i = pool.cursor % n
        if not self._least:
            for _ in range(n):
                t = targets[i]
                i += 1
                if i == n:
                    i = 0
                if not exclude or t not in exclude:
                    pool.cursor = i
                    return t
            return None
        # Least connections: one pass from the cursor, so the first of the
        # least loaded after the last choice wins and ties go round-robin.
        conns = self._conns
        best: Target | None = None
        best_count = 0
        best_i = 0
        for _ in range(n):
            t = targets[i]
            if not exclude or t not in exclude:
                c = conns.get(t, 0)
                if best is None or c < best_count:
                    best, best_count, best_i = t, c, i
                    if c == 0:
                        break
            i += 1
            if i == n:
                i = 0
        if best is not None:
            pool.cursor = best_i + 1
        return best

    def usable(self, target: Target, *, external: bool) -> bool:
        """Whether ``target`` is in the current candidate set for this kind of traffic."""
        return target in (self._external if external else self._internal).members

    # -- reports from the relays ---------------------------------------------

    def opened(self, target: Target) -> None:
        """A connection or flow to ``target`` started."""
        self.opened_total += 1
        conns = self._conns
        conns[target] = conns.get(target, 0) + 1

    def closed(self, target: Target) -> None:
        """A connection or flow to ``target`` ended (an unknown target is ignored)."""
        conns = self._conns
        c = conns.get(target)
        if c is None:
            return
        if c > 1:
            conns[target] = c - 1
        else:
            del conns[target]

    def failed(self, target: Target) -> None:
        """A connect to ``target`` failed: affinity entries pointing at it are dropped."""
        self.failed_total += 1
        if not self._affinity:
            return
        self._seq += 1
        self._failed[target] = self._seq

    # -- introspection ----------------------------------------------------------

    def connections(self, target: Target) -> int:
        """Open connections to ``target`` as reported through opened/closed."""
        return self._conns.get(target, 0)

    def active(self) -> int:
        """Open connections or flows over every target."""
        return sum(self._conns.values())

    def candidates(self, *, external: bool) -> tuple[Target, ...]:
        """The current candidate list, in round-robin order."""
        return (self._external if external else self._internal).targets

    def affinity_entries(self) -> int:
        """Session affinity entries held, expired ones not yet pruned included."""
        return len(self._sticky)


# -- explaining ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointVerdict:
    """One endpoint of a service port: whether this kind of traffic may use it, and why."""

    backend: Backend
    used: bool
    reason: str


def explain_endpoints(
    entry: ServiceEntry, port: PortEntry, node: NodeInfo, *, external: bool
) -> list[EndpointVerdict]:
    """Each endpoint of ``port``, in or out of the candidates for this node and traffic kind.

    Membership comes from :func:`categorize`, which :meth:`Picker.update`
    builds its pools from; the reasons come from the same predicates.
    """
    svc = entry.service
    pna = svc.publish_not_ready_addresses
    cats = categorize(port.backends, pna, node)
    policy_name = "externalTrafficPolicy" if external else "internalTrafficPolicy"
    local = (svc.external_traffic_policy if external else svc.internal_traffic_policy) == "Local"
    chosen = {id(b) for b in (cats.local if local else cats.cluster)}
    fallback = cats.local_fallback if local else cats.cluster_fallback
    where = "on this node" if local else "in the cluster"
    out: list[EndpointVerdict] = []
    for b in port.backends:
        if id(b) in chosen:
            if fallback:
                why = f"serving and terminating: no endpoint {where} is ready"
            elif local:
                why = f"ready, on this node ({policy_name} Local)"
            elif cats.hinted:
                why = f"ready, hinted for this node's zone {node.zone}"
            elif not b.ready:
                why = "not ready, but the Service sets publishNotReadyAddresses"
            else:
                why = "ready"
            out.append(EndpointVerdict(b, True, why))
            continue
        if local and not on_node(b, node.name):
            theirs = b.node_name or "no node"
            mine = node.name or "unnamed (give --node-name)"
            why = f"on {theirs}, not this node ({mine}); {policy_name} Local"
        elif not counts_as_ready(b, pna):
            if serving_terminating(b):
                why = f"terminating: used only when no endpoint {where} is ready"
            elif b.terminating:
                why = "terminating and no longer serving"
            else:
                why = "not ready"
        elif cats.hinted:
            zones = ", ".join(b.hints_for_zones)
            why = f"hinted for zone {zones}, not this node's zone {node.zone}"
        else:  # pragma: no cover - categorize() leaves out nothing else
            why = "not a candidate"
        out.append(EndpointVerdict(b, False, why))
    return out
