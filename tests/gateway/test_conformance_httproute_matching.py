"""HTTPRoute attachment and matching, after the Gateway API conformance suite.

Each test rebuilds the objects of one kubernetes-sigs/gateway-api
conformance test (``conformance/tests/httproute-*.yaml``) on the suite's base
world (:mod:`gateway_world`), sends the suite's requests with curl and
checks what the suite checks: status codes, the backend that served, the
headers it saw, and the status conditions netplane reports.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from gateway_world import (
    APP,
    GROUP,
    HAVE_CURL,
    INFRA,
    WEB,
    ConformanceWorld,
    Reply,
    backend,
    gateway,
    http_route,
    listener,
    meta,
)

pytestmark = pytest.mark.skipif(not HAVE_CURL, reason="needs curl")

V1 = f"{INFRA}/infra-backend-v1"
V2 = f"{INFRA}/infra-backend-v2"
V3 = f"{INFRA}/infra-backend-v3"


# -- objects ---------------------------------------------------------------------------------


def rule(*backends: dict[str, Any], matches: list[dict] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"backendRefs": list(backends)}
    if matches is not None:
        r["matches"] = matches
    return r


def match(
    path: str | None = None,
    kind: str = "PathPrefix",
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    m: dict[str, Any] = {}
    if path is not None:
        m["path"] = {"type": kind, "value": path}
    if method is not None:
        m["method"] = method
    if headers:
        m["headers"] = [{"name": k, "value": v} for k, v in headers.items()]
    if query:
        m["queryParams"] = [{"name": k, "value": v} for k, v in query.items()]
    return m


def exact(path: str) -> dict[str, Any]:
    return match(path, "Exact")


def v(n: int, **extra: Any) -> dict[str, Any]:
    """A backendRef to infra-backend-v<n>:8080."""
    return backend(f"infra-backend-v{n}", **extra)


def parent(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": INFRA, **extra}


def reference_grant(
    name: str, ns: str, *, from_: dict[str, str], to: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": meta(name, ns),
        "spec": {"from": [from_], "to": [to]},
    }


FROM_INFRA_ROUTES = {"group": GROUP, "kind": "HTTPRoute", "namespace": INFRA}


# -- checks ----------------------------------------------------------------------------------


@dataclass
class Case:
    """One of the suite's ExpectedResponses: a request and what must come back."""

    path: str = "/"
    backend: str = ""  # namespace/service; "" for a non-2xx status
    status: int = 200
    host: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"

    def __post_init__(self) -> None:
        if self.backend == "" and self.status == 200:
            raise ValueError("a 200 case names its backend")


async def check(
    world: ConformanceWorld,
    gw: str,
    cases: list[Case],
    address: tuple[str, int] | None = None,
) -> list[Reply]:
    """Send every case (concurrently) and assert each reply as the suite's CompareRoundTrip."""
    replies = await asyncio.gather(
        *(
            world.request(
                gw, c.path, host=c.host, headers=c.headers, method=c.method, address=address
            )
            for c in cases
        )
    )
    failures = []
    for c, r in zip(cases, replies, strict=True):
        got = (r.status, r.served_by if r.status == 200 else "")
        want = (c.status, c.backend if c.status == 200 else "")
        if got != want:
            failures.append(f"{c.method} {c.host or ''}{c.path} {c.headers}: {got}, want {want}")
        elif r.status == 200 and c.method != "HEAD":
            echo = r.echo
            if echo["path"] != c.path or echo["method"] != c.method:
                failures.append(f"{c.path}: backend saw {echo['method']} {echo['path']}")
    assert not failures, "\n".join(failures)
    return replies


def cond(world: ConformanceWorld, name: str, type_: str, gw: str = "same-namespace",
         ns: str = INFRA) -> tuple[str, str]:  # fmt: skip
    c = world.parent_condition("HTTPRoute", ns, name, type_, gw)
    return c["status"], c["reason"]


def assert_attached(
    world: ConformanceWorld, name: str, gw: str = "same-namespace", ns: str = INFRA
) -> None:
    """GatewayAndHTTPRoutesMustBeAccepted + HTTPRouteMustHaveResolvedRefsConditionsTrue."""
    st = world.status("HTTPRoute", ns, name)
    assert st is not None
    mine = [p for p in st["parents"] if p["parentRef"]["name"] == gw]
    assert mine, st
    for p in mine:
        assert p["controllerName"], p
        ref = p["parentRef"]
        assert ref["group"] == GROUP and ref["kind"] == "Gateway", ref
        if ns != INFRA:
            assert ref["namespace"] == INFRA, ref
    assert cond(world, name, "Accepted", gw, ns) == ("True", "Accepted")
    assert cond(world, name, "ResolvedRefs", gw, ns) == ("True", "ResolvedRefs")
    assert_listeners_ready(world, gw)


