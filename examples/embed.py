"""Embedding netplane: your program pushes objects in, and netplane serves them.

Run it with ``python examples/embed.py``. It starts a small HTTP backend
on loopback, then one Dataplane that runs the L4 proxy, an HTTP ingress
and cluster DNS in this process (no daemon), with the ingress and DNS on
free loopback ports. It applies a Service, its EndpointSlice and an
Ingress, and reaches the backend three ways: through the Service's
ClusterIP, through the Ingress by host name, and by asking DNS for the
Service's name. Then it moves the endpoint and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator

from dnslib import QTYPE, DNSRecord
from netplane.dns.plane import DnsPlane
from netplane.ingress.plane import IngressPlane

import netplane
from netplane.config import Listen

# The Service's port on its ClusterIP (a loopback address in local mode);
# above 1023, so that no privilege is needed to bind it.
SERVICE_PORT = 8080
HOST = "shop.example"  # the Ingress rule's host


class Hello(http.server.BaseHTTPRequestHandler):
    """The backend: answers every GET with which backend it is."""

    def do_GET(self) -> None:
        body = f"hello from backend :{self.connection.getsockname()[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def backend() -> Iterator[int]:
    """A threaded HTTP server on a free loopback port; yields the port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def objects(backend_port: int) -> list[dict]:
    """What a control plane would push: a Service, its endpoints, an Ingress to it."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": SERVICE_PORT}]},
        },
        endpoints(backend_port),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": "netplane"},
            "spec": {"controller": "netplane.io/ingress"},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "ingressClassName": "netplane",
                "rules": [
                    {
                        "host": HOST,
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {
                                        "service": {"name": "web", "port": {"name": "http"}}
                                    },
                                }
                            ]
                        },
                    }
                ],
            },
        },
    ]


def endpoints(backend_port: int) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": backend_port}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }


@contextlib.asynccontextmanager
async def embedded(backend_port: int) -> AsyncIterator[netplane.Dataplane]:
    """A Dataplane serving ``objects(backend_port)`` on the L4 proxy, the ingress and DNS."""
    config = netplane.Config(
        mode="local",  # ClusterIPs are loopback addresses; no routes change
        admin=None,
        proxy=True,
        ingress_http=Listen("127.0.0.1", 0),  # 0: a free port
        ingress_https=None,
        ingress_access_log=None,
        dns=Listen("127.0.0.1", 0),
    )
    dp = netplane.Dataplane(config)
    for obj in objects(backend_port):
        dp.apply(obj)  # before start: served as soon as start() returns
    async with dp:
        yield dp


def http_get(url: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read().decode()


async def main() -> None:
    with backend() as port, backend() as second_port:
        async with embedded(port) as dp:
            entry = dp.table.get("shop", "web")
            assert entry is not None
            cluster_ip = entry.service.cluster_ips[0]
            status, body = await asyncio.to_thread(http_get, f"http://{cluster_ip}:{SERVICE_PORT}/")
            print(f"ClusterIP {cluster_ip}:{SERVICE_PORT}: {status} {body.strip()}")

            ingress = dp.planes["ingress"]  # dp.planes holds Planes; this one is the ingress
            assert isinstance(ingress, IngressPlane)
            ingress_host, ingress_port, _https = ingress.addresses[0]
            status, body = await asyncio.to_thread(
                http_get, f"http://{ingress_host}:{ingress_port}/", HOST
            )
            print(f"Ingress http://{HOST}/: {status} {body.strip()}")

            dns = dp.planes["dns"]
            assert isinstance(dns, DnsPlane)
            name = f"web.shop.svc.{dp.config.cluster_domain}"
            reply = await asyncio.to_thread(
                DNSRecord.question(name).send, "127.0.0.1", dns.port, timeout=5
            )
            answers = [str(rr.rdata) for rr in DNSRecord.parse(reply).rr if rr.rtype == QTYPE.A]
            print(f"DNS {name} A: {', '.join(answers)}")

            # A change reaches the planes a moment later: new connections see it.
            changes = dp.subscribe()
            dp.apply(endpoints(second_port))
            await anext(changes)
            for _ in range(100):  # the L4 proxy swaps its route within a few loop turns
                status, body = await asyncio.to_thread(
                    http_get, f"http://{cluster_ip}:{SERVICE_PORT}/"
                )
                if body.strip().endswith(f":{second_port}"):
                    break
                await asyncio.sleep(0.01)
            print(f"after the endpoint moved: {status} {body.strip()}")


if __name__ == "__main__":
    asyncio.run(main())
