"""The dashboard's document (``/ui/data``) and its routes on the admin server.

:func:`netplane.ui_data.build` is pure: most tests here feed it a real
Dataplane's table and state (or plain dicts) and metric families made for
the test. One test runs a Dataplane with its admin server, ingress and DNS
on free loopback ports and reads every ``/ui`` route over HTTP, as the page
does. The page's own files are checked for what would let a string from the
cluster become markup, and for anything fetched from another origin.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trustme
from ingress_world import endpoints, ingress, path, secret, service  # tests/ingress_world.py
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from netplane import Config, Dataplane
from netplane.config import Listen
from netplane.ui import static_file
from netplane.ui_data import LIMITS, Limits, build, quantile

ROOT = Path(__file__).resolve().parents[2]
CLASS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "IngressClass",
    "metadata": {"name": "netplane"},
    "spec": {"controller": "netplane.io/ingress"},
}


def quiet(**kw: Any) -> Config:
    base: dict[str, Any] = {
        "mode": "local", "admin": None, "proxy": False, "ingress_http": None,
        "ingress_https": None, "dns": None, "ingress_access_log": None,
    }  # fmt: skip
    return Config(**{**base, **kw})


def l4_families(entries: list[tuple[str, str, str, str, int]]) -> list[Any]:
    """The proxy's per-port families, with ``n`` connections per (ns, svc, port, proto, n)."""
    labels = ["namespace", "service", "port", "protocol"]
    opened = CounterMetricFamily("netplane_l4_connections", "", labels=labels)
    active = GaugeMetricFamily("netplane_l4_connections_active", "", labels=labels)
    moved = CounterMetricFamily("netplane_l4_bytes", "", labels=[*labels, "direction"])
    refused = CounterMetricFamily("netplane_l4_no_endpoint", "", labels=labels)
    for ns, name, port, proto, n in entries:
        opened.add_metric([ns, name, port, proto], n)
        active.add_metric([ns, name, port, proto], 1)
        moved.add_metric([ns, name, port, proto, "to_endpoint"], 10 * n)
        moved.add_metric([ns, name, port, proto, "to_client"], 20 * n)
        refused.add_metric([ns, name, port, proto], 0)
    return [opened, active, moved, refused]


# -- percentiles -------------------------------------------------------------------------


def test_quantile_interpolates_within_buckets_as_prometheus_does() -> None:
    inf = float("inf")
    # 10 observations: 4 under 5 ms, 6 more under 10 ms
    buckets = {0.005: 4.0, 0.01: 10.0, 0.025: 10.0, inf: 10.0}
    assert quantile(0.5, buckets) == 0.005 + 0.005 * (5 - 4) / 6
    assert quantile(0.2, buckets) == 0.005 * 2 / 4  # the first bucket starts at 0
    assert quantile(0.99, buckets) is not None and 0.0099 < quantile(0.99, buckets) <= 0.01
    # a rank in +Inf: the highest finite bound
    assert quantile(0.99, {0.005: 1.0, 0.01: 1.0, inf: 100.0}) == 0.01
    assert quantile(0.5, {0.005: 0.0, inf: 0.0}) is None
    assert quantile(0.5, {}) is None


# -- a small cluster over HTTP -------------------------------------------------------------


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


