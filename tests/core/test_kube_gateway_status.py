"""Gateway API status: the merge rules (sans-IO), then the writer against the fake API server.

The writer recomputes what netplane owns (``gateway_attach.attach``) and
merge-patches the status subresource of GatewayClasses, Gateways and routes
only where it differs, keeping other controllers' conditions and parents
entries, keeping lastTransitionTime while a condition's status holds, and
re-reading on a 409.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from netplane.config import build
from netplane.dataplane import Dataplane
from netplane.model import ObjectKey, parse_object
from netplane.ports import free_port
from netplane.sources.kube import Backoff, KubeClient, KubeSource
from netplane.sources.kube.gateway_status import (
    GatewayStatusPlanner,
    GatewayStatusWriter,
    canonical,
    merge_conditions,
    merge_parents,
    rfc3339,
    status_path,
)
from netplane.testing.fakekube import FakeKube

GROUP = "gateway.networking.k8s.io"
OURS = "netplane.io/gateway-controller"
THEIRS = "example.com/other-controller"
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
RESOURCES = (
    "Service",
    "Secret",
    "Namespace",
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "ReferenceGrant",
)


# -- objects ---------------------------------------------------------------------


def gateway_class(name: str = "netplane", controller: str = OURS) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller},
    }


def gateway(name: str = "gw", cls: str = "netplane") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": "infra"},
        "spec": {
            "gatewayClassName": cls,
            "listeners": [
                {
                    "name": "http",
                    "port": 8080,
                    "protocol": "HTTP",
                    "hostname": "*.shop.test",
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }
            ],
        },
    }


def theirs_entry() -> dict[str, Any]:
    return {
        "parentRef": {"group": GROUP, "kind": "Gateway", "namespace": "infra", "name": "theirs"},
        "controllerName": THEIRS,
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "reason": "Accepted",
                "message": "theirs",
                "observedGeneration": 1,
                "lastTransitionTime": "2024-06-01T00:00:00Z",
            }
        ],
    }


def http_route(
    name: str = "web",
    *,
    parents: tuple[str, ...] = ("gw", "theirs"),
    host: str = "web.shop.test",
    backend: str = "web",
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop", "generation": 3},
        "spec": {
            "parentRefs": [{"name": p, "namespace": "infra"} for p in parents],
            "hostnames": [host],
            "rules": [{"backendRefs": [{"name": backend, "port": 80}]}],
        },
    }
    if status is not None:
        doc["status"] = status
    return doc


def service(name: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"ports": [{"port": 80}]},
    }


def cond(type_: str, status: str, ltt: str = "", **kw: Any) -> dict[str, Any]:
    c = {"type": type_, "status": status, "reason": kw.get("reason", type_), "message": "m"}
    c["observedGeneration"] = kw.get("generation", 1)
    if ltt:
        c["lastTransitionTime"] = ltt
    return c


# -- merging (sans-IO) -------------------------------------------------------------


def test_conditions_keep_other_types_and_the_transition_time_of_an_unchanged_status():
    old = [
        cond("Accepted", "True", "2024-01-01T00:00:00Z"),
        cond("ResolvedRefs", "True", "2024-01-01T00:00:00Z"),
        cond("example.com/Healthy", "True", "2024-02-02T00:00:00Z"),
    ]
    ours = [cond("Accepted", "True"), cond("ResolvedRefs", "False", reason="BackendNotFound")]
    merged = merge_conditions(old, ours, "2025-01-01T00:00:00Z")
    assert [(c["type"], c["status"], c["lastTransitionTime"]) for c in merged] == [
        ("Accepted", "True", "2024-01-01T00:00:00Z"),
        ("ResolvedRefs", "False", "2025-01-01T00:00:00Z"),
        ("example.com/Healthy", "True", "2024-02-02T00:00:00Z"),
    ]
    # Without an old condition (or one without a time) the time is now.
    assert merge_conditions(None, ours, "X")[0]["lastTransitionTime"] == "X"


def test_parents_keep_other_controllers_entries_and_match_ours_with_defaults_filled_in():
    mine_old = {
        "parentRef": {"name": "gw"},  # group, kind and namespace defaulted
        "controllerName": OURS,
        "conditions": [cond("Accepted", "True", "2024-01-01T00:00:00Z")],
    }
    ours = [
        {
            "parentRef": {"group": GROUP, "kind": "Gateway", "namespace": "infra", "name": "gw"},
            "controllerName": OURS,
            "conditions": [cond("Accepted", "True")],
        }
    ]
    merged = merge_parents([theirs_entry(), mine_old], ours, OURS, "infra", "now")
    assert merged[0] == theirs_entry()
    assert merged[1]["conditions"][0]["lastTransitionTime"] == "2024-01-01T00:00:00Z"
    assert merge_parents([theirs_entry(), mine_old], [], OURS, "infra", "now") == [theirs_entry()]


def test_comparison_ignores_order_and_the_transition_time_value():
    a = [cond("A", "True", "t1"), cond("B", "False", "t1")]
    b = [cond("B", "False", "t2"), cond("A", "True", "t3")]
    assert canonical(a) == canonical(b)
    assert canonical(a) != canonical([cond("A", "True"), cond("B", "False", "t1")])
    assert canonical(None) == canonical([])


def obj(doc: dict[str, Any], rv: str = "5") -> Any:
    doc = copy.deepcopy(doc)
    doc["metadata"]["resourceVersion"] = rv
    out = parse_object(doc)
    assert out is not None
    return out


def test_planner_writes_once_per_version_and_clears_ours_from_a_route_that_left():
    planner = GatewayStatusPlanner(OURS, clock=lambda: T0)
    mine = {
        "parentRef": {"group": GROUP, "kind": "Gateway", "namespace": "infra", "name": "gw"},
        "controllerName": OURS,
        "conditions": [cond("Accepted", "True")],
    }
    route = obj(http_route())
    write = planner.plan(route, {"parents": [mine]})
    assert write is not None
    assert write.merge_patch()["metadata"] == {"resourceVersion": "5"}
    assert write.fields["parents"][-1]["conditions"][0]["lastTransitionTime"] == rfc3339(T0)
    planner.written(write)
    assert planner.plan(route, {"parents": [mine]}) is None  # the echo is on the way
    echoed = obj(http_route(status=write.fields), rv="6")
    assert planner.plan(echoed, {"parents": [mine]}) is None  # and came back

    # The route no longer names our Gateway: only our entry goes.
    left = obj(http_route(parents=("theirs",), status={"parents": [theirs_entry(), mine]}))
    clear = planner.plan(left, None)
    assert clear is not None and clear.fields == {"parents": [theirs_entry()]}
    # A route that never had an entry of ours is not touched.
    assert planner.plan(obj(http_route(status={"parents": [theirs_entry()]})), None) is None
    # Nor a Gateway or GatewayClass that is not ours.
    assert planner.plan(obj(gateway(cls="other")), None) is None


def test_nodes_sharing_a_gateway_add_their_own_address_and_keep_the_others():
    """Node mode without --gateway-address: each node serves on its own IPs, so each adds
    its address to status.addresses instead of overwriting the other nodes'."""
    listener_status = {"name": "http", "supportedKinds": [], "attachedRoutes": 0,
                       "conditions": [cond("Accepted", "True")]}  # fmt: skip
    other_node = {"type": "IPAddress", "value": "198.18.0.1"}
    doc = gateway()
    doc["status"] = {
        "conditions": [cond("Accepted", "True", rfc3339(T0))],
        "listeners": [listener_status],
        "addresses": [other_node],
    }
    ours = {
        "conditions": [cond("Accepted", "True")],
        "listeners": [listener_status],
        "addresses": [{"type": "IPAddress", "value": "198.18.0.2"}],
    }
    shared = GatewayStatusPlanner(OURS, clock=lambda: T0, shared=True)
    write = shared.plan(obj(doc), ours)
    assert write is not None
    assert write.fields["addresses"] == [other_node, {"type": "IPAddress", "value": "198.18.0.2"}]
    # Once the write is back (both addresses there), nothing to write.
    doc["status"] = write.fields
    assert shared.plan(obj(doc, rv="6"), ours) is None
    # Not shared (one address for every node, or spec.addresses): ours replaces the list.
    alone = GatewayStatusPlanner(OURS, clock=lambda: T0).plan(obj(doc, rv="7"), ours)
    assert alone is not None and alone.fields["addresses"] == ours["addresses"]


