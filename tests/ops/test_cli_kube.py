"""`netplane run --kubeconfig` against the fake API server: ready, state, live updates.

The daemon runs as a real subprocess; the fake API server runs in the test's
event loop over HTTPS with bearer-token auth, so this covers the kubeconfig,
the watch client and the admin server together, as a user would run them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme

from netplane.testing.fakekube import FakeKube

pytestmark = pytest.mark.e2e


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def until(pred, timeout: float = 10.0, what: str = "condition") -> Any:
    async with asyncio.timeout(timeout):
        while True:
            value = await pred()
            if value:
                return value
            await asyncio.sleep(0.1)
    raise AssertionError(what)


def service(name: str, cluster_ip: str) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80}]},
    }


def endpoint_slice(name: str, svc: str, ips: list[str]) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


async def test_run_against_api_server(tmp_path: Path, start_netplane) -> None:
    key_ca = trustme.CA()
    leaf = key_ca.issue_cert("web.shop.test")
    key_pem = leaf.private_key_pem.bytes()
    async with FakeKube(tokens=("s3cret-token-value",)) as fake:
        fake.apply(service("web", "127.77.0.10"))
        fake.apply(endpoint_slice("web-1", "web", ["127.0.5.1", "127.0.5.2"]))
        fake.apply(
            {
                "kind": "Secret",
                "metadata": {"name": "web-tls", "namespace": "shop"},
                "type": "kubernetes.io/tls",
                "data": {
                    "tls.crt": base64.b64encode(leaf.cert_chain_pems[0].bytes()).decode(),
                    "tls.key": base64.b64encode(key_pem).decode(),
                },
            }
        )
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", {"token": "s3cret-token-value"})
        np = start_netplane(
            "run", "--kubeconfig", str(kubeconfig), "--mode", "local", "--log-level", "debug"
        )
        admin = np.admin_url
        try:
            await np.await_ready()

            async def state() -> dict[str, Any]:
                _, body = await asyncio.to_thread(get, f"{admin}/debug/state")
                return json.loads(body)

            doc = await state()
            assert doc["sources"] == {"kube": True}
            (web,) = [s for s in doc["services"] if s["name"] == "web"]
            assert web["clusterIPs"] == ["127.77.0.10"]
            eps = {(e["address"], e["port"]) for e in web["ports"][0]["endpoints"]}
            assert eps == {("127.0.5.1", 8080), ("127.0.5.2", 8080)}
            assert doc["secrets"] == [
                {"namespace": "shop", "name": "web-tls", "type": "kubernetes.io/tls",
                 "data": "<redacted>"}
            ]  # fmt: skip

            # A live change reaches the table; then a server restart mid-watch
            # loses nothing.
            fake.apply(endpoint_slice("web-1", "web", ["127.0.5.3"]))

            async def moved() -> bool:
                doc = await state()
                (web,) = [s for s in doc["services"] if s["name"] == "web"]
                return [e["address"] for e in web["ports"][0]["endpoints"]] == ["127.0.5.3"]

            await until(moved, what="endpoint change applied")
            fake.restart()
            fake.apply(service("api", "127.77.0.11"))

            async def api_seen() -> bool:
                return any(s["name"] == "api" for s in (await state())["services"])

            await until(api_seen, what="service added after a restart")
            raw = json.dumps(await state()).encode()
            assert key_pem not in raw and base64.b64encode(key_pem) not in raw
        finally:
            code = await np.astop(15)
        text = np.stdout + np.log
        assert code == 0, text
        assert "source kube synced" in text
        # Secrets never reach the log: not the token, not the key.
        assert "s3cret-token-value" not in text
        assert "PRIVATE KEY" not in text
