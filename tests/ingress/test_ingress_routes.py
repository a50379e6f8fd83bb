"""RouteTable: classes, hosts, paths, merging, default backends and endpoint choice."""

from __future__ import annotations

import logging

import pytest
from ingress_world import (
    World,
    backend,
    backends,
    endpoints,
    ingress,
    ingress_class,
    path,
    service,
)
from netplane.ingress.routes import Forward, Respond

SVCS = backends("s0", "s1", "s2", "s3", "dflt")


# -- paths: every example of the Kubernetes Ingress documentation's table -----------
# (rule paths with their types, request path, the rule index that serves it or None)

DOC_EXAMPLES = [
    ([("/", "Prefix")], "/anything/at/all", 0),
    ([("/", "Prefix")], "/", 0),
    ([("/foo", "Exact")], "/foo", 0),
    ([("/foo", "Exact")], "/bar", None),
    ([("/foo", "Exact")], "/foo/", None),
    ([("/foo/", "Exact")], "/foo", None),
    ([("/foo", "Prefix")], "/foo", 0),
    ([("/foo", "Prefix")], "/foo/", 0),
    ([("/foo/", "Prefix")], "/foo", 0),
    ([("/foo/", "Prefix")], "/foo/", 0),
    ([("/aaa/bb", "Prefix")], "/aaa/bbb", None),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb", 0),
    ([("/aaa/bbb/", "Prefix")], "/aaa/bbb", 0),  # ignores the trailing slash
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/", 0),  # matches the trailing slash
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", 0),  # matches a subpath
    ([("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", None),  # not a string prefix
    ([("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", 1),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/aaa/bbb", 2),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/ccc", 0),
    ([("/aaa", "Prefix")], "/ccc", None),  # the default backend
    ([("/foo", "Prefix"), ("/foo", "Exact")], "/foo", 1),  # Exact preferred
    # Beyond the table: a query string and ImplementationSpecific as Prefix.
    ([("/foo", "Exact")], "/foo?x=1", 0),
    ([("/foo", "ImplementationSpecific")], "/foo/bar", 0),
    ([("/foo", "ImplementationSpecific")], "/foobar", None),
    ([("/a", "Prefix"), ("/a/b", "Exact")], "/a/b/", 0),
    ([("/a/b/c", "Prefix"), ("/a/b", "Exact")], "/a/b", 1),
]


@pytest.mark.parametrize(("rules", "request_path", "want"), DOC_EXAMPLES)
def test_path_matching_examples(rules: list, request_path: str, want: int | None) -> None:
    paths = [path(p, f"s{i}", kind) for i, (p, kind) in enumerate(rules)]
    w = World(*SVCS, ingress("ing", [("foo.example", paths)], default=backend("dflt")))
    assert w.service_for("foo.example", request_path) == ("dflt" if want is None else f"s{want}")


def test_no_default_backend_is_404_with_a_body() -> None:
    w = World(*SVCS, ingress("ing", [("foo.example", [path("/aaa", "s0")])]))
    d = w.route("foo.example", "/ccc")
    assert isinstance(d, Respond)
    assert d.status == 404
    assert b"no Ingress rule" in d.body


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("/public/../admin", "s1"),  # dot segments resolved before matching
        ("/public/%2e%2e/admin", "s1"),
        ("//admin", "s1"),  # repeated slashes merged
        ("/%61dmin/x", "s1"),  # escapes decoded
        ("/public/./x", "s0"),
        ("http://foo.example/admin", "s1"),  # absolute-form target
    ],
)
def test_paths_are_normalized_before_matching(target: str, want: str) -> None:
    w = World(
        *SVCS,
        ingress("ing", [("foo.example", [path("/public", "s0"), path("/admin", "s1")])]),
    )
    assert w.service_for("foo.example", target) == want


# Every form an ingress controller's path rule has been bypassed by, against an
# allowlist on /admin (the client 192.0.2.1 is outside it: 403) beside a
# catch-all / on another Ingress and an open /api: each either reaches the
# /admin rule (403) or is refused (400); none is served by the catch-all.
BYPASS_FORMS = [
    # ; parameters: Tomcat and Spring drop them and read /admin/x
    ("/admin;x=1/x", 400),
    ("/admin;x=1", 400),
    ("/admin;/x", 400),
    ("/;x/admin/x", 400),
    ("/x/..;/admin/x", 400),
    ("/x/..;x=1/admin/x", 400),
    ("/x/.;/..;/admin", 400),
    ("/x/.%2E;/admin", 400),
    ("/admin%3Bx/y", 400),  # an escaped ; that a decode-then-strip reader drops
    ("/admin/x;y=1", 403),  # in the last segment: /admin either way
    # backslash, raw and escaped: IIS-style servers read it as /
    ("/x\\..\\admin/x", 400),
    ("/admin\\x", 400),
    ("/x%5C..%5Cadmin/x", 400),
    ("/x%5c..%5cadmin", 400),
    # escaped slashes: decoded by nginx and Go, data to RFC 3986 readers
    ("/admin%2Fx", 400),
    ("/admin%2fx", 400),
    ("/x/..%2Fadmin/x", 400),
    ("/x%2F..%2Fadmin/x", 400),
    ("/public%2f..%2fadmin", 400),
    # overlong UTF-8 ("/" and "." in two or three bytes), and any invalid UTF-8
    ("/x%C0%AF..%C0%AFadmin/x", 400),
    ("/x%E0%80%AF..%E0%80%AFadmin/x", 400),
    ("/x/%C0%AE%C0%AE/admin/x", 400),
    ("/admin%C0%AFx", 400),
    ("/adm%E9n", 400),
    # NUL and other control bytes, escaped
    ("/admin%00/x", 400),
    ("/x%00/../admin", 400),
    ("/public/x%00.html", 400),
    ("/admin%0a", 400),
    ("/admin%0D%0Ax", 400),
    ("/admin%09x", 400),
    ("/admin%7f", 400),
    ("/admin%1F", 400),
    # double encoding: a server that decodes twice reads /admin/x
    ("/admin%252Fx", 400),
    ("/x%252F..%252Fadmin/x", 400),
    ("/x/%252E%252E/admin/x", 400),
    ("/x/%255C..%255Cadmin", 400),
    ("/admin%2500", 400),
    # mixtures
    ("/x/..;/..%2F..%5Cadmin;a/x", 400),
    ("/admin;%2F..%2Fx", 400),
    ("//x/..;//admin", 400),
    ("/x/%2e%2e;/admin", 400),
    # and what every reader agrees on still routes
    ("/admin/x", 403),
    ("/x/../admin/x", 403),
    ("/x/%2e%2e/admin", 403),
    ("//admin", 403),
    ("/admin/page;jsessionid=ABC", 403),
]


@pytest.mark.parametrize(("target", "want"), BYPASS_FORMS)
def test_no_path_form_escapes_a_rule(target: str, want: int) -> None:
    w = World(
        *SVCS,
        ingress(
            "admin",
            [("foo.example", [path("/admin", "s1")])],
            annotations={"nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8"},
        ),
        ingress("site", [("foo.example", [path("/", "s0"), path("/api", "s2")])]),
    )
    d = w.route("foo.example", target)
    assert isinstance(d, Respond), d
    assert d.status == want
    if want == 400:
        assert b"path" in d.body
    assert w.service_for("foo.example", target, client_ip="10.0.0.1") == (
        want if want == 400 else "s1"
    )


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("/app;jsessionid=ABC", "s0"),  # the URL-rewriting session id of servlet apps
        ("/app;jsessionid=ABC/page", "s0"),
        ("/api/projects/group%2Fproject", "s2"),  # GitLab's escaped project path
        ("/api/a%5Cb", "s2"),
        ("/api/100%25", "s2"),
        ("/api/a%2541", "s2"),
        ("/caf%C3%A9", "s0"),  # escaped UTF-8
        ("/api/x?q=%00;\\", "s2"),  # the query is not the path
    ],
)
def test_unusual_paths_route_when_every_reading_agrees(target: str, want: str) -> None:
    w = World(
        *SVCS,
        ingress(
            "admin",
            [("foo.example", [path("/admin", "s1")])],
            annotations={"nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8"},
        ),
        ingress("site", [("foo.example", [path("/", "s0"), path("/api", "s2")])]),
    )
    d = w.route("foo.example", target)
    assert isinstance(d, Forward) and d.service[1] == want
    assert d.path == target  # forwarded as sent


