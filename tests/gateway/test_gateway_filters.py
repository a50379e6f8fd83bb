"""The sans-IO pieces of Gateway API filters: path rewrites, redirect locations, header changes."""

from __future__ import annotations

import pytest
from gateway_world import REPLACE_PREFIX_MATCH
from netplane.ingress.gateway_attach import intersect, within
from netplane.ingress.gateway_filters import (
    HeaderOps,
    modify_request,
    modify_response,
    redirect_location,
    rewrite_path,
)
from netplane.ingress.http_head import RequestHead, response_head

from netplane.model.gateway import PathModifier


@pytest.mark.parametrize(
    ("request_path", "prefix", "replacement", "expected"), REPLACE_PREFIX_MATCH
)
def test_replace_prefix_match_follows_the_specification_table(
    request_path: str, prefix: str, replacement: str, expected: str
) -> None:
    mod = PathModifier("ReplacePrefixMatch", replacement)
    assert rewrite_path(mod, request_path, prefix) == expected


def test_replace_full_path_replaces_the_whole_path() -> None:
    assert rewrite_path(PathModifier("ReplaceFullPath", "/one"), "/a/b/c", "/a") == "/one"


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        # No scheme and no port in the filter: the listener's port, left out when well known.
        ({"scheme": "http", "port": None, "listener_port": 80, "scheme_set": False},
         b"http://example.org/p?q=1"),
        ({"scheme": "http", "port": None, "listener_port": 8080, "scheme_set": False},
         b"http://example.org:8080/p?q=1"),
        # A scheme in the filter: that scheme's well-known port, whatever the listener's.
        ({"scheme": "https", "port": None, "listener_port": 8080, "scheme_set": True},
         b"https://example.org/p?q=1"),
        ({"scheme": "https", "port": 8443, "listener_port": 80, "scheme_set": True},
         b"https://example.org:8443/p?q=1"),
        ({"scheme": "http", "port": 443, "listener_port": 80, "scheme_set": False},
         b"http://example.org:443/p?q=1"),
    ],
)  # fmt: skip
def test_redirect_location_derives_the_port_as_the_specification_says(
    kw: dict, expected: bytes
) -> None:
    assert redirect_location(host="example.org", path="/p", query="?q=1", **kw) == expected


def _head(*fields: tuple[bytes, bytes]) -> RequestHead:
    h = RequestHead()
    h.add(b"Host", b"shop.example")
    for k, v in fields:
        h.add(k, v)
    h.check()
    return h


def test_request_header_modifier_sets_adds_and_removes_case_insensitively() -> None:
    head = _head((b"X-Keep", b"1"), (b"x-set", b"old"), (b"X-Remove", b"gone"), (b"X-Add", b"a"))
    ops = HeaderOps(
        set=((b"X-Set", b"new"),),
        add=((b"X-Add", b"b"), (b"X-New", b"n")),
        remove=frozenset((b"x-remove",)),
    )
    new = modify_request(head, (ops,), None)
    sent = new.upstream_head(b"GET", b"/", b"192.0.2.1", b"", False)
    assert b"X-Set: new\r\n" in sent and b"x-set: old" not in sent
    assert b"X-Add: a\r\n" in sent and b"X-Add: b\r\n" in sent
    assert b"X-New: n\r\n" in sent and b"X-Keep: 1\r\n" in sent
    assert b"X-Remove" not in sent
    assert new.headers[b"x-add"] == b"a, b"
    # The original head is untouched (the exchange keeps it for the access log).
    assert head.headers[b"x-set"] == b"old"


def test_url_rewrite_hostname_replaces_host_upstream() -> None:
    new = modify_request(_head(), (), b"backend.internal")
    assert b"Host: backend.internal\r\n" in new.upstream_head(b"GET", b"/", b"1.2.3.4", b"", False)


def test_response_header_modifier_keeps_framing_and_the_other_fields() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Header-Set: old\r\nX-Header-Remove: r\r\n"
        b"Server: echo\r\n"
    )
    head = response_head(raw)
    ops = HeaderOps(
        set=((b"X-Header-Set", b"set"),),
        add=((b"X-Header-Add", b"add"),),
        remove=frozenset((b"x-header-remove", b"content-length")),
    )
    new = modify_response(head, (ops,))
    out = new.client_head(new.body_framing, True, False, b"")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 2\r\n" in out  # the proxy's framing is not the filter's to change
    assert b"X-Header-Set: set\r\n" in out and b"old" not in out
    assert b"X-Header-Add: add\r\n" in out and b"Server: echo\r\n" in out
    assert b"X-Header-Remove" not in out


@pytest.mark.parametrize(
    ("pattern", "host", "covered"),
    [
        ("", "anything.example", True),
        ("*.example.com", "foo.example.com", True),
        ("*.example.com", "foo.bar.example.com", True),  # any number of labels
        ("*.example.com", "example.com", False),
        ("*.example.com", "*.foo.example.com", True),
        ("*.foo.example.com", "*.example.com", False),
        ("foo.example.com", "foo.example.com", True),
        ("foo.example.com", "bar.example.com", False),
    ],
)
def test_hostname_coverage(pattern: str, host: str, covered: bool) -> None:
    assert within(pattern, host) is covered


def test_hostname_intersection_keeps_the_more_specific_side() -> None:
    assert intersect("very.specific.com", ("non.matching.com", "*.specific.com")) == (
        "very.specific.com",
    )
    assert intersect("*.wildcard.io", ("wildcard.io", "foo.wildcard.io", "a.b.wildcard.io")) == (
        "foo.wildcard.io",
        "a.b.wildcard.io",
    )
    assert intersect("", ("a.example",)) == ("a.example",)
    assert intersect("a.example", ()) == ("a.example",)
    assert intersect("a.example", ("b.example",)) == ()
