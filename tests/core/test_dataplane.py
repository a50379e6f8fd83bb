"""The embedding API: Dataplane with apply/delete/subscribe, readiness, sources, admin."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket

import pytest

import netplane
from netplane import dataplane as dpmod
from netplane.config import Config
from netplane.errors import ConfigError, ModelError
from netplane.events import Synced, WatchEvent
from netplane.model import ObjectKey, parse_object

WAIT = 5.0
LOCAL = ipaddress.ip_network("127.77.0.0/16")
KEY_BYTES = b"-----BEGIN PRIVATE KEY-----\nTOPSECRETkeyMATERIALdoNotLeak0123456789\n-----END PRIVATE KEY-----\n"
CERT_BYTES = b"-----BEGIN CERTIFICATE-----\nMIIBcertificate\n-----END CERTIFICATE-----\n"


def service(name: str = "web", port: int = 80, namespace: str = "shop", **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": 8080}], **spec},
    }


def endpoint_slice(service: str = "web", ip: str = "127.0.10.1", ready: bool = True) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}}],
    }


def tls_secret(name: str = "web-tls") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "shop"},
        "data": {
            "tls.crt": base64.b64encode(CERT_BYTES).decode(),
            "tls.key": base64.b64encode(KEY_BYTES).decode(),
        },
    }


def config(**kw) -> Config:
    """Local mode with nothing listening (the state and tables), unless ``kw`` says so."""
    quiet = {"proxy": False, "ingress_http": None, "ingress_https": None, "dns": None}
    return Config(**{"mode": "local", "admin": None, **quiet, **kw})


def backends(dp: netplane.Dataplane, name: str = "web") -> list[tuple[str, int, bool]]:
    entry = dp.table.get("shop", name)
    assert entry is not None
    return [(b.address, b.port, b.ready) for p in entry.ports for b in p.backends]


async def next_change(stream, timeout: float = WAIT) -> netplane.Change:
    return await asyncio.wait_for(anext(stream), timeout)


async def nothing_pending(stream) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.1)


# -- apply / delete ----------------------------------------------------------


async def test_apply_dicts_and_model_objects():
    async with netplane.Dataplane(config()) as dp:
        assert dp.ready  # no sources: ready at once
        result = dp.apply(service())
        assert result.changed
        dp.apply(parse_object(endpoint_slice()))
        entry = dp.table.get("shop", "web")
        assert entry is not None
        (ip,) = entry.service.cluster_ips
        assert ipaddress.ip_address(ip) in LOCAL
        assert backends(dp) == [("127.0.10.1", 8080, True)]
        # the same object again changes nothing
        assert not dp.apply(service()).changed


async def test_default_config_is_local_and_listens_nowhere():
    async with netplane.Dataplane() as dp:
        assert dp.config.mode == "local" and dp.admin is None
        assert dp.planes == {}
        dp.apply(service())
        (ip,) = dp.table.get("shop", "web").service.cluster_ips
        assert ipaddress.ip_address(ip) in LOCAL
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(ip, 80)


async def test_invalid_object_raises_and_changes_nothing():
    async with netplane.Dataplane(config()) as dp:
        dp.apply(service())
        dp.apply(endpoint_slice())
        before = dp.debug_state()
        changes = dp.subscribe()
        with pytest.raises(ModelError) as e:
            dp.apply(service(port=70000))
        assert str(e.value) == "Service shop/web: spec.ports[0].port: 70000 out of range (1-65535)"
        assert e.value.field == "spec.ports[0].port"
        with pytest.raises(ModelError, match="'ConfigMap' is not a kind netplane uses"):
            dp.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
        with pytest.raises(ModelError, match="apiVersion"):
            dp.apply({**endpoint_slice(), "apiVersion": "discovery.k8s.io/v1beta1"})
        with pytest.raises(ModelError, match=r"only kubernetes\.io/tls"):
            dp.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "o"}})
        assert dp.debug_state() == before
        assert dp.table.get("shop", "web").ports[0].port == 80
        await nothing_pending(changes)


async def test_service_refused_by_allocation_raises():
    async with netplane.Dataplane(config()) as dp:
        dp.apply(service("one", clusterIP="127.77.0.10"))
        with pytest.raises(ModelError, match="already allocated to Service shop/one"):
            dp.apply(service("two", clusterIP="127.77.0.10"))
        with pytest.raises(ModelError, match="clusterIP"):
            dp.apply(service("three", clusterIP="10.0.0.1"))
        assert dp.table.get("shop", "two") is None
        assert dp.table.get("shop", "three") is None
        # refused means refused: freeing the address does not admit it later
        dp.delete("Service", "shop", "one")
        assert dp.table.get("shop", "two") is None
        assert dp.debug_state()["rejected"] == {}
        dp.apply(service("two", clusterIP="127.77.0.10"))  # the caller retries
        assert dp.table.get("shop", "two").service.cluster_ips == ("127.77.0.10",)


async def test_refused_update_keeps_the_old_version_for_good():
    async with netplane.Dataplane(config()) as dp:
        dp.apply(service("one", clusterIP="127.77.0.10"))
        dp.apply(service("two", clusterIP="127.77.0.20"))
        with pytest.raises(ModelError, match="already allocated to Service shop/one"):
            dp.apply(service("two", clusterIP="127.77.0.10"))
        assert dp.table.get("shop", "two").service.cluster_ips == ("127.77.0.20",)
        dp.delete("Service", "shop", "one")
        # the refused update does not slip in once the address is free
        assert dp.table.get("shop", "two").service.cluster_ips == ("127.77.0.20",)


async def test_delete():
    async with netplane.Dataplane(config()) as dp:
        dp.apply(service())
        dp.apply(endpoint_slice())
        changes = dp.subscribe()
        assert dp.delete("EndpointSlice", "shop", "web-1").changed
        assert backends(dp) == []
        assert dp.delete("Service", "shop", "web").changed
        assert dp.table.get("shop", "web") is None
        assert not dp.delete("Service", "shop", "web").changed  # already gone
        change = await next_change(changes)
        assert change.objects == {
            ObjectKey("EndpointSlice", "shop", "web-1"),
            ObjectKey("Service", "shop", "web"),
        }
        assert change.services == {("shop", "web")}
        with pytest.raises(ModelError, match="'Gadget' is not a kind netplane uses"):
            dp.delete("Gadget", "shop", "x")
        # cluster-scoped kinds ignore the namespace
        dp.apply(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "IngressClass",
                "metadata": {"name": "netplane"},
                "spec": {"controller": "netplane.io/ingress"},
            }
        )
        assert dp.delete("IngressClass", "whatever", "netplane").changed


# -- subscribe ---------------------------------------------------------------


async def test_subscribe_coalesces_applies_made_before_reading():
    async with netplane.Dataplane(config()) as dp:
        changes = dp.subscribe()
        dp.apply(service("web"))
        dp.apply(service("api", port=8080))
        dp.apply(endpoint_slice("web"))
        dp.apply(endpoint_slice("web", ready=False))  # same key again
        change = await next_change(changes)
        assert change.objects == {
            ObjectKey("Service", "shop", "web"),
            ObjectKey("Service", "shop", "api"),
            ObjectKey("EndpointSlice", "shop", "web-1"),
        }
        assert change.services == {("shop", "web"), ("shop", "api")}
        await nothing_pending(changes)
        dp.apply(endpoint_slice("web", ready=True))
        change = await next_change(changes)
        assert change.objects == {ObjectKey("EndpointSlice", "shop", "web-1")}
        assert change.services == {("shop", "web")}


async def test_every_subscriber_sees_every_change_and_streams_end_on_stop():
    dp = netplane.Dataplane(config())
    await dp.start()
    a, b = dp.subscribe(), dp.subscribe()
    dp.apply(service())
    assert (await next_change(a)).objects == (await next_change(b)).objects
    b.close()
    dp.apply(service(port=81))
    assert (await next_change(a)).services == {("shop", "web")}
    await dp.stop()
    with pytest.raises(StopAsyncIteration):
        await next_change(a)


# -- sources and readiness -----------------------------------------------------


class FakeSource:
    """Yields the given objects, then waits for ``release`` before its Synced."""

    def __init__(self, name: str, objects: list[dict]) -> None:
        self.name = name
        self.objects = objects
        self.release = asyncio.Event()
        self.runs = 0

    async def run(self):
        self.runs += 1
        for raw in self.objects:
            yield WatchEvent.upsert(parse_object(raw), self.name, added=True)
        await self.release.wait()
        yield Synced(self.name)
        await asyncio.Event().wait()  # a source runs until cancelled


async def test_ready_waits_for_every_source_to_sync():
    slow = FakeSource("slow", [service("web"), endpoint_slice("web")])
    quick = FakeSource("quick", [service("api", port=8080)])
    quick.release.set()
    async with netplane.Dataplane(config(), sources=[slow, quick]) as dp:
        changes = dp.subscribe()
        await asyncio.sleep(0.05)
        assert not dp.ready
        assert len(dp.state) == 3  # the state fills before the gate...
        assert len(dp.table) == 0  # ...the table does not
        assert dp.debug_state()["sources"] == {"slow": False, "quick": True}
        slow.release.set()
        await asyncio.wait_for(dp.wait_ready(), WAIT)
        assert dp.ready
        assert backends(dp) == [("127.0.10.1", 8080, True)]
        change = await next_change(changes)
        assert change.services == {("shop", "web"), ("shop", "api")}
        assert dp.debug_state()["sources"] == {"slow": True, "quick": True}


class FlakySource:
    """First run: two services, Synced, then fails. Later runs: one service, Synced."""

    name = "flaky"

    def __init__(self) -> None:
        self.runs = 0
        self.second_run = asyncio.Event()

    async def run(self):
        self.runs += 1
        if self.runs == 1:
            yield WatchEvent.upsert(parse_object(service("keep")), self.name)
            yield WatchEvent.upsert(parse_object(service("gone", port=81)), self.name)
            yield Synced(self.name)
            raise ConnectionError("lost the stream")
        yield WatchEvent.upsert(parse_object(service("keep")), self.name)
        yield Synced(self.name)
        self.second_run.set()
        await asyncio.Event().wait()


async def test_a_failing_source_is_restarted_and_its_new_list_replaces_the_old(monkeypatch, caplog):
    monkeypatch.setattr(dpmod, "_RESTART_DELAY", (0.01, 0.05))
    source = FlakySource()
    async with netplane.Dataplane(config(), sources=[source]) as dp:
        await asyncio.wait_for(dp.wait_ready(), WAIT)
        await asyncio.wait_for(source.second_run.wait(), WAIT)
        assert source.runs == 2
        assert dp.ready
        assert dp.table.get("shop", "keep") is not None
        # the restarted source no longer lists it, so it is gone
        assert dp.table.get("shop", "gone") is None
    assert "source flaky failed; restarting" in caplog.text
    assert "lost the stream" in caplog.text


async def test_stop_cancels_sources():
    source = FakeSource("never", [])
    dp = netplane.Dataplane(config(), sources=[source])
    await dp.start()
    await asyncio.sleep(0.01)
    assert not dp.ready
    await asyncio.wait_for(dp.stop(), WAIT)
    assert not dp.running


# -- introspection and admin -----------------------------------------------------


async def test_debug_state_redacts_secrets():
    async with netplane.Dataplane(config()) as dp:
        dp.apply(tls_secret())
        dp.apply(service())
        state = dp.debug_state()
        text = json.dumps(state)
        assert state["secrets"] == [
            {
                "namespace": "shop",
                "name": "web-tls",
                "type": "kubernetes.io/tls",
                "data": "<redacted>",
            }
        ]
        assert state["objects"]["Secret"] == ["shop/web-tls"]
        for needle in (KEY_BYTES, b"TOPSECRETkeyMATERIAL", base64.b64encode(KEY_BYTES)):
            assert needle.decode() not in text
        assert "TOPSECRET" not in repr(dp.state.secret("shop", "web-tls"))


async def test_debug_state_summary_leaves_out_the_lists():
    async with netplane.Dataplane(config()) as dp:
        dp.apply(tls_secret())
        dp.apply(service())
        full, summary = dp.debug_state(), dp.debug_state(summary=True)
        assert full["objects"] and full["services"] and full["secrets"]
        assert summary == {
            "version": full["version"],
            "ready": True,
            "sources": {},
            "counts": full["counts"],
            "rejected": 0,
            "problems": 0,
            "planes": {},
        }


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_admin_server_when_configured():
    source = FakeSource("later", [service()])
    cfg = config(admin=netplane.config.Listen("127.0.0.1", 0), shutdown_grace=1.0)
    async with netplane.Dataplane(cfg, sources=[source]) as dp:
        port = dp.admin.port
        assert port != 0
        assert await http_get(port, "/healthz") == (200, b"ok\n")
        assert (await http_get(port, "/readyz"))[0] == 503
        source.release.set()
        await asyncio.wait_for(dp.wait_ready(), WAIT)
        assert await http_get(port, "/readyz") == (200, b"ok\n")
        status, body = await http_get(port, "/debug/state")
        assert status == 200
        state = json.loads(body)
        assert [(s["namespace"], s["name"]) for s in state["services"]] == [("shop", "web")]
        status, body = await http_get(port, "/debug/state?summary=1")
        assert status == 200
        summary = json.loads(body)
        assert summary["counts"] == state["counts"] and "services" not in summary
    with pytest.raises(OSError):
        await http_get(port, "/healthz")


async def test_admin_port_in_use_is_a_config_error_and_starts_nothing():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        source = FakeSource("s", [service()])
        dp = netplane.Dataplane(
            config(admin=netplane.config.Listen("127.0.0.1", port)), sources=[source]
        )
        with pytest.raises(ConfigError, match=f"admin: cannot listen on 127.0.0.1:{port}"):
            async with dp:
                pass
        await asyncio.sleep(0.01)
        assert source.runs == 0
        assert not dp.running


async def test_batch_updates_the_table_once_at_the_end():
    async with netplane.Dataplane(config()) as dp:
        stream = dp.subscribe()
        with dp.batch():
            dp.apply(service("web"))
            dp.apply(endpoint_slice("web", "127.0.10.1"))
            # the state has both; the table and subscribers wait for the batch
            assert dp.state.service("shop", "web") is not None
            assert dp.table.get("shop", "web") is None
            assert not stream.take().objects
        assert backends(dp) == [("127.0.10.1", 8080, True)]
        change = stream.take()
        assert change.services == {("shop", "web")}
        assert {str(k) for k in change.objects} == {"Service shop/web", "EndpointSlice shop/web-1"}
        assert not stream.take().objects


# -- planes ----------------------------------------------------------------------


def listen(port: int = 0) -> netplane.config.Listen:
    return netplane.config.Listen("127.0.0.1", port)


async def echo_backend() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def serving(port: int, service_port: int = 9000) -> list[dict]:
    svc = service("echo", port=service_port)
    svc["spec"]["ports"][0]["targetPort"] = port
    slice_ = endpoint_slice("echo", "127.0.0.1")
    slice_["ports"][0]["port"] = port
    return [svc, slice_]


async def refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_planes_start_in_order_and_close_in_reverse_with_the_grace(monkeypatch):
    events: list[tuple[str, object]] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        async def start(self) -> None:
            events.append(("start", self.name))

        async def close(self, grace: float) -> None:
            events.append(("close", self.name, grace))

        def debug_state(self) -> dict:
            return {"name": self.name}

        def metrics(self) -> list:
            return []

    made = [
        ("proxy", Recorder("proxy")),
        ("ingress", Recorder("ingress")),
        ("dns", Recorder("dns")),
    ]
    monkeypatch.setattr(dpmod, "planes_for", lambda cfg, dp, workers: made)
    dp = netplane.Dataplane(config(proxy=True))
    await dp.start()
    assert events == [("start", "proxy"), ("start", "ingress"), ("start", "dns")]
    assert dp.debug_state()["planes"] == {n: {"name": n} for n in ("dns", "ingress", "proxy")}
    await dp.stop(2.5)
    assert events[3:] == [("close", "dns", 2.5), ("close", "ingress", 2.5), ("close", "proxy", 2.5)]
    assert dp.planes == {}


async def test_config_planes_serve_tcp_and_show_in_debug_state_and_metrics():
    server, port = await echo_backend()
    async with server:
        dp = netplane.Dataplane(
            config(proxy=True, ingress_http=listen(), ingress_access_log=None, dns=listen())
        )
        for obj in serving(port):
            dp.apply(obj)
        async with dp:
            assert sorted(dp.planes) == ["dns", "ingress", "proxy"]
            (ip,) = dp.table.get("shop", "echo").service.cluster_ips
            reader, writer = await asyncio.open_connection(ip, 9000)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.read(100), WAIT) == b"ping"
            writer.close()
            state = dp.debug_state(summary=True)["planes"]
            assert state["proxy"]["listeners"] == [f"{ip}:9000/TCP"]
            assert state["dns"]["ready"] is True
            metrics = dp.metrics.render().decode()
            assert "netplane_l4_listeners 1.0" in metrics
        assert await refused(ip, 9000)


async def test_serve_false_leaves_the_planes_out():
    server, port = await echo_backend()
    async with server:
        dp = netplane.Dataplane(
            config(proxy=True, ingress_http=listen(), dns=listen()), serve=False
        )
        for obj in serving(port):
            dp.apply(obj)
        async with dp:
            assert dp.planes == {}
            (ip,) = dp.table.get("shop", "echo").service.cluster_ips
            assert await refused(ip, 9000)


async def test_a_taken_dns_port_is_logged_and_the_rest_serves(caplog):
    server, port = await echo_backend()
    async with server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            dns_port = taken.getsockname()[1]
            dp = netplane.Dataplane(config(proxy=True, dns=listen(dns_port)))
            for obj in serving(port):
                dp.apply(obj)
            async with dp:
                assert sorted(dp.planes) == ["proxy"]
                (ip,) = dp.table.get("shop", "echo").service.cluster_ips
                reader, writer = await asyncio.open_connection(ip, 9000)
                writer.write(b"still here")
                assert await asyncio.wait_for(reader.read(100), WAIT) == b"still here"
                writer.close()
    assert f"DNS: cannot listen on 127.0.0.1:{dns_port}" in caplog.text
    assert "serving without DNS" in caplog.text


async def test_a_taken_ingress_port_fails_start_and_closes_what_had_started():
    server, port = await echo_backend()
    async with server:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            dp = netplane.Dataplane(config(admin=listen(), proxy=True, ingress_http=listen(busy)))
            for obj in serving(port):
                dp.apply(obj)  # no sources: the proxy binds the ClusterIP in its start()
            stream = dp.subscribe()
            with pytest.raises(
                ConfigError, match=f"ingress HTTP: cannot listen on 127.0.0.1:{busy}"
            ):
                await dp.start()
            (ip,) = dp.table.get("shop", "echo").service.cluster_ips
            assert stream.take().services == {("shop", "echo")}  # the table was built
            assert await refused(ip, 9000)  # the proxy, started first, was closed again
            assert dp.planes == {} and dp.admin is None and not dp.running