def test_request_target_is_forwarded_as_sent() -> None:
    w = World(*SVCS, ingress("ing", [("foo.example", [path("/", "s0")])]))
    d = w.route("foo.example", "/a%20b//c?q=1")
    assert isinstance(d, Forward)
    assert d.path == "/a%20b//c?q=1"


# -- hosts --------------------------------------------------------------------------

HOST_RULES = [
    ("foo.bar.com", "s0"),
    ("*.bar.com", "s1"),
    ("", "s2"),
]


@pytest.mark.parametrize(
    ("host", "want"),
    [
        ("foo.bar.com", "s0"),  # exact beats wildcard
        ("FOO.Bar.COM", "s0"),  # case-insensitive
        ("foo.bar.com:8080", "s0"),  # port stripped
        ("foo.bar.com.", "s0"),  # trailing dot
        ("baz.bar.com", "s1"),  # one label under the wildcard
        ("baz.bar.com:80", "s1"),
        ("a.baz.bar.com", "s2"),  # two labels: not the wildcard
        ("bar.com", "s2"),  # no label: not the wildcard
        ("other.example", "s2"),  # the rule without host matches every host
        ("", "s2"),  # no Host header
        ("127.0.0.1:8080", "s2"),
        ("[::1]:8080", "s2"),
    ],
)
def test_host_matching(host: str, want: str) -> None:
    rules = [(h, [path("/", svc)]) for h, svc in HOST_RULES]
    w = World(*SVCS, ingress("ing", rules))
    assert w.service_for(host, "/x") == want


