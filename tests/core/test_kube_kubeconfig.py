"""kubeconfig loading, in-cluster config, token files, exec plugins and TLS contexts."""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from netplane.errors import ConfigError
from netplane.model import Redacted
from netplane.sources.kube import ClusterConfig, Credentials, in_cluster_config, load_kubeconfig
from netplane.sources.kube.auth import AuthError, TokenFile, load_cert_chain_from_memory

CA = trustme.CA()
LEAF = CA.issue_cert("netplane@example.test")
CA_PEM = CA.cert_pem.bytes()
CERT_PEM = LEAF.cert_chain_pems[0].bytes()
KEY_PEM = LEAF.private_key_pem.bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def config(
    clusters: dict[str, dict[str, Any]],
    users: dict[str, dict[str, Any]],
    contexts: dict[str, dict[str, Any]],
    current: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": c} for n, c in clusters.items()],
        "users": [{"name": n, "user": u} for n, u in users.items()],
        "contexts": [{"name": n, "context": c} for n, c in contexts.items()],
    }
    if current:
        doc["current-context"] = current
    return doc


# -- merging and contexts --------------------------------------------------------


def test_kubeconfig_env_merge_first_file_wins(tmp_path: Path) -> None:
    first = write(
        tmp_path / "a" / "config",
        config(
            {"prod": {"server": "https://first.example:6443"}},
            {"alice": {"token": "tok-first"}},
            {"prod": {"cluster": "prod", "user": "alice", "namespace": "shop"}},
            current="prod",
        ),
    )
    second = write(
        tmp_path / "b" / "config",
        config(
            {
                "prod": {"server": "https://second.example:6443"},
                "dev": {"server": "https://dev.example"},
            },
            {"alice": {"token": "tok-second"}, "bob": {"token": "tok-bob"}},
            {"dev": {"cluster": "dev", "user": "bob"}},
            current="dev",
        ),
    )
    env = {"KUBECONFIG": os.pathsep.join([str(first), str(tmp_path / "missing"), str(second)])}
    cfg = load_kubeconfig(env=env)
    assert cfg.context == "prod"  # current-context from the first file that sets one
    assert cfg.server == "https://first.example:6443"
    assert cfg.token == Redacted(b"tok-first")
    assert cfg.namespace == "shop"
    assert cfg.host_port == ("first.example", 6443)

    dev = load_kubeconfig(context="dev", env=env)  # a context only the second file has
    assert dev.server == "https://dev.example"
    assert dev.host_port == ("dev.example", 443)
    assert dev.token == Redacted(b"tok-bob")
    assert dev.namespace == "default"


def test_default_path_is_home_kube_config(tmp_path: Path) -> None:
    write(
        tmp_path / ".kube" / "config",
        config(
            {"c": {"server": "https://h:1"}}, {"u": {}}, {"x": {"cluster": "c", "user": "u"}}, "x"
        ),
    )
    assert load_kubeconfig(env={"HOME": str(tmp_path)}).server == "https://h:1"


@pytest.mark.parametrize(
    ("doc", "context", "message"),
    [
        (config({}, {}, {}), None, "no current-context"),
        (config({}, {}, {}, "nope"), None, "context 'nope' not found"),
        (config({}, {"u": {}}, {"x": {"cluster": "c", "user": "u"}}), "x", "cluster 'c' not found"),
        (
            config({"c": {"server": "https://h"}}, {}, {"x": {"cluster": "c", "user": "u"}}),
            "x",
            "user 'u' not found",
        ),
        (
            config({"c": {"server": "h:6443"}}, {"u": {}}, {"x": {"cluster": "c", "user": "u"}}),
            "x",
            "https://",
        ),
        (
            config(
                {"c": {"server": "https://h"}},
                {"u": {"client-certificate-data": b64(CERT_PEM)}},
                {"x": {"cluster": "c", "user": "u"}},
            ),
            "x",
            "go together",
        ),
        (
            config(
                {"c": {"server": "https://h", "certificate-authority-data": "!!"}},
                {"u": {}},
                {"x": {"cluster": "c", "user": "u"}},
            ),
            "x",
            "not valid base64",
        ),
    ],
)
def test_errors_name_the_problem(
    tmp_path: Path, doc: dict[str, Any], context: str | None, message: str
) -> None:
    path = write(tmp_path / "config", doc)
    with pytest.raises(ConfigError, match=message):
        load_kubeconfig(path, context)


