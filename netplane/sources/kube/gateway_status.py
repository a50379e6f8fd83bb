"""Writes the status of Gateway API objects to the API server.

What to write comes from :func:`netplane.ingress.gateway_attach.attach`, the
function the ingress plane serves from, so what is reported is what is
served. Strategy, as :mod:`.status_writer` does for Ingress: one task follows
the dataplane's change stream; after the initial sync, and after each change
to a GatewayClass, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant, Namespace,
Secret or a Service that a route names, it recomputes the world and plans a
write for every object whose status differs from what it should be.

Planning (sans-IO, :class:`GatewayStatusPlanner`) merges what netplane owns
into what the object carries:

- conditions of types netplane does not set (another controller's) stay;
- a route keeps the ``status.parents`` entries of other controllers; ours
  are replaced, and removed from a route that no longer names our Gateways;
- ``lastTransitionTime`` is now when a condition's status changed (or it had
  none), else the one it had; the comparison that decides whether to write
  ignores its value, and the order of list entries;
- a JSON merge patch replaces lists wholesale, so the patch carries the
  whole merged ``conditions``, ``listeners`` and ``parents`` lists.

Each write is a merge patch of ``.../NAME/status`` that carries the
resourceVersion it was planned from: 404 means gone; 409 means our view was
stale, so the object is read again and the write planned afresh from it;
anything else is retried with exponential backoff while later changes still
replan. Status-only changes do not reach the change stream (the model
ignores ``status``), so the echo of our own write plans nothing; until it
arrives, the same write is not planned again from the same resourceVersion.

It runs only where the sources run (one writer per node, not per worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from netplane.errors import ModelError, SourceError
from netplane.ingress.gateway_attach import GatewayWorld, attach
from netplane.ingress.gateway_plane import CertificateCache
from netplane.model import ObjectKey, parse_object
from netplane.model.gateway import CONTROLLER, GATEWAY, GROUP
from netplane.sources.kube.client import ApiError, KubeClient
from netplane.sources.kube.reflector import Backoff
from netplane.sources.kube.resources import RESOURCES
from netplane.sources.kube.status_loop import StatusLoop, status_client_for

log = logging.getLogger("netplane.gateway.status")

#: Writes in flight at once (as for Ingress status).
#: The kinds whose status netplane writes.
STATUS_KINDS = ("GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute")
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
#: Kinds whose change recomputes the statuses (a Service only when a route names it).
WORLD_KINDS = frozenset(
    ("GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "ReferenceGrant", "Namespace", "Secret")
)


def status_path(key: ObjectKey) -> str:
    """``/apis/gateway.networking.k8s.io/v1/[namespaces/NS/]PLURAL/NAME/status``."""
    return f"{RESOURCES[key.kind].path(key.namespace or None)}/{key.name}/status"


def rfc3339(when: datetime) -> str:
    """A Kubernetes ``metav1.Time``: UTC, whole seconds."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- merging (sans-IO) -------------------------------------------------------------


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def merge_conditions(old: Any, ours: Sequence[dict[str, Any]], now: str) -> list[dict[str, Any]]:
    """Our conditions with their lastTransitionTime, then the other types ``old`` had."""
    before = {c.get("type"): c for c in _dicts(old)}
    out = []
    for c in ours:
        prev = before.get(c["type"])
        kept = prev.get("lastTransitionTime") if prev and prev.get("status") == c["status"] else ""
        out.append({**c, "lastTransitionTime": kept or now})
    mine = {c["type"] for c in ours}
    out.extend(c for c in _dicts(old) if c.get("type") not in mine)
    return out


def merge_listeners(old: Any, ours: Sequence[dict[str, Any]], now: str) -> list[dict[str, Any]]:
    """Our listener entries, each one's conditions merged with the entry of that name."""
    before = {li.get("name"): li for li in _dicts(old)}
    return [
        {
            **li,
            "conditions": merge_conditions(
                (before.get(li["name"]) or {}).get("conditions"), li["conditions"], now
            ),
        }
        for li in ours
    ]


def _parent_key(ref: Any, namespace: str) -> tuple[Any, ...]:
    """A parentRef with its defaults filled in, to find the old entry for one of ours."""
    ref = ref if isinstance(ref, dict) else {}
    return (
        ref.get("group", GROUP),
        ref.get("kind", GATEWAY),
        ref.get("namespace") or namespace,
        ref.get("name"),
        ref.get("sectionName") or "",
        ref.get("port"),
    )


def merge_parents(
    old: Any, ours: Sequence[dict[str, Any]], controller: str, namespace: str, now: str
) -> list[dict[str, Any]]:
    """Other controllers' entries as they are, then ours (conditions merged per parentRef)."""
    others = [p for p in _dicts(old) if p.get("controllerName") != controller]
    before = {
        _parent_key(p.get("parentRef"), namespace): p
        for p in _dicts(old)
        if p.get("controllerName") == controller
    }
    merged = []
    for p in ours:
        prev = before.get(_parent_key(p["parentRef"], namespace)) or {}
        merged.append(
            {**p, "conditions": merge_conditions(prev.get("conditions"), p["conditions"], now)}
        )
    return others + merged


