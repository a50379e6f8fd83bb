"""GRPCRoute, from the Gateway API conformance suite, with grpcio on both sides.

The suite's ``grpc-infra-backend-v1..v3`` are echo servers
(``GRPC_ECHO_SERVER=1``) serving ``gateway_api_conformance.echo_basic.grpcecho.GrpcEcho``;
here each is a grpcio server on its own loopback address (127.0.93.x) with
generic handlers (bytes in, bytes out, no generated code) whose reply names
the backend and the method it ran. Their Services carry appProtocol
``kubernetes.io/h2c``, as the suite's do. The client is a grpcio channel in
plaintext HTTP/2 (prior knowledge) to the Gateway's HTTP listener, its
``:authority`` set per channel where a test needs a hostname.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from gateway_world import (
    INFRA,
    ConformanceWorld,
    backend,
    gateway,
    listener,
    meta,
)

from netplane.testing.ports import free_port

SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
METHODS = ("Echo", "EchoTwo", "EchoThree")
GRPC_BACKENDS = {
    "grpc-infra-backend-v1": "127.0.93.1",
    "grpc-infra-backend-v2": "127.0.93.2",
    "grpc-infra-backend-v3": "127.0.93.3",
}
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED


class Echo:
    """One echo backend: replies ``<namespace>/<backend> <method>`` and keeps what it saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[dict[str, str]] = []

    def handler(self) -> grpc.GenericRpcHandler:
        def method(name: str) -> Any:
            async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                self.calls.append(dict(context.invocation_metadata()))
                return f"{INFRA}/{self.name} /{SERVICE}/{name}".encode()

            return grpc.unary_unary_rpc_method_handler(call)

        return grpc.method_handlers_generic_handler(SERVICE, {m: method(m) for m in METHODS})


