"""Facts about the machine and software a run measured: cores, CPU, kernel, memory, versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.harness import ROOT, allowed_cpus

LIBRARIES = ("uvloop", "httptools", "h11", "dnslib", "pyroute2", "PyYAML", "trustme", "matplotlib")

# tool -> the command that prints its version (some print it on stderr, some only in help).
TOOLS: dict[str, list[str]] = {
    "nginx": ["nginx", "-v"],
    "haproxy": ["haproxy", "-v"],
    "wrk": ["wrk", "-v"],
    "dnsperf": ["dnsperf", "-h"],
    "dnsmasq": ["dnsmasq", "--version"],
    "nsd": ["nsd", "-v"],
    "iperf3": ["iperf3", "--version"],
    "taskset": ["taskset", "--version"],
}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_mb() -> int | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def tool_version(tool: str) -> str | None:
    """First line mentioning a version, from ``TOOLS[tool]``; None when the tool is absent."""
    argv = TOOLS[tool]
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError) as e:
        return f"present (version unknown: {e})"
    lines = [ln.strip() for ln in (out.stdout + "\n" + out.stderr).splitlines() if ln.strip()]
    for ln in lines:
        if "version" in ln.lower() or any(ch.isdigit() for ch in ln):
            return ln[:200]
    return lines[0][:200] if lines else "present"


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("netplane", *LIBRARIES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def facts() -> dict[str, Any]:
    uname = platform.uname()
    tools = {t: v for t in TOOLS if (v := tool_version(t)) is not None}
    return {
        "hostname": uname.node,
        "cores": os.cpu_count(),
        "cpus_allowed": allowed_cpus(),
        "cpu_model": cpu_model(),
        "kernel": f"{uname.system} {uname.release} {uname.version}",
        "arch": uname.machine,
        "memory_mb": memory_mb(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": library_versions(),
        "tools": tools,
        "git_commit": git_commit(),
    }