def assert_listeners_ready(world: ConformanceWorld, gw: str) -> None:
    st = world.status("Gateway", INFRA, gw)
    assert st is not None
    assert any(a.get("type") for a in st.get("addresses", [])), st.get("addresses")
    for li in st["listeners"]:
        got = {c["type"]: c["status"] for c in li["conditions"]}
        for t in ("Accepted", "ResolvedRefs", "Programmed"):
            assert got.get(t) == "True", (li["name"], li["conditions"])


def assert_unresolved(world: ConformanceWorld, name: str, reason: str) -> None:
    """Accepted, but ResolvedRefs False with ``reason`` (the invalid-backendRef tests)."""
    assert cond(world, name, "Accepted") == ("True", "Accepted")
    assert cond(world, name, "ResolvedRefs") == ("False", reason)


# -- attachment ------------------------------------------------------------------------------


async def test_httproute_simple_same_namespace(world: ConformanceWorld) -> None:
    """HTTPRouteSimpleSameNamespace."""
    route = http_route("gateway-conformance-infra-test", [rule(v(1))])
    route["metadata"]["generation"] = 3
    await world.start([route])
    assert_attached(world, "gateway-conformance-infra-test")
    # the suite's condition checks require observedGeneration == metadata.generation
    st = world.status("HTTPRoute", INFRA, "gateway-conformance-infra-test")
    assert st is not None
    assert {c["observedGeneration"] for p in st["parents"] for c in p["conditions"]} == {3}
    await check(world, "same-namespace", [Case("/", V1)])


async def test_httproute_cross_namespace(world: ConformanceWorld) -> None:
    """HTTPRouteCrossNamespace."""
    route = http_route(
        "cross-namespace",
        [rule(backend("web-backend"))],
        ns=WEB,
        parents=[parent("backend-namespaces")],
    )
    await world.start([route])
    assert_attached(world, "cross-namespace", "backend-namespaces", WEB)
    await check(world, "backend-namespaces", [Case("/", f"{WEB}/web-backend")])


async def test_httproute_invalid_cross_namespace_parent_ref(world: ConformanceWorld) -> None:
    """HTTPRouteInvalidCrossNamespaceParentRef: a route whose namespace the listener does not
    admit is not attached, says why, and counts for nothing."""
    route = http_route(
        "invalid-cross-namespace-parent-ref",
        [rule(backend("web-backend"))],
        ns=WEB,
        parents=[parent("same-namespace")],
    )
    await world.start([route])
    name = "invalid-cross-namespace-parent-ref"
    assert cond(world, name, "ResolvedRefs", ns=WEB) == ("True", "ResolvedRefs")
    assert cond(world, name, "Accepted", ns=WEB) == ("False", "NotAllowedByListeners")
    st = world.status("HTTPRoute", WEB, name)
    assert st is not None and len(st["parents"]) == 1
    assert world.listener_status("same-namespace", "http")["attachedRoutes"] == 0
    await check(world, "same-namespace", [Case("/", status=404)])


async def test_httproute_multiple_gateways(world: ConformanceWorld) -> None:
    """HTTPRouteMultipleGateways: a route shared by two Gateways serves on each, and each
    Gateway's dedicated route only on its own."""
    await world.start(
        [
            http_route(
                "multiple-gateways-shared-route",
                [rule(v(1), matches=[match("/shared")])],
                parents=[{"name": "same-namespace"}, {"name": "all-namespaces"}],
            ),
            http_route(
                "same-namespace-dedicated-route",
                [rule(v(2), matches=[match("/")])],
                parents=[{"name": "same-namespace"}],
            ),
            http_route(
                "all-namespaces-dedicated-route",
                [rule(v(3), matches=[match("/")])],
                parents=[{"name": "all-namespaces"}],
            ),
        ]
    )
    for gw, dedicated in (("same-namespace", 2), ("all-namespaces", 3)):
        assert_attached(world, "multiple-gateways-shared-route", gw)
        assert_attached(world, f"{gw}-dedicated-route", gw)
        await check(
            world, gw, [Case("/shared", V1), Case("/", f"{INFRA}/infra-backend-v{dedicated}")]
        )
    for gw in ("same-namespace", "all-namespaces"):
        assert world.listener_status(gw, "http")["attachedRoutes"] == 2


