"""ClusterState: apply/delete, replays, subscriptions, indexes and Service admission."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from netplane.allocations import Allocations
from netplane.events import EventType, WatchEvent
from netplane.model import EndpointSlice, ObjectKey, Pod, Service, parse_object
from netplane.state import ClusterState

CIDR = ipaddress.ip_network("10.96.0.0/16")


def svc_raw(
    name: str = "web",
    ns: str = "default",
    rv: str = "1",
    cluster_ip: str | None = "10.96.0.10",
    ports: list[dict] | None = None,
    svc_type: str = "ClusterIP",
    labels: dict | None = None,
    **spec: Any,
) -> dict:
    s: dict[str, Any] = {"type": svc_type, "ports": ports or [{"port": 80}], **spec}
    if cluster_ip is not None:
        s["clusterIP"] = cluster_ip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels or {}},
        "spec": s,
    }


def slice_raw(
    name: str = "web-1",
    service: str | None = "web",
    addrs: tuple[str, ...] = ("10.1.0.1",),
    rv: str = "1",
    ns: str = "default",
) -> dict:
    md: dict[str, Any] = {"name": name, "namespace": ns, "resourceVersion": rv}
    if service is not None:
        md["labels"] = {"kubernetes.io/service-name": service}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": md,
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a]} for a in addrs],
    }


def upsert(raw: dict) -> WatchEvent:
    obj = parse_object(raw)
    assert obj is not None
    return WatchEvent.upsert(obj)


def delete(kind: str, name: str, ns: str = "default") -> WatchEvent:
    return WatchEvent.delete(ObjectKey(kind, ns, name))


def new_state(**kw: Any) -> ClusterState:
    kw.setdefault("service_cidrs", [CIDR])
    return ClusterState(Allocations(**kw))


# -- apply and delete ---------------------------------------------------------------


def test_apply_get_delete() -> None:
    st = new_state()
    r = st.apply(upsert(svc_raw()))
    assert r.changed and not r.stale and r.error is None
    key = ObjectKey("Service", "default", "web")
    svc = st.get(key)
    assert isinstance(svc, Service)
    assert st.service("default", "web") is svc
    assert list(st.objects("Service")) == [svc]
    assert len(st) == 1
    assert list(st) == [svc]
    assert st.counts() == {"Service": 1}
    r = st.apply(WatchEvent.delete(key))
    assert r.changed
    assert st.get(key) is None
    assert st.counts() == {}
    assert list(st.objects("Service")) == []
    # Deleting what is not there changes nothing.
    assert not st.apply(WatchEvent.delete(key)).changed


def test_counts_by_kind() -> None:
    st = new_state()
    st.apply(upsert(svc_raw()))
    st.apply(upsert(slice_raw("a")))
    st.apply(upsert(slice_raw("b")))
    assert st.counts() == {"EndpointSlice": 2, "Service": 1}


def test_modified_replaces() -> None:
    st = new_state()
    st.apply(upsert(slice_raw(addrs=("10.1.0.1",))))
    r = st.apply(upsert(slice_raw(addrs=("10.1.0.2",), rv="2")))
    assert r.changed
    sl = st.get(ObjectKey("EndpointSlice", "default", "web-1"))
    assert isinstance(sl, EndpointSlice)
    assert sl.endpoints[0].addresses == ("10.1.0.2",)


def test_stale_resource_version_ignored() -> None:
    st = new_state()
    sub = st.subscribe()
    st.apply(upsert(slice_raw(addrs=("10.1.0.1",), rv="10")))
    sub.take()
    r = st.apply(upsert(slice_raw(addrs=("10.1.0.2",), rv="9")))
    assert r.stale and not r.changed
    sl = st.get(ObjectKey("EndpointSlice", "default", "web-1"))
    assert isinstance(sl, EndpointSlice)
    assert sl.endpoints[0].addresses == ("10.1.0.1",)
    assert sub.take() == frozenset()
    # An opaque (non-numeric) resourceVersion is never called stale.
    r = st.apply(upsert(slice_raw(addrs=("10.1.0.3",), rv="abc")))
    assert r.changed


def test_noop_event_not_changed_and_not_notified() -> None:
    st = new_state()
    sub = st.subscribe()
    st.apply(upsert(slice_raw(rv="1")))
    assert sub.take() == {ObjectKey("EndpointSlice", "default", "web-1")}
    # The same object again: a replayed event.
    assert not st.apply(upsert(slice_raw(rv="1"))).changed
    # The same content under a newer resourceVersion: a resync.
    r = st.apply(upsert(slice_raw(rv="2")))
    assert not r.changed and not r.stale
    assert sub.take() == frozenset()
    # The newer resourceVersion is remembered, so a replay of rv 1 is stale.
    assert st.apply(upsert(slice_raw(addrs=("10.9.9.9",), rv="1"))).stale


def test_noop_service_with_allocated_ip() -> None:
    st = new_state()
    sub = st.subscribe()
    st.apply(upsert(svc_raw(cluster_ip=None)))
    sub.take()
    assert not st.apply(upsert(svc_raw(cluster_ip=None, rv="2"))).changed
    assert sub.take() == frozenset()


# -- subscriptions --------------------------------------------------------------------


def test_subscription_coalesces() -> None:
    st = new_state()
    a, b = st.subscribe(), st.subscribe()
    st.apply(upsert(slice_raw("s1", rv="1")))
    st.apply(upsert(slice_raw("s1", addrs=("10.1.0.9",), rv="2")))
    st.apply(upsert(slice_raw("s2")))
    keys = {
        ObjectKey("EndpointSlice", "default", "s1"),
        ObjectKey("EndpointSlice", "default", "s2"),
    }
    assert a.take() == keys
    assert a.take() == frozenset()
    st.apply(delete("EndpointSlice", "s1"))
    assert a.take() == {ObjectKey("EndpointSlice", "default", "s1")}
    assert b.take() == keys  # b never took: everything, once
    b.close()
    st.apply(upsert(slice_raw("s3")))
    assert b.take() == frozenset()
    assert a.take() == {ObjectKey("EndpointSlice", "default", "s3")}


async def test_subscription_wait() -> None:
    st = new_state()
    sub = st.subscribe()
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    st.apply(upsert(slice_raw("s1")))
    st.apply(upsert(slice_raw("s2")))
    got = await asyncio.wait_for(waiter, 1)
    assert got == {ObjectKey("EndpointSlice", "default", n) for n in ("s1", "s2")}
    # Pending changes are returned at once.
    st.apply(upsert(slice_raw("s3")))
    assert await asyncio.wait_for(sub.wait(), 1) == {ObjectKey("EndpointSlice", "default", "s3")}
    # A no-op change does not wake a waiter.
    waiter = asyncio.create_task(sub.wait())
    st.apply(upsert(slice_raw("s3")))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    sub.close()
    assert await asyncio.wait_for(waiter, 1) == frozenset()


# -- indexes ---------------------------------------------------------------------------


def endpoints_raw(name: str = "web", ns: str = "default") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns},
        "subsets": [
            {
                "addresses": [{"ip": "10.2.0.1"}, {"ip": "fd00::1"}],
                "notReadyAddresses": [{"ip": "10.2.0.2"}],
                "ports": [{"port": 8080}],
            }
        ],
    }


def test_slices_for_service() -> None:
    st = new_state()
    st.apply(upsert(slice_raw("web-b")))
    st.apply(upsert(slice_raw("web-a")))
    st.apply(upsert(slice_raw("other-a", service="other")))
    st.apply(upsert(slice_raw("web-x", ns="prod")))
    st.apply(upsert(slice_raw("nolabel", service=None)))
    names = [s.key.name for s in st.slices_for_service("default", "web")]
    assert names == ["web-a", "web-b"]
    assert [s.key.name for s in st.slices_for_service("default", "other")] == ["other-a"]
    assert [s.key.name for s in st.slices_for_service("prod", "web")] == ["web-x"]
    assert st.slices_for_service("default", "none") == []
    # Relabelled to another service: moves index.
    raw = slice_raw("web-a", service="other", rv="2")
    st.apply(upsert(raw))
    assert [s.key.name for s in st.slices_for_service("default", "web")] == ["web-b"]
    assert [s.key.name for s in st.slices_for_service("default", "other")] == [
        "other-a",
        "web-a",
    ]
    st.apply(delete("EndpointSlice", "web-b"))
    assert st.slices_for_service("default", "web") == []


def test_slices_for_service_includes_mirrored_endpoints() -> None:
    st = new_state()
    st.apply(upsert(slice_raw("web-a")))
    st.apply(upsert(endpoints_raw()))
    slices = st.slices_for_service("default", "web")
    assert [s.key.name for s in slices] == ["web-a", "web-mirror-0-ipv4", "web-mirror-0-ipv6"]
    v4 = slices[1]
    assert [(e.addresses[0], e.ready) for e in v4.endpoints] == [
        ("10.2.0.1", True),
        ("10.2.0.2", False),
    ]
    st.apply(delete("Endpoints", "web"))
    assert [s.key.name for s in st.slices_for_service("default", "web")] == ["web-a"]


def test_secret_lookup() -> None:
    import base64

    raw = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tls", "namespace": "default"},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(b"-----BEGIN CERTIFICATE-----").decode(),
            "tls.key": base64.b64encode(b"-----BEGIN PRIVATE KEY-----").decode(),
        },
    }
    st = new_state()
    st.apply(upsert(raw))
    s = st.secret("default", "tls")
    assert s is not None and s.cert_pem.startswith(b"-----BEGIN")
    assert st.secret("other", "tls") is None
    st.apply(delete("Secret", "tls"))
    assert st.secret("default", "tls") is None


def pod_raw(name: str, ns: str = "default", ip: str = "10.1.0.1") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "status": {"podIP": ip},
    }


def test_pods_in() -> None:
    st = new_state()
    st.apply(upsert(pod_raw("a")))
    st.apply(upsert(pod_raw("b")))
    st.apply(upsert(pod_raw("c", ns="prod")))
    assert sorted(p.key.name for p in st.pods_in("default")) == ["a", "b"]
    assert all(isinstance(p, Pod) for p in st.pods_in("default"))
    st.apply(delete("Pod", "a"))
    assert [p.key.name for p in st.pods_in("default")] == ["b"]
    assert st.pods_in("nowhere") == []


# -- Service admission ------------------------------------------------------------------


def test_duplicate_cluster_ip_rejected_first_keeps_serving() -> None:
    st = new_state()
    sub = st.subscribe()
    st.apply(upsert(svc_raw("first", cluster_ip="10.96.0.20")))
    sub.take()
    r = st.apply(upsert(svc_raw("second", cluster_ip="10.96.0.20")))
    assert not r.changed
    assert r.error is not None
    msg = "Service default/second: spec.clusterIP: 10.96.0.20 is already allocated to Service default/first"
    assert str(r.error) == msg
    assert st.service("default", "second") is None
    first = st.service("default", "first")
    assert first is not None and first.cluster_ips == ("10.96.0.20",)
    assert {k: str(e) for k, e in st.rejected().items()} == {
        ObjectKey("Service", "default", "second"): msg
    }
    assert sub.take() == frozenset()
    # Re-applying the first is fine; fixing the second clears its rejection.
    assert st.apply(upsert(svc_raw("first", cluster_ip="10.96.0.20", rv="2"))).error is None
    assert st.apply(upsert(svc_raw("second", cluster_ip="10.96.0.21", rv="2"))).changed
    assert st.rejected() == {}


def test_rejected_service_takes_over_when_holder_goes() -> None:
    st = new_state()
    st.apply(upsert(svc_raw("first", cluster_ip="10.96.0.20")))
    st.apply(upsert(svc_raw("second", cluster_ip="10.96.0.20")))
    assert ObjectKey("Service", "default", "second") in st.rejected()
    sub = st.subscribe()
    st.apply(delete("Service", "first"))
    second = st.service("default", "second")
    assert second is not None and second.cluster_ips == ("10.96.0.20",)
    assert st.rejected() == {}
    assert sub.take() == {
        ObjectKey("Service", "default", "first"),
        ObjectKey("Service", "default", "second"),
    }


def test_rejected_update_keeps_previous_version() -> None:
    st = new_state()
    st.apply(upsert(svc_raw("a", cluster_ip="10.96.0.20")))
    st.apply(upsert(svc_raw("b", cluster_ip="10.96.0.21")))
    r = st.apply(upsert(svc_raw("b", cluster_ip="10.96.0.20", rv="2")))
    assert r.error is not None
    b = st.service("default", "b")
    assert b is not None and b.cluster_ips == ("10.96.0.21",)
    # Its address stays its own: nobody else may take it.
    r = st.apply(upsert(svc_raw("c", cluster_ip="10.96.0.21")))
    assert r.error is not None
    # Deleting the rejected key clears the rejection and removes the old version.
    st.apply(delete("Service", "b"))
    assert ObjectKey("Service", "default", "b") not in st.rejected()
    assert st.service("default", "c") is not None  # retried and admitted


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        ("10.97.0.1", "Service default/web: spec.clusterIP: 10.97.0.1 is not in the service CIDR (10.96.0.0/16)"),
        ("fd00::1", "Service default/web: spec.clusterIP: fd00::1 is not in the service CIDR (10.96.0.0/16)"),
    ],
)  # fmt: skip
def test_cluster_ip_outside_cidr(ip: str, message: str) -> None:
    st = new_state()
    r = st.apply(upsert(svc_raw(cluster_ip=ip)))
    assert str(r.error) == message
    assert st.service("default", "web") is None


def test_dual_stack_cidrs() -> None:
    st = new_state(service_cidrs=[CIDR, ipaddress.ip_network("fd00:96::/112")])
    r = st.apply(upsert(svc_raw(cluster_ip=None, clusterIPs=["10.96.1.1", "fd00:96::1"])))
    assert r.changed
    r = st.apply(upsert(svc_raw("b", cluster_ip=None, clusterIPs=["10.96.1.2", "fd00:97::1"])))
    assert (
        str(r.error)
        == "Service default/b: spec.clusterIPs[1]: fd00:97::1 is not in the service CIDR (10.96.0.0/16, fd00:96::/112)"
    )


def test_no_cidr_means_no_check() -> None:
    st = ClusterState(Allocations())
    assert st.apply(upsert(svc_raw(cluster_ip="192.0.2.1"))).changed
    r = st.apply(upsert(svc_raw("b", cluster_ip=None)))
    assert str(r.error) == (
        "Service default/b: spec.clusterIP: empty, and no service CIDR to allocate from"
    )


def np(port: int, node_port: int | None = None, name: str = "", proto: str = "TCP") -> dict:
    d: dict[str, Any] = {"port": port, "protocol": proto}
    if name:
        d["name"] = name
    if node_port is not None:
        d["nodePort"] = node_port
    return d


@pytest.mark.parametrize(
    ("svcs", "message"),
    [
        ([("a", [np(80, 29999)])], "Service default/a: spec.ports[0].nodePort: 29999 is outside the node port range 30000-32767"),
        ([("a", [np(80, 32768)])], "Service default/a: spec.ports[0].nodePort: 32768 is outside the node port range 30000-32767"),
        ([("a", [np(80, 30080)]), ("b", [np(81, 30080)])], "Service default/b: spec.ports[0].nodePort: port 30080/TCP is already allocated to Service default/a"),
        ([("a", [np(80, 30080, "x"), np(81, 30080, "y")])], "Service default/a: spec.ports[1].nodePort: port 30080/TCP is already used by spec.ports[0].nodePort"),
    ],
)  # fmt: skip
def test_node_port_rules(svcs: list, message: str) -> None:
    st = new_state()
    errors = []
    for name, ports in svcs:
        r = st.apply(upsert(svc_raw(name, cluster_ip=None, ports=ports, svc_type="NodePort")))
        if r.error:
            errors.append(str(r.error))
    assert errors == [message]


def test_node_port_same_number_other_protocol() -> None:
    st = new_state()
    ports = [np(53, 30053, "dns-tcp"), np(53, 30053, "dns-udp", "UDP")]
    r = st.apply(upsert(svc_raw("dns", cluster_ip=None, ports=ports, svc_type="NodePort")))
    assert r.changed


def test_node_port_released_on_delete() -> None:
    st = new_state()
    st.apply(upsert(svc_raw("a", cluster_ip=None, ports=[np(80, 30080)], svc_type="NodePort")))
    r = st.apply(upsert(svc_raw("b", cluster_ip=None, ports=[np(80, 30080)], svc_type="NodePort")))
    assert r.error is not None
    st.apply(delete("Service", "a"))
    b = st.service("default", "b")
    assert b is not None and b.ports[0].node_port == 30080


def test_custom_node_port_range() -> None:
    st = new_state(node_port_range=(20000, 20001))
    r = st.apply(upsert(svc_raw("a", cluster_ip=None, ports=[np(80, 30080)], svc_type="NodePort")))
    assert "outside the node port range 20000-20001" in str(r.error)


def _allocate(names: list[str], **kw: Any) -> dict[str, tuple]:
    st = new_state(**kw)
    out = {}
    for n in names:
        ports = [np(80, name="http"), np(443, name="https")]
        r = st.apply(upsert(svc_raw(n, cluster_ip=None, ports=ports, svc_type="NodePort")))
        assert r.error is None, r.error
        s = st.service("default", n)
        assert s is not None
        out[n] = (s.cluster_ips, tuple(p.node_port for p in s.ports))
    return out


def test_deterministic_allocation() -> None:
    names = [f"svc-{i}" for i in range(200)]
    first = _allocate(names)
    assert first == _allocate(names)  # stable across two fresh states
    ips = [v[0] for v in first.values()]
    assert all(len(ip) == 1 for ip in ips)
    assert len({ip[0] for ip in ips}) == len(ips)  # no collisions
    assert all(ipaddress.ip_address(ip[0]) in CIDR for ip in ips)
    assert all(ip[0] not in ("10.96.0.0", "10.96.0.1") for ip in ips)
    node_ports = [p for v in first.values() for p in v[1]]
    assert len(set(node_ports)) == len(node_ports)
    assert all(30000 <= p <= 32767 for p in node_ports)


def test_allocation_in_small_cidr_fills_it_without_collisions() -> None:
    small = ipaddress.ip_network("10.96.0.0/28")  # 13 allocatable addresses
    names = [f"s{i}" for i in range(13)]
    got = _allocate(names, service_cidrs=[small])
    ips = {v[0][0] for v in got.values()}
    assert len(ips) == 13
    assert all(ipaddress.ip_address(ip) in small for ip in ips)
    st = new_state(service_cidrs=[small])
    for n in names:
        st.apply(upsert(svc_raw(n, cluster_ip=None)))
    r = st.apply(upsert(svc_raw("one-too-many", cluster_ip=None)))
    assert str(r.error) == (
        "Service default/one-too-many: spec.clusterIP: no free address in 10.96.0.0/28"
    )


def test_allocation_avoids_explicit_addresses() -> None:
    st = new_state(service_cidrs=[ipaddress.ip_network("10.96.0.0/29")])
    # Take every address but one explicitly, then allocate.
    for i, last in enumerate(range(2, 6)):
        st.apply(upsert(svc_raw(f"x{i}", cluster_ip=f"10.96.0.{last}")))
    st.apply(upsert(svc_raw("auto", cluster_ip=None)))
    auto = st.service("default", "auto")
    assert auto is not None and auto.cluster_ips == ("10.96.0.6",)


def test_allocation_kept_on_update_and_released_on_delete() -> None:
    small = ipaddress.ip_network("10.96.0.0/28")
    st = new_state(service_cidrs=[small])
    names = [f"s{i}" for i in range(10)]
    for n in names:
        st.apply(upsert(svc_raw(n, cluster_ip=None, ports=[np(80)], svc_type="NodePort")))
    before = {
        n: (s.cluster_ips, s.ports[0].node_port)
        for n in names
        if (s := st.service("default", n)) is not None
    }
    # Free half the slots, then update the rest: none may move.
    for n in names[::2]:
        st.apply(delete("Service", n))
    for n in names[1::2]:
        r = st.apply(
            upsert(
                svc_raw(
                    n,
                    cluster_ip=None,
                    rv="2",
                    ports=[np(80)],
                    svc_type="NodePort",
                    labels={"v": "2"},
                )
            )
        )
        assert r.changed
        s = st.service("default", n)
        assert s is not None
        assert (s.cluster_ips, s.ports[0].node_port) == before[n]
    # A deleted service's address is free for an explicit claim.
    ip = before[names[0]][0][0]
    assert st.apply(upsert(svc_raw("claim", cluster_ip=ip))).changed


def test_headless_and_external_name_get_no_address() -> None:
    st = new_state()
    st.apply(upsert(svc_raw("h", cluster_ip="None")))
    st.apply(
        upsert(svc_raw("e", cluster_ip=None, svc_type="ExternalName", externalName="x.example"))
    )
    for n in ("h", "e"):
        s = st.service("default", n)
        assert s is not None and s.cluster_ips == ()


def test_allocate_missing_off() -> None:
    st = new_state(allocate_missing=False)
    assert st.apply(upsert(svc_raw(cluster_ip=None))).changed
    s = st.service("default", "web")
    assert s is not None and s.cluster_ips == ()


def test_event_types() -> None:
    obj = parse_object(svc_raw())
    assert obj is not None
    assert WatchEvent.upsert(obj, added=True).type is EventType.ADDED
    assert WatchEvent.upsert(obj).type is EventType.MODIFIED
    ev = WatchEvent.delete(obj.key, "src", obj)
    assert (ev.type, ev.obj, ev.source) == (EventType.DELETED, obj, "src")


@settings(max_examples=150, deadline=None)
@given(
    hs.lists(
        hs.tuples(
            hs.sampled_from(["s1", "s2", "s3", "s4"]),
            hs.sampled_from(["web", "api", None, "gone"]),
        ),
        max_size=25,
    )
)
def test_the_slice_index_always_matches_the_slices_held(
    steps: list[tuple[str, str | None]],
) -> None:
    state = new_state()
    for rv, (name, service) in enumerate(steps, start=1):
        if service == "gone":
            state.apply(delete("EndpointSlice", name))
        else:
            state.apply(upsert(slice_raw(name, service=service, rv=str(rv))))
    for service in ("web", "api"):
        held = sorted(
            s.key.name
            for s in state.objects("EndpointSlice")
            if isinstance(s, EndpointSlice) and s.service_name == service
        )
        assert [s.key.name for s in state.slices_for_service("default", service)] == held
