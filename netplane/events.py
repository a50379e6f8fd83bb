"""What sources emit: watch events carrying parsed objects, and a "synced" marker.

A source parses raw objects at its boundary (``netplane.model.parse_object``)
and emits :class:`WatchEvent`; it emits :class:`Synced` once its initial list
is complete, which is the start gate for readiness (kube-proxy's "initial
sync" idea). DELETED events carry the key, and the last object when known.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from netplane.model import K8sObject, ObjectKey


class EventType(enum.Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    key: ObjectKey
    obj: K8sObject | None  # None only for DELETED when the object is not known
    source: str = ""

    @classmethod
    def upsert(cls, obj: K8sObject, source: str = "", *, added: bool = False) -> WatchEvent:
        return cls(EventType.ADDED if added else EventType.MODIFIED, obj.key, obj, source)

    @classmethod
    def delete(cls, key: ObjectKey, source: str = "", obj: K8sObject | None = None) -> WatchEvent:
        return cls(EventType.DELETED, key, obj, source)


@dataclass(frozen=True, slots=True)
class Synced:
    """The source named ``source`` has delivered its whole initial state."""

    source: str


SourceEvent = WatchEvent | Synced
