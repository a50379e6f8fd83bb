"""PROXY protocol v2 header: byte-exact vectors, round trips and malformed input."""

from __future__ import annotations

import pytest

from netplane.l4.proxy_protocol import SIGNATURE, decode_v2, encode_v2, encode_v2_local

# From envoy's proxy_protocol_header_test.cc (GeneratesV2IPv4Header): 1.2.3.4:773 -> 0.1.1.2:513.
V4 = bytes.fromhex("0d0a0d0a000d0a515549540a 2111000c 01020304 00010102 0305 0201")
# From the same file (GeneratesV2IPv6Header): [1:2:3::4]:8 -> [1:100:200:3::]:2.
V6 = bytes.fromhex(
    "0d0a0d0a000d0a515549540a"
    "21210024"
    "00010002000300000000000000000004"
    "00010100020000030000000000000000"
    "0008"
    "0002"
)
# What haproxy sent (a published capture) for a TCP connection 172.19.0.1:42578 -> 172.19.0.3:80, then the request.
HAPROXY_CAPTURE = (
    bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050")
    + b"GET / HTTP/1.1\r\n"
)


def test_signature_is_the_specs() -> None:
    assert SIGNATURE == b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"


def test_encode_ipv4_byte_exact() -> None:
    assert encode_v2(("1.2.3.4", 773), ("0.1.1.2", 513)) == V4


def test_encode_ipv6_byte_exact() -> None:
    assert encode_v2(("1:2:3::4", 8), ("1:100:200:3::", 2)) == V6


def test_encode_matches_haproxy_capture() -> None:
    header = encode_v2(("172.19.0.1", 42578), ("172.19.0.3", 80))
    assert HAPROXY_CAPTURE.startswith(header)


def test_decode_vectors() -> None:
    assert decode_v2(V4) == (("1.2.3.4", 773), ("0.1.1.2", 513), "TCP", 28)
    assert decode_v2(V6) == (("1:2:3::4", 8), ("1:100:200:3::", 2), "TCP", 52)
    h = decode_v2(HAPROXY_CAPTURE)
    assert h is not None
    assert h.src == ("172.19.0.1", 42578) and h.dst == ("172.19.0.3", 80)
    assert HAPROXY_CAPTURE[h.header_len :] == b"GET / HTTP/1.1\r\n"


def test_udp_uses_dgram() -> None:
    header = encode_v2(("10.0.0.1", 53), ("10.0.0.2", 5353), protocol="UDP")
    assert header[13] == 0x12
    assert decode_v2(header).protocol == "UDP"  # type: ignore[union-attr]
    assert encode_v2(("::1", 1), ("::2", 2), protocol="udp")[13] == 0x22


def test_socket_address_tuples_are_trimmed() -> None:
    # IPv6 getpeername() gives (host, port, flowinfo, scope_id)
    header = encode_v2(("::1", 5000, 0, 0), ("::1", 80, 0, 0))
    assert decode_v2(header) == (("::1", 5000), ("::1", 80), "TCP", 52)


def test_mixed_families_are_written_as_mapped_ipv6() -> None:
    header = encode_v2(("192.0.2.7", 1234), ("2001:db8::1", 443))
    assert header[13] == 0x21 and len(header) == 16 + 36
    assert header[16:32] == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7])
    assert decode_v2(header) == (("192.0.2.7", 1234), ("2001:db8::1", 443), "TCP", 52)


@pytest.mark.parametrize(
    ("src", "dst", "protocol"),
    [
        (("example.com", 1), ("1.2.3.4", 2), "TCP"),
        (("1.2.3.4", 70000), ("1.2.3.4", 2), "TCP"),
        (("1.2.3.4", 1), ("1.2.3.4", 2), "SCTP"),
    ],
)
def test_encode_rejects(src, dst, protocol) -> None:
    with pytest.raises(ValueError):
        encode_v2(src, dst, protocol=protocol)


def test_decode_incomplete_returns_none() -> None:
    for n in range(len(V6)):
        assert decode_v2(V6[:n]) is None
    assert decode_v2(memoryview(V6)) is not None


def test_decode_skips_tlvs() -> None:
    tlv = bytes([0x04, 0x00, 0x03]) + b"abc"  # PP2_TYPE_NOOP with 3 bytes
    header = bytearray(V4)
    header[14:16] = (12 + len(tlv)).to_bytes(2, "big")
    data = bytes(header) + tlv + b"rest"
    h = decode_v2(data)
    assert h is not None and h.src == ("1.2.3.4", 773)
    assert data[h.header_len :] == b"rest"


def test_decode_local_command() -> None:
    assert decode_v2(encode_v2_local() + b"x") == (None, None, None, 16)


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # v1 is not v2
        V4[:12] + b"\x11" + V4[13:],  # version 1 in the v2 layout
        V4[:12] + b"\x22" + V4[13:],  # command 2
        V4[:13] + b"\x41" + V4[14:],  # family 4
        V4[:13] + b"\x13" + V4[14:],  # transport 3
        V4[:14] + b"\x00\x08" + V4[16:24],  # INET with an 8-byte address block
    ],
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_v2(data)
