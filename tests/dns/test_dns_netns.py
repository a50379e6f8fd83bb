"""The glibc resolver against netplane's DNS, the way a pod resolves short names.

The test builds a network namespace of its own with a pod's resolv.conf
(``search <ns>.svc.cluster.local svc.cluster.local cluster.local`` and
``options ndots:5``), runs ``netplane run --dns 127.0.0.1:53`` inside it, and
asks ``getent hosts`` there. Everything stays on the namespace's loopback;
the namespace and its /etc/netns directory are removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]

NETNS_ETC = Path("/etc/netns")


def run(*argv: str, timeout: float = 15, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    name = f"npdns{os.getpid()}"
    made = run("ip", "netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    etc = NETNS_ETC / name
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(
            "nameserver 127.0.0.1\n"
            "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
            "options ndots:5 timeout:2 attempts:2\n"
        )
        yield name
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        run("ip", "netns", "del", name, check=False)


def service(name: str, namespace: str, ip: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
    }


def test_getent_resolves_short_names_like_a_pod(netns: str, tmp_path: Path, start_netplane) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    items = [service("web", "shop", "127.77.0.20"), service("web", "other", "127.77.0.21")]
    (manifests / "svc.json").write_text(json.dumps({"kind": "List", "items": items}))
    np = start_netplane(
        "run", "-f", str(manifests), "--mode", "local", "--proxy", "off",
        "--ingress-http", "off", "--ingress-https", "off", "--dns", "127.0.0.1:53",
        "--shutdown-grace", "0",
        prefix=["ip", "netns", "exec", netns],
    )  # fmt: skip
    np.wait_ready(15)
    deadline = time.monotonic() + 15
    answer = ""
    while time.monotonic() < deadline:
        r = run(
            "ip", "netns", "exec", netns, "dig", "@127.0.0.1", "+short", "+time=1",
            "+tries=1", "web.shop.svc.cluster.local", check=False,
        )  # fmt: skip
        answer = r.stdout.strip()
        if answer == "127.77.0.20":
            break
        time.sleep(0.1)
    assert answer == "127.77.0.20", np.tail()

    r = run("ip", "netns", "exec", netns, "getent", "hosts", "web", timeout=30)
    assert r.stdout.split() == ["127.77.0.20", "web.shop.svc.cluster.local"]
    r = run("ip", "netns", "exec", netns, "getent", "hosts", "web.other", timeout=30)
    assert r.stdout.split() == ["127.77.0.21", "web.other.svc.cluster.local"]
    r = run("ip", "netns", "exec", netns, "getent", "hosts", "nothere", timeout=30, check=False)
    assert r.returncode == 2 and r.stdout == ""  # 2: not found
    assert np.stop() == 0
