"""The README's examples stay true: its config file loads, its embedding snippet names real API."""

from __future__ import annotations

import re
from pathlib import Path

import netplane
from netplane import config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_config_file_example_loads(tmp_path: Path) -> None:
    section = README.split("## Config file", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    path = tmp_path / "netplane.yaml"
    path.write_text(example.group(1))
    cfg = config.load(str(path), {})
    assert cfg.lb_policy == "round-robin"
    assert cfg.ingress_https is None
    assert [str(n) for n in cfg.service_cidrs] == ["127.77.0.0/16"]
    assert cfg.files == (str(tmp_path / "manifests"),)


def test_every_documented_flag_exists() -> None:
    from netplane.cli import _parser

    run = _parser()._subparsers._group_actions[0].choices["run"]  # argparse has no public way
    known = {opt for action in run._actions for opt in action.option_strings}
    synopsis = README.split("## Command line", 1)[1].split("```", 2)[1]
    documented = set(re.findall(r"(--[a-z-]+|-f)\b", synopsis))
    assert documented <= known, documented - known


def test_embedding_names_exist() -> None:
    dp = netplane.Dataplane(netplane.Config(mode="local", admin=None))
    for name in ("apply", "delete", "subscribe", "batch", "state", "table"):
        assert hasattr(dp, name), name
