"""The path normalizer: each request path, as every common backend reads it, or refused.

``readings(path)`` gives the normalized path as each kind of server reads
it (canonical, nginx's reading, first) or None when the path is refused
whatever the rules. The route table routes only when all readings reach the
same location; tests/ingress/test_ingress_routes.py checks that half, and
tests/ingress/test_ingress_path_bypass_e2e.py the whole through a running ingress.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netplane.ingress.paths import normalize, readings, request_paths

# path -> its readings, canonical first (None: refused)
TABLE: list[tuple[str, tuple[str, ...] | None]] = [
    # plain paths and what nginx already normalizes: one reading
    ("/", ("/",)),
    ("/a/b", ("/a/b",)),
    ("/a/b/", ("/a/b/",)),
    ("/a/./b", ("/a/b",)),
    ("/a/../b", ("/b",)),
    ("/../a", ("/a",)),  # nothing above the root
    ("/a/b/..", ("/a/",)),
    ("/a/b/.", ("/a/b/",)),
    ("//a///b//", ("/a/b/",)),
    ("/%61dmin", ("/admin",)),
    ("/x/%2e%2e/admin", ("/admin",)),
    ("/caf%C3%A9", ("/café",)),
    ("/café", ("/café",)),
    ("/a%20b", ("/a b",)),
    ("/a%zz", ("/a%zz",)),  # not an escape: kept
    ("/api/100%25", ("/api/100%",)),
    # ; parameters: Tomcat and Spring drop them, in any segment, %3B too
    ("/admin;x=1/x", ("/admin;x=1/x", "/admin/x")),
    ("/admin;x=1", ("/admin;x=1", "/admin")),
    ("/;x/admin/x", ("/;x/admin/x", "/admin/x")),
    ("/admin/x;y=1", ("/admin/x;y=1", "/admin/x")),
    ("/a/;x", ("/a/;x", "/a/")),
    ("/app;jsessionid=ABC", ("/app;jsessionid=ABC", "/app")),
    ("/admin%3Bx/y", ("/admin;x/y", "/admin/y")),
    # ..; and .; are dot segments once the parameter is gone
    ("/x/..;/admin/x", ("/x/..;/admin/x", "/admin/x")),
    ("/x/..;x=1/admin/x", ("/x/..;x=1/admin/x", "/admin/x")),
    ("/x/.;/..;/admin", ("/x/.;/..;/admin", "/admin")),
    ("/x/.%2E;/admin", ("/x/..;/admin", "/admin")),
    ("/x/%2e%2e;/admin", ("/x/..;/admin", "/admin")),
    # backslash, raw and escaped: IIS-style servers read it as /
    ("/x\\..\\admin/x", ("/x\\..\\admin/x", "/admin/x")),
    ("/admin\\x", ("/admin\\x", "/admin/x")),
    ("/x%5C..%5Cadmin/x", ("/x\\..\\admin/x", "/admin/x")),
    ("/x%5c..%5cadmin", ("/x\\..\\admin", "/admin")),
    # escaped slashes: a separator to nginx and Go, data in a segment to RFC 3986
    ("/admin%2Fx", ("/admin/x", "/admin%2Fx")),
    ("/admin%2fx", ("/admin/x", "/admin%2Fx")),
    ("/x/..%2Fadmin/x", ("/admin/x", "/x/..%2Fadmin/x")),
    ("/x%2F..%2Fadmin/x", ("/admin/x", "/x%2F..%2Fadmin/x")),
    # double encoding: a server that decodes twice
    ("/admin%252Fx", ("/admin%2Fx", "/admin/x")),
    ("/x%252F..%252Fadmin/x", ("/x%2F..%2Fadmin/x", "/admin/x")),
    ("/x/%252E%252E/admin/x", ("/x/%2E%2E/admin/x", "/admin/x")),
    ("/x/%255C..%255Cadmin", ("/x/%5C..%5Cadmin", "/x/\\..\\admin", "/admin")),
    ("/a%253B/b", ("/a%3B/b", "/a;/b", "/a/b")),
    ("/api/a%2541", ("/api/a%41", "/api/aA")),
    # overlong UTF-8 and other invalid UTF-8: refused
    ("/x%C0%AF..%C0%AFadmin/x", None),  # "/" in two bytes
    ("/x%E0%80%AF..%E0%80%AFadmin/x", None),  # "/" in three bytes
    ("/%F0%80%80%AF", None),  # and in four
    ("/x/%C0%AE%C0%AE/admin/x", None),  # "." in two bytes
    ("/admin%C1%9C", None),  # "\" in two bytes
    ("/adm%E9n", None),  # Latin-1
    ("/%ED%A0%80", None),  # a UTF-16 surrogate
    ("/%80", None),  # a lone continuation byte
    # NUL, other C0 controls, DEL and C1 controls: refused
    ("/admin%00/x", None),
    ("/x%00/../admin", None),
    ("/a%0a", None),
    ("/a%0D%0Ab", None),
    ("/a%09", None),
    ("/a%1F", None),
    ("/a%7f", None),
    ("/a%C2%85", None),  # NEL
    ("/a\x01b", None),  # raw (llhttp refuses these first; the API still does)
    ("/admin%2500", None),  # NUL, double-encoded
    ("/admin%25C0%25AF", None),  # overlong, double-encoded
    # mixtures
    ("/admin;%2F..%2Fx", ("/x", "/admin;%2F..%2Fx", "/admin")),
    ("//x/..;//admin", ("/x/..;/admin", "/admin")),
    ("/x;a=%00/admin", None),  # a refused byte inside a parameter still counts
    # three quirks in one path: refused rather than read eight ways
    ("/x/..;/..%2F..%5Cadmin;a/x", None),
    ("/a;b%2Fc%2541", None),
    ("/a\\b%2Fc%2541", None),
]


@pytest.mark.parametrize(("path", "want"), TABLE)
def test_readings(path: str, want: tuple[str, ...] | None) -> None:
    got = readings(path)
    if want is None:
        assert got is None
        with pytest.raises(ValueError):
            normalize(path)
    else:
        assert got is not None
        assert got[0] == want[0] == normalize(path)  # the canonical reading first
        assert sorted(got) == sorted(want)  # every reading, each once


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("/a/b", ("/a/b",)),
        ("/a/b?x=%00;\\", ("/a/b",)),  # the query is not the path
        ("/a;b?x", ("/a;b", "/a")),
        ("http://h.example/x/../admin?q", ("/admin",)),  # absolute form
        ("http://h.example", ("/",)),
        ("*", ("/",)),
        ("/a%00?x", None),
    ],
)
def test_request_paths(target: str, want: tuple[str, ...] | None) -> None:
    assert request_paths(target) == want


_PLAIN = st.text(
    st.characters(exclude_characters="%;\\?/.", min_codepoint=0x21, max_codepoint=0x7E), min_size=1
)


@given(st.lists(_PLAIN, max_size=6), st.booleans())
def test_the_fast_path_gives_what_the_slow_one_would(segments: list[str], slash: bool) -> None:
    """A path without any trigger is its own only reading, so the shortcut changes nothing."""
    path = "/" + "/".join(segments) + ("/" if slash and segments else "")
    assert request_paths(path) == readings(path) == (path,)
