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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from netplane.allocations import DEFAULT_NODE_PORT_RANGE, Allocations, IPNetwork
from netplane.errors import ConfigError
from netplane.events import WatchEvent
from netplane.sources.manifest_parse import (
    ManifestObject,
    Problem,
    field_line,
    parse_manifest,
    resolve_duplicates,
)
from netplane.sources.manifests import find_manifest_files
from netplane.state import ClusterState


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
    files, missing = find_manifest_files(paths)
    problems: list[Problem] = list(missing)
    texts: dict[str, bytes] = {}
    per_file: list[tuple[str, list[ManifestObject]]] = []
    for path in files:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as e:
            problems.append(Problem(path, 0, f"cannot read: {e.strerror or e}"))
            continue
        result = parse_manifest(data, path)
        problems.extend(result.problems)
        if result.complete:  # the daemon starts with nothing from a broken file
            texts[path] = data
            per_file.append((path, result.objects))
    winners, duplicates = resolve_duplicates(per_file)
    problems.extend(duplicates)

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
    for mo, err in results:
        if err is not None:
            line = field_line(texts[mo.path], mo.path, mo, err.field)
            problems.append(Problem(mo.path, line, err.reason, err.ref, err.field, key=mo.key))

    order = {path: i for i, path in enumerate(files)}
    problems.sort(key=lambda p: (order.get(p.path, -1), p.line))
    return [str(p) for p in problems]