@pytest.mark.parametrize(
    ("host", "rule_host"),
    [("FOO.bar.com:8080", "foo.bar.com"), ("baz.bar.com", "*.bar.com"), ("other.example", "")],
)
def test_decisions_name_the_rule_host_that_matched(host: str, rule_host: str) -> None:
    """/metrics labels requests with the rule's host, never the client's Host header."""
    rules = [(h, [path("/", svc)]) for h, svc in HOST_RULES]
    w = World(*SVCS, ingress("ing", rules))
    d = w.route(host, "/x")
    assert isinstance(d, Forward) and d.host == rule_host


def test_without_a_catch_all_rule_an_unknown_host_gets_404() -> None:
    w = World(*SVCS, ingress("ing", [("*.bar.com", [path("/", "s1")])]))
    assert w.service_for("bar.com") == 404
    assert w.service_for("x.bar.com") == "s1"


def test_a_matching_host_does_not_fall_through_to_a_less_specific_one() -> None:
    w = World(
        *SVCS,
        ingress("ing", [("foo.bar.com", [path("/api", "s0")]), ("", [path("/", "s2")])]),
    )
    assert w.service_for("foo.bar.com", "/api") == "s0"
    assert w.service_for("foo.bar.com", "/other") == 404
    assert w.service_for("elsewhere", "/other") == "s2"


# -- IngressClass selection -------------------------------------------------------------


@pytest.mark.parametrize(
    ("objects", "ing_kwargs", "served"),
    [
        ([], {"cls": "netplane"}, True),
        ([], {"cls": "nginx"}, False),  # no such IngressClass
        ([ingress_class("nginx", "k8s.io/ingress-nginx")], {"cls": "nginx"}, False),
        ([ingress_class("mine")], {"cls": "mine"}, True),  # any name, our controller
        ([], {"cls": None}, False),  # no class, no default class
        ([ingress_class("netplane", default=True)], {"cls": None}, True),
        (
            [ingress_class("nginx", "k8s.io/ingress-nginx", default=True)],
            {"cls": None},
            False,
        ),
        (
            [],
            {"cls": None, "annotations": {"kubernetes.io/ingress.class": "netplane"}},
            True,
        ),
        ([], {"cls": None, "annotations": {"kubernetes.io/ingress.class": "nginx"}}, False),
    ],
)
def test_ingress_class_selection(objects: list, ing_kwargs: dict, served: bool) -> None:
    w = World(*SVCS, *objects, ingress("ing", [("a.example", [path("/", "s0")])], **ing_kwargs))
    assert w.service_for("a.example") == ("s0" if served else 404)


def test_legacy_annotation_without_an_ingress_class_object() -> None:
    w = World(*SVCS)
    w.delete("IngressClass", "netplane", namespace="")
    w.apply(
        ingress(
            "ing",
            [("a.example", [path("/", "s0")])],
            cls=None,
            annotations={"kubernetes.io/ingress.class": "netplane"},
        )
    )
    assert w.service_for("a.example") == "s0"


