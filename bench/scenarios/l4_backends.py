"""Helpers of the ``l4`` scenario, run as scripts (by path, standard library only).

    python bench/scenarios/l4_backends.py udp-echo HOST PORT
    python bench/scenarios/l4_backends.py udp-load HOST PORT --seconds 5 --window 32 --size 64
    python bench/scenarios/l4_backends.py netplane ROOT run ...   # the worktree's netplane

``udp-echo`` sends every datagram back to its sender from a plain blocking
loop (the fastest a Python server gets: one recvfrom and one sendto each).

``udp-load`` keeps ``--window`` requests outstanding on one connected UDP
socket: it primes the window, then sends one new request per reply, for
``--seconds``. A reply that does not come within ``--timeout`` counts as lost
and the window is primed again. It prints one JSON line: replies, seconds,
replies per second, lost, and its own CPU seconds (it is written in Python
and may well be the bottleneck; its CPU share says so).

``netplane`` runs ``netplane.cli.main`` from the interpreter's install and
first checks that netplane, ``netplane.ingress`` and ``netplane.dns`` all
come from the checkout at ROOT (its editable install), so that an install
of another checkout cannot stand in for the code under test.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import struct
import sys
import time


def udp_echo(host: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((host, port))
    recvfrom, sendto = s.recvfrom, s.sendto
    while True:
        data, addr = recvfrom(65536)
        try:  # noqa: SIM105 - a with-statement per datagram costs more
            sendto(data, addr)
        except OSError:  # e.g. a full buffer or an ICMP error queued on the socket
            pass


def udp_load(
    host: str, port: int, seconds: float, window: int, size: int, timeout: float, ready: float
) -> dict[str, float]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect((host, port))
    payload = b"x" * size
    send, recv = s.send, s.recv
    # Wait until the target answers at all (a proxy's listener may be new).
    s.settimeout(0.1)
    deadline = time.monotonic() + ready
    while True:
        try:
            send(payload)
            recv(65536)
            break
        except (TimeoutError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"udp-load: no reply from {host}:{port} within {ready} s"
                ) from None
    s.setblocking(False)
    while True:  # drop late replies to the probe
        try:
            recv(65536)
        except BlockingIOError:
            break
    # A blocking socket with SO_RCVTIMEO: recv() is one syscall (no poll), and
    # a timeout surfaces as EAGAIN (BlockingIOError).
    s.setblocking(True)
    usec = int(timeout * 1e6)
    s.setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", usec // 10**6, usec % 10**6)
    )

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    replies = lost = 0
    start = time.perf_counter()
    end = start + seconds
    for _ in range(window):
        send(payload)
    now = start
    while now < end:
        n = 0
        try:
            while n < 1024:
                recv(65536)
                send(payload)
                n += 1
        except (BlockingIOError, ConnectionRefusedError):
            lost += window
            for _ in range(window):
                send(payload)
        replies += n
        now = time.perf_counter()
    elapsed = now - start
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "replies": replies,
        "seconds": elapsed,
        "rps": replies / elapsed,
        "lost": lost,
        "cpu_s": cpu,
        "cpu_pct": 100.0 * cpu / elapsed,
    }


def run_netplane(root: str, argv: list[str]) -> int:
    # harness.checkout_boot's check (this file runs by path, without the bench package).
    import importlib.util

    for name in ("netplane", "netplane.ingress", "netplane.dns"):
        spec = importlib.util.find_spec(name)
        origin = (spec.origin if spec else None) or ""
        if not origin.startswith(root.rstrip("/") + "/"):
            raise SystemExit(f"{name} imported from {origin}, not from {root}; pip install -e it")
    from netplane.cli import main

    return main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["netplane"]:
        if len(argv) < 2:
            raise SystemExit("usage: l4_backends.py netplane ROOT ARGS...")
        return run_netplane(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    echo = sub.add_parser("udp-echo")
    echo.add_argument("host")
    echo.add_argument("port", type=int)
    load = sub.add_parser("udp-load")
    load.add_argument("host")
    load.add_argument("port", type=int)
    load.add_argument("--seconds", type=float, default=5.0)
    load.add_argument("--window", type=int, default=32)
    load.add_argument("--size", type=int, default=64)
    load.add_argument("--timeout", type=float, default=0.2, help="seconds before a reply is lost")
    load.add_argument("--ready", type=float, default=10.0, help="seconds to wait for a 1st reply")
    args = ap.parse_args(argv)
    if args.cmd == "udp-echo":
        udp_echo(args.host, args.port)
        return 0
    result = udp_load(
        args.host, args.port, args.seconds, args.window, args.size, args.timeout, args.ready
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
