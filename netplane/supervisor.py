"""The owner side of ``netplane run --workers N``: start, feed and restart the workers.

The owner keeps the one watch per node on the API server (its sources and
ClusterState); each worker gets the whole state once, then every change as
it happens, as the objects the owner's state holds (validated, with their
allocated addresses), never the world again. A worker that dies is started
again after a short, growing delay; its peers keep serving meanwhile,
because the kernel stops handing a dead process's SO_REUSEPORT socket new
connections.

Before the first worker starts, the daemon has claimed the ports the
workers will share (:mod:`netplane.ports`: the ingress and DNS ports at
once, the L4 listeners through ``preflight`` once the state is complete),
so that SO_REUSEPORT never lets them join another process's sockets.

A worker that cannot start is not restarted for ever. If it says why (a
port it cannot bind: :meth:`netplane.worker.Worker.run` sends that line)
before any worker has served, nothing will change by trying again: the
owner stops at once with that line and exit status 2. Otherwise it tries
``_START_ATTEMPTS`` times in a row, then stops with one line naming the
worker and its last failure.

/metrics and /debug/state are the owner's: it asks every live worker over
the channel and adds their figures up (:mod:`netplane.metrics_merge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netplane.backoff import Backoff
from netplane.control import CHUNK, Channel
from netplane.errors import NetplaneError
from netplane.metrics_merge import merge

if TYPE_CHECKING:
    from netplane.ports import Claims

log = logging.getLogger("netplane.workers")

# A worker that dies is restarted after this long, doubling to the cap; the
# delay resets once a worker has served for _STABLE seconds.
_RESTART_DELAY = (0.2, 10.0)
_STABLE = 30.0
# Starts in a row that end before the worker is ready, after which the owner gives up.
_START_ATTEMPTS = 5
_ASK_TIMEOUT = 5.0
# Figures every worker holds alike (each binds every listener): shown once, not summed.
_SAME_IN_EVERY_WORKER = frozenset({"netplane_l4_listeners"})


@dataclass
class WorkerSlot:
    """One worker's place: its current process and channel, and its history."""

    index: int
    pid: int | None = None
    ready: bool = False
    restarts: int = 0
    failed_starts: int = 0  # in a row: runs that ended before the worker was ready
    failure: str | None = None  # why the last run could not start, as the worker said
    started_at: float = 0.0
    process: Any = None
    channel: Channel | None = None
    stream: Any = None  # the changes still to send this worker
    answers: dict[int, asyncio.Future] = field(default_factory=dict)

    def begin_run(self) -> None:
        """A new run starts: its clock, and no failure yet (a method, so a
        type checker does not take the reset for the value after the run)."""
        self.started_at = time.monotonic()
        self.failure = None

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.pid,
            "ready": self.ready,
            "restarts": self.restarts,
        }