HI = "httproute-hostname-intersection"
HI_ADDR = "127.0.92.1"
HI_ALL_ADDR = "127.0.92.2"


async def test_httproute_hostname_intersection(world: ConformanceWorld) -> None:
    """HTTPRouteHostnameIntersection."""
    gw = gateway(
        HI,
        [
            listener("listener-1", hostname="very.specific.com"),
            listener("listener-2", hostname="*.wildcard.io"),
            listener("listener-3", hostname="*.anotherwildcard.io"),
        ],
        addresses=[HI_ADDR],
    )
    gw_all = gateway(f"{HI}-all", [listener("listener-1")], addresses=[HI_ALL_ADDR])

    def route(name: str, hosts: list[str], prefix: str | None, n: int, gw: str = HI) -> dict:
        matches = [match(prefix)] if prefix else None
        return http_route(name, [rule(v(n), matches=matches)], parents=[gw], hostnames=hosts)

    routes = [
        route(
            "specific-host-matches-listener-specific-host",
            ["non.matching.com", "*.nonmatchingwildcard.io", "very.specific.com"],
            "/s1",
            1,
        ),
        route(
            "specific-host-matches-listener-wildcard-host",
            [
                "non.matching.com",
                "wildcard.io",
                "foo.wildcard.io",
                "bar.wildcard.io",
                "foo.bar.wildcard.io",
            ],
            "/s2",
            2,
        ),
        route(
            "wildcard-host-matches-listener-specific-host",
            ["non.matching.com", "*.specific.com"],
            "/s3",
            3,
        ),
        route("wildcard-host-matches-listener-wildcard-host", ["*.anotherwildcard.io"], "/s4", 1),
        route("no-intersecting-hosts", ["specific.but.wrong.com", "wildcard.io"], "/s5", 2),
        route(
            f"{HI}-all",
            ["first.com", "sub.first.com", "second.com", "sub.second.com"],
            None,
            2,
            f"{HI}-all",
        ),
    ]
    await world.start([gw, gw_all, *routes])

    for r in routes[:4]:
        assert_attached(world, r["metadata"]["name"], HI)
    assert_attached(world, f"{HI}-all", f"{HI}-all")
    assert cond(world, "no-intersecting-hosts", "Accepted", HI) == (
        "False",
        "NoMatchingListenerHostname",
    )
    st = world.status("Gateway", INFRA, HI)
    assert st is not None and len(st["listeners"]) == 3
    for name, attached in (("listener-1", 2), ("listener-2", 1), ("listener-3", 1)):
        li = world.listener_status(HI, name)
        assert li["attachedRoutes"] == attached, (name, li)
        assert [k["kind"] for k in li["supportedKinds"]].count("HTTPRoute") == 1, li
        got = {c["type"]: (c["status"]) for c in li["conditions"]}
        assert got["Accepted"] == got["ResolvedRefs"] == "True", li

    nf = 404
    await check(
        world,
        HI,
        [
            Case("/s1", V1, host="very.specific.com"),
            Case("/s1", V1, host="very.specific.com:1234"),
            Case("/s1", "", nf, host="non.matching.com"),
            Case("/s1", "", nf, host="foo.nonmatchingwildcard.io"),
            Case("/s1", "", nf, host="foo.wildcard.io"),
            Case("/non-matching-prefix", "", nf, host="very.specific.com"),
            Case("/s2", V2, host="foo.wildcard.io"),
            Case("/s2", V2, host="bar.wildcard.io"),
            Case("/s2", V2, host="foo.bar.wildcard.io"),
            Case("/s2", "", nf, host="non.matching.com"),
            Case("/s2", "", nf, host="wildcard.io"),
            Case("/s2", "", nf, host="very.specific.com"),
            Case("/s3", V3, host="very.specific.com"),
            Case("/s3", "", nf, host="foo.specific.com"),
            Case("/s3", "", nf, host="foo.wildcard.io"),
            Case("/s4", V1, host="foo.anotherwildcard.io"),
            Case("/s4", V1, host="bar.anotherwildcard.io"),
            Case("/s4", V1, host="foo.bar.anotherwildcard.io"),
            Case("/s4", "", nf, host="anotherwildcard.io"),
            Case("/s4", "", nf, host="foo.wildcard.io"),
            Case("/s4", "", nf, host="very.specific.com"),
            Case("/s5", "", nf, host="specific.but.wrong.com"),
            Case("/s5", "", nf, host="wildcard.io"),
        ],
        address=(HI_ADDR, world.p80),
    )
    await check(
        world,
        f"{HI}-all",
        [
            *(Case("/", V2, host=h) for h in ("first.com", "sub.first.com", "second.com")),
            Case("/", V2, host="sub.second.com"),
            Case("/", "", nf, host="third.com"),
            Case("/", "", nf, host="sub.third.com"),
        ],
        address=(HI_ALL_ADDR, world.p80),
    )


