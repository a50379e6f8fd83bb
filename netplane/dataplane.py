"""Dataplane: the one object that runs netplane, for the daemon and for embedders.

It owns the ClusterState and the derived ServiceTable, runs the sources as
tasks, and turns every source event into state changes and table updates.
Until every source has sent its "synced" marker only the state is filled
(kube-proxy's start gate); then the table is built once and from there on
kept current incrementally, per changed key.

It also runs the planes its Config asks for (the L4 proxy, the ingress,
DNS; see :mod:`netplane.plane`) in this process, exactly as ``netplane
run --workers 1`` does: they start after the admin server and before the
sources; at stop the sources end first, then the planes close in reverse
start order, then the admin server.

Every object refused or ignored is in :attr:`Dataplane.problems` (a
:class:`~netplane.problems.ProblemBook`): what the sources could not parse
(they log it and report it), what the cluster-wide checks refused, and
what the ingress would not serve as written (an unknown IngressClass, a
backend naming a missing Service, a TLS Secret that cannot serve, an unmet
Gateway API condition), found again after each change that could alter
them. Each new one is logged once, with ``path:line`` when it came from a
manifest; ``/debug/state`` lists them under ``problems`` and ``/metrics``
counts them in ``netplane_problems``.

Embedders call :meth:`Dataplane.apply` and :meth:`Dataplane.delete`
themselves (the in-process source) and read changes with
:meth:`Dataplane.subscribe`::

    async with netplane.Dataplane(config) as dp:
        dp.apply({"apiVersion": "v1", "kind": "Service", ...})
        async for change in dp.subscribe():
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from netplane import __version__
from netplane.addresses import hostport
from netplane.allocations import Allocations
from netplane.backoff import Backoff
from netplane.config import Config
from netplane.errors import ConfigError, ModelError
from netplane.events import EventType, SourceProblems, Synced, WatchEvent
from netplane.metrics import CONTENT_TYPE, Metrics
from netplane.model import KINDS, K8sObject, ObjectKey, parse_object, ref_of
from netplane.plane import Plane, planes_for, start_planes
from netplane.problems import REFUSED, Problem, ProblemBook, from_model_error, place
from netplane.service_table import ServiceKey, ServiceTable
from netplane.sources import Source
from netplane.state import ApplyResult, ClusterState

log = logging.getLogger("netplane.dataplane")
# Problems found here (not by a source, which logs its own), each logged once.
problem_log = logging.getLogger("netplane.problems")

EMBED_SOURCE = "embed"
# A source whose run() fails is restarted after this long, doubling to the cap.
_RESTART_DELAY = (1.0, 30.0)
# Kinds whose change can alter what the ingress would not serve, or the Gateway API status.
_INGRESS_KINDS = frozenset({"Ingress", "IngressClass", "Service", "Secret"})
_GATEWAY_KINDS = frozenset(
    {
        "GatewayClass",
        "Gateway",
        "HTTPRoute",
        "GRPCRoute",
        "ReferenceGrant",
        "Namespace",
        "Service",
        "Secret",
    }
)


@dataclass(frozen=True, slots=True)
class Change:
    """One coalesced batch: the object keys that changed and the services they touched."""

    objects: frozenset[ObjectKey]
    services: frozenset[ServiceKey]


class ChangeStream:
    """An async iterator of coalesced :class:`Change` batches for one subscriber.

    It is registered when created, so changes made right after
    ``subscribe()`` are not missed even before the first ``await``.
    """

    def __init__(self, owner: set[ChangeStream]) -> None:
        self._owner = owner
        self._objects: set[ObjectKey] = set()
        self._services: set[ServiceKey] = set()
        self._wakeup = asyncio.Event()
        self._closed = False
        owner.add(self)

    def push(self, objects: frozenset[ObjectKey], services: set[ServiceKey]) -> None:
        self._objects |= objects
        self._services |= services
        self._wakeup.set()

    def close(self) -> None:
        """Stop the stream; iteration ends once pending changes are read."""
        self._closed = True
        self._wakeup.set()
        self._owner.discard(self)

    @property
    def pending(self) -> bool:
        """True while changes wait to be read."""
        return bool(self._objects or self._services)

    def take(self) -> Change:
        """What is pending now, without waiting (empty when nothing is)."""
        change = Change(frozenset(self._objects), frozenset(self._services))
        self._objects.clear()
        self._services.clear()
        self._wakeup.clear()
        return change

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> Change:
        while not (self._objects or self._services):
            if self._closed:
                raise StopAsyncIteration
            await self._wakeup.wait()
            self._wakeup.clear()
        return self.take()


# Without a config a Dataplane listens nowhere: the state and tables only.
QUIET = Config(
    mode="local", admin=None, proxy=False, ingress_http=None, ingress_https=None, dns=None
)


class Dataplane:
    """Cluster state, derived tables, sources and planes, started and stopped together.

    ``serve`` False leaves out the planes whatever the config says, for a
    caller that runs them elsewhere (the owner of ``--workers N``) or needs
    only the state (``netplane env``). ``workers`` > 1: this is one of that
    many worker processes, whose planes share their listeners (SO_REUSEPORT).
    ``find_problems`` False: leave finding and logging problems to another
    Dataplane (the owner of the worker processes has them).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        sources: Sequence[Source] = (),
        serve: bool = True,
        workers: int = 1,
        find_problems: bool = True,
    ) -> None:
        self.config = config or QUIET
        self.serve = serve
        self.workers = workers
        cfg = self.config
        # The rejections are logged with the other problems (once, with path:line).
        self.state = ClusterState(
            Allocations(cfg.effective_service_cidrs, cfg.node_port_range),
            log_rejections=not find_problems,
        )
        #: every object refused or ignored now, and why
        self.problems = ProblemBook()
        self._find_problems = find_problems
        self._ingress_checker: Any = None
        self._gateway_certificates: Any = None
        self._ignored: set[str] = set()
        self._rejections_seen = -1  # the state's rejections_version last looked at
        self.table = ServiceTable(derive_from_pods=cfg.pods_make_endpoints)
        self.sources: list[Source] = list(sources)
        self._synced: set[str] = set()
        # Keys each source has put in the state, so that a restarted source's
        # new initial list can drop what it no longer has (a relist).
        self._owned: dict[str, set[ObjectKey]] = {}
        self._table_built = False
        self._batch_depth = 0
        self._ready_event = asyncio.Event()
        self._sub = self.state.subscribe()
        self._feeds: set[ChangeStream] = set()
        self._tasks: list[asyncio.Task] = []
        self._started_at = time.monotonic()
        self.admin: Any = None
        # Data planes that run beside this dataplane, by name: the ones this
        # dataplane started (serve), and what an owner adds (the Ingress status
        # writer, the worker pool). /debug/state shows their debug_state()
        # under "planes"; /metrics adds their metrics() at each scrape.
        self.planes: dict[str, Plane] = {}
        # What start() opened (admin server, planes), closed in reverse by stop().
        self._stack: contextlib.AsyncExitStack | None = None
        self._grace = cfg.shutdown_grace
        self.metrics = Metrics()
        self.metrics.add_source(self._collect_metrics)
        # Set at the start of a shutdown: /readyz fails from then on, so load
        # balancers stop sending while open connections drain.
        self.draining = False
        self.running = False
        # Set by the owner of --workers N: the planes run in worker processes,
        # which are asked for their figures before a scrape and for their
        # state when /debug/state is read; /readyz also waits for them.
        self.before_scrape: list[Callable[[], Awaitable[None]]] = []
        self.remote_planes: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self.ready_checks: list[Callable[[], bool]] = []

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Dataplane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the admin server (when configured), the planes (``serve``), then the sources.

        The listeners come first: if one cannot be bound, what had started
        is closed again and no source has run, so a failed ``async with``
        leaves nothing behind. A DNS port that cannot be bound is logged,
        and the rest serves. With sources, the planes subscribe before the
        table is built, so each sees all of it. Without, what was applied
        before ``start()`` is the whole state: the table is built first, so
        the planes serve all of it by the time ``start()`` returns.
        """
        self._started_at = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            if self.config.admin is not None:
                await self._start_admin()
                stack.push_async_callback(self._close_admin)
            if not self.sources and not self._table_built:
                self._build_table()
            if self.serve:
                await start_planes(
                    planes_for(self.config, self, workers=self.workers),
                    stack,
                    self.planes,
                    grace=lambda: self._grace,
                    config=self.config,
                )
            self._stack = stack.pop_all()
        self.running = True
        for source in self.sources:
            self._tasks.append(asyncio.create_task(self._run_source(source), name=source.name))

    async def stop(self, grace: float | None = None) -> None:
        """Stop the sources, then close the planes in reverse start order and the admin
        server, each letting open work finish up to ``grace`` seconds (default: the
        config's ``shutdown_grace``)."""
        self.running = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._grace = self.config.shutdown_grace if grace is None else grace
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        for feed in list(self._feeds):
            feed.close()

    async def _start_admin(self) -> None:
        from netplane.admin import AdminServer
        from netplane.explain.admin import add_route as add_explain
        from netplane.ui import add_routes as add_dashboard

        assert self.config.admin is not None
        admin = AdminServer(
            self.config.admin.host,
            self.config.admin.port,
            is_ready=self._serving,
            debug_state=self._debug_state_with_remote,
        )
        admin.add_route("GET", "/metrics", self._metrics_response)
        add_dashboard(admin, self)  # /ui: the read-only dashboard (netplane/ui/)
        add_explain(admin, self)  # /debug/explain: what `netplane explain` asks
        try:
            await admin.start()
        except OSError as e:
            raise ConfigError(
                f"admin: cannot listen on {self.config.admin}: {e.strerror or e}"
            ) from None
        self.admin = admin
        log.info("admin server listening on %s", _addr(self.admin))

    async def _close_admin(self) -> None:
        admin, self.admin = self.admin, None
        if admin is not None:
            await admin.close(self._grace)

    @property
    def ready(self) -> bool:
        """True once every source has delivered its initial state."""
        return self._table_built

    async def wait_ready(self) -> None:
        """Return once every source has delivered its initial state."""
        await self._ready_event.wait()

    def reload(self) -> None:
        """Ask every source that can to re-read its input now (SIGHUP)."""
        for source in self.sources:
            reload = getattr(source, "reload", None)
            if callable(reload):
                reload()

    # -- the embedding source ---------------------------------------------

    def apply(self, obj: K8sObject | Mapping[str, Any]) -> ApplyResult:
        """Add or replace one object (a model object or a raw API dict).

        Raises ModelError for an invalid object; nothing changes then.
        """
        if isinstance(obj, Mapping):
            parsed = parse_object(dict(obj))
            if parsed is None:
                kind = obj.get("kind")
                if kind == "Secret":
                    raise ModelError(ref_of(obj), "type", "only kubernetes.io/tls Secrets are used")
                raise ModelError(ref_of(obj), "kind", f"{kind!r} is not a kind netplane uses")
            obj = parsed
        result = self._ingest(WatchEvent(EventType.MODIFIED, obj.key, obj, EMBED_SOURCE))
        if result.error is not None:
            # The caller hears "refused" and owns the retry; the state must not
            # admit this version later on its own when a clusterIP or nodePort frees.
            self.state.forget_rejected(obj.key)
            raise result.error
        return result

    def delete(self, kind: str, namespace: str, name: str) -> ApplyResult:
        """Remove one object; namespace is ignored for cluster-scoped kinds."""
        if kind not in KINDS:
            raise ModelError(kind, "kind", f"{kind!r} is not a kind netplane uses")
        from netplane.model import CLUSTER_SCOPED

        key = ObjectKey(kind, "" if kind in CLUSTER_SCOPED else namespace, name)
        return self._ingest(WatchEvent(EventType.DELETED, key, None, EMBED_SOURCE))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Apply many objects, then update the tables once (bulk loads).

        Inside the block the state changes at once; the table and the
        subscribers see the whole batch together when it ends.
        """
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if not self._batch_depth and self._table_built:
                self._publish()

    def subscribe(self) -> ChangeStream:
        """Coalesced changes from now on, until the stream or the dataplane closes."""
        return ChangeStream(self._feeds)

    # -- the pipeline --------------------------------------------------------

    def _ingest(self, event: WatchEvent) -> ApplyResult:
        result = self.state.apply(event)
        if result.error is not None:
            self.metrics.rejected.labels(event.key.kind).inc()
        if result.changed:
            log.debug("%s %s from %s", event.type.value.lower(), event.key, event.source)
        if self._table_built and not self._batch_depth:
            self._publish()
        return result

    def _publish(self) -> None:
        changed = self._sub.take()
        if not changed:
            self._find_rejections()  # a refused version changes nothing, and is a problem
            return
        started = time.perf_counter()
        try:
            services = self.table.apply(self.state, changed)
        except Exception:
            # The changes were consumed; only a full rebuild is safe now.
            log.exception("incremental table update failed; rebuilding")
            services = self.table.rebuild(self.state)
        for feed in self._feeds:
            feed.push(changed, services)
        self.metrics.sync_duration.observe(time.perf_counter() - started)
        self._observe_programming(changed)
        self._find_problems_after(changed)

    # -- problems ------------------------------------------------------------

    @property
    def _ingress_on(self) -> bool:
        return self.config.ingress_http is not None or self.config.ingress_https is not None

    def _on_source_problems(self, report: SourceProblems) -> None:
        """A source's field-level problems (it has logged them): count the new rejections."""
        new, _gone = self.problems.replace(report.source, report.problems, report.scope)
        for p in new:
            if p.code in REFUSED:
                self.metrics.rejected.labels(p.kind).inc()

    def _find_rejections(self) -> None:
        self._find_problems_after(frozenset())

    def _find_problems_after(self, changed: frozenset[ObjectKey] | None) -> None:
        """Look again at what ``changed`` (None: everything) can alter; log what is new.

        The cluster-wide rejections when the state says they may have
        changed (a refused version changes no key); the Ingress and Gateway
        API problems when an object of a kind they read changed.
        """
        if not self._find_problems:
            return
        found: dict[str, list[Problem]] = {}
        if self.state.rejections_version != self._rejections_seen:
            self._rejections_seen = self.state.rejections_version
            found["state"] = [
                from_model_error(e, k, "rejected", "state")
                for k, e in sorted(self.state.rejected().items())
            ]
        kinds = {k.kind for k in changed} if changed is not None else None
        if kinds is not None and "state" in found:
            kinds.add("Service")  # a backend naming a Service refused now says so
        if self._ingress_on and (kinds is None or kinds & _INGRESS_KINDS):
            found["ingress"] = self._ingress_problems()
        if self._ingress_on and (kinds is None or kinds & _GATEWAY_KINDS):
            found["gateway"] = self._gateway_problems()
        for origin, problems in found.items():
            if not problems and not self.problems.of(origin):
                continue
            new, _gone = self.problems.replace(origin, self._place(problems))
            for p in new:
                problem_log.warning("%s", p)

    def _ingress_problems(self) -> list[Problem]:
        from netplane.ingress.problems import IngressChecker

        if self._ingress_checker is None:
            cfg = self.config
            self._ingress_checker = IngressChecker(
                ingress_class=cfg.ingress_class, default_secret=cfg.default_certificate
            )
        diagnosis = self._ingress_checker.check(self.state)
        ignored = set(diagnosis.ignored)
        for line in sorted(ignored - self._ignored):
            problem_log.debug("ignored %s", line)
        self._ignored = ignored
        return diagnosis.problems

    def _gateway_problems(self) -> list[Problem]:
        from netplane.check import gateway_problems

        if not any(self.state.objects(k) for k in ("Gateway", "HTTPRoute", "GRPCRoute")):
            return []  # nothing to attach
        if self._gateway_certificates is None:
            from netplane.ingress.gateway_plane import CertificateCache

            self._gateway_certificates = CertificateCache()
        return gateway_problems(self.state, self._gateway_certificates)

    def _place(self, problems: list[Problem]) -> list[Problem]:
        """Each problem with the file and line its object came from, where a source can tell."""

        def locate(
            wanted: Iterable[tuple[ObjectKey, str]],
        ) -> dict[tuple[ObjectKey, str], tuple[str, int]]:
            wanted = list(wanted)
            out: dict[tuple[ObjectKey, str], tuple[str, int]] = {}
            for source in self.sources:
                where = getattr(source, "locate", None)
                owned = self._owned.get(source.name)
                mine = [w for w in wanted if owned and w[0] in owned]
                if where is not None and mine:
                    out.update(where(mine))
            return out

        return place(problems, locate)

    def _observe_programming(self, changed: frozenset[ObjectKey]) -> None:
        """kube-proxy's network-programming duration: from the EndpointSlice
        controller's trigger time to now, for each changed slice that has one.

        Planes follow the tables within the same loop turn, so "now" is when
        every plane has been told; the annotation has one-second resolution,
        as in Kubernetes.
        """
        now = time.time()
        for key in changed:
            if key.kind != "EndpointSlice":
                continue
            obj = self.state.get(key)
            stamp = obj.meta.annotations.get(TRIGGER_TIME_ANNOTATION) if obj else None
            if stamp:
                when = _parse_time(stamp)
                if when is not None and now >= when:
                    self.metrics.programming_duration.observe(now - when)

    def _build_table(self) -> None:
        self._sub.take()
        started = time.perf_counter()
        services = self.table.rebuild(self.state)
        self.metrics.sync_duration.observe(time.perf_counter() - started)
        self._table_built = True
        self._ready_event.set()
        log.info(
            "ready: %s; %d services in the table (built in %.1f ms, %.2f s after start)",
            _counts(self.state.counts()),
            len(self.table),
            (time.perf_counter() - started) * 1000,
            time.monotonic() - self._started_at,
        )
        for feed in self._feeds:
            feed.push(frozenset(o.key for o in self.state), services)
        self._find_problems_after(None)

    async def _run_source(self, source: Source) -> None:
        backoff = Backoff(*_RESTART_DELAY, jitter=0.0)
        owned = self._owned.setdefault(source.name, set())
        while True:
            # Keys this run has sent; at its Synced, the rest of `owned` is gone.
            seen: set[ObjectKey] | None = set()
            self.problems.clear(source.name)  # a new run reports its problems anew
            try:
                async for event in source.run():
                    if isinstance(event, SourceProblems):
                        self._on_source_problems(event)
                    elif isinstance(event, Synced):
                        if seen is not None:
                            self._drop_unseen(source.name, owned - seen)
                            seen = None
                        self._mark_synced(source.name)
                    else:
                        if event.type is EventType.DELETED:
                            owned.discard(event.key)
                        else:
                            owned.add(event.key)
                            if seen is not None:
                                seen.add(event.key)
                        self._ingest(event)
                    backoff.reset()
                delay = backoff.next()
                log.warning("source %s ended; restarting in %.0f s", source.name, delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = backoff.next()
                log.exception("source %s failed; restarting in %.0f s", source.name, delay)
            await asyncio.sleep(delay)

    def _drop_unseen(self, source: str, gone: set[ObjectKey]) -> None:
        """Delete what a restarted source held before but left out of its new list."""
        owned = self._owned[source]
        for key in sorted(gone):
            owned.discard(key)
            self._ingest(WatchEvent(EventType.DELETED, key, None, source))
        if gone:
            log.info("source %s: %d object(s) gone since its last run", source, len(gone))

    def _mark_synced(self, name: str) -> None:
        if name in self._synced:
            return
        self._synced.add(name)
        log.info("source %s synced", name)
        if not self._table_built and all(s.name in self._synced for s in self.sources):
            self._build_table()

    # -- introspection -------------------------------------------------------

    def _serving(self) -> bool:
        return self.ready and not self.draining and all(check() for check in self.ready_checks)

    async def _metrics_response(self, request: Any) -> Any:
        from netplane.admin import Response

        for refresh in self.before_scrape:
            await refresh()
        return Response(200, self.metrics.render(), CONTENT_TYPE)

    async def _debug_state_with_remote(self, *, summary: bool = False) -> dict[str, Any]:
        state = self.debug_state(summary=summary)
        if self.remote_planes is not None:
            state["planes"] = {**await self.remote_planes(), **state["planes"]}
        return state

    def _collect_metrics(self) -> Iterator[Any]:
        """State, source and plane figures, read at scrape time."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        objects = GaugeMetricFamily(
            "netplane_objects", "Objects in the cluster state", labels=["kind"]
        )
        for kind, n in self.state.counts().items():
            objects.add_metric([kind], n)
        yield objects
        rejected = GaugeMetricFamily(
            "netplane_rejected_objects_current",
            "Objects refused now (a field error, or the cluster-wide checks), by kind",
            labels=["kind"],
        )
        by_kind: dict[str, int] = {}
        for ref in self._refused():
            kind = ref.split(" ", 1)[0]
            by_kind[kind] = by_kind.get(kind, 0) + 1
        for kind, n in sorted(by_kind.items()):
            rejected.add_metric([kind], n)
        yield rejected
        problems = GaugeMetricFamily(
            "netplane_problems",
            "Objects (or manifest files) refused or ignored now, by kind and reason",
            labels=["kind", "reason"],
        )
        for (kind, code), n in self.problems.counts().items():
            problems.add_metric([kind, code], n)
        yield problems
        synced = GaugeMetricFamily(
            "netplane_source_synced",
            "1 once a source has delivered its initial state",
            labels=["source"],
        )
        lists = CounterMetricFamily(
            "netplane_watch_lists",
            "Complete lists per API resource (the first, then one per relist)",
            labels=["source", "resource"],
        )
        failures = CounterMetricFamily(
            "netplane_watch_reconnects",
            "Failed lists or watches per API resource, each followed by a reconnect",
            labels=["source", "resource"],
        )
        for source in self.sources:
            synced.add_metric([source.name], float(source.name in self._synced))
            for r in getattr(source, "reflectors", ()):
                lists.add_metric([source.name, r.resource.plural], r.lists)
                failures.add_metric([source.name, r.resource.plural], r.failures)
        yield synced
        yield lists
        yield failures
        for _name, plane in sorted(self.planes.items()):
            yield from plane.metrics()

    def _refused(self) -> dict[str, str]:
        """Objects whose latest version was refused: ``Kind ns/name`` -> why (no path)."""
        out = {str(k): e.describe() for k, e in self.state.rejected().items()}
        for p in self.problems:
            if p.code == "invalid" and p.kind:
                out.setdefault(p.ref, p.describe())
        return dict(sorted(out.items()))

    def debug_state(self, *, summary: bool = False) -> dict[str, Any]:
        """A JSON-ready summary for /debug/state; Secret contents never appear.

        ``summary`` leaves out the lists of objects, secrets and services,
        and counts the problems instead of listing them.
        """
        planes = {name: plane.debug_state() for name, plane in sorted(self.planes.items())}
        if summary:
            return {
                "version": __version__,
                "ready": self.ready,
                "sources": {s.name: s.name in self._synced for s in self.sources},
                "counts": self.state.counts(),
                "rejected": len(self._refused()),
                "problems": len(self.problems),
                "planes": planes,
            }
        objects: dict[str, list[str]] = {}
        for obj in self.state:
            k = obj.key
            objects.setdefault(k.kind, []).append(
                f"{k.namespace}/{k.name}" if k.namespace else k.name
            )
        secrets = [
            {
                "namespace": s.key.namespace,
                "name": s.key.name,
                "type": "kubernetes.io/tls",
                "data": "<redacted>",
            }
            for s in self.state.objects("Secret")
        ]
        return {
            "version": __version__,
            "ready": self.ready,
            "config": {
                "mode": self.config.mode,
                "clusterDomain": self.config.cluster_domain,
                "serviceCIDRs": [str(n) for n in self.config.effective_service_cidrs],
                "configFile": self.config.config_file,
            },
            "sources": {s.name: s.name in self._synced for s in self.sources},
            "counts": self.state.counts(),
            "objects": {k: sorted(v) for k, v in sorted(objects.items())},
            "secrets": secrets,
            "rejected": self._refused(),
            "problems": [p.to_dict() for p in self.problems],
            "services": [e.to_dict() for e in sorted(self.table, key=lambda e: e.key)],
            "planes": planes,
        }


TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


def _parse_time(stamp: str) -> float | None:
    """An RFC 3339 time as the API server writes it, in seconds since the epoch."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "no objects"


def _addr(server: Any) -> str:
    return hostport(server.host, server.port) if hasattr(server, "host") else str(server.port)
