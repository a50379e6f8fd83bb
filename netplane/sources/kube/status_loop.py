"""The loop both status writers run: plan after the sync, follow changes, write a few at a time.

:class:`StatusLoop` is the I/O skeleton shared by the Ingress status writer
(:mod:`.status_writer`) and the Gateway API one (:mod:`.gateway_status`):
wait for the dataplane's initial sync, plan every write once, then plan
again on each relevant change; pending writes go out at most
:data:`MAX_IN_FLIGHT` at once, and the ones that failed are retried after
the backoff while later changes still replan them. A subclass says how to
plan (``_plan_all``, ``_on_change``) and how to write one (``_write``:
True when nothing is left to do for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from netplane.model import ObjectKey
from netplane.sources.kube.client import KubeClient
from netplane.sources.kube.reflector import Backoff

# Writes in flight at once: start-up with thousands of objects is not one
# round trip after another, and the API server is not flooded either.
MAX_IN_FLIGHT = 8


def status_client_for(cfg: Any, sources: Any) -> KubeClient | None:
    """A client for a status writer, when the config wants one: the API source is among
    ``sources`` and the ingress (which serves Ingresses and Gateways) is on."""
    if not cfg.uses_api or (cfg.ingress_http is None and cfg.ingress_https is None):
        return None
    from netplane.sources.kube.source import KubeSource

    kube = next((s for s in sources if isinstance(s, KubeSource)), None)
    return KubeClient(kube.config) if kube is not None else None


class StatusLoop:
    """Following the dataplane and flushing ``_pending`` (see the module docstring)."""

    dp: Any
    backoff: Backoff
    _pending: dict[Any, Any]
    writes: int
    failures: int
    #: the metric names' stem (``netplane_<stem>_writes``, ``..._pending``) and what is written
    METRIC = ""
    WHAT = ""

    def _plan_all(self) -> None:
        raise NotImplementedError

    def _on_change(self, keys: frozenset[ObjectKey]) -> None:
        raise NotImplementedError

    async def _write(self, write: Any, *, reread: bool = True) -> bool:
        raise NotImplementedError

    async def _run(self) -> None:
        stream = self.dp.subscribe()
        try:
            await self.dp.wait_ready()
            stream.take()
            self._plan_all()
            while True:
                retry_in = await self._flush() if self._pending else None
                try:
                    async with asyncio.timeout(retry_in):
                        change = await anext(stream)
                except TimeoutError:
                    continue
                except StopAsyncIteration:
                    return
                self._on_change(change.objects)
        finally:
            stream.close()

    async def _flush(self) -> float | None:
        """Send every pending write, a few at a time; the delay before retrying what failed."""
        writes = [self._pending.pop(key) for key in sorted(self._pending)]
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(write: Any) -> bool:
            async with gate:
                return await self._write(write)

        done = await asyncio.gather(*(one(w) for w in writes))
        failed = False
        for write, ok in zip(writes, done, strict=True):
            if not ok:
                self._pending.setdefault(write.key, write)
                failed = True
        if not failed:
            self.backoff.reset()
            return None
        return self.backoff.next()

    def metrics(self) -> Iterator[Any]:
        """Status writes that the API server took, and the ones that failed (then retried)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        writes = CounterMetricFamily(
            f"netplane_{self.METRIC}_writes",
            f"{self.WHAT} status patches, by result (a failed one is retried with backoff)",
            labels=["result"],
        )
        writes.add_metric(["ok"], self.writes)
        writes.add_metric(["error"], self.failures)
        yield writes
        yield GaugeMetricFamily(
            f"netplane_{self.METRIC}_pending",
            f"{self.WHAT} objects whose status write is waiting for a retry",
            value=len(self._pending),
        )
