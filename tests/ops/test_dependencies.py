"""pyproject's runtime dependencies are exactly what the installed code imports.

``pip install .`` installs ``[project].dependencies`` and nothing else, so a
module that netplane/, ingress/ or dns/ imports but pyproject does not
declare works in the development venv (where a test extra brought it) and
fails for a user. The reverse, a declared dependency that nothing imports, is
weight every install carries. netplane/testing/ is left out: it serves tests
and may need the test extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("netplane", "ingress", "dns")  # netplane, netplane.ingress, netplane.dns
TEST_ONLY = ROOT / "netplane" / "testing"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def imported_top_level_modules() -> dict[str, set[str]]:
    """Third-party top-level module -> the files importing it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            if TEST_ONLY in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    root = name.split(".")[0]
                    if root in sys.stdlib_module_names or root == "netplane":
                        continue
                    found.setdefault(root, set()).add(str(path.relative_to(ROOT)))
    return found


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for req in project["dependencies"]:
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
        assert m, req
        names.add(_normalize(m.group(0)))
    return names


def test_every_runtime_import_is_declared_and_nothing_more() -> None:
    dists = importlib.metadata.packages_distributions()
    needed: dict[str, set[str]] = {}
    for module, files in imported_top_level_modules().items():
        assert module in dists, f"{module} (imported by {sorted(files)}) is not installed here"
        for dist in dists[module]:
            needed.setdefault(_normalize(dist), set()).update(files)
    have = declared()
    missing = {d: sorted(f) for d, f in needed.items() if d not in have}
    assert not missing, f"imported but not in [project].dependencies: {missing}"
    assert have <= set(needed), f"declared but never imported: {sorted(have - set(needed))}"


def test_the_scan_sees_the_imports_it_is_meant_to() -> None:
    # Guards the scan itself: a walker that found nothing would pass the test above vacuously.
    found = imported_top_level_modules()
    assert "ingress/certs.py" in found["cryptography"]
    assert "httptools" in found and "dnslib" in found and "yaml" in found
    assert "trustme" not in found  # netplane/testing/ only
