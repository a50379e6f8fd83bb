"""Small error pages: a status line, a few headers and one plain-text sentence.

Every answer the proxy makes itself (a malformed request, an oversized
body, an upstream that refused or timed out, a route's 403/404/503) goes
through :func:`error_response`, so each says what happened in one line and
none leaks anything about the proxy beyond its name.
"""

from __future__ import annotations

REASONS: dict[int, bytes] = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    204: b"No Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

#: What each status the proxy makes itself says, when the caller has nothing more precise.
MESSAGES: dict[int, bytes] = {
    400: b"The request could not be parsed.",
    408: b"The client was too slow sending the request.",
    413: b"The request body is larger than this route allows.",
    431: b"The request header block is larger than this proxy allows.",
    501: b"This transfer coding is not supported.",
    502: b"The upstream refused or dropped the connection.",
    503: b"No endpoint is ready to serve this route.",
    504: b"The upstream did not answer in time.",
}


def reason(status: int) -> bytes:
    """The reason phrase for ``status`` (an empty phrase is valid HTTP/1.1)."""
    return REASONS.get(status, b"")


#: The Content-Type of the proxy's own answers.
CONTENT_TYPE = b"text/plain; charset=utf-8"


def error_body(status: int, message: bytes | None = None) -> bytes:
    """The text/plain body of an answer of the proxy's own: ``message``, else the status's own."""
    return (message if message is not None else MESSAGES.get(status, reason(status))) + b"\n"


def error_response(
    status: int,
    message: bytes | None = None,
    *,
    close: bool = False,
    head_only: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A complete HTTP/1.1 response: ``message`` (one line) as a text/plain body.

    ``extra`` is pre-framed header lines (``b"Name: value\\r\\n"``), written
    before the framing headers; ``head_only`` leaves the body out (HEAD).
    """
    body = error_body(status, message)
    head = (
        b"HTTP/1.1 %d %s\r\nServer: netplane\r\n%sContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
        % (
            status,
            reason(status),
            extra,
            CONTENT_TYPE,
            len(body),
            b"Connection: close\r\n" if close else b"",
        )
    )
    return head if head_only else head + body


def redirect_response(
    status: int,
    location: bytes,
    *,
    close: bool = False,
    head_only: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A redirect to ``location`` with a one-line body naming it."""
    return error_response(
        status,
        b"Redirecting to " + location,
        close=close,
        head_only=head_only,
        extra=b"Location: " + location + b"\r\n" + extra,
    )
