"""Coverage-guided fuzz targets (atheris) for every parser that takes outside input.

Each module here has a ``TestOneInput(data: bytes)`` that raises only when a
contract breaks (an exception the code under test should never let out, or a
broken invariant the module's docstring names), and runs on its own::

    python -m bench.fuzz.dns_query                     # fuzz until Ctrl-C (seed corpus copied)
    python -m bench.fuzz.dns_query -runs=100000        # any libFuzzer flag
    python -m bench.fuzz.dns_query -max_total_time=30 /tmp/corpus bench/fuzz/corpus/dns_query

``python -m bench --only fuzz`` runs every target (see bench/scenarios/fuzz.py);
tests/ops/test_fuzz_targets.py replays every seed corpus without atheris.
Seed inputs are in ``corpus/<target>/``.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"

#: Every target, by module name (``bench.fuzz.<name>``); its seeds are in ``CORPUS / name``.
TARGETS: tuple[str, ...] = (
    "ingress_request",
    "ingress_response",
    "h2_frames",
    "dns_query",
    "dns_reply",
    "kube_watch",
    "manifest",
    "kubeconfig",
    "proxy_protocol",
)
