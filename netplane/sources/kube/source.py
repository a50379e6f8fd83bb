"""KubeSource: every watched resource's reflector merged into one event stream.

Strategy: ``run()`` starts one :class:`Reflector` task per resource; they
all feed one bounded ``asyncio.Queue`` (bounded, so a slow consumer slows the
reflectors rather than growing memory). ``run()`` yields the WatchEvents (and
the reflectors' SourceProblems, one rejected object each) in arrival order
and exactly one ``Synced(name)`` once every resource has
finished its first list; a resource whose CRDs are not installed counts as
listed (empty), and the reflectors share one :class:`CrdPresence` so that its
absence is one warning. Leaving ``run()`` for any reason (cancellation,
``aclose()``, a reflector bug) cancels the tasks and closes every
connection; a reflector that dies of an unexpected exception takes
``run()`` down with it rather than leaving a silently stale resource.

:meth:`KubeSource.for_config` watches what a daemon config's planes need
(:func:`~netplane.sources.kube.resources.watch_plan`); the first ``run()``
logs which kinds that is, and why the others are left out.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from netplane.events import SourceEvent, SourceProblems, Synced, WatchEvent
from netplane.sources.kube.client import KubeClient
from netplane.sources.kube.kubeconfig import (
    SERVICE_ACCOUNT_DIR,
    ClusterConfig,
    in_cluster_config,
    load_kubeconfig,
)
from netplane.sources.kube.reflector import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_WATCH_TIMEOUT,
    Backoff,
    CrdPresence,
    ListDone,
    Reflector,
    reconnect_backoff,
)
from netplane.sources.kube.resources import (
    DEFAULT_KINDS,
    RESOURCES,
    Resource,
    WatchPlan,
    node_resource,
    watch_plan,
)

if TYPE_CHECKING:
    from netplane.config import Config

log = logging.getLogger("netplane.sources.kube")

QUEUE_SIZE = 4096


class _Crashed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class KubeSource:
    """The Kubernetes API as a netplane source (list + watch per resource)."""

    def __init__(
        self,
        config: ClusterConfig,
        resources: Iterable[str | Resource] = DEFAULT_KINDS,
        namespace: str | None = None,
        label_selector: str | None = None,
        *,
        node_name: str | None = None,
        name: str = "kube",
        page_size: int = DEFAULT_PAGE_SIZE,
        watch_timeout: float = DEFAULT_WATCH_TIMEOUT,
        backoff: Backoff | None = None,
        reconnect: Backoff | None = None,
        client: KubeClient | None = None,
        plan: WatchPlan | None = None,
    ) -> None:
        """``resources``: kinds ("Service", "Pod", ...) or :class:`Resource` objects.

        ``namespace`` None watches all namespaces; ``label_selector`` applies to
        every resource; ``node_name`` narrows Node to that one node. ``backoff``
        (after an error answer) and ``reconnect`` (after no answer) are
        templates: each reflector gets its own copies. ``plan``: why these
        kinds, for the log (see :meth:`for_config`).
        """
        self.name = name
        self.config = config
        self.namespace = namespace
        self.label_selector = label_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self._backoff = backoff or Backoff()
        self._reconnect = reconnect or reconnect_backoff()
        self._client = client
        self.plan = plan
        self._announced = False
        self.resources: list[Resource] = []
        for r in resources:
            res = r if isinstance(r, Resource) else RESOURCES.get(r)
            if res is None:
                known = ", ".join(RESOURCES)
                raise ValueError(f"unknown resource kind {r!r} (one of {known})")
            if res.kind == "Node" and node_name:
                res = node_resource(node_name)
            self.resources.append(res)
        self.reflectors: list[Reflector] = []

    def __repr__(self) -> str:
        kinds = ",".join(r.kind for r in self.resources)
        return f"KubeSource({self.config.server!r}, [{kinds}], namespace={self.namespace!r})"

    @classmethod
    def for_config(cls, cluster: ClusterConfig, cfg: Config, **kwargs: Any) -> KubeSource:
        """The source a daemon config asks for: the kinds its planes need, its scope."""
        plan = watch_plan(cfg)
        kwargs.setdefault("namespace", cfg.namespace)
        kwargs.setdefault("label_selector", cfg.label_selector)
        kwargs.setdefault("node_name", cfg.node_name or None)
        return cls(cluster, resources=plan.kinds, plan=plan, **kwargs)

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | os.PathLike[str] | list[str | os.PathLike[str]] | None = None,
        context: str | None = None,
        **kwargs: Any,
    ) -> KubeSource:
        """From kubeconfig file(s) (None: ``KUBECONFIG`` or ``~/.kube/config``)."""
        return cls(load_kubeconfig(path, context), **kwargs)

    @classmethod
    def in_cluster(
        cls,
        sa_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR,
        *,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> KubeSource:
        """From the pod's service account (KUBERNETES_SERVICE_HOST/PORT, token, ca.crt)."""
        return cls(in_cluster_config(sa_dir, env=env), **kwargs)

    async def run(self) -> AsyncIterator[SourceEvent]:
        if not self._announced:
            self._announced = True
            if self.plan is not None:
                log.info("%s: %s", self.name, self.plan.describe())
            else:
                log.info("%s: watching %s", self.name, ", ".join(r.kind for r in self.resources))
        client = self._client or KubeClient(self.config)
        queue: asyncio.Queue[WatchEvent | SourceProblems | ListDone | _Crashed] = asyncio.Queue(
            QUEUE_SIZE
        )
        presence = CrdPresence()
        self.reflectors = [
            Reflector(
                client,
                res,
                queue.put,
                namespace=self.namespace,
                label_selector=self.label_selector,
                page_size=self.page_size,
                watch_timeout=self.watch_timeout,
                backoff=_copy(self._backoff),
                reconnect=_copy(self._reconnect),
                source=self.name,
                presence=presence,
            )
            for res in self.resources
        ]
        tasks = [
            asyncio.create_task(self._guard(r, queue), name=f"kube-{r.resource.kind}")
            for r in self.reflectors
        ]
        waiting = {r.resource.kind for r in self.reflectors}
        try:
            if not waiting:
                yield Synced(self.name)
            while True:
                item = await queue.get()
                if isinstance(item, ListDone):
                    if item.kind in waiting:
                        waiting.discard(item.kind)
                        if not waiting:
                            yield Synced(self.name)
                elif isinstance(item, _Crashed):
                    raise item.error
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._client is None:
                await client.aclose()

    @staticmethod
    async def _guard(reflector: Reflector, queue: asyncio.Queue[Any]) -> None:
        try:
            await reflector.run()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug: surface it through run()
            await queue.put(_Crashed(e))


def _copy(template: Backoff) -> Backoff:
    """A fresh backoff with the template's settings (and its own count and random source)."""
    return Backoff(template.initial, template.maximum, template.factor, template.jitter)
