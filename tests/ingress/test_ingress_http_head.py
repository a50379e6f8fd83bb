"""ResponseHead, sans-IO: what the client gets from an upstream head's bytes."""

from __future__ import annotations

import pytest
from netplane.ingress.http_head import CHUNKED, LENGTH, NO_BODY, response_head


@pytest.mark.parametrize(
    ("raw", "fields", "flags"),
    [
        (b"HTTP/1.1 204 No Content\r\n", b"", (False, False, False, False)),
        (
            b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nContent-Length: 3\r\n",
            b"Server: x\r\nContent-Length: 3\r\n",
            (True, False, False, False),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: chunked\r\nx-request-id: r\r\n"
            b"Strict-Transport-Security: max-age=1\r\nKeep-Alive: timeout=5\r\n",
            b"x-request-id: r\r\nStrict-Transport-Security: max-age=1\r\n",
            (False, True, True, True),
        ),
        # names that only begin like a special one are passed on
        (
            b"HTTP/1.1 200 OK\r\nTE-X: 1\r\nConnectionX: 2\r\nX-Connection: 3\r\n",
            b"TE-X: 1\r\nConnectionX: 2\r\nX-Connection: 3\r\n",
            (False, False, False, False),
        ),
    ],
)
def test_fields_and_flags(raw, fields, flags):
    h = response_head(raw)
    assert h.fields == fields
    assert (h.has_length, h.chunked, h.has_request_id, h.has_hsts) == flags


def test_status_line_and_client_head():
    h = response_head(b"HTTP/1.0 404\r\nX-A: 1\r\n")
    assert (h.status, h.reason) == (404, b"")
    assert h.client_head(CHUNKED, True, False, b"X-Request-ID: r\r\n") == (
        b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nX-Request-ID: r\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    h = response_head(b"HTTP/1.1 200 Very Fine\r\nContent-Length: 0\r\n")
    assert h.client_head(LENGTH, False, False, b"") == (
        b"HTTP/1.1 200 Very Fine\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert h.client_head(LENGTH, True, True, b"") == (
        b"HTTP/1.1 200 Very Fine\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    )


def test_body_framing():
    assert response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n").body_framing == LENGTH
    assert response_head(b"HTTP/1.1 200 OK\r\n").body_framing == CHUNKED
    for status in (b"101", b"204", b"304"):
        h = response_head(b"HTTP/1.1 " + status + b" X\r\nContent-Length: 3\r\n")
        assert h.body_framing == NO_BODY
    chunked = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
    assert response_head(chunked).body_framing == CHUNKED


def test_the_same_head_is_made_once():
    raw = b"HTTP/1.1 200 OK\r\nX-Once: 1\r\n"
    assert response_head(raw) is response_head(bytes(bytearray(raw)))
