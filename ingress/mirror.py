"""RequestMirror: a copy of a request sent to another endpoint, its answer discarded.

Fire and forget, as the Gateway API asks: the client's exchange never
waits for a mirror, and a mirror that fails or is slow changes nothing for
it. Each copy is one short-lived connection that sends the request head
(with the filters before the mirror applied) and reads the response head,
bounded by :data:`TIMEOUT`; at most :data:`MAX_IN_FLIGHT` copies are
pending at once, and the rest are dropped and counted.

Requests with a body are not mirrored (counted as ``skipped``): the body
streams to the chosen endpoint as it arrives and is never held for a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from netplane.ingress.http_head import RequestHead

log = logging.getLogger("netplane.ingress.mirror")

TIMEOUT = 10.0
MAX_IN_FLIGHT = 256


class MirrorStats:
    """Counters for /metrics and /debug/state."""

    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.skipped = 0
        self.tasks: set[asyncio.Task] = set()


STATS = MirrorStats()


def mirror_request(
    targets: tuple[tuple[str, int], ...],
    head: RequestHead,
    method: bytes,
    path: bytes,
    client_ip: bytes,
    forwarded: bytes,
    has_body: bool,
) -> None:
    """Start one copy of the request per target (see the module docstring)."""
    if has_body:
        STATS.skipped += len(targets)
        return
    data = head.upstream_head(method, path, client_ip, forwarded, False)
    loop = asyncio.get_running_loop()
    for ip, port in targets:
        if len(STATS.tasks) >= MAX_IN_FLIGHT:
            STATS.dropped += 1
            continue
        task = loop.create_task(_send(ip, port, data))
        STATS.tasks.add(task)
        task.add_done_callback(STATS.tasks.discard)


async def _send(ip: str, port: int, data: bytes) -> None:
    writer = None
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(ip, port)
            writer.write(data)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
        STATS.sent += 1
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        STATS.failed += 1
        log.debug("mirror to %s:%d failed: %s", ip, port, e)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
