"""IngressPlane: the ingress proxy of one Dataplane, following its changes.

It builds the RouteTable and the CertStore from the cluster state, opens
the HTTP and HTTPS listeners, and applies every coalesced Change to both
(as :mod:`netplane.l4.proxy` does for the L4 table). The listeners read
the route table per request and the TLS context picks certificates per
handshake, so a change reaches the next request and the next handshake
while requests in flight, open keep-alive connections and WebSocket
tunnels carry on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from netplane.ingress.accesslog import AccessLog
from netplane.ingress.certs import CertStore
from netplane.ingress.gateway_plane import GatewayListeners
from netplane.ingress.http import HttpSettings
from netplane.ingress.routes import DEFAULT_HSTS, RouteTable
from netplane.ingress.server import IngressServer
from netplane.ingress.upstream import Pool

from netplane.addresses import hostport
from netplane.config import DEFAULT_INGRESS_HTTP, DEFAULT_INGRESS_HTTPS, DEFAULTS
from netplane.errors import ConfigError
from netplane.model.gateway import CONTROLLER

log = logging.getLogger("netplane.ingress")


@dataclass(frozen=True, slots=True)
class IngressSettings:
    """What the ingress plane is told by the config (``netplane.plane.ingress_settings``).

    Defaults that the Config has come from it (:data:`netplane.config.DEFAULTS`).
    """

    http: tuple[str, int] | None = (DEFAULT_INGRESS_HTTP.host, DEFAULT_INGRESS_HTTP.port)
    https: tuple[str, int] | None = (DEFAULT_INGRESS_HTTPS.host, DEFAULT_INGRESS_HTTPS.port)
    ingress_class: str = DEFAULTS.ingress_class
    controller: str = "netplane.io/ingress"
    #: (namespace, name) of a kubernetes.io/tls Secret for the default certificate
    default_secret: tuple[str, str] | None = None
    #: (cert PEM, key PEM) served when no Secret matches (None: generated at start)
    default_pair: tuple[bytes, bytes] | None = None
    hsts: bytes | None = DEFAULT_HSTS
    #: "stdout", "stderr", a file path, or None for no access log
    access_log: str | None = DEFAULTS.ingress_access_log
    access_log_format: str = DEFAULTS.log_format
    http_settings: HttpSettings = field(default_factory=HttpSettings)
    #: False: no TLS session tickets, so every new connection is a full handshake
    tls_resumption: bool = DEFAULTS.ingress_tls_resumption
    upstream_max_idle: int = 320  # ingress-nginx's upstream-keepalive-connections
    upstream_idle_timeout: float = 60.0
    #: SO_REUSEPORT on the listeners, so that --workers N processes share them
    reuse_port: bool = False
    #: where a Gateway without spec.addresses listens
    gateway_addresses: tuple[str, ...] = ("127.0.0.1",)
    #: the controllerName of the GatewayClasses this plane serves
    gateway_controller: str = CONTROLLER


class IngressPlane:
    """Routes, certificates and listeners of the ingress; ``start()`` before the Dataplane's."""

    def __init__(self, dataplane: Any, settings: IngressSettings | None = None) -> None:
        self._dp = dataplane
        self.settings = s = settings or IngressSettings()
        self.routes = RouteTable(
            ingress_class=s.ingress_class,
            controller=s.controller,
            hsts=s.hsts,
            https_port=s.https[1] if s.https is not None else 443,
        )
        self.certs = CertStore(
            default=s.default_pair,
            ingress_class=s.ingress_class,
            controller=s.controller,
            default_secret=s.default_secret,
        )
        self.access_log = (
            AccessLog(s.access_log, s.access_log_format) if s.access_log is not None else None
        )
        self.server = IngressServer(
            self.routes,
            settings=s.http_settings,
            pool=Pool(max_idle=s.upstream_max_idle, idle_timeout=s.upstream_idle_timeout),
            access_log=self.access_log,
        )
        self.gateway = GatewayListeners(
            self.server,
            addresses=s.gateway_addresses,
            controller=s.gateway_controller,
            reuse_port=s.reuse_port,
        )
        self._built = False
        self._stream: Any = None
        self._task: asyncio.Task | None = None
        self.changes_applied = 0

    async def start(self) -> None:
        """Subscribe, build what the state holds already, open the listeners."""
        self._stream = self._dp.subscribe()
        s = self.settings
        where = "ingress"  # the listener an error names
        try:
            if s.http is not None:
                where = _listener("HTTP", s.http)
                await self.server.listen(*s.http, reuse_port=s.reuse_port)
            if s.https is not None:
                where = _listener("HTTPS", s.https)
                ctx = self.certs.server_context()
                if not s.tls_resumption:
                    ctx.num_tickets = 0  # TLS 1.3 resumes only by ticket
                    ctx.options |= ssl.OP_NO_TICKET
                bound = await self.server.listen(*s.https, tls=ctx, reuse_port=s.reuse_port)
                if s.https[1] == 0:  # ssl-redirect must name the port actually bound
                    self.routes.https_port = bound[1]
        except OSError as e:
            await self.server.close(0)
            # uvloop's strerror repeats the address: the errno's own text is enough
            errno = e.errno
            if errno and not isinstance(e, ssl.SSLError):
                why = os.strerror(errno)
            else:
                why = e.strerror or str(e)
            raise ConfigError(f"{where}: {why}") from None
        if self._dp.ready:
            self._rebuild()
            await self.gateway.rebuild(self._dp.state, self._dp.table)
        self._task = asyncio.create_task(self._follow(), name="ingress")

    def _rebuild(self) -> None:
        self.routes.rebuild(self._dp.state, self._dp.table)
        self.certs.rebuild(self._dp.state)
        self._built = True

    async def _follow(self) -> None:
        async for change in self._stream:
            state, table = self._dp.state, self._dp.table
            try:
                if not self._built:
                    self._rebuild()
                    await self.gateway.rebuild(state, table)
                else:
                    self.routes.apply(state, table, change)
                    self.certs.apply(state, change)
                    await self.gateway.apply(state, table, change)
                self.changes_applied += 1
            except Exception:
                log.exception("ingress update failed; rebuilding routes and certificates")
                try:
                    self._rebuild()
                    await self.gateway.rebuild(state, table)
                except Exception:
                    log.exception("ingress rebuild failed; keeping the previous routes")

    @property
    def addresses(self) -> list[tuple[str, int, bool]]:
        """(host, port, https) of each Ingress listener, once started (Gateway sockets: not)."""
        gateway = self.gateway.sockets()
        return [a for a in self.server.addresses if (a[0], a[1]) not in gateway]

    async def close(self, grace: float) -> None:
        """Stop accepting; requests in flight get up to ``grace`` seconds."""
        if self._task is not None:
            self._task.cancel()
        if self._stream is not None:
            self._stream.close()
        await self.server.close(grace)
        self.gateway.close()
        if self.access_log is not None:
            self.access_log.close()

    def metrics(self) -> Iterator[Any]:
        """Requests by Ingress, Service and status class, durations, TLS handshakes,
        access-log lines dropped."""
        yield from self.server.stats.families()
        if self.access_log is not None:
            yield self.access_log.metrics()

    def debug_state(self) -> dict[str, Any]:
        return {
            **self.server.debug_state(),
            "changes_applied": self.changes_applied,
            "routes": self.routes.debug_state(),
            "certificates": self.certs.debug_state(),
            "gateway": self.gateway.debug_state(),
        }


def _listener(kind: str, address: tuple[str, int]) -> str:
    """``ingress HTTP: cannot listen on 127.0.0.1:8080/TCP``: the start of a bind error."""
    return f"ingress {kind}: cannot listen on {hostport(*address)}/TCP"
