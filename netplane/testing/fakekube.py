"""A fake Kubernetes API server speaking the real protocol (h11 on asyncio, TLS by trustme).

Strategy: enough of the API server to exercise a reflector honestly.

- HTTPS with a trustme CA; a request is authorized by a bearer token in
  ``tokens`` or by any client certificate the CA signed (``accept_client_certs``),
  otherwise it gets 401 with a JSON Status.
- One in-memory store per kind and one global, strictly increasing
  resourceVersion; every change is also appended to a history that watches
  replay from. :meth:`compact` forgets history, so a watch from an older
  resourceVersion gets 410 Gone, as an HTTP 410 or as an in-stream ERROR
  event (``gone_style``).
- Lists page with ``limit``/``continue`` and carry the resourceVersion in
  the list metadata; items lack kind/apiVersion as on the real server.
- Watches are chunked streams of JSON lines, closed after ``timeoutSeconds``
  (capped by ``max_watch_seconds``), with BOOKMARKs when asked for.
- Label selectors (``a=b``, ``a!=b``, ``a``) and field selectors
  (``type=``, ``metadata.name=``, ``metadata.namespace=``); an object that
  stops or starts matching shows up as DELETED or ADDED, like the real server.
- ``GET .../NAME`` (or ``.../NAME/status``) reads one object, of any kind.
  ``PATCH .../NAME/status`` with a JSON
  merge patch (RFC 7386) changes only ``status``, honours a
  ``metadata.resourceVersion`` precondition (409 on a mismatch), bumps the
  resourceVersion and emits MODIFIED, as the status subresource does; a
  patch that changes nothing is a no-op without an event.
  :attr:`patch_failures` makes the next PATCHes fail with given statuses.
- Gateway API kinds as CRDs serve them: ReferenceGrant under ``v1beta1``
  and ``v1``. :meth:`unserve` makes kinds answer 404 to everything, as a
  cluster without their CRDs does (open watches end), and :meth:`serve`
  brings them back; :meth:`apply` still stores them meanwhile.
- Test controls: :meth:`apply` / :meth:`delete`, :meth:`restart` (drop every
  open connection), :meth:`outage` (and refuse new ones meanwhile),
  :meth:`stop` then :meth:`start` again (the process gone, connections
  refused, then back on the same port with the same store), ``stop(graceful=True)``
  or :meth:`close_watches` (end open watches as a shutting-down server does:
  with the last chunk, or a clean close between events), :attr:`forbidden`
  (kinds answering 403, as to a service account without the right),
  :attr:`get_failures` (the next lists/watches answer 429/5xx, with a
  ``Retry-After``),
  :meth:`inject` (a raw line into open watches), :meth:`expire_watches` (an
  in-stream 410), :meth:`freeze` (stop delivering to open watches),
  :meth:`bookmark`, and the log of :attr:`requests`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import trustme
import yaml

from netplane.model import Redacted
from netplane.sources.kube import ClusterConfig

# kind -> (group/version, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Service": ("v1", "services", True),
    "EndpointSlice": ("discovery.k8s.io/v1", "endpointslices", True),
    "Ingress": ("networking.k8s.io/v1", "ingresses", True),
    "IngressClass": ("networking.k8s.io/v1", "ingressclasses", False),
    "Secret": ("v1", "secrets", True),
    "Node": ("v1", "nodes", False),
    "Pod": ("v1", "pods", True),
    "Namespace": ("v1", "namespaces", False),
    "GatewayClass": ("gateway.networking.k8s.io/v1", "gatewayclasses", False),
    "Gateway": ("gateway.networking.k8s.io/v1", "gateways", True),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", "httproutes", True),
    "GRPCRoute": ("gateway.networking.k8s.io/v1", "grpcroutes", True),
    "ReferenceGrant": ("gateway.networking.k8s.io/v1beta1", "referencegrants", True),
}
# The Gateway API kinds, which a cluster has only when their CRDs are installed.
GATEWAY_API_KINDS = ("GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "ReferenceGrant")
_BY_PATH = {(gv, plural): kind for kind, (gv, plural, _) in KINDS.items()}
_BY_PATH[("gateway.networking.k8s.io/v1", "referencegrants")] = "ReferenceGrant"  # v1.3 on


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    auth: str | None  # "token", "cert" or None
    status: int = 0
    body: bytes = b""
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("1", "true")


@dataclass
class _Change:
    rv: int
    kind: str
    type: str  # ADDED / MODIFIED / DELETED
    old: dict[str, Any] | None
    new: dict[str, Any]


@dataclass(eq=False)
class _Watcher:
    kind: str
    namespace: str | None
    labels: str
    fields: str
    bookmarks: bool
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    frozen: bool = False
    closing: str = ""  # "end": last chunk, then close; "close": close between events


class _CloseCleanly(Exception):
    """Internal: close this connection cleanly (TLS close_notify, FIN), not with a reset."""


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def match_labels(obj: dict[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def match_fields(obj: dict[str, Any], selector: str) -> bool:
    md = obj.get("metadata") or {}
    values = {
        "type": obj.get("type", ""),
        "metadata.name": md.get("name", ""),
        "metadata.namespace": md.get("namespace", ""),
    }
    for term in filter(None, (t.strip() for t in selector.split(","))):
        neg = "!=" in term
        k, v = term.split("!=" if neg else "=", 1)
        k = k.strip().rstrip("=")
        if k not in values:
            raise ValueError(f"field label not supported: {k}")
        if (values[k] == v.strip()) == neg:
            return False
    return True


class FakeKube:
    """Start with ``await fake.start()`` (or ``async with FakeKube() as fake``)."""

    def __init__(self, *, tokens: tuple[str, ...] = ("test-token",), first_rv: int = 100) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client_cert = self.ca.issue_cert("netplane@example.test", common_name="netplane")
        self.tokens: set[str] = set(tokens)
        self.accept_client_certs = True
        self.gone_style = "http"  # or "event"
        self.max_watch_seconds: float | None = None
        self.bookmarks = False  # send a BOOKMARK when a watch ends at its timeout
        self.requests: list[RequestRecord] = []
        self.patch_failures: list[int] = []  # statuses for the next PATCH requests, in order
        self.rv = first_rv
        self.compacted_rv = 0  # watches from an rv below this get 410
        self.store: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in KINDS}
        self.history: list[_Change] = []
        self.down = False
        self.not_served: set[str] = set()  # kinds answering 404, as without their CRDs
        self.forbidden: set[str] = set()  # kinds answering 403 (RBAC denies them)
        # (status, Retry-After seconds or None) for the next list/watch requests, in order
        self.get_failures: list[tuple[int, int | None]] = []
        self._watchers: set[_Watcher] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0  # chosen by the first start(); later starts reuse it
        self.started = 0  # how many times start() has run

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> FakeKube:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        self.ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        # A restart after stop() comes back on the same port, as an API server does.
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        self.started += 1
        return self

    async def stop(self, *, graceful: bool = False, last_chunk: bool = True) -> None:
        """Stop listening and drop every connection; the store stays for a later start().

        ``graceful``: first end the open watches as a shutting-down API server
        does (see :meth:`close_watches`), then stop.
        """
        if self._server is not None:
            self._server.close()  # no new connections from here on
        if graceful:
            await self.close_watches(last_chunk=last_chunk)
        self.restart()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeKube:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def cluster_config(
        self, token: str | None = "test-token", *, cert: bool = False
    ) -> ClusterConfig:
        return ClusterConfig(
            server=self.url,
            ca_pem=self.ca_pem,
            token=Redacted(token.encode()) if token else None,
            client_cert_pem=self.client_cert.cert_chain_pems[0].bytes() if cert else None,
            client_key_pem=Redacted(self.client_cert.private_key_pem.bytes()) if cert else None,
        )

    def write_kubeconfig(self, path: Path, user: dict[str, Any], *, context: str = "fake") -> Path:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": context,
            "clusters": [
                {
                    "name": "fake",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "fake-user", "user": user}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake-user"}}],
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    # -- store ---------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (kind from ``obj``); returns the stored copy."""
        obj = copy.deepcopy(obj)
        kind = obj["kind"]
        gv, _plural, namespaced = KINDS[kind]
        obj.setdefault("apiVersion", gv)
        md = obj.setdefault("metadata", {})
        if namespaced:
            md.setdefault("namespace", "default")
        key = (md.get("namespace", ""), md["name"])
        old = self.store[kind].get(key)
        self.rv += 1
        md["resourceVersion"] = str(self.rv)
        md["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        self.store[kind][key] = obj
        self._record(_Change(self.rv, kind, "MODIFIED" if old else "ADDED", old, obj))
        return copy.deepcopy(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        old = self.store[kind].pop((namespace, name))
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._record(_Change(self.rv, kind, "DELETED", old, gone))

    def compact(self) -> None:
        """Forget all history: a watch from any rv before now gets 410 Gone."""
        self.history.clear()
        self.compacted_rv = self.rv

    # -- controls ------------------------------------------------------------

    def restart(self) -> None:
        """Drop every open connection at once, as an API server restart does."""
        for w in list(self._writers):
            w.transport.abort()
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        self._writers.clear()
        self._watchers.clear()

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """Drop connections and refuse new ones until the block ends."""
        self.down = True
        self.restart()
        try:
            yield
        finally:
            self.down = False

    async def close_watches(self, *, last_chunk: bool = True, timeout: float = 2.0) -> None:
        """End every open watch cleanly, and close its connection, as a graceful shutdown does.

        ``last_chunk``: the watch ends with its terminating chunk; otherwise the
        connection is closed cleanly between two events without it (what a
        server or proxy that just closes its sockets looks like).
        """
        ending = list(self._watchers)
        for w in ending:
            w.closing = "end" if last_chunk else "close"
            w.queue.put_nowait(None)
        async with asyncio.timeout(timeout):
            while any(w in self._watchers for w in ending):
                await asyncio.sleep(0.005)

    def inject(self, raw_line: bytes, kind: str | None = None) -> int:
        """Put a raw line into open watches (of ``kind``); returns how many."""
        targets = [w for w in self._watchers if kind is None or w.kind == kind]
        for w in targets:
            w.queue.put_nowait(raw_line if raw_line.endswith(b"\n") else raw_line + b"\n")
        return len(targets)

    def unserve(self, *kinds: str) -> None:
        """Make ``kinds`` answer 404 (CRDs not installed) and end their open watches."""
        for kind in kinds:
            if kind not in KINDS:
                raise KeyError(kind)
            self.not_served.add(kind)
        for w in list(self._watchers):
            if w.kind in self.not_served:
                w.queue.put_nowait(None)

    def serve(self, *kinds: str) -> None:
        """Serve ``kinds`` again (CRDs installed), with whatever :meth:`apply` stored."""
        self.not_served.difference_update(kinds)

    def freeze(self) -> None:
        """Open watches stop receiving events (a watcher fallen behind)."""
        for w in self._watchers:
            w.frozen = True

    def expire_watches(self) -> None:
        """Send an in-stream 410 ERROR to every open watch and end it."""
        err = status_body(410, "Expired", "too old resource version")
        for w in list(self._watchers):
            w.queue.put_nowait(_line({"type": "ERROR", "object": err}))
            w.queue.put_nowait(None)

    def watchers(self, kind: str | None = None) -> int:
        return sum(1 for w in self._watchers if kind is None or w.kind == kind)

    async def wait_watchers(
        self, n: int = 1, kind: str | None = None, timeout: float = 5.0
    ) -> None:
        async with asyncio.timeout(timeout):
            while self.watchers(kind) < n:
                await asyncio.sleep(0.005)

    def list_requests(self, kind: str | None = None) -> list[RequestRecord]:
        return [
            r
            for r in self.requests
            if not r.watch and (kind is None or r.path.endswith("/" + KINDS[kind][1]))
        ]

    # -- internals -----------------------------------------------------------

    def _bookmark_line(self, kind: str) -> bytes:
        gv = KINDS[kind][0]
        obj = {"kind": kind, "apiVersion": gv, "metadata": {"resourceVersion": str(self.rv)}}
        return _line({"type": "BOOKMARK", "object": obj})

    def _record(self, ch: _Change) -> None:
        self.history.append(ch)
        for w in list(self._watchers):
            if w.kind == ch.kind and not w.frozen:
                line = self._event_line(w, ch)
                if line:
                    w.queue.put_nowait(line)

    def _visible(self, w: _Watcher, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        ns = (obj.get("metadata") or {}).get("namespace", "")
        if w.namespace and ns != w.namespace:
            return False
        return match_labels(obj, w.labels) and match_fields(obj, w.fields)

    def _event_line(self, w: _Watcher, ch: _Change) -> bytes | None:
        was, now = self._visible(w, ch.old), self._visible(w, ch.new)
        if ch.type == "DELETED":
            etype = "DELETED" if was else None
        elif was and now:
            etype = "MODIFIED"
        elif now:
            etype = "ADDED"
        elif was:
            etype = "DELETED"  # stopped matching the selector
        else:
            etype = None
        return _line({"type": etype, "object": ch.new}) if etype else None

    def _authorize(self, req: h11.Request, writer: asyncio.StreamWriter) -> str | None:
        for name, value in req.headers:
            token = value[7:].decode() if value.startswith(b"Bearer ") else None
            if name == b"authorization" and token in self.tokens:
                return "token"
        if self.accept_client_certs and writer.get_extra_info("peercert"):
            return "cert"
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None  # start_server runs each connection in a task
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        clean = False
        try:
            while True:
                event = await self._next(conn, reader)
                if isinstance(event, h11.Request):
                    body = bytearray()
                    while not isinstance(part := await self._next(conn, reader), h11.EndOfMessage):
                        if isinstance(part, h11.Data):
                            body += part.data
                    await self._serve(conn, reader, writer, event, bytes(body))
                    if conn.our_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
                else:
                    break
        except _CloseCleanly:
            clean = True
        except (ConnectionError, OSError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # server shutdown; asyncio's stream callback would log a cancelled task
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            if clean:  # flush, close_notify, FIN: the client reads a clean end
                writer.close()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()
            writer.transport.abort()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                # Only with a pipelined request, which no client of this fake
                # sends: end the connection, as for any event but a Request.
                return h11.ConnectionClosed()
            conn.receive_data(await reader.read(65536))

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, *events: h11.Event
    ) -> None:
        for ev in events:
            data = conn.send(ev)
            if data:
                writer.write(data)
        await writer.drain()

    async def _json(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        body: dict[str, Any],
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        headers += extra or []
        await self._send(
            conn,
            writer,
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=data),
            h11.EndOfMessage(),
        )

    async def _serve(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: h11.Request,
        body: bytes = b"",
    ) -> None:
        url = urlsplit(req.target.decode())
        query = dict(parse_qsl(url.query))
        rec = RequestRecord(
            req.method.decode(), url.path, query, self._authorize(req, writer), body=body
        )
        self.requests.append(rec)
        if rec.auth is None:
            rec.status = 401
            await self._json(conn, writer, 401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        if rec.method == "PATCH":
            ctype = dict(req.headers).get(b"content-type", b"").decode()
            rec.status, answer = self._patch_status(url.path, ctype, body)
            await self._json(conn, writer, rec.status, answer)
            return
        one = None
        if rec.method == "GET":
            one = self._route_object(url.path)
            if one is None and url.path.endswith("/status"):  # the status subresource
                one = self._route_object(url.path.removesuffix("/status"))
        if one is not None and one[0] not in self.not_served:
            kind, ns, name = one
            obj = self.store[kind].get((ns, name))
            if obj is None:
                rec.status = 404
                msg = f'{KINDS[kind][1]} "{name}" not found'
                await self._json(conn, writer, 404, status_body(404, "NotFound", msg))
            else:
                rec.status = 200
                await self._json(conn, writer, 200, copy.deepcopy(obj))
            return
        route = self._route(url.path)
        if route is None or rec.method != "GET" or route[0] in self.not_served:
            rec.status = 404
            await self._json(
                conn,
                writer,
                404,
                status_body(404, "NotFound", "the server could not find the requested resource"),
            )
            return
        kind, namespace = route
        if self.get_failures:
            rec.status, retry_after = self.get_failures.pop(0)
            reason = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(
                rec.status, "InternalError"
            )
            extra = [("Retry-After", str(retry_after))] if retry_after is not None else []
            err = status_body(rec.status, reason, f"injected failure {rec.status}")
            await self._json(conn, writer, rec.status, err, extra)
            return
        if kind in self.forbidden:
            rec.status = 403
            plural = KINDS[kind][1]
            msg = (
                f'{plural} is forbidden: User "system:serviceaccount:netplane:netplane" '
                f'cannot {"watch" if rec.watch else "list"} resource "{plural}" in API group '
                f'"{KINDS[kind][0].rpartition("/")[0]}" at the cluster scope'
            )
            await self._json(conn, writer, 403, status_body(403, "Forbidden", msg))
            return
        if rec.watch:
            await self._watch(conn, reader, writer, rec, kind, namespace, query)
        else:
            rec.status = 200
            await self._json(conn, writer, 200, self._list(kind, namespace, query))

    def _patch_status(self, path: str, ctype: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """A merge patch of one object's status subresource: (HTTP status, response body)."""
        if self.patch_failures:
            code = self.patch_failures.pop(0)
            reason = {409: "Conflict", 404: "NotFound"}.get(code, "InternalError")
            return code, status_body(code, reason, f"injected failure {code}")
        target = (
            self._route_object(path.removesuffix("/status")) if path.endswith("/status") else None
        )
        if target is None or target[0] in self.not_served:
            msg = "the server could not find the requested resource"
            return 404, status_body(404, "NotFound", msg)
        kind, namespace, name = target
        if ctype.split(";")[0].strip() != "application/merge-patch+json":
            msg = f"the body of the request was in an unknown format: {ctype}"
            return 415, status_body(415, "UnsupportedMediaType", msg)
        try:
            patch = json.loads(body)
        except ValueError:
            return 400, status_body(400, "BadRequest", "the body is not JSON")
        if not isinstance(patch, dict):
            return 400, status_body(400, "BadRequest", "a merge patch must be a JSON object")
        old = self.store[kind].get((namespace, name))
        if old is None:
            plural = KINDS[kind][1]
            return 404, status_body(404, "NotFound", f'{plural} "{name}" not found')
        want_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if want_rv is not None and want_rv != old["metadata"]["resourceVersion"]:
            msg = (
                f'Operation cannot be fulfilled on {KINDS[kind][1]} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again"
            )
            return 409, status_body(409, "Conflict", msg)
        new = copy.deepcopy(old)
        if "status" in patch:  # the status subresource ignores every other field
            patched = merge_patch({"status": old.get("status")}, {"status": patch["status"]})
            if patched.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = patched["status"]
        if new == old:
            return 200, copy.deepcopy(old)
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        self.store[kind][(namespace, name)] = new
        self._record(_Change(self.rv, kind, "MODIFIED", old, new))
        return 200, copy.deepcopy(new)

    def _route_object(self, path: str) -> tuple[str, str, str] | None:
        """``.../namespaces/NS/PLURAL/NAME`` (or ``.../PLURAL/NAME`` cluster-scoped)."""
        collection, _, name = path.rstrip("/").rpartition("/")
        route = self._route(collection) if name else None
        if route is None or (route[1] is None) == KINDS[route[0]][2]:
            return None
        return route[0], route[1] or "", name

    def _route(self, path: str) -> tuple[str, str | None] | None:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            gv, rest = "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        namespace = None
        if len(rest) == 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) != 1 or (gv, rest[0]) not in _BY_PATH:
            return None
        kind = _BY_PATH[(gv, rest[0])]
        if namespace and not KINDS[kind][2]:
            return None
        return kind, namespace

    def _list(self, kind: str, namespace: str | None, query: dict[str, str]) -> dict[str, Any]:
        w = _Watcher(
            kind, namespace, query.get("labelSelector", ""), query.get("fieldSelector", ""), False
        )
        keys = sorted(k for k, o in self.store[kind].items() if self._visible(w, o))
        cont = query.get("continue")
        list_rv = str(self.rv)
        if cont:
            token = json.loads(base64.b64decode(cont))
            list_rv = token["rv"]
            keys = [k for k in keys if k > tuple(token["after"])]
        limit = int(query.get("limit") or 0)
        md: dict[str, Any] = {"resourceVersion": list_rv}
        if limit and len(keys) > limit:
            keys = keys[:limit]
            token = {"rv": list_rv, "after": list(keys[-1])}
            md["continue"] = base64.b64encode(json.dumps(token).encode()).decode()
        items = []
        for k in keys:
            item = copy.deepcopy(self.store[kind][k])
            item.pop("kind", None)
            item.pop("apiVersion", None)
            items.append(item)
        return {"kind": f"{kind}List", "apiVersion": KINDS[kind][0], "metadata": md, "items": items}

    async def _watch(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rec: RequestRecord,
        kind: str,
        namespace: str | None,
        query: dict[str, str],
    ) -> None:
        w = _Watcher(
            kind,
            namespace,
            query.get("labelSelector", ""),
            query.get("fieldSelector", ""),
            query.get("allowWatchBookmarks") == "true",
        )
        since = query.get("resourceVersion", "")
        backlog: list[bytes] = []
        gone = False
        if since in ("", "0"):
            for obj in self.store[kind].values():
                if self._visible(w, obj):
                    backlog.append(_line({"type": "ADDED", "object": obj}))
        elif int(since) < self.compacted_rv:
            gone = True
        else:
            for ch in self.history:
                if ch.kind == kind and ch.rv > int(since):
                    line = self._event_line(w, ch)
                    if line:
                        backlog.append(line)
        if gone and self.gone_style == "http":
            rec.status = 410
            msg = f"too old resource version: {since} ({self.compacted_rv})"
            await self._json(conn, writer, 410, status_body(410, "Expired", msg))
            return
        rec.status = 200
        headers = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
        await self._send(conn, writer, h11.Response(status_code=200, headers=headers))
        if gone:
            err = status_body(410, "Expired", f"too old resource version: {since}")
            await self._send(
                conn,
                writer,
                h11.Data(data=_line({"type": "ERROR", "object": err})),
                h11.EndOfMessage(),
            )
            return
        for line in backlog:
            w.queue.put_nowait(line)
        self._watchers.add(w)
        timeout = float(query.get("timeoutSeconds") or 1800)
        if self.max_watch_seconds is not None:
            timeout = min(timeout, self.max_watch_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        timed_out = False
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    timed_out = True
                    break
                if reader.at_eof():
                    raise ConnectionResetError("client went away")
                try:
                    async with asyncio.timeout(min(remaining, 0.05)):
                        line = await w.queue.get()
                except TimeoutError:
                    continue
                if line is None:
                    break
                await self._send(conn, writer, h11.Data(data=line))
            if w.closing == "close":
                raise _CloseCleanly  # between two events, without the last chunk
            if timed_out and self.bookmarks and w.bookmarks:
                await self._send(conn, writer, h11.Data(data=self._bookmark_line(kind)))
            await self._send(conn, writer, h11.EndOfMessage())
            if w.closing == "end":
                raise _CloseCleanly
        finally:
            self._watchers.discard(w)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


async def collect(
    it: AsyncIterator[Any], until: Callable[[list[Any]], bool], timeout: float = 5.0
) -> list[Any]:
    """Pull items from ``it`` into a list until ``until(items)`` holds (bounded by ``timeout``)."""
    out: list[Any] = []
    async with asyncio.timeout(timeout):
        while not until(out):
            out.append(await anext(it))
    return out


class Recorder:
    """Runs a source's ``run()`` in a task and records every event it yields."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.events: list[Any] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        async for ev in self.source.run():
            self.events.append(ev)

    async def wait_for(self, pred: Callable[[list[Any]], bool], timeout: float = 5.0) -> list[Any]:
        """Wait until ``pred(events)`` holds; fails the test after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while not pred(self.events):
                    if self.task is not None and self.task.done():
                        self.task.result()  # re-raise a crash
                        raise AssertionError("source ended")
                    await asyncio.sleep(0.005)
        except TimeoutError:
            raise AssertionError(f"timed out; events so far: {self.events!r}") from None
        return self.events

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
