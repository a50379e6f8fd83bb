"""What the targets share: the atheris entry point and fake transports."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from bench.fuzz import CORPUS
from bench.ingress_micro import FakeTransport


def main(name: str, test_one_input: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """Fuzz ``test_one_input`` with libFuzzer's flags from ``argv`` (default ``sys.argv``).

    Without a corpus directory among the arguments, the seed corpus is copied
    to a temporary directory, which libFuzzer then grows (the seeds in the
    tree stay as written).
    """
    import logging

    import atheris

    logging.disable(logging.CRITICAL)  # rejected objects and bad lines are logged, per input
    args = list(sys.argv if argv is None else argv)
    if not [a for a in args[1:] if not a.startswith("-")]:
        tmp = tempfile.mkdtemp(prefix=f"fuzz-{name}-")
        shutil.copytree(CORPUS / name, tmp, dirs_exist_ok=True)
        args.append(tmp)
    instrument()
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


#: Packages whose Python code reports its edges to libFuzzer (the code under test and
#: the parsers it builds on); instrumenting everything loaded takes ~20 s per start.
INSTRUMENTED = (
    "netplane", "bench.fuzz", "dnslib", "yaml", "h11", "hpack", "json", "base64", "ipaddress",
)  # fmt: skip


def instrument() -> int:
    """Instrument the functions of :data:`INSTRUMENTED`'s loaded modules; returns their count.

    The target module imported what it tests before this point.
    """
    import gc

    from atheris.instrument_bytecode import _is_instrumentable, instrument_func

    count = 0
    for obj in gc.get_objects():
        module = getattr(obj, "__module__", None)
        if not isinstance(module, str) or not module.startswith(INSTRUMENTED):
            continue
        if module.split(".", 1)[0] not in INSTRUMENTED and not module.startswith("bench.fuzz"):
            continue
        if _is_instrumentable(obj):
            try:
                instrument_func(obj)
            except Exception:
                continue
            count += 1
    return count


class Transport(FakeTransport):
    """What the protocols ask of a transport (bench/ingress_micro.py's); keeps what is written."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__(peer)
        self.out = bytearray()
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.out += data


def pieces(data: bytes, cut: int) -> list[bytes]:
    """``data`` in reads of ``cut`` bytes (at least 1), as a socket might deliver it."""
    cut = max(1, cut)
    return [data[i : i + cut] for i in range(0, len(data), cut)] or [b""]