def test_status_paths():
    assert status_path(ObjectKey("GatewayClass", "", "netplane")) == (
        f"/apis/{GROUP}/v1/gatewayclasses/netplane/status"
    )
    assert status_path(ObjectKey("Gateway", "infra", "gw")) == (
        f"/apis/{GROUP}/v1/namespaces/infra/gateways/gw/status"
    )
    assert status_path(ObjectKey("GRPCRoute", "shop", "rpc")) == (
        f"/apis/{GROUP}/v1/namespaces/shop/grpcroutes/rpc/status"
    )


# -- the writer against the fake API server ------------------------------------------


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


def stored(fake: FakeKube, kind: str, name: str, ns: str = "") -> dict[str, Any]:
    return (fake.store[kind].get((ns, name)) or {}).get("status") or {}


def patches(fake: FakeKube, plural: str = "", name: str = "") -> list[dict[str, Any]]:
    return [
        json.loads(r.body)
        for r in fake.requests
        if r.method == "PATCH"
        and r.status == 200
        and r.path.endswith("/status")
        and (not plural or f"/{plural}/" in r.path)
        and (not name or r.path.endswith(f"/{name}/status"))
    ]


def by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Rig:
    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake
        self.clock = Clock()
        source = KubeSource(fake.cluster_config(), resources=RESOURCES)
        self.dp = Dataplane(
            build({}, {"mode": "local", "admin": None}), sources=[source], serve=False
        )
        self.writer = GatewayStatusWriter(
            self.dp,
            KubeClient(fake.cluster_config()),
            controller=OURS,
            default_addresses=("192.0.2.10",),
            backoff=Backoff(initial=0.02, maximum=0.1),
            clock=self.clock,
        )

    async def __aenter__(self) -> Rig:
        await self.dp.start()
        await self.writer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.writer.close()
        await self.dp.stop()

    async def settle(self, plans: int) -> None:
        """Wait for the writer to have planned ``plans`` times and sent what that took."""
        await until(lambda: self.writer.plans >= plans)
        await asyncio.sleep(0.3)

    def echoed(self, kind: str, name: str, ns: str) -> bool:
        """The state holds the version the fake server has (our writes have come back)."""
        got = self.dp.state.get(ObjectKey(kind, ns, name))
        want = self.fake.store[kind][(ns, name)]["metadata"]["resourceVersion"]
        return got is not None and got.meta.resource_version == want


