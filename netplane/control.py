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
import copyreg
import dataclasses
import functools
import importlib
import io
import operator
import pickle
import pkgutil
import struct
from typing import Any

_HEAD = struct.Struct("!I")
#: objects per "objects" message when a worker is sent the whole state
CHUNK = 2000


def encode(message: tuple[Any, ...]) -> bytes:
    """One framed message."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _dispatch_table()
    pickler.dump(message)
    body = buf.getvalue()
    return _HEAD.pack(len(body)) + body


# Frozen slots dataclasses pickle through dataclasses' generic __getstate__ and
# __setstate__, which look the fields up again for every object: two thirds of
# a worker's start at 10k services went there. The model's classes get a
# reducer that reads the fields with one attrgetter and rebuilds the object by
# setting them, with the names looked up once per class.
@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _rebuild(cls: type, values: tuple[Any, ...]) -> object:
    obj: object = object.__new__(cls)
    setattr_ = object.__setattr__
    for name, value in zip(_field_names(cls), values, strict=True):
        setattr_(obj, name, value)
    return obj


def _reducer(cls: type) -> Any:
    get = operator.attrgetter(*_field_names(cls))
    if len(_field_names(cls)) == 1:
        return lambda obj: (_rebuild, (cls, (get(obj),)))
    return lambda obj: (_rebuild, (cls, get(obj)))


@functools.cache
def _dispatch_table() -> dict[type, Any]:
    import netplane.model

    table = dict(copyreg.dispatch_table)
    for info in pkgutil.iter_modules(netplane.model.__path__):
        module = importlib.import_module(f"netplane.model.{info.name}")
        for cls in vars(module).values():
            if (
                isinstance(cls, type)
                and cls.__module__ == module.__name__
                and dataclasses.is_dataclass(cls)
                and "__slots__" in vars(cls)
            ):
                table[cls] = _reducer(cls)
    return table


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
