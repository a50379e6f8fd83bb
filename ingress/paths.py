r"""Host and path matching primitives for Ingress v1 rules (sans-IO).

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
``/admin``. The request goes upstream as the client sent it, so what
matters is how the *backend* reads the path, and backends disagree:

- Tomcat and Spring drop ``;`` parameters from every segment:
  ``/admin;x=1/x`` and ``/x/..;/admin/x`` are ``/admin/x`` to them, and a
  literal segment to nginx or Go (``%3B`` counts as ``;`` too, for a server
  that decodes before it drops them);
- IIS-style servers read ``\`` (raw or ``%5C``) as ``/``; others as data;
- nginx and Go decode ``%2F`` into a separator; RFC 3986 readers (and
  Apache's ``AllowEncodedSlashes NoDecode``) keep it as data in a segment;
- a server that decodes twice reads ``%252F`` as ``/``.

The choice, and why: a path is routed only when every one of those
readings reaches the same location; when they reach different ones (or
one of them reaches none), :func:`readings` gives them all and the route
table answers 400. Routing on one reading, however strict, leaves the
others open: a more specific rule is not always the stricter one (a
``/`` behind an allowlist beside an open ``/public``). Refusing every
``;``, ``%2F`` or ``%5C`` outright, as Envoy's
``path_with_escaped_slashes_action: REJECT_REQUEST`` and Spring
Security's ``StrictHttpFirewall`` do, would also refuse what real
applications send (``;jsessionid=`` from servlet URL rewriting, GitLab's
``/api/v4/projects/group%2Fproject``), which every reading routes the
same way and so stays served. A path no reading can be trusted with is
refused whatever the rules: a control byte (``%00``, CR, LF, DEL, C1),
or escapes that are not valid UTF-8, which covers overlong forms such as
``%C0%AF`` and ``%E0%80%AF`` ("/") or ``%C0%AE`` ("."), decoded to
separators by lenient decoders and rejected by strict ones. So is a path
that trips three of the four quirks at once: no application needs that,
and it bounds the work per path at four readings.

The common path has none of ``%``, ``;``, ``\``, ``//`` or ``/.``, so
:func:`request_paths` gives it back as it is without walking the slow route;
the route table caches its decision per target.
"""

from __future__ import annotations

import itertools
import re
from urllib.parse import unquote_to_bytes


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


# Raw control bytes and escaped C0 controls and DEL: refused before decoding,
# which also keeps the placeholders below unambiguous.
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]|%(?:[01][0-9a-fA-F]|7[fF])")
# C1 controls (NEL is a line break to some): refused after decoding.
_C1 = re.compile("[\x80-\x9f]")
# The escapes that some reading treats apart from the rest ("/", "\", ";",
# "%"), decoded to placeholder controls, so the path is decoded once and each
# reading is a few substitutions on the result.
_MARKS = (
    (re.compile(rb"%2[fF]"), b"\x01"),
    (re.compile(rb"%5[cC]"), b"\x02"),
    (re.compile(rb"%3[bB]"), b"\x03"),
    (re.compile(rb"%25"), b"\x04"),
)
_UNMARK = str.maketrans({"\x01": "/", "\x02": "\\", "\x03": ";", "\x04": "%"})
_DOUBLE = re.compile("\x04[0-9A-Fa-f]{2}")
# A ; parameter (raw or escaped) up to the end of its segment.
_PARAM = re.compile("[;\x03][^/]*")
_SLASHES = re.compile("//+")
# Paths that trip more quirks than this are refused rather than read in
# every combination: no application needs ;, \, %2F and double escapes
# together, and it bounds the work per path at four readings.
_MAX_QUIRKS = 2


