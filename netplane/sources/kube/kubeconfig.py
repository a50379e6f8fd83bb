"""Where the API server is and how to log in: kubeconfig files and in-cluster.

Strategy: follow kubectl (client-go ``clientcmd``) closely enough that a
kubeconfig that works with kubectl works here.

- ``KUBECONFIG`` is a list of files (``os.pathsep``-separated); missing
  files are skipped; for every named cluster, user and context the *first*
  file that defines the name wins, and so does the first ``current-context``.
  Without ``KUBECONFIG`` the file is ``~/.kube/config``.
- Relative paths (certificate-authority, client-certificate, client-key,
  tokenFile, and an exec command containing a path separator) resolve
  against the directory of the file that defined the entry, *before*
  merging, as ``ResolveLocalPaths`` does.
- ``*-data`` fields are base64 PEM and win over their file twins.

The result is a :class:`ClusterConfig`: plain data, read once. Credentials
that change while running (token files, exec plugins) are handled by
:mod:`netplane.sources.kube.auth`, which this config only describes.
Tokens and keys are kept out of every repr and message.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from netplane.addresses import bracket_host
from netplane.errors import ConfigError
from netplane.model import Redacted

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True, slots=True)
class ExecConfig:
    """An ``exec`` credential plugin as the kubeconfig user entry describes it."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may carry secrets
    api_version: str = "client.authentication.k8s.io/v1"
    provide_cluster_info: bool = False


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Everything needed to reach one API server as one user."""

    server: str  # https://host:port, no trailing slash
    ca_pem: bytes | None = None  # None: the system trust store
    insecure_skip_tls_verify: bool = False
    tls_server_name: str = ""
    client_cert_pem: bytes | None = None
    client_key_pem: Redacted | None = None
    token: Redacted | None = None
    token_file: Path | None = None
    exec: ExecConfig | None = None
    namespace: str = "default"
    context: str = ""  # the context's name, for messages ("" in-cluster)

    @property
    def scheme(self) -> str:
        return self.server.split("://", 1)[0].lower()

    @property
    def host_port(self) -> tuple[str, int]:
        rest = self.server.split("://", 1)[1].split("/", 1)[0]
        default = 443 if self.scheme == "https" else 80
        if rest.startswith("["):  # [v6]:port
            host, _, tail = rest[1:].partition("]")
            return host, int(tail[1:]) if tail.startswith(":") else default
        host, _, port = rest.partition(":")
        return host, int(port) if port else default


def kubeconfig_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """The kubeconfig files kubectl would read, in precedence order."""
    env = os.environ if env is None else env
    value = env.get("KUBECONFIG", "")
    if value:
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    return [Path(env.get("HOME", str(Path.home()))) / ".kube" / "config"]


def load_kubeconfig(
    paths: str | os.PathLike[str] | list[str | os.PathLike[str]] | None = None,
    context: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> ClusterConfig:
    """Merge the kubeconfig files and resolve ``context`` (default: current-context).

    ``paths`` may be one path, a list, or None for ``KUBECONFIG`` / the default.
    """
    if paths is None:
        files = kubeconfig_paths(env)
    elif isinstance(paths, str | os.PathLike):
        files = [Path(paths)]
    else:
        files = [Path(p) for p in paths]
    merged = _merge([_read_file(p) for p in files if p.exists()])
    if not merged.loaded:
        raise ConfigError(f"kubeconfig: no readable file among {', '.join(map(str, files))}")
    name = context or merged.current_context
    if not name:
        raise ConfigError("kubeconfig: no context given and no current-context set")
    ctx = merged.contexts.get(name)
    if ctx is None:
        raise ConfigError(f"kubeconfig: context {name!r} not found")
    cluster_name = _str(ctx, "cluster", f"context {name}")
    cluster = merged.clusters.get(cluster_name)
    if cluster is None:
        raise ConfigError(f"kubeconfig: context {name!r}: cluster {cluster_name!r} not found")
    user_name = _str(ctx, "user", f"context {name}")
    user = merged.users.get(user_name, {}) if user_name else {}
    if user_name and user_name not in merged.users:
        raise ConfigError(f"kubeconfig: context {name!r}: user {user_name!r} not found")
    return _build(name, ctx, cluster_name, cluster, user_name, user)


def in_cluster_config(
    sa_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR,
    *,
    env: Mapping[str, str] | None = None,
) -> ClusterConfig:
    """The pod's service account: the API's service address, its CA and token file.

    The token file is re-read whenever it changes (kubelet rotates projected
    tokens), so it is passed on as a path, not read here.
    """
    env = os.environ if env is None else env
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError(
            "in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set"
        )
    sa = Path(sa_dir)
    token_file = sa / "token"
    if not token_file.exists():
        raise ConfigError(f"in-cluster: no service account token at {token_file}")
    ca_file = sa / "ca.crt"
    ca_pem = _read_bytes(ca_file, "in-cluster ca.crt") if ca_file.exists() else None
    ns_file = sa / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
    server_host = bracket_host(host)
    return ClusterConfig(
        server=f"https://{server_host}:{port}",
        ca_pem=ca_pem,
        token_file=token_file,
        namespace=namespace or "default",
    )


# -- merging ---------------------------------------------------------------


@dataclass
class _Merged:
    loaded: int = 0
    current_context: str = ""
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)


def _read_file(path: Path) -> tuple[Path, dict[str, Any]]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        # YAML errors quote a snippet of the line, which may hold a token: say where only.
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"kubeconfig {path}: cannot read{at} ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path}: expected a mapping at the top")
    return path, doc


def _merge(docs: list[tuple[Path, dict[str, Any]]]) -> _Merged:
    out = _Merged()
    for path, doc in docs:
        out.loaded += 1
        base = path.resolve().parent
        if not out.current_context and isinstance(doc.get("current-context"), str):
            out.current_context = doc["current-context"]
        for section, target, resolve in (
            ("clusters", out.clusters, _resolve_cluster),
            ("users", out.users, _resolve_user),
            ("contexts", out.contexts, None),
        ):
            entries = doc.get(section) or []
            if not isinstance(entries, list):
                raise ConfigError(f"kubeconfig {path}: {section}: expected a list")
            for i, entry in enumerate(entries):
                where = f"kubeconfig {path}: {section}[{i}]"
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    raise ConfigError(f"{where}: expected a mapping with a name")
                inner = entry.get(section[:-1]) or {}
                if not isinstance(inner, dict):
                    raise ConfigError(f"{where}.{section[:-1]}: expected a mapping")
                if entry["name"] in target:
                    continue  # first file wins, as kubectl merges
                target[entry["name"]] = resolve(dict(inner), base) if resolve else dict(inner)
    return out


def _abs(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
        return str(base / value)
    return os.path.expanduser(value) if isinstance(value, str) else value


def _resolve_cluster(c: dict[str, Any], base: Path) -> dict[str, Any]:
    if "certificate-authority" in c:
        c["certificate-authority"] = _abs(c["certificate-authority"], base)
    return c


def _resolve_user(u: dict[str, Any], base: Path) -> dict[str, Any]:
    for key in ("client-certificate", "client-key", "tokenFile"):
        if key in u:
            u[key] = _abs(u[key], base)
    ex = u.get("exec")
    if isinstance(ex, dict):
        cmd = ex.get("command")
        # client-go resolves the command only when it names a path, not a $PATH lookup.
        if isinstance(cmd, str) and os.sep in cmd:
            u["exec"] = {**ex, "command": _abs(cmd, base)}
    return u


# -- building --------------------------------------------------------------


def _build(
    ctx_name: str,
    ctx: dict[str, Any],
    cluster_name: str,
    cluster: dict[str, Any],
    user_name: str,
    user: dict[str, Any],
) -> ClusterConfig:
    cw = f"cluster {cluster_name!r}"
    uw = f"user {user_name!r}"
    server = _str(cluster, "server", cw).rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise ConfigError(f"kubeconfig: {cw}: server must be an https:// or http:// URL")
    try:
        port = ClusterConfig(server).host_port[1]
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(f"kubeconfig: {cw}: server {server!r} has no valid port")
    ca = _data_or_file(cluster, "certificate-authority", cw)
    cert = _data_or_file(user, "client-certificate", uw)
    key = _data_or_file(user, "client-key", uw)
    if (cert is None) != (key is None):
        raise ConfigError(f"kubeconfig: {uw}: client-certificate and client-key go together")
    token = user.get("token")
    if token is not None and not isinstance(token, str):
        raise ConfigError(f"kubeconfig: {uw}: token must be a string")
    token_file = user.get("tokenFile")
    ex = user.get("exec")
    return ClusterConfig(
        server=server,
        ca_pem=ca,
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        tls_server_name=str(cluster.get("tls-server-name") or ""),
        client_cert_pem=cert,
        client_key_pem=Redacted(key) if key is not None else None,
        token=Redacted(token.encode()) if token else None,
        token_file=Path(token_file) if token_file else None,
        exec=_exec_config(ex, uw) if ex else None,
        namespace=str(ctx.get("namespace") or "default"),
        context=ctx_name,
    )


def _exec_config(ex: Any, where: str) -> ExecConfig:
    if not isinstance(ex, dict):
        raise ConfigError(f"kubeconfig: {where}: exec must be a mapping")
    cmd = ex.get("command")
    if not isinstance(cmd, str) or not cmd:
        raise ConfigError(f"kubeconfig: {where}: exec.command is required")
    args = ex.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"kubeconfig: {where}: exec.args must be a list of strings")
    env: list[tuple[str, str]] = []
    for i, item in enumerate(ex.get("env") or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"kubeconfig: {where}: exec.env[{i}] needs a name")
        env.append((item["name"], str(item.get("value", ""))))
    return ExecConfig(
        command=cmd,
        args=tuple(args),
        env=tuple(env),
        api_version=str(ex.get("apiVersion") or "client.authentication.k8s.io/v1"),
        provide_cluster_info=bool(ex.get("provideClusterInfo", False)),
    )


def _str(m: dict[str, Any], key: str, where: str) -> str:
    v = m.get(key, "")
    if not isinstance(v, str):
        raise ConfigError(f"kubeconfig: {where}: {key} must be a string")
    if key == "server" and not v:
        raise ConfigError(f"kubeconfig: {where}: server is required")
    return v


def _data_or_file(m: dict[str, Any], key: str, where: str) -> bytes | None:
    data = m.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"kubeconfig: {where}: {key}-data is not valid base64") from None
    path = m.get(key)
    if path:
        return _read_bytes(Path(path), f"kubeconfig: {where}: {key}")
    return None


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None
