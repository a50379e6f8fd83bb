"""The Gateway API side of the ingress plane: a socket per Gateway port, opened and closed live.

:class:`GatewayListeners` follows the same changes as the Ingress route
table. On a change to a Gateway API object, a Namespace, a Secret or a
Service that a route names, it recomputes the world (``gateway_attach``),
compiles it (``gateway_routes``) and opens or closes sockets to match; an
endpoint change only refreshes the pools of its services. A socket that
stays keeps its listener and its :class:`PortRoutes` object, whose tables
are replaced in place, so open connections carry on and the next request
sees the change. A socket that goes stops accepting; its connections
finish on the routes they had.

HTTPS sockets pick their certificate by SNI among the certificates of the
listeners sharing the port (exact hostname, then the longest wildcard, then
a listener without a hostname). A socket that cannot be opened (the port is
taken) is reported in its listeners' status (``PortUnavailable``) and
logged once; it is tried again at the next change.
"""

from __future__ import annotations

import errno as errno_codes
import logging
import os
import socket
import ssl
from typing import Any

from netplane.ingress.certs import (
    Certificate,
    CertificateError,
    load_certificate,
    load_chain,
    new_context,
)
from netplane.ingress.gateway_attach import GatewayWorld, Socket, attach
from netplane.ingress.gateway_routes import GatewayRoutes, PortRoutes, _Names
from netplane.ingress.mirror import STATS as MIRRORS
from netplane.ingress.paths import split_host

from netplane.addresses import hostport
from netplane.dataplane import Change
from netplane.model import Secret
from netplane.model.gateway import CONTROLLER
from netplane.ports import Listener as PortListener
from netplane.ports import PortTaken, claim_in_group

log = logging.getLogger("netplane.ingress.gateway")

