"""Property: the Ingress RouteTable kept up by apply() is the one rebuild() gives (issue 17).

Random histories of Ingress, Service, EndpointSlice and IngressClass adds,
updates and deletes go through ClusterState and the ServiceTable as the
Dataplane drives them (tests/ingress_world.World); after every step a
RouteTable rebuilt from scratch over the same state and table must give
the same debug_state() and the same decision for every probe request
(hosts exact, wildcard and unknown; paths Exact, Prefix, regex and
refused; HTTP and HTTPS; canary header on and off; an affinity cookie).

Round-robin cursors and canary weight counters are per-table runtime
state, not routes: both tables have theirs reset before each probe.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingress_world import World, backend, backends, ingress, ingress_class, path
from netplane.ingress.routes import Forward, RouteTable

SERVICES = ["s0", "s1", "s2"]
HOSTS = ["a.example", "b.example", "*.w.example", ""]
PATHS = [
    ("/", "Prefix"),
    ("/x", "Prefix"),
    ("/x", "Exact"),
    ("/x/y", "Prefix"),
    ("/r/[0-9]+", "ImplementationSpecific"),
]
PROBES = [
    (h, p)
    for h in ("a.example", "A.example:80", "b.example", "q.w.example", "other")
    for p in ("/", "/x", "/x/", "/x/y/z", "/z?q=1", "/r/12", "/x/%2e%2e/z", "/%zz")
]
HEADERS: list[dict[bytes, bytes]] = [{}, {b"x-canary": b"always", b"cookie": b"aff=00"}]

A = "nginx.ingress.kubernetes.io/"


@st.composite
def ingresses(draw, name: str) -> dict:  # type: ignore[no-untyped-def]
    rules = []
    for host in draw(st.lists(st.sampled_from(HOSTS), max_size=2, unique=True)):
        chosen = draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3, unique=True))
        rules.append(
            (
                host,
                [
                    path(
                        p,
                        draw(st.sampled_from(SERVICES)),
                        k,
                        draw(st.sampled_from([80, 81, "http", "grpc"])),
                    )
                    for p, k in chosen
                ],
            )
        )
    default = backend(draw(st.sampled_from(SERVICES))) if draw(st.booleans()) or not rules else None
    tls = (
        [{"hosts": [draw(st.sampled_from(HOSTS[:3]))], "secretName": "t"}]
        if draw(st.booleans())
        else None
    )
    ann: dict[str, str] = {}
    for extra in draw(
        st.lists(
            st.sampled_from(
                ["canary", "canary-weight", "rewrite", "ssl", "affinity", "allow", "regex", "grpc"]
            ),
            max_size=3,
            unique=True,
        )
    ):
        if extra == "canary":
            ann[A + "canary"] = "true"
            ann[A + "canary-by-header"] = "x-canary"
        elif extra == "canary-weight":
            ann[A + "canary"] = "true"
            ann[A + "canary-weight"] = "50"
        elif extra == "rewrite":
            ann[A + "rewrite-target"] = "/new/$1"
        elif extra == "ssl":
            ann[A + "force-ssl-redirect"] = "true"
        elif extra == "affinity":
            ann[A + "affinity"] = "cookie"
            ann[A + "session-cookie-name"] = "aff"
        elif extra == "allow":
            ann[A + "whitelist-source-range"] = "192.0.2.0/24"
        elif extra == "regex":
            ann[A + "use-regex"] = "true"
        else:
            ann[A + "backend-protocol"] = "GRPC"
    return ingress(
        name,
        rules,
        default=default,
        tls=tls,
        annotations=ann,
        created=draw(st.sampled_from(["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"])),
        cls=draw(st.sampled_from(["netplane", "netplane", "nginx", None])),
    )


@st.composite
def services(draw, name: str) -> dict:  # type: ignore[no-untyped-def]
    ports: list[dict[str, Any]] = [{"name": "http", "port": 80}]
    if draw(st.booleans()):
        ports.append({"name": "grpc", "port": 81, "appProtocol": "kubernetes.io/h2c"})
    if draw(st.integers(0, 4)) == 0:
        ports = [{"name": "web", "port": 8080}]  # no port the Ingresses name
    if draw(st.integers(0, 5)) == 0:
        ports[0]["protocol"] = "UDP"
    spec: dict[str, Any] = {"ports": ports}
    if draw(st.booleans()):
        spec["publishNotReadyAddresses"] = True
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


@st.composite
def slices(draw, name: str) -> dict:  # type: ignore[no-untyped-def]
    eps = []
    for n in draw(st.lists(st.integers(1, 6), max_size=4, unique=True)):
        ready, serving, terminating = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
        eps.append(
            {
                "addresses": [f"10.1.{SERVICES.index(name[:2])}.{n}"],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            }
        )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": name[:2]},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 9090}],
        "endpoints": eps,
    }


@st.composite
def steps(draw):  # type: ignore[no-untyped-def]
    out: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 12))):
        what = draw(st.integers(0, 9))
        if what <= 3:
            name = draw(st.sampled_from(["i1", "i2", "i3"]))
            if draw(st.integers(0, 4)) == 0:
                out.append(("delete", ("Ingress", name)))
            else:
                out.append(("apply", draw(ingresses(name))))
        elif what <= 5:
            name = draw(st.sampled_from(SERVICES))
            if draw(st.integers(0, 3)) == 0:
                out.append(("delete", ("Service", name)))
            else:
                out.append(("apply", draw(services(name))))
        elif what <= 8:
            name = draw(st.sampled_from([f"{s}-{i}" for s in SERVICES for i in "ab"]))
            if draw(st.integers(0, 3)) == 0:
                out.append(("delete", ("EndpointSlice", name)))
            else:
                out.append(("apply", draw(slices(name))))
        else:
            # the default class flag moves: Ingresses without a class come and go
            out.append(("apply", ingress_class("nginx", "other.io/c", default=False)))
            out.append(
                ("apply", ingress_class("netplane", default=draw(st.booleans())))
                if draw(st.booleans())
                else ("delete", ("IngressClass", "nginx"))
            )
    return out


def _reset(rt: RouteTable) -> None:
    """Round-robin and canary-weight counters back to their start (runtime, not routes)."""
    for pool in rt._pools.values():
        pool.cursor = 0
    locs = [rt._default] if rt._default is not None else []
    for h in rt._hosts.values():
        locs += [*h.exact.values(), *(e[2] for e in h.scan)]
        if h.default is not None:
            locs.append(h.default)
    for loc in locs:
        if loc.canary is not None:
            loc.canary.acc = 0
            loc.canary.pool.cursor = 0


def _decisions(rt: RouteTable) -> list[object]:
    out = []
    for host, target in PROBES:
        for https in (False, True):
            for headers in HEADERS:
                for client_ip in ("192.0.2.7", "198.51.100.1"):
                    _reset(rt)
                    d = rt.route(host, target, https=https, client_ip=client_ip, headers=headers)
                    # a second request: the next endpoint in turn, the canary's weight
                    d2 = rt.route(host, target, https=https, client_ip=client_ip, headers=headers)
                    out.append((host, target, https, client_ip, d, d2))
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps())
def test_incremental_routes_match_a_rebuild(history: list[tuple[str, Any]]) -> None:
    w = World()
    for op, arg in history:
        if op == "delete":
            w.delete(*arg, namespace="" if arg[0] == "IngressClass" else "default")
        else:
            w.apply(arg)
        fresh = RouteTable(ingress_class=w.routes.ingress_class, controller=w.routes.controller)
        fresh.rebuild(w.state, w.table)
        mine, theirs = w.routes.debug_state(), fresh.debug_state()
        del mine["cachedLookups"], theirs["cachedLookups"]
        assert mine == theirs
        got, want = _decisions(w.routes), _decisions(fresh)
        for g, e in zip(got, want, strict=True):
            assert g == e


def test_a_rewrite_reference_past_the_regex_groups_is_empty() -> None:
    # Found by the property above: "$1" with a group-less regex path raised re.error per request.
    w = World(
        ingress(
            "i1",
            [("a.example", [path("/r/[0-9]+", "s0", "ImplementationSpecific")])],
            annotations={A + "rewrite-target": "/new/$1", A + "use-regex": "true"},
        ),
        *backends("s0"),
    )
    d = w.route("a.example", "/r/12?q=1")
    assert isinstance(d, Forward) and d.path == "/new/?q=1"