class WorkerPool:
    """N worker processes serving the planes of one owner's Dataplane."""

    def __init__(
        self,
        dataplane: Any,
        count: int,
        *,
        claims: Claims | None = None,
        preflight: Callable[[], None] | None = None,
    ) -> None:
        self.dp = dataplane
        self.count = count
        self.claims = claims  # the owner's locks on the listeners (netplane.ports); freed at stop
        # run once the state is complete, before any worker starts; a NetplaneError
        # it raises (a port in use) stops the daemon with its line
        self.preflight = preflight
        self._launcher: asyncio.Task | None = None
        #: set when the pool gave up on a worker that cannot start: the line, and the exit status
        self.failure: tuple[str, int] | None = None
        #: called once when the pool gives up (the daemon stops on it)
        self.on_failure: Callable[[], None] | None = None
        self.slots = [WorkerSlot(i) for i in range(count)]
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._ids = itertools.count(1)
        self._metrics_texts: list[str] = []
        # ready once every worker has been ready once; after that, while any is
        self._all_started = False

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start every worker once the owner's state is complete."""
        self._launcher = asyncio.create_task(self._launch(), name="workers")

    async def _launch(self) -> None:
        await self.dp.wait_ready()
        if self.preflight is not None:
            try:
                self.preflight()
            except NetplaneError as e:
                self._give_up(str(e), 2)
                return
        for slot in self.slots:
            self._tasks.append(asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}"))

    @property
    def ready(self) -> bool:
        """Every worker started and is serving; later, at least one is (others restarting)."""
        return self._all_started and any(s.ready for s in self.slots)

    async def close(self, grace: float) -> None:
        """Tell every worker to stop accepting and drain up to ``grace`` seconds; then reap."""
        self._stopping = True
        if self._launcher is not None:
            self._launcher.cancel()
        for slot in self.slots:
            if slot.channel is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await slot.channel.send(("stop", grace))
        tasks = list(self._tasks)
        if not tasks:  # never started (the dataplane failed to start)
            self._release_claims()
            return
        # Only a running worker is worth waiting for; a slot still waiting for
        # the state, or between restarts, just stops.
        running = [
            task
            for slot, task in zip(self.slots, tasks, strict=True)
            if slot.process is not None and slot.process.returncode is None
        ]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace + 5.0)
            for slot in self.slots:
                proc = slot.process
                if proc is not None and proc.returncode is None:
                    log.warning(
                        "worker %d (pid %d) did not stop in time; killing it", slot.index, proc.pid
                    )
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._release_claims()

    def _release_claims(self) -> None:
        if self.claims is not None:
            self.claims.release()

    def _give_up(self, line: str, status: int) -> None:
        """Stop restarting workers; the daemon exits with ``line`` and ``status``."""
        if self.failure is not None:
            return
        self.failure = (line, status)
        if status != 2:  # status 2 is a ConfigError, which the CLI prints as its one line
            log.error("%s", line)
        if self.on_failure is not None:
            self.on_failure()

    # -- one worker, for ever --------------------------------------------------

    def _winding_down(self) -> bool:
        """True once stop() began or the pool gave up: no worker (re)starts.

        A method, not the expression inline: both flags change while
        ``_keep`` awaits, which a type checker's narrowing does not see.
        """
        return self._stopping or self.failure is not None

    async def _keep(self, slot: WorkerSlot) -> None:
        await self.dp.wait_ready()
        backoff = Backoff(*_RESTART_DELAY, jitter=0.0)
        while not self._winding_down():
            slot.begin_run()
            try:
                code = await self._run_once(slot)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker %d failed", slot.index)
                code = None
            served, slot.ready = slot.ready, False
            slot.channel = None
            for fut in slot.answers.values():
                if not fut.done():
                    fut.cancel()
            slot.answers.clear()
            if self._winding_down():
                return
            slot.failed_starts = 0 if served else slot.failed_starts + 1
            if slot.failure is not None and not self._all_started:
                self._give_up(slot.failure, 2)  # e.g. a port taken since the owner probed it
                return
            if slot.failed_starts >= _START_ATTEMPTS:
                why = slot.failure or f"it exited with status {code}"
                self._give_up(
                    f"worker {slot.index} could not start {slot.failed_starts} times in a row,"
                    f" the last time because {why}; stopping",
                    2 if slot.failure else 1,
                )
                return
            if time.monotonic() - slot.started_at > _STABLE:
                backoff.reset()
            delay = backoff.next()
            slot.restarts += 1
            log.error(
                "worker %d (pid %s) exited with %s; starting it again in %.1f s",
                slot.index, slot.pid, code, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)

    async def _run_once(self, slot: WorkerSlot) -> int | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "netplane.worker", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), env=_child_env(),
            )  # fmt: skip
        finally:
            theirs.close()
        slot.process, slot.pid = proc, proc.pid
        channel = await Channel.over(ours)
        slot.channel = channel
        log.info("worker %d started: pid %d", slot.index, proc.pid)
        reader = asyncio.create_task(self._read(slot, channel))
        feeder: asyncio.Task | None = None
        try:
            await channel.send(("hello", slot.index, self.count, self.dp.config))
            # The snapshot and the stream of later changes are taken in one
            # go, with no await between them: nothing falls in the gap.
            stream = slot.stream = self.dp.subscribe()
            objects = [(o.key, o) for o in self.dp.state]
            feeder = asyncio.create_task(self._feed(channel, objects, stream))
            await proc.wait()
        except (ConnectionError, RuntimeError) as e:
            log.warning("worker %d: control channel lost: %s", slot.index, e)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        finally:
            if feeder is not None:
                feeder.cancel()
            reader.cancel()
            channel.close()
        return proc.returncode

    async def _feed(self, channel: Channel, objects: list[tuple[Any, Any]], stream: Any) -> None:
        try:
            for i in range(0, len(objects), CHUNK):
                await channel.send(("objects", objects[i : i + CHUNK]))
            await channel.send(("synced",))
            del objects
            async for change in stream:
                batch = [(key, self.dp.state.get(key)) for key in sorted(change.objects)]
                for i in range(0, len(batch), CHUNK):
                    await channel.send(("objects", batch[i : i + CHUNK]))
        except (ConnectionError, RuntimeError):
            pass  # the worker is gone; _run_once sees it exit
        finally:
            stream.close()

    async def _read(self, slot: WorkerSlot, channel: Channel) -> None:
        while True:
            message = await channel.recv()
            if message is None:
                return
            if message[0] == "failed":  # it cannot start, and says why in one line
                slot.failure = message[1]
            elif message[0] == "ready":
                slot.ready = True
                # latched here, not when /readyz asks: a worker may die in between
                self._all_started = self._all_started or all(s.ready for s in self.slots)
                log.info("worker %d ready (pid %d)", slot.index, message[1])
            elif message[0] == "answer":
                fut = slot.answers.pop(message[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(message[2])

    def reconfigure_logging(self, level: str, fmt: str) -> None:
        """Pass a reloaded log level and format on to every worker."""
        for slot in self.slots:
            if slot.channel is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    slot.channel.post(("logging", level, fmt))

    # -- asking the workers ----------------------------------------------------

    async def ask(self, what: str, arg: Any = None) -> list[tuple[WorkerSlot, Any]]:
        """Ask every ready worker; the ones that answer in time, with their answers."""
        loop = asyncio.get_running_loop()
        # Changes made before the question go out before it, so the answers reflect them.
        deadline = loop.time() + 1.0
        while any(s.ready and s.stream is not None and s.stream.pending for s in self.slots):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.001)
        asked: list[tuple[WorkerSlot, int, asyncio.Future]] = []
        for slot in self.slots:
            if not slot.ready or slot.channel is None:
                continue
            ident = next(self._ids)
            fut = loop.create_future()
            slot.answers[ident] = fut
            try:
                await slot.channel.send(("ask", ident, what, arg))
            except (ConnectionError, RuntimeError):
                slot.answers.pop(ident, None)
                continue
            asked.append((slot, ident, fut))
        out = []
        for slot, ident, fut in asked:
            try:
                out.append((slot, await asyncio.wait_for(fut, _ASK_TIMEOUT)))
            except (TimeoutError, asyncio.CancelledError):
                slot.answers.pop(ident, None)
                log.warning("worker %d did not answer %r in time", slot.index, what)
        return out

    async def refresh_metrics(self) -> None:
        """Fetch every worker's figures; :meth:`metrics` yields their sums at the scrape."""
        self._metrics_texts = [text for _, text in await self.ask("metrics")]

    def metrics(self) -> Any:
        yield from merge(self._metrics_texts, same_everywhere=_SAME_IN_EVERY_WORKER)
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily(
            "netplane_workers_ready", "Worker processes serving now", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "netplane_worker_restarts",
            "Times a worker process was started again",
            labels=["worker"],
        )
        for slot in self.slots:
            up.add_metric([str(slot.index)], float(slot.ready))
            restarts.add_metric([str(slot.index)], slot.restarts)
        yield up
        yield restarts

    async def planes_state(self) -> dict[str, Any]:
        """The planes as the first worker that answers sees them (every worker holds the same)."""
        for _slot, planes in await self.ask("debug"):
            return planes
        return {}

    def debug_state(self) -> list[dict[str, Any]]:
        return [slot.describe() for slot in self.slots]


def _child_env() -> dict[str, str]:
    """The owner's environment, with the directory netplane was imported from on the path
    (so that a worker runs the same code when netplane runs from a source tree)."""
    import netplane

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(netplane.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
