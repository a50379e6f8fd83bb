"""1,000 route changes while a WebSocket and keep-alive request loops run: nothing is lost.

The pain this guards against is the one ingress-nginx, Traefik and Contour
users report: a reload that closes established connections. Here
``netplane run --kubeconfig`` serves an Ingress from the fake API server;
a WebSocket is opened through it, and two threads send keep-alive requests,
one over HTTP and one over HTTPS, each on one connection and bounded in
count and time; meanwhile the test applies 1,000 changes through the
watch: rules of the same Ingress (paths and hosts added and removed), other
Ingresses created and deleted, the web Service's endpoints moved between
two backends, and the Ingress's TLS certificate rotated. Then: zero failed
requests, each keep-alive connection never replaced, the WebSocket still
echoes, and a new TLS connection gets the last certificate.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme
from ingress_fakes import Backends, Request, ws_echo
from ingress_world import endpoints, ingress, ingress_class, path, secret, service

from netplane.testing.fakekube import FakeKube
from netplane.testing.http import Stream
from netplane.testing.ports import free_port

pytestmark = pytest.mark.e2e

CHANGES = 1000
WEB = ("127.0.41.1", "127.0.41.2")
WS = "127.0.41.3"


def site(step: int) -> dict[str, Any]:
    """The Ingress under test at change ``step``: the two rules in use never change."""
    rules = [
        ("shop.test", [path("/", "web"), *([path(f"/extra-{step}", "web")] if step % 2 else [])]),
        ("ws.test", [path("/", "ws")]),
    ]
    if step % 3 == 0:
        rules.append((f"alt-{step}.test", [path("/", "web")]))
    tls = [{"hosts": ["shop.test"], "secretName": "shop-tls"}]
    # Plain HTTP keeps being served (no redirect), so both loops run side by side.
    plain = {"nginx.ingress.kubernetes.io/ssl-redirect": "false"}
    return ingress("site", rules, tls=tls, annotations=plain)


def shop_secret(leaf: trustme.LeafCert) -> dict[str, Any]:
    return secret("shop-tls", leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())


class SniConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 with the SNI name a client of ``host`` would send."""

    def __init__(self, port: int, context: ssl.SSLContext, sni: str) -> None:
        super().__init__("127.0.0.1", port, timeout=5, context=context)
        self.sni = sni

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.sni)  # type: ignore[attr-defined]


def web_endpoints(port: int, step: int) -> dict[str, Any]:
    """Both web backends, then one, then the other, in turn."""
    addrs = [list(WEB), [WEB[0]], [WEB[1]]][step % 3]
    return endpoints("web", addrs, [("http", port)], ready=True)


