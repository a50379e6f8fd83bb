"""Gateway and GatewayClass status and listeners, from the Gateway API conformance suite.

Each test rebuilds one of kubernetes-sigs/gateway-api ``conformance/tests/gateway-*``
(the objects of its YAML and the checks of its Go file) on the suite's base
world (:mod:`gateway_world`), then checks what netplane serves with real
clients (curl, Python ssl). The last tests cover netplane's own rules the
suite leaves to the implementation: listener conflicts between Gateways,
unsupported protocols, a port that is taken, SNI, status addresses and
GatewayClasses of other controllers.

Every Gateway here gets its own loopback address (127.0.92.x), as the base
Gateways do, so that listeners of different tests never share a socket.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from typing import Any

import pytest
import trustme
from gateway_world import (
    APP,
    CLASS,
    GATEWAYS,
    HAVE_CURL,
    INFRA,
    V1,
    WEB,
    ConformanceWorld,
    backend,
    gateway,
    http_route,
    listener,
    meta,
    tls_secret,
)

from netplane.errors import ModelError
from netplane.testing.ports import free_port

pytestmark = pytest.mark.skipif(not HAVE_CURL, reason="needs curl")

HTTP_ROUTE = [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]
SELECT_INFRA = {
    "kinds": [{"kind": "HTTPRoute"}],
    "namespaces": {
        "from": "Selector",
        "selector": {"matchLabels": {"kubernetes.io/metadata.name": INFRA}},
    },
}
ALL = {"namespaces": {"from": "All"}}
TO_V1 = [{"backendRefs": [backend("infra-backend-v1")]}]


def cond(status: dict[str, Any], type_: str) -> tuple[str, str]:
    """(status, reason) of a condition in a status or listener status."""
    for c in status["conditions"]:
        if c["type"] == type_:
            return c["status"], c["reason"]
    raise AssertionError(f"no {type_} condition in {status}")


def kinds(li: dict[str, Any]) -> list[str]:
    return [k["kind"] for k in li["supportedKinds"]]


def assert_latest(world: ConformanceWorld, gw: str, generation: int, ns: str = INFRA) -> None:
    """Every Gateway and listener condition carries ``generation`` (the suite's "latest")."""
    st = world.status("Gateway", ns, gw)
    assert st is not None
    conds = [*st["conditions"], *(c for li in st["listeners"] for c in li["conditions"])]
    assert conds and all(c["observedGeneration"] == generation for c in conds), conds


def with_generation(obj: dict[str, Any], generation: int) -> dict[str, Any]:
    obj["metadata"]["generation"] = generation
    return obj


def addressed(name: str, address: str, listeners: list[dict], **kw: Any) -> dict[str, Any]:
    return gateway(name, listeners, addresses=[address], **kw)


def cert_ref(name: str = "tls-validity-checks-certificate", **extra: Any) -> dict[str, Any]:
    return {"certificateRefs": [{"kind": "Secret", "name": name, **extra}]}


async def refused(address: tuple[str, int]) -> bool:
    """True when nothing accepts connections on ``address``."""
    try:
        _, w = await asyncio.open_connection(*address)
    except ConnectionRefusedError:
        return True
    w.close()
    return False


def peer_names(address: tuple[str, int], server_name: str, ca: trustme.CA) -> list[str]:
    """The DNS names (SAN) of the certificate ``address`` presents for SNI ``server_name``.

    The handshake verifies the chain against ``ca`` and the name, as a client would.
    """
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with (
        socket.create_connection(address, timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        cert = tls.getpeercert()
    return [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]


# -- the suite's Gateway tests --------------------------------------------------------------


async def test_gateway_with_attached_routes(world: ConformanceWorld) -> None:
    """GatewayWithAttachedRoutes: attachedRoutes counts accepted routes, even on a bad listener."""
    unresolved = addressed(
        "unresolved-gateway-with-one-attached-unresolved-route",
        "127.0.92.3",
        [listener("tls", 443, "HTTPS", allowedRoutes=SELECT_INFRA,
                  tls={"mode": "Terminate", **cert_ref("does-not-exist")})],
    )  # fmt: skip
    unresolved["metadata"]["annotations"] = {"gateway-api/skip-this-for-readiness": "true"}
    await world.start(
        [
            addressed("gateway-with-one-attached-route", "127.0.92.1",
                      [listener("http", 80, allowedRoutes=SELECT_INFRA)]),
            addressed("gateway-with-two-attached-routes", "127.0.92.2",
                      [listener("http", 80, hostname="foo.example.com",
                                allowedRoutes=SELECT_INFRA)]),
            unresolved,
            http_route("http-route-1", TO_V1, parents=[
                {"kind": "Gateway", "name": "gateway-with-one-attached-route",
                 "namespace": INFRA}]),
            http_route("http-route-2", TO_V1, parents=["gateway-with-two-attached-routes"]),
            http_route("http-route-3", TO_V1, parents=["gateway-with-two-attached-routes"]),
            http_route("http-route-not-accepted", TO_V1,
                       parents=["gateway-with-two-attached-routes"],
                       hostnames=["not-accepted.test.com"]),
            http_route("http-route-4", [{"backendRefs": [backend("does-not-exist")]}], parents=[
                {"kind": "Gateway", "name": "unresolved-gateway-with-one-attached-unresolved-route",
                 "namespace": INFRA, "sectionName": "tls"}]),
        ]
    )  # fmt: skip
    one = world.listener_status("gateway-with-one-attached-route", "http")
    assert kinds(one) == ["HTTPRoute"]
    assert one["attachedRoutes"] == 1
    assert cond(one, "Accepted")[0] == cond(one, "ResolvedRefs")[0] == "True"

    two = world.listener_status("gateway-with-two-attached-routes", "http")
    assert two["attachedRoutes"] == 2
    assert cond(two, "Accepted")[0] == cond(two, "ResolvedRefs")[0] == "True"
    c = world.parent_condition("HTTPRoute", INFRA, "http-route-not-accepted", "Accepted")
    assert (c["status"], c["reason"]) == ("False", "NoMatchingListenerHostname")

    bad = world.listener_status("unresolved-gateway-with-one-attached-unresolved-route", "tls")
    assert kinds(bad) == ["HTTPRoute"]
    assert cond(bad, "Programmed")[0] == "False"
    assert cond(bad, "ResolvedRefs")[0] == "False"
    assert bad["attachedRoutes"] == 1  # counted although the listener is not programmed
    c = world.parent_condition("HTTPRoute", INFRA, "http-route-4", "ResolvedRefs")
    assert c["status"] == "False"

    # What is served agrees with the status.
    got = await world.request("", address=("127.0.92.1", world.p80))
    assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v1")
    got = await world.request("", host="foo.example.com", address=("127.0.92.2", world.p80))
    assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v1")
    got = await world.request("", host="not-accepted.test.com", address=("127.0.92.2", world.p80))
    assert got.status == 404
    assert await refused(("127.0.92.3", world.p443))  # no certificate: not served at all


async def test_gateway_invalid_tls_configuration(world: ConformanceWorld) -> None:
    """GatewayInvalidTLSConfiguration: each bad certificateRef is InvalidCertificateRef."""
    malformed = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": meta("malformed-certificate"),
        "data": {
            "tls.crt": base64.b64encode(b"Hello world\n").decode(),
            "tls.key": base64.b64encode(b"Hello world\n").decode(),
        },
    }
    gateways = {
        "gateway-certificate-nonexistent-secret": cert_ref("nonexistent-certificate"),
        "gateway-certificate-unsupported-group": cert_ref(group="wrong.group.company.io"),
        "gateway-certificate-unsupported-kind": {
            "certificateRefs": [
                {"group": "", "kind": "WrongKind", "name": "tls-validity-checks-certificate"}
            ]
        },
        "gateway-certificate-malformed-secret": cert_ref("malformed-certificate"),
    }
    objs = [
        addressed(name, f"127.0.92.{10 + i}",
                  [listener("https", 443, "HTTPS", allowedRoutes=ALL, tls=tls)])
        for i, (name, tls) in enumerate(gateways.items())
    ]  # fmt: skip
    for o in objs:
        with_generation(o, 1)
    # netplane's model parses the PEM when a Secret is applied and refuses this one, so the
    # listener sees no Secret: the same reason as a missing one.
    await world.start(objs, tls=True)
    with pytest.raises(ModelError, match="not a PEM certificate"):
        world.dp.apply(malformed)
    await world.settle()
    for name in gateways:
        st = world.status("Gateway", INFRA, name)
        assert st is not None and [li["name"] for li in st["listeners"]] == ["https"]
        li = st["listeners"][0]
        assert HTTP_ROUTE[0] in li["supportedKinds"], name
        assert cond(li, "ResolvedRefs") == ("False", "InvalidCertificateRef"), name
        assert li["attachedRoutes"] == 0
        assert_latest(world, name, 1)


async def _cross_namespace_certificate(world: ConformanceWorld, gw: str, grants: list[dict]):
    """A Gateway whose HTTPS listener uses web-ns/certificate, with ``grants`` in place."""
    ca = trustme.CA()
    secret = tls_secret(WEB, "certificate", ca.issue_cert("*.example.com", "example.com"))
    await world.start(
        [
            secret,
            *grants,
            addressed(gw, "127.0.92.20", [listener("https", 443, "HTTPS", allowedRoutes=ALL,
                                                   tls=cert_ref("certificate", namespace=WEB))]),
        ]
    )  # fmt: skip
    return world.listener_status(gw, "https")


def grant(name: str, ns: str = WEB, *, from_: dict | None = None, to: dict | None = None) -> dict:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": meta(name, ns),
        "spec": {
            "from": [from_ or {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                               "namespace": INFRA}],
            "to": [to or {"group": "", "kind": "Secret"}],
        },
    }  # fmt: skip


async def test_gateway_secret_invalid_reference_grant(world: ConformanceWorld) -> None:
    """GatewaySecretInvalidReferenceGrant: grants that do not fit allow nothing."""
    gw_from = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": INFRA}
    grants = [
        grant("reference-grant-wrong-namespace", APP),
        grant("reference-grant-wrong-from-group", from_={**gw_from, "group": "not-the-group"}),
        grant("reference-grant-wrong-from-kind", from_={**gw_from, "kind": "HTTPRoute"}),
        grant("reference-grant-wrong-from-namespace", from_={**gw_from, "namespace": APP}),
        grant("reference-grant-wrong-to-group", to={"group": "not-the-group", "kind": "Secret"}),
        grant("reference-grant-wrong-to-kind", to={"group": "", "kind": "Service"}),
        grant(
            "reference-grant-wrong-to-name",
            to={"group": "", "kind": "Secret", "name": "not-the-certificate-youre-looking-for"},
        ),
    ]
    li = await _cross_namespace_certificate(world, "gateway-secret-invalid-reference-grant", grants)
    assert cond(li, "ResolvedRefs") == ("False", "RefNotPermitted")
    assert HTTP_ROUTE[0] in li["supportedKinds"]
    assert li["attachedRoutes"] == 0
    assert await refused(("127.0.92.20", world.p443))


@pytest.mark.parametrize(
    ("gw", "to"),
    [
        ("gateway-secret-reference-grant-all-in-namespace", {"group": "", "kind": "Secret"}),
        ("gateway-secret-reference-grant-specific",
         {"group": "", "kind": "Secret", "name": "certificate"}),
    ],
)  # fmt: skip
async def test_gateway_secret_reference_grant(world: ConformanceWorld, gw: str, to: dict) -> None:
    """GatewaySecretReferenceGrantAllInNamespace and GatewaySecretReferenceGrantSpecific."""
    li = await _cross_namespace_certificate(world, gw, [grant("reference-grant", to=to)])
    assert cond(li, "Programmed") == ("True", "Programmed")
    assert cond(li, "ResolvedRefs")[0] == "True"
    assert HTTP_ROUTE[0] in li["supportedKinds"]
    assert li["attachedRoutes"] == 0
    # Served, with the granted certificate (no route yet: a 404 over TLS).
    got = await world.request(
        "", host="www.example.com", https=True, address=("127.0.92.20", world.p443)
    )
    assert got.status == 404


async def test_gateway_secret_missing_reference_grant(world: ConformanceWorld) -> None:
    """GatewaySecretMissingReferenceGrant: no grant, RefNotPermitted."""
    li = await _cross_namespace_certificate(world, "gateway-secret-missing-reference-grant", [])
    assert cond(li, "ResolvedRefs") == ("False", "RefNotPermitted")
    assert HTTP_ROUTE[0] in li["supportedKinds"]
    assert li["attachedRoutes"] == 0


async def test_gateway_modify_listeners(world: ConformanceWorld) -> None:
    """GatewayModifyListeners: a listener added starts serving, one removed stops, live."""
    https = listener("https", 443, "HTTPS", hostname="secure.test.com", allowedRoutes=ALL,
                     tls=cert_ref())  # fmt: skip
    add = with_generation(addressed("gateway-add-listener", "127.0.92.30", [https]), 1)
    remove = with_generation(
        addressed("gateway-remove-listener", "127.0.92.31",
                  [https, listener("http", 80, allowedRoutes=ALL)]), 1
    )  # fmt: skip
    await world.start(
        [
            add,
            remove,
            http_route("http-route-1", TO_V1, parents=["gateway-add-listener"]),
            http_route("http-route-2", TO_V1, parents=["gateway-remove-listener"]),
        ],
        tls=True,
    )
    assert_latest(world, "gateway-add-listener", 1)
    assert_latest(world, "gateway-remove-listener", 1)
    added_port = ("127.0.92.30", world.p80)
    assert await refused(added_port)

    # Add a listener.
    add = with_generation(
        addressed("gateway-add-listener", "127.0.92.30",
                  [https, listener("http", 80, hostname="data.test.com", allowedRoutes=ALL)]), 2
    )  # fmt: skip
    await world.apply(add)
    st = world.status("Gateway", INFRA, "gateway-add-listener")
    assert [li["name"] for li in st["listeners"]] == ["https", "http"]
    for li in st["listeners"]:
        assert cond(li, "Accepted")[0] == cond(li, "ResolvedRefs")[0] == "True"
        assert HTTP_ROUTE[0] in li["supportedKinds"]
        assert li["attachedRoutes"] == 1  # the same route, counted on each listener
    assert_latest(world, "gateway-add-listener", 2)
    got = await world.request("", host="data.test.com", address=added_port)
    assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v1")
    got = await world.request(
        "", host="secure.test.com", https=True, address=("127.0.92.30", world.p443)
    )
    assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v1")

    # Remove a listener.
    removed_port = ("127.0.92.31", world.p443)
    got = await world.request("", host="secure.test.com", https=True, address=removed_port)
    assert got.status == 200
    remove = with_generation(
        addressed("gateway-remove-listener", "127.0.92.31",
                  [listener("http", 80, allowedRoutes=ALL)]), 2
    )  # fmt: skip
    await world.apply(remove)
    st = world.status("Gateway", INFRA, "gateway-remove-listener")
    assert [li["name"] for li in st["listeners"]] == ["http"]
    li = st["listeners"][0]
    assert cond(li, "Accepted")[0] == cond(li, "ResolvedRefs")[0] == "True"
    assert li["attachedRoutes"] == 1
    assert_latest(world, "gateway-remove-listener", 2)
    assert await refused(removed_port)
    got = await world.request("", address=("127.0.92.31", world.p80))
    assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v1")


async def test_gateway_observed_generation_bump(world: ConformanceWorld) -> None:
    """GatewayObservedGenerationBump: conditions follow metadata.generation."""
    first = listener("http", 80, hostname="bar.com", allowedRoutes=ALL)
    gw = addressed("gateway-observed-generation-bump", "127.0.92.40", [first])
    await world.start([with_generation(gw, 1)])
    assert_latest(world, "gateway-observed-generation-bump", 1)
    gw = addressed("gateway-observed-generation-bump", "127.0.92.40",
                   [first, listener("alternate", 80, hostname="foo.com", allowedRoutes=ALL)])  # fmt: skip
    await world.apply(with_generation(gw, 2))
    assert_latest(world, "gateway-observed-generation-bump", 2)
    st = world.status("Gateway", INFRA, "gateway-observed-generation-bump")
    assert [li["name"] for li in st["listeners"]] == ["http", "alternate"]


async def test_gateway_invalid_route_kind(world: ConformanceWorld) -> None:
    """GatewayInvalidRouteKind: unknown kinds are InvalidRouteKinds; known ones stay listed."""
    only = addressed("gateway-only-invalid-route-kind", "127.0.92.50",
                     [listener("http", 80, allowedRoutes={**ALL, "kinds": [
                         {"kind": "InvalidRoute"}]})])  # fmt: skip
    only["metadata"]["annotations"] = {"gateway-api/skip-this-for-readiness": "true"}
    both = addressed("gateway-supported-and-invalid-route-kind", "127.0.92.51",
                     [listener("http", 80, allowedRoutes={**ALL, "kinds": [
                         {"kind": "InvalidRoute"}, {"kind": "HTTPRoute"}]})])  # fmt: skip
    await world.start([only, both])
    li = world.listener_status("gateway-only-invalid-route-kind", "http")
    assert cond(li, "ResolvedRefs") == ("False", "InvalidRouteKinds")
    assert li["supportedKinds"] == []
    assert li["attachedRoutes"] == 0
    li = world.listener_status("gateway-supported-and-invalid-route-kind", "http")
    assert cond(li, "ResolvedRefs") == ("False", "InvalidRouteKinds")
    assert li["supportedKinds"] == HTTP_ROUTE
    assert li["attachedRoutes"] == 0


async def test_gatewayclass_observed_generation_bump(world: ConformanceWorld) -> None:
    """GatewayClassObservedGenerationBump: every class of ours is reconciled, per generation."""

    def cls(description: str, generation: int) -> dict[str, Any]:
        return {
            "apiVersion": V1,
            "kind": "GatewayClass",
            "metadata": {"name": "gatewayclass-observed-generation-bump",
                         "generation": generation},
            "spec": {"controllerName": "netplane.io/gateway-controller",
                     "description": description},
        }  # fmt: skip

    await world.start([cls("old", 1)])
    st = world.status("GatewayClass", "", "gatewayclass-observed-generation-bump")
    assert st is not None
    cond(st, "Accepted")
    assert all(c["observedGeneration"] == 1 for c in st["conditions"])
    await world.apply(cls("new", 2))
    st = world.status("GatewayClass", "", "gatewayclass-observed-generation-bump")
    cond(st, "Accepted")
    assert all(c["observedGeneration"] == 2 for c in st["conditions"]), st["conditions"]


# -- netplane's own rules -------------------------------------------------------------------


async def test_same_hostname_on_one_port_the_newer_listener_is_conflicted(world) -> None:
    """Two Gateways on one address and port with one hostname: the older one serves."""
    objs = []
    for name, created, to in (
        ("gw-older", "2024-01-01T00:00:00Z", "infra-backend-v1"),
        ("gw-newer", "2024-06-01T00:00:00Z", "infra-backend-v2"),
    ):
        gw = addressed(name, "127.0.92.60", [listener("http", 80, hostname="dup.example.com")])
        gw["metadata"]["creationTimestamp"] = created
        objs += [gw, http_route(f"to-{name}", [{"backendRefs": [backend(to)]}], parents=[name])]
    await world.start(objs)
    newer = world.listener_status("gw-newer", "http")
    assert cond(newer, "Conflicted") == ("True", "HostnameConflict")
    assert cond(newer, "Programmed")[0] == "False"
    older = world.listener_status("gw-older", "http")
    assert cond(older, "Conflicted") == ("False", "NoConflicts")
    assert cond(older, "Programmed") == ("True", "Programmed")
    got = await world.request("", host="dup.example.com", address=("127.0.92.60", world.p80))
    assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v1")


async def test_http_and_https_on_one_port_is_a_protocol_conflict(world) -> None:
    gw = addressed("mixed", "127.0.92.61", [
        listener("http", 80),
        listener("https", 80, "HTTPS", hostname="secure.example.org", tls=cert_ref()),
    ])  # fmt: skip
    await world.start([gw, http_route("r", TO_V1, parents=["mixed"])], tls=True)
    li = world.listener_status("mixed", "https")
    assert cond(li, "Conflicted") == ("True", "ProtocolConflict")
    assert cond(li, "Programmed")[0] == "False"
    assert cond(world.listener_status("mixed", "http"), "Programmed")[0] == "True"
    got = await world.request("", host="secure.example.org", address=("127.0.92.61", world.p80))
    assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v1")


async def test_a_tcp_listener_is_unsupported_and_its_neighbour_serves(world) -> None:
    tcp_port = free_port("127.0.92.62")
    gw = addressed("with-tcp", "127.0.92.62",
                   [listener("tcp", tcp_port, "TCP"), listener("http", 80)])  # fmt: skip
    await world.start([gw, http_route("r", TO_V1, parents=["with-tcp"])])
    li = world.listener_status("with-tcp", "tcp")
    assert cond(li, "Accepted") == ("False", "UnsupportedProtocol")
    assert cond(li, "Programmed")[0] == "False"
    assert cond(world.listener_status("with-tcp", "http"), "Programmed")[0] == "True"
    assert await refused(("127.0.92.62", tcp_port))
    got = await world.request("", address=("127.0.92.62", world.p80))
    assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v1")
    st = world.status("Gateway", INFRA, "with-tcp")
    assert cond(st, "Accepted") == ("True", "ListenersNotValid")


async def test_a_taken_port_is_port_unavailable_and_other_listeners_serve(world) -> None:
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    taken.bind(("127.0.92.63", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        gw = addressed("squatted", "127.0.92.63",
                       [listener("taken", port), listener("free", 80)])  # fmt: skip
        await world.start([gw, http_route("r", TO_V1, parents=["squatted"])])
        li = world.listener_status("squatted", "taken")
        assert cond(li, "Accepted") == ("False", "PortUnavailable")
        assert cond(li, "Programmed")[0] == "False"
        free = world.listener_status("squatted", "free")
        assert cond(free, "Programmed") == ("True", "Programmed")
        got = await world.request("", address=("127.0.92.63", world.p80))
        assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v1")
    finally:
        taken.close()


async def test_sni_picks_the_listener_certificate_and_its_routes(world) -> None:
    """The base HTTPS Gateway by SNI, and one whose two listeners have certificates of their own."""
    ca = trustme.CA()
    objs = [
        tls_secret(INFRA, "cert-a", ca.issue_cert("a.example.net")),
        tls_secret(INFRA, "cert-b", ca.issue_cert("b.example.net")),
        addressed("two-certs", "127.0.92.64", [
            listener("a", 443, "HTTPS", hostname="a.example.net", tls=cert_ref("cert-a")),
            listener("b", 443, "HTTPS", hostname="b.example.net", tls=cert_ref("cert-b")),
        ]),
        http_route("to-second", TO_V1, parents=[
            {"name": "same-namespace-with-https-listener", "namespace": INFRA,
             "sectionName": "https-with-hostname"}]),
        http_route("to-any", [{"backendRefs": [backend("infra-backend-v2")]}], parents=[
            {"name": "same-namespace-with-https-listener", "namespace": INFRA,
             "sectionName": "https"}]),
    ]  # fmt: skip
    await world.start(objs, tls=True)
    base = (GATEWAYS["same-namespace-with-https-listener"], world.p443)
    names = await asyncio.to_thread(peer_names, base, "second-example.org", world.ca)
    assert "second-example.org" in names
    got = await world.request("", host="second-example.org", https=True, address=base)
    assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v1")
    got = await world.request("", host="example.org", https=True, address=base)
    assert (got.status, got.served_by) == (200, f"{INFRA}/infra-backend-v2")

    own = ("127.0.92.64", world.p443)
    assert await asyncio.to_thread(peer_names, own, "a.example.net", ca) == ["a.example.net"]
    assert await asyncio.to_thread(peer_names, own, "b.example.net", ca) == ["b.example.net"]


async def test_status_addresses_carry_the_gateway_address(world: ConformanceWorld) -> None:
    await world.start()
    for name, address in GATEWAYS.items():
        if name == "same-namespace-with-https-listener":
            continue  # not started without tls=True
        st = world.status("Gateway", INFRA, name)
        assert st["addresses"] == [{"type": "IPAddress", "value": address}]
    assert cond(world.status("GatewayClass", "", CLASS), "Accepted") == ("True", "Accepted")


async def test_a_class_of_another_controller_is_left_alone(world: ConformanceWorld) -> None:
    other = {
        "apiVersion": V1,
        "kind": "GatewayClass",
        "metadata": {"name": "other"},
        "spec": {"controllerName": "example.com/another-controller"},
    }
    gw = addressed("theirs", "127.0.92.65", [listener("http", 80, allowedRoutes=ALL)], cls="other")
    await world.start([other, gw, http_route("r", TO_V1, parents=["theirs"])])
    assert world.status("GatewayClass", "", "other") is None
    assert world.status("Gateway", INFRA, "theirs") is None
    assert world.status("HTTPRoute", INFRA, "r") is None
    assert await refused(("127.0.92.65", world.p80))