def _decode(raw: bytes) -> str | None:
    """``raw`` percent-decoded, with the special escapes as placeholders; None if unsafe."""
    if _CONTROL_BYTES.search(raw) is not None:
        return None
    if b"%" in raw:
        for escape, mark in _MARKS:
            raw = escape.sub(mark, raw)
        raw = unquote_to_bytes(raw)
    try:
        text = raw.decode()
    except UnicodeDecodeError:  # overlong forms, lone continuation bytes, Latin-1
        return None
    return None if _C1.search(text) is not None else text


def _reading(text: str, *, split_escaped: bool, params: bool, backslash: bool) -> str:
    r"""One reading of a path from :func:`_decode`, normalized.

    ``split_escaped``: ``%2F`` separates segments (else it is a ``/`` inside
    one, written back as ``%2F``); ``params``: each segment ends at its first
    ``;`` or ``%3B``; ``backslash``: ``\`` and ``%5C`` separate segments.
    """
    t = text.replace("\x01", "/" if split_escaped else "%2F")
    if backslash:
        t = t.replace("\\", "/").replace("\x02", "/")
    if params:
        t = _PARAM.sub("", t)
    t = t.translate(_UNMARK)
    if "/." not in t:
        return _SLASHES.sub("/", t) if "//" in t else t
    out: list[str] = []
    segments = t.split("/")
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg and seg != ".":
            out.append(seg)
    tail = "/" if segments[-1] in ("", ".", "..") and out else ""
    return "/" + "/".join(out) + tail


def readings(path: str) -> tuple[str, ...] | None:
    """Every distinct normalized reading of ``path``, canonical first; None: refuse it.

    The canonical reading is nginx's: escapes decoded (``%2F`` to a
    separator), dot segments resolved, slashes merged. The others are those
    of the module docstring, each combination of the quirks the path can
    trigger. ``path`` starts with ``/`` and has no query.
    """
    text = _decode(path.encode("utf-8", "surrogatepass"))
    if text is None:
        return None
    texts = [text]
    if _DOUBLE.search(text) is not None:
        # What a server that decodes twice sees: the path decoded once, decoded.
        again = _decode(text.translate(_UNMARK).encode("utf-8", "surrogatepass"))
        if again is None:
            return None
        texts.append(again)
    probe = "/".join(texts)
    split = "\x01" in probe
    params = ";" in probe or "\x03" in probe
    backslash = "\\" in probe or "\x02" in probe
    if split + params + backslash + (len(texts) - 1) > _MAX_QUIRKS:
        return None
    out: list[str] = []
    for t, s, p, b in itertools.product(
        texts,
        (True, False) if split else (True,),
        (False, True) if params else (False,),
        (False, True) if backslash else (False,),
    ):
        r = _reading(t, split_escaped=s, params=p, backslash=b)
        if r not in out:
            out.append(r)
    return tuple(out)


def normalize(path: str) -> str:
    """The canonical reading of ``path`` (see :func:`readings`); ValueError if refused."""
    r = readings(path)
    if r is None:
        raise ValueError(f"unreadable request path {path!r}")
    return r[0]


def request_paths(target: str) -> tuple[str, ...] | None:
    """:func:`readings` of a request target's path (query dropped); None: refuse it."""
    q = target.find("?")
    p = target if q < 0 else target[:q]
    if not p.startswith("/"):
        # An absolute-form target ("http://host/path") or garbage: take the path part.
        scheme = p.find("://")
        if scheme < 0:
            return ("/",)
        slash = p.find("/", scheme + 3)
        p = p[slash:] if slash >= 0 else "/"
    if (
        "%" in p
        or ";" in p
        or "\\" in p
        or "//" in p
        or "/." in p
        or not (p.isascii() and p.isprintable())
    ):
        return readings(p)
    return (p,)


def prefix_key(path: str) -> str:
    """A Prefix rule path without its trailing slashes ("/" becomes "")."""
    return path.rstrip("/")


def compile_regex(path: str) -> re.Pattern[str]:
    """An ImplementationSpecific path under use-regex (raises re.error when invalid)."""
    return re.compile(path if path.startswith("^") else "^" + path, re.IGNORECASE)
