"""What ``netplane explain TARGET`` was asked about: a URL, a service address, or a DNS name.

- ``http://HOST[:PORT]/PATH?QUERY`` or ``https://...``: an HTTP request;
  ``HOST/PATH`` without a scheme is read as ``http://HOST/PATH``.
- ``IP:PORT[/tcp|udp|sctp]`` (``[IPv6]:PORT`` for IPv6): a service port's
  frontend; without a protocol, TCP and UDP are both looked at.
- An IP address alone: its PTR name. Anything else: a DNS name, with an
  optional record type (A by default).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from netplane.errors import ConfigError

PROTOCOLS = ("TCP", "UDP", "SCTP")
DNS_TYPES = ("A", "AAAA", "SRV", "PTR", "CNAME", "TXT", "NS", "SOA", "ANY")

_L4 = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d+)(?:/(?P<proto>\w+))?$"
)


class TargetError(ConfigError):
    """A target that is none of the three kinds; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class HttpTarget:
    url: str
    https: bool  # the scheme, or --tls
    host: str  # the Host header (name, and port when the URL has one)
    name: str  # the host name, lower case, without the port
    port: int  # the URL's port, else 80 or 443
    target: str  # path and query, as the request line carries them

    kind = "http"


@dataclass(frozen=True, slots=True)
class L4Target:
    address: str  # normalized (an IPv4-mapped IPv6 address as IPv4)
    port: int
    protocols: tuple[str, ...]  # one, or TCP and UDP when none was given

    kind = "l4"

    @property
    def text(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        proto = self.protocols[0].lower() if len(self.protocols) == 1 else "tcp|udp"
        return f"{host}:{self.port}/{proto}"


@dataclass(frozen=True, slots=True)
class DnsTarget:
    name: str  # without the trailing dot, as asked
    qtype: str  # A, AAAA, SRV, PTR ...
    address: str = ""  # for a PTR asked by address: the address

    kind = "dns"


Target = HttpTarget | L4Target | DnsTarget


def parse_target(text: str, *, qtype: str | None = None, tls: bool = False) -> Target:
    """The target ``text`` names; ``qtype`` is the record type of a DNS name."""
    text = text.strip()
    if not text:
        raise TargetError("explain: give a URL, IP:PORT[/tcp|udp] or a DNS name")
    lower = text.lower()
    if lower.startswith(("http://", "https://")):
        return _http(text, tls)
    m = _L4.match(text)
    if m is not None:
        return _l4(m, text)
    ip = _address(text)
    if ip is not None:
        if qtype is not None and qtype.upper() != "PTR":
            raise TargetError(
                f"explain: {text} is an address: ask for its PTR name, or give a name"
            )
        return DnsTarget(ipaddress.ip_address(ip).reverse_pointer, "PTR", ip)
    if "/" in text:
        return _http("http://" + text, tls)
    t = (qtype or "A").upper()
    if t not in DNS_TYPES:
        raise TargetError(f"explain: record type {qtype!r} is not one of {', '.join(DNS_TYPES)}")
    if " " in text or ".." in text:
        raise TargetError(f"explain: {text!r} is not a URL, an IP:PORT or a DNS name")
    return DnsTarget(text.rstrip("."), t)


def _http(url: str, tls: bool) -> HttpTarget:
    parts = urlsplit(url)
    if not parts.hostname:
        raise TargetError(f"explain: {url!r} has no host")
    https = parts.scheme.lower() == "https" or tls
    try:
        port = parts.port
    except ValueError:
        raise TargetError(f"explain: {url!r} has a bad port") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = parts.netloc.rpartition("@")[2]
    return HttpTarget(
        url=url,
        https=https,
        host=netloc,
        name=parts.hostname.lower().rstrip("."),
        port=port if port is not None else (443 if https else 80),
        target=target,
    )


def _l4(m: re.Match[str], text: str) -> L4Target:
    raw = m.group("v6") or m.group("v4") or ""
    ip = _address(raw)
    if ip is None:
        raise TargetError(f"explain: {raw!r} in {text!r} is not an IP address")
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise TargetError(f"explain: port {port} is out of range")
    proto = m.group("proto")
    if proto is None:
        return L4Target(ip, port, ("TCP", "UDP"))
    if proto.upper() not in PROTOCOLS:
        raise TargetError(f"explain: protocol {proto!r} is not one of tcp, udp, sctp")
    return L4Target(ip, port, (proto.upper(),))


def _address(text: str) -> str | None:
    """The address ``text`` is, canonical (IPv4-mapped IPv6 as IPv4); None if it is none."""
    try:
        addr = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)