async def test_writer_sets_class_gateway_and_route_status_and_then_writes_nothing_more():
    async with FakeKube() as fake:
        fake.apply(gateway_class())
        fake.apply(gateway_class("other", THEIRS))
        fake.apply(gateway())
        fake.apply(gateway("theirs", cls="other"))
        fake.apply(service())
        fake.apply(http_route(status={"parents": [theirs_entry()]}))
        async with Rig(fake) as rig:
            when = rfc3339(T0)
            await until(lambda: bool(stored(fake, "HTTPRoute", "web", "shop")))
            await until(lambda: bool(stored(fake, "Gateway", "gw", "infra")))

            # GatewayClass: Accepted, with a transition time.
            await until(lambda: bool(stored(fake, "GatewayClass", "netplane")))
            gc = by_type(stored(fake, "GatewayClass", "netplane")["conditions"])
            assert gc["Accepted"]["status"] == "True"
            assert gc["Accepted"]["lastTransitionTime"] == when
            assert stored(fake, "GatewayClass", "other") == {}  # not ours

            # Gateway: conditions, listeners with attachedRoutes, the address.
            gw = stored(fake, "Gateway", "gw", "infra")
            assert by_type(gw["conditions"])["Programmed"]["status"] == "True"
            assert gw["addresses"] == [{"type": "IPAddress", "value": "192.0.2.10"}]
            (listener,) = gw["listeners"]
            assert listener["name"] == "http" and listener["attachedRoutes"] == 1
            assert by_type(listener["conditions"])["Accepted"]["lastTransitionTime"] == when
            assert stored(fake, "Gateway", "theirs", "infra") == {}

            # HTTPRoute: the other controller's entry stays, ours is added.
            parents = stored(fake, "HTTPRoute", "web", "shop")["parents"]
            assert parents[0] == theirs_entry()
            (mine,) = [p for p in parents if p["controllerName"] == OURS]
            assert mine["parentRef"]["name"] == "gw"
            conds = by_type(mine["conditions"])
            assert conds["Accepted"]["status"] == "True"
            assert conds["Accepted"]["observedGeneration"] == 3
            assert conds["ResolvedRefs"]["status"] == "True"

            # Every write carried the resourceVersion it was planned from.
            sent = patches(fake)
            assert len(sent) == 3
            assert all(p["metadata"]["resourceVersion"] for p in sent)

            # A change that alters nothing we report: recomputed, nothing written.
            await until(lambda: rig.echoed("HTTPRoute", "web", "shop"))
            plans = rig.writer.plans
            fake.apply({"kind": "Namespace", "metadata": {"name": "unrelated"}})
            await rig.settle(plans + 1)
            assert len(patches(fake)) == 3
            assert rig.writer.failures == 0

            # Later the backend goes: ResolvedRefs turns False with a new time;
            # Accepted holds and keeps its time.
            rig.clock.now = T0 + timedelta(minutes=5)
            fake.delete("Service", "shop", "web")
            later = rfc3339(rig.clock.now)

            def route_resolved() -> dict[str, Any]:
                parents = stored(fake, "HTTPRoute", "web", "shop")["parents"]
                mine = next(p for p in parents if p["controllerName"] == OURS)
                return by_type(mine["conditions"])

            await until(lambda: route_resolved()["ResolvedRefs"]["status"] == "False")
            conds = route_resolved()
            assert conds["ResolvedRefs"]["reason"] == "BackendNotFound"
            assert conds["ResolvedRefs"]["lastTransitionTime"] == later
            assert conds["Accepted"]["lastTransitionTime"] == when
            assert stored(fake, "HTTPRoute", "web", "shop")["parents"][0] == theirs_entry()
            await asyncio.sleep(0.2)
            assert len(patches(fake, "httproutes", "web")) == 2
            assert len(patches(fake, "gateways", "gw")) == 1  # nothing changed there

            # The route leaves our Gateway: our entry goes, theirs stays, and the
            # listener counts no route any more (its conditions keep their times).
            await until(lambda: rig.echoed("HTTPRoute", "web", "shop"))
            now_doc = copy.deepcopy(fake.store["HTTPRoute"][("shop", "web")])
            now_doc["spec"]["parentRefs"] = [{"name": "theirs", "namespace": "infra"}]
            fake.apply(now_doc)
            await until(
                lambda: stored(fake, "HTTPRoute", "web", "shop")["parents"] == [theirs_entry()]
            )
            await until(
                lambda: (
                    stored(fake, "Gateway", "gw", "infra")["listeners"][0]["attachedRoutes"] == 0
                )
            )
            listener = stored(fake, "Gateway", "gw", "infra")["listeners"][0]
            assert by_type(listener["conditions"])["Accepted"]["lastTransitionTime"] == when


