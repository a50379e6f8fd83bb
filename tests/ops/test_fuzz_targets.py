"""Every fuzz target in bench/fuzz/ over its seed corpus, without atheris: a fast regression test.

Each target's ``TestOneInput`` raises when its contract breaks (see the
target's docstring), so a seed that starts failing names the parser that
changed. The fuzzer itself runs in ``python -m bench --only fuzz``.
"""

from __future__ import annotations

import importlib

import pytest

from bench.fuzz import CORPUS, TARGETS


def test_every_target_module_is_listed():
    modules = {p.stem for p in CORPUS.parent.glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_the_target_passes_its_seed_corpus(target):
    module = importlib.import_module(f"bench.fuzz.{target}")
    assert module.__doc__ and "Contract" in module.__doc__
    seeds = sorted(p for p in (CORPUS / target).iterdir() if p.is_file())
    assert len(seeds) >= 5, f"{target}: a handful of seeds expected"
    for seed in seeds:
        module.TestOneInput(seed.read_bytes())
    module.TestOneInput(b"")


def test_the_scenario_reads_libfuzzer_output():
    from bench.scenarios.fuzz import parse_log

    assert parse_log(b"#2\tINITED cov: 10 ft: 3\n#4096\tpulse  cov: 99 ft: 1\n") == (4096, 99)
    assert parse_log(b"#8192\tpulse cov: 5\nDone\n#246082\tDONE   cov: 410 ft: 490\n") == (
        246082,
        410,
    )
    assert parse_log(b"nothing") == (0, 0)
