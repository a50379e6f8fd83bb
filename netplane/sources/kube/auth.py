"""Credentials that live while the client runs: token files, exec plugins, TLS.

Strategy: :class:`Credentials` answers two questions before every request,
"which bearer token?" and "which TLS context?", and is told when the server
said 401 so the next answer is fresh.

- A static token is used as is.
- A token file (``tokenFile``, the in-cluster service account token) is
  re-read whenever its stat signature (inode, size, mtime) changes, and
  always after a 401: kubelet rotates projected tokens in place.
- An ``exec`` plugin is run with its args and env plus ``KUBERNETES_EXEC_INFO``;
  its ``ExecCredential`` is cached until ``status.expirationTimestamp``
  (forever without one) and dropped on 401, so the next request re-runs it.
  A plugin may return a client certificate instead of, or with, a token.
- The TLS context is built once per client certificate. The ``ssl`` module
  loads certificates from files only, so in-memory PEM goes to a private
  (0600) temporary directory that is removed right after loading.

Nothing here puts a token or key into a log line, repr or exception message;
plugin failures name the command and exit status, never its output.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from netplane.errors import SourceError
from netplane.model import Redacted
from netplane.sources.kube.kubeconfig import ClusterConfig, ExecConfig

log = logging.getLogger("netplane.sources.kube")

EXEC_TIMEOUT = 60.0  # seconds; a plugin may open a browser or call an IdP


class AuthError(SourceError):
    """Credentials could not be obtained (plugin failed, token file unreadable)."""


class TokenFile:
    """A token file re-read when it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sig: tuple[int, int, int] | None = None
        self._token: Redacted | None = None

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"

    def read(self, *, force: bool = False) -> Redacted:
        try:
            st = os.stat(self.path)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            if force or sig != self._sig or self._token is None:
                self._token = Redacted(self.path.read_bytes().strip())
                self._sig = sig
        except OSError as e:
            if self._token is not None:
                # Mid-rotation (the file is swapped via a symlink): keep the last one.
                log.warning("token file %s unreadable (%s); keeping last token", self.path, e)
                return self._token
            raise AuthError(f"token file {self.path}: {e.strerror}") from None
        return self._token


@dataclass(frozen=True, slots=True)
class ExecCredential:
    token: Redacted | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: Redacted | None = None
    expires_at: float | None = None  # epoch seconds


@dataclass
class ExecPlugin:
    """Runs an ``exec`` credential plugin and caches its answer until it expires."""

    config: ExecConfig
    cluster_info: dict[str, object] | None = None
    now: Callable[[], float] = time.time
    runs: int = 0  # how many times the command ran (the tests read it to see the cache work)
    _cached: ExecCredential | None = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def invalidate(self) -> None:
        self._cached = None

    async def get(self) -> ExecCredential:
        async with self._lock:
            c = self._cached
            if c is not None and (c.expires_at is None or self.now() < c.expires_at):
                return c
            self._cached = await self._run()
            return self._cached

    async def _run(self) -> ExecCredential:
        cfg = self.config
        spec: dict[str, object] = {"interactive": False}
        if cfg.provide_cluster_info and self.cluster_info is not None:
            spec["cluster"] = self.cluster_info
        info = {"apiVersion": cfg.api_version, "kind": "ExecCredential", "spec": spec}
        env = {**os.environ, **dict(cfg.env), "KUBERNETES_EXEC_INFO": json.dumps(info)}
        what = f"exec plugin {cfg.command!r}"
        self.runs += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                cfg.command,
                *cfg.args,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise AuthError(f"{what}: cannot start: {e.strerror}") from None
        try:
            async with asyncio.timeout(EXEC_TIMEOUT):
                out, _err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AuthError(f"{what}: no answer within {EXEC_TIMEOUT:.0f}s") from None
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
            raise
        if proc.returncode != 0:
            raise AuthError(f"{what}: exited with status {proc.returncode}")
        return parse_exec_credential(out, cfg.api_version, what)


