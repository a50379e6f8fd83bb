"""The ingress end to end: `netplane run` as a process, curl and raw sockets as clients.

Backends are small asyncio servers in the test on loopback addresses; the
daemon reads manifests (IngressClass, Ingresses, Services, EndpointSlices)
naming them and serves the Ingress on free loopback ports.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ingress_fakes import Backends, Daemon, Request, curl, http_exchange, ws_echo
from ingress_world import endpoints, ingress, ingress_class, path, service

from netplane.testing.http import Stream, body_data
from netplane.testing.ports import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

NGINX = "nginx.ingress.kubernetes.io/"


def named(name: str):
    async def handler(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        body = b"%s %s %s" % (name.encode(), req.method, req.target)
        if req.body:
            body += b" body=%d" % len(req.body)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await w.drain()

    return handler


async def slow(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
    await asyncio.sleep(4)


async def chunk_counter(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
    """Reads a chunked body itself (h11 frames it) and answers how many chunks and bytes came."""
    chunks = total = 0
    async for piece in body_data(req, r):
        total += len(piece.data)
        chunks += piece.chunk_end
    body = b"chunks=%d bytes=%d te=%s" % (
        chunks,
        total,
        req.headers.get(b"transfer-encoding", b"-"),
    )
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await w.drain()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    b = Backends()
    ports = {}
    for i, (name, handler, read_body) in enumerate(
        [
            ("web", named("web"), True),
            ("api", named("api"), True),
            ("slow", slow, True),
            ("ws", ws_echo, True),
            ("upload", chunk_counter, False),
        ],
        start=1,
    ):
        _, ports[name] = await b.start(handler, f"127.0.40.{i}", free_port(), read_body=read_body)
    ports["dead"] = free_port()
    ports["none"] = free_port()
    addrs = {"web": 1, "api": 2, "slow": 3, "ws": 4, "upload": 5, "dead": 6, "none": 7}
    objs: list[dict] = [ingress_class("netplane")]
    for name, n in addrs.items():
        objs.append(service(name))
        objs.append(
            endpoints(name, [f"127.0.40.{n}"], [("http", ports[name])], ready=name != "none")
        )
    objs += [
        ingress(
            "site",
            [
                (
                    "shop.test",
                    [path("/", "web"), path("/api", "api"), path("/exact", "api", "Exact")],
                ),
                ("*.wild.test", [path("/", "api")]),
                ("ws.test", [path("/", "ws")]),
                ("upload.test", [path("/", "upload")]),
            ],
        ),
        ingress(
            "limits",
            [
                (
                    "limits.test",
                    [
                        path("/", "web"),
                        path("/dead", "dead"),
                        path("/none", "none"),
                        path("/slow", "slow"),
                    ],
                )
            ],
            annotations={NGINX + "proxy-body-size": "10", NGINX + "proxy-read-timeout": "1"},
        ),
        ingress(
            "moved",
            [("old.test", [path("/", "web")])],
            annotations={NGINX + "permanent-redirect": "https://new.test/"},
        ),
        ingress(
            "rewritten",
            [("rw.test", [path("/app", "web")])],
            annotations={NGINX + "rewrite-target": "/inner"},
        ),
        ingress(
            "sticky",
            [("sticky.test", [path("/", "web")])],
            annotations={NGINX + "affinity": "cookie", NGINX + "session-cookie-name": "route"},
        ),
        ingress("main", [("canary.test", [path("/", "web")])]),
        ingress(
            "canary",
            [("canary.test", [path("/", "api")])],
            annotations={NGINX + "canary": "true", NGINX + "canary-by-header": "x-canary"},
        ),
        ingress(
            "private",
            [("private.test", [path("/", "web")])],
            annotations={NGINX + "whitelist-source-range": "10.0.0.0/8"},
        ),
    ]
    (tmp_path / "m").mkdir()
    d = Daemon(tmp_path / "m")
    d.write("all.yaml", objs)
    await d.start("--ingress-access-log", str(tmp_path / "access.log"))
    yield {"daemon": d, "backends": b, "objs": objs, "tmp": tmp_path}
    await d.stop()
    await b.close()


def url(d: Daemon, host: str, target: str) -> tuple[str, str]:
    return f"http://{host}:{d.http}{target}", f"{host}:{d.http}:127.0.0.1"


async def ready(d: Daemon, host: str) -> None:
    u, resolve = url(d, host, "/")
    await d.until(u, "--resolve", resolve)


async def get(d: Daemon, host: str, target: str, *args: str) -> tuple[int, str]:
    u, resolve = url(d, host, target)
    return await curl(u, "--resolve", resolve, *args)


async def status(d: Daemon, host: str, target: str, *args: str) -> str:
    return (await get(d, host, target, "-o", "/dev/null", "-w", "%{http_code}", *args))[1]


async def test_host_and_path_routing(world, proto):
    d = world["daemon"]
    await ready(d, "shop.test")
    p = proto.plain
    assert (await get(d, "shop.test", "/", *p))[1] == "web GET /"
    assert (await get(d, "SHOP.test", "/a/b?x=1", *p))[1] == "web GET /a/b?x=1"
    assert (await get(d, "shop.test", "/api", *p))[1] == "api GET /api"
    assert (await get(d, "shop.test", "/api/v1", *p))[1] == "api GET /api/v1"
    assert (await get(d, "shop.test", "/apix", *p))[1] == "web GET /apix"  # Prefix is per segment
    assert (await get(d, "shop.test", "/exact", *p))[1] == "api GET /exact"
    assert (await get(d, "shop.test", "/exact/more", *p))[1] == "web GET /exact/more"
    assert (await get(d, "a.wild.test", "/w", *p))[1] == "api GET /w"
    assert await status(d, "a.b.wild.test", "/w", *p) == "404"  # a wildcard is one label
    assert await status(d, "nobody.test", "/", *p) == "404"
    _, head = await get(d, "shop.test", "/", "-D", "-", "-o", "/dev/null", *p)
    assert head.startswith(proto.status_line + "200")


async def test_redirects_and_error_statuses(world, proto):
    d = world["daemon"]
    await ready(d, "limits.test")
    p = proto.plain
    _code, out = await get(
        d, "old.test", "/x", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", *p
    )
    assert out == "301 https://new.test/"
    assert await status(d, "limits.test", "/", "--data-binary", "0123456789A", *p) == "413"
    assert await status(d, "limits.test", "/", "--data-binary", "0123456789", *p) == "200"
    assert await status(d, "limits.test", "/", "-H", "X-Big: " + "a" * 40000, *p) == "431"
    assert await status(d, "limits.test", "/dead", *p) == "502"
    assert await status(d, "limits.test", "/none", *p) == "503"
    assert await status(d, "limits.test", "/slow", *p) == "504"
    # every error page is small and says what happened
    _, body = await get(d, "limits.test", "/dead", *p)
    assert 0 < len(body) < 200 and "upstream" in body
    # and the listener goes on serving
    assert (await get(d, "limits.test", "/", *p))[1] == "web GET /"


async def test_annotations_apply_over_both_protocols(world, proto):
    d = world["daemon"]
    await ready(d, "shop.test")  # (every Ingress comes in one manifest)
    p = proto.plain
    assert (await get(d, "rw.test", "/app", *p))[1] == "web GET /inner"
    _, head = await get(d, "sticky.test", "/", "-D", "-", "-o", "/dev/null", *p)
    assert "set-cookie: route=" in head.lower()
    assert (await get(d, "canary.test", "/c", *p))[1] == "web GET /c"
    assert (await get(d, "canary.test", "/c", "-H", "X-Canary: always", *p))[1] == "api GET /c"
    assert await status(d, "private.test", "/", *p) == "403"


async def test_a_malformed_http1_head_is_refused(world):
    d = world["daemon"]
    await ready(d, "limits.test")
    raw = await http_exchange(d.http, b"GET / HTTP/1.1\r\nHost: limits.test\r\nBad Header\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")


async def test_access_log_has_a_line_per_request(world, proto):
    d = world["daemon"]
    await ready(d, "shop.test")
    await get(d, "shop.test", "/logged-here", *proto.plain)
    log = world["tmp"] / "access.log"
    async with asyncio.timeout(5):
        while "/logged-here" not in (log.read_text() if log.exists() else ""):
            await asyncio.sleep(0.1)
    line = next(ln for ln in log.read_text().splitlines() if "/logged-here" in ln)
    version = "HTTP/2.0" if proto.name == "HTTP/2" else "HTTP/1.1"  # nginx's $server_protocol
    assert f'"GET /logged-here {version}" 200' in line
    assert "host=shop.test" in line and "ingress=default/site" in line


async def test_websocket_echo_survives_a_route_change(world):
    d = world["daemon"]
    await ready(d, "shop.test")
    r, w = await asyncio.open_connection("127.0.0.1", d.http)
    w.write(
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    async with asyncio.timeout(5):
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        w.write(b"hello")
        assert await r.readexactly(10) == b"echo:hello"
    # ws.test now routes elsewhere: new requests see it, the open tunnel does not
    objs = [o for o in world["objs"] if o["metadata"]["name"] != "site"]
    objs.append(
        ingress("site", [("shop.test", [path("/", "web")]), ("ws.test", [path("/", "api")])])
    )
    d.write("all.yaml", objs)
    async with asyncio.timeout(10):
        while (await get(d, "ws.test", "/x"))[1] != "api GET /x":
            await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        w.write(b"still")
        assert await r.readexactly(10) == b"echo:still"
    w.close()


async def test_chunked_upload_is_streamed_to_the_backend(world, tmp_path):
    d = world["daemon"]
    await ready(d, "shop.test")
    data = tmp_path / "upload.bin"
    data.write_bytes(b"u" * 200_000)
    code, out = await get(
        d, "upload.test", "/up", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{data}"
    )
    assert code == 0
    assert out.startswith("chunks=") and out.endswith("bytes=200000 te=chunked")


async def test_keep_alive_reuses_one_connection_for_many_requests(world):
    d = world["daemon"]
    await ready(d, "shop.test")
    u, resolve = url(d, "shop.test", "/k")
    _code, out = await curl(u, "--resolve", resolve, u, "-w", " %{num_connects}\n")
    assert out.splitlines() == ["web GET /k 1", "web GET /k 0"]


async def test_the_demo_serves_its_ingress_over_http_and_https(start_netplane):
    import re

    np = start_netplane("demo", "--dns", "off", "--ingress-access-log", "off")
    await np.await_ready()
    text = await np.await_output("Ctrl-C stops")  # the greeting comes once the demo is ready
    tries = re.findall(r"^  (curl (?:-k )?--resolve \S+ (https?)://\S+/api)\s", text, re.M)
    assert {scheme for _, scheme in tries} == {"http", "https"}, text
    for command, _ in tries:
        args = command.split()[1:]  # curl [-k] --resolve H:P:IP URL
        code, body = await curl(args[-1], *args[:-1])
        assert code == 0, body
        assert "demo/api" in body  # the demo's own backend for the /api path answered
    assert re.search(r"openssl s_client -connect 127\.0\.0\.1:\d+ -servername", text)
    assert await np.astop() == 0


async def test_debug_state_shows_the_ingress_plane(world):
    d = world["daemon"]
    await ready(d, "shop.test")
    code, out = await curl(f"http://127.0.0.1:{d.admin}/debug/state")
    assert code == 0, out
    plane = json.loads(out)["planes"]["ingress"]
    assert sorted(plane["listeners"]) == sorted(
        [f"http://127.0.0.1:{d.http}", f"https://127.0.0.1:{d.https}"]
    )
    # a per-worker count: with --workers N the request may have gone to another
    # worker than the one whose view /debug/state shows (/metrics adds them up)
    assert plane["upstream_opened"] >= 0
    assert "shop.test" in json.dumps(plane["routes"])


async def test_metrics_count_requests_by_ingress_host_service_and_status_class(world, proto):
    from prometheus_client.parser import text_string_to_metric_families

    d = world["daemon"]
    await ready(d, "limits.test")

    async def scrape() -> dict[tuple, float]:
        code, out = await curl(f"http://127.0.0.1:{d.admin}/metrics")
        assert code == 0, out
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(out)
            for s in f.samples
        }

    before = await scrape()
    for _ in range(3):
        assert await status(d, "limits.test", "/", *proto.plain) == "200"
    assert await status(d, "limits.test", "/none", *proto.plain) == "503"
    assert await status(d, "nobody.test", "/", *proto.plain) == "404"
    after = await scrape()
    ns = "default"

    def labels(ingress: str, host: str, service: str, code: str) -> tuple:
        return tuple(sorted({
            "ingress": ingress, "host": host, "service": service, "code": code, "scheme": "http",
            "protocol": proto.name,
        }.items()))  # fmt: skip

    def moved(name: str, key: tuple) -> float:
        return after.get((name, key), 0.0) - before.get((name, key), 0.0)

    ok = labels(f"{ns}/limits", "limits.test", f"{ns}/web", "2xx")
    assert moved("netplane_http_requests_total", ok) == 3
    assert moved("netplane_http_request_duration_seconds_count", ok) == 3
    # the rule's host labels the answers a rule gave itself too
    gone = labels(f"{ns}/limits", "limits.test", "", "5xx")
    assert moved("netplane_http_requests_total", gone) == 1
    assert moved("netplane_http_requests_total", labels("", "", "", "4xx")) == 1
    # no label carries a value the client chose
    assert not any("nobody.test" in str(key) for key in after)
