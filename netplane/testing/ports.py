"""Free ports for tests and benchmarks that start servers of their own.

The finder itself is production code (the daemon turns a ``:0`` listener into
one concrete port so that every worker of ``--workers N`` binds the same), so
it lives in :mod:`netplane.ports`; this module keeps the names tests use.
"""

from __future__ import annotations

from netplane.ports import free_port

__all__ = ["free_port", "free_udp_tcp_port"]


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (DNS servers bind both)."""
    return free_port(host, udp_too=True)
