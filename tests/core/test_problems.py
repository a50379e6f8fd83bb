"""Problems: every refused or ignored object, once in the log, in /debug/state and the metrics.

The unit tests cover the sans-IO parts (the book, the Ingress checks, the
"which problems concern this" question). The rest runs a Dataplane over a
manifest directory, or over the fake API server, and looks where a user
looks: the log lines (each said once), ``/debug/state``'s ``problems`` and
``rejected``, and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from ingress_world import CIDR, backend, ingress, ingress_class, path, secret, service
from netplane.ingress.problems import IngressChecker
from prometheus_client.parser import text_string_to_metric_families

import netplane
from netplane.allocations import Allocations
from netplane.config import Config, Listen
from netplane.events import WatchEvent
from netplane.model import ObjectKey, parse_object
from netplane.problems import Problem, ProblemBook, concerning
from netplane.sources.kube import Backoff, KubeSource
from netplane.sources.manifests import ManifestSource
from netplane.state import ClusterState
from netplane.testing.fakekube import FakeKube

WAIT = 5.0
POLL = 0.05
CA = trustme.CA()
A = CA.issue_cert("a.example")
B = CA.issue_cert("b.example")


# -- the book and the question explain asks ----------------------------------------


def problem(name: str, code: str = "invalid", **kw: Any) -> Problem:
    return Problem(code, "bad", ObjectKey("Service", "shop", name), field="spec.x", **kw)


def test_the_book_says_what_is_new_and_what_is_gone():
    book = ProblemBook()
    new, gone = book.replace("state", [problem("a"), problem("b")])
    assert [p.ref for p in new] == ["Service shop/a", "Service shop/b"] and gone == []
    # Said again, nothing is new: this is what keeps a problem to one log line.
    assert book.replace("state", [problem("a"), problem("b")]) == ([], [])
    new, gone = book.replace("state", [problem("b"), problem("c")])
    assert [p.ref for p in new] == ["Service shop/c"]
    assert [p.ref for p in gone] == ["Service shop/a"]
    book.replace("kube", [problem("d")], scope="Service shop/d")
    book.replace("kube", [problem("e", "rejected")], scope="Service shop/e")
    book.replace("kube", [], scope="Service shop/d")  # a good version came
    assert [p.ref for p in book] == ["Service shop/b", "Service shop/c", "Service shop/e"]
    assert book.counts() == {("Service", "invalid"): 2, ("Service", "rejected"): 1}
    assert [p.ref for p in book.clear("kube")] == ["Service shop/e"]
    assert len(book) == 2


def test_a_problem_is_one_line_with_its_place():
    p = problem("web").located("m/web.yaml", 12)
    assert str(p) == "m/web.yaml:12: Service shop/web: spec.x: bad"
    assert p.to_dict() == {
        "kind": "Service",
        "reason": "invalid",
        "message": "m/web.yaml:12: Service shop/web: spec.x: bad",
        "namespace": "shop",
        "name": "web",
        "field": "spec.x",
        "path": "m/web.yaml",
        "line": 12,
    }
    whole_file = Problem("unreadable", "found character '\\t'\nthat cannot start", path="m/x.yaml")
    assert str(whole_file) == "m/x.yaml: found character '\\t' that cannot start"
    assert whole_file.kind == ""


def test_which_problems_concern_a_host_a_service_or_an_object():
    wild = Problem("tls", "x", ObjectKey("Secret", "shop", "w"), hosts=("*.shop.test",))
    exact = Problem(
        "backend-not-found",
        "y",
        ObjectKey("Ingress", "shop", "i"),
        hosts=("a.shop.test",),
        services=(("shop", "api"),),
    )
    anyhost = Problem("no-ingress-class", "z", ObjectKey("Ingress", "shop", "j"), hosts=("",))
    svc = problem("api", "rejected", services=(("shop", "api"),))
    everything = [wild, exact, anyhost, svc]
    assert concerning(everything, host="A.shop.test.") == [wild, exact, anyhost]
    assert concerning(everything, host="b.a.shop.test") == [anyhost]  # one label only
    assert concerning(everything, host="shop.test") == [anyhost]
    assert concerning(everything, service=("shop", "api")) == [exact, svc]
    assert concerning(everything, key=ObjectKey("Secret", "shop", "w")) == [wild]


def test_the_state_logs_a_refused_service_once_however_often_it_is_retried(caplog):
    caplog.set_level(logging.WARNING, "netplane.state")
    state = state_of(service("one", ip="10.96.0.10"))
    twin = parse_object(service("two", ip="10.96.0.10"))
    assert state.apply(WatchEvent.upsert(twin)).error is not None
    for i in range(3):  # each admitted Service retries the refused one
        state.apply(WatchEvent.upsert(parse_object(service(f"more{i}"))))
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == (
        "rejected Service default/two: spec.clusterIP: 10.96.0.10 is already allocated to"
        " Service default/one"
    )


# -- what the ingress would not serve ---------------------------------------------


def state_of(*raws: dict) -> ClusterState:
    state = ClusterState(Allocations([CIDR]))
    for raw in raws:
        obj = parse_object(raw)
        assert obj is not None
        assert state.apply(WatchEvent.upsert(obj)).error is None
    return state


def lines(state: ClusterState, **kw: Any) -> list[str]:
    return [str(p) for p in IngressChecker(**kw).check(state).problems]


def pems(cert: trustme.LeafCert) -> tuple[bytes, bytes]:
    return cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes()


def test_an_ingress_naming_a_missing_ingress_class_is_a_problem_another_controllers_is_not():
    web = [("a.example", [path("/", "web")])]
    state = state_of(
        service("web"),
        ingress_class("nginx", controller="k8s.io/ingress-nginx"),
        ingress("lost", web, cls="nope"),
        ingress("ours-unmade", web, cls="netplane"),  # our name, but no IngressClass object
        ingress("theirs", web, cls="nginx"),
        ingress("legacy", web, cls=None, annotations={"kubernetes.io/ingress.class": "traefik"}),
        ingress("unclassed", web, cls=None),
    )
    diagnosis = IngressChecker().check(state)
    assert [str(p) for p in diagnosis.problems] == [
        "Ingress default/lost: spec.ingressClassName: IngressClass nope does not exist;"
        " no controller serves this Ingress",
        "Ingress default/ours-unmade: spec.ingressClassName: IngressClass netplane does not"
        " exist; no controller serves this Ingress (create it, with spec.controller:"
        " netplane.io/ingress, to serve it)",
    ]
    assert {p.code for p in diagnosis.problems} == {"no-ingress-class"}
    assert diagnosis.problems[0].hosts == ("a.example",)
    assert diagnosis.problems[0].services == (("default", "web"),)
    # Another controller's: a debug line each, not a problem.
    assert diagnosis.ignored == [
        "Ingress default/legacy: kubernetes.io/ingress.class traefik is not ours",
        "Ingress default/theirs: IngressClass nginx is k8s.io/ingress-nginx's",
        "Ingress default/unclassed: no IngressClass, and none of ours is the default",
    ]


def test_backends_naming_a_missing_service_or_port():
    state = state_of(
        ingress_class("netplane"),
        service("web", [("http", 80)]),
        ingress(
            "shop",
            [("a.example", [path("/", "gone"), path("/x", "web", port=8080), path("/y", "web")])],
            default=backend("web", "admin"),
        ),
        ingress("named", [("", [path("/", "web", port="http")])]),  # fine
    )
    assert lines(state) == [
        "Ingress default/shop: spec.rules[0].http.paths[0].backend.service.name:"
        " Service default/gone does not exist; host a.example path / answers 503",
        "Ingress default/shop: spec.rules[0].http.paths[1].backend.service.port:"
        " Service default/web has no TCP port 8080; host a.example path /x answers 503",
        "Ingress default/shop: spec.defaultBackend.service.port: Service default/web has no"
        " TCP port 'admin'; its default backend answers 503",
    ]


def test_tls_secrets_missing_or_whose_certificate_does_not_match_its_key():
    cert_a, key_a = pems(A)
    _, key_b = pems(B)
    tls = [{"hosts": ["a.example"], "secretName": "a"}]
    state = state_of(
        ingress_class("netplane"),
        service("web"),
        secret("a", cert_a, key_b),  # another certificate's key
        secret("good", cert_a, key_a),
        ingress("a", [("a.example", [path("/", "web")])], tls=tls),
        ingress(
            "b",
            [("b.example", [path("/", "web")])],
            tls=[{"hosts": ["b.example"], "secretName": "nothere"}],
        ),
        ingress(
            "c",
            [("a.example", [path("/c", "web")])],
            tls=[{"hosts": ["a.example"], "secretName": "good"}],
        ),
    )
    found = IngressChecker(default_secret=("default", "fallback")).check(state).problems
    assert [str(p) for p in found] == [
        "Ingress default/b: spec.tls[0].secretName: Secret default/nothere does not exist"
        " (or is not of type kubernetes.io/tls); the default certificate serves b.example",
        "Secret default/a: tls.key does not match the first certificate in tls.crt;"
        " the default certificate serves a.example (Ingress default/a)",
        "Secret default/fallback: the --default-certificate Secret does not exist (or is not"
        " of type kubernetes.io/tls); netplane's own default certificate serves",
    ]
    assert found[1].at == "data[tls.key]" and found[1].hosts == ("a.example",)
    for p in found:
        assert "PRIVATE KEY" not in str(p)


# -- a Dataplane over manifests: the log, /debug/state, /metrics --------------------------

SERVICES = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 127.77.0.10
  ports:
    - name: http
      port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: twin
  namespace: shop
spec:
  clusterIP: 127.77.0.10
  ports:
    - name: http
      port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: bad
  namespace: shop
spec:
  ports:
    - name: http
      port: 70000
"""

INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: lost
  namespace: shop
spec:
  ingressClassName: nginx
  rules:
    - host: lost.example
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: web
                port: {number: 80}
"""

INGRESS_CLASS = """\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx
spec:
  controller: k8s.io/ingress-nginx
"""


def write(path: Path, text: str) -> None:
    """By rename, as editors and ConfigMap updates do: a poll never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    found = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return found[nth - 1]


def ingress_config(**kw: Any) -> Config:
    """The ingress on (so Ingresses are read), nothing else listening."""
    base: dict[str, Any] = {
        "mode": "local",
        "admin": None,
        "proxy": False,
        "dns": None,
        "ingress_http": Listen("127.0.0.1", 0),
        "ingress_https": None,
    }
    return Config(**{**base, **kw})


async def until(what: str, pred: Callable[[], Any], timeout: float = WAIT) -> Any:
    async with asyncio.timeout(timeout):
        while not (got := pred()):
            await asyncio.sleep(0.01)
    assert got, what
    return got


def metrics(dp: netplane.Dataplane) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(dp.metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def said(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


@pytest.fixture
async def manifests(tmp_path: Path):
    """(the manifest directory, a started Dataplane reading it with the ingress on)."""
    started: list[netplane.Dataplane] = []
    m = tmp_path / "m"
    m.mkdir()

    async def start(config: Config | None = None) -> netplane.Dataplane:
        source = ManifestSource([str(m)], poll_interval=POLL)
        dp = netplane.Dataplane(config or ingress_config(), sources=[source], serve=False)
        await dp.start()
        started.append(dp)
        await asyncio.wait_for(dp.wait_ready(), WAIT)
        return dp

    yield m, start
    for dp in started:
        await dp.stop(0)


async def test_every_rejection_is_in_debug_state_metrics_and_the_log_once(manifests, caplog):
    caplog.set_level(logging.INFO)
    m, start = manifests
    services = m / "services.yaml"
    write(services, SERVICES)
    dp = await start()
    twin_at = f"{services}:{line_of(SERVICES, 'clusterIP', 2)}"
    bad_at = f"{services}:{line_of(SERVICES, '70000')}"

    state = dp.debug_state()
    assert [p["message"] for p in state["problems"]] == [
        f"{twin_at}: Service shop/twin: spec.clusterIP: 127.77.0.10 is already allocated to"
        " Service shop/web",
        f"{bad_at}: Service shop/bad: spec.ports[0].port: 70000 out of range (1-65535)",
    ]
    assert [(p["reason"], p["path"], p["field"]) for p in state["problems"]] == [
        ("rejected", str(services), "spec.clusterIP"),
        ("invalid", str(services), "spec.ports[0].port"),
    ]
    # The older list, now with the field-level rejection too.
    assert state["rejected"] == {
        "Service shop/bad": "Service shop/bad: spec.ports[0].port: 70000 out of range (1-65535)",
        "Service shop/twin": "Service shop/twin: spec.clusterIP: 127.77.0.10 is already"
        " allocated to Service shop/web",
    }
    assert dp.debug_state(summary=True)["problems"] == 2
    got = metrics(dp)
    service = (("kind", "Service"),)
    assert got[("netplane_rejected_objects_current", service)] == 2
    assert got[("netplane_rejected_objects_total", service)] == 2
    assert got[("netplane_problems", (("kind", "Service"), ("reason", "invalid")))] == 1
    assert got[("netplane_problems", (("kind", "Service"), ("reason", "rejected")))] == 1

    # More changes, each a new table sync (and a retry of the refused twin): nothing said again.
    for port in (81, 82):
        write(services, SERVICES.replace("port: 80\n", f"port: {port}\n", 1))
        await until("the new port", lambda p=port: dp.table.get("shop", "web").ports[0].port == p)
    assert len(said(caplog, "Service shop/twin: spec.clusterIP")) == 1
    assert len(said(caplog, "Service shop/bad: spec.ports[0].port")) == 1
    # The cluster-wide rejection carries its file and line, as a field error does.
    assert said(caplog, "Service shop/twin")[0].startswith(f"{twin_at}: ")
    assert said(caplog, "Service shop/bad")[0].startswith(f"{bad_at}: ")
    assert metrics(dp)[("netplane_rejected_objects_total", service)] == 2

    # Fixed: gone from every list.
    write(services, SERVICES.split("---\n")[0])
    await until("no problem left", lambda: dp.debug_state()["problems"] == [])
    assert dp.debug_state()["rejected"] == {}
    assert metrics(dp).get(("netplane_rejected_objects_current", service), 0) == 0
    assert not any(name == "netplane_problems" for name, _ in metrics(dp))


async def test_an_ingress_with_a_missing_ingress_class_is_said_once_and_goes_when_it_comes(
    manifests, caplog
):
    caplog.set_level(logging.DEBUG, "netplane.problems")
    m, start = manifests
    write(m / "services.yaml", SERVICES.split("---\n")[0])
    write(m / "ingress.yaml", INGRESS)
    dp = await start()
    at = f"{m / 'ingress.yaml'}:{line_of(INGRESS, 'ingressClassName')}"
    message = (
        f"{at}: Ingress shop/lost: spec.ingressClassName: IngressClass nginx does not exist;"
        " no controller serves this Ingress"
    )
    (entry,) = dp.debug_state()["problems"]
    assert entry == {
        "kind": "Ingress",
        "reason": "no-ingress-class",
        "message": message,
        "namespace": "shop",
        "name": "lost",
        "field": "spec.ingressClassName",
        "path": str(m / "ingress.yaml"),
        "line": int(at.rsplit(":", 1)[1]),
        "hosts": ["lost.example"],
        "services": ["shop/web"],
    }
    label = (("kind", "Ingress"), ("reason", "no-ingress-class"))
    assert metrics(dp)[("netplane_problems", label)] == 1
    # what `netplane explain lost.example` will ask
    assert [str(p) for p in dp.problems.concerning(host="lost.example")] == [message]
    assert [str(p) for p in dp.problems.concerning(service=("shop", "web"))] == [message]

    # Service changes make the ingress look again: it says nothing new.
    write(m / "services.yaml", SERVICES.split("---\n")[0].replace("port: 80", "port: 81"))
    await until("port 81", lambda: dp.table.get("shop", "web").ports[0].port == 81)
    assert [r.levelname for r in caplog.records if r.getMessage() == message] == ["WARNING"]

    # The IngressClass appears, for another controller: no longer a problem, a debug line.
    write(m / "class.yaml", INGRESS_CLASS)
    await until("no problem left", lambda: dp.debug_state()["problems"] == [])
    assert (label, 1) not in [(k[1], v) for k, v in metrics(dp).items()]
    (debug,) = [r for r in caplog.records if "ignored Ingress shop/lost" in r.getMessage()]
    assert debug.levelname == "DEBUG"
    assert debug.getMessage() == (
        "ignored Ingress shop/lost: IngressClass nginx is k8s.io/ingress-nginx's"
    )


async def test_a_tls_secret_whose_key_does_not_match_is_said_once(manifests, caplog):
    caplog.set_level(logging.DEBUG)
    m, start = manifests
    cert_a, _ = pems(A)
    _, key_b = pems(B)
    objects = [
        ingress_class("netplane"),
        service("web"),
        secret("a", cert_a, key_b),
        ingress(
            "a",
            [("a.example", [path("/", "web")])],
            tls=[{"hosts": ["a.example"], "secretName": "a"}],
        ),
    ]
    write(m / "all.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    dp = await start(ingress_config(ingress_https=Listen("127.0.0.1", 0)))
    (entry,) = dp.debug_state()["problems"]
    assert entry["reason"] == "tls" and entry["kind"] == "Secret" and entry["name"] == "a"
    assert entry["message"].endswith(
        "Secret default/a: tls.key does not match the first certificate in tls.crt;"
        " the default certificate serves a.example (Ingress default/a)"
    )
    assert entry["path"] == str(m / "all.json")
    lines = said(caplog, "tls.key does not match")
    assert [r.levelname for r in caplog.records if "tls.key does not match" in r.getMessage()] == [
        "WARNING"
    ]
    assert lines == [entry["message"]]


async def test_a_live_reload_logs_one_summary_line(manifests, caplog):
    caplog.set_level(logging.INFO, "netplane.sources.manifests")
    m, start = manifests
    services = m / "services.yaml"
    write(services, SERVICES.split("---\n")[0])
    dp = await start()
    assert said(caplog, "changed,") == []  # not the initial list

    two = SERVICES.split("---\n")[0]
    write(
        services,
        two.replace("port: 80", "port: 81")
        + "---\n"
        + two.replace("name: web", "name: api").replace(
            "clusterIP: 127.77.0.10", "clusterIP: 127.77.0.11"
        ),
    )
    await until("the summary", lambda: said(caplog, "changed,"))
    assert said(caplog, "changed,") == [f"manifests: 1 changed, 1 added, 0 deleted ({services})"]

    caplog.clear()
    dp.reload()  # what SIGHUP does
    await until("the summary", lambda: said(caplog, "changed,"))
    assert said(caplog, "changed,") == [
        "manifests: re-read 1 file(s) on request: 0 changed, 0 added, 0 deleted"
    ]
    await asyncio.sleep(5 * POLL)
    assert len(said(caplog, "changed,")) == 1  # polls that find nothing say nothing


async def test_problems_over_http_as_a_user_reads_them(manifests):
    m, start = manifests
    write(m / "services.yaml", SERVICES)
    dp = await start(ingress_config(admin=Listen("127.0.0.1", 0)))
    base = f"http://127.0.0.1:{dp.admin.port}"

    def get(path: str) -> str:
        with urllib.request.urlopen(base + path, timeout=WAIT) as r:
            return r.read().decode()

    state = json.loads(await asyncio.to_thread(get, "/debug/state"))
    assert [p["reason"] for p in state["problems"]] == ["rejected", "invalid"]
    summary = json.loads(await asyncio.to_thread(get, "/debug/state?summary=1"))
    assert (summary["rejected"], summary["problems"]) == (2, 2)
    text = await asyncio.to_thread(get, "/metrics")
    assert 'netplane_problems{kind="Service",reason="invalid"} 1.0' in text
    assert 'netplane_rejected_objects_current{kind="Service"} 2.0' in text


# -- the API source ------------------------------------------------------------------


def kube_service(name: str, port: int) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": port}]},
    }


async def test_an_object_the_api_source_rejects_is_a_problem_until_a_good_version_comes(caplog):
    caplog.set_level(logging.WARNING)
    fast = Backoff(initial=0.01, maximum=0.05, jitter=0.5)
    async with FakeKube() as fake:
        fake.apply(kube_service("web", 80))
        fake.apply(kube_service("bad", 70000))
        source = KubeSource(fake.cluster_config(), resources=["Service"], backoff=fast)
        async with netplane.Dataplane(ingress_config(ingress_http=None), sources=[source]) as dp:
            await asyncio.wait_for(dp.wait_ready(), WAIT)
            (entry,) = dp.debug_state()["problems"]
            assert entry["message"] == (
                "Service default/bad: spec.ports[0].port: 70000 out of range (1-65535)"
            )
            assert (entry["reason"], "path" in entry) == ("invalid", False)
            service = (("kind", "Service"),)
            assert metrics(dp)[("netplane_rejected_objects_current", service)] == 1
            assert metrics(dp)[("netplane_rejected_objects_total", service)] == 1
            assert len(said(caplog, "Service default/bad")) == 1

            fake.apply(kube_service("bad", 8080))
            await until("the good version", lambda: dp.table.get("default", "bad"))
            assert dp.debug_state()["problems"] == [] and dp.debug_state()["rejected"] == {}
            assert metrics(dp).get(("netplane_rejected_objects_current", service), 0) == 0