async def test_httproute_listener_hostname_matching(world: ConformanceWorld) -> None:
    """HTTPRouteListenerHostnameMatching."""
    name, addr = "httproute-listener-hostname-matching", "127.0.92.3"
    gw = gateway(
        name,
        [
            listener("listener-1", hostname="bar.com"),
            listener("listener-2", hostname="foo.bar.com"),
            listener("listener-3", hostname="*.bar.com"),
            listener("listener-4", hostname="*.foo.com"),
        ],
        addresses=[addr],
    )

    def section(s: str) -> dict[str, Any]:
        return parent(name, sectionName=s)

    routes = [
        http_route("backend-v1", [rule(v(1))], parents=[section("listener-1")]),
        http_route("backend-v2", [rule(v(2))], parents=[section("listener-2")]),
        http_route(
            "backend-v3", [rule(v(3))], parents=[section("listener-3"), section("listener-4")]
        ),
    ]
    await world.start([gw, *routes])
    for r in ("backend-v1", "backend-v2", "backend-v3"):
        assert_attached(world, r, name)
    st = world.status("HTTPRoute", INFRA, "backend-v3")
    assert st is not None
    sections = sorted(p["parentRef"]["sectionName"] for p in st["parents"])
    assert sections == ["listener-3", "listener-4"], st
    for p in st["parents"]:
        ok = {c["type"]: c["status"] for c in p["conditions"]}
        assert ok["Accepted"] == "True", p

    await check(
        world,
        name,
        [
            Case("/", V1, host="bar.com"),
            Case("/", V2, host="foo.bar.com"),
            Case("/", V3, host="baz.bar.com"),
            Case("/", V3, host="boo.bar.com"),
            Case("/", V3, host="multiple.prefixes.bar.com"),
            Case("/", V3, host="multiple.prefixes.foo.com"),
            Case("/", "", 404, host="foo.com"),
            Case("/", "", 404, host="no.matching.host"),
        ],
        address=(addr, world.p80),
    )


async def test_httproute_disallowed_kind(world: ConformanceWorld) -> None:
    """HTTPRouteDisallowedKind, on the kinds netplane serves.

    The suite's Gateway has one TLS Passthrough listener admitting only
    TLSRoute; netplane serves no TLSRoute (a TLS listener is
    UnsupportedProtocol), so the suite would skip the test. The same rule
    holds on an HTTP listener whose ``allowedRoutes.kinds`` admits only
    GRPCRoute: an HTTPRoute there is not allowed by the listener.
    """
    name, addr = "grpcroutes-only", "127.0.92.4"
    gw = gateway(
        name, [listener("http", allowedRoutes={"kinds": [{"kind": "GRPCRoute"}]})], addresses=[addr]
    )
    route = http_route("disallowed-kind", [rule(v(1))], parents=[name])
    await world.start([gw, route])

    assert cond(world, "disallowed-kind", "ResolvedRefs", name) == ("True", "ResolvedRefs")
    assert cond(world, "disallowed-kind", "Accepted", name) == ("False", "NotAllowedByListeners")
    # HTTPRouteMustHaveNoAcceptedParents: at most one parent, and not accepted
    st = world.status("HTTPRoute", INFRA, "disallowed-kind")
    assert st is not None and len(st["parents"]) <= 1
    # GatewayMustHaveZeroRoutes
    gst = world.status("Gateway", INFRA, name)
    assert gst is not None
    assert all(li["attachedRoutes"] == 0 for li in gst["listeners"]), gst["listeners"]
    await check(world, name, [Case("/", "", 404)], address=(addr, world.p80))


# -- matching --------------------------------------------------------------------------------


