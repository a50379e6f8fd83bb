"""One resource's list-then-watch loop (client-go's Reflector, trimmed).

Strategy:

1. **List** the collection in pages (``limit``/``continue``), then diff the
   complete result against what was already emitted: ADDED for new keys,
   MODIFIED for a changed resourceVersion, nothing for an unchanged one,
   DELETED for keys that vanished. The first successful list emits
   :class:`ListDone`, the per-resource half of the source's Synced gate.
2. **Watch** from the list's resourceVersion with bookmarks on. Every event,
   bookmarks included, advances the resume point, so a dropped connection
   or a stream closed at ``timeoutSeconds`` resumes exactly where it
   stopped: nothing lost, nothing repeated.
3. **410 Gone**, as an HTTP status or an in-stream ERROR event, means the
   resume point left the server's history window: relist (step 1), whose
   diff turns everything missed into events.
4. Any other failure is logged and retried after an exponential backoff
   with jitter, resuming the watch from the last resourceVersion. Two
   backoffs, because the two kinds of failure call for different waits:

   - *no answer* (connection refused or reset, a timeout, a connection
     closed mid-response: :class:`ConnectionLost`, ``OSError``) retries on
     :attr:`Reflector.reconnect`, capped at :data:`RECONNECT_MAX` seconds
     (times up to 1.5 for jitter), so an API server that comes back after an
     outage of any length is found within 5 s. A refused connection costs
     the server nothing; one warning is logged per outage and one line when
     it ends.
   - *an answer* (401/403, 429, 5xx, a watch ERROR event) retries on
     :attr:`Reflector.backoff`, which grows to 30 s so a struggling server is
     not hammered; a ``Retry-After`` (429, 503) is a lower bound on the wait.

   A watch the server ends (its last chunk, or a clean close between events
   as in a graceful shutdown) is not a failure: it is resumed at once, and
   logged as "API server closed the watch" when it ended before its
   ``timeoutSeconds``.
5. A resource that a CRD bundle provides (``Resource.needs_crds``, e.g. the
   Gateway API) may not be served at all: a 404 on its list counts as an
   empty list (ListDone included, so the source's Synced is not held back),
   and the list is retried with the same backoff, capped as ever, until the
   CRDs appear. A :class:`CrdPresence` shared by a source's reflectors turns
   that into one warning per bundle and one line when it shows up.

Objects are parsed here, at the boundary. A malformed line or an object
that fails validation is logged and skipped, and the object keeps its last
good version (nothing is emitted for it); the stream goes on. A rejected
object is logged once per reason and reported in a
:class:`~netplane.events.SourceProblems` scoped to its key, which an
empty report clears when a good version arrives or the object goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from netplane.backoff import Backoff
from netplane.errors import ModelError, SourceError
from netplane.events import EventType, SourceProblems, WatchEvent
from netplane.model import K8sObject, ObjectKey, parse_object
from netplane.model.meta import own, shared
from netplane.problems import from_model_error
from netplane.sources.kube.client import ApiError, ConnectionLost, KubeClient
from netplane.sources.kube.resources import Resource
from netplane.sources.kube.watchstream import BadLine, RawEvent

log = logging.getLogger("netplane.sources.kube")

DEFAULT_PAGE_SIZE = 500  # kubectl's and client-go's default chunk size
DEFAULT_WATCH_TIMEOUT = 300.0  # client-go's minWatchTimeout; actual is 1-2x, spread
# The longest base wait between attempts to reach a server that does not answer
# (refused, reset, timed out); the jitter stretches it by up to half again, so
# a returning API server is found within 2.5 * 1.5 = 3.75 s (plus a handshake).
RECONNECT_MAX = 2.5
RETRY_AFTER_MAX = 60.0  # a Retry-After above this is not believed


def reconnect_backoff() -> Backoff:
    """The backoff for "no answer" failures: 0.5 s doubling to :data:`RECONNECT_MAX`."""
    return Backoff(initial=0.5, maximum=RECONNECT_MAX, factor=2.0, jitter=0.5)


@dataclass(frozen=True, slots=True)
class ListDone:
    """The first complete list of ``kind`` has been emitted."""

    kind: str


Emit = Callable[[WatchEvent | ListDone | SourceProblems], Awaitable[None]]


class _Relist(Exception):
    """Internal: the watch hit 410 Gone; the loop must list again."""


class CrdPresence:
    """Which CRD-served resources the API server does not serve: logged once per bundle.

    One per source, shared by its reflectors: five Gateway API resources
    missing make one warning, not five, and their arrival one info line. Once
    every missing resource of a bundle is served again, a later loss warns anew.
    """

    def __init__(self) -> None:
        self.missing: dict[str, set[str]] = {}  # bundle -> kinds answering 404
        self._warned: set[str] = set()  # bundles whose absence was logged
        self._appeared: set[str] = set()  # ... and whose arrival was too

    def not_served(self, resource: Resource, error: ApiError, retry: float) -> None:
        bundle = resource.needs_crds
        kinds = self.missing.setdefault(bundle, set())
        if resource.kind in kinds:
            return
        kinds.add(resource.kind)
        if bundle in self._warned:
            log.debug("%s is not served either (%s)", resource.plural, _status_of(resource, error))
            return
        self._warned.add(bundle)
        log.warning(
            "%s CRDs are not installed (%s); looking for them again every ~%gs",
            bundle,
            _status_of(resource, error),
            retry,
        )

    def served(self, resource: Resource) -> None:
        bundle = resource.needs_crds
        kinds = self.missing.get(bundle)
        if not kinds or resource.kind not in kinds:
            return
        kinds.discard(resource.kind)
        if bundle not in self._appeared:
            self._appeared.add(bundle)
            log.info(
                "%s CRDs appeared (%s %s is served); listing and watching them",
                bundle,
                resource.group_version,
                resource.plural,
            )
        if not kinds:
            self._warned.discard(bundle)
            self._appeared.discard(bundle)


class Reflector:
    """Keeps one resource in sync, emitting WatchEvents through ``emit``."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        emit: Emit,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        watch_timeout: float = DEFAULT_WATCH_TIMEOUT,
        backoff: Backoff | None = None,
        source: str = "kube",
        rng: random.Random | None = None,
        presence: CrdPresence | None = None,
        reconnect: Backoff | None = None,
    ) -> None:
        """``backoff``: after an answer that is an error; ``reconnect``: after no answer."""
        self.client = client
        self.resource = resource
        self.emit = emit
        self.namespace = namespace if resource.namespaced else None
        self.label_selector = label_selector or ""
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff()
        self.reconnect = reconnect or reconnect_backoff()
        self.source = source
        self._rng = rng or random.Random()
        self.presence = presence or CrdPresence()
        # What was last emitted per key: the object and its resourceVersion.
        self.store: dict[ObjectKey, K8sObject] = {}
        # Keys whose latest version failed validation, with why (reported, logged once).
        self.rejected: dict[ObjectKey, str] = {}
        self.resource_version = ""  # where the next watch resumes
        self.synced = False
        self.lists = 0  # complete lists done (1 + relists)
        self.failures = 0  # failed lists or watches, each retried after a backoff
        # False while the server answers 404 for a CRD-served resource (not installed).
        self.served = True
        self._unreachable_since: float | None = None  # the first failure of an outage
        self._unreachable_tries = 0

    def __repr__(self) -> str:
        return f"Reflector({self.resource.kind}, rv={self.resource_version!r})"

    @property
    def path(self) -> str:
        return self.resource.path(self.namespace)

    async def run(self) -> NoReturn:
        need_list = True
        while True:
            try:
                if need_list:
                    if not await self._list():
                        await asyncio.sleep(self.backoff.next())  # CRDs not installed (yet)
                        continue
                    need_list = False
                    self.backoff.reset()
                started = time.monotonic()
                got = await self._watch()
                if got:
                    self.backoff.reset()
                    self.reconnect.reset()
                elif time.monotonic() - started < 1.0:
                    # A stream that ends at once without events: don't spin on it.
                    await asyncio.sleep(self.backoff.next())
            except _Relist:
                log.info(
                    "%s: resourceVersion %s expired (410 Gone); relisting",
                    self.resource.kind,
                    self.resource_version,
                )
                need_list = True
            except (SourceError, OSError, asyncio.IncompleteReadError) as e:
                self.failures += 1
                what = "list" if need_list else "watch"
                if _no_answer(e):
                    delay = self.reconnect.next()
                    self._unreachable(what, e, delay)
                else:
                    delay = self.backoff.next()
                    retry_after = e.retry_after if isinstance(e, ApiError) else None
                    if retry_after is not None:
                        delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
                    log.warning(
                        "%s %s failed: %s; retrying in %.2fs",
                        self.resource.kind,
                        what,
                        _describe(e),
                        delay,
                    )
                if isinstance(e, ApiError) and (
                    e.gone or (e.not_found and self.resource.needs_crds)
                ):
                    need_list = True  # an expired continue token; CRDs deleted under a watch
                await asyncio.sleep(delay)

    # -- list ----------------------------------------------------------------

    async def _list(self) -> bool:
        """List and emit the difference; False when the resource is not served (404, CRDs)."""
        items: list[dict[str, Any]] = []
        params = self._selectors()
        params["limit"] = str(self.page_size)
        rv = ""
        while True:
            try:
                doc = await self.client.get_json(self.path, params)
            except ApiError as e:
                self._reachable()
                if not (e.not_found and self.resource.needs_crds):
                    raise
                await self._not_served(e)
                return False
            self._reachable()
            meta = doc.get("metadata")
            if not isinstance(meta, dict):
                meta = {}
            page = doc.get("items") or []
            if not isinstance(page, list):
                raise SourceError(f"GET {self.path}: items is not a list")
            items.extend(page)
            rv = str(meta.get("resourceVersion") or rv)
            cont = meta.get("continue")
            if not cont:
                break
            params["continue"] = str(cont)
        if not rv:
            raise SourceError(f"GET {self.path}: list without a resourceVersion")
        await self._replace(items)
        self.resource_version = rv
        self.lists += 1
        if not self.served:
            self.served = True
            self.presence.served(self.resource)
        await self._mark_synced()
        return True

    async def _not_served(self, error: ApiError) -> None:
        """No such resource type (CRDs not installed): as good as an empty list."""
        self.served = False
        self.presence.not_served(self.resource, error, self.backoff.maximum)
        await self._replace([])  # CRDs deleted: their objects went with them
        self.resource_version = ""
        await self._mark_synced()

    async def _mark_synced(self) -> None:
        if not self.synced:
            self.synced = True
            await self.emit(ListDone(self.resource.kind))

    async def _replace(self, items: list[Any]) -> None:
        """Diff a complete list against the store and emit the difference."""
        present: set[ObjectKey] = set()
        for raw in items:
            key = self._key_of(raw)
            if key is None:
                log.warning("%s list: skipped an item without metadata.name", self.resource.kind)
                continue
            present.add(key)
            await self._upsert(key, raw)
        for key in [k for k in self.store if k not in present]:
            await self._delete(key)
        for key in [k for k in self.rejected if k not in present]:
            await self._accepted(key)

    # -- watch ---------------------------------------------------------------

    async def _watch(self) -> bool:
        """One watch request; returns whether any event arrived before it ended."""
        timeout = max(1, int(self.watch_timeout * (1.0 + self._rng.random())))
        params = self._selectors()
        params.update(
            watch="1",
            allowWatchBookmarks="true",
            resourceVersion=self.resource_version,
            timeoutSeconds=str(timeout),
        )
        got = False
        started = time.monotonic()
        try:
            stream = self.client.watch(self.path, params, idle_timeout=timeout + 30.0)
            async with contextlib.aclosing(stream):
                async for item in stream:
                    if not got:
                        got = True
                        self._reachable()
                    if isinstance(item, BadLine):
                        log.warning(
                            "%s watch: skipped line %d: %s",
                            self.resource.kind,
                            item.line,
                            item.reason,
                        )
                        continue
                    await self._on_event(item)
        except ApiError as e:
            self._reachable()
            if e.gone:
                raise _Relist from None
            raise
        self._reachable()
        lasted = time.monotonic() - started
        if lasted < timeout - 1.0:
            # Before its timeoutSeconds: the server ended it (a graceful shutdown,
            # a restart, a load balancer's idle cut). Resume from where it stopped.
            log.info(
                "%s: API server closed the watch after %.1fs; reconnecting",
                self.resource.kind,
                lasted,
            )
        else:
            log.debug("%s watch ended at its timeout; resuming", self.resource.kind)
        return got

    # -- reachability ----------------------------------------------------------

    def _unreachable(self, what: str, error: BaseException, delay: float) -> None:
        """A failure without an answer: one warning per outage, the rest at debug."""
        self._unreachable_tries += 1
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            log.warning(
                "%s %s failed: %s; retrying (at most %.2gs apart) until the API server answers",
                self.resource.kind,
                what,
                _describe(error),
                self.reconnect.maximum * (1 + self.reconnect.jitter),
            )
        else:
            log.debug(
                "%s %s failed: %s; retrying in %.2fs",
                self.resource.kind,
                what,
                _describe(error),
                delay,
            )

    def _reachable(self) -> None:
        """The server answered: an outage (if any) is over."""
        self.reconnect.reset()
        if self._unreachable_since is None:
            return
        log.info(
            "%s: API server answers again after %.1fs (%d failed attempts)",
            self.resource.kind,
            time.monotonic() - self._unreachable_since,
            self._unreachable_tries,
        )
        self._unreachable_since = None
        self._unreachable_tries = 0

    async def _on_event(self, ev: RawEvent) -> None:
        obj = ev.object
        if ev.type == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Relist
            raise ApiError(
                code if isinstance(code, int) else 0,
                self.path,
                str(obj.get("reason") or "ERROR event"),
                str(obj.get("message") or ""),
            )
        rv = _rv_of(obj)
        if ev.type == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        key = self._key_of(obj)
        if key is None:
            log.warning(
                "%s watch: skipped a %s event without metadata.name", self.resource.kind, ev.type
            )
        elif ev.type == "DELETED":
            await self._delete(key)
        else:
            await self._upsert(key, obj)
        if rv:
            self.resource_version = rv

    # -- store -----------------------------------------------------------------

    async def _upsert(self, key: ObjectKey, raw: dict[str, Any]) -> None:
        old = self.store.get(key)
        rv = _rv_of(raw)
        if old is not None and rv and old.meta.resource_version == rv:
            return  # unchanged (a relist, or a watch replaying what the list had)
        try:
            obj = parse_object(raw, kind=self.resource.kind)
        except ModelError as e:
            await self._rejected(key, e, old is not None)
            return
        await self._accepted(key)
        if obj is None:
            # No longer a kind/type netplane uses (e.g. a Secret that stopped being TLS).
            if old is not None:
                await self._delete(key)
            return
        self.store[key] = obj
        await self.emit(WatchEvent.upsert(obj, self.source, added=old is None))

    async def _delete(self, key: ObjectKey) -> None:
        await self._accepted(key)
        old = self.store.pop(key, None)
        if old is not None:
            await self.emit(WatchEvent(EventType.DELETED, key, old, self.source))

    async def _rejected(self, key: ObjectKey, error: ModelError, kept: bool) -> None:
        """Log (once per reason) and report a version that failed validation."""
        why = error.describe()
        if self.rejected.get(key) == why:
            return
        self.rejected[key] = why
        then = "keeping the last good version" if kept else "ignored"
        log.warning("rejected %s: %s", why, then)
        problem = from_model_error(error, key, origin=self.source)
        await self.emit(SourceProblems(self.source, (problem,), str(key)))

    async def _accepted(self, key: ObjectKey) -> None:
        """Clear the report of a key that was rejected: a good version came, or it went."""
        if self.rejected.pop(key, None) is not None:
            await self.emit(SourceProblems(self.source, (), str(key)))

    # -- helpers ---------------------------------------------------------------

    def _selectors(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.resource.field_selector:
            params["fieldSelector"] = self.resource.field_selector
        return params

    def _key_of(self, raw: Any) -> ObjectKey | None:
        md = raw.get("metadata") if isinstance(raw, dict) else None
        if not isinstance(md, dict) or not isinstance(md.get("name"), str) or not md["name"]:
            return None
        ns = ""
        if self.resource.namespaced:
            raw_ns = md.get("namespace")
            ns = raw_ns if isinstance(raw_ns, str) and raw_ns else "default"
        # Copies: the key outlives the decoded page, whose memory it would pin.
        return ObjectKey(self.resource.kind, shared(ns), own(md["name"]))


def _rv_of(raw: dict[str, Any]) -> str:
    md = raw.get("metadata")
    if isinstance(md, dict):
        rv = md.get("resourceVersion")
        if isinstance(rv, str):
            return rv
    return ""


def _status_of(resource: Resource, error: ApiError) -> str:
    return f"{resource.group_version} {resource.plural}: {error.status}"


def _no_answer(e: BaseException) -> bool:
    """Whether ``e`` means the API server gave no answer (vs. answered with an error)."""
    if isinstance(e, ApiError):
        return False
    if isinstance(e, ConnectionLost | asyncio.IncompleteReadError | ssl.SSLEOFError):
        return True
    # Refused, reset, unreachable, name not resolved; a TLS failure (a bad
    # certificate) is an answer of sorts and will not mend by retrying fast.
    return isinstance(e, OSError) and not isinstance(e, ssl.SSLError)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
