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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from netplane.events import SourceEvent, Synced, WatchEvent
from netplane.model import ObjectKey
from netplane.sources.manifest_parse import (
    ManifestObject,
    Problem,
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
            problems.append(Problem(root, 0, reason))
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
    """What is known about one file: its stat, digest, last good objects and problems."""

    sig: Signature | None = None
    digest: bytes = b""
    read_at_ns: int = 0
    objects: dict[ObjectKey, ManifestObject] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


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

    async def run(self) -> AsyncIterator[SourceEvent]:
        # A new run starts from nothing: every object is ADDED again.
        self._files, self._emitted, self._cross = {}, {}, []
        events = await asyncio.to_thread(self._scan, True)
        for ev in events:
            yield ev
        yield Synced(self.name)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), self.poll_interval)
            self._reload.clear()
            force, self._force = self._force, False
            for ev in await asyncio.to_thread(self._scan, force):
                yield ev

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
        for path in paths:
            state = self._files.get(path)
            if state is None:
                state = _File()
                changed = True
            changed |= self._refresh(path, state, force)
            files[path] = state
        if set(files) != set(self._files):
            changed = True
        self._files = files
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
            problem = Problem(path, 0, f"cannot read: {e.strerror or e}")
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
        for p in result.problems:
            log.warning("%s", p)
        state.problems = result.problems
        if not result.complete:
            return  # a syntax error keeps every last good object of the file
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
