"""Host and path matching primitives for Ingress v1 rules (sans-IO).

Hosts: the Host header is lower-cased and its port dropped; a rule host
``*.foo.com`` matches exactly one more label (``bar.foo.com``), never
``foo.com`` or ``a.bar.foo.com``.

Paths, by the Ingress v1 specification:

- ``Exact``: the request path equals the rule path, byte for byte;
- ``Prefix``: element-wise on ``/``-separated segments, a trailing slash on
  either side ignored: ``/foo`` and ``/foo/`` both match ``/foo``,
  ``/foo/`` and ``/foo/bar``, never ``/foobar``;
- ``ImplementationSpecific``: as Prefix, or under ``use-regex`` a regular
  expression anchored at the start and matched case-insensitively (what
  ingress-nginx's ``location ~* "^..."`` does).

Matching runs on the normalized path, as nginx does before choosing a
location: percent-escapes decoded, dot segments resolved, repeated slashes
merged. Without that ``/public/../admin`` would escape an allowlist on
``/admin``. The common path needs none of it, so :func:`request_path` only
walks the slow route when the path has ``%``, ``//`` or ``/.`` in it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote


def split_host(host: str) -> str:
    """The Host header's name: lower-cased, port and a trailing dot removed."""
    h = host.lower()
    if h.startswith("["):  # an IPv6 literal, "[::1]:8080"
        end = h.find("]")
        return h[: end + 1] if end > 0 else h
    colon = h.rfind(":")
    if colon >= 0:
        h = h[:colon]
    if h.endswith("."):
        h = h[:-1]
    return h


def wildcard_parent(host: str) -> str | None:
    """The part a ``*.`` rule would name for ``host`` ("a.b.c" -> "b.c"), or None."""
    dot = host.find(".")
    if dot <= 0 or dot == len(host) - 1:
        return None
    return host[dot + 1 :]


def normalize(path: str) -> str:
    """Decode escapes, resolve ``.``/``..`` segments and merge slashes (RFC 3986 5.2.4)."""
    p = unquote(path, errors="surrogateescape") if "%" in path else path
    out: list[str] = []
    for seg in p.split("/")[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg not in (".", ""):
            out.append(seg)
    tail = "/" if p.endswith(("/", "/.", "/..")) and out else ""
    return "/" + "/".join(out) + tail


def request_path(target: str) -> str:
    """The path of a request target, without its query, normalized for matching."""
    q = target.find("?")
    p = target if q < 0 else target[:q]
    if not p.startswith("/"):
        # An absolute-form target ("http://host/path") or garbage: take the path part.
        scheme = p.find("://")
        if scheme < 0:
            return "/"
        slash = p.find("/", scheme + 3)
        p = p[slash:] if slash >= 0 else "/"
    if "%" in p or "//" in p or "/." in p:
        return normalize(p)
    return p


def prefix_key(path: str) -> str:
    """A Prefix rule path without its trailing slashes ("/" becomes "")."""
    return path.rstrip("/")


def prefix_matches(key: str, path: str) -> bool:
    """Whether a request path matches the Prefix rule whose :func:`prefix_key` is ``key``."""
    return path == key or path.startswith(key + "/")


def compile_regex(path: str) -> re.Pattern[str]:
    """An ImplementationSpecific path under use-regex (raises re.error when invalid)."""
    return re.compile(path if path.startswith("^") else "^" + path, re.IGNORECASE)
