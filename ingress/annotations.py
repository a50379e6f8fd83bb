"""ingress-nginx annotations read from an Ingress, parsed once into plain data (sans-IO).

Every name is read under two prefixes, ``netplane.io/`` first, then
``nginx.ingress.kubernetes.io/``, so Ingresses written for ingress-nginx work
unchanged. An annotation this module does not know is ignored. A known one
with a bad value keeps its default and yields a problem string naming the
annotation and the value; the route table logs it once, naming the Ingress,
and the rest of the Ingress still serves.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

PREFIXES = ("netplane.io/", "nginx.ingress.kubernetes.io/")
DEFAULT_BODY_LIMIT = 1024 * 1024
DEFAULT_COOKIE_NAME = "INGRESSCOOKIE"

# Every name read, for the README and for tests.
NAMES = (
    "rewrite-target",
    "use-regex",
    "ssl-redirect",
    "force-ssl-redirect",
    "proxy-body-size",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "backend-protocol",
    "affinity",
    "session-cookie-name",
    "session-cookie-max-age",
    "session-cookie-path",
    "canary",
    "canary-weight",
    "canary-by-header",
    "canary-by-header-value",
    "whitelist-source-range",
    "allowlist-source-range",
    "permanent-redirect",
    "temporal-redirect",
    "app-root",
)

# nginx sizes: a number with an optional k/m/g suffix (powers of 1024).
_SIZE = re.compile(r"^(\d+)([kKmMgG]?)$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# nginx times: seconds, optionally written with an "s" or an "ms" suffix.
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)?$")
# RFC 6265 cookie-name is an RFC 7230 token.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Strconv.ParseBool, which ingress-nginx uses.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_HEADER_NAME = _TOKEN


@dataclass(frozen=True, slots=True)
class Affinity:
    """Cookie session affinity: the cookie's name, Max-Age and Path (None: the location's)."""

    name: str = DEFAULT_COOKIE_NAME
    max_age: int | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class Canary:
    """What sends a request to a canary Ingress's backend instead of the main one."""

    weight: int = 0  # percent of the requests that no header decided
    header: bytes | None = None  # lower-case header name
    header_value: bytes | None = None  # None: "always" / "never" decide


@dataclass(frozen=True, slots=True)
class Annotations:
    """The per-Ingress settings read from annotations, defaults as ingress-nginx's."""

    rewrite_target: str | None = None
    use_regex: bool = False
    ssl_redirect: bool = True
    force_ssl_redirect: bool = False
    body_limit: int | None = DEFAULT_BODY_LIMIT
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    send_timeout: float = 60.0
    backend_https: bool = False
    backend_h2: bool = False  # GRPC (h2c) or GRPCS (h2 over TLS)
    affinity: Affinity | None = None
    canary: Canary | None = None  # set only when ``canary: "true"``
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    permanent_redirect: str | None = None
    temporal_redirect: str | None = None
    app_root: str | None = None
    problems: tuple[str, ...] = field(default=(), compare=False)


class _Reader:
    """Looks names up under both prefixes and collects problems."""

    def __init__(self, annotations: Mapping[str, str]) -> None:
        self.annotations = annotations
        self.problems: list[str] = []

    def get(self, name: str) -> tuple[str, str] | None:
        for prefix in PREFIXES:
            full = prefix + name
            value = self.annotations.get(full)
            if value is not None:
                return full, value.strip()
        return None

    def bad(self, full: str, value: str, why: str) -> None:
        self.problems.append(f"annotation {full}: {value!r} {why}")

    def bool(self, name: str, default: bool) -> bool:
        got = self.get(name)
        if got is None:
            return default
        full, value = got
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        self.bad(full, value, "is not a boolean (true or false)")
        return default

    def size(self, name: str, default: int | None) -> int | None:
        got = self.get(name)
        if got is None:
            return default
        full, value = got
        m = _SIZE.match(value)
        if m is None:
            self.bad(full, value, "is not a size (like 8k, 1m, 1g, or 0 for unlimited)")
            return default
        n = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        return None if n == 0 else n

    def seconds(self, name: str, default: float) -> float:
        got = self.get(name)
        if got is None:
            return default
        full, value = got
        m = _TIME.match(value)
        n = 0.0
        if m is not None:
            n = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
        if n <= 0:
            self.bad(full, value, "is not a positive number of seconds")
            return default
        return n

    def text(self, name: str, *, must_start: tuple[str, ...] = ()) -> str | None:
        got = self.get(name)
        if got is None:
            return None
        full, value = got
        if not value or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            self.bad(full, value, "must be non-empty, without spaces or control characters")
            return None
        if must_start and not value.startswith(must_start):
            self.bad(full, value, f"must start with {' or '.join(must_start)}")
            return None
        return value


