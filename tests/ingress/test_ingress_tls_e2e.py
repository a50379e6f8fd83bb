"""TLS end to end: SNI certificates from Secrets, the default, rotation, redirects and HSTS.

Clients are ``openssl s_client`` (which certificate a name gets), curl
with a trustme CA (a verified HTTPS request), and a Python TLS socket held
open across a certificate rotation.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from ingress_fakes import Backends, Daemon, Request, curl
from ingress_world import endpoints, ingress, ingress_class, path, secret, service

from netplane.testing.http import Stream
from netplane.testing.ports import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("curl") is None or shutil.which("openssl") is None,
        reason="curl and openssl are needed",
    ),
]


async def web(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
    body = b"web %s %s proto=%s" % (
        req.method,
        req.target,
        req.headers.get(b"x-forwarded-proto", b"-"),
    )
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await w.drain()


def tls_objects(
    ca: trustme.CA, secure: trustme.LeafCert, wild: trustme.LeafCert, port: int
) -> list[dict]:
    return [
        ingress_class("netplane"),
        service("web"),
        endpoints("web", ["127.0.41.1"], [("http", port)]),
        secret("secure-tls", secure.cert_chain_pems[0].bytes(), secure.private_key_pem.bytes()),
        secret("wild-tls", wild.cert_chain_pems[0].bytes(), wild.private_key_pem.bytes()),
        ingress(
            "tls",
            [
                ("secure.test", [path("/", "web")]),
                ("*.wild.test", [path("/", "web")]),
                ("plain.test", [path("/", "web")]),
            ],
            tls=[
                {"hosts": ["secure.test"], "secretName": "secure-tls"},
                {"hosts": ["*.wild.test"], "secretName": "wild-tls"},
            ],
        ),
    ]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    b = Backends()
    _, port = await b.start(web, "127.0.41.1", free_port())
    ca = trustme.CA()
    secure = ca.issue_cert("secure.test")
    wild = ca.issue_cert("*.wild.test")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    (tmp_path / "m").mkdir()
    d = Daemon(tmp_path / "m")
    d.write("all.yaml", tls_objects(ca, secure, wild, port))
    await d.start("--ingress-access-log", "off")
    yield {"daemon": d, "ca": ca, "ca_file": ca_file, "port": port, "wild": wild}
    await d.stop()
    await b.close()


async def presented(d: Daemon, servername: str) -> x509.Certificate:
    """The certificate ``openssl s_client -servername`` is given."""
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{d.https}", "-servername", servername,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(10):
        out, _ = await proc.communicate()
    m = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.DOTALL)
    assert m, out.decode(errors="replace")[-500:]
    return x509.load_pem_x509_certificate(m.group(0))


def names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)


async def https_ready(world: dict) -> None:
    d = world["daemon"]
    await d.until(
        f"https://secure.test:{d.https}/", "--cacert", str(world["ca_file"]),
        "--resolve", f"secure.test:{d.https}:127.0.0.1",
    )  # fmt: skip


async def test_sni_picks_the_certificate_and_unknown_names_get_the_default(world):
    d = world["daemon"]
    await https_ready(world)
    assert names(await presented(d, "secure.test")) == ["secure.test"]
    assert names(await presented(d, "a.wild.test")) == ["*.wild.test"]
    assert names(await presented(d, "unknown.test")) == ["ingress.local"]  # the generated default
    assert names(await presented(d, "x.a.wild.test")) == ["ingress.local"]


async def test_curl_over_tls_with_the_ca_gets_hsts_and_http_is_redirected(world, proto):
    d = world["daemon"]
    await https_ready(world)
    code, out = await curl(
        f"https://secure.test:{d.https}/shop", "--cacert", str(world["ca_file"]),
        "--resolve", f"secure.test:{d.https}:127.0.0.1", "-D", "-", *proto.tls,
    )  # fmt: skip
    assert code == 0, out
    assert out.startswith(proto.status_line + "200")
    assert "strict-transport-security: max-age=" in out.lower()
    assert out.endswith("web GET /shop proto=https")
    # plain HTTP to a TLS host: 308 to the HTTPS listener
    code, out = await curl(
        f"http://secure.test:{d.http}/shop?q=1", "--resolve", f"secure.test:{d.http}:127.0.0.1",
        "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", *proto.plain,
    )  # fmt: skip
    assert out == f"308 https://secure.test:{d.https}/shop?q=1"
    # a host without TLS is served over HTTP, without HSTS
    code, out = await curl(
        f"http://plain.test:{d.http}/p", "--resolve", f"plain.test:{d.http}:127.0.0.1", "-D", "-",
        *proto.plain,
    )  # fmt: skip
    assert out.endswith("web GET /p proto=http") and "strict-transport-security" not in out.lower()


async def test_certificate_rotation_keeps_an_open_connection(world):
    d = world["daemon"]
    await https_ready(world)
    ctx = ssl.create_default_context(cafile=str(world["ca_file"]))
    r, w = await asyncio.open_connection(
        "127.0.0.1", d.https, ssl=ctx, server_hostname="secure.test"
    )
    old = w.get_extra_info("ssl_object").getpeercert()

    async def request(target: bytes) -> bytes:
        w.write(b"GET %s HTTP/1.1\r\nHost: secure.test\r\n\r\n" % target)
        async with asyncio.timeout(5):
            head = await r.readuntil(b"\r\n\r\n")
            n = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            return await r.readexactly(n)

    assert await request(b"/before") == b"web GET /before proto=https"
    # rotate: a new certificate for secure.test in the same Secret
    ca = world["ca"]
    new = ca.issue_cert("secure.test", "www.secure.test")
    d.write("all.yaml", tls_objects(ca, new, world["wild"], world["port"]))
    async with asyncio.timeout(10):
        while names(await presented(d, "secure.test")) != ["secure.test", "www.secure.test"]:
            await asyncio.sleep(0.1)
    # the connection opened before the rotation still serves, on its old certificate
    assert await request(b"/after") == b"web GET /after proto=https"
    assert w.get_extra_info("ssl_object").getpeercert() == old
    w.close()


async def test_a_bad_secret_falls_back_to_the_default_and_never_logs_the_key(world):
    d = world["daemon"]
    await https_ready(world)
    ca = world["ca"]
    good = ca.issue_cert("secure.test")
    other = ca.issue_cert("secure.test")  # a key that does not match the certificate
    objs = tls_objects(ca, good, world["wild"], world["port"])
    bad = secret("secure-tls", good.cert_chain_pems[0].bytes(), other.private_key_pem.bytes())
    objs = [
        bad if o.get("kind") == "Secret" and o["metadata"]["name"] == "secure-tls" else o
        for o in objs
    ]
    d.write("all.yaml", objs)
    async with asyncio.timeout(10):
        while names(await presented(d, "secure.test")) != ["ingress.local"]:
            await asyncio.sleep(0.1)
    assert names(await presented(d, "a.wild.test")) == ["*.wild.test"]  # the rest still serves
    await d.stop()
    out = d.output.decode(errors="replace")
    assert "secure-tls" in out
    assert "PRIVATE KEY" not in out
    assert other.private_key_pem.bytes().decode().splitlines()[1] not in out


async def handshakes(d: Daemon) -> dict[str, float]:
    """``netplane_ingress_tls_handshakes_total`` by result, parsed from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    code, out = await curl(f"http://127.0.0.1:{d.admin}/metrics")
    assert code == 0, out
    return {
        s.labels["result"]: s.value
        for f in text_string_to_metric_families(out)
        for s in f.samples
        if s.name == "netplane_ingress_tls_handshakes_total"
    }


async def test_tls_handshakes_are_counted_ok_and_failed(world):
    d = world["daemon"]
    await https_ready(world)
    before = await handshakes(d)
    assert set(before) == {"ok", "failed"}

    # one good handshake: the certificate is presented
    assert names(await presented(d, "secure.test")) == ["secure.test"]
    # a TLS 1.1 client: refused (TLS 1.2 and 1.3 only)
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{d.https}", "-tls1_1",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(10):
        out, _ = await proc.communicate()
    assert b"BEGIN CERTIFICATE" not in out
    # plain HTTP on the TLS port
    r, w = await asyncio.open_connection("127.0.0.1", d.https)
    w.write(b"GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n")
    async with asyncio.timeout(10):
        await r.read()  # the proxy closes it
    w.close()

    async with asyncio.timeout(10):
        while True:
            after = await handshakes(d)
            if after["failed"] - before["failed"] >= 2:
                break
            await asyncio.sleep(0.05)
    assert after["ok"] - before["ok"] == 1
    assert after["failed"] - before["failed"] == 2
