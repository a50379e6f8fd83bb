"""DNS request counts and durations, for /metrics, read from plain counters at scrape time.

Replies from the wire answer cache are counted per cache entry (one
increment on the hot path, no clock read) and folded in here by query type
and rcode; every other reply (zone answers past the cache, forwarded
names, errors) is counted and timed as it leaves. The type and rcode
labels take names from dnslib's tables, with "other" for any number those
tables lack, so a client cannot mint new label values.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from dnslib import QTYPE, RCODE
from netplane.dns.answer import SERVFAIL

from netplane.metrics import cumulative_buckets

# seconds; CoreDNS's request-duration buckets start at 0.25 ms
BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
           1.024, 2.048, 4.096, 8.192)  # fmt: skip


def qtype_of(query: bytes) -> int:
    """The question's type, found by walking the name's labels; 0 when there is none."""
    i, n = 12, len(query)
    while i < n:
        length = query[i]
        if length == 0:
            return int.from_bytes(query[i + 1 : i + 3], "big") if i + 3 <= n else 0
        if length & 0xC0:
            return 0  # a pointer has no place in a question name
        i += 1 + length
    return 0


class DnsStats:
    """Replies that did not come from the answer cache, by (qtype, rcode), and their durations."""

    def __init__(self) -> None:
        self.replies: dict[tuple[int, int], int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.seconds = 0.0

    def record(self, qtype: int, reply: bytes, seconds: float) -> None:
        key = (qtype, reply[3] & 0x0F if len(reply) > 3 else SERVFAIL)
        self.replies[key] = self.replies.get(key, 0) + 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.seconds += seconds

    def families(
        self, cache_hits: dict[tuple[int, int], int], forward_drops: dict[str, int] | None = None
    ) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        requests = CounterMetricFamily(
            "netplane_dns_requests",
            "DNS replies sent, by query type and rcode (as coredns_dns_responses_total)",
            labels=["type", "rcode"],
        )
        totals: dict[tuple[str, str], int] = {}
        for (qtype, rcode), n in [*self.replies.items(), *cache_hits.items()]:
            key = (_name(QTYPE, qtype), _name(RCODE, rcode))
            totals[key] = totals.get(key, 0) + n
        for key, n in sorted(totals.items()):
            requests.add_metric(list(key), n)
        yield requests
        hits = sum(cache_hits.values())
        yield CounterMetricFamily(
            "netplane_dns_cache_hits", "Replies served from the wire answer cache", value=hits
        )
        yield CounterMetricFamily(
            "netplane_dns_cache_misses",
            "Replies made past the answer cache (answered from the zone, forwarded or refused)",
            value=sum(self.replies.values()),
        )
        durations = HistogramMetricFamily(
            "netplane_dns_request_duration_seconds",
            "Time to answer a query that missed the answer cache (forwarding included)",
        )
        durations.add_metric([], cumulative_buckets(BUCKETS, self.buckets), self.seconds)
        yield durations
        if forward_drops is not None:
            dropped = CounterMetricFamily(
                "netplane_dns_forward_replies_dropped",
                "Upstream replies the forwarder dropped, by reason: id (another query's ID), "
                "question (another question), source (not from the upstream asked), "
                "malformed (unparseable, or not a response)",
                labels=["reason"],
            )
            for reason, n in sorted(forward_drops.items()):
                dropped.add_metric([reason], n)
            yield dropped


def _name(table: Any, value: int) -> str:
    name = table.get(value)
    return name if isinstance(name, str) and not name.isdigit() else "other"
