"""Gateway API filters on requests and responses, sans-IO.

The route table decides which filters apply (``GatewayExtras`` in a
``Forward``); the exchange calls :func:`modify_request` before the request
goes upstream and :func:`modify_response` on the response head. Redirect
locations and path rewrites are pure string functions the route table calls.

Header names compare case-insensitively. ``set`` replaces every field of
the name, ``add`` appends one more field (a recipient reads repeated fields
as one comma-joined list, RFC 9110 §5.3), ``remove`` drops them. The fields
the proxy itself owns (framing, hop-by-hop, ``X-Forwarded-*``) are not
touched by these filters; ``Host`` is, through ``set`` or URLRewrite.
"""

from __future__ import annotations

from dataclasses import dataclass

from netplane.ingress.http_head import SPECIAL_REQUEST_FIELDS, RequestHead, ResponseHead
from netplane.ingress.paths import prefix_key

from netplane.model.gateway import HeaderModifier, PathModifier


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """One header modifier, as bytes: lower-cased names for ``remove`` and lookups."""

    set: tuple[tuple[bytes, bytes], ...] = ()
    add: tuple[tuple[bytes, bytes], ...] = ()
    remove: frozenset[bytes] = frozenset()

    @classmethod
    def of(cls, m: HeaderModifier) -> HeaderOps:
        return cls(
            tuple((n.encode(), v.encode()) for n, v in m.set),
            tuple((n.encode(), v.encode()) for n, v in m.add),
            frozenset(n.lower().encode() for n in m.remove),
        )


@dataclass(frozen=True, slots=True)
class GatewayExtras:
    """What a Gateway API rule adds to a Forward beyond routing."""

    request_headers: tuple[HeaderOps, ...] = ()
    response_headers: tuple[HeaderOps, ...] = ()
    host: bytes | None = None  # URLRewrite hostname: the Host sent upstream
    request_timeout: float = 0.0  # timeouts.request (0: none): 504 when it passes
    #: endpoints to send a copy of the request to, (ip, port): the response is discarded
    mirrors: tuple[tuple[str, int], ...] = ()


def modify_request(
    head: RequestHead, ops: tuple[HeaderOps, ...], host: bytes | None
) -> RequestHead:
    """A copy of ``head`` with the modifiers applied in order, and Host rewritten."""
    new = head.copy()
    for op in ops:
        names = {n.lower() for n, _ in op.set} | op.remove
        if names:
            new.lines = [ln for ln in new.lines if ln.split(b":", 1)[0].lower() not in names]
            for n in names:
                if n not in SPECIAL_REQUEST_FIELDS:
                    new.headers.pop(n, None)
        for n, v in op.set:
            ln = n.lower()
            if ln == b"host":
                new.host = v
            elif ln not in SPECIAL_REQUEST_FIELDS:
                new.lines.append(n + b": " + v + b"\r\n")
                new.headers[ln] = v
        for n, v in op.add:
            ln = n.lower()
            if ln in SPECIAL_REQUEST_FIELDS:
                continue
            new.lines.append(n + b": " + v + b"\r\n")
            old = new.headers.get(ln)
            new.headers[ln] = v if old is None else old + b", " + v
    if host is not None:
        new.host = host
    return new


# Response fields the proxy frames itself: a filter that names them is ignored for them.
_RESPONSE_OWN = frozenset(
    (b"connection", b"transfer-encoding", b"content-length", b"keep-alive", b"upgrade", b"trailer")
)


def modify_response(head: ResponseHead, ops: tuple[HeaderOps, ...]) -> ResponseHead:
    """A new response head with the modifiers applied in order (the original is shared)."""
    lines = head.fields.split(b"\r\n")
    kept = [ln for ln in lines if ln]
    for op in ops:
        names = ({n.lower() for n, _ in op.set} | op.remove) - _RESPONSE_OWN
        if names:
            kept = [ln for ln in kept if ln.split(b":", 1)[0].strip().lower() not in names]
        kept.extend(n + b": " + v for n, v in op.set if n.lower() not in _RESPONSE_OWN)
        kept.extend(n + b": " + v for n, v in op.add if n.lower() not in _RESPONSE_OWN)
    # Content-Length stayed in ``fields``; Transfer-Encoding was cut and is put back.
    raw = b"HTTP/1.1 %d %s\r\n" % (head.status, head.reason)
    raw += b"".join(ln + b"\r\n" for ln in kept)
    if head.chunked:
        raw += b"Transfer-Encoding: chunked\r\n"
    return ResponseHead(raw)


def split_target(target: str) -> tuple[str, str]:
    """(path, "?query" or "") of a request target."""
    q = target.find("?")
    return (target, "") if q < 0 else (target[:q], target[q:])


def rewrite_path(mod: PathModifier, path: str, matched_prefix: str | None) -> str:
    """The path after a ReplaceFullPath or ReplacePrefixMatch modifier.

    ReplacePrefixMatch replaces the matched PathPrefix, element-wise: with
    prefix ``/foo`` and replacement ``/bar``, ``/foo/x`` becomes ``/bar/x``
    and ``/foo`` becomes ``/bar``; a replacement of ``/`` gives ``/x``.
    Without a prefix match (an Exact or regex match) the whole path is the
    prefix.
    """
    if mod.type == "ReplaceFullPath":
        return mod.value
    prefix = prefix_key(matched_prefix if matched_prefix is not None else path)
    rest = path[len(prefix) :] if path.startswith(prefix) else ""
    repl = mod.value.rstrip("/")
    if not rest:
        return repl or "/"
    if not rest.startswith("/"):
        rest = "/" + rest
    return repl + rest


def redirect_location(
    *,
    scheme: str,
    host: str,
    port: int | None,
    path: str,
    query: str,
    listener_port: int,
    scheme_set: bool,
) -> bytes:
    """The Location of a RequestRedirect (the request's values already replaced).

    ``port`` None: derived as the specification says, the scheme's well-known
    port when the filter sets a scheme (``scheme_set``), else the listener's
    port; a well-known port for the scheme is left out of the Location.
    """
    if port is None:
        port = (443 if scheme == "https" else 80) if scheme_set else listener_port
    default = 443 if scheme == "https" else 80
    authority = host if port == default else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        authority = f"[{host}]" if port == default else f"[{host}]:{port}"
    return f"{scheme}://{authority}{path}{query}".encode("latin-1", "replace")
