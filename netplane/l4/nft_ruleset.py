"""The kernel datapath's ruleset, computed from the ServiceTable (sans-IO).

Tables shaped like kube-proxy's nftables mode (KEP-3866, kubernetes
``pkg/proxy/nftables``). The Services are spread by name over 16 tables,
``inet netplane-0`` to ``netplane-15`` (:func:`shard_of`), each a whole
copy of the layout below for its share: nft reads its cache of every table
a transaction names, and only those, so a change costs the reading of one
sixteenth of the rules (at 10k Services with 10 endpoints each: 11 ms
instead of 86 for one changed EndpointSlice). The tables' nat chains hook
at the same priority; the first that DNATs a connection decides it, and
the others are not consulted for it (a frontend is in one table only).
Each table:

- Verdict maps from (daddr, protocol, dport) to a per-service chain:
  ``service-ips4``/``service-ips6`` for ClusterIPs, externalIPs and
  load-balancer IPs, ``service-nodeports4``/``6`` for NodePorts (looked up
  last, for node addresses only). Base chains hook prerouting and output
  (DNAT) and postrouting (masquerade) and jump to one dispatch chain.
- Per service port and address family, a ``svc`` chain (cluster traffic)
  and an ``ext`` chain (NodePort, externalIP and LB traffic) pick an
  endpoint chain with ``numgen random mod N``; an ``ep`` chain DNATs to one
  endpoint. ClientIP affinity: a dynamic set per endpoint with the
  affinity timeout, consulted before the random choice and refreshed by
  the endpoint chain.
- Endpoint choice is the user-space proxy's own: the candidate lists come
  from :class:`netplane.l4.picker.Picker` (readiness, the terminating
  fallback, traffic policies, topology hints), so the two datapaths cannot
  drift apart.
- Masquerade only where needed: hairpin (an endpoint reaching itself
  through its service), external traffic under ``externalTrafficPolicy:
  Cluster`` (the reply must come back through this node), and connections
  the node itself opens from a service address (AnyIP makes the kernel pick
  the ClusterIP as the source, which other nodes route to themselves).
- A frontend with no usable endpoint is an element of ``no-endpoint-*``
  maps that filter chains consult for new connections: TCP reset, ICMP port
  unreachable for the rest, as kube-proxy rejects.

Programming is incremental: :class:`Transaction` turns the old and new
:class:`ServicePlan` of each changed service into the commands that change
only their chains, sets and map elements, ordered so that ``nft -f -``
applies them as one atomic transaction. :func:`full_script` rewrites the
whole table in place (adopting one left by an earlier run without flushing
it first: the old rules serve until the transaction commits).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from netplane.addresses import IPNetwork, hostport
from netplane.l4.datapath import KERNEL, choose
from netplane.l4.picker import NodeInfo, Picker, Target
from netplane.l4.routes import WILDCARDS
from netplane.service_table import Frontend, PortEntry, ServiceEntry, ServiceKey

FAMILY = "inet"
TABLE = "netplane"
#: The packet mark bit that asks postrouting to masquerade (kube-proxy's too).
MASQ_BIT = 0x4000

# Base objects: maps and sets with their definitions.
_MAPS = {
    "service-ips4": "type ipv4_addr . inet_proto . inet_service : verdict",
    "service-ips6": "type ipv6_addr . inet_proto . inet_service : verdict",
    "service-nodeports4": "type inet_proto . inet_service : verdict",
    "service-nodeports6": "type inet_proto . inet_service : verdict",
    "no-endpoint-ips4": "type ipv4_addr . inet_proto . inet_service : verdict",
    "no-endpoint-ips6": "type ipv6_addr . inet_proto . inet_service : verdict",
    "no-endpoint-nodeports4": "type inet_proto . inet_service : verdict",
    "no-endpoint-nodeports6": "type inet_proto . inet_service : verdict",
}
_SETS = {
    "service-cidrs4": "type ipv4_addr; flags interval",
    "service-cidrs6": "type ipv6_addr; flags interval",
    "nodeport-ips4": "type ipv4_addr",
    "nodeport-ips6": "type ipv6_addr",
}
_HOOKS = {
    "nat-prerouting": "type nat hook prerouting priority dstnat; policy accept",
    "nat-output": "type nat hook output priority -100; policy accept",
    "nat-postrouting": "type nat hook postrouting priority srcnat; policy accept",
    "filter-input": "type filter hook input priority -110; policy accept",
    "filter-forward": "type filter hook forward priority -110; policy accept",
    "filter-output": "type filter hook output priority -110; policy accept",
}
_PROTO = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


@dataclass(frozen=True, slots=True)
class Settings:
    """What the ruleset needs from the config: this node, NodePort addresses, service CIDRs."""

    node: NodeInfo = field(default_factory=NodeInfo)
    nodeport_addresses: tuple[str, ...] = WILDCARDS
    service_cidrs: tuple[IPNetwork, ...] = ()
    mode: str = "nftables"
    default_policy: str = "round-robin"


@dataclass(frozen=True, slots=True)
class PortState:
    """One service port as the kernel datapath sees it (for /debug/state and /metrics)."""

    namespace: str
    name: str
    port: str  # the port's name, else its number
    protocol: str
    datapath: str
    reason: str
    endpoints: int  # candidates for cluster traffic
    external_endpoints: int  # candidates for NodePort, externalIP and LB traffic


@dataclass(frozen=True, slots=True)
class UdpFlows:
    """A kernel-served UDP port's frontends and endpoints, to clear stale conntrack entries."""

    frontends: tuple[tuple[str | None, int], ...]  # (ip, port); ip None: a NodePort
    targets: frozenset[Target]


