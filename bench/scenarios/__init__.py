"""The registered scenarios, in the order a full run executes them.

To add one: write a module here with a :class:`bench.harness.Scenario`
subclass and append the class to ``SCENARIOS`` (see bench/README.md).
"""

from __future__ import annotations

from bench.harness import Scenario
from bench.scenarios.dns import ClusterDns
from bench.scenarios.explain import ExplainBench
from bench.scenarios.fuzz import Fuzz
from bench.scenarios.gateway import GatewayBench
from bench.scenarios.grpc import GrpcBench
from bench.scenarios.ingress import IngressBench
from bench.scenarios.kernel import KernelBench
from bench.scenarios.l4 import L4Proxy
from bench.scenarios.node_sockets import NodeSockets
from bench.scenarios.overload import Overload
from bench.scenarios.programming import Programming
from bench.scenarios.scale import ScaleSync
from bench.scenarios.soak import Soak
from bench.scenarios.startup import Startup
from bench.scenarios.table_update import TableUpdate
from bench.scenarios.workers import WorkerScaling

SCENARIOS: list[type[Scenario]] = [
    Startup,
    ScaleSync,
    TableUpdate,
    Programming,
    L4Proxy,
    NodeSockets,
    KernelBench,
    IngressBench,
    GatewayBench,
    GrpcBench,
    ClusterDns,
    ExplainBench,
    WorkerScaling,
    Overload,
    Soak,
    Fuzz,
]


def by_name() -> dict[str, type[Scenario]]:
    return {cls.name: cls for cls in SCENARIOS}
