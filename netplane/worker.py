"""A worker process of ``netplane run --workers N``: the planes, fed by the owner.

The owner process runs the sources and the cluster state; it starts each
worker as ``python -m netplane.worker FD`` with one end of a socketpair (see
:mod:`netplane.control`). The worker holds its own copy of the state, built
from the objects the owner sends (the whole state once, then each change),
and runs the L4 proxy, the ingress and the DNS planes on SO_REUSEPORT
sockets beside its peers. It has no admin server: the owner asks it for its
metrics and debug state over the channel.

A worker that cannot start its planes (an ingress port taken since the
owner claimed it) sends the owner the one-line reason and exits with status
2, without a traceback; the owner decides whether to try again.

SIGINT and SIGHUP are the owner's to act on (a terminal's Ctrl-C reaches the
whole process group); SIGTERM, a "stop" message or the owner going away
makes the worker stop accepting, drain and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import sys
from typing import Any

from netplane.control import Channel
from netplane.dataplane import Dataplane
from netplane.errors import NetplaneError
from netplane.l4.proxy import L4Proxy
from netplane.model import ObjectKey

log = logging.getLogger("netplane.worker")

# How long open connections may finish when the owner vanished without a word.
_ORPHAN_GRACE = 5.0


class Worker:
    """One worker's dataplane and planes, driven by messages from the owner."""

    def __init__(self, channel: Channel, index: int, count: int, config: Any) -> None:
        self.channel = channel
        self.index = index
        self.count = count
        # No admin server and no sources here: the owner has both, and finds and
        # logs the problems. The planes are the Dataplane's, sharing their
        # listeners with the other workers.
        self.dp = Dataplane(
            dataclasses.replace(config, admin=None), workers=count, find_problems=False
        )
        self.grace = config.shutdown_grace

    async def run(self) -> int:
        """Load the state, start the planes, then follow the owner until told to stop.

        Returns the exit status: 0, or 2 when the planes could not start.
        """
        with self.dp.batch():
            while True:
                message = await self.channel.recv()
                if message is None:
                    return 0  # the owner went away before we served anything
                if message[0] == "synced":
                    break
                if message[0] == "stop":
                    self.channel.close()
                    return 0  # stopped before serving anything
                self._handle(message)
        try:
            await self.dp.start()  # no sources: builds the table from what arrived, then the planes
        except NetplaneError as e:  # one line says it all: no traceback
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.channel.send(("failed", str(e)))
            await self.close(0)
            return 2
        gc.collect()
        gc.freeze()
        from netplane.daemon import release_free_memory

        release_free_memory()
        await self.channel.send(("ready", os.getpid()))
        stop = asyncio.get_running_loop().create_future()

        def on_sigterm() -> None:
            if not stop.done():
                stop.set_result(self.grace)

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        reader = asyncio.create_task(self._follow(stop))
        try:
            grace = await stop
        finally:
            reader.cancel()
        await self.close(grace)
        return 0

    async def _follow(self, stop: asyncio.Future) -> None:
        while True:
            message = await self.channel.recv()
            if message is None:
                log.warning("the owner process went away; stopping")
                if not stop.done():
                    stop.set_result(min(self.grace, _ORPHAN_GRACE))
                return
            if message[0] == "stop":
                if not stop.done():
                    stop.set_result(float(message[1]))
                return
            if message[0] == "logging":  # SIGHUP gave the owner a new level or format
                from netplane.logs import setup_logging

                setup_logging(message[1], message[2])
                _tag_logs(self.index)
                continue
            if message[0] == "ask":
                _, ident, what, arg = message
                proxy = self.dp.planes.get("proxy")
                if what == "debug" and isinstance(proxy, L4Proxy):
                    await proxy.settled()  # the answer shows the changes sent before it
                await self.channel.send(("answer", ident, self._answer(what, arg)))
                continue
            with self.dp.batch():
                self._handle(message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        if message[0] != "objects":
            log.warning("ignoring an unknown control message %r", message[0])
            return
        for key, obj in message[1]:
            try:
                if obj is None:
                    self._delete(key)
                else:
                    self.dp.apply(obj)
            except NetplaneError as e:  # the owner admitted it; say why we could not
                log.error("cannot apply %s sent by the owner: %s", key, e)

    def _delete(self, key: ObjectKey) -> None:
        self.dp.delete(key.kind, key.namespace, key.name)

    def _answer(self, what: str, arg: Any) -> Any:
        if what == "metrics":
            return self.metrics_text()
        if what == "debug":
            return {name: plane.debug_state() for name, plane in sorted(self.dp.planes.items())}
        return None

    def metrics_text(self) -> str:
        """The planes' families in the text format (the owner adds the workers up)."""
        from prometheus_client import CollectorRegistry, generate_latest

        from netplane.metrics import FamilySources

        sources = [plane.metrics for _name, plane in sorted(self.dp.planes.items())]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FamilySources(sources))
        return generate_latest(registry).decode()

    async def close(self, grace: float) -> None:
        """Stop accepting, let open connections finish up to ``grace`` seconds, stop."""
        await self.dp.stop(grace)  # the planes close in reverse start order
        self.channel.close()


async def _main(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    channel = await Channel.over(sock)
    hello = await channel.recv()
    if hello is None or hello[0] != "hello":
        print("netplane worker: no greeting from the owner process", file=sys.stderr)
        return 2
    _, index, count, config = hello
    from netplane.logs import setup_logging

    setup_logging(config.log_level, config.log_format)
    _tag_logs(index)
    worker = Worker(channel, index, count, config)
    return await worker.run()


def _tag_logs(index: int) -> None:
    """Name the worker on each of its log lines (``netplane.dns.server@w1``)."""

    def tag(record: logging.LogRecord) -> bool:
        record.name = f"{record.name}@w{index}"
        return True

    for handler in logging.getLogger("netplane").handlers:
        handler.addFilter(tag)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import uvloop

    return uvloop.run(_main(int(argv[1])))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