async def test_httproute_matching(world: ConformanceWorld) -> None:
    """HTTPRouteMatching."""
    route = http_route(
        "matching",
        [
            rule(v(1), matches=[match("/"), match(headers={"version": "one"})]),
            rule(v(2), matches=[match("/v2"), match(headers={"version": "two"})]),
        ],
    )
    await world.start([route])
    assert_attached(world, "matching")
    await check(
        world,
        "same-namespace",
        [
            Case("/", V1),
            Case("/example", V1),
            Case("/", V1, headers={"Version": "one"}),
            Case("/v2", V2),
            Case("/v2/example", V2),
            Case("/", V2, headers={"Version": "two"}),
            Case("/v2/", V2),
            Case("/v2example", V1),
            Case("/foo/v2/example", V1),
        ],
    )


async def test_httproute_matching_across_routes(world: ConformanceWorld) -> None:
    """HTTPRouteMatchingAcrossRoutes."""
    part1 = http_route(
        "matching-part1",
        [rule(v(1), matches=[match("/"), match(headers={"version": "one"})])],
        hostnames=["example.com", "example.net"],
    )
    part2 = http_route(
        "matching-part2",
        [rule(v(2), matches=[match("/v2"), match(headers={"version": "two"})])],
        hostnames=["example.com"],
    )
    await world.start([part1, part2])
    assert_attached(world, "matching-part1")
    assert_attached(world, "matching-part2")
    com, net = "example.com", "example.net"
    await check(
        world,
        "same-namespace",
        [
            Case("/", V1, host=com),
            Case("/example", V1, host=com),
            Case("/example", V1, host=net),
            Case("/example", V1, host=com, headers={"Version": "one"}),
            Case("/v2", V2, host=com),
            Case("/v2", V1, host=net),
            Case("/v2/example", V2, host=com),
            Case("/", V2, host=com, headers={"Version": "two"}),
        ],
    )


async def test_httproute_method_matching(world: ConformanceWorld) -> None:
    """HTTPRouteMethodMatching."""
    route = http_route(
        "method-matching",
        [
            rule(v(1), matches=[match(method="POST")]),
            rule(v(2), matches=[match(method="GET")]),
            rule(v(1), matches=[match("/path1", method="GET")]),
            rule(v(2), matches=[match(headers={"version": "one"}, method="PUT")]),
            rule(v(3), matches=[match("/path2", headers={"version": "two"}, method="POST")]),
            rule(
                v(1),
                matches=[
                    match("/path3", method="PATCH"),
                    match("/path4", headers={"version": "three"}, method="DELETE"),
                ],
            ),
            rule(v(1), matches=[match("/path5")]),
            rule(v(2), matches=[match(method="PATCH")]),
            rule(v(3), matches=[match(headers={"version": "four"})]),
        ],
    )
    await world.start([route])
    assert_attached(world, "method-matching")
    await check(
        world,
        "same-namespace",
        [
            Case("/", V1, method="POST"),
            Case("/", V2, method="GET"),
            Case("/", "", 404, method="HEAD"),
            Case("/path1", V1, method="GET"),
            Case("/", V2, method="PUT", headers={"version": "one"}),
            Case("/path2", V3, method="POST", headers={"version": "two"}),
            Case("/path3", V1, method="PATCH"),
            Case("/path4", V1, method="DELETE", headers={"version": "three"}),
            Case("/", "", 404, method="PUT"),
            Case("/path4", "", 404, method="DELETE"),
            Case("/path5", V1, method="PATCH"),
            Case("/", V2, method="PATCH", headers={"version": "four"}),
        ],
    )


