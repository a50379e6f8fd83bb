"""Serve a fake Kubernetes API holding N Services and N EndpointSlices, until SIGTERM.

    python -m bench.fakeapi --services N --endpoints-per-slice M --kubeconfig PATH

The objects come from bench/state_scale.py's generators (ClusterIPs in
10.96.0.0/12). When the server listens, it writes the kubeconfig (bearer
token auth, the server's CA inline) atomically, so its appearance means
"ready". It exits on SIGTERM/SIGINT, or when its parent process goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from bench.state_scale import make_service, make_slice
from netplane.testing.fakekube import FakeKube

TOKEN = "bench-token"


def load(fake: FakeKube, services: int, per_slice: int, ports: int = 2) -> None:
    for i in range(services):
        fake.apply(make_service(i, ports))
    for i in range(services):
        fake.apply(make_slice(i, per_slice))
    fake.history.clear()  # nothing watches from before the list; keep memory flat
    fake.compacted_rv = 0


def publish_kubeconfig(fake: FakeKube, path: Path) -> None:
    """Write the kubeconfig atomically: its appearance tells the harness "ready"."""
    tmp = path.with_name(path.name + ".tmp")
    fake.write_kubeconfig(tmp, {"token": TOKEN})
    os.replace(tmp, path)


async def until_stopped() -> None:
    """Return on SIGTERM/SIGINT, or once the parent (the harness) is gone."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            return  # the harness is gone: do not outlive it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def serve(args: argparse.Namespace) -> None:
    fake = FakeKube(tokens=(TOKEN,))
    load(fake, args.services, args.endpoints_per_slice, args.ports_per_service)
    await fake.start()
    publish_kubeconfig(fake, Path(args.kubeconfig))
    try:
        await until_stopped()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, required=True)
    ap.add_argument("--endpoints-per-slice", type=int, default=10)
    ap.add_argument("--ports-per-service", type=int, choices=(1, 2), default=2)
    ap.add_argument("--kubeconfig", required=True)
    args = ap.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
