"""Network namespaces for node-mode tests: probe, build, reach into, and tear down.

Shared by the node-mode tests (tests/l4/test_l4_node_mode.py,
tests/l4/test_nft_e2e.py). Addresses come from 198.18.0.0/15 only, and
nothing touches the machine's own interfaces: every link is a veth pair
created directly inside the namespaces, which are deleted at the end.

- :func:`sh` runs a command (``ip``, ``nft``, ...) with a bound.
- :func:`can_make_namespaces` says why a test must be skipped, or None.
- :class:`Topology` creates namespaces and veth links, spawns processes
  in them (killed by PID at the end), and hands out :class:`NsThread`\\ s.
- :class:`NsThread` is a thread that lives in one namespace: a socket it
  creates belongs to that namespace for good, so the test process itself
  can be a client there without a subprocess per connection.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from netplane.testing.netns import enter_netns

T = TypeVar("T")


def sh(*args: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=timeout)


def can_make_namespaces(*tools: str, probe: Sequence[str] = ()) -> str | None:
    """Why network namespaces cannot be had here (root, ``ip``, ``tools``), or None.

    ``probe``: a command that must also succeed inside a new namespace
    (``("nft", "list", "tables")``, say).
    """
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", *tools):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            return f"{tool} is not installed"
    name = f"npprobe{os.getpid()}"
    made = sh("ip", "netns", "add", name, check=False)
    if made.returncode != 0:
        return f"this machine cannot create network namespaces: {made.stderr.strip()}"
    try:
        if probe:
            r = sh("ip", "netns", "exec", name, *probe, check=False)
            if r.returncode != 0:
                return f"{' '.join(probe)} fails in a network namespace: {r.stderr.strip()}"
    finally:
        sh("ip", "netns", "del", name, check=False)
    return None


def until(pred: Callable[[], T], what: str, timeout: float = 10.0, every: float = 0.05) -> T:
    """``pred()``'s first truthy value, polled for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class NsThread:
    """One thread inside network namespace ``ns``: what it creates lives there."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{ns}", initializer=enter_netns,
                                        initargs=(ns,))  # fmt: skip

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` run in the namespace."""
        return self._pool.submit(fn, *args).result(timeout=30)

    def socket(self, kind: int = socket.SOCK_STREAM, family: int = socket.AF_INET) -> socket.socket:
        """A socket of the namespace (usable from any thread afterwards)."""
        return self.call(socket.socket, family, kind)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Topology:
    """Namespaces named ``<prefix><role>`` joined by veth pairs; :meth:`down` removes it all."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.threads: list[NsThread] = []
        self._links = 0

    def ns(self, role: str) -> str:
        """A new namespace, loopback up."""
        name = f"{self.prefix}{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a: str, a_addrs: list[str], b: str, b_addrs: list[str]) -> tuple[str, str]:
        """A veth pair between namespaces ``a`` and ``b``, with addresses ("IP/LEN"), up."""
        self._links += 1
        tail = f"{self.prefix[-9:]}{self._links}"
        dev_a, dev_b = f"va{tail}"[:15], f"vb{tail}"[:15]
        sh("ip", "link", "add", dev_a, "netns", a, "type", "veth", "peer", "name", dev_b,
           "netns", b)  # fmt: skip
        for ns, dev, addrs in ((a, dev_a, a_addrs), (b, dev_b, b_addrs)):
            for addr in addrs:
                sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        return dev_a, dev_b

    def run(self, ns: str, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *args, **kw)

    def spawn(self, ns: str, *args: str, log: Path | None = None) -> subprocess.Popen:
        """A process in ``ns`` (``ip netns exec`` execs it: the PID is its own), killed by ``down``."""
        out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=out,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        finally:
            if log is not None:
                out.close()  # type: ignore[union-attr]
        self.procs.append(p)
        return p

    def thread(self, ns: str) -> NsThread:
        t = NsThread(ns)
        self.threads.append(t)
        return t

    def down(self) -> None:
        for t in self.threads:
            t.close()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
