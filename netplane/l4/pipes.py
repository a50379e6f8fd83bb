"""Pipes for the splice relay, kept empty between connections.

A spliced connection moves each direction's bytes through a pipe
(socket -> pipe -> socket, see :mod:`.splice`). Creating a pipe costs a
``pipe2()`` and closing it two ``close()``; at thousands of new connections
a second that is a visible share of the relay's CPU, so empty pipes go back
to a :class:`PipePool` for the next connection. A pipe starts at the
kernel's default capacity and grows (``F_SETPIPE_SZ``) only in a direction
that fills it; a pipe that still holds bytes is closed, never reused.
"""

from __future__ import annotations

import fcntl
import os

#: the kernel's default pipe capacity (16 pages)
DEFAULT_PIPE = 65536
#: pipes kept for reuse; each is two descriptors
POOL_SIZE = 128
# Linux's values; not every Python names them
_SETPIPE_SZ: int = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_GETPIPE_SZ: int = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class PipePool:
    """Empty pipes kept for the next connection, so a connection does not cost a pipe2()."""

    __slots__ = ("_free", "keep", "max_size")

    def __init__(self, max_size: int, keep: int = POOL_SIZE) -> None:
        #: the size a pipe may grow to (F_SETPIPE_SZ)
        self.max_size = max_size
        self.keep = keep
        self._free: list[list[int]] = []

    def get(self) -> list[int]:
        """``[read_fd, write_fd, capacity]`` of an empty pipe; raises OSError (e.g. EMFILE)."""
        if self._free:
            return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            capacity = fcntl.fcntl(w, _GETPIPE_SZ)
        except OSError:
            capacity = DEFAULT_PIPE
        return [r, w, capacity]

    def grow(self, pipe: list[int]) -> None:
        """Try to enlarge ``pipe`` to ``max_size``; where the pipe limits refuse, keep its size."""
        if pipe[2] >= self.max_size:
            return
        try:
            pipe[2] = fcntl.fcntl(pipe[1], _SETPIPE_SZ, self.max_size)
        except OSError:
            pipe[2] = self.max_size = max(pipe[2], DEFAULT_PIPE)  # do not try again

    def put(self, pipe: list[int], empty: bool) -> None:
        """Return a pipe: kept if it is known to be empty and there is room, closed otherwise."""
        if empty and len(self._free) < self.keep:
            self._free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    @property
    def free(self) -> int:
        """Empty pipes kept now."""
        return len(self._free)

    def close(self) -> None:
        free, self._free = self._free, []
        for r, w, _ in free:
            os.close(r)
            os.close(w)
