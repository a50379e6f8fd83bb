"""kubeconfig files, through :func:`netplane.sources.kube.kubeconfig.load_kubeconfig`.

Input: one control byte (one file or two, merged as ``KUBECONFIG`` lists
them), then the YAML; a NUL byte separates the second file. Files named
inside (certificate-authority, client-key ...) are never read: the
target's ``_read_bytes`` answers for ``ca.crt`` only and refuses the rest
as unreadable, so no input can make it read /dev/zero.

Contract: only ConfigError escapes; a config that loads has an http(s)
server whose ``host_port`` gives a host and a port from 0 to 65535.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.fuzz._common import main
from netplane.errors import ConfigError
from netplane.sources.kube import kubeconfig

NAME = "kubeconfig"
_DIR = Path(tempfile.mkdtemp(prefix="fuzz-kubeconfig-"))
_FILES = (_DIR / "config", _DIR / "second")
_CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _read_bytes(path: Path, what: str) -> bytes:
    if path.name == "ca.crt":
        return _CA
    raise ConfigError(f"{what}: cannot read {path}: No such file or directory")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    ctrl, rest = data[0], data[1:]
    first, _, second = rest.partition(b"\x00")
    _FILES[0].write_bytes(first)
    paths = [_FILES[0]]
    if ctrl & 1:
        _FILES[1].write_bytes(second)
        paths.append(_FILES[1])
    real, kubeconfig._read_bytes = kubeconfig._read_bytes, _read_bytes  # type: ignore[assignment]
    try:
        cfg = kubeconfig.load_kubeconfig(paths, env={})  # type: ignore[arg-type]
    except ConfigError:
        return
    finally:
        kubeconfig._read_bytes = real  # type: ignore[assignment]
    if cfg.scheme not in ("http", "https"):
        raise AssertionError(f"server {cfg.server!r}")
    host, port = cfg.host_port
    if not isinstance(host, str) or not 0 <= port <= 65535:
        raise AssertionError(f"server {cfg.server!r}: host {host!r} port {port!r}")


if __name__ == "__main__":
    main(NAME, TestOneInput, sys.argv)