class RequestLoop(threading.Thread):
    """GET shop.test on one keep-alive connection until stopped, or the count or time runs out."""

    def __init__(
        self,
        connect: Any,
        *,
        max_requests: int = 50_000,
        max_seconds: float = 60.0,
    ) -> None:
        super().__init__(daemon=True)
        self.connect = connect
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.connections = 0

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        deadline = time.monotonic() + self.max_seconds
        n = 0
        while not self.stop.is_set() and n < self.max_requests and time.monotonic() < deadline:
            n += 1
            if conn is None:
                conn = self.connect()
                self.connections += 1
            try:
                conn.request("GET", f"/r{n}", headers={"Host": "shop.test"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or not body.endswith(b" GET /r%d" % n):
                    self.failures.append(f"request {n}: {resp.status} {body[:80]!r}")
                else:
                    self.ok += 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"request {n}: {type(e).__name__}: {e}")
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def summary(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/state?summary=1", timeout=5) as r:
        return json.loads(r.read())


def named(name: str):
    async def handler(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        body = b"%s %s %s" % (name.encode(), req.method, req.target)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await w.drain()

    return handler


async def ws_says(r: asyncio.StreamReader, w: asyncio.StreamWriter, msg: bytes) -> None:
    w.write(msg)
    async with asyncio.timeout(5):
        assert await r.readexactly(5 + len(msg)) == b"echo:" + msg


async def get_status(port: int, host: str) -> int:
    def one() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/", headers={"Host": host})
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    return await asyncio.to_thread(one)


def presented_cert(port: int, context: ssl.SSLContext) -> bytes:
    """The DER certificate a new TLS connection for shop.test is given (b"" if none)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        with sock, context.wrap_socket(sock, server_hostname="shop.test") as tls:
            return tls.getpeercert(binary_form=True) or b""
    except (OSError, ssl.SSLError):
        return b""


async def until_tls_cert(
    port: int, context: ssl.SSLContext, leaf: trustme.LeafCert, timeout: float = 15.0
) -> None:
    want = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    async with asyncio.timeout(timeout):
        while await asyncio.to_thread(presented_cert, port, context) != want:
            await asyncio.sleep(0.05)


async def until_status(port: int, host: str, status: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while await get_status(port, host) != status:
            await asyncio.sleep(0.05)


async def test_a_thousand_route_changes_lose_no_request_and_keep_the_websocket(
    tmp_path: Path, start_netplane
) -> None:
    ca = trustme.CA()
    leaves = [ca.issue_cert("shop.test"), ca.issue_cert("shop.test")]
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    backends = Backends()
    web_port = free_port()
    for host in WEB:
        await backends.start(named(host), host, web_port)
    _, ws_port = await backends.start(ws_echo, WS, free_port())
    http_port, https_port = free_port(), free_port()
    async with FakeKube() as fake:
        for obj in (
            ingress_class("netplane"),
            service("web"),
            service("ws"),
            web_endpoints(web_port, 0),
            endpoints("ws", [WS], [("http", ws_port)], ready=True),
            shop_secret(leaves[0]),
            site(0),
        ):
            fake.apply(obj)
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", {"token": "test-token"})
        np = start_netplane(
            "run", "--kubeconfig", str(kubeconfig),
            "--mode", "local", "--proxy", "off", "--dns", "off",
            "--ingress-http", f"127.0.0.1:{http_port}",
            "--ingress-https", f"127.0.0.1:{https_port}",
            "--ingress-access-log", "off", "--shutdown-grace", "1",
        )  # fmt: skip
        admin_port = np.admin_port
        loops: list[RequestLoop] = []
        try:
            await np.await_ready()
            await until_status(http_port, "shop.test", 200)
            await until_tls_cert(https_port, client_tls, leaves[0])

            r, w = await asyncio.open_connection("127.0.0.1", http_port)
            w.write(
                b"GET /chat HTTP/1.1\r\nHost: ws.test\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            async with asyncio.timeout(5):
                assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
            await ws_says(r, w, b"before")

            loops = [
                RequestLoop(lambda: http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)),
                RequestLoop(lambda: SniConnection(https_port, client_tls, "shop.test")),
            ]
            for loop_thread in loops:
                loop_thread.start()
            others: list[str] = []
            leaf = leaves[0]
            for step in range(1, CHANGES + 1):
                kind = step % 5
                if kind == 4:
                    leaf = leaves[step // 5 % 2]
                    fake.apply(shop_secret(leaf))  # the certificate rotates
                elif kind == 0:
                    fake.apply(site(step))  # the same Ingress: paths and hosts change
                elif kind == 1:
                    fake.apply(web_endpoints(web_port, step))  # endpoints move
                elif kind == 2:
                    name = f"other-{step}"  # another Ingress comes ...
                    fake.apply(ingress(name, [(f"{name}.test", [path("/", "web")])]))
                    others.append(name)
                else:
                    fake.delete("Ingress", "default", others.pop(0))  # ... and goes
                if step % 100 == 0:
                    await ws_says(r, w, b"during-%d" % step)
                await asyncio.sleep(0.004)  # spread over seconds, not one coalesced batch

            # Every change has reached the ingress: a last one answers.
            final = site(CHANGES)
            final["spec"]["rules"].append(
                {"host": "final.test", "http": {"paths": [path("/", "web")]}}
            )
            fake.apply(final)
            await until_status(http_port, "final.test", 200)
            await asyncio.sleep(0.3)  # a few more requests after the last change
            for loop_thread in loops:
                loop_thread.stop.set()
                await asyncio.to_thread(loop_thread.join, 10)
                assert not loop_thread.is_alive()

            for loop_thread in loops:
                assert loop_thread.failures == [], loop_thread.failures[:5]
                print(f"{loop_thread.ok} requests during {CHANGES} changes")
                assert loop_thread.ok >= 50, loop_thread.ok  # the loop really ran alongside
                assert loop_thread.connections == 1  # the keep-alive connection was never closed
            await ws_says(r, w, b"after")
            # New handshakes present the certificate of the last rotation.
            await until_tls_cert(https_port, client_tls, leaf)
            w.close()
            doc = await asyncio.to_thread(summary, admin_port)
            assert doc["counts"]["Ingress"] == 1 + len(others)  # the daemon saw them all go
        finally:
            for loop_thread in loops:
                loop_thread.stop.set()
            code = await np.astop(15)
            await backends.close()
        out = np.stdout + np.log
        assert code == 0, out[-2000:]
        assert "Traceback" not in out, out[-2000:]
