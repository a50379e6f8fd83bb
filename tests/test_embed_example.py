"""examples/embed.py, run as the README tells a user to run it."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_embed_example_prints_the_endpoints_as_they_change():
    r = subprocess.run(
        [sys.executable, "examples/embed.py"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert len(lines) == 5, r.stdout
    assert lines[0] == "changed ['EndpointSlice shop/web-1', 'Service shop/web']"
    m = re.fullmatch(r"shop/web (\S+):80 -> 127\.0\.10\.1:8080 ready", lines[1])
    assert m, lines[1]
    ip = m.group(1)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("127.77.0.0/16")
    assert lines[2] == "changed ['EndpointSlice shop/web-1']"
    # the same cluster IP: the service was not re-allocated by an endpoint change
    assert lines[3] == f"shop/web {ip}:80 -> 127.0.10.1:8080 not ready"
    assert lines[4] == "after delete: None"
