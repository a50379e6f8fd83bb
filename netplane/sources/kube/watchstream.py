"""Sans-IO decoder for the Kubernetes watch stream.

Strategy: a watch response body (already de-chunked by h11) is a sequence of
JSON documents, one per line: ``{"type": "ADDED", "object": {...}}\\n``. The
decoder is fed bytes in whatever pieces the socket delivered, keeps the
partial last line, and hands out one decoded item per complete line:

- :class:`RawEvent` for a well-formed event (``ADDED``, ``MODIFIED``,
  ``DELETED``, ``BOOKMARK`` or ``ERROR`` with an object),
- :class:`BadLine` for a line that is not JSON, not an object, has an
  unknown type or no object, or is longer than :data:`MAX_LINE`.

A bad line never stops the decoder: the next line decodes as usual. The
decoder does no I/O and knows no clock (h11 is the model), so it is tested
on bytes alone. :class:`BadLine` never carries the line's text, since a
Secret's key material may be in it; it says where and why.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# The API server caps a stored object at 1.5 MiB (etcd's request limit) and a
# watch event wraps exactly one object, so 16 MiB leaves ample room for JSON
# escaping while still bounding the memory one bad stream can take.
MAX_LINE = 16 * 1024 * 1024

EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One decoded watch event: its type and the raw object (a dict)."""

    type: str
    object: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that could not be decoded; ``line`` counts from 1 in this stream."""

    line: int
    reason: str


WatchItem = RawEvent | BadLine


class WatchDecoder:
    """Feed bytes with :meth:`feed`; take items with :meth:`next_event` or :meth:`events`."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max_line = max_line
        self._buf = bytearray()
        self._items: deque[WatchItem] = deque()
        self._line_no = 0
        self._skipping = False  # inside an over-long line, dropping until its newline
        self._closed = False

    def feed(self, data: bytes) -> None:
        """Add body bytes; complete lines are decoded at once, the rest kept."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            self._finish_line(data[start:nl])
            start = nl + 1
        rest = data[start:]
        if self._skipping:
            return
        self._buf += rest
        if len(self._buf) > self._max_line:
            # Too long already: report it once, then drop bytes until the newline.
            self._line_no += 1
            self._items.append(BadLine(self._line_no, f"line longer than {self._max_line} bytes"))
            self._buf.clear()
            self._skipping = True

    def close(self) -> None:
        """The body ended: a trailing line without its newline still counts."""
        if self._closed:
            return
        self._closed = True
        if self._buf.strip() and not self._skipping:
            self._line_no += 1
            self._items.append(_decode(bytes(self._buf), self._line_no))
        self._buf.clear()

    def next_event(self) -> WatchItem | None:
        """The next decoded item, or None when more bytes are needed."""
        return self._items.popleft() if self._items else None

    def events(self) -> Iterator[WatchItem]:
        """Every item decoded so far."""
        while self._items:
            yield self._items.popleft()

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def _finish_line(self, tail: bytes) -> None:
        if self._skipping:
            self._skipping = False  # the over-long line ends here; already reported
            return
        if self._buf:
            self._buf += tail
            line = bytes(self._buf)
            self._buf.clear()
        else:
            line = tail
        if len(line) > self._max_line:
            self._line_no += 1
            self._items.append(BadLine(self._line_no, f"line longer than {self._max_line} bytes"))
            return
        if not line.strip():
            return  # blank lines (keep-alive newlines) carry nothing
        self._line_no += 1
        self._items.append(_decode(line, self._line_no))


def _decode(line: bytes, line_no: int) -> WatchItem:
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        return BadLine(line_no, f"invalid JSON ({reason})")
    if not isinstance(doc, dict):
        return BadLine(line_no, "event is not a JSON object")
    etype = doc.get("type")
    if not isinstance(etype, str) or etype not in EVENT_TYPES:
        shown = etype if isinstance(etype, str) and len(etype) <= 40 else type(etype).__name__
        return BadLine(line_no, f"unknown event type {shown!r}")
    obj = doc.get("object")
    if not isinstance(obj, dict):
        return BadLine(line_no, f"{etype} event without an object")
    return RawEvent(etype, obj)
