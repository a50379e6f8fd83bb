"""Prometheus metrics for the admin server's ``/metrics``, with prometheus-client.

Two kinds of figures, kept two ways:

- Low-rate events (a table update, an object rejected) are observed as
  they happen into prometheus-client metrics of this Dataplane's own
  registry; a registry per Dataplane lets embedders and tests run several.
- Hot-path counts (connections, datagrams, queries, requests) stay plain
  integers in the planes, and :class:`Metrics` reads them when scraped: a
  plane with a ``metrics()`` method returning metric families is asked at
  every scrape, so serving traffic costs no metric call per packet.

Names follow the components netplane replaces where one exists
(kube-proxy's ``sync_proxy_rules_duration_seconds`` and
``network_programming_duration_seconds``, CoreDNS's
``dns_requests_total``), under the ``netplane_`` prefix. No label takes a
value that a client controls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

# kube-proxy's buckets for its sync and programming histograms, in seconds
# (1 ms to 4 min): the same buckets make dashboards carry over.
SYNC_BUCKETS = (
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1.024, 2.048, 4.096, 8.192, 16.384,
)  # fmt: skip
PROGRAMMING_BUCKETS = (
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1, 2, 4, 8, 16, 32, 64, 128, 256,
)  # fmt: skip

# The text format every Prometheus server reads (our names are all classic
# ones, so generate_latest's output is that format).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FamilySources:
    """A collector that asks each source of families for its figures at scrape time."""

    def __init__(self, sources: list[Callable[[], Iterable[Metric]]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source()


class Metrics:
    """One Dataplane's metrics: its registry, its event metrics and its scrape-time sources."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._sources: list[Callable[[], Iterable[Metric]]] = []
        self.registry.register(FamilySources(self._sources))
        self.sync_duration = Histogram(
            "netplane_sync_proxy_rules_duration_seconds",
            "Time to apply one batch of state changes to the derived tables",
            buckets=SYNC_BUCKETS,
            registry=self.registry,
        )
        self.programming_duration = Histogram(
            "netplane_network_programming_duration_seconds",
            "From an EndpointSlice's last-change-trigger-time to netplane serving it",
            buckets=PROGRAMMING_BUCKETS,
            registry=self.registry,
        )
        self.add_source(OVERLOAD.families)
        self.rejected = Counter(
            "netplane_rejected_objects",
            "Objects refused (a field error, or the cluster-wide checks), by kind",
            ["kind"],
            registry=self.registry,
        )

    def add_source(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Read ``source()``'s metric families at every scrape."""
        self._sources.append(source)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


def cumulative_buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    """Prometheus histogram buckets from per-bucket counts (``counts[-1]``: above every bound).

    The planes count each observation once, in its own bucket, on the hot
    path; the running totals Prometheus wants are made here, at scrape time.
    """
    out, running = [], 0
    for bound, n in zip(bounds, counts, strict=False):
        running += n
        out.append((repr(bound), running))
    out.append(("+Inf", running + counts[-1]))
    return out


class Overload:
    """Process-wide counts of connections lost to overload: failed accepts and refusals.

    Descriptors and memory are the process's, not one plane's, so the counts
    are kept once per process (:data:`OVERLOAD`) and every Dataplane's
    ``/metrics`` shows them. Label values are netplane's own: a listener kind
    (``ingress-http``, ``dns-tcp``, ``l4-tcp`` ...), an errno name, a reason.
    """

    def __init__(self) -> None:
        #: (listener, errno name) -> accepts that failed
        self.accept_errors: dict[tuple[str, str], int] = {}
        #: (plane, reason) -> new connections closed at once by a limit
        self.refused: dict[tuple[str, str], int] = {}

    def accept_failed(self, listener: str, reason: str) -> None:
        key = (listener, reason)
        self.accept_errors[key] = self.accept_errors.get(key, 0) + 1

    def refuse(self, plane: str, reason: str) -> None:
        key = (plane, reason)
        self.refused[key] = self.refused.get(key, 0) + 1

    def families(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        accept = CounterMetricFamily(
            "netplane_accept_errors",
            "Accepts that failed for want of descriptors or memory (accepting pauses, then "
            "resumes by itself), by listener and errno",
            labels=["listener", "reason"],
        )
        for (listener, reason), n in sorted(self.accept_errors.items()):
            accept.add_metric([listener, reason], n)
        yield accept
        for plane, help_ in (
            ("ingress", "New ingress connections closed at once by a limit, by reason"),
            ("dns_tcp", "New DNS-over-TCP connections closed at once by a limit, by reason"),
        ):
            fam = CounterMetricFamily(
                f"netplane_{plane}_connections_refused", help_, labels=["reason"]
            )
            for (p, reason), n in sorted(self.refused.items()):
                if p == plane:
                    fam.add_metric([reason], n)
            yield fam


#: The process's :class:`Overload` counts.
OVERLOAD = Overload()
