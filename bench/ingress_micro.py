"""In-process CPU per request of the ingress hot path, without sockets, nginx or wrk.

One :class:`~netplane.ingress.http.ClientConnection` and one pooled
:class:`~netplane.ingress.upstream.UpstreamConnection` sit on fake
transports in a uvloop loop. Each round feeds the client a wrk-like
keep-alive ``GET`` (read into the listener's buffer, as the loop does),
lets the loop run once (the pool writes the held request head then), and
feeds the upstream a small nginx-like 200. That is the path of the bench's
"keep-alive req/s over HTTP, 1 rules" row, minus the kernel and the route
table (a stub answers one prebuilt Forward, so route-table changes do not
move this figure). An access log (to /dev/null) and the request stats run
as in the daemon.

The figure is ``time.process_time()`` per request over ``-n`` requests
(after a warm-up), best of ``-r`` repeats. It is meant for before/after
comparisons of one change on one machine: run the two versions
alternately, a few times each, e.g.::

    for i in 1 2 3; do
        /tmp/base/.venv/bin/python bench/ingress_micro.py
        .venv/bin/python bench/ingress_micro.py
    done

(``/tmp/base`` being a checkout of the other commit, installed in a venv of
its own; the script imports whichever ``netplane`` its interpreter has.)

On a shared machine the CPU time drifts by 10% and more between runs; the
number of instructions does not. Count them with callgrind at two sizes
and divide the difference by the extra requests::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python bench/ingress_micro.py -n 1000 -r 1 --warmup 500   # then -n 6000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import uvloop
from netplane.ingress import http, upstream
from netplane.ingress.accesslog import AccessLog
from netplane.ingress.routes import Forward, ProxyOptions

from netplane.model import ObjectKey

REQUEST = b"GET / HTTP/1.1\r\nHost: h1.bench.test\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 18:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n"
    b"Connection: keep-alive\r\n\r\nok\n"
)
TARGET = ("127.0.0.1", 8081)


class FakeTransport:
    """What the protocols ask of a transport; counts what is written."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written = 0
        self.writes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


class OneRoute:
    """A route table with one rule: every request goes to ``TARGET``."""

    def __init__(self) -> None:
        self.decision = Forward(
            ObjectKey("Ingress", "bench", "h1"), ("bench", "web"), (TARGET,), "/", False,
            ProxyOptions(), host="h1.bench.test",
        )  # fmt: skip

    def route(self, host: str, path: str, **_: Any) -> Any:
        return self.decision


def h2_requests(count: int) -> list[bytes]:
    """``count`` HEADERS frames of h2load-like GETs (streams 3, 5, ...), HPACK as a client makes them.

    The first request (stream 1, in :func:`h2_preface`) fills the decoder's
    table; these are the indexed-only blocks that follow, as in a load run.
    """
    from hpack import Encoder

    enc = Encoder()
    fields = [(":method", "GET"), (":path", "/"), (":scheme", "https"),
              (":authority", "h1.bench.test"), ("user-agent", "h2load nghttp2/1.52.0")]  # fmt: skip
    enc.encode(fields)  # (the preface's request)
    block = enc.encode(fields)
    return [
        len(block).to_bytes(3, "big") + b"\x01\x05" + (3 + 2 * i).to_bytes(4, "big") + block
        for i in range(count)
    ]


def h2_preface() -> bytes:
    """The client's preface, SETTINGS, and its first request (stream 1)."""
    from hpack import Encoder

    enc = Encoder()
    fields = [(":method", "GET"), (":path", "/"), (":scheme", "https"),
              (":authority", "h1.bench.test"), ("user-agent", "h2load nghttp2/1.52.0")]  # fmt: skip
    block = enc.encode(fields)
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    first = len(block).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + block
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + first


