"""ingress-nginx annotations: parsing, and what each does to the routing decision."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from ingress_world import World, backends, endpoints, ingress, path, service
from netplane.ingress.annotations import (
    DEFAULT_BODY_LIMIT,
    NAMES,
    Affinity,
    Annotations,
    Canary,
    parse_annotations,
)
from netplane.ingress.routes import Forward, ProxyOptions, Redirect, Respond, RouteTable

NGINX = "nginx.ingress.kubernetes.io/"
OURS = "netplane.io/"
SVCS = backends("s0", "s1", "s2")


# -- parsing ------------------------------------------------------------------------------

PARSE_CASES = [
    ({}, Annotations()),
    ({"rewrite-target": "/$1"}, Annotations(rewrite_target="/$1")),
    ({"use-regex": "true"}, Annotations(use_regex=True)),
    ({"ssl-redirect": "false"}, Annotations(ssl_redirect=False)),
    ({"force-ssl-redirect": "True"}, Annotations(force_ssl_redirect=True)),
    ({"proxy-body-size": "8k"}, Annotations(body_limit=8192)),
    ({"proxy-body-size": "1m"}, Annotations(body_limit=1024 * 1024)),
    ({"proxy-body-size": "2G"}, Annotations(body_limit=2 * 1024**3)),
    ({"proxy-body-size": "100"}, Annotations(body_limit=100)),
    ({"proxy-body-size": "0"}, Annotations(body_limit=None)),
    ({"proxy-connect-timeout": "3"}, Annotations(connect_timeout=3.0)),
    ({"proxy-read-timeout": "120s"}, Annotations(read_timeout=120.0)),
    ({"proxy-send-timeout": "500ms"}, Annotations(send_timeout=0.5)),
    ({"backend-protocol": "HTTPS"}, Annotations(backend_https=True)),
    ({"backend-protocol": "grpc"}, Annotations(backend_h2=True)),
    ({"backend-protocol": "GRPCS"}, Annotations(backend_https=True, backend_h2=True)),
    ({"backend-protocol": "http"}, Annotations()),
    ({"affinity": "cookie"}, Annotations(affinity=Affinity())),
    (
        {
            "affinity": "cookie",
            "session-cookie-name": "route",
            "session-cookie-max-age": "3600",
            "session-cookie-path": "/app",
        },
        Annotations(affinity=Affinity("route", 3600, "/app")),
    ),
    ({"canary": "true", "canary-weight": "30"}, Annotations(canary=Canary(weight=30))),
    (
        {"canary": "true", "canary-by-header": "X-Canary", "canary-by-header-value": "yes"},
        Annotations(canary=Canary(0, b"x-canary", b"yes")),
    ),
    ({"canary-weight": "30"}, Annotations()),  # no canary: "true", no canary
    (
        {"whitelist-source-range": "10.0.0.0/8, 192.0.2.7"},
        Annotations(
            allow=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"))
        ),
    ),
    (
        {"allowlist-source-range": "2001:db8::/32"},
        Annotations(allow=(ipaddress.ip_network("2001:db8::/32"),)),
    ),
    (
        {"permanent-redirect": "https://new.example/"},
        Annotations(permanent_redirect="https://new.example/"),
    ),
    ({"temporal-redirect": "/maintenance"}, Annotations(temporal_redirect="/maintenance")),
    ({"app-root": "/app1"}, Annotations(app_root="/app1")),
]


@pytest.mark.parametrize("prefix", [NGINX, OURS])
@pytest.mark.parametrize(("short", "want"), PARSE_CASES)
def test_each_annotation_under_both_prefixes(prefix: str, short: dict, want: Annotations) -> None:
    got = parse_annotations({prefix + k: v for k, v in short.items()})
    assert got == want
    assert got.problems == ()


def test_every_name_has_a_parse_case() -> None:
    covered = {k for short, _ in PARSE_CASES for k in short}
    assert covered == set(NAMES)


def test_netplane_prefix_wins_over_nginx() -> None:
    got = parse_annotations({NGINX + "proxy-body-size": "8k", OURS + "proxy-body-size": "16k"})
    assert got.body_limit == 16384


def test_unknown_annotations_are_ignored() -> None:
    got = parse_annotations({NGINX + "configuration-snippet": "evil;", "other.io/x": "y"})
    assert got == Annotations()
    assert got.problems == ()


BAD_CASES = [
    ("use-regex", "maybe", "boolean"),
    ("ssl-redirect", "yes", "boolean"),
    ("proxy-body-size", "1x", "size"),
    ("proxy-body-size", "-1", "size"),
    ("proxy-connect-timeout", "0", "positive"),
    ("proxy-read-timeout", "soon", "positive"),
    ("backend-protocol", "FCGI", "HTTP, HTTPS, GRPC or GRPCS"),
    ("affinity", "ip", "only cookie"),
    ("whitelist-source-range", "10.0.0.0/8, nonsense", "not an address"),
    ("app-root", "app1", "must start with /"),
    ("permanent-redirect", "https://x.example/a b", "without spaces"),
]


@pytest.mark.parametrize(("short", "value", "why"), BAD_CASES)
def test_bad_values_keep_the_default_and_say_why(short: str, value: str, why: str) -> None:
    got = parse_annotations({NGINX + short: value})
    assert len(got.problems) == 1
    assert NGINX + short in got.problems[0]
    assert repr(value) in got.problems[0]
    assert why in got.problems[0]
    assert got == Annotations()  # problems are not compared: every setting is the default


def test_bad_canary_settings() -> None:
    got = parse_annotations(
        {
            NGINX + "canary": "true",
            NGINX + "canary-weight": "101",
            NGINX + "canary-by-header": "a b",
        }
    )
    assert got.canary == Canary()
    assert len(got.problems) == 2


def test_bad_cookie_settings() -> None:
    got = parse_annotations(
        {
            NGINX + "affinity": "cookie",
            NGINX + "session-cookie-name": "bad name",
            NGINX + "session-cookie-max-age": "1h",
        }
    )
    assert got.affinity == Affinity()
    assert len(got.problems) == 2


# -- what they do --------------------------------------------------------------------------


def one(annotations: dict[str, str], *, paths: list | None = None, tls: bool = False, **kw):  # type: ignore[no-untyped-def]
    """A World with one Ingress on host a.example carrying ``annotations`` (short names)."""
    raw = ingress(
        "ing",
        [("a.example", paths or [path("/", "s0")])],
        annotations={NGINX + k: v for k, v in annotations.items()},
        tls=[{"hosts": ["a.example"], "secretName": "a"}] if tls else None,
    )
    return World(*SVCS, raw, **kw)


def test_bad_value_is_logged_naming_the_ingress_and_the_rest_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "netplane.ingress")
    w = one({"proxy-body-size": "lots", "proxy-read-timeout": "5"})
    d = w.route("a.example", "/")
    assert isinstance(d, Forward)
    assert d.options.body_limit == DEFAULT_BODY_LIMIT
    assert d.options.read_timeout == 5.0
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1
    assert "Ingress default/ing" in msgs[0] and NGINX + "proxy-body-size" in msgs[0]
    caplog.clear()
    for _ in range(5):
        w.route("a.example", "/")
    assert not caplog.records  # never per request


def test_proxy_options_and_hsts() -> None:
    w = one(
        {
            "proxy-body-size": "0",
            "proxy-connect-timeout": "2",
            "proxy-read-timeout": "30",
            "proxy-send-timeout": "40",
            "backend-protocol": "HTTPS",
        }
    )
    d = w.route("a.example", "/", https=True)
    assert isinstance(d, Forward)
    assert d.options == ProxyOptions(None, 2.0, 30.0, 40.0, b"max-age=31536000; includeSubDomains")
    assert d.upstream_tls is True
    w = one({}, routes=RouteTable(hsts=None))
    d = w.route("a.example", "/", https=True)
    assert isinstance(d, Forward) and d.options.hsts is None and d.options.body_limit == 1 << 20


@pytest.mark.parametrize(
    ("annotations", "tls", "https", "want"),
    [
        ({}, True, False, 308),  # TLS host, plain HTTP: redirected by default
        ({}, True, True, "s0"),
        ({}, False, False, "s0"),  # no TLS for the host: served over HTTP
        ({"ssl-redirect": "false"}, True, False, "s0"),
        ({"force-ssl-redirect": "true"}, False, False, 308),
        ({"force-ssl-redirect": "true"}, False, True, "s0"),
    ],
)
def test_ssl_redirect(annotations: dict, tls: bool, https: bool, want: object) -> None:
    w = one(annotations, tls=tls)
    assert w.service_for("a.example:8080", "/p?q=1", https=https) == want
    if want == 308:
        d = w.route("a.example:8080", "/p?q=1")
        assert isinstance(d, Redirect)
        assert d.location == b"https://a.example/p?q=1"


def test_ssl_redirect_names_the_https_port_when_not_443() -> None:
    w = one({}, tls=True, routes=RouteTable(https_port=8443))
    d = w.route("A.example:8080", "/x")
    assert isinstance(d, Redirect) and d.location == b"https://a.example:8443/x"


def test_ssl_redirect_of_an_absolute_form_target() -> None:
    w = one({}, tls=True)
    d = w.route("a.example", "http://a.example/p?q=1")
    assert isinstance(d, Redirect) and d.location == b"https://a.example/p?q=1"


def test_wildcard_tls_covers_a_host_for_ssl_redirect() -> None:
    raw = ingress(
        "ing",
        [("a.example", [path("/", "s0")]), ("b.other", [path("/", "s1")])],
        tls=[{"hosts": ["*.example"], "secretName": "w"}],
    )
    w = World(*SVCS, raw)
    assert w.service_for("a.example") == 308
    assert w.service_for("b.other") == "s1"


@pytest.mark.parametrize(
    ("rule", "annotations", "target", "want"),
    [
        # ingress-nginx's documented example
        (
            "/something(/|$)(.*)",
            {"use-regex": "true", "rewrite-target": "/$2"},
            "/something/new?x=1",
            "/new?x=1",
        ),
        ("/something(/|$)(.*)", {"use-regex": "true", "rewrite-target": "/$2"}, "/something", "/"),
        (
            "/something(/|$)(.*)",
            {"use-regex": "true", "rewrite-target": "/$2"},
            "/SOMETHING/a/b",  # regex locations are case-insensitive, as nginx's ~*
            "/a/b",
        ),
        ("/api", {"rewrite-target": "/"}, "/api/v1?q", "/?q"),  # no regex: whole path replaced
        ("/api", {"rewrite-target": "/v2?x=1"}, "/api/v1?q", "/v2?x=1"),
    ],
)
def test_rewrite_target(rule: str, annotations: dict, target: str, want: str) -> None:
    w = one(annotations, paths=[path(rule, "s0", "ImplementationSpecific")])
    d = w.route("a.example", target)
    assert isinstance(d, Forward)
    assert d.path == want


def test_use_regex_paths_and_a_bad_regex(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "netplane.ingress")
    w = one(
        {"use-regex": "true"},
        paths=[
            path("/v[0-9]+/users", "s0", "ImplementationSpecific"),
            path("/broken(", "s1", "ImplementationSpecific"),
            path("/exact", "s2", "Exact"),
        ],
    )
    assert w.service_for("a.example", "/v12/users/7") == "s0"
    assert w.service_for("a.example", "/vx/users") == 404
    assert w.service_for("a.example", "/exact") == "s2"
    assert any("not a valid regular expression" in r.getMessage() for r in caplog.records)


def test_cookie_affinity() -> None:
    w = World(
        service("web"),
        endpoints("web", ["10.3.0.1", "10.3.0.2", "10.3.0.3"]),
        ingress(
            "ing",
            [("a.example", [path("/app", "web")])],
            annotations={NGINX + "affinity": "cookie", NGINX + "session-cookie-max-age": "60"},
        ),
    )
    first = w.route("a.example", "/app/x")
    assert isinstance(first, Forward) and first.set_cookie is not None
    name, _, rest = first.set_cookie.partition(b"=")
    token, _, attrs = rest.partition(b";")
    assert name == b"INGRESSCOOKIE"
    assert attrs == b" Path=/app; Max-Age=60; HttpOnly"
    cookie = {b"cookie": b"other=1; INGRESSCOOKIE=" + token}
    for _ in range(5):
        d = w.route("a.example", "/app/y", headers=cookie)
        assert isinstance(d, Forward)
        assert d.targets[0] == first.targets[0]
        assert d.set_cookie is None
    # A cookie for an endpoint that is gone gets a new endpoint and a new cookie.
    w.apply(
        endpoints(
            "web", [a for a in ("10.3.0.1", "10.3.0.2", "10.3.0.3") if a != first.targets[0][0]]
        )
    )
    d = w.route("a.example", "/app/y", headers=cookie)
    assert isinstance(d, Forward)
    assert d.targets[0] != first.targets[0]
    assert d.set_cookie is not None and token not in d.set_cookie


def canary_world(**canary: str) -> World:
    main = ingress("main", [("a.example", [path("/", "s0")])])
    can = ingress(
        "can",
        [("a.example", [path("/", "s1")])],
        annotations={NGINX + "canary": "true", **{NGINX + k: v for k, v in canary.items()}},
    )
    return World(*SVCS, main, can)


def test_canary_weight_is_exact_per_hundred() -> None:
    w = canary_world(**{"canary-weight": "30"})
    got = [w.service_for("a.example", "/") for _ in range(200)]
    assert got.count("s1") == 60
    d = next(
        d
        for d in (w.route("a.example", "/") for _ in range(10))
        if isinstance(d, Forward) and d.service == ("default", "s1")
    )
    assert d.ingress.name == "can"


@pytest.mark.parametrize(
    ("value", "want"),
    [(b"always", "s1"), (b"never", "s0"), (b"other", "s0"), (None, "s0")],
)
def test_canary_by_header(value: bytes | None, want: str) -> None:
    w = canary_world(**{"canary-by-header": "X-Canary"})
    headers = {b"x-canary": value} if value is not None else {}
    assert all(w.service_for("a.example", "/", headers=headers) == want for _ in range(5))


def test_canary_by_header_value_and_weight_fallback() -> None:
    w = canary_world(
        **{
            "canary-by-header": "X-Canary",
            "canary-by-header-value": "blue",
            "canary-weight": "100",
        }
    )
    assert w.service_for("a.example", "/", headers={b"x-canary": b"blue"}) == "s1"
    # Any other value is ignored and the weight decides.
    assert w.service_for("a.example", "/", headers={b"x-canary": b"green"}) == "s1"
    w = canary_world(**{"canary-by-header": "X-Canary", "canary-by-header-value": "blue"})
    assert w.service_for("a.example", "/", headers={b"x-canary": b"green"}) == "s0"


def test_canary_without_endpoints_falls_back_to_main_and_without_main_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "netplane.ingress")
    w = canary_world(**{"canary-weight": "100"})
    w.delete("EndpointSlice", "s1-1")
    assert w.service_for("a.example", "/") == "s0"
    w.delete("Ingress", "main")
    assert w.service_for("a.example", "/") == 404
    assert any("has no main Ingress" in r.getMessage() for r in caplog.records)
    w.assert_matches_rebuild()


@pytest.mark.parametrize(
    ("client", "want"),
    [
        ("10.1.2.3", "s0"),
        ("192.0.2.7", "s0"),
        ("::ffff:10.9.9.9", "s0"),  # an IPv4-mapped client on a dual-stack socket
        ("192.0.2.8", 403),
        ("2001:db8::1", 403),
        ("garbage", 403),
    ],
)
def test_allowlist(client: str, want: object) -> None:
    w = one({"whitelist-source-range": "10.0.0.0/8,192.0.2.7"})
    assert w.service_for("a.example", "/", client_ip=client) == want
    d = w.route("a.example", "/", client_ip="192.0.2.8")
    assert isinstance(d, Respond) and b"not allowed" in d.body


@pytest.mark.parametrize(
    ("annotations", "target", "status", "location"),
    [
        ({"permanent-redirect": "https://new.example/"}, "/x", 301, b"https://new.example/"),
        ({"temporal-redirect": "https://m.example/down"}, "/x", 302, b"https://m.example/down"),
        ({"app-root": "/app1"}, "/", 302, b"http://a.example:8080/app1"),
        ({"app-root": "/app1"}, "/?q=1", 302, b"http://a.example:8080/app1"),
    ],
)
def test_redirect_annotations(annotations: dict, target: str, status: int, location: bytes) -> None:
    w = one(annotations)
    d = w.route("a.example:8080", target)
    assert isinstance(d, Redirect)
    assert (d.status, d.location) == (status, location)
    assert d.ingress is not None and d.ingress.name == "ing"


def test_app_root_only_redirects_the_root() -> None:
    w = one({"app-root": "/app1"})
    assert w.service_for("a.example", "/app1/page") == "s0"


def test_allowlist_comes_before_redirects() -> None:
    w = one({"whitelist-source-range": "10.0.0.0/8", "permanent-redirect": "https://n.example/"})
    assert w.service_for("a.example", "/", client_ip="192.0.2.1") == 403
    assert w.service_for("a.example", "/", client_ip="10.0.0.1") == 301
