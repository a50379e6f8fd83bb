"""Request counts and durations of the ingress, for /metrics.

The hot path only bumps integers in a dict keyed by (Ingress, Service,
status class, scheme, protocol): every label value comes from objects in the cluster
state, never from a request (no raw Host or path), so the number of series
stays bounded by the objects. :meth:`RequestStats.families` turns them into
Prometheus metric families when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from netplane.metrics import cumulative_buckets

if TYPE_CHECKING:
    from netplane.model import ObjectKey
    from netplane.service_table import ServiceKey

    # (Ingress, matched rule's host, Service, status class, https, HTTP/2)
    _SeriesKey = tuple[ObjectKey | None, str, ServiceKey | None, int, bool, bool]
    # (Ingress, Service, status class, https, host, HTTP/2, the series)
    _Last = tuple[ObjectKey | None, ServiceKey | None, int, bool, str, bool, list[Any]]

# seconds; the shape of ingress-nginx's request-duration buckets
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CLASSES = ("", "1xx", "2xx", "3xx", "4xx", "5xx")


class RequestStats:
    """Counters of finished requests and TLS handshakes (done and failed) of one ingress."""

    def __init__(self) -> None:
        # key -> [per-bucket counts (the last one: above every bucket), sum of seconds]
        self._series: dict[_SeriesKey, list[Any]] = {}
        # The last series used, by the identity of its key's parts: a run of
        # requests to one route skips hashing the object keys.
        self._last: _Last = (None, None, -1, False, "", False, [])
        self.tls_handshakes = 0
        self.tls_handshake_failures = 0
        #: gRPC calls by (Ingress, Service, grpc-status)
        self.grpc: dict[tuple[ObjectKey | None, ServiceKey | None, int], int] = {}

    def record(
        self,
        ingress: ObjectKey | None,
        service: ServiceKey | None,
        status: int,
        https: bool,
        seconds: float,
        host: str = "",
        http2: bool = False,
    ) -> None:
        """One finished exchange (ingress/service None when no rule or upstream was involved;
        ``host`` the matched rule's host, never the request's Host header; ``http2``: the
        client spoke HTTP/2)."""
        cls = status // 100
        series: list[Any] | None
        l_ingress, l_service, l_cls, l_https, l_host, l_http2, series = self._last
        if (
            ingress is not l_ingress
            or service is not l_service
            or cls != l_cls
            or https != l_https
            or host is not l_host
            or http2 is not l_http2
        ):
            key = (ingress, host, service, cls, https, http2)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [[0] * (len(BUCKETS) + 1), 0.0]
            self._last = (ingress, service, cls, https, host, http2, series)
        series[0][bisect_left(BUCKETS, seconds)] += 1
        series[1] += seconds

    def record_grpc(self, ingress: ObjectKey | None, service: ServiceKey | None, code: int) -> None:
        """One gRPC call's status as its client got it (the endpoint's, or the proxy's own)."""
        key = (ingress, service, code)
        self.grpc[key] = self.grpc.get(key, 0) + 1

    def families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        labels = ["ingress", "host", "service", "code", "scheme", "protocol"]
        requests = CounterMetricFamily(
            "netplane_http_requests", "Requests answered by the ingress", labels=labels
        )
        durations = HistogramMetricFamily(
            "netplane_http_request_duration_seconds",
            "From the first byte of a request to the last byte of its response",
            labels=labels,
        )
        for (ingress, host, service, cls, https, http2), (counts, total) in sorted(
            self._series.items(), key=lambda kv: str(kv[0])
        ):
            values = [
                _name(ingress),
                host,
                _name(service),
                _CLASSES[cls] if 0 < cls < len(_CLASSES) else "other",
                "https" if https else "http",
                "HTTP/2" if http2 else "HTTP/1.1",
            ]
            requests.add_metric(values, sum(counts))
            durations.add_metric(values, cumulative_buckets(BUCKETS, counts), total)
        yield requests
        yield durations
        handshakes = CounterMetricFamily(
            "netplane_ingress_tls_handshakes",
            "TLS handshakes on the ingress HTTPS listeners, by result "
            "(failed: refused protocol or cipher, or not TLS at all)",
            labels=["result"],
        )
        grpc = CounterMetricFamily(
            "netplane_grpc_calls",
            "gRPC calls answered by the ingress, by grpc-status (the endpoint's or the proxy's own)",
            labels=["ingress", "service", "grpc_status"],
        )
        for (ingress, service, code), count in sorted(self.grpc.items(), key=str):
            grpc.add_metric([_name(ingress), _name(service), str(code)], count)
        yield grpc
        handshakes.add_metric(["ok"], self.tls_handshakes)
        handshakes.add_metric(["failed"], self.tls_handshake_failures)
        yield handshakes


def route_name(key: Any) -> str:
    """What the access log and /metrics call the object a request was routed by.

    ``namespace/name`` for an Ingress (as ingress-nginx names it), the kind
    first for a Gateway API route (``httproute/namespace/name``), so the two
    never read alike.
    """
    if key.kind == "Ingress":
        return f"{key.namespace}/{key.name}"
    return f"{key.kind.lower()}/{key.namespace}/{key.name}"


def _name(key: Any) -> str:
    """``namespace/name`` of an ObjectKey (see :func:`route_name`) or a (namespace, name)
    ServiceKey; "" for none."""
    if key is None:
        return ""
    if hasattr(key, "namespace"):
        return route_name(key)
    return "/".join(str(part) for part in key)
