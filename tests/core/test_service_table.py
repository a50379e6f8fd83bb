"""ServiceTable: frontends and endpoints per service port, kept current incrementally."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from netplane.allocations import Allocations
from netplane.events import WatchEvent
from netplane.model import ObjectKey, parse_object
from netplane.service_table import Frontend, ServiceTable, build_entry
from netplane.state import ClusterState

CIDR = ipaddress.ip_network("10.96.0.0/16")


def svc_raw(
    name: str = "web",
    ports: list[dict] | None = None,
    cluster_ip: str | None = "10.96.0.10",
    rv: str = "1",
    **spec: Any,
) -> dict:
    s: dict[str, Any] = {"ports": [{"port": 80}] if ports is None else ports, **spec}
    if cluster_ip is not None:
        s["clusterIP"] = cluster_ip
    status = spec.pop("status", None)
    raw: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
        "spec": s,
    }
    if status:
        raw["status"] = status
        del s["status"]
    return raw


def ep(addr: str | list[str], **kw: Any) -> dict:
    return {"addresses": [addr] if isinstance(addr, str) else addr, **kw}


def slice_raw(
    name: str,
    service: str | None,
    endpoints: list[dict],
    ports: list[dict] | None = None,
    address_type: str = "IPv4",
    rv: str = "1",
) -> dict:
    md: dict[str, Any] = {"name": name, "namespace": "default", "resourceVersion": rv}
    if service is not None:
        md["labels"] = {"kubernetes.io/service-name": service}
    raw: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": md,
        "addressType": address_type,
        "endpoints": endpoints,
    }
    if ports is not None:
        raw["ports"] = ports
    return raw


class World:
    """A state, a table and a subscription, driven the way the Dataplane drives them."""

    def __init__(self, derive_from_pods: bool = False) -> None:
        self.state = ClusterState(Allocations([CIDR]))
        self.sub = self.state.subscribe()
        self.table = ServiceTable(derive_from_pods=derive_from_pods)

    def apply(self, *raws: dict) -> set[tuple[str, str]]:
        for raw in raws:
            obj = parse_object(raw)
            assert obj is not None
            r = self.state.apply(WatchEvent.upsert(obj))
            assert r.error is None, r.error
        return self.table.apply(self.state, self.sub.take())

    def delete(self, kind: str, name: str) -> set[tuple[str, str]]:
        self.state.apply(WatchEvent.delete(ObjectKey(kind, "default", name)))
        return self.table.apply(self.state, self.sub.take())

    def backends(self, name: str = "web", port: int = 0) -> list[tuple[str, int, bool]]:
        entry = self.table.get("default", name)
        assert entry is not None
        return [(b.address, b.port, b.ready) for b in entry.ports[port].backends]

    def assert_matches_rebuild(self) -> None:
        fresh = ServiceTable(derive_from_pods=self.table.derive_from_pods)
        fresh.rebuild(self.state)
        assert {e.key: e for e in self.table} == {e.key: e for e in fresh}


# -- frontends ------------------------------------------------------------------------


def test_frontends_every_kind() -> None:
    w = World()
    w.apply(
        svc_raw(
            type="LoadBalancer",
            ports=[
                {"name": "http", "port": 80, "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
            ],
            externalIPs=["198.18.0.5"],
            status={"loadBalancer": {"ingress": [{"ip": "198.18.1.1"}]}},
        )
    )
    entry = w.table.get("default", "web")
    assert entry is not None
    assert entry.ports[0].frontends == (
        Frontend("10.96.0.10", 80, "TCP", "ClusterIP"),
        Frontend("198.18.0.5", 80, "TCP", "ExternalIP"),
        Frontend("198.18.1.1", 80, "TCP", "LoadBalancer"),
        Frontend(None, 30080, "TCP", "NodePort"),
    )
    assert entry.ports[1].frontends[0] == Frontend("10.96.0.10", 53, "UDP", "ClusterIP")
    assert entry.ports[1].frontends[-1] == Frontend(None, 30053, "UDP", "NodePort")


def test_frontends_cluster_ip_only_and_dual_stack() -> None:
    w = World()
    w.state.allocations.service_cidrs = (CIDR, ipaddress.ip_network("fd00::/112"))
    w.apply(svc_raw(cluster_ip=None, clusterIPs=["10.96.0.11", "fd00::11"]))
    entry = w.table.get("default", "web")
    assert entry is not None
    assert entry.ports[0].frontends == (
        Frontend("10.96.0.11", 80, "TCP", "ClusterIP"),
        Frontend("fd00::11", 80, "TCP", "ClusterIP"),
    )


def test_node_port_frontend_allocated() -> None:
    w = World()
    w.apply(svc_raw(type="NodePort"))
    entry = w.table.get("default", "web")
    assert entry is not None
    kinds = [f.kind for f in entry.ports[0].frontends]
    assert kinds == ["ClusterIP", "NodePort"]
    node_port = entry.ports[0].frontends[1].port
    assert 30000 <= node_port <= 32767
    assert entry.ports[0].node_port == node_port


def test_lb_status_ignored_unless_type_load_balancer() -> None:
    w = World()
    w.apply(svc_raw(status={"loadBalancer": {"ingress": [{"ip": "198.18.1.1"}]}}))
    entry = w.table.get("default", "web")
    assert entry is not None
    assert [f.kind for f in entry.ports[0].frontends] == ["ClusterIP"]


def test_headless_and_external_name_have_no_frontends() -> None:
    w = World()
    w.apply(
        svc_raw("h", cluster_ip="None"),
        svc_raw("x", cluster_ip=None, ports=[], type="ExternalName", externalName="db.example"),
        slice_raw("h-1", "h", [ep("10.1.0.1", hostname="a")]),
    )
    h = w.table.get("default", "h")
    assert h is not None
    assert h.ports[0].frontends == ()
    assert [(a.address, a.hostname) for a in h.addresses] == [("10.1.0.1", "a")]
    x = w.table.get("default", "x")
    assert x is not None and x.ports == () and x.service.external_name == "db.example"
    assert x.to_dict()["externalName"] == "db.example"


# -- endpoints from slices -----------------------------------------------------------


def test_endpoint_ports_by_slice_port_name() -> None:
    w = World()
    w.apply(
        svc_raw(
            ports=[
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "metrics", "port": 9090},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ]
        ),
        slice_raw(
            "web-1",
            "web",
            [ep("10.1.0.1"), ep("10.1.0.2", conditions={"ready": False})],
            ports=[
                {"name": "http", "port": 8080},
                {"name": "metrics", "port": 9100},
                {"name": "dns", "port": 5353, "protocol": "TCP"},  # wrong protocol
            ],
        ),
    )
    assert w.backends(port=0) == [("10.1.0.1", 8080, True), ("10.1.0.2", 8080, False)]
    assert w.backends(port=1) == [("10.1.0.1", 9100, True), ("10.1.0.2", 9100, False)]
    assert w.backends(port=2) == []


def test_numeric_target_port_fallback_without_slice_ports() -> None:
    w = World()
    w.apply(
        svc_raw(
            ports=[
                {"name": "a", "port": 80, "targetPort": 8080},
                {"name": "b", "port": 81, "targetPort": "named"},
            ]
        ),
        slice_raw("web-1", "web", [ep("10.1.0.1")]),
    )
    assert w.backends(port=0) == [("10.1.0.1", 8080, True)]
    assert w.backends(port=1) == []


def test_first_address_only_and_conditions() -> None:
    w = World()
    w.apply(
        svc_raw(),
        slice_raw(
            "web-1",
            "web",
            [
                ep(
                    ["10.1.0.1", "10.1.0.99"],
                    conditions={"ready": False, "serving": True, "terminating": True},
                    nodeName="n1",
                    zone="z1",
                    hints={"forZones": [{"name": "z1"}]},
                )
            ],
        ),
    )
    entry = w.table.get("default", "web")
    assert entry is not None
    (b,) = entry.ports[0].backends
    assert (b.address, b.port, b.ready, b.serving, b.terminating) == (
        "10.1.0.1",
        80,
        False,
        True,
        True,
    )
    assert (b.node_name, b.zone, b.hints_for_zones) == ("n1", "z1", ("z1",))
    (a,) = entry.addresses
    assert (a.address, a.ready, a.serving, a.terminating) == ("10.1.0.1", False, True, True)
    assert (a.hostname, a.node_name, a.zone) == ("", "n1", "z1")
    # The table shares the slice's endpoint rather than copying it per port.
    assert b.endpoint is a
    d = entry.to_dict()
    assert d["ports"][0]["endpoints"] == [
        {
            "address": "10.1.0.1",
            "port": 80,
            "ready": False,
            "serving": True,
            "terminating": True,
            "nodeName": "n1",
            "zone": "z1",
        }
    ]
    assert d["clusterIPs"] == ["10.96.0.10"]


def test_dedupe_across_slices() -> None:
    w = World()
    w.apply(
        svc_raw(),
        slice_raw("web-a", "web", [ep("10.1.0.1"), ep("10.1.0.2")]),
        slice_raw("web-b", "web", [ep("10.1.0.2", conditions={"ready": False}), ep("10.1.0.3")]),
    )
    # The first slice by name wins for a duplicate address.
    assert w.backends() == [("10.1.0.1", 80, True), ("10.1.0.2", 80, True), ("10.1.0.3", 80, True)]
    entry = w.table.get("default", "web")
    assert entry is not None
    assert [a.address for a in entry.addresses] == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]


def test_fqdn_slices_ignored() -> None:
    w = World()
    w.apply(
        svc_raw(),
        slice_raw("web-f", "web", [ep("db.example.com")], address_type="FQDN"),
        slice_raw("web-4", "web", [ep("10.1.0.1")]),
    )
    assert w.backends() == [("10.1.0.1", 80, True)]


def test_ipv6_slices() -> None:
    w = World()
    w.apply(svc_raw(), slice_raw("web-6", "web", [ep("FD00::0:1")], address_type="IPv6"))
    assert w.backends() == [("fd00::1", 80, True)]


def test_mirrored_endpoints() -> None:
    w = World()
    w.apply(
        svc_raw(ports=[{"name": "http", "port": 80}]),
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [
                {
                    "addresses": [{"ip": "10.2.0.1"}],
                    "notReadyAddresses": [{"ip": "10.2.0.2"}],
                    "ports": [{"name": "http", "port": 8080}],
                }
            ],
        },
    )
    assert w.backends() == [("10.2.0.1", 8080, True), ("10.2.0.2", 8080, False)]
    assert w.delete("Endpoints", "web") == {("default", "web")}
    assert w.backends() == []


# -- incremental apply -----------------------------------------------------------------


def test_incremental_apply_touches_only_affected_service() -> None:
    w = World()
    w.apply(
        svc_raw("a", cluster_ip="10.96.0.1"),
        svc_raw("b", cluster_ip="10.96.0.2"),
        slice_raw("a-1", "a", [ep("10.1.0.1")]),
        slice_raw("b-1", "b", [ep("10.1.1.1")]),
    )
    b_before = w.table.get("default", "b")
    touched = w.apply(slice_raw("a-1", "a", [ep("10.1.0.2")], rv="2"))
    assert touched == {("default", "a")}
    assert w.backends("a") == [("10.1.0.2", 80, True)]
    assert w.table.get("default", "b") is b_before  # not rebuilt
    # A change to something no service uses touches nothing.
    assert w.apply(slice_raw("orphan", "nobody", [ep("10.1.9.9")])) == {("default", "nobody")}
    assert w.table.get("default", "nobody") is None
    w.assert_matches_rebuild()


def test_slice_relabelled_updates_both_services() -> None:
    w = World()
    w.apply(
        svc_raw("a", cluster_ip="10.96.0.1"),
        svc_raw("b", cluster_ip="10.96.0.2"),
        slice_raw("s", "a", [ep("10.1.0.1")]),
    )
    assert w.backends("a") == [("10.1.0.1", 80, True)]
    touched = w.apply(slice_raw("s", "b", [ep("10.1.0.1")], rv="2"))
    assert touched == {("default", "a"), ("default", "b")}
    assert w.backends("a") == []
    assert w.backends("b") == [("10.1.0.1", 80, True)]
    # Label removed: only the old owner changes.
    assert w.apply(slice_raw("s", None, [ep("10.1.0.1")], rv="3")) == {("default", "b")}
    assert w.backends("b") == []
    w.assert_matches_rebuild()


def test_slice_deletion() -> None:
    w = World()
    w.apply(
        svc_raw(),
        slice_raw("web-a", "web", [ep("10.1.0.1")]),
        slice_raw("web-b", "web", [ep("10.1.0.2")]),
    )
    assert w.delete("EndpointSlice", "web-a") == {("default", "web")}
    assert w.backends() == [("10.1.0.2", 80, True)]
    w.assert_matches_rebuild()


def test_service_added_after_slices_and_deleted() -> None:
    w = World()
    w.apply(slice_raw("web-a", "web", [ep("10.1.0.1")]))
    assert w.table.get("default", "web") is None
    assert w.apply(svc_raw()) == {("default", "web")}
    assert w.backends() == [("10.1.0.1", 80, True)]
    assert w.delete("Service", "web") == {("default", "web")}
    assert w.table.get("default", "web") is None
    assert len(w.table) == 0
    w.assert_matches_rebuild()


def test_rebuild_returns_old_and_new_keys() -> None:
    w = World()
    w.apply(svc_raw("a", cluster_ip="10.96.0.1"), svc_raw("b", cluster_ip="10.96.0.2"))
    w.state.apply(WatchEvent.delete(ObjectKey("Service", "default", "a")))
    assert w.table.rebuild(w.state) == {("default", "a"), ("default", "b")}
    assert [e.key for e in w.table] == [("default", "b")]


# -- endpoints from pods ----------------------------------------------------------------


def pod_raw(
    name: str,
    ip: str | list[str] | None = "10.1.0.1",
    labels: dict | None = None,
    ready: bool = True,
    rv: str = "1",
    deleting: bool = False,
    phase: str = "Running",
    **spec: Any,
) -> dict:
    ips = [ip] if isinstance(ip, str) else (ip or [])
    md: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "resourceVersion": rv,
        "labels": {"app": "web"} if labels is None else labels,
    }
    if deleting:
        md["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": md,
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}],
            **spec,
        },
        "status": {
            "phase": phase,
            "podIPs": [{"ip": i} for i in ips],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def selector_svc(**kw: Any) -> dict:
    return svc_raw(
        selector={"app": "web"},
        ports=[
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "raw", "port": 81, "targetPort": 9000},
        ],
        **kw,
    )


def test_pod_derived_endpoints() -> None:
    w = World(derive_from_pods=True)
    w.apply(
        selector_svc(),
        pod_raw("p1", "10.1.0.1"),
        pod_raw("p2", "10.1.0.2", ready=False),
        pod_raw("p3", "10.1.0.3", deleting=True),
        pod_raw("p4", "10.1.0.4", labels={"app": "other"}),
        pod_raw("p5", None),
        pod_raw("p6", "10.1.0.6", phase="Succeeded"),
        pod_raw("p7", "10.1.0.7", containers=[{"name": "c"}]),  # no named port
    )
    assert w.backends(port=0) == [
        ("10.1.0.1", 8080, True),
        ("10.1.0.2", 8080, False),
        ("10.1.0.3", 8080, False),
    ]
    assert w.backends(port=1) == [
        ("10.1.0.1", 9000, True),
        ("10.1.0.2", 9000, False),
        ("10.1.0.3", 9000, False),
        ("10.1.0.7", 9000, True),
    ]
    entry = w.table.get("default", "web")
    assert entry is not None
    terminating = entry.ports[0].backends[2]
    assert (terminating.ready, terminating.serving, terminating.terminating) == (False, True, True)
    assert entry.addresses[0].node_name == "n1"
    w.assert_matches_rebuild()


def test_pod_derived_publish_not_ready() -> None:
    w = World(derive_from_pods=True)
    w.apply(selector_svc(publishNotReadyAddresses=True), pod_raw("p1", ready=False))
    entry = w.table.get("default", "web")
    assert entry is not None
    b = entry.ports[0].backends[0]
    assert (b.ready, b.serving) == (True, False)


def test_pod_hostname_only_when_subdomain_matches() -> None:
    w = World(derive_from_pods=True)
    w.apply(
        selector_svc(cluster_ip="None"),
        pod_raw("p1", "10.1.0.1", hostname="h1", subdomain="web"),
        pod_raw("p2", "10.1.0.2", hostname="h2", subdomain="other"),
        pod_raw("p3", "10.1.0.3", subdomain="web"),
    )
    entry = w.table.get("default", "web")
    assert entry is not None
    assert [(a.address, a.hostname) for a in entry.addresses] == [
        ("10.1.0.1", "h1"),
        ("10.1.0.2", ""),
        ("10.1.0.3", ""),
    ]


def test_pod_ips_filtered_by_service_family() -> None:
    w = World(derive_from_pods=True)
    w.apply(selector_svc(), pod_raw("p1", ["10.1.0.1", "fd00::1"]))
    assert [b[0] for b in w.backends()] == ["10.1.0.1"]
    # Headless without families: every pod IP.
    w.apply(selector_svc(cluster_ip="None", rv="2"))
    assert [b[0] for b in w.backends()] == ["10.1.0.1", "fd00::1"]


def test_pod_changes_update_the_table() -> None:
    w = World(derive_from_pods=True)
    w.apply(selector_svc(), svc_raw("other", cluster_ip="10.96.0.2", selector={"app": "x"}))
    assert w.backends() == []
    assert w.apply(pod_raw("p1", "10.1.0.1", ready=False)) == {("default", "web")}
    assert w.backends() == [("10.1.0.1", 8080, False)]
    assert w.apply(pod_raw("p1", "10.1.0.1", rv="2")) == {("default", "web")}
    assert w.backends() == [("10.1.0.1", 8080, True)]
    # Relabelled away: the service it fed loses it, the new one gains it.
    touched = w.apply(pod_raw("p1", "10.1.0.1", rv="3", labels={"app": "x"}))
    assert touched == {("default", "web"), ("default", "other")}
    assert w.backends() == []
    other = w.table.get("default", "other")
    assert other is not None and [a.address for a in other.addresses] == ["10.1.0.1"]
    assert w.delete("Pod", "p1") == {("default", "other")}
    other = w.table.get("default", "other")
    assert other is not None and other.addresses == ()
    w.assert_matches_rebuild()


def test_shared_pod_address_still_tracked() -> None:
    # Two hostNetwork pods share a node address; each feeds its own port.
    w = World(derive_from_pods=True)
    w.apply(
        selector_svc(),
        pod_raw("p1", "198.18.0.1", containers=[{"name": "c"}]),
        pod_raw("p2", "198.18.0.1"),
    )
    assert w.backends(port=0) == [("198.18.0.1", 8080, True)]
    w.apply(pod_raw("p2", "198.18.0.1", labels={"app": "gone"}, rv="2"))
    assert w.backends(port=0) == []
    w.assert_matches_rebuild()


def test_slices_win_over_pods() -> None:
    w = World(derive_from_pods=True)
    w.apply(selector_svc(), pod_raw("p1", "10.1.0.1"))
    assert [b[0] for b in w.backends()] == ["10.1.0.1"]
    w.apply(slice_raw("web-1", "web", [ep("10.5.0.1")], ports=[{"name": "http", "port": 7000}]))
    assert w.backends() == [("10.5.0.1", 7000, True)]
    w.delete("EndpointSlice", "web-1")
    assert [b[0] for b in w.backends()] == ["10.1.0.1"]
    w.assert_matches_rebuild()


def test_pods_ignored_without_derive() -> None:
    w = World()
    w.apply(selector_svc(), pod_raw("p1"))
    assert w.backends() == []


def test_build_entry_pure() -> None:
    svc = parse_object(selector_svc())
    pod = parse_object(pod_raw("p1"))
    assert svc is not None and pod is not None
    entry = build_entry(svc, [], [pod])  # type: ignore[arg-type,list-item]
    assert [(b.address, b.port) for b in entry.ports[0].backends] == [("10.1.0.1", 8080)]
    assert build_entry(svc, []).ports[0].backends == ()  # type: ignore[arg-type]


# -- property: incremental == rebuild ------------------------------------------------------

SERVICES = ["a", "b", "c"]
SLICE_NAMES = [f"s{i}" for i in range(5)]

slice_event = st.one_of(
    st.tuples(
        st.just("upsert"),
        st.sampled_from(SLICE_NAMES),
        st.sampled_from([*SERVICES, None, "missing"]),
        st.lists(
            st.tuples(st.integers(1, 6), st.booleans(), st.booleans()), min_size=0, max_size=4
        ),
        st.sampled_from([None, [{"name": "http", "port": 8080}], [{"name": "x", "port": 1}]]),
    ),
    st.tuples(st.just("delete"), st.sampled_from(SLICE_NAMES)),
    st.tuples(st.just("service"), st.sampled_from(SERVICES), st.booleans()),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(slice_event, max_size=30))
def test_incremental_equals_rebuild(events: list[tuple]) -> None:
    w = World()
    rv = 1
    for i, name in enumerate(SERVICES[:2]):
        w.apply(svc_raw(name, cluster_ip=f"10.96.0.{i + 1}", ports=[{"name": "http", "port": 80}]))
    for ev in events:
        rv += 1
        if ev[0] == "upsert":
            _, name, service, eps, ports = ev
            endpoints = [
                ep(f"10.1.0.{n}", conditions={"ready": r, "terminating": t}) for n, r, t in eps
            ]
            w.apply(slice_raw(name, service, endpoints, ports=ports, rv=str(rv)))
        elif ev[0] == "delete":
            w.delete("EndpointSlice", ev[1])
        elif ev[2]:
            i = SERVICES.index(ev[1])
            w.apply(
                svc_raw(
                    ev[1],
                    cluster_ip=f"10.96.0.{i + 1}",
                    ports=[{"name": "http", "port": 80}],
                    rv=str(rv),
                )
            )
        else:
            w.delete("Service", ev[1])
        w.assert_matches_rebuild()


def test_an_entry_survives_pickling_with_its_endpoints_still_shared() -> None:
    # Worker processes get the table pickled: a backend and its address must
    # arrive as one object, and the entry must read the same.
    import pickle

    w = World()
    w.apply(
        svc_raw(ports=[{"name": "http", "port": 80}, {"name": "alt", "port": 81}]),
        slice_raw(
            "web-1",
            "web",
            [ep("10.1.0.1", hostname="a", nodeName="n1"), ep("10.1.0.2")],
            ports=[{"name": "http", "port": 8080}, {"name": "alt", "port": 8081}],
        ),
    )
    entry = w.table.get("default", "web")
    assert entry is not None
    copy = pickle.loads(pickle.dumps(entry))
    assert copy == entry
    assert [(b.address, b.port) for p in copy.ports for b in p.backends] == [
        ("10.1.0.1", 8080),
        ("10.1.0.2", 8080),
        ("10.1.0.1", 8081),
        ("10.1.0.2", 8081),
    ]
    assert copy.ports[0].backends[0].endpoint is copy.addresses[0]
    assert copy.ports[1].backends[0].endpoint is copy.addresses[0]
