"""Discovery by environment variables: kubelet's variables, and ``netplane env`` evaluated by sh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from netplane.envvars import namespace_env, service_env, shell_exports
from netplane.model import parse_object


def svc(name: str, ns: str = "shop", **spec: object) -> object:
    return parse_object(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )


def test_one_service_gets_kubelets_variables() -> None:
    s = svc(
        "my-db",
        clusterIP="10.96.0.7",
        ports=[
            {"name": "pg", "port": 5432},
            {"name": "metrics", "port": 9187, "protocol": "UDP"},
        ],
    )
    assert service_env(s) == [
        ("MY_DB_SERVICE_HOST", "10.96.0.7"),
        ("MY_DB_SERVICE_PORT", "5432"),
        ("MY_DB_SERVICE_PORT_PG", "5432"),
        ("MY_DB_SERVICE_PORT_METRICS", "9187"),
        ("MY_DB_PORT", "tcp://10.96.0.7:5432"),
        ("MY_DB_PORT_5432_TCP", "tcp://10.96.0.7:5432"),
        ("MY_DB_PORT_5432_TCP_PROTO", "tcp"),
        ("MY_DB_PORT_5432_TCP_PORT", "5432"),
        ("MY_DB_PORT_5432_TCP_ADDR", "10.96.0.7"),
        ("MY_DB_PORT_9187_UDP", "udp://10.96.0.7:9187"),
        ("MY_DB_PORT_9187_UDP_PROTO", "udp"),
        ("MY_DB_PORT_9187_UDP_PORT", "9187"),
        ("MY_DB_PORT_9187_UDP_ADDR", "10.96.0.7"),
    ]


def test_ipv6_is_bracketed_and_headless_or_external_get_nothing() -> None:
    v6 = svc("six", clusterIP="fd00::7", ports=[{"port": 80}])
    assert ("SIX_PORT", "tcp://[fd00::7]:80") in service_env(v6)
    assert ("SIX_SERVICE_HOST", "fd00::7") in service_env(v6)
    assert service_env(svc("h", clusterIP="None", ports=[{"port": 80}])) == []
    assert service_env(svc("x", type="ExternalName", externalName="a.example")) == []


def test_a_namespace_sees_its_services_and_the_kubernetes_service() -> None:
    services = [
        svc("web", clusterIP="10.96.0.10", ports=[{"port": 80}]),
        svc("web", "other", clusterIP="10.96.0.11", ports=[{"port": 80}]),
        svc("kubernetes", "default", clusterIP="10.96.0.1", ports=[{"name": "https", "port": 443}]),
        svc("api", "default", clusterIP="10.96.0.2", ports=[{"port": 80}]),
    ]
    names = dict(namespace_env(services, "shop"))
    assert names["WEB_SERVICE_HOST"] == "10.96.0.10"
    assert names["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert names["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert "API_SERVICE_HOST" not in names
    # the namespace's own Service of the same name wins over default's
    own = svc("kubernetes", clusterIP="10.96.0.99", ports=[{"port": 443}])
    assert dict(namespace_env([*services, own], "shop"))["KUBERNETES_SERVICE_HOST"] == "10.96.0.99"


def test_exports_survive_shell_quoting() -> None:
    text = shell_exports([("A", "tcp://1.2.3.4:80"), ("B", "it's")])
    out = subprocess.run(
        ["sh", "-c", f'{text}printf "%s|%s" "$A" "$B"'], capture_output=True, text=True, timeout=10
    )
    assert out.stdout == "tcp://1.2.3.4:80|it's"


def test_netplane_env_prints_what_a_shell_evals(tmp_path: Path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    items = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "127.77.0.20", "ports": [{"name": "http", "port": 8080}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "hidden", "namespace": "other"},
            "spec": {"clusterIP": "127.77.0.21", "ports": [{"port": 80}]},
        },
    ]
    (manifests / "s.json").write_text(json.dumps({"kind": "List", "items": items}))
    r = subprocess.run(
        [sys.executable, "-m", "netplane", "env", "--namespace", "shop", "-f", str(manifests),
         "--mode", "local"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = subprocess.run(
        ["sh", "-c", f'{r.stdout}echo "$WEB_SERVICE_HOST $WEB_SERVICE_PORT_HTTP $WEB_PORT"'],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.stdout.strip() == "127.77.0.20 8080 tcp://127.77.0.20:8080"
    assert "HIDDEN" not in r.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "netplane", "env", "--namespace", "shop"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2 and "no source" in bad.stderr


async def test_netplane_env_reads_the_api_server(tmp_path: Path, start_netplane) -> None:
    from netplane.testing.fakekube import FakeKube

    def api_service(name: str, ns: str, ip: str, port: int) -> dict:
        return {
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": port}]},
        }

    async with FakeKube(tokens=("t0ken",)) as fake:
        fake.apply(api_service("kubernetes", "default", "127.77.0.1", 443))
        fake.apply(api_service("api", "shop", "127.77.0.5", 8443))
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", {"token": "t0ken"})
        np = start_netplane(
            "env", "--namespace", "shop", "--kubeconfig", str(kubeconfig), "--mode", "local",
            "--timeout", "20", admin=False,
        )  # fmt: skip
        code = await np.await_exit(30)
    assert code == 0, np.log
    lines = np.stdout.splitlines()
    assert "export API_SERVICE_HOST=127.77.0.5" in lines
    assert "export API_SERVICE_PORT_HTTPS=8443" in lines
    assert "export KUBERNETES_SERVICE_HOST=127.77.0.1" in lines
    assert "export KUBERNETES_PORT=tcp://127.77.0.1:443" in lines
