"""Property: a head the proxy passes on means the same thing on the other side (issue 17).

Requests: random heads (methods, origin-form targets, token names, field
values, repeated fields, Cookie, hop-by-hop fields and fields the client
names in Connection) go field by field through :class:`RequestHead` (add,
check, upstream_head) and the result is parsed by h11 as a server would:
the same method and target, the end-to-end fields in their order
(repeated ones kept as separate lines, and joined per RFC 9110 §5.3 in
the routing view), hop-by-hop ones gone, X-Forwarded-For appended.

Responses: random upstream heads that httptools accepts (the documented
precondition of :func:`response_head`) go through ``client_head`` with the
framing the client connection picks, and h11 parses the result as a
client: the same status, the end-to-end fields in order, and a framing
that agrees with what the proxy will write.
"""

from __future__ import annotations

import h11
import httptools
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from netplane.ingress.http_head import (
    CHUNKED,
    HOP_BY_HOP,
    LENGTH,
    NO_BODY,
    SPECIAL_REQUEST_FIELDS,
    UNTIL_CLOSE,
    HeadError,
    RequestHead,
    forwarded_fields,
    response_head,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%"

token = st.text(TCHAR, min_size=1, max_size=12)
# Names that collide with nothing the proxy handles, so they must pass through.
plain_name = st.one_of(
    st.sampled_from(["Accept", "User-Agent", "X-Custom", "x-custom", "Forwarded", "Via"]),
    st.text(TCHAR, min_size=1, max_size=10).map(lambda s: "X-" + s),
).filter(lambda n: n.lower().encode() not in SPECIAL_REQUEST_FIELDS)
# field-value: no leading or trailing whitespace (the parser strips OWS), inner SP/HTAB allowed
field_value = st.one_of(
    st.just(""),
    st.builds(
        lambda a, mid, b: a + mid + b if mid is not None else a,
        st.text(VCHAR, min_size=1, max_size=8),
        st.none() | st.text(VCHAR + " \t", max_size=10).map(lambda s: s + "z"),
        st.just(""),
    ),
)
cookie_value = st.text("abcdefgh0123456789=", min_size=1, max_size=10)
ip = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))


@st.composite
def request_heads(draw):  # type: ignore[no-untyped-def]
    """(method, target, [(name, value)], upgrade) of a head the proxy accepts."""
    fields: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind <= 4:
            fields.append((draw(plain_name), draw(field_value)))
        elif kind == 5:
            fields.append((draw(st.sampled_from(["Cookie", "cookie"])), draw(cookie_value)))
        elif kind == 6:
            fields.append((draw(st.sampled_from(["X-Forwarded-For", "x-forwarded-for"])), draw(ip)))
        elif kind == 7:
            name = draw(st.sampled_from(["Keep-Alive", "TE", "Trailer", "Proxy-Connection"]))
            fields.append((name, draw(st.text(TCHAR, min_size=1, max_size=6))))
        elif kind == 8:
            name = draw(
                st.sampled_from(
                    ["X-Real-IP", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port"]
                )
            )
            fields.append((name, draw(st.text(TCHAR, min_size=1, max_size=6))))
        else:
            # a Connection field naming fields of this head and options
            names = [n for n, _ in fields] + ["close", "keep-alive", "X-Absent"]
            chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
            sep = draw(st.sampled_from([",", ", ", " ,"]))
            fields.append(
                ("Connection", sep.join(c.upper() if draw(st.booleans()) else c for c in chosen))
            )
    body = draw(st.sampled_from(["none", "length", "chunked"]))
    if body == "length":
        fields.insert(
            draw(st.integers(0, len(fields))), ("Content-Length", str(draw(st.integers(0, 10**6))))
        )
    elif body == "chunked":
        fields.insert(draw(st.integers(0, len(fields))), ("Transfer-Encoding", "chunked"))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), ("X-Request-ID", draw(token)))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), ("Expect", "100-continue"))
    upgrade = draw(st.booleans())
    if upgrade:
        fields.insert(draw(st.integers(0, len(fields))), ("Upgrade", "websocket"))
    host = draw(st.sampled_from(["a.example", "a.example:8080", "[::1]:80", "x"]))
    fields.insert(
        draw(st.integers(0, len(fields))), (draw(st.sampled_from(["Host", "host", "HOST"])), host)
    )
    method = draw(
        st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]), token)
    )
    path = "/" + draw(st.text(PCHAR.replace("%", ""), max_size=20))
    if draw(st.booleans()):
        path += "?" + draw(st.text(PCHAR.replace("%", "") + "/?", max_size=12))
    return method, path, fields, upgrade