def canonical(value: Any) -> Any:
    """``value`` for comparison: lists in no particular order, lastTransitionTime only present or not."""
    if value is None:
        return []
    return _canon(value)


def _canon(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: bool(v) if k == "lastTransitionTime" else _canon(v)
            for k, v in value.items()
            if v is not None
        }
    if isinstance(value, list):
        items = [_canon(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
    return value


@dataclass(frozen=True, slots=True)
class StatusWrite:
    """Set the ``status`` fields in ``fields`` (whole) on ``key``, planned from ``resource_version``."""

    key: ObjectKey
    fields: dict[str, Any]
    resource_version: str

    def merge_patch(self) -> dict[str, Any]:
        """The JSON merge patch; the resourceVersion makes the server refuse it on a newer object."""
        patch: dict[str, Any] = {"status": self.fields}
        if self.resource_version:
            patch["metadata"] = {"resourceVersion": self.resource_version}
        return patch

    def __str__(self) -> str:
        return summary(self.fields)


def summary(fields: dict[str, Any]) -> str:
    """A short account of a status for the log: each condition type and its status."""
    parts = [f"{c.get('type')}={c.get('status')}" for c in _dicts(fields.get("conditions"))]
    for li in _dicts(fields.get("listeners")):
        conds = ",".join(f"{c.get('type')}={c.get('status')}" for c in _dicts(li.get("conditions")))
        parts.append(
            f"listener {li.get('name')}: {conds} attachedRoutes={li.get('attachedRoutes')}"
        )
    for p in _dicts(fields.get("parents")):
        ref = p.get("parentRef") or {}
        conds = ",".join(f"{c.get('type')}={c.get('status')}" for c in _dicts(p.get("conditions")))
        parts.append(
            f"parent {ref.get('namespace')}/{ref.get('name')} ({p.get('controllerName')}): {conds}"
        )
    return "; ".join(parts) or "(empty)"


def desired_fields(
    obj: Any, ours: dict[str, Any] | None, controller: str, now: str, shared: bool = False
) -> dict[str, Any] | None:
    """The status fields ``obj`` should carry, merged with what it has; None: not ours to touch.

    ``shared``: every node binds a Gateway without ``spec.addresses`` on its own
    addresses (node mode, no ``--gateway-address``), so each node adds its own
    to ``status.addresses`` and keeps the others' (as the Ingress writer's
    shared mode does), instead of the nodes overwriting each other.
    """
    current = obj.status if isinstance(obj.status, dict) else {}
    key = obj.key
    if key.kind in ROUTE_KINDS:
        mine = (ours or {}).get("parents") or []
        had_ours = any(
            p.get("controllerName") == controller for p in _dicts(current.get("parents"))
        )
        if not mine and not had_ours:
            return None
        return {
            "parents": merge_parents(current.get("parents"), mine, controller, key.namespace, now)
        }
    if ours is None:
        return None  # a GatewayClass or Gateway that is not ours: its controller reports
    fields: dict[str, Any] = {
        "conditions": merge_conditions(current.get("conditions"), ours["conditions"], now)
    }
    if key.kind == GATEWAY:
        fields["listeners"] = merge_listeners(current.get("listeners"), ours["listeners"], now)
        # Unprogrammed: no address. A null removes the field in a merge patch.
        addresses = ours.get("addresses")
        if shared and addresses and not getattr(obj, "addresses", ()):
            have = [a for a in _dicts(current.get("addresses")) if a.get("value")]
            values = {a["value"] for a in have}
            addresses = have + [a for a in addresses if a["value"] not in values]
        fields["addresses"] = addresses
    return fields


def plan_status(
    obj: Any, ours: dict[str, Any] | None, controller: str, now: str, shared: bool = False
) -> StatusWrite | None:
    """The write ``obj`` needs so that it carries ``ours``, or None when it does already."""
    fields = desired_fields(obj, ours, controller, now, shared)
    if fields is None:
        return None
    current = obj.status if isinstance(obj.status, dict) else {}
    if all(canonical(v) == canonical(current.get(k)) for k, v in fields.items()):
        return None
    return StatusWrite(obj.key, fields, obj.meta.resource_version)


class GatewayStatusPlanner:
    """Decides which objects need a status write; remembers what was written from which version."""

    def __init__(
        self,
        controller: str = CONTROLLER,
        clock: Callable[[], datetime] = _utcnow,
        *,
        shared: bool = False,
    ) -> None:
        self.controller = controller
        self.clock = clock
        self.shared = shared  # see desired_fields
        self._in_flight: dict[ObjectKey, tuple[str, Any]] = {}

    def plan(self, obj: Any, ours: dict[str, Any] | None) -> StatusWrite | None:
        write = plan_status(obj, ours, self.controller, rfc3339(self.clock()), self.shared)
        if write is None:
            self._in_flight.pop(obj.key, None)
            return None
        if self._in_flight.get(obj.key) == (write.resource_version, canonical(write.fields)):
            return None  # written from this version already; its echo is on the way
        return write

    def plan_all(self, objects: Iterable[Any], world: GatewayWorld) -> list[StatusWrite]:
        seen: set[ObjectKey] = set()
        out = []
        for obj in objects:
            seen.add(obj.key)
            write = self.plan(obj, world.statuses.get(obj.key))
            if write is not None:
                out.append(write)
        for key in set(self._in_flight) - seen:
            del self._in_flight[key]
        return sorted(out, key=lambda w: w.key)

    def written(self, write: StatusWrite) -> None:
        self._in_flight[write.key] = (write.resource_version, canonical(write.fields))

    def gone(self, key: ObjectKey) -> None:
        self._in_flight.pop(key, None)


# -- writing -------------------------------------------------------------------------


class GatewayStatusWriter(StatusLoop):
    """Keeps the status of the Gateway API objects we own equal to what we serve."""

    METRIC = "gateway_status"
    WHAT = "Gateway API"

    def __init__(
        self,
        dp: Any,
        client: KubeClient,
        *,
        controller: str = CONTROLLER,
        default_addresses: tuple[str, ...] = ("127.0.0.1",),
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = _utcnow,
        shared_addresses: bool = False,
    ) -> None:
        self.dp = dp
        self.client = client
        self.controller = controller
        self.default_addresses = tuple(default_addresses)
        self._certificates = CertificateCache()
        self.planner = GatewayStatusPlanner(controller, clock, shared=shared_addresses)
        self.backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self.world = GatewayWorld()
        self.writes = 0
        self.failures = 0
        self.plans = 0  # times the statuses were recomputed
        self._pending: dict[ObjectKey, StatusWrite] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-status")
        self._task.add_done_callback(_log_crash)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.client.aclose()

    # -- planning ------------------------------------------------------------

    def _objects(self) -> Iterator[Any]:
        for kind in STATUS_KINDS:
            yield from self.dp.state.objects(kind)

    def _plan_all(self) -> None:
        # The same certificate check the plane makes, so that a Secret whose pair
        # cannot serve is InvalidCertificateRef here too.
        self.world = attach(
            self.dp.state,
            controller=self.controller,
            default_addresses=self.default_addresses,
            check_certificate=self._certificates.check,
        )
        self._certificates.keep_only(
            {secret.key for served in self.world.listeners() for secret in served.certificates}
        )
        self._pending = {w.key: w for w in self.planner.plan_all(self._objects(), self.world)}
        self.plans += 1

    def _relevant(self, keys: frozenset[ObjectKey]) -> bool:
        return any(
            k.kind in WORLD_KINDS
            or (k.kind == "Service" and (k.namespace, k.name) in self.world.services)
            for k in keys
        )

    # -- writing -------------------------------------------------------------

    def _on_change(self, keys: frozenset[ObjectKey]) -> None:
        if self._relevant(keys):
            self._plan_all()

    async def _write(self, write: StatusWrite, *, reread: bool = True) -> bool:
        """One PATCH; True when there is nothing left to do for this write."""
        key = write.key
        try:
            await self.client.patch_json(status_path(key), write.merge_patch())
        except ApiError as e:
            if e.not_found:
                log.debug("%s: gone before its status was written", key)
                self.planner.gone(key)
                return True
            if e.conflict and reread:
                return await self._reread(write)
            self.failures += 1
            log.warning("%s: status write failed, will retry: %s", key, e)
            return False
        except (SourceError, OSError) as e:
            self.failures += 1
            log.warning("%s: status write failed, will retry: %s", key, e)
            return False
        self.writes += 1
        self.planner.written(write)
        log.info("%s: status set: %s", key, write)
        return True

    async def _reread(self, write: StatusWrite) -> bool:
        """After a 409: plan again from the object as the server has it now."""
        key = write.key
        try:
            raw = await self.client.get_json(status_path(key).removesuffix("/status"))
            obj = parse_object(raw, kind=key.kind)
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
        if obj is None or obj.key != key:
            return True
        fresh = self.planner.plan(obj, self.world.statuses.get(key))
        if fresh is None:
            return True
        return await self._write(fresh, reread=False)

    def debug_state(self) -> dict[str, Any]:
        return {
            "owned": len(self.world.statuses),
            "pending": [str(k) for k in sorted(self._pending)],
            "problems": list(self.world.problems),
            "writes": self.writes,
            "failures": self.failures,
        }


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Gateway status writer stopped", exc_info=task.exception())


def gateway_status_for(cfg: Any, dp: Any, sources: Sequence[Any]) -> GatewayStatusWriter | None:
    """The writer a daemon config asks for: the API source, with the ingress plane (which serves Gateways)."""
    client = status_client_for(cfg, sources)
    if client is None:
        return None
    from netplane.ingress.plane import IngressSettings

    writer = GatewayStatusWriter(
        dp,
        client,
        controller=IngressSettings().gateway_controller,  # the ingress plane's own
        default_addresses=cfg.effective_gateway_addresses,
        # Node mode without --gateway-address: each node serves Gateways on its own IPs.
        shared_addresses=cfg.mode == "node" and not cfg.gateway_addresses,
    )
    dp.planes["gateway-status"] = writer
    return writer
