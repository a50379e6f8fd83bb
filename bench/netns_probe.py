"""Start netplane and time how long it takes to serve every frontend; run inside a namespace.

``python -m bench.netns_probe --admin-port P --frontends N -- NETPLANE ARGV...``
spawns the netplane command, polls its admin server (which only the
namespace's own loopback reaches, hence a probe inside the namespace rather
than the harness outside it) and prints one JSON line:

- ``ready_s``: spawn → /readyz 200;
- ``program_s``: /readyz 200 → the proxy serves N frontends
  (``/debug/state?summary=1``, ``planes.proxy.frontends``);
- ``listeners``: the proxy's listening sockets then; ``sockets``: every
  socket descriptor of the process; ``rss_mb`` and ``cpu_s`` then.

The netplane process is stopped (SIGTERM) before the probe exits.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLL_S = 0.005
# The state lists every listener (20k strings in local mode at 10k Services):
# polled at POLL_S it would slow down the very thing it measures.
STATE_POLL_S = 0.05


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _until(
    pred: Any, proc: subprocess.Popen, deadline: float, what: str, interval: float = POLL_S
) -> Any:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"netplane exited with {proc.returncode} while waiting for {what}")
        try:
            value = pred()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def socket_fds(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            n += os.readlink(fd).startswith("socket:")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--admin-port", type=int, required=True)
    ap.add_argument("--frontends", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the netplane command after --")

    from bench.harness import vmrss_mb
    from bench.scenarios.scale import cpu_seconds

    deadline = time.monotonic() + args.timeout
    started = time.perf_counter()

    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        _until(lambda: _get(args.admin_port, "/readyz")[0] == 200, proc, deadline, "/readyz")
        ready = time.perf_counter()

        def proxy_state() -> dict | None:
            status, body = _get(args.admin_port, "/debug/state?summary=1")
            proxy = json.loads(body)["planes"]["proxy"] if status == 200 else {}
            return proxy if proxy.get("frontends", 0) >= args.frontends else None

        proxy = _until(
            proxy_state, proc, deadline, f"{args.frontends} frontends", interval=STATE_POLL_S
        )
        programmed = time.perf_counter()
        result = {
            "ready_s": ready - started,
            "program_s": programmed - ready,
            "listeners": len(proxy["listeners"]),
            "sockets": socket_fds(proc.pid),
            "rss_mb": vmrss_mb(proc.pid),
            "cpu_s": cpu_seconds(proc.pid),
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
