"""No test key or token in anything netplane prints or serves: a registry and a scanner.

Secrets are registered where tests make them, by wrapping the makers once
per session (:func:`install`, called from ``tests/conftest.py`` before any
test module is imported, so module-level CAs count too):

- every trustme private key (``trustme.CA`` and its leaves: Secrets'
  ``tls.key``, the fake API server's client certificate);
- the fake API server's bearer tokens (``FakeKube.tokens``, however set);
- what ``FakeKube.write_kubeconfig`` writes as a user's ``token``,
  ``password`` or ``client-key-data``.

A PEM key is registered by fragments that are in every copy of it and in
nothing else: a 64-character base64 line of its body (so a key printed as
PEM, as a bytes repr, or inside JSON with ``\\n`` escapes matches), and a
64-character slice of the base64 of the whole PEM (the form kubeconfigs and
Secret ``data`` carry). Tokens are registered as they are.

What a test produced is collected per test (:class:`Outputs`): the output
files of every ``netplane`` process it started through
``netplane.testing.process.Netplane`` (stdout and the log), the body of every
in-process admin response (``AdminServer.handle``: /debug/state, /metrics
and the rest), a last /debug/state and /metrics of each such process still
running when the test ends, and pytest's captured stdout, stderr and log
records. :func:`find` searches them.

Cheap, since it runs after every test: a key fragment is looked for only
inside runs of 64 or more base64 characters (one regex pass over the text),
by a dict of each fragment's first 16 characters; tokens are few and short,
and are plain substring searches.
"""

from __future__ import annotations

import base64
import re
import subprocess
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GRAM = 16  # characters of a key fragment indexed
FRAGMENT = 64  # characters of a key fragment
_B64_RUN = re.compile(rb"[A-Za-z0-9+/=]{%d,}" % FRAGMENT)
MIN_TOKEN = 4  # shorter "tokens" would match by chance