def _connection_tokens(fields: list[tuple[str, str]]) -> set[str]:
    out: set[str] = set()
    for n, v in fields:
        if n.lower() == "connection":
            out.update(t.strip().lower() for t in v.split(","))
    return out - {"close", "keep-alive", "upgrade", ""}


@SETTINGS
@given(request_heads(), ip, st.sampled_from([b"http", b"https"]))
def test_request_heads_reach_upstream_with_the_same_meaning(case, client_ip, proto) -> None:  # type: ignore[no-untyped-def]
    method, target, fields, upgrade = case
    head = RequestHead()
    for n, v in fields:
        head.add(n.encode(), v.encode())
    head.check()
    forwarded = forwarded_fields(client_ip.encode(), proto, b"443" if proto == b"https" else b"80")
    wire = head.upstream_head(
        method.encode(), target.encode(), client_ip.encode(), forwarded, upgrade
    )

    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    event = server.next_event()
    assert isinstance(event, h11.Request), event
    assert event.method == method.encode()
    assert event.target == target.encode()
    got = [(n.decode(), v.decode()) for n, v in event.headers]

    named = _connection_tokens(fields)
    lowered = [(n.lower(), v) for n, v in fields]
    end_to_end = [
        (n, v) for n, v in lowered if n.encode() not in SPECIAL_REQUEST_FIELDS and n not in named
    ]
    # every field the client sent end to end arrives, in order, and nothing else of the client's
    generated = {
        "host", "x-request-id", "x-forwarded-host", "x-forwarded-for", "x-real-ip",
        "x-forwarded-port", "x-forwarded-proto", "content-length", "transfer-encoding",
        "upgrade", "connection",
    }  # fmt: skip
    assert [(n, v) for n, v in got if n not in generated] == end_to_end
    # hop-by-hop fields and the ones Connection names are gone
    # (the proxy's own fields and framing are checked one by one below)
    for n, _ in got:
        if n not in generated:
            assert n not in named and n.encode() not in HOP_BY_HOP
    by_name: dict[str, list[str]] = {}
    for n, v in got:
        by_name.setdefault(n, []).append(v)
    host = next(v for n, v in lowered if n == "host")
    assert by_name["host"] == [host]
    assert by_name["x-forwarded-host"] == [host]
    xff = [v for n, v in lowered if n == "x-forwarded-for"]
    assert by_name["x-forwarded-for"] == [", ".join([*xff, client_ip])]
    assert by_name["x-real-ip"] == [client_ip]
    assert by_name["x-forwarded-proto"] == [proto.decode()]
    rid = [v for n, v in lowered if n == "x-request-id"]
    assert len(by_name["x-request-id"]) == 1
    if rid:
        assert by_name["x-request-id"] == rid[-1:]
    # the body is framed as the client framed it
    cl = [v for n, v in lowered if n == "content-length"]
    te = [v for n, v in lowered if n == "transfer-encoding"]
    assert by_name.get("content-length", []) == cl
    assert by_name.get("transfer-encoding", []) == te
    if upgrade and any(n == "upgrade" for n, _ in lowered):
        assert by_name["upgrade"] == ["websocket"]
    else:
        assert "upgrade" not in by_name and "connection" not in by_name
    # the routing view joins repeated fields (RFC 9110 §5.3; Cookie with "; ", RFC 6265 §5.4)
    for n in {n for n, _ in end_to_end}:
        values = [v for m, v in end_to_end if m == n]
        assert head.headers[n.encode()] == ("; " if n == "cookie" else ", ").join(values).encode()
    for n in named:
        if n.encode() not in SPECIAL_REQUEST_FIELDS:
            assert n.encode() not in head.headers


def test_a_second_host_is_refused() -> None:
    head = RequestHead()
    head.add(b"Host", b"a")
    with pytest.raises(HeadError):
        head.add(b"host", b"b")


# -- responses ---------------------------------------------------------------------------

RESPONSE_HOP = ["Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade"]