def parse_exec_credential(
    out: bytes, api_version: str, what: str = "exec plugin"
) -> ExecCredential:
    """Read a plugin's stdout; errors say which field, never the values."""
    try:
        doc = json.loads(out)
    except ValueError:
        raise AuthError(f"{what}: output is not JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
        raise AuthError(f"{what}: output is not an ExecCredential")
    if doc.get("apiVersion") != api_version:
        raise AuthError(f"{what}: apiVersion {doc.get('apiVersion')!r}, expected {api_version!r}")
    status = doc.get("status")
    if not isinstance(status, dict):
        raise AuthError(f"{what}: ExecCredential has no status")
    token = status.get("token")
    cert = status.get("clientCertificateData")
    key = status.get("clientKeyData")
    for name, v in (("token", token), ("clientCertificateData", cert), ("clientKeyData", key)):
        if v is not None and not isinstance(v, str):
            raise AuthError(f"{what}: status.{name} must be a string")
    if bool(cert) != bool(key):
        raise AuthError(f"{what}: clientCertificateData and clientKeyData go together")
    if not token and not cert:
        raise AuthError(f"{what}: status has neither token nor client certificate")
    expires_at = None
    exp = status.get("expirationTimestamp")
    if exp:
        try:
            expires_at = _parse_rfc3339(str(exp))
        except ValueError:
            raise AuthError(f"{what}: status.expirationTimestamp {exp!r} is not RFC 3339") from None
    return ExecCredential(
        token=Redacted(token.encode()) if token else None,
        client_cert_pem=cert.encode() if cert else None,
        client_key_pem=Redacted(key.encode()) if key else None,
        expires_at=expires_at,
    )


def _parse_rfc3339(s: str) -> float:
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


class Credentials:
    """Bearer token and TLS context for each request, refreshed as they change."""

    def __init__(self, config: ClusterConfig, *, now: Callable[[], float] = time.time) -> None:
        self.config = config
        self._token_file = TokenFile(config.token_file) if config.token_file else None
        self.exec_plugin: ExecPlugin | None = None
        if config.exec is not None:
            info: dict[str, object] = {"server": config.server}
            if config.ca_pem:
                info["certificate-authority-data"] = config.ca_pem.decode(errors="replace")
            if config.insecure_skip_tls_verify:
                info["insecure-skip-tls-verify"] = True
            self.exec_plugin = ExecPlugin(config.exec, info, now=now)
        self._ssl_key: tuple[bytes | None, Redacted | None] | None = None
        self._ssl_ctx: ssl.SSLContext | None = None
        self._force_token_reread = False

    def __repr__(self) -> str:
        return f"Credentials(server={self.config.server!r})"

    async def authorization(self) -> str | None:
        """The ``Authorization`` header value, or None (client-cert or anonymous)."""
        token: Redacted | None = None
        if self.exec_plugin is not None:
            token = (await self.exec_plugin.get()).token
        if token is None and self._token_file is not None:
            token = self._token_file.read(force=self._force_token_reread)
            self._force_token_reread = False
        if token is None:
            token = self.config.token
        if token is None:
            return None
        return "Bearer " + token.reveal().decode()

    async def ssl_context(self) -> ssl.SSLContext | None:
        """None for plain http; otherwise a context with the current client cert."""
        if self.config.scheme != "https":
            return None
        cert, key = self.config.client_cert_pem, self.config.client_key_pem
        if self.exec_plugin is not None:
            cred = await self.exec_plugin.get()
            if cred.client_cert_pem is not None:
                cert, key = cred.client_cert_pem, cred.client_key_pem
        if self._ssl_ctx is None or self._ssl_key != (cert, key):
            self._ssl_ctx = build_ssl_context(self.config, cert, key)
            self._ssl_key = (cert, key)
        return self._ssl_ctx

    def unauthorized(self) -> None:
        """The server said 401: drop cached credentials so the next request refetches."""
        if self.exec_plugin is not None:
            self.exec_plugin.invalidate()
        self._force_token_reread = True


def build_ssl_context(
    config: ClusterConfig, cert_pem: bytes | None, key_pem: Redacted | None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if config.insecure_skip_tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif config.ca_pem is not None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=_ca_text(config.ca_pem))
    if cert_pem is not None and key_pem is not None:
        load_cert_chain_from_memory(ctx, cert_pem, key_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _ca_text(pem: bytes) -> str:
    try:
        return pem.decode("ascii")
    except UnicodeDecodeError:
        raise SourceError("certificate authority data is not PEM text") from None


def load_cert_chain_from_memory(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: Redacted) -> None:
    """Load a PEM cert and key held in memory via 0600 temp files removed at once."""
    tmp = tempfile.mkdtemp(prefix="netplane-kube-")  # mode 0700
    try:
        cert_path = os.path.join(tmp, "client.crt")
        key_path = os.path.join(tmp, "client.key")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem.reveal())):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as e:
            # The reason names the problem (e.g. KEY_VALUES_MISMATCH), never the bytes.
            raise SourceError(f"client certificate/key rejected: {e.reason or 'bad PEM'}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
