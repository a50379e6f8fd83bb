"""``python -m pytest`` works as well as ``pytest``, and no test puts the repository root on sys.path.

From the root, the top-level ``dns/`` folder (``netplane.dns``'s source)
would hide dnspython's ``dns``; tests/conftest.py explains the cut.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dns.message

ROOT = Path(__file__).resolve().parents[2]


def test_dns_is_dnspython_and_the_root_is_off_the_path() -> None:
    assert hasattr(dns.message, "make_query")  # dnspython's, not netplane's dns/
    assert all(Path(p or ".").resolve() != ROOT for p in sys.path)


def test_no_test_file_changes_sys_path() -> None:
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("insert", "append", "extend")
                and ast.unparse(node.func.value) == "sys.path"
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders


def test_python_dash_m_pytest_runs_from_the_root() -> None:
    # The case that puts the root first on sys.path; one quick test is enough to
    # prove that conftest and the imports come through.
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/ops/test_import_path.py::test_dns_is_dnspython_and_the_root_is_off_the_path"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout
