"""PROXY protocol version 2: the binary header that tells an endpoint who the client was.

Sans-IO: bytes in, bytes out. The layout is haproxy's proxy-protocol.txt,
section 2.2::

    12 bytes  signature  \\r\\n\\r\\n\\0\\r\\nQUIT\\n
     1 byte   version (high nibble, 2) | command (low nibble: 0 LOCAL, 1 PROXY)
     1 byte   family (high nibble: 1 INET, 2 INET6, 3 UNIX)
              | transport (low nibble: 1 STREAM, 2 DGRAM)
     2 bytes  length of what follows, network order
    then for INET  (length >= 12): src addr(4)  dst addr(4)  src port(2) dst port(2)
         for INET6 (length >= 36): src addr(16) dst addr(16) src port(2) dst port(2)
    then optional TLVs up to the given length.

:func:`encode_v2` writes a PROXY command with no TLVs. The header has one
family for both addresses; when ``src`` and ``dst`` differ in family (an
IPv4 client against an IPv6 local address, which only odd NAT or
dual-stack setups produce), the IPv4 one is written as its IPv4-mapped IPv6
form (``::ffff:a.b.c.d``) under INET6, so the connection still gets a
header instead of being refused. :func:`decode_v2` maps such addresses
back to plain IPv4.

:func:`decode_v2` reads one header from the start of a buffer, returning
None while it is incomplete, so a receiver can feed it as bytes arrive.
TLVs are skipped (their bytes count in ``header_len``). A LOCAL command, an
UNSPEC or UNIX family gives no addresses: ``src`` and ``dst`` are None and
the receiver uses the connection's own addresses, as the spec requires.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from typing import NamedTuple

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: bytes before the address block: signature, ver/cmd, family, length
FIXED_LEN = 16

_VERSION = 0x20
_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_AF_INET = 0x10
_AF_INET6 = 0x20
_TRANSPORT = {"TCP": 0x1, "UDP": 0x2}
_TRANSPORT_NAMES = {v: k for k, v in _TRANSPORT.items()}

_V4 = struct.Struct("!4s4sHH")  # 12 bytes
_V6 = struct.Struct("!16s16sHH")  # 36 bytes
_FIXED = struct.Struct("!12sBBH")


class ProxyHeader(NamedTuple):
    """A decoded header: ``(src, dst, protocol, header_len)``."""

    #: the client's (address, port), or None for LOCAL and unsupported families
    src: tuple[str, int] | None
    #: the address and port the client connected to, or None like ``src``
    dst: tuple[str, int] | None
    #: "TCP" or "UDP", or None when the header carries no addresses
    protocol: str | None
    #: bytes the header takes at the start of the buffer, TLVs included
    header_len: int


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # A scope ("fe80::1%eth0") cannot go in the header; drop it.
    return ipaddress.ip_address(addr.split("%", 1)[0])


def _as_v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if ip.version == 6:
        return ip.packed
    return b"\x00" * 10 + b"\xff\xff" + ip.packed


def encode_v2(src: tuple[str, int], dst: tuple[str, int], *, protocol: str = "TCP") -> bytes:
    """The v2 header for a PROXY command from ``src`` to ``dst`` over ``protocol``.

    ``src`` and ``dst`` are ``(address, port)``; longer socket-address
    tuples (IPv6 flowinfo, scope id) are accepted and trimmed. Mixed
    families are written as INET6 with the IPv4 side IPv4-mapped. Raises
    ValueError for an address that is not an IP literal, a port out of
    range or a protocol other than TCP and UDP.
    """
    transport = _TRANSPORT.get(protocol.upper())
    if transport is None:
        raise ValueError(f"PROXY protocol v2: unsupported protocol {protocol!r}")
    sip, dip = _ip(src[0]), _ip(dst[0])
    sport, dport = int(src[1]), int(dst[1])
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        raise ValueError(f"PROXY protocol v2: port out of range in {src!r} -> {dst!r}")
    if sip.version == 4 and dip.version == 4:
        body = _V4.pack(sip.packed, dip.packed, sport, dport)
        family = _AF_INET
    else:
        body = _V6.pack(_as_v6(sip), _as_v6(dip), sport, dport)
        family = _AF_INET6
    return _FIXED.pack(SIGNATURE, _VERSION | _CMD_PROXY, family | transport, len(body)) + body


def encode_v2_local() -> bytes:
    """A LOCAL header (health checks and the like): the receiver keeps the real addresses."""
    return _FIXED.pack(SIGNATURE, _VERSION | _CMD_LOCAL, 0, 0)


def header_for(peer: tuple, sockname: tuple) -> bytes:
    """The v2 header for a relayed connection from ``peer`` to ``sockname``; LOCAL (logged)
    when the addresses cannot be encoded, so the endpoint still gets a valid header."""
    try:
        return encode_v2(peer, sockname)
    except (ValueError, IndexError, TypeError):
        logging.getLogger("netplane.l4.tcp").warning(
            "TCP %s: cannot encode a PROXY header for %r; sending LOCAL", sockname, peer
        )
        return encode_v2_local()


def _addr(packed: bytes) -> str:
    ip = ipaddress.ip_address(packed)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def decode_v2(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """Parse the v2 header at the start of ``data``; None if more bytes are needed.

    Raises ValueError when ``data`` does not start with a valid v2 header
    (wrong signature, version, command, family or transport, or an address
    block shorter than its family needs). IPv4-mapped IPv6 addresses come
    back as plain IPv4 strings, so a header from :func:`encode_v2` with
    mixed families decodes to the addresses that went in.
    """
    n = min(len(data), len(SIGNATURE))
    if bytes(data[:n]) != SIGNATURE[:n]:
        raise ValueError("PROXY protocol v2: bad signature")
    if len(data) < FIXED_LEN:
        return None
    _, ver_cmd, fam, length = _FIXED.unpack_from(data)
    if ver_cmd & 0xF0 != _VERSION:
        raise ValueError(f"PROXY protocol v2: unsupported version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ValueError(f"PROXY protocol v2: unknown command {command:#x}")
    header_len = FIXED_LEN + length
    if len(data) < header_len:
        return None
    family, transport = fam & 0xF0, fam & 0x0F
    if family > 0x30 or transport > 0x2:
        raise ValueError(f"PROXY protocol v2: unknown family/transport byte {fam:#04x}")
    if command == _CMD_LOCAL or family not in (_AF_INET, _AF_INET6) or transport == 0:
        return ProxyHeader(None, None, None, header_len)
    layout = _V4 if family == _AF_INET else _V6
    if length < layout.size:
        raise ValueError(
            f"PROXY protocol v2: address block of {length} bytes, family needs {layout.size}"
        )
    s, d, sport, dport = layout.unpack_from(data, FIXED_LEN)
    return ProxyHeader(
        (_addr(s), sport), (_addr(d), dport), _TRANSPORT_NAMES[transport], header_len
    )
