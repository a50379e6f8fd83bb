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

Layers:

- Sans-IO: :func:`wanted_port` (does a service get a health check, on which
  port), :func:`local_ready_endpoints` (kube-proxy's count: distinct
  addresses of ready endpoints on this node, over all ports),
  :func:`health_response` (service and count to status, headers, body),
  :func:`parse_request_line` and :func:`render`.
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
import json
import logging
from collections.abc import Sequence
from email.utils import formatdate
from typing import Any

from netplane.addresses import hostport
from netplane.service_table import ServiceEntry, ServiceKey

log = logging.getLogger("netplane.l4.healthcheck")

#: Bytes of request head read at most; more is answered 431.
MAX_HEAD = 8192
#: Seconds a client has to send its request head before it is closed.
HEAD_TIMEOUT = 10.0

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
    body = (
        "{\n"
        '\t"service": {\n'
        f'\t\t"namespace": {json.dumps(ns)},\n'
        f'\t\t"name": {json.dumps(name)}\n'
        "\t},\n"
        f'\t"localEndpoints": {local_endpoints},\n'
        f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}\n'
        "}"
    )
    return status, headers, body.encode()


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
        status, headers, body = health_response(self._check.key, self._check.local_endpoints)
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

    def __init__(self, key: ServiceKey, port: int, *, reuse_port: bool = False) -> None:
        self.key = key
        self.port = port
        self.reuse_port = reuse_port
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
        self, node_name: str, addresses: Sequence[str], *, reuse_port: bool = False
    ) -> None:
        self.node_name = node_name
        self.addresses = tuple(addresses)
        # with --workers N, every worker serves the same answer on a shared port
        self.reuse_port = reuse_port
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
            check = self._checks[key] = ServiceHealthCheck(key, port, reuse_port=self.reuse_port)
        check.local_endpoints = local_ready_endpoints(entry, self.node_name)
        await check.listen(self.addresses)

    def close(self) -> None:
        for check in self._checks.values():
            check.close()
        self._checks.clear()

    def get(self, key: ServiceKey) -> ServiceHealthCheck | None:
        return self._checks.get(key)

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