def test_ingress_class_changes_apply() -> None:
    w = World(*SVCS, ingress("ing", [("a.example", [path("/", "s0")])], cls=None))
    assert w.service_for("a.example") == 404
    w.apply(ingress_class("netplane", default=True))
    assert w.service_for("a.example") == "s0"
    w.apply(ingress_class("netplane", controller="someone.else/ingress", default=True))
    assert w.service_for("a.example") == 404
    w.assert_matches_rebuild()


# -- merging and conflicts ------------------------------------------------------------


def test_rules_for_one_host_merge_across_ingresses() -> None:
    w = World(
        *SVCS,
        ingress("a", [("foo.example", [path("/a", "s0")])]),
        ingress("b", [("foo.example", [path("/b", "s1")])]),
    )
    assert w.service_for("foo.example", "/a") == "s0"
    assert w.service_for("foo.example", "/b/x") == "s1"


def test_conflicting_path_goes_to_the_oldest_and_the_loser_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "netplane.ingress")
    w = World(*SVCS)
    w.apply(
        ingress("young", [("foo.example", [path("/x", "s1")])], created="2024-05-01T00:00:00Z"),
        ingress("old", [("foo.example", [path("/x/", "s0")])], created="2024-01-01T00:00:00Z"),
    )
    assert w.service_for("foo.example", "/x") == "s0"
    lines = [r.getMessage() for r in caplog.records if "already defined" in r.getMessage()]
    assert len(lines) == 1
    assert "Ingress default/young" in lines[0]
    assert "Ingress default/old" in lines[0]
    # Routing many requests logs nothing more.
    caplog.clear()
    for _ in range(10):
        w.route("foo.example", "/x")
    assert not caplog.records
    # When the older one goes, the younger one serves.
    w.delete("Ingress", "old")
    assert w.service_for("foo.example", "/x") == "s1"
    w.assert_matches_rebuild()


def test_same_timestamp_conflict_goes_to_the_first_name() -> None:
    w = World(
        *SVCS,
        ingress("b", [("foo.example", [path("/x", "s1")])]),
        ingress("a", [("foo.example", [path("/x", "s0")])]),
    )
    assert w.service_for("foo.example", "/x") == "s0"


def test_exact_and_prefix_on_one_path_do_not_conflict() -> None:
    w = World(
        *SVCS,
        ingress("a", [("foo.example", [path("/x", "s0", "Prefix")])]),
        ingress("b", [("foo.example", [path("/x", "s1", "Exact")])]),
    )
    assert w.service_for("foo.example", "/x") == "s1"
    assert w.service_for("foo.example", "/x/y") == "s0"
    assert w.routes.debug_state()["problems"] == []


# -- default backends -----------------------------------------------------------------


def test_host_default_backend_then_global_then_404() -> None:
    w = World(
        *SVCS,
        ingress("a", [("a.example", [path("/x", "s0")])], default=backend("s1")),
        ingress("b", [("b.example", [path("/x", "s0")])]),
        ingress("global", default=backend("dflt"), created="2023-01-01T00:00:00Z"),
    )
    # a.example's own defaultBackend
    assert w.service_for("a.example", "/nope") == "s1"
    # b.example has none: the oldest Ingress-wide default
    assert w.service_for("b.example", "/nope") == "dflt"
    assert w.service_for("unknown.example", "/") == "dflt"
    w.delete("Ingress", "global")
    # Ingress a is now the oldest with a default backend.
    assert w.service_for("unknown.example", "/") == "s1"
    w.delete("Ingress", "a")
    assert w.service_for("unknown.example", "/") == 404
    w.assert_matches_rebuild()


# -- backends and endpoints -------------------------------------------------------------


def test_port_by_number_and_by_name() -> None:
    w = World(
        service("multi", [("http", 80), ("admin", 9000)]),
        endpoints("multi", ["10.2.0.1"], [("http", 8080), ("admin", 9090)]),
        ingress(
            "ing",
            [
                (
                    "a.example",
                    [path("/num", "multi", port=9000), path("/name", "multi", port="http")],
                )
            ],
        ),
    )
    d = w.route("a.example", "/num")
    assert isinstance(d, Forward) and d.targets == (("10.2.0.1", 9090),)
    d = w.route("a.example", "/name")
    assert isinstance(d, Forward) and d.targets == (("10.2.0.1", 8080),)


