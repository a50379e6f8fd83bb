"""Flow control: pause one side's reading while the other side cannot keep up.

A relay copies every chunk it reads from one transport straight into the
other's ``write()``. When the writing side's peer is slower than the
reading side's, that transport's buffer grows; asyncio tells its protocol
with ``pause_writing()`` once the buffer passes the high-water mark and
``resume_writing()`` once it falls under the low-water mark. The relay then
stops reading the *other* transport, so the kernel's receive window fills
and TCP pushes back on the fast sender. Memory per connection stays near
the high-water mark instead of growing with the sender's speed.

Reading can be held for more than one reason at once (the peer's write
buffer is full, the bytes buffered while the upstream connection is being
set up are over their bound, ...), so :class:`FlowControl` keeps a set of
reason bits and reads only when none is set. Every call is idempotent:
pausing twice for the same reason and resuming once reads again.

Once the transport has delivered EOF or is closing, :meth:`FlowControl.finish`
turns the helper into a no-op: resuming a selector transport after EOF would
re-arm its reader and deliver a second EOF.

The pattern is uvicorn's ``flow_control.py``; netplane's L4 relay uses it
now and the ingress proxy will share it.
"""

from __future__ import annotations

from typing import Protocol

#: Default write-buffer high-water mark, in bytes (the low-water mark is a quarter).
HIGH_WATER = 64 * 1024

#: The peer transport's write buffer is above its high-water mark.
PEER_BACKLOG = 1
#: Bytes buffered before the other side was ready are above their bound.
PENDING_FULL = 2


class Readable(Protocol):
    """The reading switch of a transport (``asyncio.ReadTransport``'s), all FlowControl uses."""

    def is_closing(self) -> bool: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FlowControl:
    """Pause and resume reading one transport for any number of reasons (bit flags)."""

    __slots__ = ("_done", "_reasons", "transport")

    def __init__(self, transport: Readable) -> None:
        #: the transport whose reading this helper controls
        self.transport = transport
        self._reasons = 0
        self._done = False

    @property
    def paused(self) -> bool:
        """Whether reading is held for at least one reason."""
        return self._reasons != 0

    def pause(self, reason: int = PEER_BACKLOG) -> None:
        """Hold reading for ``reason``; the first reason actually pauses the transport."""
        if self._reasons & reason:
            return
        was = self._reasons
        self._reasons = was | reason
        if not was and not self._done and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self, reason: int = PEER_BACKLOG) -> None:
        """Release ``reason``; reading resumes when no reason is left."""
        if not self._reasons & reason:
            return
        self._reasons &= ~reason
        if not self._reasons and not self._done and not self.transport.is_closing():
            self.transport.resume_reading()

    def finish(self) -> None:
        """The transport will deliver nothing more (EOF or closing): never touch it again."""
        self._done = True

    # The transport callbacks of the *other* side's protocol map onto these two.

    def pause_writing(self) -> None:
        """The other transport's ``pause_writing()``: stop reading this one."""
        self.pause(PEER_BACKLOG)

    def resume_writing(self) -> None:
        """The other transport's ``resume_writing()``: read this one again."""
        self.resume(PEER_BACKLOG)
