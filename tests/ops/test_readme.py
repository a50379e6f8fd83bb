"""The README's examples stay true: its commands are the ones CI runs, its config file
loads, its embedding snippet names real API."""

from __future__ import annotations

import re
from pathlib import Path

import netplane
from netplane import config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def _try_it_commands() -> list[str]:
    """The two ```sh blocks of "Try it" that are one command each: install-and-demo, and test."""
    section = README.split("## Try it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [b.strip() for b in blocks if len(b.strip().splitlines()) == 1]


def _ci_steps() -> list[str]:
    return [line for line in CI.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_test_command_is_what_ci_runs() -> None:
    demo, test = _try_it_commands()
    assert "pytest" in test and "pytest" not in demo
    ci = [line.replace("$SUDO ", "") for line in _ci_steps() if "pytest" in line]
    assert ci == [test]


def test_the_readme_commands_install_into_a_venv_of_their_own() -> None:
    # PEP 668: a stock Debian or Ubuntu Python refuses a system-wide pip install.
    for command in _try_it_commands():
        steps = [step.strip() for step in command.split("&&")]
        venv = steps.index("python3 -m venv .venv")
        pips = [i for i, step in enumerate(steps) if re.search(r"\bpip\b", step)]
        assert pips and all(i > venv for i in pips), command
        assert all(steps[i].startswith(".venv/bin/pip install ") for i in pips), command
        assert "--system-site-packages" not in command


def test_ci_runs_the_first_command_as_a_new_user_does() -> None:
    """A clean venv, the checkout installed without extras, then the demo with --probe."""
    demo, _ = _try_it_commands()
    assert demo == "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/netplane demo"
    steps = _ci_steps()
    venv = next(i for i, s in enumerate(steps) if re.match(r'python3 -m venv "\$clean/venv"$', s))
    install = next(i for i, s in enumerate(steps) if '"$clean/venv/bin/pip" install' in s)
    probe = next(i for i, s in enumerate(steps) if 'netplane" demo --probe' in s)
    assert venv < install < probe
    assert "[" not in steps[install]  # no extras
    assert "timeout " in steps[probe] and '"$clean/venv/bin/netplane" demo --probe' in steps[probe]


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

    commands = _parser()._subparsers._group_actions[0].choices  # argparse has no public way
    known = {
        opt
        for name in ("run", "demo")
        for action in commands[name]._actions
        for opt in action.option_strings
    }
    synopsis = README.split("## Command line", 1)[1].split("```", 2)[1]
    documented = set(re.findall(r"(--[a-z0-9-]+|-f)\b", synopsis))
    assert documented <= known, documented - known


def test_embedding_names_exist() -> None:
    dp = netplane.Dataplane(netplane.Config(mode="local", admin=None))
    for name in ("apply", "delete", "subscribe", "batch", "state", "table"):
        assert hasattr(dp, name), name
