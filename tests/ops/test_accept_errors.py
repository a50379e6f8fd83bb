"""Out of descriptors: an ingress listener pauses accepting, says so once, counts, recovers.

A child process runs an IngressServer under a low RLIMIT_NOFILE; this
process opens connections until the child's accepts fail, checks the
counter and the single log line, then closes them and is served again.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

CHILD = r"""
import asyncio, logging, resource, sys
import uvloop
from netplane.ingress.routes import Respond
from netplane.ingress.server import IngressServer
from netplane.metrics import OVERLOAD

class Routes:
    def route(self, *a, **k):
        return Respond(200, b"ok\n")

async def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="LOG %(message)s")
    server = IngressServer(Routes())
    _, port = await server.listen("127.0.0.1", 0)
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    while (line := await loop.run_in_executor(None, sys.stdin.readline)):
        print(dict(OVERLOAD.accept_errors), flush=True)

uvloop.run(main())
"""


def test_out_of_descriptors_pauses_accepting_once_and_recovers() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    socks: list[socket.socket] = []
    try:
        port = int(child.stdout.readline())  # type: ignore[union-attr]
        for _ in range(80):  # more than the child has descriptors for
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
        time.sleep(1.0)  # a few paused retries
        child.stdin.write("counts\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        counts = eval(child.stdout.readline())  # type: ignore[union-attr]
        assert counts.get(("ingress-http", "EMFILE"), 0) >= 1, counts
        # the clients past the limit wait in the backlog: not one was closed
        for s in socks[-10:]:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                assert s.recv(1) != b""
        for s in socks:
            s.close()
        socks.clear()
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
    finally:
        for s in socks:
            s.close()
        child.kill()
        _, err = child.communicate(timeout=10)
    paused = [line for line in err.splitlines() if "cannot accept" in line]
    again = [line for line in err.splitlines() if "accepting again" in line]
    assert len(paused) == 1 and "ingress-http" in paused[0] and "EMFILE" in paused[0], err
    assert len(again) == 1, err