def test_no_file_at_all(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no readable file"):
        load_kubeconfig(tmp_path / "absent")


def test_yaml_error_does_not_quote_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("users:\n- name: u\n  user: {token: hunter2-secret\n")
    with pytest.raises(ConfigError) as info:
        load_kubeconfig(path)
    assert "hunter2" not in str(info.value)


# -- credentials and files ---------------------------------------------------------


def test_data_fields_are_decoded(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config",
        config(
            {
                "c": {
                    "server": "https://h:6443",
                    "certificate-authority-data": b64(CA_PEM),
                    "tls-server-name": "api.internal",
                }
            },
            {"u": {"client-certificate-data": b64(CERT_PEM), "client-key-data": b64(KEY_PEM)}},
            {"x": {"cluster": "c", "user": "u"}},
            "x",
        ),
    )
    cfg = load_kubeconfig(path)
    assert cfg.ca_pem == CA_PEM
    assert cfg.client_cert_pem == CERT_PEM
    assert cfg.client_key_pem == Redacted(KEY_PEM)
    assert cfg.tls_server_name == "api.internal"
    assert cfg.token is None
    assert "PRIVATE KEY" not in repr(cfg)


def test_relative_paths_resolve_against_their_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "kube"
    (home / "pki").mkdir(parents=True)
    (home / "pki" / "ca.pem").write_bytes(CA_PEM)
    (home / "pki" / "me.crt").write_bytes(CERT_PEM)
    (home / "pki" / "me.key").write_bytes(KEY_PEM)
    (home / "token").write_text("from-file\n")
    write(
        home / "config",
        config(
            {"c": {"server": "https://h", "certificate-authority": "pki/ca.pem"}},
            {
                "u": {
                    "client-certificate": "pki/me.crt",
                    "client-key": "./pki/me.key",
                    "tokenFile": "token",
                    "exec": {
                        "command": "./bin/cred",
                        "apiVersion": "client.authentication.k8s.io/v1",
                    },
                },
                "v": {
                    "exec": {
                        "command": "cred-on-path",
                        "apiVersion": "client.authentication.k8s.io/v1",
                    }
                },
            },
            {"x": {"cluster": "c", "user": "u"}, "y": {"cluster": "c", "user": "v"}},
            "x",
        ),
    )
    monkeypatch.chdir(tmp_path)  # resolution must not depend on the working directory
    cfg = load_kubeconfig("kube/config")
    assert cfg.ca_pem == CA_PEM
    assert cfg.client_cert_pem == CERT_PEM
    assert cfg.client_key_pem == Redacted(KEY_PEM)
    assert cfg.token_file == (home / "token").resolve()
    assert cfg.exec is not None and cfg.exec.command == str((home / "bin" / "cred").resolve())
    other = load_kubeconfig("kube/config", "y")
    assert other.exec is not None and other.exec.command == "cred-on-path"  # looked up on $PATH


async def test_token_file_from_kubeconfig_is_used(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("abc\n")
    path = write(
        tmp_path / "config",
        config(
            {"c": {"server": "https://h"}},
            {"u": {"tokenFile": "tok"}},
            {"x": {"cluster": "c", "user": "u"}},
            "x",
        ),
    )
    creds = Credentials(load_kubeconfig(path))
    assert await creds.authorization() == "Bearer abc"


def test_token_file_rereads_on_change(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one\n")
    tf = TokenFile(path)
    assert tf.read() == Redacted(b"one")
    new = tmp_path / "token.new"
    new.write_text("two-two\n")
    new.replace(path)
    assert tf.read() == Redacted(b"two-two")
    path.unlink()
    assert tf.read() == Redacted(b"two-two")  # mid-rotation: the last token stays
    assert "two" not in repr(tf)


def test_token_file_missing_at_start(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="token file"):
        TokenFile(tmp_path / "absent").read()


# -- in-cluster --------------------------------------------------------------------


def test_in_cluster(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_bytes(CA_PEM)
    (tmp_path / "namespace").write_text("kube-system\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    cfg = in_cluster_config(tmp_path, env=env)
    assert cfg.server == "https://10.96.0.1:443"
    assert cfg.ca_pem == CA_PEM
    assert cfg.token_file == tmp_path / "token"
    assert cfg.namespace == "kube-system"
    v6 = in_cluster_config(tmp_path, env={**env, "KUBERNETES_SERVICE_HOST": "fd00::1"})
    assert v6.server == "https://[fd00::1]:443"
    assert v6.host_port == ("fd00::1", 443)


def test_in_cluster_needs_env_and_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster_config(tmp_path, env={})
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError, match="token"):
        in_cluster_config(tmp_path, env=env)


# -- TLS ---------------------------------------------------------------------------


async def test_insecure_skip_tls_verify(tmp_path: Path) -> None:
    cfg = ClusterConfig(server="https://h", insecure_skip_tls_verify=True)
    ctx = await Credentials(cfg).ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    strict = await Credentials(ClusterConfig(server="https://h", ca_pem=CA_PEM)).ssl_context()
    assert strict is not None and strict.verify_mode == ssl.CERT_REQUIRED
    assert await Credentials(ClusterConfig(server="http://h")).ssl_context() is None


def test_key_from_memory_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen_modes: list[int] = []
    real = ssl.SSLContext.load_cert_chain

    def spy(
        self: ssl.SSLContext, certfile: str, keyfile: str | None = None, password: Any = None
    ) -> None:
        seen_modes.append(os.stat(keyfile or certfile).st_mode & 0o777)
        real(self, certfile, keyfile)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    ctx = ssl.create_default_context()
    load_cert_chain_from_memory(ctx, CERT_PEM, Redacted(KEY_PEM))
    assert seen_modes == [0o600]
    assert list(tmp_path.iterdir()) == []


def test_mismatched_key_error_hides_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    other_key = CA.issue_cert("other.example").private_key_pem.bytes()
    with pytest.raises(Exception) as info:
        load_cert_chain_from_memory(ssl.create_default_context(), CERT_PEM, Redacted(other_key))
    assert "PRIVATE" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


# -- exec plugins ------------------------------------------------------------------

PLUGIN = r"""
import json, os, pathlib, sys
state = pathlib.Path(sys.argv[1])
runs = int(state.read_text()) + 1 if state.exists() else 1
state.write_text(str(runs))
pathlib.Path(sys.argv[1] + ".info").write_text(os.environ["KUBERNETES_EXEC_INFO"])
pathlib.Path(sys.argv[1] + ".env").write_text(os.environ.get("CRED_FLAVOR", ""))
mode = sys.argv[2]
status = {"token": "exec-token-%d" % runs}
if mode == "expiring":
    status["expirationTimestamp"] = "2030-01-01T00:00:00Z"
elif mode == "cert":
    status = {"clientCertificateData": sys.argv[3], "clientKeyData": sys.argv[4]}
elif mode == "fail":
    print("SECRET-IN-STDOUT")
    sys.exit(3)
elif mode == "garbage":
    print("not json SECRET")
    sys.exit(0)
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status}))
"""


def exec_config(tmp_path: Path, *args: str, provide_info: bool = True) -> ClusterConfig:
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    path = write(
        tmp_path / "config",
        config(
            {
                "c": {
                    "server": "https://api.example:6443",
                    "certificate-authority-data": b64(CA_PEM),
                }
            },
            {
                "u": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": sys.executable,
                        "args": [str(script), str(tmp_path / "state"), *args],
                        "env": [{"name": "CRED_FLAVOR", "value": "vanilla"}],
                        "provideClusterInfo": provide_info,
                        "interactiveMode": "Never",
                    }
                }
            },
            {"x": {"cluster": "c", "user": "u"}},
            "x",
        ),
    )
    return load_kubeconfig(path)


async def test_exec_plugin_token_cached_until_expiry(tmp_path: Path) -> None:
    clock = [1_700_000_000.0]  # 2023, before the token's 2030 expiry
    creds = Credentials(exec_config(tmp_path, "expiring"), now=lambda: clock[0])
    assert await creds.authorization() == "Bearer exec-token-1"
    assert await creds.authorization() == "Bearer exec-token-1"
    assert creds.exec_plugin is not None and creds.exec_plugin.runs == 1
    clock[0] = 1_900_000_000.0  # past 2030-01-01
    assert await creds.authorization() == "Bearer exec-token-2"
    assert creds.exec_plugin.runs == 2
    # The plugin keeps answering with a 2030 expiry, already past: never reused.
    assert await creds.authorization() == "Bearer exec-token-3"

    info = json.loads((tmp_path / "state.info").read_text())
    assert info["kind"] == "ExecCredential"
    assert info["apiVersion"] == "client.authentication.k8s.io/v1"
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == "https://api.example:6443"
    assert (tmp_path / "state.env").read_text() == "vanilla"


async def test_exec_plugin_without_expiry_reruns_only_after_401(tmp_path: Path) -> None:
    creds = Credentials(exec_config(tmp_path, "plain", provide_info=False))
    assert await creds.authorization() == "Bearer exec-token-1"
    assert await creds.authorization() == "Bearer exec-token-1"
    creds.unauthorized()
    assert await creds.authorization() == "Bearer exec-token-2"
    info = json.loads((tmp_path / "state.info").read_text())
    assert "cluster" not in info["spec"]


async def test_exec_plugin_client_certificate(tmp_path: Path) -> None:
    creds = Credentials(exec_config(tmp_path, "cert", CERT_PEM.decode(), KEY_PEM.decode()))
    assert await creds.authorization() is None
    ctx = await creds.ssl_context()
    assert ctx is not None
    assert ctx is await creds.ssl_context()  # built once per certificate


@pytest.mark.parametrize(
    ("mode", "message"), [("fail", "exited with status 3"), ("garbage", "not JSON")]
)
async def test_exec_plugin_failures_hide_output(tmp_path: Path, mode: str, message: str) -> None:
    creds = Credentials(exec_config(tmp_path, mode))
    with pytest.raises(AuthError, match=message) as info:
        await creds.authorization()
    assert "SECRET" not in str(info.value)


async def test_exec_plugin_missing_command(tmp_path: Path) -> None:
    cfg = exec_config(tmp_path, "plain")
    assert cfg.exec is not None
    broken = ClusterConfig(server=cfg.server, exec=type(cfg.exec)(command=str(tmp_path / "nope")))
    with pytest.raises(AuthError, match="cannot start"):
        await Credentials(broken).authorization()


def test_secrets_stay_out_of_reprs(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config",
        config(
            {"c": {"server": "https://h"}},
            {
                "u": {
                    "token": "tok-XYZZY",
                    "client-certificate-data": b64(CERT_PEM),
                    "client-key-data": b64(KEY_PEM),
                    "exec": {
                        "command": "x",
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "env": [{"name": "PW", "value": "pw-XYZZY"}],
                    },
                }
            },
            {"x": {"cluster": "c", "user": "u"}},
            "x",
        ),
    )
    cfg = load_kubeconfig(path)
    for text in (repr(cfg), str(cfg), repr(Credentials(cfg))):
        assert "XYZZY" not in text and "PRIVATE KEY" not in text