@pytest.fixture
async def grpc_backends() -> AsyncIterator[dict[str, Any]]:
    """The three echo servers and the Services and EndpointSlices that name them."""
    servers, objs = [], []
    for name, address in GRPC_BACKENDS.items():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((Echo(name).handler(),))
        port = server.add_insecure_port(f"{address}:{free_port(address)}")
        await server.start()
        servers.append(server)
        objs += [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": meta(name),
                "spec": {"ports": [{"name": "grpc", "port": 8080, "targetPort": 3000,
                                    "appProtocol": "kubernetes.io/h2c"}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": meta(f"{name}-1", labels={"kubernetes.io/service-name": name}),
                "addressType": "IPv4",
                "ports": [{"name": "grpc", "port": port, "appProtocol": "kubernetes.io/h2c"}],
                "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            },
        ]  # fmt: skip
    yield {"objects": objs}
    for server in servers:
        await server.stop(0)


def grpc_route(name: str, rules: list[dict], parents: Sequence[Any] = ("same-namespace",),
               hostnames: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    refs = [p if isinstance(p, dict) else {"name": p} for p in parents]
    spec: dict[str, Any] = {"parentRefs": refs, "rules": rules}
    if hostnames:
        spec["hostnames"] = list(hostnames)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": meta(name),
        "spec": spec,
    }


def to(name: str) -> list[dict[str, Any]]:
    return [backend(name)]


async def call(
    address: tuple[str, int],
    method: str = "Echo",
    *,
    authority: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> str:
    """One unary call through the Gateway; the backend's reply, checked to name ``method``."""
    options = [("grpc.default_authority", authority)] if authority else []
    async with grpc.aio.insecure_channel(f"{address[0]}:{address[1]}", options=options) as ch:
        reply = await ch.unary_unary(f"/{SERVICE}/{method}")(
            b"hello", metadata=tuple(metadata), timeout=5
        )
    served_by, _, ran = reply.decode().partition(" ")
    assert ran == f"/{SERVICE}/{method}"  # the suite's fullyQualifiedMethod assertion
    return served_by


async def status_of(address: tuple[str, int], method: str = "Echo", **kw: Any) -> grpc.StatusCode:
    """The status a call ends with (OK when it succeeds)."""
    try:
        await call(address, method, **kw)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def accepted(world: ConformanceWorld, route: str, parent: str = "same-namespace") -> None:
    for c in ("Accepted", "ResolvedRefs"):
        got = world.parent_condition("GRPCRoute", INFRA, route, c, parent)
        assert (got["status"], got["reason"]) == ("True", c)


async def test_grpc_exact_method_matching(world: ConformanceWorld, grpc_backends) -> None:
    """GRPCExactMethodMatching: Echo to v1, EchoTwo to v2, EchoThree to nothing."""
    route = grpc_route("exact-matching", [
        {"matches": [{"method": {"service": SERVICE, "method": "Echo"}}],
         "backendRefs": to("grpc-infra-backend-v1")},
        {"matches": [{"method": {"service": SERVICE, "method": "EchoTwo"}}],
         "backendRefs": to("grpc-infra-backend-v2")},
    ])  # fmt: skip
    await world.start([*grpc_backends["objects"], route])
    accepted(world, "exact-matching")
    gw = world.address("same-namespace")
    assert await call(gw, "Echo") == f"{INFRA}/grpc-infra-backend-v1"
    assert await call(gw, "EchoTwo") == f"{INFRA}/grpc-infra-backend-v2"
    assert await status_of(gw, "EchoThree") == UNIMPLEMENTED


async def test_grpc_route_header_matching(world: ConformanceWorld, grpc_backends) -> None:
    """GRPCRouteHeaderMatching: the rules of HTTPRouteHeaderMatching, on gRPC metadata."""

    def rule(headers: list[dict[str, str]] | list[list[dict[str, str]]], name: str) -> dict:
        groups = headers if headers and isinstance(headers[0], list) else [headers]
        return {"matches": [{"headers": hs} for hs in groups], "backendRefs": to(name)}

    def h(name: str, value: str) -> dict[str, str]:
        return {"name": name, "value": value}

    route = grpc_route("grpc-header-matching", [
        rule([h("version", "one")], "grpc-infra-backend-v1"),
        rule([h("version", "two")], "grpc-infra-backend-v2"),
        rule([h("version", "two"), h("color", "orange")], "grpc-infra-backend-v1"),
        rule([[h("color", "blue")], [h("color", "green")]], "grpc-infra-backend-v1"),
        rule([[h("color", "red")], [h("color", "yellow")]], "grpc-infra-backend-v2"),
    ])  # fmt: skip
    await world.start([*grpc_backends["objects"], route])
    accepted(world, "grpc-header-matching")
    gw = world.address("same-namespace")
    v1, v2 = f"{INFRA}/grpc-infra-backend-v1", f"{INFRA}/grpc-infra-backend-v2"
    cases: list[tuple[list[tuple[str, str]], str | None]] = [
        ([("version", "one")], v1),
        ([("version", "two")], v2),
        ([("version", "two"), ("color", "orange")], v1),
        ([("version", "two"), ("color", "blue")], v2),
        ([("color", "orange")], None),
        ([("some-other-header", "one")], None),
        ([("color", "blue")], v1),
        ([("color", "green")], v1),
        ([("color", "red")], v2),
        ([("color", "yellow")], v2),
        ([("color", "purple")], None),
    ]
    for md, want in cases:
        if want is None:
            assert await status_of(gw, metadata=md) == UNIMPLEMENTED, md
        else:
            assert await call(gw, metadata=md) == want, md


async def test_grpc_route_listener_hostname_matching(world: ConformanceWorld, grpc_backends):
    """GRPCRouteListenerHostnameMatching: the listener by :authority, then its routes."""
    name = "grpcroute-listener-hostname-matching"
    gw = gateway(name, [
        listener("listener-1", 80, hostname="bar.com"),
        listener("listener-2", 80, hostname="foo.bar.com"),
        listener("listener-3", 80, hostname="*.bar.com"),
        listener("listener-4", 80, hostname="*.foo.com"),
    ], addresses=["127.0.93.10"])  # fmt: skip

    def section(s: str) -> dict[str, str]:
        return {"name": name, "sectionName": s}

    routes = [
        grpc_route("backend-v1", [{"backendRefs": to("grpc-infra-backend-v1")}],
                   [section("listener-1")]),
        grpc_route("backend-v2", [{"backendRefs": to("grpc-infra-backend-v2")}],
                   [section("listener-2")]),
        grpc_route("backend-v3", [{"backendRefs": to("grpc-infra-backend-v3")}],
                   [section("listener-3"), section("listener-4")]),
    ]  # fmt: skip
    await world.start([*grpc_backends["objects"], gw, *routes])
    for route in ("backend-v1", "backend-v2", "backend-v3"):
        accepted(world, route, name)
    for i in range(1, 5):
        li = world.listener_status(name, f"listener-{i}")
        assert {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"} in li["supportedKinds"]
    assert world.listener_status(name, "listener-3")["attachedRoutes"] == 1
    address = ("127.0.93.10", world.p80)
    for authority, want in [
        ("bar.com", "grpc-infra-backend-v1"),
        ("foo.bar.com", "grpc-infra-backend-v2"),
        ("baz.bar.com", "grpc-infra-backend-v3"),
        ("boo.bar.com", "grpc-infra-backend-v3"),
        ("multiple.prefixes.bar.com", "grpc-infra-backend-v3"),
        ("multiple.prefixes.foo.com", "grpc-infra-backend-v3"),
        (f"bar.com:{world.p80}", "grpc-infra-backend-v1"),  # the port is not part of the name
    ]:
        assert await call(address, authority=authority) == f"{INFRA}/{want}", authority
    for authority in ("foo.com", "no.matching.host"):
        assert await status_of(address, authority=authority) == UNIMPLEMENTED, authority


async def test_a_call_no_route_matches_is_unimplemented(world, grpc_backends) -> None:
    """Another service, or a method no rule names: UNIMPLEMENTED (a 404 to a gRPC client)."""
    route = grpc_route("only-echo", [
        {"matches": [{"method": {"service": SERVICE, "method": "Echo"}}],
         "backendRefs": to("grpc-infra-backend-v1")},
    ])  # fmt: skip
    await world.start([*grpc_backends["objects"], route])
    gw = world.address("same-namespace")
    assert await call(gw) == f"{INFRA}/grpc-infra-backend-v1"
    assert await status_of(gw, "EchoTwo") == UNIMPLEMENTED
    async with grpc.aio.insecure_channel(f"{gw[0]}:{gw[1]}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary("/other.Service/Echo")(b"x", timeout=5)
    assert info.value.code() == UNIMPLEMENTED


async def test_an_unresolved_backend_ref_is_unavailable(world, grpc_backends) -> None:
    """grpcroute_types.go: a call routed to an invalid backendRef MUST get UNAVAILABLE."""
    route = grpc_route("to-nowhere", [
        {"matches": [{"method": {"service": SERVICE, "method": "Echo"}}],
         "backendRefs": to("does-not-exist")},
        {"matches": [{"method": {"service": SERVICE, "method": "EchoTwo"}}],
         "backendRefs": to("grpc-infra-backend-v2")},
    ])  # fmt: skip
    await world.start([*grpc_backends["objects"], route])
    c = world.parent_condition("GRPCRoute", INFRA, "to-nowhere", "ResolvedRefs")
    assert (c["status"], c["reason"]) == ("False", "BackendNotFound")
    c = world.parent_condition("GRPCRoute", INFRA, "to-nowhere", "Accepted")
    assert c["status"] == "True"
    gw = world.address("same-namespace")
    assert await status_of(gw, "Echo") == grpc.StatusCode.UNAVAILABLE
    assert await call(gw, "EchoTwo") == f"{INFRA}/grpc-infra-backend-v2"
