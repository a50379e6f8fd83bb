"""Free ports for tests and benchmarks that start servers of their own.

The finder itself is production code (the daemon turns a ``:0`` listener into
one concrete port so that every worker of ``--workers N`` binds the same), so
it lives in :mod:`netplane.ports`; this module keeps the names tests use.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

from netplane.ports import free_port

__all__ = ["free_port", "free_udp_port", "free_udp_tcp_port", "held_elsewhere"]


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (DNS servers bind both)."""
    return free_port(host, udp_too=True)


def free_udp_port(*hosts: str) -> int:
    """A port free for UDP on every one of ``hosts`` (IPv4), e.g. two endpoints of one Service."""
    for _ in range(50):
        port = free_port(hosts[0], udp_too=True)
        socks: list[socket.socket] = []
        try:
            for host in hosts:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no port free for UDP on all of {hosts}")


@contextmanager
def held_elsewhere(
    host: str, port: int, *, reuse_port: bool = False, kind: int = socket.SOCK_STREAM
) -> Iterator[int]:
    """``host:port`` held by a plain socket in another process while inside; yields its pid.

    The socket listens (TCP) or is bound (UDP), with SO_REUSEPORT when asked,
    as another program or another netplane would hold it.
    """
    family = "AF_INET6" if ":" in host else "AF_INET"
    code = textwrap.dedent(f"""
        import socket, sys
        s = socket.socket(socket.{family}, {int(kind)})
        if {reuse_port}:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(({host!r}, {port}))
        if {int(kind)} == socket.SOCK_STREAM:
            s.listen()
        print("held", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