async def test_httproute_query_param_matching(world: ConformanceWorld) -> None:
    """HTTPRouteQueryParamMatching."""
    whale = {"animal": "whale"}
    route = http_route(
        "query-param-matching",
        [
            rule(v(1), matches=[match(query=whale)]),
            rule(v(2), matches=[match(query={"animal": "dolphin"})]),
            rule(
                v(3),
                matches=[
                    match(query={"animal": "dolphin", "color": "blue"}),
                    match(query={"ANIMAL": "Whale"}),
                ],
            ),
            rule(v(1), matches=[match("/path1", query=whale)]),
            rule(v(2), matches=[match(headers={"version": "one"}, query=whale)]),
            rule(v(3), matches=[match("/path2", headers={"version": "two"}, query=whale)]),
            rule(
                v(1),
                matches=[
                    match("/path3", query={"animal": "shark"}),
                    match("/path4", headers={"version": "three"}, query={"animal": "kraken"}),
                ],
            ),
            rule(v(1), matches=[match("/path5")]),
            rule(v(2), matches=[match(query={"animal": "hydra"})]),
            rule(v(3), matches=[match(headers={"version": "four"})]),
        ],
    )
    await world.start([route])
    assert_attached(world, "query-param-matching")
    await check(
        world,
        "same-namespace",
        [
            Case("/?animal=whale", V1),
            Case("/?animal=dolphin", V2),
            Case("/?animal=dolphin&color=blue", V3),
            Case("/?ANIMAL=Whale", V3),
            Case("/?animal=whale&otherparam=irrelevant", V1),
            Case("/?animal=dolphin&color=yellow", V2),
            Case("/?color=blue", "", 404),
            Case("/?animal=dog", "", 404),
            Case("/?animal=whaledolphin", "", 404),
            Case("/", "", 404),
            Case("/path1?animal=whale", V1),
            Case("/?animal=whale", V2, headers={"version": "one"}),
            Case("/path2?animal=whale", V3, headers={"version": "two"}),
            Case("/path3?animal=shark", V1),
            Case("/path4?animal=kraken", V1, headers={"version": "three"}),
            Case("/?animal=shark", "", 404),
            Case("/path4?animal=kraken", "", 404),
            Case("/path5?animal=hydra", V1),
            Case("/?animal=hydra", V3, headers={"version": "four"}),
        ],
    )


async def test_httproute_header_matching(world: ConformanceWorld) -> None:
    """HTTPRouteHeaderMatching."""
    route = http_route(
        "header-matching",
        [
            rule(v(1), matches=[match(headers={"version": "one"})]),
            rule(v(2), matches=[match(headers={"version": "two"})]),
            rule(v(1), matches=[match(headers={"version": "two", "color": "orange"})]),
            rule(
                v(1), matches=[match(headers={"color": "blue"}), match(headers={"color": "green"})]
            ),
            rule(
                v(2), matches=[match(headers={"color": "red"}), match(headers={"color": "yellow"})]
            ),
        ],
    )
    await world.start([route])
    assert_attached(world, "header-matching")
    await check(
        world,
        "same-namespace",
        [
            Case("/", V1, headers={"Version": "one"}),
            Case("/", V2, headers={"Version": "two"}),
            Case("/", V1, headers={"Version": "two", "Color": "orange"}),
            Case("/", V2, headers={"Version": "two", "Color": "blue"}),
            Case("/", "", 404, headers={"Color": "orange"}),
            Case("/", "", 404, headers={"Some-Other-Header": "one"}),
            Case("/", V1, headers={"Color": "blue"}),
            Case("/", V1, headers={"Color": "green"}),
            Case("/", V2, headers={"Color": "red"}),
            Case("/", V2, headers={"Color": "yellow"}),
            Case("/", "", 404, headers={"Color": "purple"}),
        ],
    )


async def test_httproute_path_match_order(world: ConformanceWorld) -> None:
    """HTTPRoutePathMatchOrder."""
    route = http_route(
        "path-matching-order",
        [
            rule(v(1), matches=[exact("/match")]),
            rule(v(2), matches=[exact("/match/exact")]),
            rule(v(3), matches=[exact("/match/exact/one")]),
            rule(v(3), matches=[match("/match/")]),
            rule(v(1), matches=[match("/match/prefix/")]),
            rule(v(2), matches=[match("/match/prefix/one")]),
        ],
    )
    await world.start([route])
    assert_attached(world, "path-matching-order")
    await check(
        world,
        "same-namespace",
        [
            Case("/match/exact/one", V3),
            Case("/match/exact", V2),
            Case("/match", V1),
            Case("/match/prefix/one/any", V2),
            Case("/match/prefix/any", V1),
            Case("/match/any", V3),
        ],
    )


async def test_httproute_exact_path_matching(world: ConformanceWorld) -> None:
    """HTTPRouteExactPathMatching."""
    route = http_route(
        "exact-matching",
        [rule(v(1), matches=[exact("/one")]), rule(v(2), matches=[exact("/two")])],
    )
    await world.start([route])
    assert_attached(world, "exact-matching")
    await check(
        world,
        "same-namespace",
        [
            Case("/one", V1),
            Case("/two", V2),
            Case("/", "", 404),
            Case("/one/example", "", 404),
            Case("/two/", "", 404),
            Case("/Two", "", 404),
        ],
    )


