"""Gateway API conformance tests for HTTPRoute filters, timeouts, HTTPS listeners, parentRefs.

Each test rebuilds one test of kubernetes-sigs/gateway-api ``conformance/tests``
(named in its docstring) on the suite's base world (tests/gateway_world.py),
with the suite's objects written as dicts and its expectations, checked with
curl as the client. Listener ports 80 and 443 are mapped to free ports: a
redirect that keeps the listener's port therefore carries the mapped port,
where the suite (on port 80) expects none.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
import time
import uuid
from typing import Any

import pytest
from gateway_world import (
    HAVE_CURL,
    INFRA,
    REPLACE_PREFIX_MATCH,
    ConformanceWorld,
    Reply,
    backend,
    echo_handler,
    gateway,
    http_route,
    listener,
    meta,
)
from h2_peer import h2_backend

from netplane.testing.http import Request, Stream
from netplane.testing.ports import free_port

pytestmark = pytest.mark.skipif(not HAVE_CURL, reason="needs curl")

GW = "same-namespace"
HTTPS_GW = "same-namespace-with-https-listener"


# -- building objects ---------------------------------------------------------------------


def prefix(path: str) -> list[dict[str, Any]]:
    return [{"path": {"type": "PathPrefix", "value": path}}]


def exact(path: str) -> list[dict[str, Any]]:
    return [{"path": {"type": "Exact", "value": path}}]


def rule(
    matches: list[dict] | None = None,
    backends: list[dict] | None = None,
    filters: list[dict] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = dict(extra)
    if matches is not None:
        out["matches"] = matches
    if backends is not None:
        out["backendRefs"] = backends
    if filters is not None:
        out["filters"] = filters
    return out


def headers_mod(
    set: dict[str, str] | None = None,
    add: dict[str, str] | None = None,
    remove: list[str] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if set:
        out["set"] = [{"name": k, "value": v} for k, v in set.items()]
    if add:
        out["add"] = [{"name": k, "value": v} for k, v in add.items()]
    if remove:
        out["remove"] = list(remove)
    return out


def request_headers(**kw: Any) -> dict[str, Any]:
    return {"type": "RequestHeaderModifier", "requestHeaderModifier": headers_mod(**kw)}


def response_headers(**kw: Any) -> dict[str, Any]:
    return {"type": "ResponseHeaderModifier", "responseHeaderModifier": headers_mod(**kw)}


def redirect(**kw: Any) -> dict[str, Any]:
    return {"type": "RequestRedirect", "requestRedirect": kw}


def rewrite(**kw: Any) -> dict[str, Any]:
    return {"type": "URLRewrite", "urlRewrite": kw}


def mirror(name: str, port: int = 8080) -> dict[str, Any]:
    return {"type": "RequestMirror", "requestMirror": {"backendRef": backend(name, port, namespace=INFRA)}}  # fmt: skip


def full_path(value: str) -> dict[str, str]:
    return {"type": "ReplaceFullPath", "replaceFullPath": value}


def prefix_match(value: str) -> dict[str, str]:
    return {"type": "ReplacePrefixMatch", "replacePrefixMatch": value}


def v1(**extra: Any) -> dict[str, Any]:
    return backend("infra-backend-v1", **extra)


def v2(**extra: Any) -> dict[str, Any]:
    return backend("infra-backend-v2", **extra)


def service(name: str, ports: list[dict], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(name), "spec": {"ports": ports, **spec}}  # fmt: skip


def endpoint_slice(
    name: str, svc: str, ports: list[dict], addresses: list[str], family: str = "IPv4"
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta(name, labels={"kubernetes.io/service-name": svc}),
        "addressType": family,
        "ports": ports,
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True, "serving": True}} for a in addresses
        ],
    }


def echo_port(world: ConformanceWorld, address: str) -> int:
    """The port the harness's echo server on ``address`` listens on."""
    for s in world.backends.servers:
        host, port = s.sockets[0].getsockname()[:2]
        if host == address:
            return port
    raise AssertionError(f"no backend on {address}")


# -- checks ---------------------------------------------------------------------------------


async def accepted(world: ConformanceWorld, route: str, gw: str = GW) -> None:
    """The suite's GatewayAndHTTPRoutesMustBeAccepted + HTTPRouteMustHaveResolvedRefsConditionsTrue."""
    c = world.parent_condition("HTTPRoute", INFRA, route, "Accepted", gw)
    assert (c["status"], c["reason"]) == ("True", "Accepted"), c
    c = world.parent_condition("HTTPRoute", INFRA, route, "ResolvedRefs", gw)
    assert (c["status"], c["reason"]) == ("True", "ResolvedRefs"), c


def served(reply: Reply, service: str = "infra-backend-v1", path: str | None = None) -> None:
    assert reply.status == 200, (reply.status, reply.body)
    assert reply.served_by == f"{INFRA}/{service}", reply.body
    if path is not None:
        assert reply.echo["path"] == path


def seen(reply: Reply, expected: dict[str, str], absent: tuple[str, ...] = ()) -> None:
    """The backend saw each header with the value (repeated ones joined with ",")."""
    for k, v in expected.items():
        assert reply.seen_header(k) == v, (k, reply.echo["headers"])
    for k in absent:
        assert reply.seen_header(k) is None, (k, reply.echo["headers"])


def got(reply: Reply, expected: dict[str, str], absent: tuple[str, ...] = ()) -> None:
    """The client got each response header with the value (repeated ones joined with ",")."""
    for k, v in expected.items():
        assert reply.headers.get(k.lower()) == v, (k, reply.headers)
    for k in absent:
        assert k.lower() not in reply.headers, (k, reply.headers)


async def until_seen(world: ConformanceWorld, service: str, path: str) -> dict[str, Any]:
    """The request ``path`` as the echo backend ``service`` recorded it (a mirror's copy)."""
    records = world.seen[(INFRA, service)]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for doc in records:
            if doc["path"] == path:
                return doc
        await asyncio.sleep(0.02)
    raise AssertionError(f"{service} never saw {path}: {[d['path'] for d in records]}")


# -- header modifiers -----------------------------------------------------------------------

