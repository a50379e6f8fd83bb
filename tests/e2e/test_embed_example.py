"""examples/embed.py: run as the README tells a user to run it, and its Dataplane
checked with real clients (raw TCP, http.client, dnspython), with no daemon."""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import ipaddress
import re
import socket
import subprocess
import sys
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ipaddress.ip_network("127.77.0.0/16")


def load_example():
    """examples/embed.py as a module (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location("embed_example", ROOT / "examples" / "embed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embed_example_reaches_the_backend_three_ways():
    r = subprocess.run(
        [sys.executable, "examples/embed.py"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4, r.stdout
    m = re.fullmatch(r"ClusterIP (\S+):8080: 200 hello from backend :(\d+)", lines[0])
    assert m, lines[0]
    ip, port = m.group(1), m.group(2)
    assert ipaddress.ip_address(ip) in LOCAL
    assert lines[1] == f"Ingress http://shop.example/: 200 hello from backend :{port}"
    assert lines[2] == f"DNS web.shop.svc.cluster.local A: {ip}"
    m = re.fullmatch(r"after the endpoint moved: 200 hello from backend :(\d+)", lines[3])
    assert m and m.group(1) != port, lines[3]


async def test_the_embedded_dataplane_serves_tcp_http_and_dns_to_real_clients():
    example = load_example()
    with example.backend() as port:
        async with example.embedded(port) as dp:
            assert sorted(dp.planes) == ["dns", "ingress", "proxy"]
            (cluster_ip,) = dp.table.get("shop", "web").service.cluster_ips

            # ClusterIP: bytes through the L4 proxy, read at the TCP level
            reader, writer = await asyncio.open_connection(cluster_ip, example.SERVICE_PORT)
            writer.write(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert raw.startswith(b"HTTP/1.0 200 ")
            assert raw.endswith(f"hello from backend :{port}\n".encode())

            # Ingress: an HTTP/1.1 client, routed by the Host header
            host, ingress_port, https = dp.planes["ingress"].addresses[0]
            assert not https

            def get() -> tuple[int, bytes]:
                conn = http.client.HTTPConnection(host, ingress_port, timeout=5)
                try:
                    conn.request("GET", "/", headers={"Host": example.HOST})
                    response = conn.getresponse()
                    return response.status, response.read()
                finally:
                    conn.close()

            status, body = await asyncio.to_thread(get)
            assert (status, body) == (200, f"hello from backend :{port}\n".encode())

            # DNS: dnspython over UDP and TCP, answering the ClusterIP
            name = "web.shop.svc.cluster.local."
            dns_port = dp.planes["dns"].port
            for send in (dns.asyncquery.udp, dns.asyncquery.tcp):
                reply = await send(dns.message.make_query(name, "A"), "127.0.0.1", 5, dns_port)
                assert reply.rcode() == dns.rcode.NOERROR
                (rrset,) = reply.answer
                assert rrset.rdtype == dns.rdatatype.A
                assert [r.address for r in rrset] == [cluster_ip]
            reply = await dns.asyncquery.udp(
                dns.message.make_query("nothere.shop.svc.cluster.local.", "A"),
                "127.0.0.1",
                5,
                dns_port,
            )
            assert reply.rcode() == dns.rcode.NXDOMAIN

        # stopped: the planes are gone and their listeners closed
        assert dp.planes == {}
        for addr in ((cluster_ip, example.SERVICE_PORT), (host, ingress_port)):
            with pytest.raises(ConnectionRefusedError), socket.create_connection(addr, 2):
                pass