@pytest.mark.parametrize(
    ("objects", "body"),
    [
        ([], b"service default/web not found"),
        ([service("web", [("other", 81)])], b"has no TCP port 80"),
        ([service("web")], b"no ready endpoint"),
        ([service("web"), endpoints("web", ["10.3.0.1"], ready=False)], b"no ready endpoint"),
    ],
)
def test_no_ready_endpoint_is_503(objects: list, body: bytes) -> None:
    w = World(*objects, ingress("ing", [("a.example", [path("/", "web")])]))
    d = w.route("a.example", "/")
    assert isinstance(d, Respond)
    assert d.status == 503
    assert body in d.body


def test_round_robin_over_ready_endpoints_with_retries_behind() -> None:
    w = World(
        service("web"),
        endpoints("web", ["10.3.0.3", "10.3.0.1", "10.3.0.2", "10.3.0.4"]),
        ingress("ing", [("a.example", [path("/", "web")])]),
    )
    seen = []
    for _ in range(8):
        d = w.route("a.example", "/")
        assert isinstance(d, Forward)
        assert len(d.targets) == 3
        assert len(set(d.targets)) == 3
        seen.append(d.targets[0][0])
    assert sorted(seen[:4]) == ["10.3.0.1", "10.3.0.2", "10.3.0.3", "10.3.0.4"]
    assert seen[4:] == seen[:4]


def test_serving_terminating_fallback_and_endpoint_changes() -> None:
    w = World(
        service("web"),
        endpoints("web", ["10.3.0.1"], ready=False, serving=True, terminating=True),
        ingress("ing", [("a.example", [path("/", "web")])]),
    )
    d = w.route("a.example", "/")
    assert isinstance(d, Forward) and d.targets == (("10.3.0.1", 8080),)
    w.apply(endpoints("web", ["10.3.0.9"]))
    d = w.route("a.example", "/")
    assert isinstance(d, Forward) and d.targets == (("10.3.0.9", 8080),)
    w.delete("EndpointSlice", "web-1")
    assert w.service_for("a.example", "/") == 503
    w.delete("Service", "web")
    assert w.service_for("a.example", "/") == 503
    w.apply(service("web"), endpoints("web", ["10.3.0.7"]))
    assert w.service_for("a.example", "/") == "web"
    w.assert_matches_rebuild()


def test_backend_resource_is_unsupported_503(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "netplane.ingress")
    res = {"resource": {"apiGroup": "k8s.example.com", "kind": "StorageBucket", "name": "b"}}
    w = World(
        *SVCS,
        ingress(
            "ing",
            [
                (
                    "a.example",
                    [{"path": "/static", "pathType": "Prefix", "backend": res}, path("/", "s0")],
                )
            ],
        ),
    )
    d = w.route("a.example", "/static/x")
    assert isinstance(d, Respond) and d.status == 503
    assert b"StorageBucket" in d.body
    assert w.service_for("a.example", "/other") == "s0"
    assert any("backend.resource is not supported" in r.getMessage() for r in caplog.records)


# -- incremental updates ------------------------------------------------------------------


def test_incremental_updates_match_a_rebuild() -> None:
    w = World(*SVCS)
    w.apply(ingress("a", [("a.example", [path("/", "s0")]), ("*.w.example", [path("/", "s1")])]))
    w.assert_matches_rebuild()
    w.apply(ingress("a", [("b.example", [path("/", "s0")])]))
    assert w.service_for("a.example") == 404
    assert w.service_for("x.w.example") == 404
    assert w.service_for("b.example") == "s0"
    w.assert_matches_rebuild()
    w.apply(ingress("a", [("b.example", [path("/", "s0")])], cls="nginx"))
    assert w.service_for("b.example") == 404
    w.assert_matches_rebuild()
    assert w.routes.debug_state()["pools"] == 0


def test_debug_state_lists_hosts_and_paths() -> None:
    w = World(*SVCS, ingress("ing", [("a.example", [path("/x", "s0", "Exact")])]))
    st = w.routes.debug_state()
    assert st["hosts"]["a.example"]["paths"]["/x"] == {
        "ingress": "Ingress default/ing",
        "pathType": "Exact",
        "service": "default/s0",
        "port": 80,
        "endpoints": 1,
    }


