"""Sources of cluster objects: the Kubernetes API, manifest files, the embedding API.

Every source is an object with a ``name`` and an async iterator ``run()``
yielding :class:`netplane.events.WatchEvent` and, once its initial state is
complete, one :class:`netplane.events.Synced`. Sources parse raw objects at
their boundary and log (never raise) a rejected object, once, and report it
in a :class:`netplane.events.SourceProblems`; the stream goes on. A source
that can tell where an object was written (the manifest source) also has
``locate(wanted)``: (path, line) of each (key, field) asked about.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from netplane.events import SourceEvent


class Source(Protocol):
    name: str

    def run(self) -> AsyncIterator[SourceEvent]: ...
