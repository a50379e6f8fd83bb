"""PROXY protocol v2 headers, through :func:`netplane.l4.proxy_protocol.decode_v2`.

Input: the bytes at the start of a connection.

Contract: ``decode_v2`` returns None (more bytes needed), a ProxyHeader, or
raises ValueError, and nothing else; every prefix of an input that decodes
returns None or the same error class, never a different header; a PROXY
header with addresses encodes back (``encode_v2``) to a header that
decodes to the same addresses.
"""

from __future__ import annotations

import sys

from bench.fuzz._common import main
from netplane.l4.proxy_protocol import FIXED_LEN, ProxyHeader, decode_v2, encode_v2

NAME = "proxy_protocol"


def _decode(data: bytes) -> ProxyHeader | ValueError | None:
    try:
        return decode_v2(data)
    except ValueError as e:
        return e


def TestOneInput(data: bytes) -> None:
    got = _decode(data)
    if isinstance(got, ProxyHeader):
        if not FIXED_LEN <= got.header_len <= len(data):
            raise AssertionError(f"header length {got.header_len} of {len(data)} bytes")
        for cut in range(got.header_len):
            if isinstance(_decode(data[:cut]), ProxyHeader):
                raise AssertionError(f"a header from the first {cut} bytes of {got.header_len}")
        if got.src is not None:
            again = decode_v2(encode_v2(got.src, got.dst, protocol=got.protocol))
            if again is None or (again.src, again.dst) != (got.src, got.dst):
                raise AssertionError(f"{got!r} encodes back to {again!r}")


if __name__ == "__main__":
    main(NAME, TestOneInput, sys.argv)
