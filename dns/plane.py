"""DnsPlane: the cluster DNS server of one Dataplane, kept in line with its ServiceTable.

Like the L4 proxy it subscribes to the dataplane's changes: for each
changed service the zone re-derives that service's names, each changed Pod
updates the pod index (``verified`` pod records), and the answer cache
drops the replies that read any changed name. Until the dataplane's first
full table the zone answers SERVFAIL, so no client caches a NXDOMAIN for a
name that is about to exist.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from netplane.dns.cache import AnswerCache, ForwardCache
from netplane.dns.cookie import ServerCookies
from netplane.dns.responder import Allow, Responder
from netplane.dns.server import DnsServer
from netplane.dns.upstream import Forwarder, Upstream
from netplane.dns.zone import Zone

from netplane.addresses import IPNetwork
from netplane.config import DEFAULT_DNS, DEFAULTS
from netplane.model import ObjectKey, Pod
from netplane.service_table import ServiceKey

log = logging.getLogger("netplane.dns")

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """What the DNS plane is told (``netplane.plane.dns_settings`` derives it from a Config).

    Defaults that the Config has come from it (:data:`netplane.config.DEFAULTS`).
    """

    host: str = DEFAULT_DNS.host
    port: int = DEFAULT_DNS.port
    domain: str = DEFAULTS.cluster_domain
    ttl: int = DEFAULTS.dns_ttl
    upstreams: tuple[Upstream, ...] = ()
    allow: tuple[IPNetwork, ...] = LOOPBACK
    reverse_cidrs: tuple[IPNetwork, ...] = ()
    pods: str = DEFAULTS.dns_pods
    udp_cap: int = DEFAULTS.dns_udp_size
    tcp_idle: float = 10.0
    max_tcp_connections: int = DEFAULTS.dns_max_tcp_connections
    forward_timeout: float = 2.0
    answer_cache: int = 100_000
    forward_cache: int = 10_000
    ns_addresses: tuple[str, ...] = field(default=())
    #: SO_REUSEPORT on the UDP and TCP sockets, so that --workers N processes share them
    reuse_port: bool = False
    #: the secret of the DNS server cookies (RFC 7873, 9018); None: random per process
    cookie_secret: bytes | None = None


def resolv_conf_upstreams(text: str, *, exclude: Iterable[Upstream] = ()) -> list[Upstream]:
    """The ``nameserver`` lines of a resolv.conf, port 53, minus ``exclude`` (ourselves)."""
    skip = set(exclude)
    out: list[Upstream] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                ip = str(ipaddress.ip_address(parts[1].split("%", 1)[0]))
            except ValueError:
                continue
            if (ip, 53) not in skip and (ip, 53) not in out:
                out.append((ip, 53))
    return out


def own_addresses(host: str, port: int) -> list[Upstream]:
    """Where this server answers, so that it never forwards to itself."""
    if host in ("0.0.0.0", "::", ""):
        return [("127.0.0.1", port), ("::1", port), (host or "0.0.0.0", port)]
    return [(host, port)]


class DnsPlane:
    """Cluster DNS for one Dataplane; ``start()`` before or after the dataplane's."""

    def __init__(self, dataplane: Any, settings: DnsSettings) -> None:
        self._dp = dataplane
        self.settings = s = settings
        self.zone = Zone(
            s.domain,
            ttl=s.ttl,
            reverse_cidrs=s.reverse_cidrs,
            pods=s.pods,
            ns_addresses=s.ns_addresses or _ns_default(s.host),
            serial=int(time.time()),
        )
        upstreams = tuple(u for u in s.upstreams if u not in own_addresses(s.host, s.port))
        self.responder = Responder(
            self.zone,
            allow=Allow(s.allow),
            answers=AnswerCache(s.answer_cache),
            forwarded=ForwardCache(s.forward_cache),
            can_forward=bool(upstreams),
            udp_cap=s.udp_cap,
            cookies=ServerCookies(s.cookie_secret),
        )
        self.forwarder = Forwarder(upstreams, timeout=s.forward_timeout)
        self.server = DnsServer(
            self.responder,
            self.forwarder,
            host=s.host,
            port=s.port,
            tcp_idle=s.tcp_idle,
            reuse_port=s.reuse_port,
            max_tcp_connections=s.max_tcp_connections,
        )
        self._stream: Any = None
        self._task: asyncio.Task | None = None
        self.last_sync_ms = 0.0

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        """Bind UDP and TCP (OSError when the address is taken), then follow the table."""
        await self.server.start()
        self._stream = self._dp.subscribe()
        if self._dp.ready:
            self.apply(
                (e.key for e in self._dp.table), (o.key for o in self._dp.state.objects("Pod"))
            )
        self._task = asyncio.create_task(self._follow(), name="dns")
        log.info(
            "DNS listening on %s (UDP and TCP) for %s",
            self.server.debug_state()["listen"],
            self.zone.domain,
        )

    async def _follow(self) -> None:
        async for change in self._stream:
            try:
                self.apply(change.services, (k for k in change.objects if k.kind == "Pod"))
            except Exception:
                log.exception("DNS update failed; rebuilding the zone")
                self.apply(
                    (e.key for e in self._dp.table), (o.key for o in self._dp.state.objects("Pod"))
                )

    def apply(self, services: Iterable[ServiceKey], pods: Iterable[ObjectKey] = ()) -> set[str]:
        """Bring the zone in line with the table for ``services`` and ``pods``; returns changed names."""
        started = time.perf_counter()
        table, state, zone = self._dp.table, self._dp.state, self.zone
        changed: set[str] = set()
        for sk in services:
            changed |= zone.update_service(sk, table.get(*sk))
        for key in pods:
            pod = state.get(key)
            changed |= zone.update_pod(key, pod if isinstance(pod, Pod) else None)
        if self._dp.ready and not zone.ready:
            zone.ready = True
            self.responder.answers.clear()  # SERVFAILs are never stored; this is belt and braces
        else:
            self.responder.answers.invalidate(changed)
        self.last_sync_ms = (time.perf_counter() - started) * 1000
        return changed

    async def close(self, grace: float = 0.0) -> None:
        """Stop answering. A DNS exchange is one short message: nothing waits
        for ``grace`` (taken for the Plane protocol); open TCP connections close."""
        if self._task is not None:
            self._task.cancel()
        if self._stream is not None:
            self._stream.close()
        await self.server.close()

    def metrics(self) -> Iterator[Any]:
        """Replies by type and rcode, answer-cache hits and misses, durations (for /metrics)."""
        return self.server.stats.families(self.responder.answers.hits(), self.forwarder.dropped)

    def debug_state(self) -> dict[str, Any]:
        return {
            **self.server.debug_state(),
            "zone": self.zone.debug_state(),
            "ready": self.zone.ready,
            "last_sync_ms": round(self.last_sync_ms, 3),
            **self.responder.debug_state(),
        }


def _ns_default(host: str) -> Sequence[str]:
    """The NS glue when no kube-dns Service names this server: its own listen address."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return ()
    return () if addr.is_unspecified else (str(addr),)
