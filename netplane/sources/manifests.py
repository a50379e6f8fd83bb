"""The manifest source: YAML/JSON files on disk, reloaded when they change.

Strategy: poll, don't watch. Every ``poll_interval`` the source lists the
given files and directories (recursively; ``.yaml``, ``.yml``, ``.json``;
hidden names skipped, which also skips the ``..data`` links of a mounted
ConfigMap) and stats each file. Only files whose (mtime_ns, size, inode)
changed are read and parsed again (:mod:`manifest_parse`, sans-IO). A file
written within the last :data:`_RACY_NS` could change again inside the same
timestamp tick, so while it is that young its bytes are compared too (git's
"racily clean" rule).

Each file keeps its last good objects. A syntax error keeps all of them; an
invalid object keeps its own previous version (or stays absent) while the
valid ones update. The files are then merged in path order (the first
definition of a key wins) and diffed against what was emitted: DELETED
first, so a freed clusterIP can be taken by an object added in the same
round, then ADDED and MODIFIED in file order. An object that moves between
files is MODIFIED, never deleted and re-added.

Problems (a syntax error, an invalid object, a duplicate, a missing path)
are logged once, when they first appear, and the whole list is reported in
a :class:`~netplane.events.SourceProblems` whenever it changes, before the
round's events. After the initial list, every round that read a changed file
(or every file, on ``reload()``) logs one summary line: ``manifests: 2
changed, 1 added, 0 deleted (services.yaml)``. :meth:`ManifestSource.locate`
tells where an emitted object (and one of its fields) is defined, for the
problems found downstream, such as a clusterIP another Service holds.

Stat, read and parse run in a worker thread, so a large directory does not
stall the data planes; the emitted state is only touched from ``run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

from netplane import problems as problems_mod
from netplane.events import EventType, SourceEvent, SourceProblems, Synced, WatchEvent
from netplane.model import ObjectKey
from netplane.sources.manifest_parse import (
    UNREADABLE,
    ManifestObject,
    Problem,
    locate_objects,
    parse_manifest,
    resolve_duplicates,
)

log = logging.getLogger("netplane.sources.manifests")

EXTENSIONS = (".yaml", ".yml", ".json")
# A file modified this recently may change again without its mtime moving
# (coarse timestamps: a jiffy on ext4/tmpfs, 2 s on FAT); compare its bytes.
_RACY_NS = 2_000_000_000

Signature = tuple[int, int, int]  # (mtime_ns, size, inode)


def find_manifest_files(paths: Sequence[str]) -> tuple[list[str], list[Problem]]:
    """Files to read, in precedence order, and a problem per path that is missing.

    A path given as a file is used whatever its name; a directory is searched
    recursively for manifest extensions, skipping hidden files and
    directories, in sorted order. Each file appears once.
    """
    files: list[str] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for root in paths:
        root = os.fspath(root)
        if os.path.isdir(root):
            found = sorted(_walk(root, set()))
        elif os.path.isfile(root):
            found = [root]
        else:
            reason = "no such file or directory" if not os.path.lexists(root) else "not a file"
            problems.append(Problem(root, 0, reason, code=UNREADABLE))
            continue
        for f in found:
            if f not in seen:
                seen.add(f)
                files.append(f)
    return files, problems


def _walk(directory: str, visited: set[tuple[int, int]]) -> list[str]:
    try:
        st = os.stat(directory)
    except OSError:
        return []
    if (st.st_dev, st.st_ino) in visited:
        return []  # a symlink loop
    visited.add((st.st_dev, st.st_ino))
    out: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError as e:
        log.warning("%s: cannot list: %s", directory, e.strerror or e)
        return []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                out.extend(_walk(entry.path, visited))
            elif entry.is_file() and entry.name.lower().endswith(EXTENSIONS):
                out.append(entry.path)
        except OSError:
            continue
    return out


def _signature(path: str) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(slots=True)
class _File:
    """What is known about one file: its stat, digest, last good objects and problems.

    ``text`` is the content the objects were parsed from, to find a field's
    line when a problem with one of them is found later.
    """

    sig: Signature | None = None
    digest: bytes = b""
    read_at_ns: int = 0
    objects: dict[ObjectKey, ManifestObject] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    text: bytes = b""


class ManifestSource:
    """Objects from manifest files; ``reload()`` forces a full re-read (SIGHUP)."""

    name = "manifests"

    def __init__(self, paths: Sequence[str], *, poll_interval: float = 1.0) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.poll_interval = poll_interval
        self._files: dict[str, _File] = {}
        self._missing: list[Problem] = []
        self._cross: list[Problem] = []
        self._emitted: dict[ObjectKey, ManifestObject] = {}
        self._reload = asyncio.Event()
        self._force = False
        self._reported: tuple[problems_mod.Problem, ...] = ()
        # Files read again in the last round (changed, new or gone), for its summary.
        self._touched: list[str] = []
        # (key, field) -> (the object it was found for, (path, line)), see locate().
        self._located: dict[tuple[ObjectKey, str], tuple[ManifestObject, tuple[str, int]]] = {}

    # -- public --------------------------------------------------------------

    def reload(self) -> None:
        """Re-read every file now, changed or not (SIGHUP calls this)."""
        self._force = True
        self._reload.set()

    def problems(self) -> list[Problem]:
        """The current problems: missing paths, then per file, then cross-file duplicates."""
        out = list(self._missing)
        for f in list(self._files.values()):
            out.extend(f.problems)
        out.extend(self._cross)
        return out

    def objects(self) -> list[ManifestObject]:
        """The objects as last emitted, in file order."""
        return list(self._emitted.values())

    def locate(
        self, wanted: Iterable[tuple[ObjectKey, str]]
    ) -> dict[tuple[ObjectKey, str], tuple[str, int]]:
        """(path, line) of each (key, field) in ``wanted`` whose object was emitted from
        here: the field's line, or the object's when the field is "" or not found.

        A place found is kept while the object stays the same version, so
        asking again about the same problems reads no file.
        """
        emitted = self._emitted
        out: dict[tuple[ObjectKey, str], tuple[str, int]] = {}
        todo: list[tuple[ObjectKey, str]] = []
        for want in wanted:
            mo = emitted.get(want[0])
            cached = self._located.get(want)
            if mo is not None and cached is not None and cached[0] is mo:
                out[want] = cached[1]
            elif mo is not None:
                todo.append(want)
        if todo:
            texts = {path: f.text for path, f in self._files.items()}
            out.update(locate_objects(emitted, texts, todo))
        located = {w: c for w, c in self._located.items() if emitted.get(w[0]) is c[0]}
        located.update((want, (emitted[want[0]], at)) for want, at in out.items())
        self._located = located
        return out

    async def run(self) -> AsyncIterator[SourceEvent]:
        # A new run starts from nothing: every object is ADDED again.
        self._files, self._emitted, self._cross = {}, {}, []
        self._reported = ()
        events = await asyncio.to_thread(self._scan, True)
        report = self._report()
        if report is not None:
            yield report
        for ev in events:
            yield ev
        yield Synced(self.name)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), self.poll_interval)
            self._reload.clear()
            force, self._force = self._force, False
            events = await asyncio.to_thread(self._scan, force)
            if self._touched or force:
                log.info("%s", self._summary(events, force))
            report = self._report()
            if report is not None:
                yield report
            for ev in events:
                yield ev

    def _report(self) -> SourceProblems | None:
        """The problems as they are now, if they changed since last said."""
        now = tuple(p.as_problem(self.name) for p in self.problems())
        if now == self._reported:
            return None
        self._reported = now
        return SourceProblems(self.name, now)

    def _summary(self, events: list[WatchEvent], force: bool) -> str:
        """One line for a round after the initial list: what changed, and in which files."""
        counts = dict.fromkeys(EventType, 0)
        for ev in events:
            counts[ev.type] += 1
        text = (
            f"{counts[EventType.MODIFIED]} changed, {counts[EventType.ADDED]} added,"
            f" {counts[EventType.DELETED]} deleted"
        )
        if force:
            text = f"re-read {len(self._files)} file(s) on request: {text}"
        else:
            shown = self._touched[:3]
            more = len(self._touched) - len(shown)
            text += f" ({', '.join(shown)}{f' and {more} more' if more else ''})"
        return f"{self.name}: {text}"

    # -- one round -------------------------------------------------------------

    def _scan(self, force: bool) -> list[WatchEvent]:
        paths, missing = find_manifest_files(self.paths)
        if [str(p) for p in missing] != [str(p) for p in self._missing]:
            for p in missing:
                if p not in self._missing:
                    log.warning("%s", p)
        self._missing = missing
        changed = force
        files: dict[str, _File] = {}
        touched: list[str] = []
        for path in paths:
            state = self._files.get(path)
            if state is None:
                state = _File()
                changed = True
            if self._refresh(path, state, force):
                changed = True
                touched.append(path)
            files[path] = state
        gone = [p for p in self._files if p not in files]
        if gone:
            changed = True
            touched.extend(gone)
        self._files = files
        self._touched = touched
        if not changed:
            return []
        winners, cross = resolve_duplicates((p, f.objects.values()) for p, f in files.items())
        old_cross = {str(p) for p in self._cross}
        for p in cross:
            if str(p) not in old_cross:
                log.warning("%s", p)
        self._cross = cross
        return self._diff(winners)

    def _refresh(self, path: str, state: _File, force: bool) -> bool:
        """Re-read ``path`` if it changed; True when its objects may differ."""
        sig = _signature(path)
        racy = state.read_at_ns - _RACY_NS <= (state.sig[0] if state.sig else 0)
        if not force and sig is not None and sig == state.sig and not racy:
            return False
        read_at = time.time_ns()
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as e:
            problem = Problem(path, 0, f"cannot read: {e.strerror or e}", code=UNREADABLE)
            if [str(p) for p in state.problems] != [str(problem)]:
                log.warning("%s", problem)
            state.problems = [problem]
            state.sig, state.digest = None, b""  # read and parse again next round
            return False
        if not data and state.objects and sig is not None and read_at - sig[0] < _RACY_NS:
            # Editing in place (an editor's save, ``>``) empties the file before
            # writing it: a file that has just become empty is read again at the
            # next round instead of deleting its objects (and closing their
            # listeners) for a moment. Still empty 2 s later, it is applied.
            state.sig = None
            return False
        digest = hashlib.blake2b(data, digest_size=16).digest()
        state.sig, state.read_at_ns = sig, read_at
        if digest == state.digest and not force:
            return False
        state.digest = digest
        self._apply_result(path, state, data)
        return True

    @staticmethod
    def _apply_result(path: str, state: _File, data: bytes) -> None:
        result = parse_manifest(data, path)
        said = {str(p) for p in state.problems}
        for p in result.problems:
            if str(p) not in said:  # once: an edit elsewhere in the file says nothing again
                log.warning("%s", p)
        state.problems = result.problems
        if not result.complete:
            return  # a syntax error keeps every last good object of the file
        state.text = data
        objects = {mo.key: mo for mo in result.objects}
        for p in result.problems:
            # An invalid object keeps its last good version, if it had one.
            if p.key is not None and p.key not in objects and p.key in state.objects:
                objects[p.key] = state.objects[p.key]
        state.objects = objects

    def _diff(self, winners: dict[ObjectKey, ManifestObject]) -> list[WatchEvent]:
        events: list[WatchEvent] = []
        for key, mo in self._emitted.items():
            if key not in winners:
                events.append(WatchEvent.delete(key, self.name, mo.obj))
        for key, mo in winners.items():
            old = self._emitted.get(key)
            if old is None:
                events.append(WatchEvent.upsert(mo.obj, self.name, added=True))
            elif old.obj != mo.obj or old.path != mo.path:
                events.append(WatchEvent.upsert(mo.obj, self.name))
        self._emitted = winners
        return events
