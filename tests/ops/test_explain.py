"""``netplane explain``: each kind of target against small states, the JSON shape, the text,
the admin endpoint, and the command against a running demo and offline."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from l4_world import ep

from netplane import Config, Dataplane
from netplane.admin import Request
from netplane.config import Listen
from netplane.explain import Views, explain, parse_target, render
from netplane.explain.admin import explain_handler
from netplane.explain.target import DnsTarget, HttpTarget, L4Target, TargetError
from netplane.l4.picker import NodeInfo, Picker, Target, explain_endpoints
from netplane.model import Service, parse_object
from netplane.service_table import build_entry

ROOT = Path(__file__).resolve().parents[2]
CREATED = "2024-01-01T00:00:00Z"

# -- building states ------------------------------------------------------------------


def meta(name: str, ns: str = "default", **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": ns, "creationTimestamp": CREATED, **extra}


def service(name: str, ports: list[dict] | None = None, ns: str = "default", **spec: Any) -> dict:
    ports = ports or [{"name": "http", "port": 80, "targetPort": 8080}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(name, ns),
            "spec": {"ports": ports, **spec}}  # fmt: skip


def slice_(svc: str, endpoints: list[dict], ns: str = "default", port: int = 8080,
           name: str = "http") -> dict:  # fmt: skip
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {**meta(f"{svc}-1", ns), "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": name, "port": port}],
        "endpoints": endpoints,
    }


def ingress(name: str, host: str, paths: list[tuple[str, str, str]], *, created: str = CREATED,
            annotations: dict[str, str] | None = None, tls: list[dict] | None = None) -> dict:  # fmt: skip
    md = meta(name, creationTimestamp=created)
    if annotations:
        md["annotations"] = annotations
    rule: dict[str, Any] = {"http": {"paths": [
        {"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": {"number": 80}}}}
        for p, kind, svc in paths
    ]}}  # fmt: skip
    if host:
        rule["host"] = host
    spec: dict[str, Any] = {"ingressClassName": "netplane", "rules": [rule]}
    if tls:
        spec["tls"] = tls
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": md, "spec": spec}


INGRESS_CLASS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "IngressClass",
    "metadata": {"name": "netplane"},
    "spec": {"controller": "netplane.io/ingress"},
}


def node(name: str, zone: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}}  # fmt: skip


def views(*objects: dict, **config: Any) -> Views:
    """A Dataplane holding ``objects`` (its table built, nothing served) and its Views."""
    config.setdefault("mode", "local")
    config.setdefault("admin", None)
    dp = Dataplane(Config(**config), serve=False)
    for obj in objects:
        dp.apply(obj)
    asyncio.run(dp.start())
    return Views(dp)


def ask(v: Views, target: str, **kw: Any) -> dict[str, Any]:
    doc = explain(v, target, **kw)
    json.dumps(doc)  # JSON-ready, always
    text = render(doc)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    return doc


def lost_why(doc: dict[str, Any], path: str) -> str:
    return next(x["why"] for x in doc["lost"] if x.get("path") == path)


# -- targets --------------------------------------------------------------------------


def test_targets_of_each_kind() -> None:
    t = parse_target("http://Shop.example:8080/api/v1?x=1")
    assert isinstance(t, HttpTarget)
    assert (t.name, t.port, t.target, t.https) == ("shop.example", 8080, "/api/v1?x=1", False)
    assert parse_target("shop.example/api", tls=True) == HttpTarget(
        "http://shop.example/api", True, "shop.example", "shop.example", 443, "/api"
    )
    assert parse_target("10.96.0.10:53/udp") == L4Target("10.96.0.10", 53, ("UDP",))
    assert parse_target("[fd00::a]:80") == L4Target("fd00::a", 80, ("TCP", "UDP"))
    assert parse_target("web.shop.svc.cluster.local.", qtype="srv") == DnsTarget(
        "web.shop.svc.cluster.local", "SRV"
    )
    assert parse_target("10.96.0.10") == DnsTarget("10.0.96.10.in-addr.arpa", "PTR", "10.96.0.10")
    for bad in ("", "10.0.0.1:99999", "1.2.3.4:80/icmp", "web.shop MX", "http://:80/"):
        with pytest.raises(TargetError):
            parse_target(bad, qtype="MX" if " " in bad else None)


# -- HTTP: Ingress ------------------------------------------------------------------------


def shop(*extra: dict) -> Views:
    return views(
        INGRESS_CLASS,
        service("web"), slice_("web", [ep("10.1.0.1"), ep("10.1.0.2", ready=False)]),
        service("api"),
        slice_("api", [ep("10.2.0.1", ready=False, serving=True, terminating=True)]),
        service("v1"), slice_("v1", [ep("10.3.0.1")]),
        ingress("main", "shop.example", [("/", "Prefix", "web"), ("/api", "Prefix", "api")]),
        ingress("exact", "shop.example", [("/api/v1", "Exact", "v1")],
                created="2024-02-01T00:00:00Z"),
        ingress("late", "shop.example", [("/api", "Prefix", "web")],
                created="2024-03-01T00:00:00Z"),
        ingress("wild", "*.example", [("/", "Prefix", "web")]),
        *extra,
    )  # fmt: skip


def test_ingress_match_and_why_the_others_lost() -> None:
    v = shop()
    doc = ask(v, "http://shop.example/api/v1?x=1")
    assert doc["found"] and doc["match"] == {
        "source": "Ingress", "object": "default/exact", "rule": 0, "path_index": 0,
        "host": "shop.example", "path": "/api/v1", "pathType": "Exact",
    }  # fmt: skip
    assert doc["host"]["how"] == "exact"
    assert doc["host"]["others"] == [
        {"host": "*.example", "why": "covers the name too, but an exact rule host wins"}
    ]
    assert lost_why(doc, "/api") == "matches too, but an Exact path wins"
    assert doc["decision"]["service"] == "default/v1" and doc["decision"]["path"] == "/api/v1?x=1"

    doc = ask(v, "http://shop.example/api/x")
    assert doc["match"]["object"] == "default/main" and doc["match"]["path"] == "/api"
    assert lost_why(doc, "/") == "matches too, but the longer path /api wins"
    assert lost_why(doc, "/api/v1") == "/api/x is not exactly /api/v1"
    late = next(x for x in doc["lost"] if x["object"] == "default/late")
    assert late["why"] == "same path as default/main, which is older: ignored here"

    doc = ask(v, "http://other.example/")
    assert doc["host"]["how"] == "wildcard" and doc["match"]["object"] == "default/wild"


def test_ingress_endpoints_and_what_no_ready_endpoint_gets() -> None:
    v = shop()
    doc = ask(v, "http://shop.example/")
    b = doc["backend"]
    assert [(e["address"], e["used"], e["why"]) for e in b["endpoints"]] == [
        ("10.1.0.1:8080", True, "ready"),
        ("10.1.0.2:8080", False, "not ready"),
    ]
    assert b["if_none_ready"] == (
        "503 Service Unavailable: no ready endpoint for service default/web port 80"
    )
    doc = ask(v, "http://shop.example/api")  # only a serving, terminating endpoint
    assert [(e["used"], e["why"]) for e in doc["backend"]["endpoints"]] == [
        (True, "serving, terminating: no endpoint is ready")
    ]
    assert doc["decision"]["targets"] == ["10.2.0.1:8080"]


def test_ingress_no_match_says_so_and_offers_the_nearest() -> None:
    v = shop()
    doc = ask(v, "http://shop.exmaple/")
    assert not doc["found"] and doc["answer"] == "404: no Ingress rule host takes 'shop.exmaple'"
    assert doc["candidates"][0] == "shop.example"
    v = views(INGRESS_CLASS, service("web"),
              ingress("main", "shop.example", [("/api", "Exact", "web")]))  # fmt: skip
    doc = ask(v, "http://shop.example/apj")
    assert not doc["found"] and doc["candidates"] == ["/api"]
    assert lost_why(doc, "/api") == "/apj is not exactly /api"


def test_ingress_policy_canary_rewrite_affinity_and_ssl_redirect() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("tls.example")
    tls_secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta("tls"),
        "data": {"tls.crt": _b64(b"".join(b.bytes() for b in cert.cert_chain_pems)),
                 "tls.key": _b64(cert.private_key_pem.bytes())},
    }  # fmt: skip
    v = views(
        INGRESS_CLASS, service("web"), slice_("web", [ep("10.1.0.1")]),
        service("new"), slice_("new", [ep("10.9.0.1")]), tls_secret,
        ingress("main", "tls.example", [("/", "Prefix", "web")],
                annotations={"nginx.ingress.kubernetes.io/rewrite-target": "/v2",
                             "nginx.ingress.kubernetes.io/affinity": "cookie"},
                tls=[{"hosts": ["tls.example"], "secretName": "tls"}]),
        ingress("canary", "tls.example", [("/", "Prefix", "new")],
                created="2024-05-01T00:00:00Z",
                annotations={"nginx.ingress.kubernetes.io/canary": "true",
                             "nginx.ingress.kubernetes.io/canary-by-header": "x-canary"}),
    )  # fmt: skip
    doc = ask(v, "http://tls.example/a?q=1")
    assert doc["decision"] == {"action": "redirect", "status": 308,
                               "location": "https://tls.example:8443/a?q=1"}  # fmt: skip
    names = [p["name"] for p in doc["policy"]]
    assert names == ["ssl-redirect", "rewrite-target", "canary", "affinity"]
    doc = ask(v, "https://tls.example/a?q=1", headers=[("X-Canary", "always")])
    assert doc["decision"]["service"] == "default/new" and doc["decision"]["path"] == "/v2?q=1"
    assert doc["decision"]["set_cookie"].startswith("INGRESSCOOKIE=")
    canary = next(p for p in doc["policy"] if p["name"] == "canary")["detail"]
    assert canary.endswith("this request goes to the canary")
    tls = doc["tls"]
    assert tls["sni"] == "tls.example" and tls["certificate"]["dnsNames"] == ["tls.example"]
    assert (
        tls["why"] == "exact spec.tls host tls.example of Ingress default/main: Secret default/tls"
    )
    assert "warning" not in tls
    doc = ask(v, "https://tls.example/", headers=[("x-canary", "never")])
    assert doc["decision"]["service"] == "default/web"
    # SNI with no spec.tls host: the default certificate, with a warning
    doc = ask(v, "http://other.example/", tls=True)
    assert "the default certificate serves" in doc["tls"]["why"]
    assert doc["tls"]["warning"].startswith("the certificate does not name other.example")


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_explaining_moves_no_round_robin() -> None:
    v = views(INGRESS_CLASS, service("web"), slice_("web", [ep("10.1.0.1"), ep("10.1.0.2")]),
              ingress("main", "shop.example", [("/", "Prefix", "web")]))  # fmt: skip
    explained = {tuple(ask(v, "http://shop.example/")["decision"]["targets"]) for _ in range(3)}
    assert explained == {("10.1.0.1:8080", "10.1.0.2:8080")}
    routes = v.routes()
    served = [routes.route("shop.example", "/", https=False, client_ip="1.2.3.4", headers={})
              for _ in range(2)]  # fmt: skip
    assert [d.targets[0] for d in served] == [("10.1.0.1", 8080), ("10.1.0.2", 8080)]


# -- HTTP: Gateway API --------------------------------------------------------------------

GW = "gateway.networking.k8s.io/v1"


def gateway_world(*extra: dict) -> Views:
    return views(
        {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "netplane"},
         "spec": {"controllerName": "netplane.io/gateway-controller"}},
        {"apiVersion": GW, "kind": "Gateway", "metadata": meta("gw"),
         "spec": {"gatewayClassName": "netplane",
                  "listeners": [{"name": "http", "port": 18088, "protocol": "HTTP"}]}},
        service("a"), slice_("a", [ep("10.4.0.1")]), service("b"), slice_("b", [ep("10.5.0.1")]),
        {"apiVersion": GW, "kind": "HTTPRoute", "metadata": meta("r"),
         "spec": {"parentRefs": [{"name": "gw"}], "rules": [
             {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                           "headers": [{"name": "x-version", "value": "v2"}]}],
              "backendRefs": [{"name": "b", "port": 80}]},
             {"backendRefs": [{"name": "a", "port": 80}]},
         ]}},
        *extra,
    )  # fmt: skip


def test_gateway_rule_that_wins_and_a_failed_header_match() -> None:
    v = gateway_world()
    doc = ask(v, "http://anything.example:18088/x")
    assert doc["listener"]["kind"] == "Gateway" and doc["listener"]["chosen"] == "default/gw/http"
    assert doc["match"]["object"] == "default/r" and doc["match"]["rule"] == 1
    assert doc["lost"][0]["rule"] == 0
    assert doc["lost"][0]["why"] == "fails header x-version (not sent)"
    doc = ask(v, "http://anything.example:18088/x", headers=[("x-version", "v2")])
    assert doc["match"]["rule"] == 0 and doc["decision"]["service"] == "default/b"
    assert doc["lost"][0]["why"] == "matches too, but default/r wins: it has more header matches"


def test_gateway_an_older_route_wins_on_the_same_path() -> None:
    older = {"apiVersion": GW, "kind": "HTTPRoute",
             "metadata": meta("old", creationTimestamp="2023-01-01T00:00:00Z"),
             "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                 {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                  "backendRefs": [{"name": "b", "port": 80}]}]}}  # fmt: skip
    doc = ask(gateway_world(older), "http://x.example:18088/")
    assert doc["match"]["object"] == "default/old"
    why = next(x["why"] for x in doc["lost"] if x["object"] == "default/r" and x["rule"] == 1)
    assert (
        why == "matches too, but default/old wins: its route is older (then namespace/name first)"
    )


def test_gateway_tls_certificate_by_listener_hostname() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("*.gw.example")
    secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta("gwc"),
        "data": {"tls.crt": _b64(b"".join(b.bytes() for b in cert.cert_chain_pems)),
                 "tls.key": _b64(cert.private_key_pem.bytes())},
    }  # fmt: skip
    https = {"apiVersion": GW, "kind": "Gateway", "metadata": meta("gws"),
             "spec": {"gatewayClassName": "netplane", "listeners": [
                 {"name": "https", "port": 18443, "protocol": "HTTPS", "hostname": "*.gw.example",
                  "tls": {"mode": "Terminate", "certificateRefs": [{"name": "gwc"}]}}]}}  # fmt: skip
    route = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": meta("rs"),
             "spec": {"parentRefs": [{"name": "gws"}],
                      "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]}}  # fmt: skip
    v = gateway_world(secret, https, route)
    doc = ask(v, "https://a.gw.example:18443/")
    assert doc["listener"]["protocol"] == "HTTPS" and doc["match"]["object"] == "default/rs"
    assert doc["tls"]["why"] == "listener hostname *.gw.example: Secret default/gwc"
    assert doc["tls"]["certificate"]["dnsNames"] == ["*.gw.example"] and "warning" not in doc["tls"]


# -- L4 ---------------------------------------------------------------------------------


def l4_world(**svc: Any) -> Views:
    return views(
        node("n1", "z1"),
        service("api", [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
                type="NodePort", clusterIP="127.77.0.10", **svc),
        slice_("api", [
            ep("10.0.0.1", "n1", zone="z1"),
            ep("10.0.0.2", "n2", zone="z2"),
            ep("10.0.0.3", "n1", ready=False, serving=True, terminating=True),
            ep("10.0.0.4", "n2", ready=False),
        ]),
        node_name="n1",
    )  # fmt: skip


def reasons(port: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    return {e["address"]: (e["used"], e["why"]) for e in port["endpoints"]}


def test_l4_cluster_ip_etp_local_terminating_and_other_node() -> None:
    v = l4_world(externalTrafficPolicy="Local")
    doc = ask(v, "127.77.0.10:80/tcp")
    (port,) = doc["ports"]
    assert port["frontend"]["kind"] == "ClusterIP" and port["policy"]["balancing"] == "round-robin"
    assert port["datapath"]["name"] == "userspace"
    assert reasons(port) == {
        "10.0.0.1:8080": (True, "ready"),
        "10.0.0.2:8080": (True, "ready"),
        "10.0.0.3:8080": (False, "terminating: used only when no endpoint in the cluster is ready"),
        "10.0.0.4:8080": (False, "not ready"),
    }
    doc = ask(v, "127.0.0.1:30080/tcp")  # the NodePort: external traffic, eTP Local
    (port,) = doc["ports"]
    assert port["frontend"] == {"address": "127.0.0.1:30080/TCP", "kind": "NodePort",
                                "traffic": "external"}  # fmt: skip
    assert port["policy"]["traffic_policy"] == "externalTrafficPolicy Local"
    assert reasons(port) == {
        "10.0.0.1:8080": (True, "ready, on this node (externalTrafficPolicy Local)"),
        "10.0.0.2:8080": (False, "on n2, not this node (n1); externalTrafficPolicy Local"),
        "10.0.0.3:8080": (False, "terminating: used only when no endpoint on this node is ready"),
        "10.0.0.4:8080": (False, "on n2, not this node (n1); externalTrafficPolicy Local"),
    }
    assert port["order"] == ["10.0.0.1:8080"]


def test_l4_topology_hints_and_publish_not_ready() -> None:
    v = views(
        node("n1", "z1"), service("h", clusterIP="127.77.0.11"),
        slice_("h", [ep("10.0.1.1", hints=["z1"]), ep("10.0.1.2", hints=["z2"])]),
        service("p", clusterIP="127.77.0.12", publishNotReadyAddresses=True),
        slice_("p", [ep("10.0.2.1", ready=False)]),
        node_name="n1",
    )  # fmt: skip
    (port,) = ask(v, "127.77.0.11:80/tcp")["ports"]
    assert reasons(port) == {
        "10.0.1.1:8080": (True, "ready, hinted for this node's zone z1"),
        "10.0.1.2:8080": (False, "hinted for zone z2, not this node's zone z1"),
    }
    (port,) = ask(v, "127.77.0.12:80")["ports"]
    assert reasons(port) == {
        "10.0.2.1:8080": (True, "not ready, but the Service sets publishNotReadyAddresses")
    }


def test_l4_no_endpoint_and_no_frontend() -> None:
    v = views(service("empty", clusterIP="127.77.0.13", ports=None))
    doc = ask(v, "127.77.0.13:80/tcp")
    assert doc["ports"][0]["order"] == []
    assert doc["answer"].endswith("the proxy resets TCP connections and drops UDP datagrams")
    doc = ask(v, "127.77.0.13:81/tcp")
    assert not doc["found"]
    assert doc["candidates"] == ["127.77.0.13:80/tcp (default/empty ClusterIP)"]
    v = views(service("x", clusterIP="127.77.9.1"), ingress_http=Listen("127.0.0.1", 18080))
    doc = ask(v, "127.0.0.1:18080/tcp")
    assert doc["answer"].startswith("127.0.0.1:18080/tcp is the ingress HTTP listener")


def test_l4_kernel_datapath_choice_offline_in_node_mode() -> None:
    v = views(
        service("k", clusterIP="10.96.0.20"), slice_("k", [ep("10.0.3.1")]),
        mode="node", l4_datapath="auto",
    )  # fmt: skip
    (port,) = ask(v, "10.96.0.20:80/tcp")["ports"]
    assert port["datapath"]["name"] == "nftables"
    assert port["datapath"]["reason"] == "--l4-datapath auto: no user-space feature needed"
    assert port["datapath"]["programmed"]["endpoints"] == 1


_backend = st.fixed_dictionaries({
    "ready": st.booleans(), "serving": st.booleans(), "terminating": st.booleans(),
    "node": st.sampled_from(["", "n1", "n2"]), "hints": st.sampled_from([None, ["z1"], ["z2"]]),
})  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    backends=st.lists(_backend, max_size=6),
    etp=st.sampled_from(["Cluster", "Local"]),
    itp=st.sampled_from(["Cluster", "Local"]),
    pna=st.booleans(),
    zone=st.sampled_from(["", "z1"]),
)
def test_explained_endpoints_are_the_pickers_candidates(
    backends: list[dict], etp: str, itp: str, pna: bool, zone: str
) -> None:
    svc = parse_object(service("s", clusterIP="10.96.0.1", externalTrafficPolicy=etp,
                               internalTrafficPolicy=itp, publishNotReadyAddresses=pna))  # fmt: skip
    assert isinstance(svc, Service)
    eps = [ep(f"10.0.0.{i + 1}", b["node"], ready=b["ready"], serving=b["serving"],
              terminating=b["terminating"], hints=b["hints"]) for i, b in enumerate(backends)]  # fmt: skip
    sl = parse_object(slice_("s", eps))
    entry = build_entry(svc, [sl])
    (port,) = entry.ports
    node_info = NodeInfo("n1", zone)
    picker = Picker(entry, port, node_info)
    for external in (False, True):
        verdicts = explain_endpoints(entry, port, node_info, external=external)
        used = {Target(v.backend.address, v.backend.port) for v in verdicts if v.used}
        assert used == set(picker.candidates(external=external))
        assert all(v.reason for v in verdicts)


# -- DNS ----------------------------------------------------------------------------------


def dns_world() -> Views:
    return views(
        service("web", clusterIP="127.77.0.20", ns="shop"),
        service("db", ns="shop", clusterIP="None",
                ports=[{"name": "pg", "port": 5432}]),
        slice_("db", [ep("10.6.0.1", hostname="db-0"), ep("10.6.0.2", ready=False, hostname="db-1")],
               ns="shop", name="pg", port=5432),
        service("gone", ns="shop", clusterIP="None"),
        slice_("gone", [ep("10.6.1.1", ready=False)], ns="shop"),
        service("out", ns="shop", type="ExternalName", externalName="example.com"),
        service("alias", ns="shop", type="ExternalName", externalName="web.shop.svc.cluster.local"),
    )  # fmt: skip


def test_dns_cluster_ip_nodata_and_ptr() -> None:
    v = dns_world()
    doc = ask(v, "web.shop.svc.cluster.local")
    assert doc["status"] == "NOERROR" and doc["found"]
    assert doc["records"] == ["web.shop.svc.cluster.local. 5 A 127.77.0.20"]
    assert any("status: NOERROR" in line for line in doc["dig"])
    assert doc["why"] == ["shop/web is a ClusterIP Service: its name has its cluster IPs"
                          " (127.77.0.20)"]  # fmt: skip
    doc = ask(v, "web.shop.svc.cluster.local", qtype="AAAA")
    assert doc["status"] == "NODATA" and doc["found"]
    assert doc["why"][0].startswith("web.shop.svc.cluster.local has A records but no AAAA")
    doc = ask(v, "shop.svc.cluster.local")
    assert doc["status"] == "NODATA" and "names exist below it" in doc["why"][0]
    doc = ask(v, "127.77.0.20")
    assert doc["records"] == ["20.0.77.127.in-addr.arpa. 5 PTR web.shop.svc.cluster.local."]


def test_dns_headless_published_and_not() -> None:
    v = dns_world()
    doc = ask(v, "db.shop.svc.cluster.local")
    assert doc["records"] == ["db.shop.svc.cluster.local. 5 A 10.6.0.1"]
    assert doc["why"] == [
        "shop/db is headless (clusterIP: None): its name has the endpoints' own addresses,"
        " the ready ones",
        "  10.6.0.1 (db-0): in, ready",
        "  10.6.0.2 (db-1): out, not ready",
    ]
    doc = ask(v, "_pg._tcp.db.shop.svc.cluster.local", qtype="SRV")
    assert doc["records"] == ["_pg._tcp.db.shop.svc.cluster.local. 5 SRV 0 100 5432"
                              " db-0.db.shop.svc.cluster.local."]  # fmt: skip
    doc = ask(v, "gone.shop.svc.cluster.local")
    assert doc["status"] == "NXDOMAIN" and not doc["found"]
    assert doc["why"] == [
        "shop/gone is headless and has no ready endpoint (1 not ready, publishNotReadyAddresses"
        " is false): its name does not exist, as the DNS specification says"
    ]


def test_dns_external_name_followed_or_not() -> None:
    v = dns_world()
    doc = ask(v, "alias.shop.svc.cluster.local")
    assert doc["records"] == [
        "alias.shop.svc.cluster.local. 5 CNAME web.shop.svc.cluster.local.",
        "web.shop.svc.cluster.local. 5 A 127.77.0.20",
    ]
    assert doc["why"][0].endswith("followed, since it is inside cluster.local")
    doc = ask(v, "out.shop.svc.cluster.local")
    assert doc["records"] == ["out.shop.svc.cluster.local. 5 CNAME example.com."]
    assert "not followed: it is outside cluster.local" in doc["why"][0]


def test_dns_nxdomain_offers_the_nearest_names() -> None:
    v = dns_world()
    doc = ask(v, "wbe.shop.svc.cluster.local")
    assert doc["status"] == "NXDOMAIN" and doc["why"] == ["no Service shop/wbe"]
    assert doc["candidates"][0] == "web.shop.svc.cluster.local"
    doc = ask(v, "web.sohp.svc.cluster.local")
    assert doc["candidates"][0] == "web.shop.svc.cluster.local"
    doc = ask(v, "x.db.shop.svc.cluster.local")
    assert doc["why"] == ["no published endpoint of shop/db is named x (a hostname, or the"
                          " dashed address)"]  # fmt: skip
    doc = ask(v, "example.org")
    assert doc["status"] == "not ours" and not doc["found"]


# -- the admin endpoint, the text ------------------------------------------------------------


def test_admin_endpoint_answers_json_text_and_400() -> None:
    v = shop()
    handle = explain_handler(v.dp)
    r = handle(Request("GET", "/debug/explain", {"target": "http://shop.example/api/v1",
                                                 "header": "a: 1\nb: 2"}))  # fmt: skip
    doc = json.loads(r.body)
    assert r.status == 200 and doc["match"]["object"] == "default/exact"
    assert doc["request"]["headers"] == ["a: 1", "b: 2"]
    r = handle(Request("GET", "/debug/explain", {"target": "10.0.0.1:99999"}))
    assert r.status == 400 and "out of range" in json.loads(r.body)["error"]
    r = handle(Request("GET", "/debug/explain", {"target": "shop.svc.cluster.local",
                                                 "format": "text"}))  # fmt: skip
    assert r.body.decode().startswith("shop.svc.cluster.local A\nanswer:")


def test_views_catch_up_with_changes_when_no_plane_runs() -> None:
    v = shop()
    assert ask(v, "http://new.example/")["match"]["object"] == "default/wild"
    assert ask(v, "new2.default.svc.cluster.local")["status"] == "NXDOMAIN"
    v.dp.apply(ingress("new", "new.example", [("/", "Prefix", "api")]))
    v.dp.apply(service("new2", clusterIP="127.77.0.99"))
    assert ask(v, "http://new.example/")["match"]["object"] == "default/new"
    assert ask(v, "new2.default.svc.cluster.local")["status"] == "NOERROR"


# -- the command ---------------------------------------------------------------------------


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netplane", "explain", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )  # fmt: skip


def test_command_offline_from_manifests() -> None:
    p = run("http://web.demo.localhost/api", "-f", "examples/demo")
    assert p.returncode == 0, p.stderr
    assert "matched:   Ingress demo/demo rule 0 path 1: Prefix /api" in p.stdout
    p = run("nothere.demo.svc.cluster.local", "-f", "examples/demo", "-o", "json")
    assert p.returncode == 1 and json.loads(p.stdout)["status"] == "NXDOMAIN"
    p = run("10.0.0.1:0", "-f", "examples/demo")
    assert p.returncode == 2 and "out of range" in p.stderr


@pytest.mark.e2e
def test_command_against_a_running_demo(tmp_path: Path) -> None:
    from netplane.testing.process import Netplane

    np = Netplane("demo", workdir=tmp_path)
    np.start()
    try:
        admin = ["--admin", np.admin or ""]
        p = run("http://web.demo.localhost/api", *admin)
        assert p.returncode == 0, p.stderr
        out = p.stdout
        assert "answer:    demo/api (Ingress demo/demo rule 0): 1 endpoint" in out
        assert "matched:   Ingress demo/demo rule 0 path 1: Prefix /api" in out
        assert "      matches too, but the longer path /api wins" in out
        assert "  - 127.0.2.2:18081  terminating, serving  node local" in out

        p = run("127.0.0.1:30080/tcp", *admin)
        assert p.returncode == 0, p.stderr
        assert "frontend:  127.0.0.1:30080/TCP NodePort: external traffic" in p.stdout
        assert "order:     127.0.2.1:18081" in p.stdout

        p = run("db.demo.svc.cluster.local", *admin)
        assert p.returncode == 0, p.stderr
        assert "db.demo.svc.cluster.local. 5       IN      A       127.0.4.1" in p.stdout
        assert "headless (clusterIP: None)" in p.stdout

        p = run("http://web.demo.localhost:10088/", "-H", "x-version: v2", *admin)
        assert p.returncode == 0, p.stderr
        assert "HTTPRoute demo/demo rule 0 match 0" in p.stdout
        for text in (out, p.stdout):
            assert max(len(line) for line in text.splitlines()) <= 80
    finally:
        np.stop()


def test_problems_of_what_would_have_served_the_target_are_part_of_the_answer() -> None:
    """An Ingress for the host naming a missing IngressClass, and an Ingress backend naming
    a port the Service lacks: the answer says so, as /debug/state's problems do."""
    lost = ingress("lost", "shop.example", [("/", "Prefix", "web")])
    lost["spec"]["ingressClassName"] = "nginx-typo"
    wrong_port = ingress("wrong", "api.example", [("/", "Prefix", "web")])
    wrong_port["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] = {
        "number": 9999
    }
    v = views(INGRESS_CLASS, service("web"), slice_("web", [ep("10.244.0.1")]), lost, wrong_port,
              ingress_http=Listen("127.0.0.1", 0))  # fmt: skip
    doc = ask(v, "http://shop.example/")
    assert any("Ingress default/lost" in p and "nginx-typo" in p for p in doc["problems"])
    assert "problem:" in render(doc)
    doc = ask(v, "http://api.example/")
    assert any("Ingress default/wrong" in p for p in doc["problems"]), doc["problems"]
    # the Service's own address: the Ingress that names a port it lacks concerns it too
    ip = v.table.get("default", "web").service.cluster_ips[0]
    assert any("Ingress default/wrong" in p for p in ask(v, f"{ip}:80/tcp")["problems"])
    # a target nothing concerns has none
    assert ask(v, "http://other.example/")["problems"] == []
