"""kube-proxy's service health check (healthCheckNodePort of externalTrafficPolicy Local).

The decision is tested sans-IO; one connection-level test runs the asyncio
server in process (malformed, oversized and slow requests); the e2e test
runs `netplane run` and probes it with curl, as a load balancer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ingress_fakes import curl
from l4_world import Backends, write

import netplane.l4.healthcheck as hc_mod
from netplane.config import build
from netplane.dataplane import Dataplane
from netplane.l4.healthcheck import (
    HealthChecks,
    ProxyHealth,
    ServiceHealthCheck,
    health_response,
    local_ready_endpoints,
    parse_request_line,
    render,
    wanted_port,
)
from netplane.l4.picker import NodeInfo, Picker
from netplane.l4.proxy import L4Proxy
from netplane.model import Service, parse_object
from netplane.service_table import ServiceEntry, build_entry

# -- sans-IO ----------------------------------------------------------------------------

# kube-proxy's reply for default/wp-nginx-service with one local endpoint:
# Content-Length 127, tab-indented (pkg/proxy/healthcheck/service_health.go).
KUBE_PROXY_BODY = (
    b'{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "wp-nginx-service"\n\t},'
    b'\n\t"localEndpoints": 1,\n\t"serviceProxyHealthy": true\n}'
)


def test_healthy_with_local_endpoints_matches_kube_proxy_byte_for_byte() -> None:
    status, headers, body = health_response(("default", "wp-nginx-service"), 1)
    assert status == 200
    assert body == KUBE_PROXY_BODY and len(body) == 127
    assert dict(headers) == {
        "Content-Type": "application/json",
        "X-Content-Type-Options": "nosniff",
        "X-Load-Balancing-Endpoint-Weight": "1",
    }


@pytest.mark.parametrize(
    ("count", "healthy", "status"),
    [(0, True, 503), (1, True, 200), (3, True, 200), (2, False, 503), (0, False, 503)],
)
def test_status_needs_local_endpoints_and_a_healthy_proxy(count, healthy, status) -> None:
    got, headers, body = health_response(("ns", "svc"), count, proxy_healthy=healthy)
    assert got == status
    assert json.loads(body) == {
        "service": {"namespace": "ns", "name": "svc"},
        "localEndpoints": count,
        "serviceProxyHealthy": healthy,
    }
    assert ("X-Load-Balancing-Endpoint-Weight", str(count)) in headers


@pytest.mark.parametrize(
    ("head", "method"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x", "GET"),
        (b"HEAD / HTTP/1.0", "HEAD"),
        (b"POST /any/path?q=1 HTTP/1.1\nHost: x", "POST"),
        (b"GET /\r\nHost: x", None),  # HTTP/0.9
        (b"GET / HTTP/2.0", None),
        (b"get / HTTP/1.1", None),
        (b"\x16\x03\x01\x02\x00", None),  # a TLS hello
        (b"", None),
    ],
)
def test_parse_request_line(head: bytes, method: str | None) -> None:
    assert parse_request_line(head) == method


def test_render_head_only_keeps_the_length_and_drops_the_body() -> None:
    status, headers, body = health_response(("ns", "svc"), 0)
    full = render(status, headers, body, date="Thu, 01 Jan 2026 00:00:00 GMT")
    head, _, rest = full.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 503 Service Unavailable"
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Connection: close" in head and b"Date: Thu, 01 Jan 2026" in head
    assert rest == body
    assert (
        render(status, headers, body, head_only=True) == render(status, headers, body)[: -len(body)]
    )


def svc(**spec: Any) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": "1"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 31000,
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                {"name": "https", "port": 443, "targetPort": 8443, "nodePort": 30443},
            ],
            **spec,
        },
    }


def ep(addr: str, node: str, *, ready: bool = True, terminating: bool = False) -> dict:
    return {
        "addresses": [addr],
        "nodeName": node,
        "conditions": {"ready": ready, "serving": ready or terminating, "terminating": terminating},
    }


def entry(service: dict, slices: list[tuple[list[str], list[dict]]]) -> ServiceEntry:
    s = parse_object(service)
    assert isinstance(s, Service)
    objs = [
        parse_object(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"web-{i}",
                    "namespace": "default",
                    "resourceVersion": "1",
                    "labels": {"kubernetes.io/service-name": "web"},
                },
                "addressType": "IPv4",
                "endpoints": eps,
                "ports": [
                    {"name": n, "port": 8080 if n == "http" else 8443, "protocol": "TCP"}
                    for n in names
                ],
            }
        )
        for i, (names, eps) in enumerate(slices)
    ]
    return build_entry(s, objs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "port"),
    [
        ({}, 31000),
        ({"type": "NodePort"}, 31000),
        ({"externalTrafficPolicy": "Cluster"}, None),
        ({"healthCheckNodePort": None}, None),
    ],
)
def test_wanted_port(spec: dict, port: int | None) -> None:
    service = svc(**spec)
    service["spec"] = {k: v for k, v in service["spec"].items() if v is not None}
    assert wanted_port(entry(service, [])) == port
    assert wanted_port(None) is None


def test_wanted_port_not_for_cluster_ip_services() -> None:
    service = svc(type="ClusterIP")
    for p in service["spec"]["ports"]:
        del p["nodePort"]
    assert wanted_port(entry(service, [])) is None


def test_local_count_is_ready_endpoints_on_this_node_by_address() -> None:
    e = entry(
        svc(),
        [
            (
                ["http", "https"],
                [
                    ep("10.0.0.1", "node-a"),  # both ports: one endpoint
                    ep("10.0.0.2", "node-a", ready=False),
                    ep("10.0.0.3", "node-a", ready=False, terminating=True),
                    ep("10.0.0.4", "node-b"),
                ],
            ),
            (["https"], [ep("10.0.0.5", "node-a")]),  # only behind one port: counts
        ],
    )
    assert local_ready_endpoints(e, "node-a") == 2
    assert local_ready_endpoints(e, "node-b") == 1
    assert local_ready_endpoints(e, "node-c") == 0
    assert local_ready_endpoints(e, "") == 0


def test_only_terminating_local_endpoints_fail_the_check() -> None:
    # Traffic may still go to them (the picker's fallback), but the check fails
    # so the load balancer drains the node, as kube-proxy does.
    e = entry(svc(), [(["http"], [ep("10.0.0.3", "node-a", ready=False, terminating=True)])])
    assert local_ready_endpoints(e, "node-a") == 0
    assert Picker(e, e.ports[0], NodeInfo("node-a")).candidates(external=True)


def test_publish_not_ready_addresses_counts_every_local_endpoint() -> None:
    e = entry(
        svc(publishNotReadyAddresses=True),
        [(["http"], [ep("10.0.0.2", "node-a", ready=False)])],
    )
    assert local_ready_endpoints(e, "node-a") == 1


def test_agrees_with_the_picker_on_one_port() -> None:
    e = entry(
        svc(),
        [(["http"], [ep("10.0.0.1", "node-a"), ep("10.0.0.2", "node-a"), ep("10.0.0.4", "x")])],
    )
    picker = Picker(e, e.ports[0], NodeInfo("node-a"))
    local = picker.candidates(external=True)  # externalTrafficPolicy Local: this node's
    assert local_ready_endpoints(e, "node-a") == len(local) == 2


# -- the server in process ---------------------------------------------------------------


async def exchange(port: int, data: bytes, *, eof: bool = False) -> bytes:
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        if eof:
            writer.write_eof()
        try:
            return await reader.read()
        finally:
            writer.close()


async def test_server_answers_follows_the_count_and_rejects_junk(monkeypatch) -> None:
    check = ServiceHealthCheck(("ns", "svc"), 0)
    await check.listen(["127.0.0.1"])
    port = check._servers["127.0.0.1"].sockets[0].getsockname()[1]
    try:
        reply = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503 ")
        check.local_endpoints = 2  # seen by the next probe at once
        reply = await exchange(port, b"GET /anything HTTP/1.0\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert json.loads(body)["localEndpoints"] == 2
        # HEAD: the head only
        reply = await exchange(port, b"HEAD / HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\n")
        # not HTTP
        assert (await exchange(port, b"hello\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        # a head that never ends, past the limit
        big = b"GET / HTTP/1.1\r\nX: " + b"a" * (hc_mod.MAX_HEAD + 10)
        assert (await exchange(port, big)).startswith(b"HTTP/1.1 431 ")
        # half-closed before the head ended: closed without an answer
        assert await exchange(port, b"GET / HTTP/1.1\r\n", eof=True) == b""
        # a client that sends nothing is closed after the head timeout
        monkeypatch.setattr(hc_mod, "HEAD_TIMEOUT", 0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await exchange(port, b"") == b""
        assert loop.time() - started < 2
        assert not check._probes
    finally:
        check.close()
    with pytest.raises(OSError):
        await exchange(port, b"GET / HTTP/1.1\r\n\r\n")


async def test_health_checks_open_move_and_close_with_the_service() -> None:
    port = free_node_port()
    checks = HealthChecks("node-a", ["127.0.0.1"])
    e = entry(svc(healthCheckNodePort=port), [(["http"], [ep("10.0.0.1", "node-a")])])
    await checks.sync(("default", "web"), e)
    assert checks.debug_state() == [
        {
            "service": "default/web",
            "port": port,
            "addresses": ["127.0.0.1"],
            "localEndpoints": 1,
        }
    ]
    assert (await exchange(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    # the policy goes back to Cluster: the listener closes
    await checks.sync(("default", "web"), entry(svc(externalTrafficPolicy="Cluster"), []))
    assert checks.debug_state() == []
    with pytest.raises(OSError):
        await exchange(port, b"GET / HTTP/1.1\r\n\r\n")
    # a new port: the old one closes, the new one opens
    await checks.sync(("default", "web"), e)
    other = free_node_port(exclude={port})
    await checks.sync(("default", "web"), entry(svc(healthCheckNodePort=other), []))
    assert [c["port"] for c in checks.debug_state()] == [other]
    assert (await exchange(other, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 503 ")
    with pytest.raises(OSError):
        await exchange(port, b"GET / HTTP/1.1\r\n\r\n")
    # the service is deleted
    await checks.sync(("default", "web"), None)
    assert checks.debug_state() == []
    checks.close()


async def test_a_port_in_use_is_logged_and_retried(caplog) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        checks = HealthChecks("node-a", ["127.0.0.1"])
        e = entry(svc(healthCheckNodePort=port), [])
        await checks.sync(("default", "web"), e)
        assert checks.debug_state()[0]["addresses"] == []
        assert "cannot serve its health check" in caplog.text
    await checks.sync(("default", "web"), e)  # the next change of the service
    assert checks.debug_state()[0]["addresses"] == ["127.0.0.1"]
    checks.close()


# -- end to end ----------------------------------------------------------------------------


def free_node_port(exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """A port in the NodePort range that 127.0.0.1 can bind now."""
    for _ in range(200):
        port = random.randint(30000, 32767)
        if port in exclude:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 30000-32767")


def local_service(node_port: int, hc_port: int, policy: str = "Local") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "lb", "namespace": "t"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "127.77.0.40",
            "externalTrafficPolicy": policy,
            **({"healthCheckNodePort": hc_port} if policy == "Local" else {}),
            "ports": [{"name": "p", "port": 8080, "nodePort": node_port, "protocol": "TCP"}],
        },
    }


def node_endpoints(addrs: list[tuple[str, str]], port: int) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "lb-1",
            "namespace": "t",
            "labels": {"kubernetes.io/service-name": "lb"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [a], "nodeName": node, "conditions": {"ready": True}} for a, node in addrs
        ],
    }


async def curl_i(url: str) -> tuple[int, int, dict[str, str], str]:
    """curl's exit code, the status, the headers (lower-case names), the body."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-i", "--max-time", "5", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    head, _, body = out.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return proc.returncode or 0, status, headers, body