# -- backendRefs -----------------------------------------------------------------------------


async def keep_alive_gets(addr: tuple[str, int], n: int) -> list[tuple[int, str]]:
    """``n`` GET / on one HTTP/1.1 connection: (status, namespace/service) of each."""
    reader, writer = await asyncio.open_connection(*addr)
    out = []
    try:
        for _ in range(n):
            writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = 0
            for ln in lines[1:]:
                k, _, val = ln.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(val)
            body = await reader.readexactly(length)
            served = ""
            if status == 200:
                doc = json.loads(body)
                served = f"{doc['namespace']}/{doc['service']}"
            out.append((status, served))
    finally:
        writer.close()
    return out


async def test_httproute_weight(world: ConformanceWorld) -> None:
    """HTTPRouteWeight.

    The suite sends 500 requests and allows each share ±5% of 70/30/0;
    netplane's smooth weighted round-robin makes the shares exact over any
    multiple of the weights' sum, on one connection and across connections.
    """
    route = http_route(
        "weighted-backends", [rule(v(1, weight=70), v(2, weight=30), v(3, weight=0))]
    )
    await world.start([route])
    assert_attached(world, "weighted-backends")
    addr = world.address("same-namespace")
    replies = await keep_alive_gets(addr, 100)
    assert {s for s, _ in replies} == {200}
    counts = {b: sum(1 for _, s in replies if s == b) for b in (V1, V2, V3)}
    assert counts == {V1: 70, V2: 30, V3: 0}

    # and per request, not per connection: ten connections of ten requests each
    many = await asyncio.gather(*(keep_alive_gets(addr, 10) for _ in range(10)))
    counts = {b: sum(1 for r in many for _, s in r if s == b) for b in (V1, V2, V3)}
    assert counts == {V1: 70, V2: 30, V3: 0}
    assert not world.seen[(INFRA, "infra-backend-v3")]


async def test_httproute_invalid_nonexistent_backend_ref(world: ConformanceWorld) -> None:
    """HTTPRouteInvalidNonExistentBackendRef."""
    route = http_route(
        "invalid-nonexistent-backend-ref", [rule(backend("nonexistent", namespace=INFRA))]
    )
    await world.start([route])
    assert_unresolved(world, "invalid-nonexistent-backend-ref", "BackendNotFound")
    await check(world, "same-namespace", [Case("/", "", 500)])


async def test_httproute_invalid_backend_ref_unknown_kind(world: ConformanceWorld) -> None:
    """HTTPRouteInvalidBackendRefUnknownKind."""
    ref = backend("infra-backend-v1", group="unknownkind.example.com", kind="NonExistent")
    await world.start([http_route("invalid-backend-ref-unknown-kind", [rule(ref)])])
    assert_unresolved(world, "invalid-backend-ref-unknown-kind", "InvalidKind")
    await check(world, "same-namespace", [Case("/v2", "", 500)])


async def test_httproute_invalid_cross_namespace_backend_ref(world: ConformanceWorld) -> None:
    """HTTPRouteInvalidCrossNamespaceBackendRef."""
    route = http_route(
        "invalid-cross-namespace-backend-ref", [rule(backend("web-backend", namespace=WEB))]
    )
    await world.start([route])
    assert_unresolved(world, "invalid-cross-namespace-backend-ref", "RefNotPermitted")
    await check(world, "same-namespace", [Case("/", "", 500)])


