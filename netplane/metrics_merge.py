"""One /metrics for many worker processes: their expositions summed, series by series.

Each worker renders its planes' families in the text format; the owner
parses them with prometheus-client's parser and adds up samples that share a
name and labels. Every figure the planes export is a counter, a gauge of
things held now (active connections, flows), or a histogram's buckets, sum
and count, so the sum over workers is the node's figure. ``_created``
timestamps are dropped: a sum of them means nothing. A figure that every
worker holds alike (how many listeners each binds) is named in
``same_everywhere`` and shown once, as its largest value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


def merge(
    texts: Iterable[str], *, same_everywhere: frozenset[str] = frozenset()
) -> Iterator[Metric]:
    """Families with each series summed over ``texts`` (first seen order kept)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if family.name in same_everywhere:
                    series[key] = max(series.get(key, sample.value), sample.value)
                else:
                    series[key] = series.get(key, 0.0) + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        yield family
