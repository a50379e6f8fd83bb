"""The service health-check server of ``externalTrafficPolicy: Local`` (kube-proxy's).

A load balancer in front of a Local service must only send to nodes that
have an endpoint of it, so each node answers HTTP on the service's
``healthCheckNodePort``: 200 while it has ready endpoints of the service,
503 while it has none. Any method and any path get the same answer, as
from kube-proxy's ``hcHandler`` (pkg/proxy/healthcheck/service_health.go):
``Content-Type: application/json``, ``X-Content-Type-Options: nosniff``,
``X-Load-Balancing-Endpoint-Weight: <count>`` and this body, indented with
one tab per level (here shown with spaces), byte for byte kube-proxy's::

    {
        "service": {
            "namespace": "ns",
            "name": "svc"
        },
        "localEndpoints": 1,
        "serviceProxyHealthy": true
    }

``serviceProxyHealthy`` is the proxy's own health (:class:`ProxyHealth`),
decided as kube-proxy's proxier health server decides it
(pkg/proxy/healthcheck/proxier_health.go): healthy while no change waits to
reach the listeners, or while the oldest waiting change is younger than
the health timeout (kube-proxy's ``healthTimeout``, twice its 30 s
``syncPeriod``: 60 s). netplane adds one rule: a proxy that is draining
(shutting down while open connections finish) is unhealthy, so a load
balancer moves away from the node before its listeners go. An unhealthy
proxy fails every service's check with 503, whatever its endpoints.

Layers:

- Sans-IO: :func:`wanted_port` (does a service get a health check, on which
  port), :func:`local_ready_endpoints` (kube-proxy's count: distinct
  addresses of ready endpoints on this node, over all ports),
  :func:`health_response` (service, count and proxy health to status,
  headers, body), :class:`ProxyHealth` (pending changes and draining, with
  an injected clock), :func:`parse_request_line` and :func:`render`.
- :class:`_Probe`, an ``asyncio.Protocol`` per connection: it reads the
  request head (at most :data:`MAX_HEAD` bytes, within :data:`HEAD_TIMEOUT`
  seconds), answers once with ``Connection: close`` and closes.
- :class:`ServiceHealthCheck`: one service's listeners (one per node
  address) and its current count, which every probe reads when it is
  answered, so a count change shows at once without touching the sockets.
- :class:`HealthChecks`: the set of them, brought in line with one
  ServiceTable entry at a time by the L4 proxy. A port that cannot be
  bound (in use) is logged and tried again on the service's next change.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Callable, Sequence
from email.utils import formatdate
from typing import Any

from netplane.addresses import hostport
from netplane.service_table import ServiceEntry, ServiceKey

log = logging.getLogger("netplane.l4.healthcheck")

#: Bytes of request head read at most; more is answered 431.
MAX_HEAD = 8192
#: Seconds a client has to send its request head before it is closed.
HEAD_TIMEOUT = 10.0

#: Seconds a change may wait to reach the listeners before the proxy is unhealthy
#: (kube-proxy's healthTimeout: twice its default iptables syncPeriod of 30 s).
HEALTH_TIMEOUT = 60.0

HEALTH_TYPES = ("LoadBalancer", "NodePort")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}

Headers = tuple[tuple[str, str], ...]


# -- sans-IO ---------------------------------------------------------------------


def wanted_port(entry: ServiceEntry | None) -> int | None:
    """The health-check port ``entry`` needs on this node, or None for none."""
    if entry is None:
        return None
    svc = entry.service
    if (
        svc.type in HEALTH_TYPES
        and svc.external_traffic_policy == "Local"
        and svc.health_check_node_port
    ):
        return svc.health_check_node_port
    return None


def local_ready_endpoints(entry: ServiceEntry, node_name: str) -> int:
    """Ready endpoints of ``entry`` on node ``node_name``, as kube-proxy counts them.

    Distinct addresses over all ports (a pod behind ports 80 and 443 is one
    endpoint); terminating endpoints do not count, so a node left with only
    terminating ones fails the check. Readiness is the picker's: with
    publishNotReadyAddresses every endpoint is ready.
    """
    if not node_name:
        return 0
    pna = entry.service.publish_not_ready_addresses
    return len(
        {
            b.address
            for p in entry.ports
            for b in p.backends
            if b.node_name == node_name and (pna or b.ready)
        }
    )


def health_response(
    key: ServiceKey, local_endpoints: int, *, proxy_healthy: bool = True
) -> tuple[int, Headers, bytes]:
    """kube-proxy's answer for service ``key`` with ``local_endpoints`` on this node."""
    ns, name = key
    status = 200 if local_endpoints > 0 and proxy_healthy else 503
    headers = (
        ("Content-Type", "application/json"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Load-Balancing-Endpoint-Weight", str(local_endpoints)),
    )
    body = {
        "service": {"namespace": ns, "name": name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    }
    # indent="\t": kube-proxy's layout, one tab per level, byte for byte
    return status, headers, json.dumps(body, indent="\t").encode()


class ProxyHealth:
    """The proxy's own health, as kube-proxy's proxier health server keeps it.

    :meth:`queued` when a change arrives for the listeners (kube-proxy's
    ``QueuedUpdate``), :meth:`updated` once every change received so far
    has reached them (``Updated``). Healthy while nothing is pending, or
    while the oldest pending change is younger than ``timeout``; never while
    ``is_draining()`` says the proxy is shutting down. Before the first
    change it is healthy, as kube-proxy is while it starts. ``clock``
    returns seconds since the epoch (injected by tests).
    """

    def __init__(
        self,
        timeout: float = HEALTH_TIMEOUT,
        *,
        is_draining: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout <= 0:
            raise ValueError("ProxyHealth: timeout must be positive")
        self.timeout = timeout
        self.is_draining = is_draining
        self.clock = clock
        #: when the oldest change not yet applied arrived; None when none waits
        self.oldest_pending: float | None = None
        #: when every change received had last reached the listeners; None before that
        self.last_updated: float | None = None

    def queued(self) -> None:
        """A change arrived that the listeners do not show yet."""
        if self.oldest_pending is None:
            self.oldest_pending = self.clock()

    def updated(self) -> None:
        """Every change received so far has reached the listeners."""
        self.oldest_pending = None
        self.last_updated = self.clock()

    def healthy(self) -> bool:
        if self.is_draining():
            return False
        pending = self.oldest_pending
        return pending is None or self.clock() - pending < self.timeout

    def debug_state(self) -> dict[str, Any]:
        """kube-proxy's /healthz fields (RFC 3339 times) beside the verdict, for /debug/state."""
        now = self.clock()
        return {
            "serviceProxyHealthy": self.healthy(),
            "draining": self.is_draining(),
            "lastUpdated": _rfc3339(self.last_updated),
            "oldestPending": _rfc3339(self.oldest_pending),
            "currentTime": _rfc3339(now),
            "healthTimeout": self.timeout,
        }


def _rfc3339(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat().replace("+00:00", "Z")


def parse_request_line(head: bytes) -> str | None:
    """The method of an HTTP/1.x request head, or None when it is not one."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not method or not method.isalpha() or not method.isupper() or not target:
        return None
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        return None
    return method.decode("ascii")


def render(
    status: int, headers: Headers, body: bytes, *, head_only: bool = False, date: str = ""
) -> bytes:
    """One HTTP/1.1 response that closes the connection; ``head_only`` for HEAD."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if date:
        lines.append(f"Date: {date}")
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out if head_only else out + body


def _error(status: int) -> bytes:
    body = f"{status} {_REASONS[status]}".encode()
    return render(status, (("Content-Type", "text/plain; charset=utf-8"),), body)


# -- I/O -------------------------------------------------------------------------------


class _Probe(asyncio.Protocol):
    """One health-check connection: read the head, answer, close."""

    __slots__ = ("_buf", "_check", "_timer", "_transport")

    def __init__(self, check: ServiceHealthCheck) -> None:
        self._check = check
        self._buf: bytearray | None = bytearray()
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._check._probes.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HEAD_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf is None:  # answered; ignore the rest
            return
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            end = buf.find(b"\n\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._answer(_error(431))
            return
        if end > MAX_HEAD:
            self._answer(_error(431))
            return
        method = parse_request_line(bytes(buf[:end]))
        if method is None:
            self._answer(_error(400))
            return
        check = self._check
        status, headers, body = health_response(
            check.key, check.local_endpoints, proxy_healthy=check.proxy.healthy()
        )
        self._answer(
            render(
                status,
                headers,
                body,
                head_only=method == "HEAD",
                date=formatdate(usegmt=True),
            )
        )

    def _answer(self, response: bytes) -> None:
        self._buf = None
        self._transport.write(response)
        self._transport.close()  # after the write buffer is flushed

    def eof_received(self) -> bool:
        return False  # close (an unanswered half-closed request gets nothing)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._check._probes.discard(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class ServiceHealthCheck:
    """The health check of one service: a listener per node address, and its count."""

    def __init__(
        self,
        key: ServiceKey,
        port: int,
        *,
        reuse_port: bool = False,
        proxy: ProxyHealth | None = None,
    ) -> None:
        self.key = key
        self.port = port
        self.reuse_port = reuse_port
        #: the proxy's own health, read by every probe
        self.proxy = proxy or ProxyHealth()
        #: ready endpoints of the service on this node; read by every probe
        self.local_endpoints = 0
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._probes: set[_Probe] = set()

    @property
    def addresses(self) -> list[str]:
        return sorted(self._servers)

    async def listen(self, addresses: Sequence[str]) -> None:
        """Listen on ``port`` at each of ``addresses`` not yet bound; failures are logged."""
        loop = asyncio.get_running_loop()
        for ip in addresses:
            if ip in self._servers:
                continue
            try:
                self._servers[ip] = await loop.create_server(
                    lambda: _Probe(self),
                    ip,
                    self.port,
                    reuse_address=True,
                    reuse_port=self.reuse_port or None,
                )
            except OSError as e:
                log.warning(
                    "Service %s/%s: cannot serve its health check on %s: %s",
                    *self.key, _fmt(ip, self.port), e.strerror or e,
                )  # fmt: skip
                continue
            log.info(
                "serving the health check of Service %s/%s on %s",
                *self.key, _fmt(ip, self.port),
            )  # fmt: skip

    def close(self) -> None:
        """Stop listening and drop the connections in flight."""
        for ip, server in self._servers.items():
            server.close()
            log.info("closed the health check on %s", _fmt(ip, self.port))
        self._servers.clear()
        for probe in list(self._probes):
            probe.abort()


class HealthChecks:
    """The health-check servers of all services, kept in line with the ServiceTable."""

    def __init__(
        self,
        node_name: str,
        addresses: Sequence[str],
        *,
        reuse_port: bool = False,
        proxy: ProxyHealth | None = None,
    ) -> None:
        self.node_name = node_name
        self.addresses = tuple(addresses)
        # with --workers N, every worker serves the same answer on a shared port
        self.reuse_port = reuse_port
        #: the proxy's own health, shared by every service's check
        self.proxy = proxy or ProxyHealth()
        self._checks: dict[ServiceKey, ServiceHealthCheck] = {}

    async def sync(self, key: ServiceKey, entry: ServiceEntry | None) -> None:
        """Open, update or close the health check of service ``key`` (``entry`` None: gone)."""
        port = wanted_port(entry)
        check = self._checks.get(key)
        if check is not None and check.port != port:
            check.close()
            del self._checks[key]
            check = None
        if port is None or entry is None:
            return
        if check is None:
            check = self._checks[key] = ServiceHealthCheck(
                key, port, reuse_port=self.reuse_port, proxy=self.proxy
            )
        check.local_endpoints = local_ready_endpoints(entry, self.node_name)
        await check.listen(self.addresses)

    def close(self) -> None:
        for check in self._checks.values():
            check.close()
        self._checks.clear()

    def debug_state(self) -> list[dict[str, Any]]:
        return [
            {
                "service": f"{c.key[0]}/{c.key[1]}",
                "port": c.port,
                "addresses": c.addresses,
                "localEndpoints": c.local_endpoints,
            }
            for _, c in sorted(self._checks.items())
        ]


def _fmt(ip: str, port: int) -> str:
    return f"{hostport(ip, port)}/TCP"