async def test_the_ui_routes_serve_the_page_and_a_document_of_the_cluster() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("shop.example")
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    key = leaf.private_key_pem.bytes()
    config = quiet(
        admin=Listen("127.0.0.1", 0),
        ingress_http=Listen("127.0.0.1", 0),
        ingress_https=Listen("127.0.0.1", 0),
        dns=Listen("127.0.0.1", 0),
        dns_upstreams=(("127.0.0.1", 9),),
    )
    dp = Dataplane(config)
    objects = [
        CLASS,
        service("web", [("http", 80)]),
        # 127.0.0.1:9 (discard) refuses: the route's request gets a 502, counted as 5xx
        endpoints("web", ["127.0.0.1"], [("http", 9)], ready=True),
        service("api", [("http", 81)]),
        secret("shop-tls", chain, key),
        ingress(
            "shop",
            [("shop.example", [path("/", "web"), path("/api", "api", port=81)])],
            tls=[{"hosts": ["shop.example"], "secretName": "shop-tls"}],
        ),
        # names a Service that does not exist: a problem
        ingress("broken", [("broken.example", [path("/", "nothere")])]),
    ]
    for obj in objects:
        dp.apply(obj)
    async with dp:
        admin = dp.admin.port
        https_port = int(
            next(
                a for a in dp.planes["ingress"].debug_state()["listeners"] if "https://" in a
            ).rsplit(":", 1)[1]
        )

        def traffic() -> int:
            """One HTTPS request for shop.example (HTTP would be redirected); its status."""
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            raw = socket.create_connection(("127.0.0.1", https_port), timeout=5)
            with ctx.wrap_socket(raw, server_hostname="shop.example") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            return int(data.split(b" ", 2)[1])

        assert await asyncio.to_thread(traffic) == 502  # the endpoint refuses
        replies = {
            p: await asyncio.to_thread(_get, admin, p)
            for p in ("/ui", "/ui/", "/ui/ui.js", "/ui/ui.css", "/ui/icon.svg", "/ui/data")
        }
        post = await asyncio.to_thread(_get, admin, "/ui/data", "POST")
        head = await asyncio.to_thread(_get, admin, "/ui/data?routes=api", "HEAD")
        filtered = await asyncio.to_thread(_get, admin, "/ui/data?routes=%2Fapi&services=api")

    types = {p: r[1]["content-type"] for p, r in replies.items()}
    assert types == {
        "/ui": "text/html; charset=utf-8",
        "/ui/": "text/html; charset=utf-8",
        "/ui/ui.js": "text/javascript; charset=utf-8",
        "/ui/ui.css": "text/css; charset=utf-8",
        "/ui/icon.svg": "image/svg+xml",
        "/ui/data": "application/json",
    }
    assert all(r[0] == 200 for r in replies.values())
    assert replies["/ui"][2] == static_file("index.html")
    csp = replies["/ui"][1]["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert replies["/ui/data"][1]["cache-control"] == "no-store"
    # read-only: nothing answers a POST
    assert post[0] == 405 and post[1]["allow"] == "GET, HEAD"
    assert head[0] == 200 and head[2] == b""

    body = replies["/ui/data"][2]
    # no Secret material anywhere: not the key, not the certificate's PEM
    assert key not in body and b"PRIVATE KEY" not in body and b"BEGIN CERTIFICATE" not in body
    doc = json.loads(body)
    assert doc["schema"] == 1 and doc["ready"] is True
    assert set(doc) == {"schema", "version", "ready", "uptime", "summary", "services", "routes",
                        "dns", "problems"}  # fmt: skip

    summary = doc["summary"]
    assert summary["counts"]["Service"] == 2 and summary["counts"]["Ingress"] == 2
    assert {lst["plane"] for lst in summary["listeners"]} == {"ingress", "dns"}
    assert summary["workers"] is None  # one process
    assert summary["http"]["requests"] == 1

    services = doc["services"]
    assert (services["total"], services["matched"]) == (2, 2)
    web = next(r for r in services["rows"] if r["name"] == "web")
    (port,) = web["ports"]
    assert port["endpoints"]["total"] == 1 and port["endpoints"]["ready"] == 1
    assert port["endpoints"]["list"][0]["address"] == "127.0.0.1:9"
    assert port["counters"] is None  # no L4 proxy in this dataplane
    assert port["frontends"][0]["kind"] == "ClusterIP"

    rows = {(r["host"], r["paths"][0]["path"]): r for r in doc["routes"]["rows"] if r["paths"]}
    root = rows[("shop.example", "/")]
    assert root["kind"] == "Ingress" and root["route"] == "default/shop"
    assert root["backends"] == ["default/web:80"] and root["tls"] is True
    cert = root["certificate"]
    assert cert["subject"] and cert["source"] == "Secret default/shop-tls"
    assert cert["daysLeft"] is not None and cert["daysLeft"] > 300  # trustme: about a year
    assert root["stats"]["requests"] == 1 and root["stats"]["classes"] == {"5xx": 1}
    assert root["stats"]["p50"] is not None and root["stats"]["p99"] >= root["stats"]["p50"]
    assert rows[("shop.example", "/api")]["stats"]["requests"] == 0

    dns = doc["dns"]
    assert dns["listen"].startswith("127.0.0.1:") and dns["upstreams"]["addresses"] == [
        "127.0.0.1:9"
    ]
    assert dns["zone"]["services"] == 2

    problems = doc["problems"]
    assert any(
        p["reason"] == "backend-not-found" and p["object"] == "default/broken"
        for p in problems["rows"]
    ), problems
    assert problems["failedSyncs"] == []

    fdoc = json.loads(filtered[2])
    assert fdoc["routes"]["filter"] == "/api"
    assert [r["paths"][0]["path"] for r in fdoc["routes"]["rows"]] == ["/api"]
    assert [r["name"] for r in fdoc["services"]["rows"]] == ["api"]
    assert fdoc["services"]["total"] == 2


# -- bounded at 10k services ----------------------------------------------------------------


async def test_the_document_stays_bounded_at_10k_services() -> None:
    n = 10_000
    async with Dataplane(quiet()) as dp:
        with dp.batch():
            for i in range(n):
                name = f"svc-{i:05d}"
                dp.apply(
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "metadata": {"name": name, "namespace": f"ns-{i % 50}"},
                        "spec": {"ports": [{"name": "http", "port": 80}]},
                    }
                )
            # one service with many ports and endpoints: cut per service too
            dp.apply(service("wide", [(f"p{i}", 1000 + i) for i in range(40)]))
            slice_ = endpoints(
                "wide", [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(100)],
                [(f"p{i}", 2000 + i) for i in range(40)], ready=True,
            )  # fmt: skip
            dp.apply(slice_)
        assert len(dp.table) == n + 1
        state = dp.debug_state(summary=True)
        families = l4_families(
            [(f"ns-{i % 50}", f"svc-{i:05d}", "http", "TCP", i) for i in range(n)]
        )
        problems = [
            {"kind": "Service", "namespace": "ns", "name": f"bad-{i}", "reason": "invalid",
             "message": "x" * 2000}
            for i in range(n)
        ]  # fmt: skip
        # the Ingress side: 10k hosts of one path each, as the ingress plane shows them
        state["planes"] = {
            "ingress": {
                "listeners": ["http://127.0.0.1:8080"],
                "routes": {
                    "hosts": {
                        f"h{i}.example": {
                            "tls": False,
                            "defaultBackend": None,
                            "paths": {
                                "/": {"ingress": f"Ingress ns/i{i}", "pathType": "Prefix",
                                      "service": f"ns/s{i}", "port": 80, "endpoints": 1}
                            },
                        }
                        for i in range(n)
                    }
                },
            },
            "proxy": {"listeners": [f"127.77.0.1:{i}/TCP" for i in range(n)]},
        }  # fmt: skip

        started = time.perf_counter()
        doc = build(state, dp.table, families, problems, uptime=5, now=time.time())
        took = time.perf_counter() - started
        body = json.dumps(doc, separators=(",", ":"))

        filtered = build(state, dp.table, families, [], filters={"services": " SVC-07777 "})

    print(f"10k services: {len(body)} bytes in {took * 1000:.0f} ms")
    assert len(body) < 1_000_000
    services = doc["services"]
    assert (services["total"], services["matched"]) == (n + 1, n + 1)
    assert len(services["rows"]) == LIMITS.services
    names = [(r["namespace"], r["name"]) for r in services["rows"]]
    assert names == sorted(names)  # a stable order: pages do not shuffle
    first = next(r for r in services["rows"] if r["name"] == "svc-00000")
    assert first["ports"][0]["counters"]["connections"] >= 0
    assert first["ports"][0]["datapath"] == "userspace"  # a proxy plane, no kernel one

    routes = doc["routes"]
    assert (routes["total"], len(routes["rows"])) == (n, LIMITS.routes)
    assert doc["summary"]["listenersTotal"] == n + 1  # the proxy's and the ingress's
    assert len(doc["summary"]["listeners"]) == LIMITS.listeners
    assert (doc["problems"]["total"], len(doc["problems"]["rows"])) == (n, LIMITS.problems)
    assert all(len(p["message"]) <= 400 for p in doc["problems"]["rows"])

    # a filter reaches past the cut, and the counters of what it finds are there
    (row,) = filtered["services"]["rows"]
    assert (row["name"], filtered["services"]["matched"]) == ("svc-07777", 1)
    counters = row["ports"][0]["counters"]
    assert counters == {"connections": 7777, "active": 1, "connectFailures": 0,
                        "noEndpoint": 0, "bytesIn": 77770, "bytesOut": 155540}  # fmt: skip
    assert row["ports"][0]["datapath"] == "userspace"  # the proxy serves it

    wide = build(state, dp.table, [], [], filters={"services": "default/wide"})
    (w,) = wide["services"]["rows"]
    assert (w["portsTotal"], len(w["ports"])) == (40, LIMITS.ports_per_service)
    ep = w["ports"][0]["endpoints"]
    assert (ep["total"], ep["ready"], len(ep["list"])) == (100, 100, LIMITS.endpoints_per_port)


