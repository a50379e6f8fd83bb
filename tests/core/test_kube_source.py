"""KubeSource against the fake API server: sync, updates, reconnects, 410, auth, bad input."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from netplane.events import EventType, Synced, WatchEvent
from netplane.model import ObjectKey
from netplane.sources.kube import Backoff, KubeSource
from netplane.testing.fakekube import FakeKube, Recorder

FAST = Backoff(initial=0.01, maximum=0.05, jitter=0.5)
LOGGER = "netplane.sources.kube"


# -- object factories ----------------------------------------------------------


def svc(
    name: str, ns: str = "default", port: int = 80, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": ns}
    if labels:
        md["labels"] = labels
    return {"kind": "Service", "metadata": md, "spec": {"ports": [{"port": port}]}}


def slice_(name: str, service: str, ip: str = "10.0.0.1") -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }


def ingress(name: str) -> dict[str, Any]:
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    return {
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "rules": [
                {
                    "host": "web.example.test",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
                }
            ]
        },
    }


def ingress_class(name: str) -> dict[str, Any]:
    return {
        "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": "netplane.io/ingress"},
    }


def tls_secret(fake: FakeKube, name: str, type_: str = "kubernetes.io/tls") -> dict[str, Any]:
    leaf = fake.server_cert
    data = {
        "tls.crt": base64.b64encode(leaf.cert_chain_pems[0].bytes()).decode(),
        "tls.key": base64.b64encode(leaf.private_key_pem.bytes()).decode(),
    }
    return {
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": type_,
        "data": data,
    }


def node(name: str) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
    }


def key(kind: str, name: str, ns: str = "default") -> ObjectKey:
    return ObjectKey(kind, ns, name)


# -- helpers -------------------------------------------------------------------


def watch_events(events: list[Any]) -> list[WatchEvent]:
    return [e for e in events if isinstance(e, WatchEvent)]


def synced(events: list[Any]) -> bool:
    return any(isinstance(e, Synced) for e in events)


def seen_rvs(events: list[Any]) -> dict[ObjectKey, list[str]]:
    out: dict[ObjectKey, list[str]] = defaultdict(list)
    for e in watch_events(events):
        out[e.key].append(e.obj.meta.resource_version if e.obj else "?")
    return out


@pytest.fixture
async def fake():
    async with FakeKube() as f:
        yield f


def source(fake: FakeKube, kinds: list[str] | None = None, **kw: Any) -> KubeSource:
    kw.setdefault("backoff", FAST)
    return KubeSource(fake.cluster_config(), resources=kinds or ["Service"], **kw)


# -- initial sync and updates --------------------------------------------------


async def test_initial_sync_emits_every_object_then_one_synced(fake: FakeKube) -> None:
    fake.apply(svc("web"))
    fake.apply(svc("api", ns="team-a"))
    fake.apply(slice_("web-abc", "web"))
    fake.apply(ingress("web"))
    fake.apply(ingress_class("netplane"))
    fake.apply(tls_secret(fake, "web-tls"))
    fake.apply(tls_secret(fake, "registry", type_="Opaque"))  # filtered by the API server
    fake.apply(node("n1"))  # Node not asked for

    async with Recorder(KubeSource(fake.cluster_config(), backoff=FAST)) as rec:
        await rec.wait_for(synced)
        await asyncio.sleep(0.1)  # nothing else may follow
        events = list(rec.events)

    sync_at = next(i for i, e in enumerate(events) if isinstance(e, Synced))
    assert events[sync_at] == Synced("kube")
    assert sum(isinstance(e, Synced) for e in events) == 1
    before = events[:sync_at]
    assert all(isinstance(e, WatchEvent) and e.type is EventType.ADDED for e in before)
    assert all(e.source == "kube" for e in before)
    assert {e.key for e in before} == {
        key("Service", "web"),
        key("Service", "api", "team-a"),
        key("EndpointSlice", "web-abc"),
        key("Ingress", "web"),
        ObjectKey("IngressClass", "", "netplane"),
        key("Secret", "web-tls"),
    }
    secret = next(e.obj for e in before if e.key.kind == "Secret")
    assert secret.cert_pem.startswith(b"-----BEGIN CERTIFICATE")
    assert events[sync_at + 1 :] == []
    paths = {r.path for r in fake.requests}
    assert "/api/v1/nodes" not in paths and "/api/v1/pods" not in paths
    secret_reqs = [r for r in fake.requests if r.path == "/api/v1/secrets"]
    assert secret_reqs and all(
        r.query["fieldSelector"] == "type=kubernetes.io/tls" for r in secret_reqs
    )


async def test_updates_arrive_in_order(fake: FakeKube) -> None:
    fake.apply(svc("web"))
    async with Recorder(source(fake)) as rec:
        await rec.wait_for(synced)
        await fake.wait_watchers(1, "Service")
        fake.apply(svc("web", port=81))
        fake.apply(svc("web", port=82))
        fake.apply(svc("other"))
        fake.apply(svc("web", port=83))
        fake.delete("Service", "default", "web")
        await rec.wait_for(lambda ev: len(watch_events(ev)) >= 6)
        after = watch_events(rec.events)[1:]

    assert [(e.type, e.key.name) for e in after] == [
        (EventType.MODIFIED, "web"),
        (EventType.MODIFIED, "web"),
        (EventType.ADDED, "other"),
        (EventType.MODIFIED, "web"),
        (EventType.DELETED, "web"),
    ]
    assert [e.obj.ports[0].port for e in after[:2]] == [81, 82]
    assert after[3].obj.ports[0].port == 83
    assert after[4].obj is not None and after[4].obj.ports[0].port == 83  # last known object
    rvs = [int(e.obj.meta.resource_version) for e in after[:4]]
    assert rvs == sorted(rvs)


async def test_reconnect_after_restart_loses_and_repeats_nothing(fake: FakeKube) -> None:
    names = ["a", "b", "c"]
    expected: dict[ObjectKey, list[str]] = defaultdict(list)
    for n in names:
        expected[key("Service", n)].append(fake.apply(svc(n))["metadata"]["resourceVersion"])

    async with Recorder(source(fake)) as rec:
        await rec.wait_for(synced)
        for round_ in range(4):
            await fake.wait_watchers(1, "Service")
            for n in names:
                obj = fake.apply(svc(n, port=100 + round_))
                expected[key("Service", n)].append(obj["metadata"]["resourceVersion"])
            if round_ % 2:
                fake.restart()  # mid-watch drop
            else:
                async with fake.outage():  # changes land while the client is away
                    for n in names[:2]:
                        obj = fake.apply(svc(n, port=200 + round_))
                        expected[key("Service", n)].append(obj["metadata"]["resourceVersion"])
                    await asyncio.sleep(0.05)
        total = sum(len(v) for v in expected.values())
        await rec.wait_for(lambda ev: len(watch_events(ev)) >= total)
        await asyncio.sleep(0.1)  # a duplicate would show up now
        events = list(rec.events)

    assert seen_rvs(events) == expected
    counts = Counter((e.key, e.obj.meta.resource_version) for e in watch_events(events))
    assert max(counts.values()) == 1
    # Resumed from the last resourceVersion, never relisted.
    assert len(fake.list_requests("Service")) == 1
    watches = [r for r in fake.requests if r.watch and r.status == 200]
    assert len(watches) >= 3
    resumed = [int(r.query["resourceVersion"]) for r in watches]
    assert resumed == sorted(resumed) and resumed[-1] > resumed[0]


async def test_stream_end_resumes_from_bookmark(fake: FakeKube) -> None:
    fake.max_watch_seconds = 0.2
    fake.bookmarks = True
    fake.apply(svc("web"))
    async with Recorder(source(fake)) as rec:
        await rec.wait_for(synced)
        await fake.wait_watchers(1, "Service")
        # Changes elsewhere move the global resourceVersion on; the bookmark carries it.
        fake.apply(svc("x", ns="kube-system", labels={"skip": "me"}))
        fake.delete("Service", "kube-system", "x")
        bumped = str(fake.rv)
        async with asyncio.timeout(5):
            while not any(
                r.watch
                and r.query["resourceVersion"] == bumped
                and r.query["allowWatchBookmarks"] == "true"
                for r in fake.requests
            ):
                await asyncio.sleep(0.01)
        fake.apply(svc("web", port=99))
        await rec.wait_for(
            lambda ev: any(e.obj and e.obj.ports[0].port == 99 for e in watch_events(ev))
        )
    assert len(fake.list_requests("Service")) == 1


# -- 410 Gone --------------------------------------------------------------------


@pytest.mark.parametrize("style", ["http", "event"])
async def test_gone_on_watch_start_relists_and_deletes_vanished(fake: FakeKube, style: str) -> None:
    fake.gone_style = style
    for n in ("a", "b", "c"):
        fake.apply(svc(n))
    async with Recorder(source(fake)) as rec:
        await rec.wait_for(synced)
        await fake.wait_watchers(1, "Service")
        start, n_req = len(rec.events), len(fake.requests)
        async with fake.outage():
            fake.delete("Service", "default", "a")
            fake.apply(svc("b", port=8080))
            fake.apply(svc("d"))
            fake.compact()
        await rec.wait_for(lambda ev: len(ev) - start >= 3)
        await asyncio.sleep(0.1)
        after = watch_events(rec.events[start:])

    assert sorted((e.type.value, e.key.name) for e in after) == [
        ("ADDED", "d"),
        ("DELETED", "a"),
        ("MODIFIED", "b"),
    ]
    assert next(e for e in after if e.key.name == "b").obj.ports[0].port == 8080
    assert len(fake.list_requests("Service")) == 2
    later = [r for r in fake.requests[n_req:] if r.path == "/api/v1/services"]
    # First the stale watch (410 as status, or 200 carrying an ERROR event), then the relist.
    assert later[0].watch and later[0].status == (410 if style == "http" else 200)
    assert not later[1].watch


async def test_gone_as_error_event_mid_stream_relists(fake: FakeKube) -> None:
    for n in ("a", "b"):
        fake.apply(svc(n))
    async with Recorder(source(fake)) as rec:
        await rec.wait_for(synced)
        await fake.wait_watchers(1, "Service")
        start = len(rec.events)
        fake.freeze()  # the open watch falls behind
        fake.delete("Service", "default", "a")
        fake.apply(svc("c"))
        fake.compact()
        fake.expire_watches()
        await rec.wait_for(lambda ev: len(ev) - start >= 2)
        await asyncio.sleep(0.1)
        after = watch_events(rec.events[start:])
    assert sorted((e.type.value, e.key.name) for e in after) == [("ADDED", "c"), ("DELETED", "a")]
    assert len(fake.list_requests("Service")) == 2


# -- scoping and pagination ------------------------------------------------------


async def test_pagination_is_used(fake: FakeKube) -> None:
    for i in range(7):
        fake.apply(svc(f"s{i}"))
    async with Recorder(source(fake, page_size=2)) as rec:
        await rec.wait_for(synced)
        keys = {e.key.name for e in watch_events(rec.events)}
    assert keys == {f"s{i}" for i in range(7)}
    lists = fake.list_requests("Service")
    assert len(lists) == 4
    assert all(r.query["limit"] == "2" for r in lists)
    assert ["continue" in r.query for r in lists] == [False, True, True, True]


async def test_namespace_and_label_selector_scoping(fake: FakeKube) -> None:
    fake.apply(svc("web", ns="team-a", labels={"app": "web"}))
    fake.apply(svc("db", ns="team-a", labels={"app": "db"}))
    fake.apply(svc("web", ns="team-b", labels={"app": "web"}))
    fake.apply({**ingress_class("nginx"), "metadata": {"name": "nginx", "labels": {"app": "web"}}})
    src = source(fake, ["Service", "IngressClass"], namespace="team-a", label_selector="app=web")
    async with Recorder(src) as rec:
        await rec.wait_for(synced)
        assert {e.key for e in watch_events(rec.events)} == {
            key("Service", "web", "team-a"),
            ObjectKey("IngressClass", "", "nginx"),
        }
        await fake.wait_watchers(2)
        fake.apply(svc("web", ns="team-b", port=1))  # other namespace: invisible
        fake.apply(svc("web", ns="team-a", labels={"app": "old"}))  # stops matching
        await rec.wait_for(lambda ev: len(watch_events(ev)) >= 3)
        await asyncio.sleep(0.05)
        last = watch_events(rec.events)[2:]
    assert [(e.type, e.key) for e in last] == [(EventType.DELETED, key("Service", "web", "team-a"))]
    paths = {r.path for r in fake.requests}
    assert paths == {
        "/api/v1/namespaces/team-a/services",
        "/apis/networking.k8s.io/v1/ingressclasses",
    }
    assert all(r.query["labelSelector"] == "app=web" for r in fake.requests)


async def test_node_narrowed_to_one_node_and_pod_only_on_request(fake: FakeKube) -> None:
    fake.apply(node("n1"))
    fake.apply(node("n2"))
    fake.apply(
        {
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "status": {"podIP": "10.1.0.5"},
        }
    )
    src = source(fake, ["Node", "Pod"], node_name="n2")
    async with Recorder(src) as rec:
        await rec.wait_for(synced)
        keys = {e.key for e in watch_events(rec.events)}
    assert keys == {ObjectKey("Node", "", "n2"), key("Pod", "p")}
    node_reqs = [r for r in fake.requests if r.path == "/api/v1/nodes"]
    assert all(r.query["fieldSelector"] == "metadata.name=n2" for r in node_reqs)


# -- bad input -------------------------------------------------------------------


async def test_garbage_and_rejected_objects_are_skipped(
    fake: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fake.apply(svc("web"))
    async with Recorder(source(fake)) as rec:
        await rec.wait_for(synced)
        await fake.wait_watchers(1, "Service")
        assert fake.inject(b'{"type": "ADDED", "object": {"metadata": ') == 1
        fake.inject(b'{"type": "EXPLODED", "object": {}}')
        fake.apply(svc("web", port=70000))  # fails validation: keep the last good version
        fake.apply(svc("fresh"))
        await rec.wait_for(lambda ev: any(e.key.name == "fresh" for e in watch_events(ev)))
        await asyncio.sleep(0.05)
        fake.apply(svc("web", port=81))  # a good version later replaces it
        await rec.wait_for(lambda ev: len(watch_events(ev)) >= 3)
        events = watch_events(rec.events)

    assert [(e.type, e.key.name) for e in events] == [
        (EventType.ADDED, "web"),
        (EventType.ADDED, "fresh"),
        (EventType.MODIFIED, "web"),
    ]
    assert events[2].obj.ports[0].port == 81
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "invalid JSON" in text
    assert "unknown event type 'EXPLODED'" in text
    assert "Service default/web" in text and "spec.ports[0].port" in text
    assert len(fake.list_requests("Service")) == 1  # the stream went on, no relist


# -- auth ------------------------------------------------------------------------


async def test_unauthorized_is_logged_and_retried(
    fake: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fake.tokens = {"the-right-one"}
    fake.apply(svc("web"))
    src = KubeSource(fake.cluster_config("s3cr3t-wrong-token"), resources=["Service"], backoff=FAST)
    async with Recorder(src) as rec:
        async with asyncio.timeout(5):
            while sum(r.status == 401 for r in fake.requests) < 4:
                await asyncio.sleep(0.01)
        assert rec.events == []
        assert not rec.task.done()
        fake.tokens.add("s3cr3t-wrong-token")
        await rec.wait_for(synced)
    messages = [r.getMessage() for r in caplog.records]
    assert any("401" in m and "Unauthorized" in m for m in messages)
    assert not any("s3cr3t" in m for m in messages)
    assert "s3cr3t" not in repr(src) and "s3cr3t" not in repr(src.config)


async def test_token_file_rotation(fake: FakeKube, tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok-1\n")
    (sa / "ca.crt").write_bytes(fake.ca_pem)
    (sa / "namespace").write_text("default")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(fake.port)}
    fake.tokens = {"tok-1"}
    fake.apply(svc("web"))
    src = KubeSource.in_cluster(sa, env=env, resources=["Service"], backoff=FAST)
    assert src.config.namespace == "default"
    async with Recorder(src) as rec:
        await rec.wait_for(synced)
        await fake.wait_watchers(1, "Service")
        # kubelet swaps the token; the server stops accepting the old one.
        new = sa / "token.new"
        new.write_text("tok-2-longer\n")
        new.replace(sa / "token")
        fake.tokens = {"tok-2-longer"}
        fake.restart()
        fake.apply(svc("web", port=81))
        await rec.wait_for(lambda ev: len(watch_events(ev)) >= 2)
    assert watch_events(rec.events)[1].obj.ports[0].port == 81
    assert all(r.auth == "token" for r in fake.requests if r.status == 200)


async def test_client_certificate_auth_via_kubeconfig(fake: FakeKube, tmp_path: Path) -> None:
    fake.tokens = set()  # only certificates get in
    fake.apply(svc("web"))
    cert = fake.client_cert
    path = fake.write_kubeconfig(
        tmp_path / "config",
        {
            "client-certificate-data": base64.b64encode(cert.cert_chain_pems[0].bytes()).decode(),
            "client-key-data": base64.b64encode(cert.private_key_pem.bytes()).decode(),
        },
    )
    src = KubeSource.from_kubeconfig(path, resources=["Service"], backoff=FAST)
    async with Recorder(src) as rec:
        await rec.wait_for(synced)
    assert [e.key for e in watch_events(rec.events)] == [key("Service", "web")]
    assert {r.auth for r in fake.requests} == {"cert"}
    assert "PRIVATE KEY" not in repr(src.config)


async def test_exec_plugin_reexecuted_on_401(fake: FakeKube, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    script = tmp_path / "cred.py"
    script.write_text(
        "import json, pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
        " 'status': {'token': 'exec-token-%d' % n}}))\n"
    )
    import sys

    path = fake.write_kubeconfig(
        tmp_path / "config",
        {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": sys.executable,
                "args": [str(script)],
            }
        },
    )
    fake.tokens = {"exec-token-2"}  # the first token is already stale
    fake.apply(svc("web"))
    src = KubeSource.from_kubeconfig(path, resources=["Service"], backoff=FAST)
    async with Recorder(src) as rec:
        await rec.wait_for(synced, timeout=10)
    assert counter.read_text() == "2"
    assert [r.status for r in fake.requests[:2]] == [401, 200]


# -- lifecycle -------------------------------------------------------------------


async def test_cancel_closes_every_connection(fake: FakeKube) -> None:
    fake.apply(svc("web"))
    rec = Recorder(source(fake, ["Service", "Ingress", "IngressClass"]))
    await rec.__aenter__()
    await rec.wait_for(synced)
    await fake.wait_watchers(3)
    await rec.close()
    async with asyncio.timeout(5):
        while fake.watchers():
            await asyncio.sleep(0.01)
    assert rec.task.cancelled()
