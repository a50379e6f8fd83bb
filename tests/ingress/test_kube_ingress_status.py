"""Ingress status: what each Ingress should carry (sans-IO planner), then the writer
against the fake API server (merge patches, echo, 409 re-read, 404, retries)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from netplane.ingress.classes import ClassSelector

from netplane.config import build
from netplane.dataplane import Dataplane
from netplane.model import Ingress, IngressClass, Node, parse_object
from netplane.sources.kube import Backoff, KubeClient, KubeSource
from netplane.sources.kube.ingress_status import (
    LoadBalancer,
    StatusPlanner,
    node_addresses,
    published,
)
from netplane.sources.kube.status_writer import IngressStatusWriter, status_path
from netplane.testing.fakekube import FakeKube, merge_patch

CONTROLLER = "netplane.io/ingress"


def ingress_doc(
    name: str, cls: str = "netplane", status: list[dict[str, str]] | None = None, rv: str = "7"
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv},
        "spec": {
            "ingressClassName": cls,
            "rules": [
                {
                    "host": f"{name}.shop.test",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "web", "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ],
        },
    }
    if status is not None:
        doc["status"] = {"loadBalancer": {"ingress": status}}
    return doc


def ingress(*args: Any, **kw: Any) -> Ingress:
    obj = parse_object(ingress_doc(*args, **kw))
    assert isinstance(obj, Ingress)
    return obj


def class_doc(name: str = "netplane", controller: str = CONTROLLER) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": controller},
    }


def selector() -> ClassSelector:
    cls = parse_object(class_doc())
    other = parse_object(class_doc("nginx", "k8s.io/ingress-nginx"))
    assert isinstance(cls, IngressClass) and isinstance(other, IngressClass)
    return ClassSelector.build([cls, other], ingress_class="netplane", controller=CONTROLLER)


def node(addresses: list[tuple[str, str]]) -> Node:
    obj = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
        }
    )
    assert isinstance(obj, Node)
    return obj


ADDR = LoadBalancer.of(["198.18.0.1"])


# -- the sans-IO decision ------------------------------------------------------


def test_addresses_split_into_ips_and_hostnames_sorted():
    lb = LoadBalancer.of(["lb.Example.com", "198.18.0.2", "198.18.0.1", "fd00::1"])
    assert lb == LoadBalancer(("198.18.0.1", "198.18.0.2", "fd00::1"), ("lb.example.com",))
    assert lb.merge_patch("12") == {
        "status": {
            "loadBalancer": {
                "ingress": [
                    {"ip": "198.18.0.1"},
                    {"ip": "198.18.0.2"},
                    {"ip": "fd00::1"},
                    {"hostname": "lb.example.com"},
                ]
            }
        },
        "metadata": {"resourceVersion": "12"},
    }
    # Clearing is a null, which a merge patch reads as "remove".
    assert LoadBalancer().merge_patch() == {"status": {"loadBalancer": {"ingress": None}}}


def test_published_address_is_the_option_else_external_else_internal_node_ip():
    both = node([("InternalIP", "10.0.0.5"), ("ExternalIP", "198.18.0.9"), ("Hostname", "a")])
    internal = node([("InternalIP", "10.0.0.5"), ("Hostname", "a")])
    assert node_addresses(both) == ("198.18.0.9",)
    assert node_addresses(internal) == ("10.0.0.5",)
    assert node_addresses(None) == ()
    assert published(["lb.example.com"], both) == LoadBalancer((), ("lb.example.com",))
    assert published([], internal) == LoadBalancer(("10.0.0.5",))
    assert not published([], None)


def test_our_ingress_gets_the_address_and_the_echo_plans_nothing():
    p = StatusPlanner()
    update = p.plan(ingress("a"), selector(), ADDR)
    assert update is not None and update.status == ADDR and update.resource_version == "7"
    p.written(update)
    # The state still shows rv 7 until the watch echoes: no second write.
    assert p.plan(ingress("a"), selector(), ADDR) is None
    # The echo: the new version carries our status.
    assert p.plan(ingress("a", status=[{"ip": "198.18.0.1"}], rv="8"), selector(), ADDR) is None


def test_a_status_someone_else_wrote_over_ours_is_written_again():
    p = StatusPlanner()
    update = p.plan(ingress("a"), selector(), ADDR)
    assert update is not None
    p.written(update)
    theirs = ingress("a", status=[{"ip": "203.0.113.1"}], rv="9")
    again = p.plan(theirs, selector(), ADDR)
    assert again is not None and again.status == ADDR and again.resource_version == "9"


def test_order_of_entries_does_not_count_as_a_difference():
    both = LoadBalancer.of(["198.18.0.2", "198.18.0.1"])
    current = ingress("a", status=[{"ip": "198.18.0.2"}, {"ip": "198.18.0.1"}])
    assert StatusPlanner().plan(current, selector(), both) is None


def test_ingresses_of_other_classes_are_never_touched():
    p = StatusPlanner()
    theirs = ingress("b", cls="nginx", status=[{"ip": "203.0.113.1"}])
    unclassed = ingress("c", cls="")
    assert p.plan_all([theirs, unclassed], selector(), ADDR) == []
    assert p.claimed == set()


def test_an_ingress_whose_class_moves_away_is_cleared_once():
    p = StatusPlanner()
    ours = ingress("a", status=[{"ip": "198.18.0.1"}])
    assert p.plan(ours, selector(), ADDR) is None  # already right
    moved = ingress("a", cls="nginx", status=[{"ip": "198.18.0.1"}], rv="10")
    clear = p.plan(moved, selector(), ADDR)
    assert clear is not None and clear.status == LoadBalancer()
    p.written(clear)
    assert ours.key not in p.claimed
    # The other controller then writes its own address: not ours to clear again.
    theirs = ingress("a", cls="nginx", status=[{"ip": "203.0.113.1"}], rv="12")
    assert p.plan(theirs, selector(), ADDR) is None


def test_nothing_is_written_while_there_is_no_address_but_the_ingress_is_remembered():
    p = StatusPlanner()
    assert p.plan(ingress("a"), selector(), LoadBalancer()) is None
    assert ingress("a").key in p.claimed
    update = p.plan(ingress("a"), selector(), ADDR)
    assert update is not None and update.status == ADDR


def test_a_changed_address_rewrites_every_ingress_of_ours():
    p = StatusPlanner()
    current = [ingress("a", status=[{"ip": "198.18.0.1"}]), ingress("b", cls="nginx")]
    assert p.plan_all(current, selector(), ADDR) == []
    moved = p.plan_all(current, selector(), LoadBalancer.of(["lb.example.com"]))
    assert [(u.key.name, u.status.hostnames) for u in moved] == [("a", ("lb.example.com",))]


def with_status(ing: Ingress, lb: LoadBalancer, rv: str) -> Ingress:
    """``ing`` as the watch would show it after ``lb`` was written."""
    entries = [{"ip": ip} for ip in lb.ips] + [{"hostname": h} for h in lb.hostnames]
    return ingress(ing.key.name, ing.class_name, status=entries, rv=rv)


def test_nodes_sharing_a_status_each_add_their_own_address_and_do_not_fight():
    node_a, node_b = StatusPlanner(shared=True), StatusPlanner(shared=True)
    addr_a, addr_b = LoadBalancer.of(["198.18.0.1"]), LoadBalancer.of(["198.18.0.2"])
    ing = ingress("a", status=[{"ip": "203.0.113.9"}])  # someone else's entry stays
    first = node_a.plan(ing, selector(), addr_a)
    assert first is not None and first.status == LoadBalancer.of(["203.0.113.9", "198.18.0.1"])
    node_a.written(first)
    ing = with_status(ing, first.status, "8")
    second = node_b.plan(ing, selector(), addr_b)
    assert second is not None
    assert second.status == LoadBalancer.of(["203.0.113.9", "198.18.0.1", "198.18.0.2"])
    node_b.written(second)
    ing = with_status(ing, second.status, "9")
    # Both see the list with both in it: neither writes again.
    assert node_a.plan(ing, selector(), addr_a) is None
    assert node_b.plan(ing, selector(), addr_b) is None

    # Node A's IP changes: its old address goes, the others stay.
    moved = node_a.plan(ing, selector(), LoadBalancer.of(["198.18.0.11"]))
    assert moved is not None
    assert moved.status == LoadBalancer.of(["203.0.113.9", "198.18.0.11", "198.18.0.2"])
    node_a.written(moved)
    ing = with_status(ing, moved.status, "10")

    # Node B leaves (shutdown): only its own entry goes, and it forgets the Ingress.
    (leave,) = node_b.plan_leave([ing])
    assert leave.release and leave.status == LoadBalancer.of(["203.0.113.9", "198.18.0.11"])
    node_b.written(leave)
    assert node_b.claimed == set()

    # The class moves away: node A takes out only its own entry.
    away = ingress("a", cls="nginx", status=[{"ip": "203.0.113.9"}, {"ip": "198.18.0.11"}])
    release = node_a.plan(away, selector(), LoadBalancer.of(["198.18.0.11"]))
    assert release is not None and release.status == LoadBalancer.of(["203.0.113.9"])


def test_a_published_address_replaces_the_status_and_does_not_leave_at_shutdown():
    p = StatusPlanner(shared=False)
    ing = ingress("a", status=[{"ip": "203.0.113.9"}])
    update = p.plan(ing, selector(), ADDR)
    assert update is not None and update.status == ADDR
    p.written(update)
    assert p.plan_leave([with_status(ing, ADDR, "8")]) == []


def test_merge_patch_follows_rfc_7386():
    # RFC 7386 appendix A, a few of its cases.
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b", "b": "c"}, {"a": None}) == {"b": "c"}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


# -- the fake API server's status subresource -------------------------------------


async def test_fake_api_server_patches_status_only_and_emits_modified():
    async with FakeKube() as fake:
        fake.apply(ingress_doc("a"))
        client = KubeClient(fake.cluster_config())
        try:
            rv0 = fake.rv
            patch = {"status": {"loadBalancer": {"ingress": [{"ip": "198.18.0.1"}]}}}
            patch["spec"] = {"rules": []}  # ignored by the status subresource
            out = await client.patch_json(status_path(ingress("a").key), patch)
            assert out["status"]["loadBalancer"]["ingress"] == [{"ip": "198.18.0.1"}]
            assert out["spec"]["rules"][0]["host"] == "a.shop.test"
            assert out["metadata"]["resourceVersion"] == str(rv0 + 1)
            assert fake.history[-1].type == "MODIFIED"
            # The same patch again changes nothing: no new version, no event.
            await client.patch_json(status_path(ingress("a").key), patch)
            assert fake.rv == rv0 + 1
            # A stale resourceVersion is a 409 Conflict; a missing object a 404.
            stale = LoadBalancer().merge_patch(str(rv0))
            with pytest.raises(Exception) as e:
                await client.patch_json(status_path(ingress("a").key), stale)
            assert getattr(e.value, "status", None) == 409
            assert "PATCH /apis/networking.k8s.io/v1/namespaces/shop/ingresses/a/status" in str(
                e.value
            )
            with pytest.raises(Exception) as e:
                await client.patch_json(status_path(ingress("zz").key), stale)
            assert getattr(e.value, "status", None) == 404
            # The right version clears it.
            await client.patch_json(
                status_path(ingress("a").key), LoadBalancer().merge_patch(str(rv0 + 1))
            )
            assert "ingress" not in fake.store["Ingress"][("shop", "a")]["status"]["loadBalancer"]
        finally:
            await client.aclose()


# -- the writer, in process, against the fake API server ----------------------------


async def until(pred, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


def stored_status(fake: FakeKube, name: str) -> list[dict[str, str]]:
    obj = fake.store["Ingress"].get(("shop", name)) or {}
    return ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


def patches(fake: FakeKube, name: str) -> list[dict[str, Any]]:
    return [
        json.loads(r.body)
        for r in fake.requests
        if r.method == "PATCH" and r.path.endswith(f"/ingresses/{name}/status")
    ]


async def test_writer_follows_classes_node_address_and_survives_errors():
    async with FakeKube() as fake:
        fake.apply(class_doc())
        fake.apply(class_doc("nginx", "k8s.io/ingress-nginx"))
        fake.apply(ingress_doc("a"))
        fake.apply(ingress_doc("b", cls="nginx", status=[{"ip": "203.0.113.1"}]))
        fake.apply(
            {
                "kind": "Node",
                "metadata": {"name": "node-a"},
                "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.5"}]},
            }
        )
        cfg = build({}, {"mode": "local", "admin": None, "node_name": "node-a"})
        source = KubeSource(
            fake.cluster_config(), resources=("IngressClass", "Ingress", "Node"),
            node_name="node-a",
        )  # fmt: skip
        dp = Dataplane(cfg, sources=[source], serve=False)
        writer = IngressStatusWriter(
            dp,
            KubeClient(fake.cluster_config()),
            ingress_class="netplane",
            controller=CONTROLLER,
            node_name="node-a",
            backoff=Backoff(initial=0.02, maximum=0.1),
        )
        await dp.start()
        await writer.start()
        try:
            await until(lambda: stored_status(fake, "a") == [{"ip": "198.18.0.5"}])
            # The echo comes back through the watch and plans nothing more.
            await until(lambda: dp.state.get(ingress("a").key).status_ips == ("198.18.0.5",))
            await asyncio.sleep(0.2)
            assert len(patches(fake, "a")) == 1
            assert patches(fake, "b") == []  # another controller's Ingress

            # The node's address changes; two server errors first: retried.
            fake.patch_failures = [500, 503]
            fake.apply(
                {
                    "kind": "Node",
                    "metadata": {"name": "node-a"},
                    "status": {"addresses": [{"type": "ExternalIP", "address": "198.18.0.6"}]},
                }
            )
            await until(lambda: stored_status(fake, "a") == [{"ip": "198.18.0.6"}])
            await until(lambda: writer.writes == 2)  # the server stores before it answers
            assert writer.failures == 2
            exported = {
                (s.name, tuple(s.labels.values())): s.value
                for family in writer.metrics()
                for s in family.samples
            }
            assert exported[("netplane_ingress_status_writes_total", ("error",))] == 2
            assert exported[("netplane_ingress_status_writes_total", ("ok",))] == 2

            # Someone edits the spec between our read and our write: a 409, re-read, written.
            fake.patch_failures = [409]
            fake.apply(ingress_doc("c"))
            await until(lambda: stored_status(fake, "c") == [{"ip": "198.18.0.6"}])

            # The class moves away: cleared; then the other controller's write is left alone.
            fake.apply(ingress_doc("a", cls="nginx", status=[{"ip": "198.18.0.6"}]))
            await until(lambda: stored_status(fake, "a") == [])
            fake.apply(ingress_doc("a", cls="nginx", status=[{"ip": "203.0.113.1"}]))
            await asyncio.sleep(0.2)
            assert stored_status(fake, "a") == [{"ip": "203.0.113.1"}]
            assert writer.debug_state()["pending"] == []
        finally:
            await writer.close()
            await dp.stop()


async def test_two_nodes_share_the_status_and_each_takes_itself_out_when_it_stops():
    async with FakeKube() as fake:
        fake.apply(class_doc())
        fake.apply(ingress_doc("a"))
        for name, ip in (("node-a", "198.18.0.21"), ("node-b", "198.18.0.22")):
            fake.apply(
                {
                    "kind": "Node",
                    "metadata": {"name": name},
                    "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
                }
            )
        planes = []
        for name in ("node-a", "node-b"):
            cfg = build({}, {"mode": "local", "admin": None, "node_name": name})
            source = KubeSource(
                fake.cluster_config(), resources=("IngressClass", "Ingress", "Node"),
                node_name=name,
            )  # fmt: skip
            dp = Dataplane(cfg, sources=[source], serve=False)
            writer = IngressStatusWriter(
                dp, KubeClient(fake.cluster_config()), ingress_class="netplane",
                controller=CONTROLLER, node_name=name,
                backoff=Backoff(initial=0.02, maximum=0.1),
            )  # fmt: skip
            planes.append((dp, writer))
        try:
            for dp, writer in planes:  # both start together: usually one meets a 409
                await dp.start()
                await writer.start()
            both = [{"ip": "198.18.0.21"}, {"ip": "198.18.0.22"}]
            await until(lambda: stored_status(fake, "a") == both)
            await asyncio.sleep(0.3)
            n = len(patches(fake, "a"))
            await asyncio.sleep(0.3)
            assert len(patches(fake, "a")) == n  # settled: no write loop between the nodes
            dp, writer = planes.pop(0)
            await writer.close()
            await dp.stop()
            assert stored_status(fake, "a") == [{"ip": "198.18.0.22"}]
            await asyncio.sleep(0.3)
            assert stored_status(fake, "a") == [{"ip": "198.18.0.22"}]  # node B keeps its own
        finally:
            for dp, writer in planes:
                await writer.close()
                await dp.stop()