async def test_httproute_invalid_reference_grant(world: ConformanceWorld) -> None:
    """HTTPRouteInvalidReferenceGrant: grants each wrong in exactly one way."""
    svc = {"group": "", "kind": "Service", "name": "web-backend"}
    wrong = "not-the-group-youre-looking-for"
    grants = [
        reference_grant("reference-grant-wrong-namespace", INFRA, from_=FROM_INFRA_ROUTES, to=svc),
        reference_grant(
            "reference-grant-wrong-from-group",
            WEB,
            from_={**FROM_INFRA_ROUTES, "group": wrong},
            to=svc,
        ),
        reference_grant(
            "reference-grant-wrong-from-kind",
            WEB,
            from_={**FROM_INFRA_ROUTES, "kind": "Gateway"},
            to=svc,
        ),
        reference_grant(
            "reference-grant-wrong-from-namespace",
            WEB,
            from_={**FROM_INFRA_ROUTES, "namespace": "not-the-namespace-youre-looking-for"},
            to=svc,
        ),
        reference_grant(
            "reference-grant-wrong-to-group",
            WEB,
            from_=FROM_INFRA_ROUTES,
            to={**svc, "group": wrong},
        ),
        reference_grant(
            "reference-grant-wrong-to-kind",
            WEB,
            from_=FROM_INFRA_ROUTES,
            to={**svc, "kind": "Secret"},
        ),
        reference_grant(
            "reference-grant-wrong-to-name",
            WEB,
            from_=FROM_INFRA_ROUTES,
            to={**svc, "kind": "Secret", "name": "not-the-service-youre-looking-for"},
        ),
    ]
    route = http_route("reference-grant", [rule(backend("web-backend", namespace=WEB))])
    await world.start([*grants, route])
    assert_unresolved(world, "reference-grant", "RefNotPermitted")
    await check(world, "same-namespace", [Case("/", "", 500)])


async def test_httproute_partially_invalid_via_invalid_reference_grant(
    world: ConformanceWorld,
) -> None:
    """HTTPRoutePartiallyInvalidViaInvalidReferenceGrant."""
    grant = reference_grant(
        "invalid-reference-grant",
        APP,
        from_=FROM_INFRA_ROUTES,
        to={"group": "", "kind": "Service", "name": "app-backend-v1"},
    )
    route = http_route(
        "invalid-reference-grant",
        [
            rule(backend("app-backend-v2", namespace=APP), matches=[match("/v2")]),
            rule(backend("app-backend-v1", namespace=APP)),
        ],
    )
    await world.start([grant, route])
    assert_unresolved(world, "invalid-reference-grant", "RefNotPermitted")
    await check(
        world,
        "same-namespace",
        [Case("/v2", "", 500), Case("/", f"{APP}/app-backend-v1")],
    )
    assert not world.seen[(APP, "app-backend-v2")]


def web_backend_grant() -> dict[str, Any]:
    return reference_grant(
        "reference-grant",
        WEB,
        from_=FROM_INFRA_ROUTES,
        to={"group": "", "kind": "Service", "name": "web-backend"},
    )


async def test_httproute_reference_grant(world: ConformanceWorld) -> None:
    """HTTPRouteReferenceGrant: served with the grant, 500 once it is deleted."""
    route = http_route("reference-grant", [rule(backend("web-backend", namespace=WEB))])
    await world.start([web_backend_grant(), route])
    assert_attached(world, "reference-grant")
    await check(world, "same-namespace", [Case("/", f"{WEB}/web-backend")])

    await world.delete("ReferenceGrant", WEB, "reference-grant")
    await check(world, "same-namespace", [Case("/", "", 500)])


async def test_reference_grant_deletion_revokes_access(world: ConformanceWorld) -> None:
    """After HTTPRouteReferenceGrant: deleting the grant revokes access, status included, and
    applying it again restores it (the suite requires grants to be watched, not read once)."""
    route = http_route("reference-grant", [rule(backend("web-backend", namespace=WEB))])
    await world.start([web_backend_grant(), route])
    await check(world, "same-namespace", [Case("/", f"{WEB}/web-backend")] * 3)

    await world.delete("ReferenceGrant", WEB, "reference-grant")
    assert_unresolved(world, "reference-grant", "RefNotPermitted")
    served = len(world.seen[(WEB, "web-backend")])
    await check(world, "same-namespace", [Case("/", "", 500)] * 3)
    assert len(world.seen[(WEB, "web-backend")]) == served

    await world.apply(web_backend_grant())
    assert_attached(world, "reference-grant")
    await check(world, "same-namespace", [Case("/", f"{WEB}/web-backend")])


async def test_httproute_no_backend_refs(world: ConformanceWorld) -> None:
    """HTTPRouteNoBackendRefs: rules with omitted or empty backendRefs answer 500."""
    route = http_route(
        "omitted-backendrefs",
        [
            {"matches": [exact("/omitted-no-forward")]},
            {"matches": [exact("/empty-no-forward")], "backendRefs": []},
            rule(v(1), matches=[match("/")]),
        ],
    )
    await world.start([route])
    assert_attached(world, "omitted-backendrefs")
    await check(
        world,
        "same-namespace",
        [
            Case("/forward", V1),
            Case("/omitted-no-forward", "", 500),
            Case("/empty-no-forward", "", 500),
        ],
    )