async def until_status(url: str, status: int) -> tuple[int, int, dict[str, str], str]:
    async with asyncio.timeout(10):
        while True:
            got = await curl_i(url)
            if got[1] == status:
                return got
            await asyncio.sleep(0.05)


async def health_checks(d: Any) -> list[dict]:
    try:
        return (await asyncio.to_thread(d.state))["planes"]["proxy"]["health_checks"]
    except (OSError, KeyError):
        return []


async def refused_or_reset(host: str, port: int) -> None:
    """The connection is refused, or accepted and reset before any byte."""
    async with asyncio.timeout(2):
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except (ConnectionRefusedError, ConnectionResetError):
            return  # refused, or reset so fast that the connect itself reports it
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await reader.readexactly(1)
        writer.close()


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_health_check_node_port_follows_local_endpoints(
    tmp_path: Path,
    daemon: Any,
    backends: Backends,
) -> None:
    port = free_node_port()  # the backends' port; any free one does
    node_port = free_node_port({port})
    hc_port = free_node_port({port, node_port})
    await backends.http("127.0.40.1", port)  # on node-a (this node)
    await backends.http("127.0.40.2", port)  # on node-b
    both = [("127.0.40.1", "node-a"), ("127.0.40.2", "node-b")]
    only_b = both[1:]
    m = tmp_path / "m"
    write(m, "lb", [local_service(node_port, hc_port), node_endpoints(both, port)])
    d = await daemon("--node-name", "node-a", "--nodeport-addresses", "127.0.0.1")
    await d.until_listening(f"127.0.0.1:{node_port}/TCP", "127.77.0.40:8080/TCP")
    async with asyncio.timeout(10):
        while [c["addresses"] for c in await health_checks(d)] != [["127.0.0.1"]]:
            await asyncio.sleep(0.05)
    hc_url = f"http://127.0.0.1:{hc_port}/healthz"

    rc, status, headers, body = await curl_i(hc_url)
    assert (rc, status) == (0, 200)
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert json.loads(body) == {
        "service": {"namespace": "t", "name": "lb"},
        "localEndpoints": 1,
        "serviceProxyHealthy": True,
    }
    # any path answers the same
    assert (await curl_i(f"http://127.0.0.1:{hc_port}/some/other?path"))[1] == 200

    # NodePort traffic goes only to the endpoint on this node; ClusterIP traffic to both
    via_node_port = {(await curl(f"http://127.0.0.1:{node_port}/"))[1] for _ in range(6)}
    assert via_node_port == {"127.0.40.1"}
    via_cluster_ip = {(await curl("http://127.77.0.40:8080/"))[1] for _ in range(6)}
    assert via_cluster_ip == {"127.0.40.1", "127.0.40.2"}

    # only node-b keeps an endpoint: 503, and the NodePort refuses
    write(m, "lb", [local_service(node_port, hc_port), node_endpoints(only_b, port)])
    rc, status, headers, body = await until_status(hc_url, 503)
    assert rc == 0 and headers["content-type"] == "application/json"
    assert json.loads(body)["localEndpoints"] == 0
    assert json.loads(body)["serviceProxyHealthy"] is True
    await refused_or_reset("127.0.0.1", node_port)

    # back: 200 again, and the NodePort serves
    write(m, "lb", [local_service(node_port, hc_port), node_endpoints(both, port)])
    _, _, _, body = await until_status(hc_url, 200)
    assert json.loads(body)["localEndpoints"] == 1
    assert (await curl(f"http://127.0.0.1:{node_port}/"))[1] == "127.0.40.1"

    # the policy goes back to Cluster: the health-check port closes
    write(m, "lb", [local_service(node_port, hc_port, "Cluster"), node_endpoints(both, port)])
    async with asyncio.timeout(10):
        while await health_checks(d):
            await asyncio.sleep(0.05)
    rc, status, _, _ = await curl_i(hc_url)
    assert rc == 7 and status == 0  # curl: could not connect