@dataclass(frozen=True)
class ServicePlan:
    """Everything one Service puts into the table; equal plans need no command."""

    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sets: Mapping[str, str] = field(default_factory=dict)
    elements: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (map, key) -> verdict
    ports: tuple[PortState, ...] = ()
    udp: Mapping[str, UdpFlows] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


EMPTY = ServicePlan()


# -- names ---------------------------------------------------------------------------


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:5]).decode()


def _ident(text: str) -> str:
    """``text`` as an nft identifier tail: letters, digits and ``/-_.`` only."""
    return "".join(c if c.isalnum() or c in "/-_." else "." for c in text)


def _port_id(key: ServiceKey, port: PortEntry, fam: int) -> str:
    ns, name = key
    label = port.name or f"p{port.port}"
    tail = f"{ns}/{name}/{port.protocol.lower()}/{label}"
    return f"{_hash(f'{tail}/{fam}')}-{_ident(tail)}"


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _ip_kw(fam: int) -> str:
    return "ip6" if fam == 6 else "ip"


# -- the base of the table -------------------------------------------------------------


def base_chains(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The rules of the fixed chains (hooks, dispatch, masquerade, reject)."""
    svc_lookup = (
        "ip daddr . meta l4proto . th dport vmap @service-ips4",
        "ip6 daddr . meta l4proto . th dport vmap @service-ips6",
    )
    noep_lookup = (
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-ips4",
        "ip6 daddr . meta l4proto . th dport vmap @no-endpoint-ips6",
    )
    addrs = settings.nodeport_addresses
    nodeports: list[str] = []
    noep_nodeports: list[str] = []
    for fam, any_addr, loopback in ((4, "0.0.0.0", "127.0.0.0/8"), (6, "::", "::1")):
        ip = _ip_kw(fam)
        if any_addr in addrs:
            # Every local address but loopback and the service CIDRs (which
            # AnyIP makes local too): kube-proxy's nodeport-addresses default.
            match = (
                f"fib daddr type local {ip} daddr != {loopback} {ip} daddr != @service-cidrs{fam}"
            )
        elif any(_family(a) == fam and not _loopback(a) for a in addrs):
            match = f"{ip} daddr @nodeport-ips{fam}"
        else:
            continue
        nodeports.append(f"{match} meta l4proto . th dport vmap @service-nodeports{fam}")
        noep_nodeports.append(f"{match} meta l4proto . th dport vmap @no-endpoint-nodeports{fam}")
    # Only a TCP SYN starts a DNAT'ed connection. Conntrack also meets proxied
    # connections mid-stream (the first packet it sees after this table's
    # hooks appear); those stay with their socket rather than being sent,
    # half-way through, to an endpoint that would reset them.
    syn_only = "tcp flags & (syn | ack) != syn return"
    return {
        "nat-prerouting": ("jump services",),
        "nat-output": ("jump services",),
        "nat-postrouting": ("jump masquerading",),
        "filter-input": ("ct state new jump endpoints-check",),
        "filter-forward": ("ct state new jump endpoints-check",),
        "filter-output": ("ct state new jump endpoints-check",),
        "services": (syn_only, *svc_lookup, *nodeports),
        "endpoints-check": (syn_only, *noep_lookup, *noep_nodeports),
        "mark-for-masquerade": (f"meta mark set meta mark | {MASQ_BIT:#x}",),
        "masquerading": (
            f"meta mark & {MASQ_BIT:#x} == 0 return",
            f"meta mark set meta mark ^ {MASQ_BIT:#x}",
            "masquerade fully-random",
        ),
        "reject-chain": ("meta l4proto tcp reject with tcp reset", "reject"),
    }


def base_set_elements(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Elements of the fixed sets: service CIDRs and the NodePort addresses."""
    out: dict[str, list[str]] = {name: [] for name in _SETS}
    for cidr in settings.service_cidrs:
        out[f"service-cidrs{cidr.version}"].append(str(cidr))
    for a in settings.nodeport_addresses:
        if a not in WILDCARDS and not _loopback(a):
            out[f"nodeport-ips{_family(a)}"].append(a)
    return {k: tuple(v) for k, v in out.items()}


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


# -- one Service -----------------------------------------------------------------------


def plan_service(entry: ServiceEntry | None, settings: Settings) -> ServicePlan:
    """The chains, sets and map elements of one Service (EMPTY when it is gone)."""
    if entry is None:
        return EMPTY
    chains: dict[str, tuple[str, ...]] = {}
    sets: dict[str, str] = {}
    elements: dict[tuple[str, str], str] = {}
    ports: list[PortState] = []
    udp: dict[str, UdpFlows] = {}
    problems: list[str] = []
    svc = entry.service
    key = entry.key
    for port in entry.ports:
        datapath, reason = choose(
            entry, port, settings.mode, default_policy=settings.default_policy
        )
        label = port.name or str(port.port)
        picker: Picker | None = None
        internal: tuple[Target, ...] = ()
        external: tuple[Target, ...] = ()
        if datapath == KERNEL:
            picker = Picker(entry, port, settings.node, default_policy=settings.default_policy)
            internal = picker.candidates(external=False)
            external = picker.candidates(external=True)
        ports.append(
            PortState(key[0], key[1], label, port.protocol, datapath, reason,
                      len(internal), len(external))
        )  # fmt: skip
        if datapath != KERNEL:
            continue
        by_family: dict[int, list[Frontend]] = {}
        for fe in port.frontends:
            if fe.ip is None:  # a NodePort: on each family the service has
                for fam in {_family(ip) for ip in svc.cluster_ips} or {4}:
                    by_family.setdefault(fam, []).append(fe)
            else:
                by_family.setdefault(_family(fe.ip), []).append(fe)
        for fam, frontends in sorted(by_family.items()):
            _plan_port(
                chains, sets, elements, key, entry, port, fam, frontends,
                [t for t in internal if _family(t.address) == fam],
                [t for t in external if _family(t.address) == fam],
            )  # fmt: skip
        if port.protocol == "UDP":
            udp[f"{label}/{port.port}"] = UdpFlows(
                tuple((fe.ip, fe.port) for fe in port.frontends),
                frozenset(internal) | frozenset(external),
            )
    return ServicePlan(chains, sets, elements, tuple(ports), udp, tuple(problems))


def _plan_port(
    chains: dict[str, tuple[str, ...]],
    sets: dict[str, str],
    elements: dict[tuple[str, str], str],
    key: ServiceKey,
    entry: ServiceEntry,
    port: PortEntry,
    fam: int,
    frontends: Sequence[Frontend],
    internal: Sequence[Target],
    external: Sequence[Target],
) -> None:
    svc = entry.service
    pid = _port_id(key, port, fam)
    ip = _ip_kw(fam)
    proto = _PROTO[port.protocol]
    affinity = svc.session_affinity == "ClientIP"
    timeout = int(svc.affinity_timeout)
    has_external = any(fe.ip is None or fe.kind != "ClusterIP" for fe in frontends)

    def dnat(t: Target) -> str:
        return f"meta l4proto {proto} dnat {ip} to {hostport(t.address, t.port)}"

    # Affinity needs a chain per endpoint (its set is refreshed there). Without
    # it the service chain DNATs itself: one chain per service port instead of
    # one per endpoint too, which keeps nft's cache, and so every transaction,
    # three times smaller at 10k services.
    ep_chain: dict[Target, str] = {}
    aff_set: dict[Target, str] = {}
    if affinity:
        used = set(internal) | (set(external) if has_external else set())
        for t in sorted(used, key=lambda t: (t.address, t.port)):
            tail = f"{_ident(t.address)}/{t.port}"
            name = ep_chain[t] = f"ep{fam}-{pid}__{tail}"
            aff = aff_set[t] = f"aff{fam}-{_hash(f'{pid}/{tail}/{timeout}')}-{tail}"
            sets[aff] = f"type ipv{fam}_addr; flags dynamic,timeout; timeout {timeout}s"
            chains[name] = (
                f"{ip} saddr {t.address} jump mark-for-masquerade",  # hairpin
                f"update @{aff} {{ {ip} saddr }}",
                dnat(t),
            )

    def dispatch(targets: Sequence[Target]) -> list[str]:
        """Affinity first, then a uniform random choice as a cascade of plain rules.

        Rule i matches with probability 1/(N-i) of what reaches it, so each of
        N endpoints gets 1/N (iptables' statistic cascade). A ``numgen ...
        vmap { ... }`` would do it in one rule, but each such anonymous map is
        a set in the kernel, and loading thousands of them takes quadratic time.
        """
        if affinity:
            rules = [f"{ip} saddr @{aff_set[t]} goto {ep_chain[t]}" for t in targets]
            act = [f"goto {ep_chain[t]}" for t in targets]
        else:
            # Hairpin: an endpoint reaching its own service is masqueraded (any
            # endpoint of it, not only the one chosen: a rule cannot test both).
            rules = [f"{ip} saddr {t.address} jump mark-for-masquerade" for t in targets]
            act = [dnat(t) for t in targets]
        n = len(targets)
        for i, a in enumerate(act):
            rules.append(a if i == n - 1 else f"numgen random mod {n - i} 0 {a}")
        return rules

    svc_chain, ext_chain = f"svc{fam}-{pid}", f"ext{fam}-{pid}"
    if internal:
        # The node's own connections from a service address (AnyIP) are masqueraded.
        chains[svc_chain] = (
            f"{ip} saddr @service-cidrs{fam} jump mark-for-masquerade",
            *dispatch(internal),
        )
    if external and has_external:
        local = svc.external_traffic_policy == "Local"
        masq = (
            ("fib saddr type local jump mark-for-masquerade",)  # keep the client's address
            if local
            else ("jump mark-for-masquerade",)
        )
        rest = (
            (f"goto {svc_chain}",)
            if list(external) == list(internal)
            else tuple(dispatch(external))
        )
        chains[ext_chain] = (*masq, *rest)

    for fe in frontends:
        if fe.ip is None:
            k = f"{proto} . {fe.port}"
            target, noep = f"service-nodeports{fam}", f"no-endpoint-nodeports{fam}"
            chain = ext_chain if external else None
        else:
            k = f"{fe.ip} . {proto} . {fe.port}"
            target, noep = f"service-ips{fam}", f"no-endpoint-ips{fam}"
            if fe.kind == "ClusterIP":
                chain = svc_chain if internal else None
            else:
                chain = ext_chain if external else None
        if chain is None:
            elements[(noep, k)] = "goto reject-chain"
        else:
            elements[(target, k)] = f"goto {chain}"


# -- scripts -------------------------------------------------------------------------


@dataclass
class Transaction:
    """Commands for one ``nft -f -`` run, collected in the order that makes them valid.

    Definitions first, then flushes of the chains being rewritten or
    removed, then map elements (deleted before added, so a key moving
    between maps or verdicts works), then the new rules, and last the
    chains and sets nothing refers to any more.
    """

    table: str = TABLE
    defines: list[str] = field(default_factory=list)
    flushes: list[str] = field(default_factory=list)
    element_deletes: list[str] = field(default_factory=list)
    element_adds: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.defines or self.flushes or self.element_deletes or self.element_adds
            or self.rules or self.deletes
        )  # fmt: skip

    def script(self) -> str:
        parts = (
            self.defines, self.flushes, self.element_deletes, self.element_adds,
            self.rules, self.deletes,
        )  # fmt: skip
        return "".join(line + "\n" for part in parts for line in part)

    def count(self) -> int:
        """Commands in the transaction."""
        return sum(
            len(p)
            for p in (self.defines, self.flushes, self.element_deletes,
                      self.element_adds, self.rules, self.deletes)
        )  # fmt: skip

    def change(
        self,
        old: ServicePlan,
        new: ServicePlan,
        *,
        skip_elements: Iterable[tuple[str, str]] = (),
        old_skipped: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Add the commands that turn ``old`` into ``new``.

        ``skip_elements`` are keys of ``new`` another service holds (not
        added); ``old_skipped`` are keys of ``old`` that were never added.
        """
        skip = set(skip_elements)
        never = set(old_skipped)
        for name, definition in new.sets.items():
            if old.sets.get(name) != definition:
                self.defines.append(f"add set {FAMILY} {self.table} {name} {{ {definition}; }}")
        for name, rules in new.chains.items():
            before = old.chains.get(name)
            if before == rules:
                continue
            if before is None:
                self.defines.append(f"add chain {FAMILY} {self.table} {name}")
            else:
                self.flushes.append(f"flush chain {FAMILY} {self.table} {name}")
            self.rules.extend(f"add rule {FAMILY} {self.table} {name} {r}" for r in rules)
        for name in old.chains.keys() - new.chains.keys():
            self.flushes.append(f"flush chain {FAMILY} {self.table} {name}")
            self.deletes.append(f"delete chain {FAMILY} {self.table} {name}")
        for name in old.sets.keys() - new.sets.keys():
            self.deletes.append(f"delete set {FAMILY} {self.table} {name}")
        for (m, k), verdict in old.elements.items():
            if (m, k) in never:
                continue
            if new.elements.get((m, k)) != verdict or (m, k) in skip:
                self.element_deletes.append(f"delete element {FAMILY} {self.table} {m} {{ {k} }}")
        for (m, k), verdict in new.elements.items():
            if (m, k) in skip:
                continue
            if old.elements.get((m, k)) != verdict or (m, k) in never:
                self.element_adds.append(
                    f"add element {FAMILY} {self.table} {m} {{ {k} : {verdict} }}"
                )


def full_script(
    settings: Settings,
    plans: Iterable[ServicePlan],
    *,
    existing_chains: Iterable[str] = (),
    existing_sets: Iterable[str] = (),
    skip_elements: Iterable[tuple[str, str]] = (),
    table: str = TABLE,
) -> Transaction:
    """Rewrite the whole table to ``plans`` in one transaction, adopting what exists.

    Nothing is flushed before the new content is in place: the table, its
    maps and chains are re-declared (``add`` is idempotent), flushed and
    filled in the same transaction, and chains and sets that are no longer
    wanted are deleted at its end. The kernel commits it as one, so traffic
    keeps the old rules until the new ones take over.
    """
    tx = Transaction(table)
    tx.defines.append(f"add table {FAMILY} {table}")
    for name, definition in _MAPS.items():
        tx.defines.append(f"add map {FAMILY} {table} {name} {{ {definition}; }}")
    for name, definition in _SETS.items():
        tx.defines.append(f"add set {FAMILY} {table} {name} {{ {definition}; }}")
    chains = dict(base_chains(settings))
    sets: dict[str, str] = {}
    skip = set(skip_elements)
    elements: list[str] = []
    for plan in plans:
        chains.update(plan.chains)
        sets.update(plan.sets)
        elements.extend(
            f"add element {FAMILY} {table} {m} {{ {k} : {v} }}"
            for (m, k), v in plan.elements.items()
            if (m, k) not in skip
        )
    for name, definition in sets.items():
        tx.defines.append(f"add set {FAMILY} {table} {name} {{ {definition}; }}")
    for name in chains:
        hook = _HOOKS.get(name)
        tx.defines.append(
            f"add chain {FAMILY} {table} {name}" + (f" {{ {hook}; }}" if hook else "")
        )
    for name in _MAPS:
        tx.flushes.append(f"flush map {FAMILY} {table} {name}")
    for name in _SETS:
        tx.flushes.append(f"flush set {FAMILY} {table} {name}")
    stale_chains = set(existing_chains) - chains.keys()
    for name in [*chains, *sorted(stale_chains)]:
        tx.flushes.append(f"flush chain {FAMILY} {table} {name}")
    for name, values in base_set_elements(settings).items():
        if values:
            tx.element_adds.append(f"add element {FAMILY} {table} {name} {{ {', '.join(values)} }}")
    tx.element_adds.extend(elements)
    for name, rules in chains.items():
        tx.rules.extend(f"add rule {FAMILY} {table} {name} {r}" for r in rules)
    for name in sorted(stale_chains):
        tx.deletes.append(f"delete chain {FAMILY} {table} {name}")
    for name in sorted(set(existing_sets) - sets.keys() - _SETS.keys() - _MAPS.keys()):
        tx.deletes.append(f"delete set {FAMILY} {table} {name}")
    return tx


def delete_table_script(table: str = TABLE) -> str:
    """Remove a whole table (clean shutdown)."""
    return f"delete table {FAMILY} {table}\n"


def shard_tables(shards: int) -> list[str]:
    """Every table of a layout of ``shards`` tables, the names :func:`shard_of` gives."""
    if shards <= 1:
        return [TABLE]
    return [f"{TABLE}-{i}" for i in range(shards)]


def shard_of(key: ServiceKey, shards: int) -> str:
    """The table that holds a Service's chains: ``netplane-N`` of ``shards`` (by name).

    nft reads the cache of every table a transaction names, and only
    those: at 10k Services with 10 endpoints each a change to one table of them
    all costs 80 ms of that reading alone, to one of 16 tables about 5.
    """
    if shards <= 1:
        return TABLE
    return f"{TABLE}-{zlib.crc32(f'{key[0]}/{key[1]}'.encode()) % shards}"