#: kinds whose change recomputes the Gateway world (a Service only when a route names it)
WORLD_KINDS = frozenset(
    ("GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "ReferenceGrant", "Namespace", "Secret")
)


class CertificateCache:
    """Loaded certificates by Secret content, so a rebuild does not reload unchanged ones."""

    def __init__(self) -> None:
        self._by_secret: dict[Any, Certificate | str] = {}

    def get(self, secret: Secret) -> Certificate | str:
        key = (secret.key, secret.cert_pem, secret.key_pem)
        got = self._by_secret.get(key)
        if got is None:
            try:
                got = load_certificate(secret.cert_pem, secret.key_pem.reveal())
            except CertificateError as e:
                got = str(e)
            self._by_secret[key] = got
        return got

    def check(self, secret: Secret) -> str:
        got = self.get(secret)
        return got if isinstance(got, str) else ""

    def keep_only(self, secrets: set[Any]) -> None:
        self._by_secret = {k: v for k, v in self._by_secret.items() if k[0] in secrets}


class _SniContext:
    """The TLS context of one HTTPS socket, switching certificate per handshake by SNI."""

    def __init__(self) -> None:
        self.names = _Names()
        self.first: Certificate | None = None
        self.context: ssl.SSLContext | None = None

    def load(self, sock: Socket, certs: CertificateCache) -> None:
        """Take the certificates of the socket's listeners (each listener's first usable one)."""
        names = _Names()
        first: tuple[Secret, Certificate] | None = None
        for served in sock.listeners:
            for secret in served.certificates:
                got = certs.get(secret)
                if isinstance(got, Certificate):
                    names.put(served.listener.hostname, got)
                    first = first or (secret, got)
                    break
        self.names = names
        self.first = first[1] if first else None
        if self.context is None and first is not None:
            # The listening context needs a certificate of its own for a handshake to
            # start; the SNI callback then sets the one that serves, name or no name.
            self.context = new_context()
            load_chain(self.context, first[0].cert_pem, first[0].key_pem.reveal())
            self.context.sni_callback = self._sni

    def _sni(self, conn: Any, name: str | None, _ctx: Any) -> None:
        cert = self.choose(name)[1]
        if cert is not None:
            conn.context = cert.context

    def choose(self, name: str | None) -> tuple[str | None, Certificate | None]:
        """The certificate for an SNI name and the listener hostname that has it
        (None: no listener's hostname fits; the first certificate serves)."""
        if name:
            found = self.names.which(split_host(name))
        else:
            found = ("", self.names.any) if self.names.any is not None else None
        return found if found is not None else (None, self.first)


class GatewayListeners:
    """Gateway sockets of one ingress plane (see the module docstring)."""

    def __init__(
        self,
        server: Any,
        *,
        addresses: tuple[str, ...] = ("127.0.0.1",),
        controller: str = CONTROLLER,
        reuse_port: bool = False,
    ) -> None:
        self.server = server
        self.addresses = addresses
        self.controller = controller
        self.reuse_port = reuse_port
        self.routes = GatewayRoutes()
        self.certs = CertificateCache()
        self.world = GatewayWorld()
        self._open: dict[tuple[str, int], tuple[tuple[str, int], _SniContext | None]] = {}
        self._unavailable: dict[tuple[str, int], str] = {}
        self._locks: dict[tuple[str, int], socket.socket] = {}  # see netplane.ports
        self._logged: set[str] = set()
        self._said: dict[tuple[str, int], str] = {}  # bind errors logged, by socket

    # -- following the state -----------------------------------------------------

    async def rebuild(self, state: Any, table: Any) -> None:
        """Recompute everything and open or close sockets to match."""
        self._unavailable = {}
        world = self._attach(state)
        await self._sync(world, state, table)

    async def apply(self, state: Any, table: Any, change: Change) -> None:
        kinds = {k.kind for k in change.objects}
        services = set(change.services)
        services.update((k.namespace, k.name) for k in change.objects if k.kind == "Service")
        if kinds & WORLD_KINDS or services & self.world.services:
            self._unavailable = {}  # a port that could not be opened is tried again
            await self._sync(self._attach(state), state, table)
        elif services:
            self.routes.update_services(services, table)

    def _attach(self, state: Any) -> GatewayWorld:
        return attach(
            state,
            controller=self.controller,
            default_addresses=self.addresses,
            unavailable=self._unavailable,
            check_certificate=self.certs.check,
        )

    async def _sync(self, world: GatewayWorld, state: Any, table: Any) -> None:
        self.routes.rebuild(world, table)
        failed = False
        for key in list(self._open):
            if key not in self.routes.ports:
                bound, _ctx = self._open.pop(key)
                self.server.unlisten(bound)
                lock = self._locks.pop(key, None)
                if lock is not None:
                    lock.close()
                log.info("gateway: stopped listening on %s", hostport(*key))
        for key, pr in self.routes.ports.items():
            sock = world.sockets[key]
            if key in self._open:
                ctx = self._open[key][1]
                if ctx is not None:
                    ctx.load(sock, self.certs)
                continue
            if not await self._listen(key, sock, pr):
                failed = True
        if failed:
            # Report the sockets that could not open in their listeners' status.
            world = self._attach(state)
            self.routes.rebuild(world, table)
        self.world = world
        self.certs.keep_only({s.key for lst in world.listeners() for s in lst.certificates})
        self._log_problems(world)

    async def _listen(self, key: tuple[str, int], sock: Socket, pr: PortRoutes) -> bool:
        ctx = None
        tls = None
        if sock.protocol == "HTTPS":
            ctx = _SniContext()
            ctx.load(sock, self.certs)
            tls = ctx.context
        names = ", ".join(lst.label for lst in sock.listeners)
        lock = None
        if self.reuse_port:
            # --workers N: the socket is shared with the sibling workers only; another
            # netplane on the port must not join the group (netplane.ports).
            try:
                lock = claim_in_group(PortListener("gateway", key[0], key[1], "TCP"))
            except PortTaken as e:
                why = str(e).split(": ", 2)[-1]
                self._bind_failed(key, names, why)
                return False
        try:
            bound = await self.server.listen(
                key[0], key[1], tls=tls, reuse_port=self.reuse_port, routes=pr,
                label=f"gateway ({names})",
            )  # fmt: skip
        except OSError as e:
            if lock is not None:
                lock.close()
            why = os.strerror(e.errno) if e.errno else str(e)
            if e.errno == errno_codes.EADDRINUSE:
                why = f"port {key[1]} is already in use on {key[0]}"
            self._bind_failed(key, names, why)
            return False
        self._open[key] = (bound, ctx)
        self._said.pop(key, None)
        if lock is not None:
            self._locks[key] = lock
        return True

    def _bind_failed(self, key: tuple[str, int], names: str, why: str) -> None:
        """A socket that cannot open: reported in status, logged once until that changes."""
        self._unavailable[key] = why
        if self._said.get(key) != why:
            self._said[key] = why
            log.error("gateway (%s): cannot listen on %s: %s", names, hostport(*key), why)

    def _log_problems(self, world: GatewayWorld) -> None:
        # At debug: the Dataplane's problems say each of these once, at warning,
        # with the unmet status condition behind it (netplane.check.gateway_problems).
        lines = set(world.problems)
        for line in sorted(lines - self._logged):
            log.debug("gateway: %s", line)
        self._logged = lines

    def close(self) -> None:
        """Let go of the port locks (the server closes the sockets themselves)."""
        for lock in self._locks.values():
            lock.close()
        self._locks.clear()
        self._open.clear()

    # -- introspection -------------------------------------------------------------

    def sockets(self) -> set[tuple[str, int]]:
        """The (host, port) each open Gateway socket is bound to."""
        return {bound for bound, _ctx in self._open.values()}

    def bound(self, address: str, port: int) -> tuple[str, int] | None:
        """The address a Gateway socket actually bound (port 0 picks one), or None."""
        got = self._open.get((address, port))
        return got[0] if got else None

    def debug_state(self) -> dict[str, Any]:
        sockets = {}
        for key, pr in sorted(self.routes.ports.items()):
            sock = self.world.sockets.get(key)
            sockets[hostport(*key)] = {
                "protocol": sock.protocol if sock else "",
                "listeners": [lst.label for lst in sock.listeners] if sock else [],
                "open": key in self._open,
                "rules": pr.rules,
                "routes": pr.debug_state(),
            }
        return {
            "controller": self.controller,
            "sockets": sockets,
            "status": {str(k): v for k, v in sorted(self.world.statuses.items())},
            "problems": sorted(set(self.world.problems)),
            "mirrors": {
                "sent": MIRRORS.sent,
                "failed": MIRRORS.failed,
                "dropped": MIRRORS.dropped,
                "skipped_with_body": MIRRORS.skipped,
                "pending": len(MIRRORS.tasks),
            },
        }