# -- the proxy's own health (serviceProxyHealthy) ------------------------------------------


class Clock:
    """A settable wall clock for ProxyHealth."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_proxy_health_follows_pending_changes_and_draining() -> None:
    clock, draining = Clock(), [False]
    health = ProxyHealth(60.0, is_draining=lambda: draining[0], clock=clock)
    assert health.healthy()  # starting up, nothing pending
    health.queued()
    clock.now += 59.9
    assert health.healthy()  # pending, but not late yet
    health.queued()  # a later change keeps the oldest one's time
    clock.now += 0.1
    assert not health.healthy()  # the oldest change waited the full timeout
    health.updated()
    assert health.healthy()
    state = health.debug_state()
    assert state["lastUpdated"] == state["currentTime"] == "2023-11-14T22:14:20Z"
    assert state["oldestPending"] is None and state["serviceProxyHealthy"] is True
    draining[0] = True
    assert not health.healthy() and health.debug_state()["draining"] is True


async def probe(url: str) -> tuple[int, dict[str, Any]]:
    """GET ``url`` with urllib, as a load balancer's HTTP check would: (status, JSON body)."""

    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read()

    status, body = await asyncio.to_thread(get)
    return status, json.loads(body)


@contextlib.asynccontextmanager
async def proxy_with_a_health_check() -> AsyncIterator[tuple[Dataplane, L4Proxy, str, Clock]]:
    """A Dataplane and its L4Proxy (node-a) serving one Local service's health check."""
    node_port = free_node_port()
    hc_port = free_node_port({node_port})
    dp = Dataplane(build({}, {"mode": "local", "admin": None}), serve=False)
    svc_obj = local_service(node_port, hc_port)
    svc_obj["spec"]["clusterIP"] = "127.77.0.41"
    dp.apply(svc_obj)
    dp.apply(node_endpoints([("127.0.41.1", "node-a")], 8080))
    await dp.start()
    proxy = L4Proxy(dp, node_name="node-a", nodeport_addresses=["127.0.0.1"], health_timeout=60)
    clock = Clock()
    proxy.health.clock = clock
    await proxy.start()
    try:
        yield dp, proxy, f"http://127.0.0.1:{hc_port}/healthz", clock
    finally:
        await proxy.close(0)
        await dp.stop(0)


