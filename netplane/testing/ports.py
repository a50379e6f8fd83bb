"""Free ports for tests and benchmarks that start servers of their own.

The finder itself is production code (the daemon turns a ``:0`` listener into
one concrete port so that every worker of ``--workers N`` binds the same), so
it lives in :mod:`netplane.ports`; this module keeps the names tests use.
"""

from __future__ import annotations

import socket

from netplane.ports import free_port

__all__ = ["free_port", "free_udp_port", "free_udp_tcp_port"]


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