class Rig:
    """A listener, one client connection and one pooled upstream connection on fake transports."""

    def __init__(self) -> None:
        self.pool = upstream.Pool()
        self.alog = AccessLog(os.devnull, "text")
        self.listener = http.Listener(
            OneRoute(), self.pool, http.HttpSettings(), https=False, port=8080,
            access_log=self.alog,
        )  # fmt: skip
        self.client = http.ClientConnection(self.listener)
        self.ctr = FakeTransport(("127.0.0.1", 40000))
        self.client.connection_made(self.ctr)
        self.up = upstream.UpstreamConnection(self.pool, (*TARGET, False))
        self.utr = FakeTransport(TARGET)
        self.up.connection_made(self.utr)
        self.up.keep_alive = True
        self.up.release()  # into the pool, as after a first response


async def measure_h2(n: int, warmup: int) -> float:
    """CPU seconds per request over ``n`` HTTP/2 streams on one connection (h2c, prior knowledge)."""
    rig = Rig()
    pool, alog, listener, client, ctr, up, utr = (
        rig.pool, rig.alog, rig.listener, rig.client, rig.ctr, rig.up, rig.utr
    )  # fmt: skip
    rbuf = listener.rbuf
    first = h2_preface()
    rbuf[: len(first)] = first
    client.buffer_updated(len(first))  # becomes the HTTP/2 protocol
    h2conn = ctr.protocol
    await asyncio.sleep(0)
    up.data_received(RESPONSE)
    frames = h2_requests(n + warmup)
    feed_client = h2conn.buffer_updated
    feed_upstream = up.data_received
    sleep = asyncio.sleep

    async def rounds(todo: list[bytes]) -> None:
        for frame in todo:
            rbuf[: len(frame)] = frame
            feed_client(len(frame))
            await sleep(0)  # the pool writes the held request head
            feed_upstream(RESPONSE)

    await rounds(frames[:warmup])
    writes0 = utr.writes
    t0 = time.process_time()
    await rounds(frames[warmup:])
    spent = time.process_time() - t0
    if utr.writes - writes0 != n or pool.opened or h2conn.served != n + warmup + 1:
        raise SystemExit(
            f"unexpected: {utr.writes - writes0} upstream writes, {h2conn.served} streams "
            f"served, {pool.opened} connections opened for {n} requests"
        )
    alog.close()
    return spent / n


async def measure(n: int, warmup: int) -> float:
    """CPU seconds per request over ``n`` requests."""
    rig = Rig()
    pool, alog, listener, client, ctr, up, utr = (
        rig.pool, rig.alog, rig.listener, rig.client, rig.ctr, rig.up, rig.utr
    )  # fmt: skip
    rbuf = listener.rbuf
    rbuf[: len(REQUEST)] = REQUEST
    size = len(REQUEST)
    feed_client = client.buffer_updated
    feed_upstream = up.data_received
    sleep = asyncio.sleep

    async def rounds(count: int) -> None:
        for _ in range(count):
            feed_client(size)
            await sleep(0)  # the pool writes the held request head
            feed_upstream(RESPONSE)

    await rounds(warmup)
    t0 = time.process_time()
    await rounds(n)
    spent = time.process_time() - t0
    answered = ctr.writes
    if answered != n + warmup or utr.writes != n + warmup or pool.opened:
        raise SystemExit(
            f"unexpected: {answered} client writes, {utr.writes} upstream writes, "
            f"{pool.opened} connections opened for {n + warmup} requests"
        )
    alog.close()
    return spent / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("-n", type=int, default=20000, help="requests measured per repeat")
    ap.add_argument("-r", type=int, default=5, help="repeats (the best is reported)")
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--http2", action="store_true", help="HTTP/2 streams on one h2c connection")
    args = ap.parse_args()
    run = measure_h2 if args.http2 else measure
    best = min(uvloop.run(run(args.n, args.warmup)) for _ in range(args.r))
    kind = "HTTP/2 stream" if args.http2 else "request"
    print(f"{http.__file__}: {best * 1e6:.2f} µs CPU per {kind} (best of {args.r} x {args.n})")


if __name__ == "__main__":
    main()