def test_limits_are_the_callers_to_choose() -> None:
    state = {"rejected": {f"Service ns/s{i}": "clusterIP taken" for i in range(5)}}
    doc = build(state, [], [], None, limits=Limits(problems=2))
    assert (doc["problems"]["total"], len(doc["problems"]["rows"])) == (5, 2)
    # without a problems list, the state's "rejected" is read
    assert doc["problems"]["rows"][0] == {
        "kind": "Service", "object": "ns/s0", "reason": "rejected",
        "message": "Service ns/s0: clusterIP taken", "where": "",
    }  # fmt: skip


# -- nothing secret, nothing but named fields ------------------------------------------------


def test_only_named_fields_are_copied_so_no_secret_can_ride_along() -> None:
    planted = "PLANTED-SECRET-VALUE"
    state = {
        "version": "1",
        "ready": True,
        "sources": {"kube": True},
        "counts": {"Secret": 1},
        "secrets": [{"namespace": "a", "name": "b", "data": planted}],
        "planes": {
            "ingress": {
                "listeners": ["http://127.0.0.1:80", "https://127.0.0.1:443"],
                "token": planted,
                "routes": {
                    "hosts": {
                        "a.example": {
                            "tls": True,
                            "extra": planted,
                            "paths": {
                                "/": {"ingress": "Ingress a/i", "service": "a/s", "port": 80,
                                      "endpoints": 1, "pathType": "Prefix", "key": planted}
                            },
                        }
                    }
                },
                "certificates": {
                    "hosts": {
                        "a.example": {
                            "secret": "a/b",
                            "ingress": "a/i",
                            "certificate": {"subject": "CN=a.example", "dnsNames": ["a.example"],
                                            "notAfter": "2030-01-01T00:00:00+00:00",
                                            "privateKey": planted},
                        }
                    },
                    "default": {"source": "generated", "subject": "CN=default",
                                "notAfter": "2030-01-01T00:00:00+00:00", "key": planted},
                },
            },
            "dns": {"listen": "127.0.0.1:53", "upstreams": ["10.0.0.1:53"], "tsig": planted},
            "workers": [{"index": 0, "pid": 7, "ready": True, "restarts": 0, "env": planted}],
        },
    }  # fmt: skip
    problems = [{"kind": "Secret", "namespace": "a", "name": "b", "reason": "tls",
                 "message": "Secret a/b: tls.key: does not match", "data": planted}]  # fmt: skip
    doc = build(state, [], [], problems, now=time.mktime((2029, 1, 1, 0, 0, 0, 0, 0, -1)))
    text = json.dumps(doc)
    assert planted not in text
    (route,) = doc["routes"]["rows"]
    assert route["certificate"]["subject"] == "CN=a.example"
    assert 364 <= route["certificate"]["daysLeft"] <= 366
    assert doc["summary"]["workers"] == [{"index": 0, "pid": 7, "ready": True, "restarts": 0}]


