"""What sources emit: watch events carrying parsed objects, a "synced" marker, problems.

A source parses raw objects at its boundary (``netplane.model.parse_object``)
and emits :class:`WatchEvent`; it emits :class:`Synced` once its initial list
is complete, which is the start gate for readiness (kube-proxy's "initial
sync" idea). DELETED events carry the key, and the last object when known.
What it could not parse or validate it logs, and reports in
:class:`SourceProblems` so that ``/debug/state`` and the metrics show it too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from netplane.model import K8sObject, ObjectKey
from netplane.problems import Problem


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


@dataclass(frozen=True, slots=True)
class SourceProblems:
    """The current problems of ``source`` within ``scope``, replacing what it said there before.

    ``scope`` "" is everything the source knows (the manifest source sends
    its whole list when it changes); a source that reports one object at a
    time (the API source) uses the object's key as the scope, and an empty
    ``problems`` when that object is fine again or gone.
    """

    source: str
    problems: tuple[Problem, ...]
    scope: str = ""


SourceEvent = WatchEvent | Synced | SourceProblems
