"""The channel between the owner process and its workers (``--workers N``).

One stream socket per worker carries length-prefixed pickled tuples, the
first element naming the message. Both ends are netplane processes of one
installation started by the owner, so pickle is safe here; nothing else can
reach the socket (a socketpair inherited by the child).

Owner to worker: ``("hello", index, count, config)``, ``("objects",
[(key, object or None), ...])`` (None: deleted), ``("synced",)`` after the
first full set, ``("ask", id, what, arg)`` for metrics or debug state, and
``("stop", grace)``. Worker to owner: ``("ready", pid)`` and ``("answer", id,
value)``.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

_HEAD = struct.Struct("!I")
#: objects per "objects" message when a worker is sent the whole state
CHUNK = 2000


def encode(message: tuple[Any, ...]) -> bytes:
    """One framed message."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(body)) + body


class Channel:
    """Framed messages over an asyncio stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def over(cls, sock: Any) -> Channel:
        """A channel on a connected stream socket (one end of a socketpair)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, message: tuple[Any, ...]) -> None:
        """Send one message, waiting while the peer is behind (flow control)."""
        self.writer.write(encode(message))
        await self.writer.drain()

    def post(self, message: tuple[Any, ...]) -> None:
        """Queue one small message without waiting for the peer to take it."""
        self.writer.write(encode(message))

    async def recv(self) -> tuple[Any, ...] | None:
        """The next message, or None once the peer has gone."""
        try:
            head = await self.reader.readexactly(_HEAD.size)
            (size,) = _HEAD.unpack(head)
            body = await self.reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        message = pickle.loads(body)
        if not isinstance(message, tuple) or not message:
            raise ValueError("control channel: a message is not a non-empty tuple")
        return message

    def close(self) -> None:
        self.writer.close()
