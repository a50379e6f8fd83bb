"""``netplane check``: every problem in a set of manifests, one line each.

Strategy: do what the manifest source would do at start-up, without the
polling. Each file is parsed (:func:`parse_manifest`), so syntax errors and
invalid objects come out with their file and line; the valid objects are
merged across files (first path wins, the others are problems) and loaded
in file order into a :class:`ClusterState` with the same allocation rules as
the daemon, so a Service that the daemon would reject (clusterIP outside the
service CIDR, a clusterIP or nodePort already held) is a problem too, pointed
at the line of the offending field.

Missing clusterIPs and nodePorts are allocated as the daemon does when a
service CIDR is given; without one there is nothing to allocate from and
only explicit ones are checked (the daemon always has a CIDR).

Ingresses are then read as the ingress would read them
(:class:`netplane.ingress.problems.IngressChecker`): one whose
``spec.ingressClassName`` names an IngressClass that is not there, a backend
naming a Service or port that is not there, a ``spec.tls`` Secret that is
missing or whose certificate does not match its key.

Gateway API objects are then attached as the ingress plane attaches them
(:func:`netplane.ingress.gateway_attach.attach`), and every condition of the
status netplane would write that is not met is a problem, at the line where
the object starts: a Gateway, GatewayClass or listener condition
``Accepted``, ``Programmed`` or ``ResolvedRefs`` that is False (or
``Conflicted`` that is True), a route's ``Accepted`` or ``ResolvedRefs``
for one of our Gateways that is False. A Gateway naming a GatewayClass that
is not there, and a route naming a Gateway that is not there, are problems
too: in manifest mode nothing else can supply them.

Every problem found after parsing is about an object, and points at the line
of the field at fault in its file (:func:`netplane.problems.place`). The
daemon reports the same problems, found the same way, in its log,
``/debug/state`` and metrics (:mod:`netplane.problems`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from netplane.allocations import DEFAULT_NODE_PORT_RANGE, Allocations, IPNetwork
from netplane.errors import ConfigError
from netplane.events import WatchEvent
from netplane.model import ObjectKey
from netplane.problems import Problem, from_model_error, place
from netplane.sources.manifest_parse import (
    UNREADABLE,
    ManifestObject,
    locate_objects,
    parse_manifest,
    resolve_duplicates,
)
from netplane.sources.manifest_parse import Problem as FileProblem
from netplane.sources.manifests import find_manifest_files
from netplane.state import ClusterState

ORIGIN = "check"


def _networks(cidrs: Sequence[IPNetwork | str]) -> list[IPNetwork]:
    out = []
    for c in cidrs:
        if isinstance(c, str):
            try:
                c = ipaddress.ip_network(c, strict=True)
            except ValueError as e:
                raise ConfigError(f"--service-cidr: {c!r} is not a CIDR ({e})") from None
        out.append(c)
    return out


def check_paths(
    paths: Sequence[str],
    *,
    service_cidrs: Sequence[IPNetwork | str] = (),
    node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
) -> list[str]:
    """One line per problem in the manifests under ``paths``; [] when all is well."""
    return [
        str(p)
        for p in check_problems(paths, service_cidrs=service_cidrs, node_port_range=node_port_range)
    ]


def check_problems(
    paths: Sequence[str],
    *,
    service_cidrs: Sequence[IPNetwork | str] = (),
    node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
) -> list[Problem]:
    """Every problem in the manifests under ``paths``, in file and line order."""
    files, missing = find_manifest_files(paths)
    problems: list[Problem] = [p.as_problem(ORIGIN) for p in missing]
    texts: dict[str, bytes] = {}
    per_file: list[tuple[str, list[ManifestObject]]] = []
    for path in files:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as e:
            unread = FileProblem(path, 0, f"cannot read: {e.strerror or e}", code=UNREADABLE)
            problems.append(unread.as_problem(ORIGIN))
            continue
        result = parse_manifest(data, path)
        problems.extend(p.as_problem(ORIGIN) for p in result.problems)
        if result.complete:  # the daemon starts with nothing from a broken file
            texts[path] = data
            per_file.append((path, result.objects))
    winners, duplicates = resolve_duplicates(per_file)
    problems.extend(p.as_problem(ORIGIN) for p in duplicates)

    cidrs = _networks(service_cidrs)
    lo, hi = node_port_range  # a list (from a config file) does as well as a tuple
    state = ClusterState(
        Allocations(cidrs, (lo, hi), allocate_missing=bool(cidrs)),
        log_rejections=False,
    )
    results = [
        (mo, state.apply(WatchEvent.upsert(mo.obj, "check", added=True)).error)
        for mo in winners.values()
    ]
    found: list[Problem] = [
        from_model_error(err, mo.key, "rejected", ORIGIN) for mo, err in results if err is not None
    ]
    found.extend(ingress_problems(state))
    found.extend(gateway_problems(state))
    problems.extend(place(found, lambda wanted: locate_objects(winners, texts, wanted)))

    order = {path: i for i, path in enumerate(files)}
    problems.sort(key=lambda p: (order.get(p.path, -1), p.line))
    return problems


def ingress_problems(
    state: ClusterState,
    *,
    ingress_class: str = "netplane",
    controller: str = "netplane.io/ingress",
    default_secret: tuple[str, str] | None = None,
) -> list[Problem]:
    """What the ingress would not serve as written (see :mod:`netplane.ingress.problems`)."""
    from netplane.ingress.problems import IngressChecker

    checker = IngressChecker(
        ingress_class=ingress_class, controller=controller, default_secret=default_secret
    )
    return checker.check(state).problems


# -- Gateway API ---------------------------------------------------------------------

#: conditions that are a problem when False; Conflicted is one when True
_POSITIVE = {
    "Accepted": "not accepted",
    "Programmed": "not programmed",
    "ResolvedRefs": "refs not resolved",
}
_ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
GATEWAY_ORIGIN = "gateway"


def _false(conditions: Iterable[dict[str, Any]]) -> Iterable[tuple[str, dict[str, Any]]]:
    """(what is wrong, condition) for each condition that is not met."""
    for c in conditions:
        if c["type"] in _POSITIVE and c["status"] == "False":
            yield _POSITIVE[c["type"]], c
        elif c["type"] == "Conflicted" and c["status"] == "True":
            yield "conflicted", c


def gateway_problems(state: ClusterState, certificates: Any = None) -> list[Problem]:
    """The unmet conditions of the Gateway API status netplane would write, one problem each.

    A problem about one listener or parentRef points (``at``) at that field,
    for :func:`netplane.problems.place` to find its line. ``certificates``: a
    :class:`~netplane.ingress.gateway_plane.CertificateCache` kept between
    calls (a new one by default).
    """
    from netplane.ingress.gateway_attach import attach
    from netplane.ingress.gateway_plane import CertificateCache
    from netplane.model.gateway import CONTROLLER, GATEWAY, GROUP, GRPCRoute, HTTPRoute

    certificates = certificates or CertificateCache()
    world = attach(state, controller=CONTROLLER, check_certificate=certificates.check)
    out: list[Problem] = []
    told: set[ObjectKey] = set()

    def say(key: ObjectKey, text: str, field: str = "") -> None:
        obj = state.get(key)
        hosts = tuple(getattr(obj, "hostnames", ()))
        out.append(Problem("gateway", text, key, at=field, origin=GATEWAY_ORIGIN, hosts=hosts))
        told.add(key)

    def describe(what: str, c: dict[str, Any]) -> str:
        return f"{what}: {c['reason']}: {c['message']}"

    classes = {gc.meta.name: gc for gc in state.objects("GatewayClass")}
    gateways = {gw.key: gw for gw in state.objects("Gateway")}
    for gw in gateways.values():
        if gw.class_name not in classes:
            say(
                gw.key,
                f"spec.gatewayClassName: GatewayClass {gw.class_name} does not exist",
                "spec.gatewayClassName",
            )
    routes: list[HTTPRoute | GRPCRoute] = [*state.objects("HTTPRoute")]
    routes += state.objects("GRPCRoute")
    for route in routes:
        for i, ref in enumerate(route.parents):
            pkey = ObjectKey(GATEWAY, ref.namespace, ref.name)
            if ref.group == GROUP and ref.kind == GATEWAY and pkey not in gateways:
                field = f"spec.parentRefs[{i}]"
                say(route.key, f"{field}: {pkey} does not exist", field)

    for key in sorted(world.statuses):
        status = world.statuses[key]
        if key.kind in _ROUTE_KINDS:
            owner = state.get(key)
            for parent in status["parents"]:
                ref = parent["parentRef"]
                parent_key = ObjectKey(ref["kind"], ref["namespace"], ref["name"])
                section = f" listener {ref['sectionName']}" if ref.get("sectionName") else ""
                for what, c in _false(parent["conditions"]):
                    whom = (
                        f"by {parent_key}{section}"
                        if c["type"] == "Accepted"
                        else f"(parent {parent_key}{section})"
                    )
                    at = _parent_field(owner, ref) if c["type"] == "Accepted" else ""
                    say(key, describe(f"{what} {whom}", c), at)
            continue
        for what, c in _false(status["conditions"]):
            say(key, describe(what, c))
        names = [li.name for li in getattr(state.get(key), "listeners", ())]
        for li in status.get("listeners", ()):
            at = f"spec.listeners[{names.index(li['name'])}]" if li["name"] in names else ""
            for what, c in _false(li["conditions"]):
                say(key, describe(f"listener {li['name']}: {what}", c), at)

    # What attach noticed beyond the conditions (today every line is about an
    # object whose conditions are already reported; keep any other).
    named: dict[str, ObjectKey] | None = None
    for text in world.problems:
        subject, _, rest = text.partition(": ")
        if any(str(k) == subject for k in told):
            continue
        if named is None:
            named = {str(o.key): o.key for o in state}
        found = named.get(subject)
        if found is not None:
            say(found, rest)
        else:
            out.append(Problem("gateway", text, origin=GATEWAY_ORIGIN))
    return out


def _parent_field(route: Any, ref: dict[str, Any]) -> str:
    """``spec.parentRefs[i]`` of the parentRef a status entry is about ("" if not found)."""
    for i, p in enumerate(getattr(route, "parents", ())):
        if (p.namespace, p.name, p.section_name or "", p.port) == (
            ref["namespace"],
            ref["name"],
            ref.get("sectionName") or "",
            ref.get("port"),
        ):
            return f"spec.parentRefs[{i}]"
    return ""
