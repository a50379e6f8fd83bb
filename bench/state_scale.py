"""Scale bench for the core, through the embedding API (``netplane.Dataplane``).

Builds N ClusterIP Services (two ports each) and N EndpointSlices with M
endpoints each as raw API dicts, shaped like what the API server sends
(conditions, nodeName, zone, targetRef, named ports). They are parsed
(``parse_object``, timed as its own step) and loaded with
``Dataplane.apply`` inside ``Dataplane.batch()``, so the ServiceTable is
built once at the end. Then K single-EndpointSlice changes (one endpoint's
ready condition flipped, or its address moved) go through
``Dataplane.apply`` one by one, each timed from the raw dict to the updated
table, parse included.

Prints one JSON object. Targets on a 2-core machine: initial build < 2 s,
change p99 < 1 ms, RSS < 300 MB.

    python bench/state_scale.py                      # 10k services, 100k endpoints
    python bench/state_scale.py --quick              # tiny, for CI
    python bench/state_scale.py --services 20000 --endpoints-per-slice 5 --changes 5000
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import ipaddress
import json
import platform
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

from netplane import Config, Dataplane
from netplane.model import parse_object

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
ZONES = ("zone-a", "zone-b", "zone-c")


def _ns(i: int) -> str:
    return f"ns-{i % 50}"


def make_service(i: int, ports: int = 2) -> dict[str, Any]:
    """Service ``i`` with ``ports`` of its two ports (http 80, metrics 9090)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"svc-{i}",
            "namespace": _ns(i),
            "uid": f"00000000-0000-0000-0000-{i:012d}",
            "resourceVersion": str(1000 + i),
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": {"app": f"svc-{i}"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": str(SERVICE_CIDR.network_address + 16 + i),
            "clusterIPs": [str(SERVICE_CIDR.network_address + 16 + i)],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "selector": {"app": f"svc-{i}"},
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": "metrics"},
            ][:ports],
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    }


def _pod_ip(i: int, j: int, m: int) -> str:
    n = i * m + j
    return f"10.{128 + (n >> 16) % 128}.{(n >> 8) & 255}.{n & 255}"


def make_slice(i: int, m: int) -> dict[str, Any]:
    eps = []
    for j in range(m):
        eps.append(
            {
                "addresses": [_pod_ip(i, j, m)],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": f"node-{(i + j) % 100}",
                "zone": ZONES[(i + j) % 3],
                "targetRef": {
                    "kind": "Pod",
                    "namespace": _ns(i),
                    "name": f"svc-{i}-pod-{j}",
                    "uid": f"11111111-0000-0000-0000-{i * m + j:012d}",
                },
            }
        )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{i}-abcde",
            "namespace": _ns(i),
            "uid": f"22222222-0000-0000-0000-{i:012d}",
            "resourceVersion": str(100000 + i),
            "generation": 1,
            "labels": {
                "kubernetes.io/service-name": f"svc-{i}",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "metrics", "port": 9100, "protocol": "TCP"},
        ],
    }


def rss_mb() -> dict[str, float]:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    vmrss = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                vmrss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"ru_maxrss": round(maxrss, 1), "vmrss": round(vmrss, 1)}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def run(services: int, per_slice: int, changes: int, seed: int) -> dict[str, Any]:
    return asyncio.run(_run(services, per_slice, changes, seed))


async def _run(services: int, per_slice: int, changes: int, seed: int) -> dict[str, Any]:
    rss_before = rss_mb()
    raw_services = [make_service(i) for i in range(services)]
    raw_slices = [make_slice(i, per_slice) for i in range(services)]
    rss_raw = rss_mb()

    config = Config(mode="node", service_cidrs=(SERVICE_CIDR,), admin=None)
    # GC pauses would be charged to whichever step trips them; the daemon
    # freezes the GC after its initial sync the same way.
    gc.disable()
    async with Dataplane(config, serve=False) as dp:
        changes_seen = dp.subscribe()
        t0 = time.perf_counter()
        objs = [parse_object(r) for r in raw_services]
        objs += [parse_object(r) for r in raw_slices]
        t1 = time.perf_counter()
        # The embedding API's bulk load: state at once, the table once at the end.
        with dp.batch():
            for obj in objs:
                dp.apply(obj)
        t2 = time.perf_counter()
        gc.enable()
        gc.collect()
        gc.freeze()
        del objs
        first = await anext(changes_seen)
        assert len(first.services) == services, len(first.services)
        entries = len(dp.table)
        endpoints = sum(len(p.backends) for e in dp.table for p in e.ports[:1])
        rss_loaded = rss_mb()

        rng = random.Random(seed)
        latencies: list[float] = []
        apply_only: list[float] = []
        rv = 10_000_000
        for _ in range(changes):
            i = rng.randrange(services)
            raw = copy.deepcopy(raw_slices[i])
            rv += 1
            raw["metadata"]["resourceVersion"] = str(rv)
            j = rng.randrange(per_slice)
            endpoint = raw["endpoints"][j]
            if rng.random() < 0.5:
                cond = endpoint["conditions"]
                cond["ready"] = cond["serving"] = not cond["ready"]
            else:
                endpoint["addresses"] = [f"10.250.{rng.randrange(256)}.{rng.randrange(256)}"]
            raw_slices[i] = raw
            s0 = time.perf_counter()
            obj = parse_object(raw)
            s1 = time.perf_counter()
            result = dp.apply(obj)
            s2 = time.perf_counter()
            change = changes_seen.take()
            assert result.changed and len(change.services) == 1, (result, change)
            latencies.append((s2 - s0) * 1000)
            apply_only.append((s2 - s1) * 1000)
        latencies.sort()
        apply_only.sort()
        state_counts = dp.state.counts()

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "counts": {
            "services": services,
            "endpoint_slices": services,
            "endpoints": services * per_slice,
            "table_entries": entries,
            "backends_first_port": endpoints,
            "state": state_counts,
            "changes": changes,
        },
        "initial_build_s": {
            "parse": round(t1 - t0, 3),
            "apply_and_table": round(t2 - t1, 3),
            "total": round(t2 - t0, 3),
        },
        "rss_mb": {
            "before": rss_before,
            "raw_dicts_built": rss_raw,
            "loaded": rss_loaded,
            "end": rss_mb(),
        },
        "change_ms": {
            "p50": round(percentile(latencies, 0.50), 4),
            "p99": round(percentile(latencies, 0.99), 4),
            "max": round(latencies[-1] if latencies else 0.0, 4),
            "mean": round(sum(latencies) / len(latencies), 4) if latencies else 0.0,
        },
        "change_without_parse_ms": {
            "p50": round(percentile(apply_only, 0.50), 4),
            "p99": round(percentile(apply_only, 0.99), 4),
            "max": round(apply_only[-1] if apply_only else 0.0, 4),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints-per-slice", type=int, default=10)
    ap.add_argument("--changes", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
    args = ap.parse_args(argv)
    if args.quick:
        args.services, args.endpoints_per_slice, args.changes = 200, 5, 200
    out = run(args.services, args.endpoints_per_slice, args.changes, args.seed)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