MULTIPLE = {
    "set": {"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2"},
    "add": {
        "X-Header-Add-1": "header-add-1",
        "X-Header-Add-2": "header-add-2",
        "X-Header-Add-3": "header-add-3",
    },
    "remove": ["X-Header-Remove-1", "X-Header-Remove-2"],
}
MODIFY = {
    "set": {"X-Header-Set": "set-overwrites-values"},
    "add": {"X-Header-Add": "header-val-1", "X-Header-Add-Append": "header-val-2"},
    "remove": ["X-Header-Remove"],
}


def header_modifier_rules(backend_level: bool) -> list[dict[str, Any]]:
    cases = [
        ("/set", {"set": {"X-Header-Set": "set-overwrites-values"}}),
        ("/add", {"add": {"X-Header-Add": "add-appends-values"}}),
        ("/remove", {"remove": ["X-Header-Remove"]}),
        ("/multiple", MULTIPLE),
        ("/case-insensitivity", {
            "set": {"X-Header-Set": "header-set"},
            "add": {"X-Header-Add": "header-add"},
            "remove": ["X-Header-Remove"],
        }),
    ]  # fmt: skip
    rules = []
    for path, mod in cases:
        f = [request_headers(**mod)]
        if backend_level:
            rules.append(rule(prefix(path), [v1(filters=f)]))
        else:
            rules.append(rule(prefix(path), [v1()], f))
    return rules


