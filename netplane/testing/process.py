"""``netplane`` as a child process, for end-to-end tests: start it, wait until ready, stop it.

One class, :class:`Netplane`, does what every e2e test needs: it runs
``python -m netplane ARGS`` (optionally behind an argv prefix such as
``ip netns exec NS``), with stdout and stderr each captured to a file, so a
chatty process never blocks on a full pipe and a failure can show what it
said. Unless told otherwise it gives the process an admin port of its own and
waits for ``/readyz`` to answer 200; if the process exits first, the wait
fails at once with the tail of its output. It is stopped by its PID only:
SIGTERM, then SIGKILL once a bound has passed.

Sync and async tests use the same code: every wait is one generator of polls
(:meth:`Netplane._polls`), which the sync methods drive with ``time.sleep``
and the async ones (prefixed ``a``, or ``await_...``) with ``asyncio.sleep``.
The child is a :class:`subprocess.Popen`, which any thread or loop may poll.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from netplane.ports import free_port

__all__ = ["Netplane", "NetplaneExited", "NetplaneTimeout"]

POLL = 0.05  # seconds between two looks at the process or its /readyz
READY_TIMEOUT = 20.0  # seconds; generous, the test machine is shared and slow
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL


class NetplaneExited(AssertionError):
    """The process exited while a test waited for it to become ready."""


class NetplaneTimeout(AssertionError):
    """What a test waited for did not happen in time."""


class Netplane:
    """One ``netplane`` process started for a test.

    ``args`` are the command's arguments (``"run", "-f", dir, ...`` or
    ``"demo"``). With ``admin=True`` (the default) and no ``--admin`` among
    them, ``--admin 127.0.0.1:<free port>`` is added; a given
    ``--admin HOST:PORT`` is used as it is. ``--admin off`` or
    ``admin=False`` leaves readiness to the test. ``prefix`` runs the command
    behind another (``["ip", "netns", "exec", "ns1"]``); then /readyz is asked
    through the same prefix, with curl, since the admin port lives in that
    namespace. The process's stdout goes to ``workdir/NAME.out`` and its
    stderr (netplane's log) to ``workdir/NAME.log``; ``workdir`` is also its
    working directory.
    """

    def __init__(
        self,
        *args: str,
        workdir: Path,
        name: str = "netplane",
        admin: bool = True,
        prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.workdir = Path(workdir)
        self.name = name
        self.prefix = list(prefix)
        self.env = dict(os.environ if env is None else env)
        self.admin: str | None = None  # HOST:PORT, when there is an admin server to ask
        given = _flag(self.args, "--admin")
        if given is not None:  # as given; port 0 is the process's choice, unknown here
            self.admin = None if given == "off" or given.endswith(":0") else given
        elif admin:
            self.admin = f"127.0.0.1:{free_port()}"
            self.args += ["--admin", self.admin]
        self.out_path = self.workdir / f"{name}.out"
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- what a test reads ---------------------------------------------------

    @property
    def argv(self) -> list[str]:
        """The whole command line, prefix included."""
        return [*self.prefix, sys.executable, "-m", "netplane", *self.args]

    @property
    def admin_port(self) -> int:
        assert self.admin is not None, "this netplane has no admin server"
        return int(self.admin.rpartition(":")[2])

    @property
    def admin_url(self) -> str:
        assert self.admin is not None, "this netplane has no admin server"
        host, _, port = self.admin.rpartition(":")
        return f"http://{host}:{port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs (or before it starts)."""
        return None if self.proc is None else self.proc.poll()

    @property
    def stdout(self) -> str:
        return _read(self.out_path)

    @property
    def log(self) -> str:
        """What it wrote to stderr: netplane's log."""
        return _read(self.log_path)

    def tail(self, lines: int = 30) -> str:
        """The last lines of its stdout and log, for a failure message."""
        out = "\n".join(self.stdout.splitlines()[-lines:])
        log = "\n".join(self.log.splitlines()[-lines:])
        return f"--- {self.name} stdout (tail) ---\n{out}\n--- {self.name} log (tail) ---\n{log}"

    # -- life cycle, sync ----------------------------------------------------

    def launch(self) -> Netplane:
        """Start the process and return at once (a test of a start failure waits for the exit)."""
        assert self.proc is None, "already started"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.out_path, "wb") as out, open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=err, cwd=self.workdir, env=self.env
            )
        return self

    def start(self, timeout: float = READY_TIMEOUT) -> Netplane:
        """Launch, and wait until /readyz answers 200 (when there is an admin server)."""
        self.launch()
        if self.admin is not None:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        for _ in self._polls(timeout, "/readyz to answer 200"):
            if self._ready_once():
                return
            time.sleep(POLL)

    def wait_output(self, text: str, timeout: float = READY_TIMEOUT) -> str:
        """Until ``text`` appears in its stdout (the demo prints its greeting after
        /readyz turns 200); all of stdout so far."""
        for _ in self._polls(timeout, f"{text!r} on stdout"):
            if text in (out := self.stdout):
                return out
            time.sleep(POLL)
        raise AssertionError("unreachable")  # _polls raises on timeout

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Until the process exits by itself; its status."""
        for _ in self._polls(timeout, "the process to exit", exits_ok=True):
            if (code := self._proc.poll()) is not None:
                return code
            time.sleep(POLL)
        raise AssertionError("unreachable")  # _polls raises on timeout

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited in ``timeout`` s; its exit status."""
        if self.proc is None:
            return 0
        self._terminate()
        try:
            return self.wait_exit(timeout)
        except NetplaneTimeout:
            return self._kill()

    # -- life cycle, async (same steps, the loop keeps running) ---------------

    async def astart(self, timeout: float = READY_TIMEOUT) -> Netplane:
        self.launch()
        if self.admin is not None:
            await self.await_ready(timeout)
        return self

    async def await_ready(self, timeout: float = READY_TIMEOUT) -> None:
        for _ in self._polls(timeout, "/readyz to answer 200"):
            if await asyncio.to_thread(self._ready_once):
                return
            await asyncio.sleep(POLL)

    async def await_output(self, text: str, timeout: float = READY_TIMEOUT) -> str:
        for _ in self._polls(timeout, f"{text!r} on stdout"):
            if text in (out := self.stdout):
                return out
            await asyncio.sleep(POLL)
        raise AssertionError("unreachable")

    async def await_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        for _ in self._polls(timeout, "the process to exit", exits_ok=True):
            if (code := self._proc.poll()) is not None:
                return code
            await asyncio.sleep(POLL)
        raise AssertionError("unreachable")

    async def astop(self, timeout: float = STOP_TIMEOUT) -> int:
        if self.proc is None:
            return 0
        self._terminate()
        try:
            return await self.await_exit(timeout)
        except NetplaneTimeout:
            return self._kill()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to this process (by its PID) if it still runs."""
        if self._proc.poll() is None:
            self._proc.send_signal(sig)

    # -- the steps both forms share --------------------------------------------

    @property
    def _proc(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None, "not started"
        return self.proc

    def _polls(self, timeout: float, what: str, *, exits_ok: bool = False) -> Iterator[None]:
        """Yield until ``timeout`` s have passed, then fail; fail early if the process exited."""
        deadline = time.monotonic() + timeout
        while True:
            if not exits_ok and self._proc.poll() is not None:
                raise NetplaneExited(
                    f"{self.name} exited with {self._proc.returncode} while waiting for {what}"
                    f"\n{self.tail()}"
                )
            if time.monotonic() >= deadline:
                raise NetplaneTimeout(
                    f"timed out after {timeout} s waiting for {what} of {self.name}\n{self.tail()}"
                )
            yield

    def _ready_once(self) -> bool:
        url = f"{self.admin_url}/readyz"
        if self.prefix:  # the admin port is in the prefix's namespace: ask from there
            probe = [*self.prefix, "curl", "-sf", "--max-time", "1", "-o", "/dev/null", url]
            return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _terminate(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def _kill(self) -> int:
        if self._proc.poll() is None:
            self._proc.kill()
        return self._proc.wait(5)


def _flag(args: list[str], name: str) -> str | None:
    """The value of the last ``name VALUE`` or ``name=VALUE`` in ``args`` (the one argparse keeps)."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.partition("=")[2]
    return value


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
