"""Install the peers and load generators the scenarios need, from Debian packages.

``python -m bench.setup`` (or ``python -m bench --setup``) installs every
package below that is missing; the harness also calls :func:`ensure` with a
scenario's ``packages`` before running it. ``apt-get update`` runs at most
once per process. Nothing is installed when everything is present.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable

# Debian package -> the program that shows it is installed.
PACKAGES: dict[str, str] = {
    "nginx": "nginx",
    "haproxy": "haproxy",
    "wrk": "wrk",
    "dnsperf": "dnsperf",
    "dnsmasq": "dnsmasq",
    "nsd": "nsd",
    "iperf3": "iperf3",
    "nftables": "nft",
    "nghttp2-client": "h2load",
}

_updated = False


def installed(package: str) -> bool:
    binary = PACKAGES.get(package, package)
    if shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin"):
        return True
    try:
        out = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "Status: install ok installed" in out.stdout


def missing(packages: Iterable[str]) -> list[str]:
    return [p for p in dict.fromkeys(packages) if not installed(p)]


def _apt(*args: str) -> None:
    prefix = [] if os.geteuid() == 0 or not shutil.which("sudo") else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*prefix, "apt-get", *args], check=True, env=env, timeout=900)


def ensure(packages: Iterable[str], echo: bool = True) -> list[str]:
    """Install what is missing of ``packages``; returns the packages it installed."""
    global _updated
    todo = missing(packages)
    if not todo:
        return []
    if not shutil.which("apt-get"):
        raise RuntimeError(f"missing {', '.join(todo)} and no apt-get to install them")
    if echo:
        print(f"setup: installing {' '.join(todo)}", flush=True)
    if not _updated:
        _apt("update")
        _updated = True
    _apt("install", "-y", "--no-install-recommends", *todo)
    still = missing(todo)
    if still:
        raise RuntimeError(f"apt-get install did not provide {', '.join(still)}")
    if echo:
        print(f"setup: installed {' '.join(todo)}", flush=True)
    return todo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="*", help=f"default: all of {' '.join(PACKAGES)}")
    ap.add_argument("--check", action="store_true", help="only list what is missing")
    args = ap.parse_args(argv)
    wanted = args.packages or list(PACKAGES)
    if args.check:
        todo = missing(wanted)
        print("missing: " + (" ".join(todo) if todo else "nothing"))
        return 1 if todo else 0
    done = ensure(wanted)
    if not done:
        print("setup: everything is installed already")
    return 0


if __name__ == "__main__":
    sys.exit(main())
