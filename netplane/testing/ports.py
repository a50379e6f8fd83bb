"""Free ports on an address: for tests and benchmarks that start servers of their
own, and for the daemon, which turns a ``:0`` listener into one concrete port so
that every worker of ``--workers N`` binds the same."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", *, udp_too: bool = False) -> int:
    """A TCP port free on ``host``; with ``udp_too``, free for UDP as well (DNS binds both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = t.getsockname()[1]
            if not udp_too:
                return port
            with socket.socket(family, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no port free for both UDP and TCP on {host}")


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (DNS servers bind both)."""
    return free_port(host, udp_too=True)
