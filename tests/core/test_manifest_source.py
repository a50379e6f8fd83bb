"""ManifestSource: the events it emits as files appear, change, break, heal and go."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path

import pytest

from netplane.events import EventType, SourceProblems, Synced, WatchEvent
from netplane.model import ObjectKey, Pod, Service
from netplane.sources.manifests import ManifestSource, find_manifest_files

DATA = Path(__file__).resolve().parents[1] / "data" / "manifests" / "clean"
POLL = 0.05
WAIT = 5.0
LOGGER = "netplane.sources.manifests"


def svc(name: str, port: int = 80, namespace: str = "default") -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"spec:\n  ports:\n    - port: {port}\n"
    )


def key(name: str, kind: str = "Service", namespace: str = "default") -> ObjectKey:
    return ObjectKey(kind, namespace, name)


class Pump:
    """Runs a source in a task and queues what it yields, so a test can wait with a timeout."""

    def __init__(self, source: ManifestSource) -> None:
        self.source = source
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for ev in self.source.run():
            if not isinstance(ev, SourceProblems):  # tests/core/test_problems.py has those
                await self.queue.put(ev)

    async def get(self) -> WatchEvent | Synced:
        return await asyncio.wait_for(self.queue.get(), WAIT)

    async def take(self, n: int) -> list:
        return [await self.get() for _ in range(n)]

    async def until_synced(self) -> list[WatchEvent]:
        out = []
        while not isinstance(ev := await self.get(), Synced):
            out.append(ev)
        assert ev == Synced("manifests")
        return out

    async def quiet(self, seconds: float = 6 * POLL) -> None:
        """Nothing more arrives within a few poll intervals."""
        await asyncio.sleep(seconds)
        assert self.queue.empty(), [self.queue.get_nowait() for _ in range(self.queue.qsize())]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def start():
    pumps: list[Pump] = []

    def _start(*paths: Path, poll: float = POLL) -> Pump:
        pump = Pump(ManifestSource([str(p) for p in paths], poll_interval=poll))
        pumps.append(pump)
        return pump

    yield _start
    for pump in pumps:
        await pump.close()


def summary(events) -> list[tuple[str, str]]:
    return [(ev.type.value, str(ev.key)) for ev in events]


def write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, as editors and ConfigMap updates do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- initial list --------------------------------------------------------------------


async def test_initial_objects_then_synced_once(tmp_path, start):
    shutil.copytree(DATA, tmp_path / "m")
    pump = start(tmp_path / "m")
    events = await pump.until_synced()
    # Sorted paths: apps/api.json, apps/ingress.yaml, apps/list.yaml, apps/pods.yml,
    # services.yaml; hidden files and directories and README.txt are skipped.
    assert summary(events) == [
        ("ADDED", "Service shop/api"),
        ("ADDED", "IngressClass netplane"),
        ("ADDED", "Ingress shop/shop"),
        ("ADDED", "Secret shop/shop-tls"),
        ("ADDED", "Service default/legacy"),
        ("ADDED", "Endpoints default/legacy"),
        ("ADDED", "Pod shop/web-0"),
        ("ADDED", "Service shop/web"),
        ("ADDED", "EndpointSlice shop/web-abc12"),
    ]
    assert all(ev.source == "manifests" for ev in events)
    pod = next(ev.obj for ev in events if ev.key.kind == "Pod")
    assert isinstance(pod, Pod)
    assert pod.pod_ips == ("10.0.0.1",)
    assert pump.source.problems() == []
    await pump.quiet()


async def test_empty_directory_still_syncs(tmp_path, start):
    pump = start(tmp_path)
    assert await pump.until_synced() == []


def test_find_manifest_files_order_and_filters(tmp_path):
    shutil.copytree(DATA, tmp_path / "m")
    (tmp_path / "m" / "zz").mkdir()
    (tmp_path / "m" / "zz" / "a.YAML").write_text("")
    explicit = tmp_path / "m" / "README.txt"
    files, problems = find_manifest_files(
        [str(tmp_path / "m"), str(explicit), str(tmp_path / "none")]
    )
    rel = [os.path.relpath(f, tmp_path / "m") for f in files]
    assert rel == [
        "apps/api.json",
        "apps/ingress.yaml",
        "apps/list.yaml",
        "apps/pods.yml",
        "services.yaml",
        "zz/a.YAML",
        "README.txt",  # named explicitly, so read whatever its extension
    ]
    assert [str(p) for p in problems] == [f"{tmp_path / 'none'}: no such file or directory"]


# -- changes -----------------------------------------------------------------------


async def test_modify_add_delete(tmp_path, start):
    write(tmp_path / "a.yaml", svc("a") + "---\n" + svc("b"))
    pump = start(tmp_path)
    assert summary(await pump.until_synced()) == [
        ("ADDED", "Service default/a"),
        ("ADDED", "Service default/b"),
    ]

    write(tmp_path / "a.yaml", svc("a", port=81) + "---\n" + svc("b"))
    (ev,) = await pump.take(1)
    assert (ev.type, ev.key) == (EventType.MODIFIED, key("a"))
    assert isinstance(ev.obj, Service)
    assert ev.obj.ports[0].port == 81
    await pump.quiet()

    write(tmp_path / "sub.yaml", svc("c"))
    assert summary(await pump.take(1)) == [("ADDED", "Service default/c")]

    (tmp_path / "a.yaml").unlink()
    events = await pump.take(2)
    assert summary(events) == [("DELETED", "Service default/a"), ("DELETED", "Service default/b")]
    assert events[0].obj is not None and events[0].obj.ports[0].port == 81

    write(tmp_path / "sub.yaml", "# emptied\n")
    assert summary(await pump.take(1)) == [("DELETED", "Service default/c")]
    await pump.quiet()


async def test_same_size_rewrite_is_seen(tmp_path, start):
    """A rewrite that keeps size (and maybe mtime) is still noticed."""
    path = tmp_path / "a.yaml"
    path.write_text(svc("a", port=80))
    pump = start(tmp_path)
    await pump.until_synced()
    with open(path, "r+") as fh:  # in place: same inode, same size
        fh.write(svc("a", port=90))
    (ev,) = await pump.take(1)
    assert ev.type is EventType.MODIFIED
    assert ev.obj.ports[0].port == 90


async def test_a_file_caught_empty_mid_write_keeps_its_objects(tmp_path, start):
    """An in-place save truncates first: a read between truncate and write deletes nothing."""
    path = tmp_path / "a.yaml"
    path.write_text(svc("a") + "---\n" + svc("b"))
    pump = start(tmp_path)
    await pump.until_synced()
    path.write_text("")  # the editor has truncated the file ...
    pump.source.reload()  # ... and a SIGHUP re-read finds it empty
    await pump.quiet()
    path.write_text(svc("a", port=81) + "---\n" + svc("b"))  # ... then writes it
    (ev,) = await pump.take(1)
    assert (ev.type, ev.key) == (EventType.MODIFIED, key("a"))
    # A file that stays empty is applied once it has been so for 2 s.
    path.write_text("")
    events = await asyncio.wait_for(pump.take(2), 5)
    assert summary(events) == [("DELETED", "Service default/a"), ("DELETED", "Service default/b")]


async def test_new_subdirectory_and_hidden_files(tmp_path, start):
    pump = start(tmp_path)
    await pump.until_synced()
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.yaml").write_text(svc("hidden-dir"))
    (tmp_path / ".x.yaml").write_text(svc("hidden-file"))
    (tmp_path / "notes.txt").write_text(svc("not-yaml"))
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "s.yml").write_text(svc("deep"))
    assert summary(await pump.take(1)) == [("ADDED", "Service default/deep")]
    await pump.quiet()


async def test_object_moved_between_files_is_modified(tmp_path, start):
    write(tmp_path / "a.yaml", svc("web"))
    pump = start(tmp_path)
    await pump.until_synced()
    os.replace(tmp_path / "a.yaml", tmp_path / "b.yaml")
    (ev,) = await pump.take(1)
    assert (ev.type, ev.key) == (EventType.MODIFIED, key("web"))
    await pump.quiet()


async def test_missing_file_appears_later(tmp_path, start, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    path = tmp_path / "later.yaml"
    pump = start(path)
    assert await pump.until_synced() == []
    assert [str(p) for p in pump.source.problems()] == [f"{path}: no such file or directory"]
    assert f"{path}: no such file or directory" in caplog.messages
    write(path, svc("late"))
    assert summary(await pump.take(1)) == [("ADDED", "Service default/late")]
    assert pump.source.problems() == []


async def test_reload_rescans_now(tmp_path, start):
    write(tmp_path / "a.yaml", svc("a"))
    pump = start(tmp_path, poll=60.0)
    await pump.until_synced()
    write(tmp_path / "a.yaml", svc("a", port=8080))
    pump.source.reload()
    (ev,) = await pump.take(1)
    assert ev.type is EventType.MODIFIED
    assert ev.obj.ports[0].port == 8080


# -- bad input keeps the last good state -------------------------------------------------


async def test_syntax_error_keeps_last_good_then_fix_applies(tmp_path, start, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    path = tmp_path / "a.yaml"
    write(path, svc("a") + "---\n" + svc("b"))
    pump = start(tmp_path)
    await pump.until_synced()

    # Broken: 'b' gone from the text and 'a' changed, but nothing is applied.
    write(path, svc("a", port=99) + "  type: ClusterIP: x\n")
    await pump.quiet()
    (problem,) = pump.source.problems()
    assert (problem.path, problem.line, problem.column) == (str(path), 9, 18)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert [r.getMessage() for r in warnings] == [str(problem)]
    assert warnings[0].getMessage().startswith(f"{path}:9:18: mapping values are not allowed")

    # Fixed: the difference from the last good state is applied.
    write(path, svc("a", port=99))
    events = await pump.take(2)
    assert summary(events) == [("DELETED", "Service default/b"), ("MODIFIED", "Service default/a")]
    assert events[1].obj.ports[0].port == 99
    assert pump.source.problems() == []
    await pump.quiet()


async def test_deleting_a_broken_file_deletes_its_last_good_objects(tmp_path, start):
    path = tmp_path / "a.yaml"
    write(path, svc("a"))
    pump = start(tmp_path)
    await pump.until_synced()
    write(path, "a: [\n")
    await pump.quiet()
    path.unlink()
    assert summary(await pump.take(1)) == [("DELETED", "Service default/a")]
    assert pump.source.problems() == []


async def test_invalid_objects_keep_their_last_good_version(tmp_path, start, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    path = tmp_path / "a.yaml"
    write(path, svc("a") + "---\n" + svc("b"))
    pump = start(tmp_path)
    await pump.until_synced()

    # 'a' becomes invalid, 'b' changes, 'c' is new but invalid, 'd' is new and good.
    text = "---\n".join([svc("a", port=70000), svc("b", port=82), svc("c", port=0), svc("d")])
    write(path, text)
    events = await pump.take(2)
    assert summary(events) == [("MODIFIED", "Service default/b"), ("ADDED", "Service default/d")]
    await pump.quiet()
    expected = [
        f"{path}:8: Service default/a: spec.ports[0].port: 70000 out of range (1-65535)",
        f"{path}:26: Service default/c: spec.ports[0].port: 0 out of range (1-65535)",
    ]
    assert [str(p) for p in pump.source.problems()] == expected
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == expected

    # Dropping the invalid 'a' from the file deletes its last good version.
    write(path, "---\n".join([svc("b", port=82), svc("d")]))
    assert summary(await pump.take(1)) == [("DELETED", "Service default/a")]
    assert pump.source.problems() == []


async def test_same_object_in_two_files_first_path_wins(tmp_path, start, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    write(tmp_path / "a.yaml", svc("web", port=1))
    write(tmp_path / "b.yaml", "# copy\n" + svc("web", port=2))
    pump = start(tmp_path)
    (ev,) = await pump.until_synced()
    assert ev.obj.ports[0].port == 1
    line = f"{tmp_path / 'b.yaml'}:2: Service default/web: also defined at {tmp_path / 'a.yaml'}:1, which is used"
    assert [str(p) for p in pump.source.problems()] == [line]
    assert caplog.messages == [line]

    # Once a.yaml lets go, b.yaml's definition takes over.
    (tmp_path / "a.yaml").unlink()
    (ev,) = await pump.take(1)
    assert (ev.type, ev.obj.ports[0].port) == (EventType.MODIFIED, 2)
    assert pump.source.problems() == []


async def test_a_second_run_starts_from_scratch(tmp_path, start):
    write(tmp_path / "a.yaml", svc("a"))
    first = start(tmp_path)
    assert summary(await first.until_synced()) == [("ADDED", "Service default/a")]
    await first.close()
    second = Pump(first.source)
    try:
        assert summary(await second.until_synced()) == [("ADDED", "Service default/a")]
    finally:
        await second.close()