async def check_request_header_modifier(world: ConformanceWorld, route: str) -> None:
    await accepted(world, route)
    r = await world.request(GW, "/set", headers={"Some-Other-Header": "val"})
    served(r)
    seen(r, {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"})
    r = await world.request(GW, "/set", headers={"X-Header-Set": "some-other-value"})
    seen(r, {"X-Header-Set": "set-overwrites-values"})
    r = await world.request(GW, "/add", headers={"Some-Other-Header": "val"})
    seen(r, {"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"})
    r = await world.request(GW, "/add", headers={"X-Header-Add": "some-other-value"})
    seen(r, {"X-Header-Add": "some-other-value,add-appends-values"})
    r = await world.request(GW, "/remove", headers={"X-Header-Remove": "val"})
    served(r)
    seen(r, {}, absent=("X-Header-Remove",))
    r = await world.request(
        GW,
        "/multiple",
        headers={
            "X-Header-Set-2": "set-val-2",
            "X-Header-Add-2": "add-val-2",
            "X-Header-Remove-2": "remove-val-2",
            "Another-Header": "another-header-val",
        },
    )
    served(r)
    seen(
        r,
        {
            "X-Header-Set-1": "header-set-1",
            "X-Header-Set-2": "header-set-2",
            "X-Header-Add-1": "header-add-1",
            "X-Header-Add-2": "add-val-2,header-add-2",
            "X-Header-Add-3": "header-add-3",
            "Another-Header": "another-header-val",
        },
        absent=("X-Header-Remove-1", "X-Header-Remove-2"),
    )
    r = await world.request(
        GW,
        "/case-insensitivity",
        headers={
            "x-header-set": "original-val-set",
            "x-header-add": "original-val-add",
            "x-header-remove": "original-val-remove",
            "Another-Header": "another-header-val",
        },
    )
    served(r)
    seen(
        r,
        {
            "X-Header-Set": "header-set",
            "X-Header-Add": "original-val-add,header-add",
            "Another-Header": "another-header-val",
        },
        absent=("x-header-remove",),
    )


async def test_httproute_request_header_modifier(world: ConformanceWorld) -> None:
    """HTTPRouteRequestHeaderModifier (httproute-request-header-modifier.yaml)."""
    await world.start([http_route("request-header-modifier", header_modifier_rules(False))])
    await check_request_header_modifier(world, "request-header-modifier")


async def test_httproute_backend_request_header_modifier(world: ConformanceWorld) -> None:
    """HTTPRouteBackendRequestHeaderModifier (httproute-request-header-modifier-backend.yaml)."""
    await world.start([http_route("request-header-modifier", header_modifier_rules(True))])
    await check_request_header_modifier(world, "request-header-modifier")


async def test_httproute_request_header_modifier_backend_weights(world: ConformanceWorld) -> None:
    """HTTPRouteRequestHeaderModifierBackendWeights: a backendRef's filter only on its own picks."""
    name = "request-header-modifier-backend-weights"
    backends = [
        b(weight=10, filters=[request_headers(set={"Backend": b()["name"]})]) for b in (v1, v2)
    ]
    await world.start([http_route(name, [rule(backends=backends)])])
    await accepted(world, name)
    counts: dict[str, int] = {}
    for _ in range(5):
        replies = await asyncio.gather(*(world.request(GW, "/") for _ in range(20)))
        for r in replies:
            assert r.status == 200
            values = r.echo["headers"].get("Backend")
            assert values is not None and len(values) == 1, r.echo["headers"]
            assert r.echo["pod"].startswith(values[0]), (values, r.echo["pod"])
            counts[values[0]] = counts.get(values[0], 0) + 1
    assert set(counts) == {"infra-backend-v1", "infra-backend-v2"}, counts


async def test_httproute_response_header_modifier(world: ConformanceWorld) -> None:
    """HTTPRouteResponseHeaderModifier (httproute-response-header-modifier.yaml)."""
    name = "response-header-modifier"
    rules = [
        rule(prefix("/set"), [v1()], [response_headers(set={"X-Header-Set": "set-overwrites-values"})]),
        rule(prefix("/add"), [v1()], [response_headers(add={"X-Header-Add": "add-appends-values"})]),
        rule(prefix("/remove"), [v1()], [response_headers(remove=["X-Header-Remove"])]),
        rule(prefix("/multiple"), [v1()], [response_headers(**MULTIPLE)]),
        rule(prefix("/case-insensitivity"), [v1()], [response_headers(
            set={"X-Header-Set": "header-set"},
            add={
                "X-Header-Add": "header-add",
                "x-lowercase-add": "lowercase-add",
                "x-Mixedcase-ADD-1": "mixedcase-add-1",
                "X-mixeDcase-add-2": "mixedcase-add-2",
                "X-UPPERCASE-ADD": "uppercase-add",
            },
            remove=["X-Header-Remove"],
        )]),
        rule(prefix("/response-and-request-header-modifiers"), [v1()], [
            response_headers(
                set={"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2"},
                add={"X-Header-Add-1": "header-add-1", "X-Header-Add-2": "header-add-2"},
                remove=["X-Header-Remove-1", "X-Header-Remove-2"],
            ),
            request_headers(**MODIFY),
        ]),
    ]  # fmt: skip
    await world.start([http_route(name, rules)])
    await accepted(world, name)

    async def echo_set(path: str, emit: str, headers: dict[str, str] | None = None) -> Reply:
        r = await world.request(GW, path, headers={"X-Echo-Set-Header": emit, **(headers or {})})
        served(r)
        return r

    r = await echo_set("/set", "Some-Other-Header:val")
    got(r, {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"})
    r = await echo_set("/set", "Some-Other-Header:val,X-Header-Set:some-other-value")
    got(r, {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"})
    r = await echo_set("/add", "Some-Other-Header:val")
    got(r, {"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"})
    r = await echo_set("/add", "Some-Other-Header:val,X-Header-Add:some-other-value")
    got(r, {"Some-Other-Header": "val", "X-Header-Add": "some-other-value,add-appends-values"})
    r = await echo_set("/remove", "X-Header-Remove:val")
    got(r, {}, absent=("X-Header-Remove",))
    r = await echo_set(
        "/multiple",
        "X-Header-Set-2:set-val-2,X-Header-Add-2:add-val-2,X-Header-Remove-2:remove-val-2,"
        "Another-Header:another-header-val,X-Header-Remove-1:val",
    )
    got(
        r,
        {
            "X-Header-Set-1": "header-set-1",
            "X-Header-Set-2": "header-set-2",
            "X-Header-Add-1": "header-add-1",
            "X-Header-Add-2": "add-val-2,header-add-2",
            "X-Header-Add-3": "header-add-3",
            "Another-Header": "another-header-val",
        },
        absent=("X-Header-Remove-1", "X-Header-Remove-2"),
    )
    r = await echo_set(
        "/case-insensitivity",
        "x-header-set:original-val-set,x-header-add:original-val-add,"
        "x-header-remove:original-val-remove,Another-Header:another-header-val",
    )
    got(
        r,
        {
            "X-Header-Set": "header-set",
            "X-Header-Add": "original-val-add,header-add",
            "X-Lowercase-Add": "lowercase-add",
            "X-Mixedcase-Add-1": "mixedcase-add-1",
            "X-Mixedcase-Add-2": "mixedcase-add-2",
            "X-Uppercase-Add": "uppercase-add",
            "Another-Header": "another-header-val",
        },
        absent=("x-header-remove",),
    )
    r = await echo_set(
        "/response-and-request-header-modifiers",
        "X-Header-Set-2:set-val-2,X-Header-Add-2:add-val-2,X-Header-Remove-2:remove-val-2,"
        "Another-Header:another-header-val,X-Header-Remove-1:val,X-Header-Echo:echo",
        {
            "X-Header-Remove": "remove-val",
            "X-Header-Add-Append": "append-val-1",
            "X-Header-Echo": "echo",
        },
    )
    seen(
        r,
        {
            "X-Header-Add": "header-val-1",
            "X-Header-Set": "set-overwrites-values",
            "X-Header-Add-Append": "append-val-1,header-val-2",
            "X-Header-Echo": "echo",
        },
        absent=("X-Header-Remove",),
    )
    got(
        r,
        {
            "X-Header-Set-1": "header-set-1",
            "X-Header-Set-2": "header-set-2",
            "X-Header-Add-1": "header-add-1",
            "X-Header-Add-2": "add-val-2,header-add-2",
            "Another-Header": "another-header-val",
            "X-Header-Echo": "echo",
        },
        absent=("X-Header-Remove-1", "X-Header-Remove-2"),
    )


# -- redirects ------------------------------------------------------------------------------


async def redirected(
    world: ConformanceWorld, path: str, status: int, location: str, *, method: str = "GET",
    gw: str = GW, **kw: Any,
) -> None:  # fmt: skip
    r = await world.request(gw, path, method=method, **kw)
    assert r.status == status, (path, r.status, r.body)
    assert r.headers.get("location") == location, (path, r.headers)


async def test_httproute_redirect_host_and_status(world: ConformanceWorld) -> None:
    """HTTPRouteRedirectHostAndStatus (httproute-redirect-host-and-status.yaml)."""
    name = "redirect-host-and-status"
    await world.start([http_route(name, [
        rule(prefix("/hostname-redirect"), filters=[redirect(hostname="example.org")]),
        rule(prefix("/host-and-status"), filters=[redirect(hostname="example.org", statusCode=301)]),
    ])])  # fmt: skip
    await accepted(world, name)
    # No port and no scheme in the filter: the listener's port, here the mapped one.
    p = world.p80
    await redirected(world, "/hostname-redirect", 302, f"http://example.org:{p}/hostname-redirect")
    await redirected(world, "/host-and-status", 301, f"http://example.org:{p}/host-and-status")


@pytest.mark.parametrize(
    ("suite_test", "path", "status", "method"),
    [
        ("HTTPRoute303Redirect", "/see-other", 303, "POST"),
        ("HTTPRoute307Redirect", "/temporary", 307, "GET"),
        ("HTTPRoute308Redirect", "/permanent", 308, "GET"),
    ],
)
async def test_httproute_30x_redirect(
    world: ConformanceWorld, suite_test: str, path: str, status: int, method: str
) -> None:
    """HTTPRoute303Redirect, HTTPRoute307Redirect, HTTPRoute308Redirect (httproute-30x-redirect)."""
    name = f"{status}-redirect"
    await world.start(
        [http_route(name, [rule(prefix(path), filters=[redirect(statusCode=status)])])]
    )
    await accepted(world, name)
    ip = world.address(GW)[0]
    await redirected(world, path, status, f"http://{ip}:{world.p80}{path}", method=method)


async def test_httproute_redirect_path(world: ConformanceWorld) -> None:
    """HTTPRouteRedirectPath (httproute-redirect-path.yaml)."""
    name = "redirect-path"
    await world.start([http_route(name, [
        rule(prefix("/original-prefix"), filters=[redirect(path=prefix_match("/replacement-prefix"))]),
        rule(prefix("/full"), filters=[redirect(path=full_path("/full-path-replacement"))]),
        rule(prefix("/path-and-host"), filters=[
            redirect(hostname="example.org", path=prefix_match("/replacement-prefix"))]),
        rule(prefix("/path-and-status"), filters=[
            redirect(path=prefix_match("/replacement-prefix"), statusCode=301)]),
        rule(prefix("/full-path-and-host"), filters=[
            redirect(hostname="example.org", path=full_path("/replacement-full"))]),
        rule(prefix("/full-path-and-status"), filters=[
            redirect(path=full_path("/replacement-full"), statusCode=301)]),
    ])])  # fmt: skip
    await accepted(world, name)
    here = f"http://{world.address(GW)[0]}:{world.p80}"
    there = f"http://example.org:{world.p80}"
    await redirected(world, "/original-prefix/lemon", 302, f"{here}/replacement-prefix/lemon")
    await redirected(world, "/full/path/original", 302, f"{here}/full-path-replacement")
    await redirected(world, "/path-and-host", 302, f"{there}/replacement-prefix")
    await redirected(world, "/path-and-status", 301, f"{here}/replacement-prefix")
    await redirected(world, "/full-path-and-host", 302, f"{there}/replacement-full")
    await redirected(world, "/full-path-and-status", 301, f"{here}/replacement-full")


async def test_httproute_redirect_path_replace_prefix_table(world: ConformanceWorld) -> None:
    """HTTPRouteRedirectPath, ReplacePrefixMatch as the API's table (digest §4.5) defines it."""
    table = REPLACE_PREFIX_MATCH
    routes = [
        http_route(f"redirect-table-{i}", [
            rule(prefix(pfx), filters=[redirect(path=prefix_match(repl))])], hostnames=[f"t{i}.example"])
        for i, (_, pfx, repl, _) in enumerate(table)
    ]  # fmt: skip
    await world.start(routes)
    for i, (req, _, _, want) in enumerate(table):
        host = f"t{i}.example"
        await redirected(
            world, req + "?q=1", 302, f"http://{host}:{world.p80}{want}?q=1", host=host
        )


async def test_httproute_redirect_port(world: ConformanceWorld) -> None:
    """HTTPRouteRedirectPort (httproute-redirect-port.yaml)."""
    name = "redirect-port"
    await world.start([http_route(name, [
        rule(prefix("/port"), filters=[redirect(port=8083)]),
        rule(prefix("/port-and-host"), filters=[redirect(hostname="example.org", port=8083)]),
        rule(prefix("/port-and-status"), filters=[redirect(port=8083, statusCode=301)]),
        rule(prefix("/port-and-host-and-status"), filters=[
            redirect(port=8083, hostname="example.org", statusCode=302)]),
    ])])  # fmt: skip
    await accepted(world, name)
    ip = world.address(GW)[0]
    await redirected(world, "/port", 302, f"http://{ip}:8083/port")
    # the request's own port never carries over
    await redirected(world, "/port", 302, f"http://{ip}:8083/port", host=f"{ip}:1234")
    await redirected(world, "/port-and-host", 302, "http://example.org:8083/port-and-host")
    await redirected(world, "/port-and-status", 301, f"http://{ip}:8083/port-and-status")
    await redirected(
        world, "/port-and-host-and-status", 302, "http://example.org:8083/port-and-host-and-status"
    )


async def test_httproute_redirect_scheme(world: ConformanceWorld) -> None:
    """HTTPRouteRedirectScheme (httproute-redirect-scheme.yaml)."""
    name = "redirect-scheme"
    await world.start([http_route(name, [
        rule(prefix("/scheme"), filters=[redirect(scheme="https")]),
        rule(prefix("/scheme-and-host"), filters=[redirect(scheme="https", hostname="example.org")]),
        rule(prefix("/scheme-and-status"), filters=[redirect(scheme="https", statusCode=301)]),
        rule(prefix("/scheme-and-host-and-status"), filters=[
            redirect(scheme="https", statusCode=302, hostname="example.org")]),
    ])])  # fmt: skip
    await accepted(world, name)
    ip = world.address(GW)[0]
    # A new scheme without a port: its well-known port, left out (never the listener's).
    await redirected(world, "/scheme", 302, f"https://{ip}/scheme")
    await redirected(world, "/scheme-and-host", 302, "https://example.org/scheme-and-host")
    await redirected(world, "/scheme-and-status", 301, f"https://{ip}/scheme-and-status")
    await redirected(
        world, "/scheme-and-host-and-status", 302, "https://example.org/scheme-and-host-and-status"
    )


async def test_httproute_redirect_port_and_scheme(world: ConformanceWorld) -> None:
    """HTTPRouteRedirectPortAndScheme (httproute-redirect-port-and-scheme.yaml)."""
    p8080 = free_port()
    gw8080 = gateway(
        "same-namespace-with-http-listener-on-8080",
        [listener("http", p8080)],
        addresses=["127.0.91.9"],
    )

    def cases(*items: tuple[str, dict]) -> list[dict]:
        return [
            rule(prefix(p), filters=[redirect(hostname="example.org", **kw)]) for p, kw in items
        ]

    r80 = http_route("http-route-for-listener-on-port-80", cases(
        ("/scheme-nil-and-port-nil", {}),
        ("/scheme-nil-and-port-80", {"port": 80}),
        ("/scheme-nil-and-port-8080", {"port": 8080}),
        ("/scheme-https-and-port-nil", {"scheme": "https"}),
        ("/scheme-https-and-port-443", {"scheme": "https", "port": 443}),
        ("/scheme-https-and-port-8443", {"scheme": "https", "port": 8443}),
    ))  # fmt: skip
    r8080 = http_route("http-route-for-listener-on-port-8080", cases(
        ("/scheme-nil-and-port-nil", {}),
        ("/scheme-nil-and-port-80", {"port": 80}),
        ("/scheme-https-and-port-nil", {"scheme": "https"}),
    ), parents=[gw8080["metadata"]["name"]])  # fmt: skip
    r443 = http_route("http-route-for-listener-on-port-443", cases(
        ("/scheme-nil-and-port-nil", {}),
        ("/scheme-nil-and-port-443", {"port": 443}),
        ("/scheme-nil-and-port-8443", {"port": 8443}),
        ("/scheme-http-and-port-nil", {"scheme": "http"}),
        ("/scheme-http-and-port-80", {"scheme": "http", "port": 80}),
        ("/scheme-http-and-port-8080", {"scheme": "http", "port": 8080}),
    ), parents=[HTTPS_GW])  # fmt: skip
    await world.start([gw8080, r80, r8080, r443], tls=True)
    await accepted(world, "http-route-for-listener-on-port-80")
    await accepted(world, "http-route-for-listener-on-port-8080", gw8080["metadata"]["name"])
    await accepted(world, "http-route-for-listener-on-port-443", HTTPS_GW)
    h = "example.org"
    for path, location in [
        ("/scheme-nil-and-port-nil", f"http://{h}:{world.p80}"),  # the listener's (mapped) port
        ("/scheme-nil-and-port-80", f"http://{h}"),
        ("/scheme-nil-and-port-8080", f"http://{h}:8080"),
        ("/scheme-https-and-port-nil", f"https://{h}"),
        ("/scheme-https-and-port-443", f"https://{h}"),
        ("/scheme-https-and-port-8443", f"https://{h}:8443"),
    ]:
        await redirected(world, path, 302, location + path)
    for path, location in [
        ("/scheme-nil-and-port-nil", f"http://{h}:{p8080}"),
        ("/scheme-nil-and-port-80", f"http://{h}"),
        ("/scheme-https-and-port-nil", f"https://{h}"),
    ]:
        await redirected(world, path, 302, location + path, address=("127.0.91.9", p8080))
    for path, location in [
        ("/scheme-nil-and-port-nil", f"https://{h}:{world.p443}"),
        ("/scheme-nil-and-port-443", f"https://{h}"),
        ("/scheme-nil-and-port-8443", f"https://{h}:8443"),
        ("/scheme-http-and-port-nil", f"http://{h}"),
        ("/scheme-http-and-port-80", f"http://{h}"),
        ("/scheme-http-and-port-8080", f"http://{h}:8080"),
    ]:
        await redirected(world, path, 302, location + path, gw=HTTPS_GW, https=True, host=h)


# -- rewrites -------------------------------------------------------------------------------


async def test_httproute_rewrite_host(world: ConformanceWorld) -> None:
    """HTTPRouteRewriteHost (httproute-rewrite-host.yaml)."""
    name = "rewrite-host"
    await world.start([http_route(name, [
        rule(prefix("/one"), [v1()], [rewrite(hostname="one.example.org")]),
        rule(backends=[v2()], filters=[rewrite(hostname="example.org")]),
        rule(prefix("/rewrite-host-and-modify-headers"), [v2()], [
            rewrite(hostname="test.example.org"), request_headers(**MODIFY)]),
    ], hostnames=["rewrite.example"])])  # fmt: skip
    await accepted(world, name)
    host = "rewrite.example"
    r = await world.request(GW, "/one", host=host)
    served(r, "infra-backend-v1", "/one")
    assert r.echo["host"] == "one.example.org"
    r = await world.request(GW, "/two", host=host)
    served(r, "infra-backend-v2", "/two")
    assert r.echo["host"] == "example.org"
    r = await world.request(
        GW,
        "/rewrite-host-and-modify-headers",
        host=host,
        headers={"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"},
    )
    served(r, "infra-backend-v2", "/rewrite-host-and-modify-headers")
    assert r.echo["host"] == "test.example.org"
    seen(
        r,
        {
            "X-Header-Add": "header-val-1",
            "X-Header-Add-Append": "append-val-1,header-val-2",
            "X-Header-Set": "set-overwrites-values",
        },
        absent=("X-Header-Remove",),
    )


async def test_httproute_rewrite_path(world: ConformanceWorld) -> None:
    """HTTPRouteRewritePath (httproute-rewrite-path.yaml)."""
    name = "rewrite-path"
    await world.start([http_route(name, [
        rule(prefix("/prefix/one"), [v1()], [rewrite(path=prefix_match("/one"))]),
        rule(prefix("/strip-prefix"), [v1()], [rewrite(path=prefix_match("/"))]),
        rule(prefix("/full/one"), [v1()], [rewrite(path=full_path("/one"))]),
        rule(prefix("/full/rewrite-path-and-modify-headers"), [v1()], [
            rewrite(path=full_path("/test")), request_headers(**MODIFY)]),
        rule(prefix("/prefix/rewrite-path-and-modify-headers"), [v1()], [
            rewrite(path=prefix_match("/prefix")), request_headers(**MODIFY)]),
    ])])  # fmt: skip
    await accepted(world, name)
    for path, want in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
        ("/prefix/one/two?q=1", "/one/two?q=1"),  # the query stays
    ]:
        served(await world.request(GW, path), path=want)
    for path, want in [
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ]:
        r = await world.request(
            GW,
            path,
            headers={
                "X-Header-Remove": "remove-val",
                "X-Header-Add-Append": "append-val-1",
                "X-Header-Set": "set-val",
            },
        )
        served(r, path=want)
        seen(
            r,
            {
                "X-Header-Add": "header-val-1",
                "X-Header-Add-Append": "append-val-1,header-val-2",
                "X-Header-Set": "set-overwrites-values",
            },
            absent=("X-Header-Remove",),
        )


async def test_httproute_rewrite_path_replace_prefix_table(world: ConformanceWorld) -> None:
    """HTTPRouteRewritePath, URLRewrite ReplacePrefixMatch as the API's table (digest §4.5)."""
    table = REPLACE_PREFIX_MATCH
    routes = [
        http_route(f"rewrite-table-{i}", [
            rule(prefix(pfx), [v1()], [rewrite(path=prefix_match(repl))])], hostnames=[f"t{i}.example"])
        for i, (_, pfx, repl, _) in enumerate(table)
    ]  # fmt: skip
    await world.start(routes)
    for i, (req, pfx, repl, want) in enumerate(table):
        r = await world.request(GW, req + "?q=1", host=f"t{i}.example")
        assert r.status == 200, (req, pfx, repl, r.status)
        assert r.echo["path"] == want + "?q=1", (req, pfx, repl, r.echo["path"])


# -- mirrors --------------------------------------------------------------------------------


async def test_httproute_request_mirror(world: ConformanceWorld) -> None:
    """HTTPRouteRequestMirror (httproute-request-mirror.yaml)."""
    name = "request-mirror"
    await world.start([http_route(name, [
        rule(prefix("/mirror"), [v1(namespace=INFRA)], [mirror("infra-backend-v2")]),
        rule(prefix("/mirror-and-modify-headers"), [v1(namespace=INFRA)], [
            request_headers(**MODIFY), mirror("infra-backend-v2")]),
    ])])  # fmt: skip
    c = world.parent_condition("HTTPRoute", INFRA, name, "Accepted", GW)
    assert c["status"] == "True"
    path = f"/mirror?request-id={uuid.uuid4()}"
    served(await world.request(GW, path), path=path)
    await until_seen(world, "infra-backend-v2", path)

    path = f"/mirror-and-modify-headers?request-id={uuid.uuid4()}"
    r = await world.request(
        GW, path, headers={"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"}
    )
    served(r, path=path)
    want = {
        "X-Header-Add": "header-val-1",
        "X-Header-Add-Append": "append-val-1,header-val-2",
        "X-Header-Set": "set-overwrites-values",
    }
    seen(r, want, absent=("X-Header-Remove",))
    copy = await until_seen(world, "infra-backend-v2", path)
    # The modifier comes first in the filter list: the copy carries its changes too.
    seen(Reply(200, {}, json.dumps(copy)), want, absent=("X-Header-Remove",))


async def test_httproute_request_multiple_mirrors(world: ConformanceWorld) -> None:
    """HTTPRouteRequestMultipleMirrors (httproute-request-multiple-mirrors.yaml)."""
    name = "request-multiple-mirrors"
    mirrors = [mirror("infra-backend-v2"), mirror("infra-backend-v3")]
    await world.start([http_route(name, [
        rule(prefix("/multi-mirror"), [v1(namespace=INFRA)], mirrors),
        rule(prefix("/multi-mirror-and-modify-request-headers"), [v1(namespace=INFRA)], [
            request_headers(**MODIFY), *mirrors]),
    ])])  # fmt: skip
    c = world.parent_condition("HTTPRoute", INFRA, name, "Accepted", GW)
    assert c["status"] == "True"
    path = f"/multi-mirror?request-id={uuid.uuid4()}"
    served(await world.request(GW, path), path=path)
    for svc in ("infra-backend-v2", "infra-backend-v3"):
        await until_seen(world, svc, path)

    path = f"/multi-mirror-and-modify-request-headers?request-id={uuid.uuid4()}"
    r = await world.request(
        GW, path, headers={"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"}
    )
    served(r, path=path)
    want = {
        "X-Header-Add": "header-val-1",
        "X-Header-Add-Append": "append-val-1,header-val-2",
        "X-Header-Set": "set-overwrites-values",
    }
    seen(r, want, absent=("X-Header-Remove",))
    for svc in ("infra-backend-v2", "infra-backend-v3"):
        copy = await until_seen(world, svc, path)
        seen(Reply(200, {}, json.dumps(copy)), want, absent=("X-Header-Remove",))


async def test_httproute_request_mirror_skips_requests_with_a_body(
    world: ConformanceWorld,
) -> None:
    """HTTPRouteRequestMirror, netplane's documented choice (ingress/mirror.py): a request with
    a body is forwarded but not mirrored (the suite mirrors GETs only, so it never sees this)."""
    name = "request-mirror"
    await world.start([http_route(name, [
        rule(prefix("/mirror"), [v1()], [mirror("infra-backend-v2")])])])  # fmt: skip
    ip, port = world.address(GW)
    with_body = f"/mirror?request-id={uuid.uuid4()}"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--data", "payload", f"http://{ip}:{port}{with_body}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out)["path"] == with_body
    probe = f"/mirror?request-id={uuid.uuid4()}"
    served(await world.request(GW, probe), path=probe)
    await until_seen(world, "infra-backend-v2", probe)
    assert with_body not in [d["path"] for d in world.seen[(INFRA, "infra-backend-v2")]]


# -- timeouts -------------------------------------------------------------------------------


def delaying_echo(seen: list[dict]):
    """infra-backend-v1's echo, sleeping ``?delay=`` (seconds, e.g. ``1.5s``) first, as echo-basic."""
    answer = echo_handler(INFRA, "infra-backend-v1", seen)

    async def handle(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        target = req.target.decode()
        for part in target.partition("?")[2].split("&"):
            k, _, v = part.partition("=")
            if k == "delay":
                await asyncio.sleep(float(v.rstrip("s")))
        await answer(req, r, w)

    return handle


async def slow_backend(world: ConformanceWorld) -> list[dict[str, Any]]:
    """infra-backend-v1's EndpointSlice moved to an echo server that honours ``?delay=``."""
    seen: list[dict] = []
    port = free_port()
    await world.backends.start(delaying_echo(seen), "127.0.90.20", port)
    await world.apply(endpoint_slice(
        "infra-backend-v1-1", "infra-backend-v1",
        [{"name": "first-port", "port": port}], ["127.0.90.20"],
    ))  # fmt: skip
    return seen


async def timed(world: ConformanceWorld, path: str) -> tuple[int, float]:
    t = time.monotonic()
    r = await world.request(GW, path)
    return r.status, time.monotonic() - t


async def test_httproute_timeout_request(world: ConformanceWorld) -> None:
    """HTTPRouteTimeoutRequest (httproute-timeout-request.yaml; 500ms, delay 1.5s here)."""
    name = "request-timeout"
    await world.start([http_route(name, [
        rule(prefix("/request-timeout"), [v1()], timeouts={"request": "500ms"}),
        rule(prefix("/disable-request-timeout"), [v1()], timeouts={"request": "0s"}),
    ])])  # fmt: skip
    await accepted(world, name)
    await slow_backend(world)
    (ok, _), (late, t_late), (off, t_off) = await asyncio.gather(
        timed(world, "/request-timeout"),
        timed(world, "/request-timeout?delay=1.5s"),
        timed(world, "/disable-request-timeout?delay=1.5s"),
    )
    assert ok == 200
    assert late == 504 and t_late < 1.4, (late, t_late)
    assert off == 200 and t_off >= 1.5, (off, t_off)


async def test_httproute_timeout_backend_request(world: ConformanceWorld) -> None:
    """HTTPRouteTimeoutBackendRequest (httproute-timeout-backend-request.yaml; 500ms, 1.5s)."""
    name = "backend-request-timeout"
    await world.start([http_route(name, [
        rule(prefix("/backend-timeout"), [v1()], timeouts={"backendRequest": "500ms"}),
        rule(prefix("/disable-backend-timeout"), [v1()], timeouts={"backendRequest": "0s"}),
    ])])  # fmt: skip
    await accepted(world, name)
    await slow_backend(world)
    (ok, _), (late, t_late), (off, t_off) = await asyncio.gather(
        timed(world, "/backend-timeout"),
        timed(world, "/backend-timeout?delay=1.5s"),
        timed(world, "/disable-backend-timeout?delay=1.5s"),
    )
    assert ok == 200
    assert late == 504 and t_late < 1.4, (late, t_late)
    assert off == 200 and t_off >= 1.5, (off, t_off)


# -- HTTPS listener, parentRefs, generations ----------------------------------------------------


async def test_httproute_https_listener(world: ConformanceWorld, tmp_path) -> None:
    """HTTPRouteHTTPSListener (httproute-https-listener.yaml)."""
    await world.start([
        http_route("httproute-https-test", [rule(backends=[v1()])], parents=[HTTPS_GW],
                   hostnames=["example.org"]),
        http_route("httproute-https-test-no-hostname", [rule(backends=[v2()])],
                   parents=[{"name": HTTPS_GW, "namespace": INFRA,
                             "sectionName": "https-with-hostname"}]),
    ], tls=True)  # fmt: skip
    for route in ("httproute-https-test", "httproute-https-test-no-hostname"):
        await accepted(world, route, HTTPS_GW)
    for li in ("https", "https-with-hostname", "https-with-wildcard-hostname",
               "https-with-hostname-matching-wildcard"):  # fmt: skip
        conds = {c["type"]: c["status"] for c in world.listener_status(HTTPS_GW, li)["conditions"]}
        for t in ("Accepted", "ResolvedRefs", "Programmed"):
            assert conds.get(t) == "True", (li, conds)
    r = await world.request(HTTPS_GW, "/", host="example.org", https=True)
    served(r, "infra-backend-v1")
    r = await world.request(HTTPS_GW, "/", host="unknown-example.org", https=True)
    assert r.status == 404
    r = await world.request(HTTPS_GW, "/", host="second-example.org", https=True)
    served(r, "infra-backend-v2")
    # The suite checks the certificate: curl with the CA, no -k. (Not for unknown-example.org:
    # OpenSSL does not let the certificate's "*.org" cover it, as Go's client does.)
    ca = tmp_path / "ca.pem"
    world.ca.cert_pem.write_to_path(str(ca))
    ip, port = world.address(HTTPS_GW, world.p443)
    for host, status in (("example.org", 200), ("second-example.org", 200)):
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca),
            "--resolve", f"{host}:{port}:{ip}", f"https://{host}:{port}/",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert out.decode() == str(status), (host, out)


async def test_httproute_invalid_parentref_not_matching_listener_port(
    world: ConformanceWorld,
) -> None:
    """HTTPRouteInvalidParentRefNotMatchingListenerPort (…-not-matching-listener-port.yaml)."""
    name = "httproute-listener-not-matching-route-port"
    await world.start([http_route(name, [rule(backends=[v1(kind="Service")])],
                                  parents=[{"name": GW, "namespace": INFRA, "port": 81}])])  # fmt: skip
    st = world.status("HTTPRoute", INFRA, name)
    assert st is not None and len(st["parents"]) <= 1, st
    c = world.parent_condition("HTTPRoute", INFRA, name, "Accepted", GW)
    assert (c["status"], c["reason"]) == ("False", "NoMatchingParent"), c
    c = world.parent_condition("HTTPRoute", INFRA, name, "ResolvedRefs", GW)
    assert c["status"] == "True", c
    assert world.listener_status(GW, "http")["attachedRoutes"] == 0
    assert (await world.request(GW, "/")).status == 404


async def test_httproute_invalid_parentref_not_matching_section_name(
    world: ConformanceWorld,
) -> None:
    """HTTPRouteInvalidParentRefNotMatchingSectionName (…-not-matching-section-name.yaml)."""
    name = "httproute-listener-not-matching-section-name"
    await world.start([http_route(name, [rule(backends=[v1()])], parents=[
        {"name": GW, "namespace": INFRA, "port": 80, "sectionName": "http1"}])])  # fmt: skip
    st = world.status("HTTPRoute", INFRA, name)
    assert st is not None
    for p in st["parents"]:
        acc = [c for c in p["conditions"] if c["type"] == "Accepted"]
        assert acc and acc[0]["status"] == "False", p
    c = world.parent_condition("HTTPRoute", INFRA, name, "Accepted", GW)
    assert (c["status"], c["reason"]) == ("False", "NoMatchingParent"), c
    assert world.listener_status(GW, "http")["attachedRoutes"] == 0
    assert (await world.request(GW, "/")).status == 404


async def test_httproute_observed_generation_bump(world: ConformanceWorld) -> None:
    """HTTPRouteObservedGenerationBump (httproute-observed-generation-bump.yaml)."""
    name = "observed-generation-bump"
    route = http_route(name, [rule(backends=[v1()])])
    route["metadata"]["generation"] = 1
    await world.start([route])

    def generations() -> set[int]:
        st = world.status("HTTPRoute", INFRA, name)
        assert st is not None
        return {c.get("observedGeneration") for p in st["parents"] for c in p["conditions"]}

    assert generations() == {1}
    await accepted(world, name)
    served(await world.request(GW, "/"), "infra-backend-v1")

    route["metadata"]["generation"] = 2
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = "infra-backend-v2"
    await world.apply(route)
    assert generations() == {2}
    await accepted(world, name)
    served(await world.request(GW, "/"), "infra-backend-v2")


async def test_httproute_service_types(world: ConformanceWorld) -> None:
    """HTTPRouteServiceTypes (httproute-service-types.yaml): manual and headless slices."""
    name = "service-types"
    port = [{"name": "first-port", "port": 8080, "targetPort": 3000}]
    services = [
        service("manual-endpointslices", port),
        service("headless", port, clusterIP="None", selector={"app": "infra-backend-v1"}),
        service("headless-manual-endpointslices", port, clusterIP="None"),
    ]
    route = http_route(name, [
        rule(exact(f"/{s['metadata']['name']}"), [backend(s["metadata"]["name"])]) for s in services
    ])  # fmt: skip
    await world.start([*services, route])
    await accepted(world, name)
    # The suite patches infra-backend-v1's pod addresses into the <svc>-ip4 slices.
    echo = echo_port(world, "127.0.90.1")
    slice_port = [{"name": "first-port", "port": echo}]
    for s in services:
        svc = s["metadata"]["name"]
        await world.apply(
            endpoint_slice(f"{svc}-ip4", svc, slice_port, ["127.0.90.1"]),
            endpoint_slice(f"{svc}-ip6", svc, slice_port, [], "IPv6"),
        )
    for s in services:
        served(await world.request(GW, f"/{s['metadata']['name']}"), "infra-backend-v1")


# -- backend protocols ------------------------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    assert len(payload) < 126
    head = bytes((0x80 | opcode, (0x80 if mask else 0) | len(payload)))
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def ws_read(r: asyncio.StreamReader | Stream) -> tuple[int, bytes]:
    b0, b1 = await r.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack(">H", await r.readexactly(2))
    key = await r.readexactly(4) if b1 & 0x80 else b""
    data = await r.readexactly(n)
    if key:
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return b0 & 0x0F, data


async def ws_backend(req: Request, stream: Stream, w: asyncio.StreamWriter) -> bool:
    """A WebSocket echo endpoint (RFC 6455): the handshake, then each frame sent back."""
    hdrs = {k: v for k, v in req.header_list}
    if hdrs.get(b"upgrade", b"").lower() != b"websocket":
        w.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        return False
    accept = base64.b64encode(hashlib.sha1(hdrs[b"sec-websocket-key"] + WS_GUID).digest())
    w.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    try:
        while True:
            opcode, data = await ws_read(stream)
            w.write(ws_frame(opcode, data, False))
            await w.drain()
            if opcode == 8:  # close
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    return False


async def test_httproute_backend_protocol_websocket(world: ConformanceWorld) -> None:
    """HTTPRouteBackendProtocolWebSocket (httproute-backend-protocol-websocket.yaml)."""
    name = "backend-protocol-ws"
    await world.start([http_route(name, [rule(backends=[v1(port=8082)])])])
    await accepted(world, name)
    # third-port (8082, appProtocol kubernetes.io/ws) of infra-backend-v1 on a WebSocket echo
    ws_port = free_port()
    await world.backends.start(ws_backend, "127.0.90.1", ws_port)
    echo = echo_port(world, "127.0.90.1")
    await world.apply(endpoint_slice(
        "infra-backend-v1-1", "infra-backend-v1",
        [{"name": "first-port", "port": echo}, {"name": "second-port", "port": echo},
         {"name": "third-port", "port": ws_port}], ["127.0.90.1"],
    ))  # fmt: skip
    ip, port = world.address(GW)
    r, w = await asyncio.open_connection(ip, port)
    try:
        key = base64.b64encode(os.urandom(16))
        w.write(
            b"GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"Origin: ws://gateway/test\r\n\r\n" % (ip.encode(), key)
        )
        async with asyncio.timeout(5):
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            fields = dict(ln.split(b":", 1) for ln in head.split(b"\r\n")[1:] if b":" in ln)
            accept = {k.strip().lower(): v.strip() for k, v in fields.items()}
            assert accept.get(b"sec-websocket-accept") == want, head
            for opcode, message in ((1, b"Websocket Support!"), (2, bytes(range(1, 8)))):
                w.write(ws_frame(opcode, message, True))
                assert await ws_read(r) == (opcode, message)
    finally:
        w.close()


async def test_httproute_backend_protocol_h2c(world: ConformanceWorld) -> None:
    """HTTPRouteBackendProtocolH2C (httproute-backend-protocol-h2c.yaml)."""
    name = "backend-protocol-h2c"
    await world.start([http_route(name, [rule(backends=[v1(port=8081)])])])
    await accepted(world, name)
    seen_h2: list[dict] = []

    def on_request(conn: Any, sid: int, headers: list, w: asyncio.StreamWriter) -> None:
        h = {k.decode(): v.decode() for k, v in headers}
        seen_h2.append(h)
        body = json.dumps({
            "path": h[":path"], "host": h.get(":authority", ""), "method": h[":method"],
            "headers": {}, "namespace": INFRA, "service": "infra-backend-v1",
            "pod": "infra-backend-v1-0", "proto": "HTTP/2.0",
        }).encode()  # fmt: skip
        conn.send_headers(sid, [(b":status", b"200"), (b"content-length", str(len(body)).encode())])
        conn.send_data(sid, body, end_stream=True)

    server, h2_port = await h2_backend(on_request)
    try:
        # second-port (8081, appProtocol kubernetes.io/h2c) in a slice of its own, on the h2c peer
        echo = echo_port(world, "127.0.90.1")
        await world.apply(
            endpoint_slice(
                "infra-backend-v1-1", "infra-backend-v1",
                [{"name": "first-port", "port": echo}, {"name": "third-port", "port": echo}],
                ["127.0.90.1"],
            ),
            endpoint_slice(
                "infra-backend-v1-2", "infra-backend-v1",
                [{"name": "second-port", "port": h2_port}], ["127.0.0.1"],
            ),
        )  # fmt: skip
        r = await world.request(GW, "/", http2=True)
        served(r, "infra-backend-v1", "/")
        assert seen_h2 and seen_h2[-1][":method"] == "GET"
    finally:
        server.close()