# -- the lookup cache ----------------------------------------------------------------------


def test_repeated_requests_see_route_changes_at_once() -> None:
    w = World(*SVCS, ingress("a", [("foo.example", [path("/", "s0")])]))
    for _ in range(3):
        assert w.service_for("foo.example", "/x") == "s0"
    w.apply(ingress("a", [("foo.example", [path("/", "s1")])]))
    assert w.service_for("foo.example", "/x") == "s1"
    w.apply(ingress("b", [("foo.example", [path("/x", "s2", "Exact")])]))
    assert w.service_for("foo.example", "/x") == "s2"
    w.delete("Ingress", "b")
    assert w.service_for("foo.example", "/x") == "s1"
    w.delete("Ingress", "a")
    assert w.service_for("foo.example", "/x") == 404
    w.apply(ingress("c", [("foo.example", [path("/", "s0")])]))
    assert w.service_for("foo.example", "/x") == "s0"


def test_the_lookup_cache_is_bounded() -> None:
    from netplane.ingress import routes

    w = World(*SVCS, ingress("a", [("", [path("/", "s0")])]))
    for i in range(routes._CACHE_MAX_ENTRIES + 100):
        assert w.service_for(f"h{i % 7}.example", f"/p/{i}") == "s0"
    assert w.service_for("h.example", "/" + "x" * 10_000) == "s0"
    held = sum(len(d) for d in w.routes._cache.values())
    assert 0 < held <= routes._CACHE_MAX_ENTRIES
    assert all(len(t) <= routes._CACHE_MAX_TARGET for d in w.routes._cache.values() for t in d)


# -- incremental == rebuild, for random histories ------------------------------------------

HOSTS = ["a.example", "b.example", "*.w.example", ""]
PATHS = [("/", "Prefix"), ("/x", "Prefix"), ("/x", "Exact"), ("/x/y", "Prefix")]
REQUESTS = [
    (h, p)
    for h in ("a.example", "b.example", "q.w.example", "other")
    for p in ("/", "/x", "/x/", "/x/y/z", "/z")
]


def _random_ingress(draw, name: str) -> dict:  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    rules = []
    for host in draw(st.lists(st.sampled_from(HOSTS), max_size=2, unique=True)):
        chosen = draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3, unique=True))
        rules.append(
            (host, [path(p, draw(st.sampled_from(["s0", "s1", "s2"])), k) for p, k in chosen])
        )
    default = backend("dflt") if draw(st.booleans()) or not rules else None
    tls = (
        [{"hosts": [draw(st.sampled_from(HOSTS[:3]))], "secretName": "t"}]
        if draw(st.booleans())
        else None
    )
    annotations = {}
    if draw(st.booleans()):
        annotations["nginx.ingress.kubernetes.io/canary"] = "true"
        annotations["nginx.ingress.kubernetes.io/canary-by-header"] = "x-canary"
    return ingress(
        name,
        rules,
        default=default,
        tls=tls,
        annotations=annotations,
        created=draw(st.sampled_from(["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"])),
        cls=draw(st.sampled_from(["netplane", "netplane", "nginx"])),
    )


def test_random_histories_match_a_rebuild() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @st.composite
    def steps(draw):  # type: ignore[no-untyped-def]
        out = []
        for _ in range(draw(st.integers(1, 8))):
            name = draw(st.sampled_from(["i1", "i2", "i3"]))
            if draw(st.integers(0, 4)) == 0:
                out.append(("delete", name))
            else:
                out.append(("apply", _random_ingress(draw, name)))
        return out

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(steps())
    def check(history: list) -> None:
        w = World(*SVCS)
        for step, (op, arg) in enumerate(history):
            if op == "delete":
                w.delete("Ingress", arg)
            else:
                w.apply(arg)
            before = [w.service_for(h, p) for h, p in REQUESTS]
            w.assert_matches_rebuild()
            fresh = World(*SVCS)
            for obj in w.state.objects("Ingress"):
                fresh.apply(_raw_of(obj.key.name, history[: step + 1]))
            assert [fresh.service_for(h, p) for h, p in REQUESTS] == before

    check()


def _raw_of(name: str, history: list) -> dict:
    """The last applied raw object named ``name``."""
    return next(
        arg for op, arg in reversed(history) if op == "apply" and arg["metadata"]["name"] == name
    )
