"""No production module imports ``netplane.testing``.

``netplane/testing/`` is for tests and embedders' tests; it may need the test
extras (trustme, h11's fake API server), which a plain ``pip install`` does
not bring. A fresh interpreter imports every module of ``netplane``,
``netplane.ingress`` and ``netplane.dns`` except ``netplane.testing`` itself
and ``__main__`` (which would run the CLI), then says which of them pulled
``netplane.testing`` into ``sys.modules``. Imports inside functions only run
when called, so each module's source is also read for an import statement
naming ``netplane.testing`` anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import ast, importlib, importlib.util, json, pkgutil, sys

    SKIP = ("netplane.testing", "netplane.__main__", "netplane.ingress.__main__",
            "netplane.dns.__main__")

    def modules(package):
        yield package
        mod = importlib.import_module(package)
        for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):
            name = f"{package}.{info.name}"
            if name in SKIP:
                continue
            if info.ispkg:
                yield from modules(name)
            else:
                yield name

    def static(mod):
        # file:line of every import statement in mod that names netplane.testing
        with open(mod.__file__) as fh:
            tree = ast.parse(fh.read())
        package = mod.__name__ if hasattr(mod, "__path__") else mod.__name__.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            if any(n == "netplane.testing" or n.startswith("netplane.testing.") for n in names):
                yield f"{mod.__file__}:{node.lineno}"

    imported, culprits, statements = [], [], []
    for package in ("netplane", "netplane.ingress", "netplane.dns"):
        for name in modules(package):
            before = "netplane.testing" in sys.modules
            mod = importlib.import_module(name)
            imported.append(name)
            statements.extend(static(mod))
            if not before and "netplane.testing" in sys.modules:
                culprits.append(name)
                for key in [k for k in sys.modules if k.startswith("netplane.testing")]:
                    del sys.modules[key]  # so that the next culprit shows too
    print(json.dumps({"imported": imported, "culprits": culprits, "statements": statements}))
""")


def test_no_production_module_imports_netplane_testing():
    r = subprocess.run(
        [sys.executable, "-P", "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    # the walk reached the three packages and their subpackages
    for name in (
        "netplane.daemon",
        "netplane.l4.proxy",
        "netplane.ingress.plane",
        "netplane.dns.plane",
    ):
        assert name in result["imported"]
    assert not any(n.startswith("netplane.testing") for n in result["imported"])
    assert result["culprits"] == []
    assert result["statements"] == []