async def test_a_conflict_is_read_again_and_planned_afresh():
    async with FakeKube() as fake:
        fake.apply(gateway_class())
        fake.apply(gateway())
        fake.apply(http_route("api", parents=("gw",), host="api.shop.test", backend="api"))
        async with Rig(fake) as rig:
            await until(lambda: bool(stored(fake, "HTTPRoute", "api", "shop")))
            await until(lambda: rig.echoed("HTTPRoute", "api", "shop"))
            (mine,) = stored(fake, "HTTPRoute", "api", "shop")["parents"]
            assert by_type(mine["conditions"])["ResolvedRefs"]["reason"] == "BackendNotFound"

            # Our view of the route falls behind while another controller adds its entry...
            for w in fake._watchers:
                if w.kind == "HTTPRoute":
                    w.frozen = True
            doc = copy.deepcopy(fake.store["HTTPRoute"][("shop", "api")])
            doc["status"]["parents"].insert(0, theirs_entry())
            fake.apply(doc)
            # ...then the backend appears: our write from the old version meets a 409.
            fake.apply(service("api"))

            def parents() -> list[dict[str, Any]]:
                return stored(fake, "HTTPRoute", "api", "shop")["parents"]

            def resolved() -> str:
                mine = [p for p in parents() if p["controllerName"] == OURS]
                return by_type(mine[0]["conditions"])["ResolvedRefs"]["status"]

            await until(lambda: resolved() == "True")
            assert parents()[0] == theirs_entry() and len(parents()) == 2
            conflicts = [r for r in fake.requests if r.method == "PATCH" and r.status == 409]
            rereads = [
                r
                for r in fake.requests
                if r.method == "GET" and r.path.endswith("/namespaces/shop/httproutes/api")
            ]
            assert len(conflicts) == 1 and len(rereads) == 1
            assert rig.writer.failures == 0


