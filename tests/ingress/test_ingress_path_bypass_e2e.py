"""Path-rule bypasses end to end: `netplane run`, a real backend, raw request lines.

An allowlist Ingress guards ``/admin`` (the loopback client is outside it,
so the rule answers 403) and a catch-all ``/`` Ingress sends everything
else to the same Service. The backend answers 200 with the target it got.
Each request form that some backend reads as ``/admin/...`` must come back
as the rule's 403 or the proxy's 400, never as the backend's 200. The forms
go out byte for byte, on a raw socket and with ``curl --path-as-is``, so
no client tidies them first.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ingress_fakes import Backends, Daemon, Request, curl, http_exchange, responses
from ingress_world import endpoints, ingress, ingress_class, path, service

from netplane.testing.http import Stream
from netplane.testing.ports import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

HOST = "site.test"

# (request target, the status the client must see)
FORMS = [
    ("/admin;x=1/x", 400),  # Tomcat and Spring drop ; parameters
    ("/;x/admin/x", 400),
    ("/x/..;/admin/x", 400),
    ("/x/.%2E;/admin", 400),
    ("/admin%3Bx/y", 400),
    ("/x\\..\\admin/x", 400),  # IIS-style servers read \ as /
    ("/x%5C..%5Cadmin/x", 400),
    ("/x%5c..%5cadmin", 400),
    ("/admin%2Fx", 400),  # escaped slashes
    ("/admin%2fx", 400),
    ("/x/..%2Fadmin/x", 400),
    ("/x%C0%AF..%C0%AFadmin/x", 400),  # overlong UTF-8
    ("/x%E0%80%AF..%E0%80%AFadmin/x", 400),
    ("/x/%C0%AE%C0%AE/admin/x", 400),
    ("/admin%00/x", 400),  # control bytes
    ("/x%00/../admin", 400),
    ("/admin%0d%0ax", 400),
    ("/admin%7F", 400),
    ("/admin%252Fx", 400),  # double encoding
    ("/x/%252E%252E/admin/x", 400),
    ("/x/..;/..%2F..%5Cadmin;a/x", 400),  # mixtures
    ("/admin;%2F..%2Fx", 400),
    ("/admin/x", 403),  # the rule itself
    ("/x/../admin/x", 403),
    ("/x/%2e%2e/admin", 403),
    ("/admin/x;y=1", 403),
]

# Forms every reader agrees on still reach the backend, as sent.
SERVED = ["/public/x", "/app;jsessionid=ABC/page", "/api/group%2Fproject", "/caf%C3%A9"]


async def app(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
    """200 with the request target as the backend got it."""
    body = b"app " + req.target
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await w.drain()


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    b = Backends()
    _, port = await b.start(app, "127.0.41.1", free_port())
    objs = [
        ingress_class("netplane"),
        service("app"),
        endpoints("app", ["127.0.41.1"], [("http", port)]),
        ingress(
            "admin",
            [(HOST, [path("/admin", "app")])],
            annotations={"nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8"},
        ),
        ingress("site", [(HOST, [path("/", "app")])]),
    ]
    (tmp_path / "m").mkdir()
    d = Daemon(tmp_path / "m")
    d.write("all.yaml", objs)
    await d.start("--ingress-access-log", "off")
    try:
        await d.until(f"http://{HOST}:{d.http}/", "--resolve", f"{HOST}:{d.http}:127.0.0.1")
        await d.until(
            f"http://{HOST}:{d.http}/admin",
            "--resolve",
            f"{HOST}:{d.http}:127.0.0.1",
            status=403,
        )
        yield d
    finally:
        await d.stop()
        await b.close()


async def raw_get(d: Daemon, target: str) -> tuple[int, bytes]:
    request = b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
        target.encode(),
        HOST.encode(),
    )
    [(status, _headers, body)] = responses(await http_exchange(d.http, request))
    return status, body


async def test_every_bypass_form_is_refused_or_meets_the_rule(daemon: Daemon) -> None:
    got = {target: await raw_get(daemon, target) for target, _ in FORMS}
    wrong = {t: got[t] for t, want in FORMS if got[t][0] != want or got[t][1].startswith(b"app ")}
    assert not wrong, wrong


async def test_curl_path_as_is_sees_the_same_statuses(daemon: Daemon) -> None:
    wrong = {}
    for target, want in FORMS:
        _code, out = await curl(
            f"http://{HOST}:{daemon.http}{target}",
            "--path-as-is",
            "--resolve",
            f"{HOST}:{daemon.http}:127.0.0.1",
            "-w",
            " %{http_code}",
        )
        body, _, status = out.rpartition(" ")
        if status != str(want) or body.startswith("app "):
            wrong[target] = out
    assert not wrong, wrong


async def test_forms_every_reader_agrees_on_still_reach_the_backend(daemon: Daemon) -> None:
    for target in SERVED:
        assert await raw_get(daemon, target) == (200, b"app " + target.encode())