async def test_health_check_is_200_and_true_while_the_proxy_is_healthy() -> None:
    async with proxy_with_a_health_check() as (_dp, proxy, url, _clock):
        assert await probe(url) == (
            200,
            {
                "service": {"namespace": "t", "name": "lb"},
                "localEndpoints": 1,
                "serviceProxyHealthy": True,
            },
        )
        assert proxy.debug_state()["health"]["serviceProxyHealthy"] is True


async def test_health_check_is_503_and_false_when_a_change_has_not_reached_the_listeners(
    monkeypatch,
) -> None:
    async with proxy_with_a_health_check() as (dp, proxy, url, clock):
        real_sync = proxy.sync

        async def failing_sync(services: Any) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr(proxy, "sync", failing_sync)
        dp.apply(node_endpoints([("127.0.41.1", "node-a"), ("127.0.41.2", "node-a")], 8080))
        await proxy.settled()
        clock.now += 59
        assert (await probe(url))[0] == 200  # late, but not past the timeout yet
        clock.now += 1
        status, body = await probe(url)
        assert status == 503 and body["serviceProxyHealthy"] is False
        assert body["localEndpoints"] == 1  # the count the failed change did not update
        state = proxy.debug_state()["health"]
        assert state["serviceProxyHealthy"] is False and state["oldestPending"] is not None
        # the next change applies, with the one that failed: healthy again
        monkeypatch.setattr(proxy, "sync", real_sync)
        dp.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "other", "namespace": "t"},
                "spec": {"clusterIP": "127.77.0.42", "ports": [{"port": 80}]},
            }
        )
        await proxy.settled()
        status, body = await probe(url)
        assert (status, body["serviceProxyHealthy"], body["localEndpoints"]) == (200, True, 2)


async def test_health_check_is_503_and_false_while_draining() -> None:
    async with proxy_with_a_health_check() as (dp, proxy, url, _clock):
        dp.draining = True  # the daemon's first step of a shutdown
        status, body = await probe(url)
        assert status == 503 and body["serviceProxyHealthy"] is False
        assert body["localEndpoints"] == 1
        dp.draining = False
        assert (await probe(url))[0] == 200

        # close() drains open TCP connections; the check answers 503 meanwhile
        async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        backend = await asyncio.start_server(until_eof, "127.0.41.1", 8080)
        try:
            _, writer = await asyncio.open_connection("127.77.0.41", 8080)
            async with asyncio.timeout(5):
                while proxy.tcp.connections != 1:
                    await asyncio.sleep(0.01)
            closing = asyncio.create_task(proxy.close(5))
            try:
                status, body = await probe(url)
                assert status == 503 and body["serviceProxyHealthy"] is False
            finally:
                writer.close()
                await closing
        finally:
            backend.close()
