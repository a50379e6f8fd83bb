"""Writes Ingress ``status.loadBalancer`` to the API server (the I/O side of :mod:`.ingress_status`).

Strategy: one task follows the dataplane's change stream. Once the initial
sync is done it plans every Ingress; after that only the Ingresses a change
names, and everything again when an IngressClass or our Node changes. Each
planned write is a JSON merge patch of ``.../ingresses/NAME/status`` that
carries the resourceVersion it was planned from:

- 404: the Ingress is gone; the watch will say so, nothing to retry;
- 409: our view was stale: the object is read again, and the write is
  planned afresh from what the server has now;
- anything else (5xx, connection errors): kept, retried with exponential
  backoff, while later changes still replan it.

The resourceVersion precondition is also what lets the netplanes of many
nodes share one status (node addresses, no ``--publish-address``): two
nodes adding themselves at once cannot overwrite each other; the loser
re-reads and adds itself to the winner's list. On shutdown such a node
takes its address out again (bounded by a few seconds).

It runs only where the sources run (one writer per node, not per worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from netplane.errors import ModelError, SourceError
from netplane.ingress.classes import ClassSelector
from netplane.model import Ingress, Node, ObjectKey, parse_object
from netplane.sources.kube.client import ApiError, KubeClient
from netplane.sources.kube.ingress_status import (
    LoadBalancer,
    StatusPlanner,
    StatusUpdate,
    published,
)
from netplane.sources.kube.reflector import Backoff
from netplane.sources.kube.resources import INGRESS
from netplane.sources.kube.status_loop import StatusLoop, status_client_for

log = logging.getLogger("netplane.ingress.status")


def status_path(key: ObjectKey) -> str:
    """``/apis/networking.k8s.io/v1/namespaces/NS/ingresses/NAME/status``."""
    return f"{INGRESS.path(key.namespace)}/{key.name}/status"


class IngressStatusWriter(StatusLoop):
    """Keeps the status of the Ingresses we serve equal to our published address."""

    METRIC = "ingress_status"
    WHAT = "Ingress"

    def __init__(
        self,
        dp: Any,
        client: KubeClient,
        *,
        ingress_class: str,
        controller: str,
        publish_addresses: Sequence[str] = (),
        node_name: str = "",
        backoff: Backoff | None = None,
    ) -> None:
        self.dp = dp
        self.client = client
        self.ingress_class = ingress_class
        self.controller = controller
        self.publish_addresses = tuple(publish_addresses)
        self.node_key = ObjectKey("Node", "", node_name) if node_name else None
        # Without --publish-address each node adds its own address (a DaemonSet).
        self.planner = StatusPlanner(shared=not self.publish_addresses)
        self.backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self.writes = 0
        self.failures = 0
        self._pending: dict[ObjectKey, StatusUpdate] = {}
        self._task: asyncio.Task[None] | None = None
        self._leaving = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingress-status")
        self._task.add_done_callback(_log_crash)

    async def close(self, leave_timeout: float = 3.0) -> None:
        """Stop; a node that shares the status takes its address out first (bounded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.planner.shared and self.dp.ready:
            self._leaving = True
            try:
                async with asyncio.timeout(leave_timeout):
                    await self._leave()
            except TimeoutError:
                log.warning("Ingress status: could not take our address out in time")
        await self.client.aclose()

    async def _leave(self) -> None:
        for update in self.planner.plan_leave(self.dp.state.objects("Ingress")):
            await self._write(update)

    # -- planning ------------------------------------------------------------

    def _selector(self) -> ClassSelector:
        return ClassSelector.from_state(
            self.dp.state, ingress_class=self.ingress_class, controller=self.controller
        )

    def _address(self) -> LoadBalancer:
        node = self.dp.state.get(self.node_key) if self.node_key is not None else None
        return published(self.publish_addresses, node if isinstance(node, Node) else None)

    def _plan_all(self) -> None:
        selector, address = self._selector(), self._address()
        self._pending = {}
        ingresses = self.dp.state.objects("Ingress")
        for u in self.planner.plan_all(ingresses, selector, address):
            self._pending[u.key] = u

    def _plan_keys(self, keys: frozenset[ObjectKey]) -> None:
        if self.node_key in keys or any(k.kind == "IngressClass" for k in keys):
            self._plan_all()
            return
        selector, address = None, None
        for key in keys:
            if key.kind != "Ingress":
                continue
            ing = self.dp.state.get(key)
            if ing is None:
                self.planner.gone(key)
                self._pending.pop(key, None)
                continue
            if selector is None or address is None:  # both or neither
                selector, address = self._selector(), self._address()
            update = self.planner.plan(ing, selector, address)
            if update is None:
                self._pending.pop(key, None)
            else:
                self._pending[key] = update

    # -- writing -------------------------------------------------------------

    def _on_change(self, keys: frozenset[ObjectKey]) -> None:
        self._plan_keys(keys)

    async def _write(self, update: StatusUpdate, *, reread: bool = True) -> bool:
        """One PATCH; True when there is nothing left to do for this update."""
        key, path = update.key, status_path(update.key)
        try:
            await self.client.patch_json(path, update.status.merge_patch(update.resource_version))
        except ApiError as e:
            if e.not_found:
                log.debug("%s: gone before its status was written", key)
                self.planner.gone(key)
                return True
            if e.conflict and reread:
                return await self._reread(update)
            self.failures += 1
            log.warning("%s: status write failed, will retry: %s", key, e)
            return False
        except (SourceError, OSError) as e:
            self.failures += 1
            log.warning("%s: status write failed, will retry: %s", key, e)
            return False
        self.writes += 1
        self.planner.written(update)
        log.info("%s: status.loadBalancer set to %s", key, update.status)
        return True

    async def _reread(self, update: StatusUpdate) -> bool:
        """After a 409: plan again from the object as the server has it now."""
        key = update.key
        try:
            raw = await self.client.get_json(status_path(key).removesuffix("/status"))
            ing = parse_object(raw, kind="Ingress")
        except ApiError as e:
            if e.not_found:
                self.planner.gone(key)
                return True
            self.failures += 1
            log.warning("%s: re-read after a conflict failed: %s", key, e)
            return False
        except (SourceError, OSError, ModelError) as e:
            self.failures += 1
            log.warning("%s: re-read after a conflict failed: %s", key, e)
            return False
        if not isinstance(ing, Ingress):
            return True
        if self._leaving:
            fresh = next(iter(self.planner.plan_leave([ing])), None)
        else:
            fresh = self.planner.plan(ing, self._selector(), self._address())
        if fresh is None:
            return True
        return await self._write(fresh, reread=False)

    def debug_state(self) -> dict[str, Any]:
        return {
            "address": str(self._address()),
            "mode": "shared" if self.planner.shared else "published",
            "ours": len(self.planner.claimed),
            "pending": [f"{k.namespace}/{k.name}" for k in sorted(self._pending)],
            "writes": self.writes,
            "failures": self.failures,
        }


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Ingress status writer stopped", exc_info=task.exception())


def ingress_status_for(cfg: Any, dp: Any, sources: Sequence[Any]) -> IngressStatusWriter | None:
    """The status writer a daemon config asks for: the API source with ingress on."""
    client = status_client_for(cfg, sources)
    if client is None:
        return None
    from netplane.ingress.plane import IngressSettings

    writer = IngressStatusWriter(
        dp,
        client,
        ingress_class=cfg.ingress_class,
        controller=IngressSettings().controller,  # the ingress plane's own
        publish_addresses=cfg.publish_addresses,
        node_name=cfg.node_name,
    )
    dp.planes["ingress-status"] = writer
    return writer