def _allow(r: _Reader) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    got = r.get("allowlist-source-range") or r.get("whitelist-source-range")
    if got is None:
        return None
    full, value = got
    nets = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            r.bad(full, value, f"has {part!r}, which is not an address or CIDR")
            return None
    if not nets:
        r.bad(full, value, "names no address or CIDR")
        return None
    return tuple(nets)


def _affinity(r: _Reader) -> Affinity | None:
    got = r.get("affinity")
    if got is None:
        return None
    full, value = got
    if value != "cookie":
        r.bad(full, value, "is not supported (only cookie)")
        return None
    name = DEFAULT_COOKIE_NAME
    got = r.get("session-cookie-name")
    if got is not None:
        if _TOKEN.match(got[1]):
            name = got[1]
        else:
            r.bad(*got, "is not a valid cookie name")
    max_age = None
    got = r.get("session-cookie-max-age")
    if got is not None:
        if got[1].isdigit():
            max_age = int(got[1])
        else:
            r.bad(*got, "is not a whole number of seconds")
    path = r.text("session-cookie-path", must_start=("/",))
    return Affinity(name, max_age, path)


def _canary(r: _Reader) -> Canary | None:
    if not r.bool("canary", False):
        return None
    weight = 0
    got = r.get("canary-weight")
    if got is not None:
        if got[1].isdigit() and 0 <= int(got[1]) <= 100:
            weight = int(got[1])
        else:
            r.bad(*got, "is not a whole number from 0 to 100")
    header = value = None
    got = r.get("canary-by-header")
    if got is not None:
        if _HEADER_NAME.match(got[1]):
            header = got[1].lower().encode("latin-1")
        else:
            r.bad(*got, "is not a valid header name")
    got = r.get("canary-by-header-value")
    if got is not None and header is not None:
        if got[1] and all(32 <= ord(c) < 127 for c in got[1]):
            value = got[1].encode("latin-1")
        else:
            r.bad(*got, "is not a printable ASCII header value")
    return Canary(weight, header, value)


_BACKEND_PROTOCOLS = {
    "HTTP": (False, False),
    "HTTPS": (True, False),
    "GRPC": (False, True),
    "GRPCS": (True, True),
}


def _backend_protocol(r: _Reader) -> tuple[bool, bool]:
    """(TLS, HTTP/2) to the endpoints, from ``backend-protocol``."""
    got = r.get("backend-protocol")
    if got is None:
        return False, False
    full, value = got
    if value.upper() in _BACKEND_PROTOCOLS:
        return _BACKEND_PROTOCOLS[value.upper()]
    r.bad(full, value, "is not supported (HTTP, HTTPS, GRPC or GRPCS)")
    return False, False


def parse_annotations(annotations: Mapping[str, str]) -> Annotations:
    """The settings an Ingress's annotations ask for; bad values in ``.problems``."""
    if not any(k.startswith(PREFIXES) for k in annotations):
        return _DEFAULT
    r = _Reader(annotations)
    rewrite = r.text("rewrite-target")
    backend_https, backend_h2 = _backend_protocol(r)
    out = Annotations(
        rewrite_target=rewrite,
        use_regex=r.bool("use-regex", False),
        ssl_redirect=r.bool("ssl-redirect", True),
        force_ssl_redirect=r.bool("force-ssl-redirect", False),
        body_limit=r.size("proxy-body-size", DEFAULT_BODY_LIMIT),
        connect_timeout=r.seconds("proxy-connect-timeout", 5.0),
        read_timeout=r.seconds("proxy-read-timeout", 60.0),
        send_timeout=r.seconds("proxy-send-timeout", 60.0),
        backend_https=backend_https,
        backend_h2=backend_h2,
        affinity=_affinity(r),
        canary=_canary(r),
        allow=_allow(r),
        permanent_redirect=r.text("permanent-redirect"),
        temporal_redirect=r.text("temporal-redirect"),
        app_root=r.text("app-root", must_start=("/",)),
        problems=tuple(r.problems),
    )
    return out


_DEFAULT = Annotations()
