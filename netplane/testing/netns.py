"""Enter a network namespace from one thread, for tests and the bench.

``setns(2)`` moves only the calling thread, so a worker thread that calls
:func:`enter_netns` first (a ThreadPoolExecutor's ``initializer``) opens its
sockets inside the namespace while the rest of the process stays outside.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(ns: str) -> None:
    """Move the calling thread (only it) into the network namespace ``ns`` (``ip netns``)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)