async def test_server_errors_are_retried_with_backoff():
    async with FakeKube() as fake:
        fake.apply(gateway_class())
        fake.patch_failures = [500, 503]
        async with Rig(fake) as rig:
            await until(lambda: bool(stored(fake, "GatewayClass", "netplane")))
            await until(lambda: rig.writer.writes == 1)
            assert rig.writer.failures == 2
            assert rig.writer.debug_state()["pending"] == []
            exported = {
                (s.name, tuple(s.labels.values())): s.value
                for family in rig.writer.metrics()
                for s in family.samples
            }
            assert exported[("netplane_gateway_status_writes_total", ("error",))] == 2


# -- the daemon: `netplane run --kubeconfig` runs the writer --------------------------


@pytest.mark.e2e
async def test_the_daemon_writes_gateway_status(tmp_path, start_netplane):
    port = free_port()
    async with FakeKube() as fake:
        fake.apply(gateway_class())
        doc = gateway()
        doc["spec"]["listeners"][0]["port"] = port
        fake.apply(doc)
        fake.apply(service())
        fake.apply(http_route(parents=("gw",)))
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", {"token": "test-token"})
        proc = start_netplane(
            "run", "--kubeconfig", str(kubeconfig), "--mode", "local", "--admin", "off",
            "--proxy", "off", "--dns", "off", "--ingress-https", "off",
            "--ingress-http", "127.0.0.1:0", "--gateway-address", "127.0.0.1",
        )  # fmt: skip
        try:
            await until(lambda: bool(stored(fake, "HTTPRoute", "web", "shop")), timeout=30)
            await until(lambda: bool(stored(fake, "Gateway", "gw", "infra")), timeout=30)
            gw = stored(fake, "Gateway", "gw", "infra")
            assert by_type(gw["conditions"])["Programmed"]["status"] == "True"
            assert gw["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
            assert gw["listeners"][0]["attachedRoutes"] == 1
            (mine,) = stored(fake, "HTTPRoute", "web", "shop")["parents"]
            assert by_type(mine["conditions"])["Accepted"]["status"] == "True"
        finally:
            code = await proc.astop(15)
        assert code == 0, proc.tail()
        assert "Gateway infra/gw: status set: " in proc.stdout + proc.log


async def test_the_writer_runs_with_the_api_source_and_the_ingress_only(tmp_path):
    from netplane.sources.kube.gateway_status import gateway_status_for

    async with FakeKube() as fake:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", {"token": "test-token"})
        base = {"mode": "local", "admin": None, "kubeconfig": str(kubeconfig)}
        on = build({}, {**base, "gateway_addresses": ("127.0.0.9",)})
        dp = Dataplane(on, sources=[], serve=False)
        assert gateway_status_for(on, dp, []) is None  # no API source among them
        kube = KubeSource(fake.cluster_config())
        writer = gateway_status_for(on, dp, [kube])
        assert isinstance(writer, GatewayStatusWriter)
        assert writer.default_addresses == ("127.0.0.9",)
        assert dp.planes["gateway-status"] is writer
        await writer.client.aclose()
        off = build({}, {**base, "ingress_http": None, "ingress_https": None})
        assert gateway_status_for(off, Dataplane(off, sources=[], serve=False), [kube]) is None