@dataclass
class Registry:
    """Registered secrets: key fragments (indexed) and tokens, each with what it came from."""

    fragments: dict[bytes, dict[bytes, str]] = field(default_factory=dict)  # gram -> frag -> what
    tokens: dict[bytes, str] = field(default_factory=dict)

    def key(self, pem: bytes | str, what: str) -> None:
        """A PEM private key: a body line, and a slice of the base64 of the whole PEM."""
        if isinstance(pem, str):
            pem = pem.encode()
        lines = [ln.strip() for ln in pem.splitlines() if ln.strip() and b"-----" not in ln]
        full = [ln for ln in lines if len(ln) >= FRAGMENT]
        if full:  # a middle line: the first ones start alike in keys of one kind
            self._fragment(full[len(full) // 2][:FRAGMENT], what)
        encoded = base64.b64encode(pem)
        if len(encoded) >= 3 * FRAGMENT:
            self._fragment(encoded[FRAGMENT : 2 * FRAGMENT], f"{what} (base64)")

    def token(self, token: bytes | str | None, what: str) -> None:
        if isinstance(token, str):
            token = token.encode()
        if token and len(token) >= MIN_TOKEN:
            self.tokens.setdefault(token, what)

    def _fragment(self, frag: bytes, what: str) -> None:
        self.fragments.setdefault(frag[:GRAM], {}).setdefault(frag, what)

    def find(self, text: bytes | str) -> list[str]:
        """What of the registered secrets ``text`` contains (empty: none)."""
        if isinstance(text, str):
            text = text.encode(errors="replace")
        found = [what for tok, what in self.tokens.items() if tok in text]
        if self.fragments:
            for m in _B64_RUN.finditer(text):
                run = m.group()
                for i in range(len(run) - FRAGMENT + 1):
                    cands = self.fragments.get(run[i : i + GRAM])
                    if cands:
                        found += [w for f, w in cands.items() if run.startswith(f, i)]
        return found


REGISTRY = Registry()


@dataclass
class Outputs:
    """What one test produced, to be searched when it ends."""

    texts: list[tuple[str, bytes]] = field(default_factory=list)  # (where, content)

    def add(self, where: str, content: bytes | str) -> None:
        self.texts.append((where, content.encode() if isinstance(content, str) else content))

    def fetch_admin(self) -> None:
        """A last /debug/state and /metrics from each netplane process still running."""
        for np in list(_processes):
            if np.admin is None or np.returncode is not None:
                continue
            for path in ("/debug/state", "/metrics"):
                body = _get(np, path)
                if body:
                    self.add(f"{np.name} {path}", body)

    def read_processes(self) -> None:
        """What netplane processes wrote since the last look (a fixture's may span tests)."""
        for np in list(_processes):
            done = np.returncode is not None or np.proc is None
            for path in (np.out_path, np.log_path):
                start = max(0, _read_to.get(path, 0) - FRAGMENT)  # a secret across the cut
                try:
                    with open(path, "rb") as f:
                        f.seek(start)
                        data = f.read()
                except OSError:
                    continue
                _read_to[path] = start + len(data)
                if data:
                    self.add(str(path), data)
            if done:
                _processes.remove(np)
                for path in (np.out_path, np.log_path):
                    _read_to.pop(path, None)

    def leaks(self, extra: Iterable[tuple[str, str]] = ()) -> list[str]:
        """``where: what`` for every registered secret found."""
        found = []
        for where, content in [*self.texts, *((w, c.encode()) for w, c in extra)]:
            found += [f"{where}: {what}" for what in REGISTRY.find(content)]
        return sorted(set(found))


# Every netplane process launched and not yet seen exited, and how far its files were read.
_processes: list[Any] = []
_read_to: dict[Path, int] = {}
CURRENT: Outputs | None = None


def _get(np: Any, path: str) -> bytes:
    url = f"{np.admin_url}{path}"
    try:
        if np.prefix:  # the admin port lives in the prefix's network namespace
            cmd = [*np.prefix, "curl", "-s", "--max-time", "2", url]
            return subprocess.run(cmd, capture_output=True, timeout=10).stdout
        with urllib.request.urlopen(url, timeout=2) as r:
            return bytes(r.read())
    except Exception:  # an answer is a bonus here; the test itself is over
        return b""


# -- registration: wrap the makers, once per session --------------------------


class _TokenSet(set[str]):
    """FakeKube.tokens: registers what is put in."""

    def add(self, token: str) -> None:
        REGISTRY.token(token, "FakeKube bearer token")
        super().add(token)


def _tokens_property() -> property:
    def get(self: Any) -> set[str]:
        return self.__dict__["tokens"]

    def put(self: Any, value: Iterable[str]) -> None:
        tokens = _TokenSet()
        for t in value:
            tokens.add(t)
        self.__dict__["tokens"] = tokens

    return property(get, put)


def install() -> None:
    """Wrap trustme, FakeKube, Netplane and AdminServer so secrets and outputs are seen."""
    import trustme

    from netplane.admin import AdminServer
    from netplane.testing.fakekube import FakeKube
    from netplane.testing.process import Netplane

    if getattr(trustme.CA, "_secret_scan", False):
        return

    ca_init = trustme.CA.__init__

    def ca_init_registering(self: Any, *args: Any, **kw: Any) -> None:
        ca_init(self, *args, **kw)
        REGISTRY.key(self.private_key_pem.bytes(), "trustme CA key")

    leaf_init = trustme.LeafCert.__init__

    def leaf_init_registering(self: Any, private_key_pem: bytes, *args: Any, **kw: Any) -> None:
        REGISTRY.key(private_key_pem, "trustme certificate key")
        leaf_init(self, private_key_pem, *args, **kw)

    from_pem = trustme.CA.from_pem.__func__  # type: ignore[attr-defined]

    def from_pem_registering(cls: Any, cert_bytes: bytes, private_key_bytes: bytes) -> Any:
        REGISTRY.key(private_key_bytes, "trustme CA key")
        return from_pem(cls, cert_bytes, private_key_bytes)

    trustme.CA.__init__ = ca_init_registering  # type: ignore[method-assign]
    trustme.LeafCert.__init__ = leaf_init_registering  # type: ignore[method-assign]
    trustme.CA.from_pem = classmethod(from_pem_registering)  # type: ignore[method-assign,assignment]
    trustme.CA._secret_scan = True  # type: ignore[attr-defined]

    FakeKube.tokens = _tokens_property()  # type: ignore[method-assign,assignment]
    write_kubeconfig = FakeKube.write_kubeconfig

    def write_kubeconfig_registering(
        self: Any, path: Path, user: dict[str, Any], **kw: Any
    ) -> Path:
        REGISTRY.token(user.get("token"), "kubeconfig token")
        REGISTRY.token(user.get("password"), "kubeconfig password")
        if key_data := user.get("client-key-data"):
            REGISTRY.key(base64.b64decode(key_data), "kubeconfig client key")
        return write_kubeconfig(self, path, user, **kw)

    FakeKube.write_kubeconfig = write_kubeconfig_registering  # type: ignore[method-assign]

    launch = Netplane.launch

    def launch_recorded(self: Any) -> Any:
        _processes.append(self)
        return launch(self)

    Netplane.launch = launch_recorded  # type: ignore[method-assign]

    handle = AdminServer.handle

    async def handle_recorded(self: Any, request: Any) -> Any:
        response = await handle(self, request)
        if (out := CURRENT) is not None:
            out.add(f"admin {request.method} {request.path}", response.body)
        return response

    AdminServer.handle = handle_recorded  # type: ignore[method-assign]
