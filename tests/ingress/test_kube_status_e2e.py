"""`netplane run --kubeconfig` writes Ingress status: it appears, follows
--publish-address across a restart, and is cleared when the class moves away.

The daemon is a real subprocess; the fake API server runs in the test's loop
and checks the merge patches as the status subresource does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netplane.testing.fakekube import FakeKube
from netplane.testing.process import Netplane

pytestmark = pytest.mark.e2e


def ingress_doc(cls: str, status: list[dict[str, str]] | None = None) -> dict[str, Any]:
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    doc: dict[str, Any] = {
        "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "ingressClassName": cls,
            "rules": [
                {
                    "host": "web.shop.test",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
                }
            ],
        },
    }
    if status:
        doc["status"] = {"loadBalancer": {"ingress": status}}
    return doc


def ingress_class(name: str, controller: str) -> dict[str, Any]:
    return {"kind": "IngressClass", "metadata": {"name": name}, "spec": {"controller": controller}}


def status(fake: FakeKube) -> list[dict[str, str]]:
    obj = fake.store["Ingress"].get(("shop", "web")) or {}
    return ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


async def until(pred, what: str, timeout: float = 30.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def starter(start_netplane: Callable[..., Netplane], kubeconfig: Path) -> Callable[..., Netplane]:
    """``start(*extra)``: ``netplane run`` on the fake API server, with the ingress only."""

    def start(*extra: str) -> Netplane:
        return start_netplane(
            "run", "--kubeconfig", str(kubeconfig), "--mode", "local", "--admin", "off",
            "--proxy", "off", "--dns", "off", "--ingress-https", "off",
            "--ingress-http", "127.0.0.1:0", "--node-name", "node-a", *extra,
        )  # fmt: skip

    return start


async def stop(np: Netplane) -> str:
    """Stop it; what it logged. A clean stop exits 0."""
    code = await np.astop(15)
    assert code == 0, np.tail()
    return np.stdout + np.log


async def test_ingress_status_appears_follows_publish_address_and_is_cleared(
    tmp_path: Path, start_netplane: Callable[..., Netplane]
) -> None:
    async with FakeKube() as fake:
        fake.apply(ingress_class("netplane", "netplane.io/ingress"))
        fake.apply(ingress_class("nginx", "k8s.io/ingress-nginx"))
        fake.apply(ingress_doc("netplane"))
        fake.apply(
            {
                "kind": "Node",
                "metadata": {"name": "node-a"},
                "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.7"}]},
            }
        )
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", {"token": "test-token"})
        start = starter(start_netplane, kubeconfig)

        # No --publish-address: the node's address, beside any other node's.
        proc = start()
        try:
            await until(lambda: status(fake) == [{"ip": "198.18.0.7"}], "the node's address")
        finally:
            out = await stop(proc)
        assert "Ingress shop/web: status.loadBalancer set to 198.18.0.7" in out
        # Each node publishes only itself, so a stopping node takes itself out.
        assert status(fake) == []

        # Restarted with --publish-address: an IP and a name replace it.
        proc = start("--publish-address", "lb.example.com,198.18.0.9")
        try:
            want = [{"ip": "198.18.0.9"}, {"hostname": "lb.example.com"}]
            await until(lambda: status(fake) == want, "the published addresses")
            patches = [r for r in fake.requests if r.method == "PATCH"]

            # Our own write echoes back through the watch: no write loop.
            await asyncio.sleep(0.5)
            assert [r for r in fake.requests if r.method == "PATCH"] == patches

            # The Ingress moves to another controller's class: cleared.
            moved = ingress_doc("nginx", status=want)
            fake.apply(moved)
            await until(lambda: status(fake) == [], "the status cleared")
        finally:
            await stop(proc)
        # Every write was a merge patch to the status subresource, and accepted.
        writes = [r for r in fake.requests if r.method == "PATCH"]
        assert writes and {r.path for r in writes} == {
            "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/web/status"
        }
        assert {r.status for r in writes} == {200}