# -- the page's files -----------------------------------------------------------------------


def test_the_page_renders_text_only_and_loads_nothing_from_elsewhere() -> None:
    js = static_file("ui.js").decode()
    html = static_file("index.html").decode()
    css = static_file("ui.css").decode()
    # Strings reach the DOM through textContent / createTextNode only.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "javascript:"):  # fmt: skip
        assert sink not in js, sink
    assert "textContent" in js and "createTextNode" in js
    # No inline script or style (the CSP forbids them), nothing from another origin.
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/ui/ui.js" defer>']
    assert not re.search(r"\sstyle=|\son\w+=", html)
    for text in (html, css, js):
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), "a remote URL"
        assert "@import" not in text
    # The same-origin JSON and no other endpoint (the page is read-only).
    assert re.findall(r"fetch\(([^,]*),", js) == ['"/ui/data" + (qs ? "?" + qs : "")']
    assert "method:" not in js


def test_the_page_ships_with_the_package() -> None:
    """``pip install .`` copies only what pyproject declares: the package and its files."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "netplane.ui" in tool["packages"]
    patterns = tool["package-data"]["netplane.ui"]
    for f in (ROOT / "netplane" / "ui").iterdir():
        if f.suffix == ".py" or f.name == "__pycache__":
            continue
        assert any(f.match(p) for p in patterns), f"netplane/ui/{f.name} would not be installed"
    for name in ("index.html", "ui.css", "ui.js", "icon.svg"):
        assert static_file(name)