@st.composite
def response_heads(draw):  # type: ignore[no-untyped-def]
    status = draw(
        st.one_of(st.sampled_from([200, 204, 301, 304, 404, 500, 503]), st.integers(200, 599))
    )
    reason = draw(
        st.one_of(
            st.just(""),
            st.sampled_from(["OK", "Very Fine", "x"]),
            st.text(VCHAR, min_size=1, max_size=8),
        )
    )
    fields: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 7))
        if kind <= 4:
            fields.append(
                (
                    draw(st.one_of(plain_name, st.sampled_from(["Set-Cookie", "Server", "Date"]))),
                    draw(field_value),
                )
            )
        elif kind == 5:
            fields.append(
                (draw(st.sampled_from(RESPONSE_HOP)), draw(st.text(TCHAR, min_size=1, max_size=6)))
            )
        elif kind == 6:
            fields.append(
                (
                    draw(st.sampled_from(["X-Request-ID", "Strict-Transport-Security"])),
                    draw(st.text(TCHAR, min_size=1, max_size=6)),
                )
            )
        else:
            names = [n for n, _ in fields] + ["close", "keep-alive", "X-Absent"]
            chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
            fields.append(("Connection", ", ".join(chosen)))
    body = draw(st.sampled_from(["none", "length", "chunked"]))
    if body == "length":
        fields.insert(
            draw(st.integers(0, len(fields))), ("Content-Length", str(draw(st.integers(0, 2000))))
        )
    elif body == "chunked":
        fields.insert(draw(st.integers(0, len(fields))), ("Transfer-Encoding", "chunked"))
    version = draw(st.sampled_from(["1.1", "1.0"]))
    raw = f"HTTP/{version} {status} {reason}\r\n" if reason else f"HTTP/{version} {status}\r\n"
    raw += "".join(f"{n}: {v}\r\n" for n, v in fields)
    return raw.encode(), status, fields


def _httptools_accepts(raw: bytes) -> bool:
    class Sink:
        pass

    parser = httptools.HttpResponseParser(Sink())
    try:
        parser.feed_data(raw + b"\r\n")
    except httptools.HttpParserError:
        return False
    return True


@SETTINGS
@given(
    response_heads(),
    st.sampled_from([b"GET", b"HEAD"]),
    st.booleans(),  # keep-alive towards the client
    st.booleans(),  # an HTTP/1.0 client
    st.sampled_from(
        [
            b"",
            b"X-Request-ID: r1\r\n",
            b"Set-Cookie: a=b\r\nStrict-Transport-Security: max-age=1\r\n",
        ]
    ),
)
def test_response_heads_reach_the_client_with_the_same_meaning(
    case, method, keep, http10, extra
) -> None:  # type: ignore[no-untyped-def]
    raw, status, fields = case
    assume(_httptools_accepts(raw))
    head = response_head(raw)
    assert head.status == status
    # what ClientConnection.write_head does
    framing = NO_BODY if method == b"HEAD" else head.body_framing
    if framing == CHUNKED and http10:
        framing = UNTIL_CLOSE
        keep = False
    wire = head.client_head(framing, keep, http10, extra)

    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"h")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    event = client.next_event()
    assert isinstance(event, h11.Response), event
    assert event.status_code == status
    got = [(n.decode(), v.decode()) for n, v in event.headers]

    lowered = [(n.lower(), v) for n, v in fields]
    named = _connection_tokens(fields) - {"content-length"}  # framing: kept
    hop = {h.decode() for h in HOP_BY_HOP}
    end_to_end = [(n, v) for n, v in lowered if n not in hop and n not in named]
    added = [
        (n.decode().lower(), v.decode())
        for n, v in (ln.split(b": ", 1) for ln in extra.splitlines())
    ]
    framing_lines = [("transfer-encoding", "chunked")] if framing == CHUNKED else []
    if not keep:
        framing_lines.append(("connection", "close"))
    elif http10:
        framing_lines.append(("connection", "keep-alive"))
    assert got == end_to_end + added + framing_lines
    # framing: the client reads the body the way the proxy writes it
    if framing == LENGTH:
        assert event.headers and dict(got)["content-length"] == dict(lowered)["content-length"]
    no_body = framing == NO_BODY
    if framing == CHUNKED:
        client.receive_data(b"3\r\nabc\r\n0\r\n\r\n")
    elif framing == UNTIL_CLOSE:
        client.receive_data(b"abc")
        client.receive_data(b"")
    elif framing == LENGTH:
        n = int(dict(lowered)["content-length"])
        client.receive_data(b"x" * n)
    body = b""
    while True:
        ev = client.next_event()
        if isinstance(ev, h11.Data):
            body += ev.data
            continue
        break
    assert isinstance(ev, h11.EndOfMessage), ev
    if framing in (CHUNKED, UNTIL_CLOSE):
        assert body == b"abc"
    elif no_body:
        assert body == b""


def test_fields_an_upstream_names_in_connection_are_not_passed_on() -> None:
    h = response_head(
        b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: x-hop, X-Request-ID\r\n"
        b"X-Request-ID: r\r\nX-End: 2\r\nContent-Length: 0\r\n"
    )
    assert h.fields == b"X-End: 2\r\nContent-Length: 0\r\n"
    assert not h.has_request_id and h.has_length
