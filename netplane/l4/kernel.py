"""KernelDatapath: the service ports nftables serves, kept in line with the ServiceTable.

It runs where the sources run (the daemon's process, also under
``--workers N``), beside the asyncio proxy, which keeps its listeners for
every service port: a port in the kernel is DNAT'ed in prerouting and
output before any socket sees it, so the proxy's listener behind it only
serves again when the port leaves the kernel. That makes every move
between the datapaths (a Service's annotation, SIGHUP switching
``--l4-datapath``, a failed transaction) safe for open connections: a
connection keeps the NAT, or lack of it, that conntrack gave its first
packet: a TCP connection is DNAT'ed only from its SYN, and a table emptied
by a switch to user space keeps its nat hooks (see :meth:`KernelDatapath._full`).

Start: once the sources have synced, one full transaction writes the
whole table, adopting one that an earlier run left (``--keep-rules-on-exit``
or a crash) without flushing it first, so traffic that the old rules
carry goes on. Then each change is one incremental transaction over the
changed services (:class:`netplane.l4.nft_ruleset.Transaction`). A
transaction that fails is logged and followed by a full one; until that
succeeds, the rules of the last good one serve.

Stop: the table is deleted, unless ``keep_rules`` (then traffic keeps
flowing through the kernel until the next start adopts the table).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from netplane.l4.datapath import KERNEL, USERSPACE, annotation_problem
from netplane.l4.nft_apply import Nft, NftError, clear_udp_flows
from netplane.l4.nft_ruleset import (
    EMPTY,
    ServicePlan,
    Settings,
    Transaction,
    delete_table_script,
    full_script,
    plan_service,
    shard_of,
    shard_tables,
)
from netplane.l4.picker import NodeInfo
from netplane.l4.routes import WILDCARDS
from netplane.service_table import ServiceKey

log = logging.getLogger("netplane.l4.nftables")

#: Tables the Services are spread over (see nft_ruleset.shard_of).
SHARDS = 16
#: Wait before a full resync after a failed one, doubling up to the cap.
RETRY_FIRST, RETRY_CAP = 0.5, 30.0


class KernelDatapath:
    """The nftables side of node mode's L4 datapaths (see the module docstring)."""

    def __init__(
        self,
        dataplane: Any,
        nft: Nft | None,
        *,
        mode: str,
        node_name: str = "",
        nodeport_addresses: Iterable[str] = WILDCARDS,
        service_cidrs: Iterable[Any] = (),
        default_policy: str = "round-robin",
        keep_rules: bool = False,
        shards: int = SHARDS,
    ) -> None:
        self._dp = dataplane
        self.nft = nft
        self.mode = mode if nft is not None else USERSPACE
        self.node_name = node_name
        self.nodeport_addresses = tuple(nodeport_addresses)
        self.service_cidrs = tuple(service_cidrs)
        self.default_policy = default_policy
        self.keep_rules = keep_rules
        self.shards = shards
        self._plans: dict[ServiceKey, ServicePlan] = {}
        # frontend key ("ip . proto . port" or "proto . port", per family map) -> holder
        self._claims: dict[tuple[str, str], ServiceKey] = {}
        self._stream: Any = None
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._needs_full = True
        self.synced = False  # the first full transaction is in place (or nothing to do)
        # figures for /debug/state and /metrics
        self.syncs = {"full": 0, "incremental": 0}
        self.failures = 0
        self.last_error: str | None = None
        self.last_sync_seconds = 0.0
        self.last_full_seconds = 0.0
        self.last_commands = 0
        self.udp_flows_cleared = 0

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Follow the dataplane; the first full transaction waits for its sources."""
        self._stream = self._dp.subscribe()
        self._task = asyncio.create_task(self._run(), name="l4-nftables")

    async def _run(self) -> None:
        await self._dp.wait_ready()
        self._stream.take()  # the full sync below covers everything so far
        await self._full_until_done()
        async for change in self._stream:
            async with self._lock:
                if self._needs_full:
                    await self._full_until_done(locked=True)
                    continue
                await self._sync(change.services)

    async def close(self, grace: float = 0.0, /) -> None:
        """Stop following; delete the table unless asked to keep it (``grace`` is the
        Plane signature's: the kernel has no connections of its own to drain)."""
        if self._task is not None:
            self._task.cancel()
        if self._stream is not None:
            self._stream.close()
        if self.nft is None or self.keep_rules:
            if self.keep_rules and self._plans:
                log.info("keeping the nftables rules: the kernel serves on until the next start")
            return
        try:
            tables = await self.nft.tables()
            if tables:
                await self.nft.apply("".join(delete_table_script(t) for t in sorted(tables)))
                log.info("removed the nftables tables (%d)", len(tables))
        except NftError as e:
            log.error("cannot remove the nftables tables: %s", e)

    async def set_mode(self, mode: str) -> None:
        """Switch ``--l4-datapath`` at run time (SIGHUP); each port moves in one transaction."""
        if mode == self.mode:
            return
        if self.nft is None and mode != USERSPACE:
            log.error("--l4-datapath %s: the nft command is not available; staying in user space",
                      mode)  # fmt: skip
            return
        log.info("L4 datapath: %s -> %s", self.mode, mode)
        self.mode = mode
        if self._dp.ready and self.synced:
            # One full transaction: every port moves at once.
            async with self._lock:
                await self._full_until_done(locked=True)

    # -- computing ---------------------------------------------------------------

    def _settings(self) -> Settings:
        return Settings(
            node=NodeInfo.of(self._dp.state, self.node_name),
            nodeport_addresses=self.nodeport_addresses,
            service_cidrs=self.service_cidrs,
            mode=self.mode,
            default_policy=self.default_policy,
        )

    def _plan(self, sk: ServiceKey, settings: Settings) -> ServicePlan:
        entry = self._dp.table.get(*sk)
        if entry is not None and (problem := annotation_problem(entry)):
            log.warning("Service %s/%s: %s", *sk, problem)
        return plan_service(entry, settings)

    def _claim(self, sk: ServiceKey, old: ServicePlan, new: ServicePlan) -> tuple[set, set]:
        """(keys of ``new`` another service holds, keys of ``old`` that were never ours)."""
        never = {k for k in old.elements if self._claims.get(_frontend(k)) != sk}
        for k in old.elements:
            if self._claims.get(_frontend(k)) == sk:
                del self._claims[_frontend(k)]
        skip: set[tuple[str, str]] = set()
        for k in new.elements:
            holder = self._claims.get(_frontend(k))
            if holder is not None and holder != sk:
                skip.add(k)
                log.warning(
                    "Service %s/%s: %s is already served for Service %s/%s; not taking it",
                    *sk, k[1], *holder,
                )  # fmt: skip
                continue
            self._claims[_frontend(k)] = sk
        return skip, never

    # -- applying ----------------------------------------------------------------

    async def _full_until_done(self, *, locked: bool = False) -> None:
        delay = RETRY_FIRST
        while True:
            if locked:
                ok = await self._full()
            else:
                async with self._lock:
                    ok = await self._full()
            if ok:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_CAP)

    async def _full(self) -> bool:
        """Rewrite the whole table; True on success.

        In user-space mode a table that exists (left by an earlier run, or
        by a switch from the kernel) is emptied of service ports but kept:
        its nat hooks keep the NAT of the connections the kernel took, which
        would be reset without them. With no table, user-space mode creates
        none (no conntrack or NAT on a node that never used the kernel).
        A proxied connection that conntrack first meets mid-stream, after a
        switch to the kernel, is never DNAT'ed: the table DNATs TCP only on
        a SYN (see nft_ruleset.base_chains). close() removes the table.
        """
        assert self.nft is not None or self.mode == USERSPACE
        started = time.perf_counter()
        if self.nft is None:
            self._plans.clear()
            self._claims.clear()
            self._needs_full = False
            self.synced = True
            return True
        settings = self._settings()
        plans: dict[ServiceKey, ServicePlan] = {}
        claims: dict[tuple[str, str], ServiceKey] = {}
        for entry in self._dp.table if self.mode != USERSPACE else ():
            sk = entry.key
            plan = plans[sk] = self._plan(sk, settings)
            for k in plan.elements:
                claims.setdefault(_frontend(k), sk)
        try:
            existing = await self.nft.tables()
            if not existing and self.mode == USERSPACE:
                self._plans.clear()
                self._claims.clear()
                self._needs_full = False
                self.synced = True
                return True
            by_shard: dict[str, list[ServicePlan]] = {t: [] for t in shard_tables(self.shards)}
            for sk, plan in plans.items():
                # A frontend another Service holds is left out of this one's elements
                # (by service: the holder's element may have the same map and key).
                held = [k for k in plan.elements if claims[_frontend(k)] != sk]
                if held:
                    plan = dataclasses.replace(
                        plan, elements={k: v for k, v in plan.elements.items() if k not in held}
                    )
                by_shard[shard_of(sk, self.shards)].append(plan)
            txs = [
                full_script(
                    settings, shard_plans, existing_chains=existing.get(t, ((), ()))[0],
                    existing_sets=existing.get(t, ((), ()))[1], table=t,
                )
                for t, shard_plans in by_shard.items()
            ]  # fmt: skip
            # Tables of another layout (an earlier version, another shard count) go in
            # the same transaction: nothing is left half-served.
            stale = sorted(set(existing) - set(by_shard))
            script = "".join(tx.script() for tx in txs)
            script += "".join(delete_table_script(t) for t in stale)
            await self.nft.apply(script)
        except NftError as e:
            self.failures += 1
            self.last_error = str(e)
            log.error("nftables full sync failed; the previous rules serve meanwhile: %s", e)
            return False
        elapsed = time.perf_counter() - started
        old = self._plans
        self._plans = {sk: p for sk, p in plans.items() if p is not EMPTY}
        self._claims = claims
        self._needs_full = False
        self.syncs["full"] += 1
        self.last_full_seconds = self.last_sync_seconds = elapsed
        count = sum(tx.count() for tx in txs)
        self.last_commands = count
        kernel = sum(1 for p in plans.values() for s in p.ports if s.datapath == KERNEL)
        log.info(
            "nftables: %s tables with %d service ports in the kernel (%d commands, %.0f ms)",
            "adopted and rewrote the" if existing else "wrote the",
            kernel, count, elapsed * 1000,
        )  # fmt: skip
        _log_user_space_ports(plans.values())
        if not self.synced:
            old = {}
        self.synced = True
        await self._clear_udp(old, self._plans)
        return True

    async def _sync(self, services: Iterable[ServiceKey]) -> None:
        assert self.nft is not None or self.mode == USERSPACE
        if self.mode == USERSPACE and not self._plans:
            return
        if self.nft is None:
            return
        started = time.perf_counter()
        settings = self._settings()
        txs: dict[str, Transaction] = {}
        new_plans: dict[ServiceKey, ServicePlan] = {}
        old_claims = dict(self._claims)
        for sk in set(services):
            old = self._plans.get(sk, EMPTY)
            new = self._plan(sk, settings) if self.mode != USERSPACE else EMPTY
            if new == old:
                continue
            skip, never = self._claim(sk, old, new)
            table = shard_of(sk, self.shards)
            txs.setdefault(table, Transaction(table)).change(
                old, new, skip_elements=skip, old_skipped=never
            )
            new_plans[sk] = new
        if not any(txs.values()):
            return
        count = sum(tx.count() for tx in txs.values())
        try:
            # One nft run: the tables it names are the only ones nft reads.
            await self.nft.apply("".join(tx.script() for tx in txs.values()))
        except NftError as e:
            self.failures += 1
            self.last_error = str(e)
            self._claims = old_claims
            log.error("nftables transaction failed (%d commands); a full sync follows: %s",
                      count, e)  # fmt: skip
            self._needs_full = True
            await self._full_until_done(locked=True)
            return
        olds = {sk: self._plans.get(sk, EMPTY) for sk in new_plans}
        for sk, plan in new_plans.items():
            if plan is EMPTY or not (plan.chains or plan.elements or plan.ports):
                self._plans.pop(sk, None)
            else:
                self._plans[sk] = plan
        self.syncs["incremental"] += 1
        self.last_sync_seconds = time.perf_counter() - started
        self.last_commands = count
        log.debug("nftables: %d services changed, %d commands, %.1f ms",
                  len(new_plans), count, self.last_sync_seconds * 1000)  # fmt: skip
        _log_moves(olds, new_plans)
        await self._clear_udp(olds, new_plans)

    async def _clear_udp(
        self, old: dict[ServiceKey, ServicePlan], new: dict[ServiceKey, ServicePlan]
    ) -> None:
        """Delete conntrack entries of UDP endpoints that left and ports that found endpoints."""
        # (frontend ip or None for a NodePort, its port, endpoint address, its port)
        gone: set[tuple[str | None, int, str, int]] = set()
        fronts: set[tuple[str | None, int]] = set()
        for sk, plan in new.items():
            before = old.get(sk, EMPTY).udp
            for pkey, flows in plan.udp.items():
                was = before.get(pkey)
                if was is None or not was.targets:
                    if flows.targets:
                        fronts.update(flows.frontends)
                    continue
                left = was.targets - flows.targets
                gone.update((ip, p, t.address, t.port) for ip, p in was.frontends for t in left)
        for sk, plan in old.items():
            after = new.get(sk, EMPTY).udp
            for pkey, flows in plan.udp.items():
                if pkey not in after:
                    gone.update(
                        (ip, p, t.address, t.port)
                        for ip, p in flows.frontends
                        for t in flows.targets
                    )
        if not gone and not fronts:
            return
        try:
            n = await asyncio.to_thread(clear_udp_flows, gone, fronts)
        except Exception as e:  # pyroute2's NetlinkError, or no conntrack in this kernel
            log.warning("cannot clear UDP conntrack entries: %s", e)
            return
        self.udp_flows_cleared += n
        if n:
            log.info("cleared %d UDP conntrack entries of endpoints that changed", n)

    # -- introspection ---------------------------------------------------------------

    def ports(self) -> Iterator[Any]:
        for plan in self._plans.values():
            yield from plan.ports

    def datapath_of(self, namespace: str, name: str, port: str) -> tuple[str, str] | None:
        """(datapath, reason) of one service port, as last programmed; None if unknown."""
        for p in self._plans.get((namespace, name), EMPTY).ports:
            if p.port == port:
                return p.datapath, p.reason
        return None

    def debug_state(self) -> dict[str, Any]:
        ports = sorted(self.ports(), key=lambda p: (p.namespace, p.name, p.port))
        return {
            "mode": self.mode,
            "nft": self.nft.backend if self.nft is not None else None,
            "synced": self.synced,
            "keep_rules_on_exit": self.keep_rules,
            "syncs": dict(self.syncs),
            "failures": self.failures,
            "last_error": self.last_error,
            "last_sync_ms": round(self.last_sync_seconds * 1000, 2),
            "last_full_sync_ms": round(self.last_full_seconds * 1000, 2),
            "last_commands": self.last_commands,
            "udp_flows_cleared": self.udp_flows_cleared,
            "counts": {
                KERNEL: sum(1 for p in ports if p.datapath == KERNEL),
                USERSPACE: sum(1 for p in ports if p.datapath != KERNEL),
            },
            "ports": [
                {
                    "service": f"{p.namespace}/{p.name}",
                    "port": p.port,
                    "protocol": p.protocol,
                    "datapath": p.datapath,
                    "reason": p.reason,
                    "endpoints": p.endpoints,
                    "external_endpoints": p.external_endpoints,
                }
                for p in ports
            ],
        }

    def metrics(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        served = GaugeMetricFamily(
            "netplane_l4_datapath",
            "1 for the datapath that serves each service port (nftables or userspace)",
            labels=["namespace", "service", "port", "protocol", "datapath"],
        )
        for p in sorted(self.ports(), key=lambda p: (p.namespace, p.name, p.port)):
            served.add_metric([p.namespace, p.name, p.port, p.protocol, p.datapath], 1)
        yield served
        syncs = CounterMetricFamily(
            "netplane_nftables_syncs", "nftables transactions applied, by kind", labels=["kind"]
        )
        for kind, n in self.syncs.items():
            syncs.add_metric([kind], n)
        yield syncs
        yield CounterMetricFamily(
            "netplane_nftables_sync_failures",
            "nftables transactions that failed (each followed by a full sync)",
            value=self.failures,
        )
        yield GaugeMetricFamily(
            "netplane_nftables_last_sync_seconds",
            "How long the last nftables transaction took, computing it included",
            value=self.last_sync_seconds,
        )
        yield CounterMetricFamily(
            "netplane_nftables_udp_flows_cleared",
            "UDP conntrack entries deleted because their endpoint left or their port found one",
            value=self.udp_flows_cleared,
        )


def _log_user_space_ports(plans: Iterable[ServicePlan], *, limit: int = 5) -> None:
    """One line per reason that keeps ports in user space, naming the first few."""
    by_reason: dict[str, list[str]] = {}
    for plan in plans:
        for p in plan.ports:
            if p.datapath != KERNEL:
                by_reason.setdefault(p.reason, []).append(f"{p.namespace}/{p.name}:{p.port}")
    for reason, ports in sorted(by_reason.items()):
        more = f" and {len(ports) - limit} more" if len(ports) > limit else ""
        log.info("%d service ports stay in user space: %s (%s%s)",
                 len(ports), reason, ", ".join(ports[:limit]), more)  # fmt: skip


def _log_moves(old: dict[ServiceKey, ServicePlan], new: dict[ServiceKey, ServicePlan]) -> None:
    """A port that changed datapath (an annotation, a policy), or a new one kept in user
    space, is logged with the reason."""
    for sk, plan in new.items():
        before = {(p.port, p.protocol): p.datapath for p in old.get(sk, EMPTY).ports}
        for p in plan.ports:
            was = before.get((p.port, p.protocol))
            if (was is None and p.datapath != KERNEL) or (was is not None and was != p.datapath):
                log.info("Service %s/%s port %s: now served by %s (%s)",
                         *sk, p.port, p.datapath, p.reason)  # fmt: skip


def _frontend(element: tuple[str, str]) -> tuple[str, str]:
    """The frontend an element is for, whichever map (served or no-endpoint) holds it."""
    m, k = element
    family = m[-1]
    kind = "nodeport" if "nodeports" in m else "ip"
    return f"{kind}{family}", k
