"""Gateway API from the Kubernetes API: its objects reach the state; without its CRDs, all else works.

Against the fake API server: GatewayClass, Gateway, HTTPRoute, GRPCRoute,
ReferenceGrant (v1beta1) and Namespace are watched by default and arrive as
model objects; a cluster that does not serve the Gateway API still becomes
ready, says so in one warning, and picks the CRDs up when they are installed
(and drops their objects when they are removed). RBAC grants what that takes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from netplane.config import build
from netplane.dataplane import Dataplane
from netplane.model import (
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    Namespace,
    ObjectKey,
    ReferenceGrant,
    Service,
)
from netplane.sources.kube import (
    DEFAULT_KINDS,
    GATEWAY_API_KINDS,
    GATEWAY_KINDS,
    RESOURCES,
    ApiError,
    Backoff,
    KubeClient,
    KubeSource,
)
from netplane.testing.fakekube import FakeKube

FAST = Backoff(initial=0.01, maximum=0.05, jitter=0.5)
LOGGER = "netplane.sources.kube"
GROUP = "gateway.networking.k8s.io"
RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"


# -- object factories ----------------------------------------------------------


def service(name: str = "web") -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80}]},
    }


def gateway_class(name: str = "netplane") -> dict[str, Any]:
    return {
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": "netplane.io/gateway-controller"},
    }


def gateway(name: str = "edge", port: int = 80) -> dict[str, Any]:
    listener = {
        "name": "http",
        "port": port,
        "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "All"}},
    }
    return {
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"gatewayClassName": "netplane", "listeners": [listener]},
    }


def http_route(name: str = "web", host: str = "web.example.test") -> dict[str, Any]:
    return {
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {
            "parentRefs": [{"name": "edge", "namespace": "default"}],
            "hostnames": [host],
            "rules": [{"backendRefs": [{"name": "web", "namespace": "default", "port": 80}]}],
        },
    }


def grpc_route(name: str = "rpc") -> dict[str, Any]:
    return {
        "kind": "GRPCRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "rules": [{"backendRefs": [{"name": "rpc", "port": 9000}]}],
        },
    }


def reference_grant() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "from-team-a", "namespace": "default"},
        "spec": {
            "from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "team-a"}],
            "to": [{"group": "", "kind": "Service", "name": "web"}],
        },
    }


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"kind": "Namespace", "metadata": {"name": name, "labels": labels}}


# -- helpers -------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    async with FakeKube() as f:
        yield f


@pytest.fixture
async def dataplane(fake: FakeKube) -> AsyncIterator[Dataplane]:
    """A Dataplane fed by a KubeSource watching the default kinds (not started)."""
    source = KubeSource(fake.cluster_config(), backoff=FAST)
    dp = Dataplane(build({}, {"mode": "local", "admin": None}), sources=[source], serve=False)
    yield dp
    await dp.stop()


async def start(dp: Dataplane, timeout: float = 5.0) -> None:
    await dp.start()
    async with asyncio.timeout(timeout):
        await dp.wait_ready()


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


def key(kind: str, name: str, ns: str = "default") -> ObjectKey:
    return ObjectKey(kind, ns, name)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING
    ]


def infos(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and text in r.getMessage()]


# -- the objects arrive --------------------------------------------------------


def test_gateway_kinds_are_watched_by_default() -> None:
    assert set(GATEWAY_KINDS) == {*GATEWAY_API_KINDS, "Namespace"}
    assert set(GATEWAY_KINDS) <= set(DEFAULT_KINDS)
    assert RESOURCES["ReferenceGrant"].group_version == f"{GROUP}/v1beta1"
    assert not RESOURCES["GatewayClass"].namespaced and not RESOURCES["Namespace"].namespaced
    assert {k for k in DEFAULT_KINDS if RESOURCES[k].needs_crds} == set(GATEWAY_API_KINDS)


async def test_gateway_api_objects_reach_the_state_as_model_objects(
    fake: FakeKube, dataplane: Dataplane
) -> None:
    fake.apply(service())
    fake.apply(gateway_class())
    fake.apply(gateway())
    fake.apply(http_route())
    fake.apply(grpc_route())
    fake.apply(reference_grant())
    fake.apply(namespace("team-a", {"shared-gateway-access": "true"}))

    await start(dataplane)
    state = dataplane.state

    gc = state.get(ObjectKey("GatewayClass", "", "netplane"))
    assert isinstance(gc, GatewayClass)
    assert gc.controller == "netplane.io/gateway-controller"
    gw = state.get(key("Gateway", "edge"))
    assert isinstance(gw, Gateway)
    assert gw.class_name == "netplane"
    assert [(li.name, li.port, li.protocol) for li in gw.listeners] == [("http", 80, "HTTP")]
    route = state.get(key("HTTPRoute", "web", "team-a"))
    assert isinstance(route, HTTPRoute)
    assert route.hostnames == ("web.example.test",)
    assert [(p.namespace, p.name) for p in route.parents] == [("default", "edge")]
    assert isinstance(state.get(key("GRPCRoute", "rpc")), GRPCRoute)
    grant = state.get(key("ReferenceGrant", "from-team-a"))
    assert isinstance(grant, ReferenceGrant)
    assert grant.allows(GROUP, "HTTPRoute", "team-a", "", "Service", "web")
    ns = state.get(ObjectKey("Namespace", "", "team-a"))
    assert isinstance(ns, Namespace)
    assert ns.meta.labels == {"shared-gateway-access": "true"}
    assert isinstance(state.get(key("Service", "web")), Service)

    # ReferenceGrant is read as v1beta1, which every standard-channel install serves.
    paths = {r.path for r in fake.requests}
    assert f"/apis/{GROUP}/v1beta1/referencegrants" in paths
    assert f"/apis/{GROUP}/v1/gatewayclasses" in paths and "/api/v1/namespaces" in paths

    # Later changes come through the watch.
    await fake.wait_watchers(1, "HTTPRoute")
    await fake.wait_watchers(1, "Namespace")
    fake.apply(http_route(host="www.example.test"))
    fake.apply(namespace("team-a", {"shared-gateway-access": "false"}))
    fake.delete("Gateway", "default", "edge")

    def changed() -> bool:
        r = state.get(key("HTTPRoute", "web", "team-a"))
        n = state.get(ObjectKey("Namespace", "", "team-a"))
        return (
            isinstance(r, HTTPRoute)
            and r.hostnames == ("www.example.test",)
            and isinstance(n, Namespace)
            and n.meta.labels == {"shared-gateway-access": "false"}
            and state.get(key("Gateway", "edge")) is None
        )

    await eventually(changed)


# -- a cluster without the Gateway API CRDs --------------------------------------


async def test_without_gateway_crds_the_source_is_ready_and_warns_once_then_picks_them_up(
    fake: FakeKube, dataplane: Dataplane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    fake.unserve(*GATEWAY_API_KINDS)
    fake.apply(service())
    fake.apply(namespace("team-a", {"env": "prod"}))

    await start(dataplane)  # not held back by the missing resources
    state = dataplane.state
    assert isinstance(state.get(key("Service", "web")), Service)
    assert isinstance(state.get(ObjectKey("Namespace", "", "team-a")), Namespace)
    await fake.wait_watchers(1, "Service")
    fake.apply(service("api"))
    await eventually(lambda: state.get(key("Service", "api")) is not None)

    # The lists are retried (backoff capped), quietly: one warning for all five.
    def retried() -> bool:
        return all(len(fake.list_requests(k)) >= 3 for k in GATEWAY_API_KINDS)

    await eventually(retried)
    (warning,) = warnings(caplog)
    assert warning.startswith("Gateway API CRDs are not installed (")
    assert "404" in warning and GROUP in warning
    assert not [k for k in GATEWAY_API_KINDS if state.objects(k)]

    # The CRDs are installed: a Gateway applied afterwards reaches the state.
    fake.serve(*GATEWAY_API_KINDS)
    await fake.wait_watchers(1, "Gateway")
    fake.apply(gateway())
    await eventually(lambda: isinstance(state.get(key("Gateway", "edge")), Gateway))
    fake.apply(gateway_class())
    await eventually(lambda: state.get(ObjectKey("GatewayClass", "", "netplane")) is not None)
    assert len(infos(caplog, "Gateway API CRDs appeared")) == 1
    assert len(warnings(caplog)) == 1
    assert dataplane.ready


async def test_gateway_crds_removed_take_their_objects_along_and_warn(
    fake: FakeKube, dataplane: Dataplane, caplog: pytest.LogCaptureFixture
) -> None:
    fake.apply(service())
    fake.apply(gateway())
    await start(dataplane)
    state = dataplane.state
    assert state.get(key("Gateway", "edge")) is not None
    await fake.wait_watchers(1, "Gateway")

    fake.unserve(*GATEWAY_API_KINDS)
    await eventually(lambda: state.get(key("Gateway", "edge")) is None)
    assert any("Gateway API CRDs are not installed" in w for w in warnings(caplog))
    assert state.get(key("Service", "web")) is not None

    fake.serve(*GATEWAY_API_KINDS)  # and back, with the object the API server still has
    await eventually(lambda: state.get(key("Gateway", "edge")) is not None)


async def test_status_subresource_of_gateway_kinds(fake: FakeKube) -> None:
    """What a Gateway status writer relies on: GET and merge-PATCH .../status, 409 on a stale rv."""
    stored = fake.apply(gateway())
    path = f"/apis/{GROUP}/v1/namespaces/default/gateways/edge/status"
    client = KubeClient(fake.cluster_config())
    try:
        got = await client.get_json(path)
        assert got["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
        rv = got["metadata"]["resourceVersion"]
        conditions = [{"type": "Accepted", "status": "True", "reason": "Accepted"}]
        patched = await client.patch_json(
            path, {"metadata": {"resourceVersion": rv}, "status": {"conditions": conditions}}
        )
        assert patched["status"] == {"conditions": conditions}
        assert patched["spec"] == stored["spec"]
        with pytest.raises(ApiError) as stale:
            await client.patch_json(path, {"metadata": {"resourceVersion": rv}, "status": {}})
        assert stale.value.conflict

        fake.unserve("Gateway")
        with pytest.raises(ApiError) as missing:
            await client.get_json(path)
        assert missing.value.not_found
    finally:
        await client.aclose()


# -- RBAC ---------------------------------------------------------------------------


def granted() -> dict[tuple[str, str], set[str]]:
    (role,) = [d for d in yaml.safe_load_all(RBAC.read_text()) if d and d["kind"] == "ClusterRole"]
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_rbac_lets_the_source_watch_every_default_kind_and_write_gateway_status() -> None:
    rules = granted()
    for kind in DEFAULT_KINDS:
        res = RESOURCES[kind]
        group = "" if res.group_version == "v1" else res.group_version.split("/")[0]
        assert {"list", "watch"} <= rules.get((group, res.plural), set()), kind
    for plural in ("gatewayclasses", "gateways", "httproutes", "grpcroutes"):
        assert "patch" in rules.get((GROUP, f"{plural}/status"), set()), plural
    assert "get" in rules[(GROUP, "gateways")]
