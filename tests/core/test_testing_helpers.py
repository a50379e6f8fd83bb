"""The test helpers that ship in netplane.testing: the process launcher and the h11 request reader."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import h11
import pytest

from netplane.testing.http import Stream, body_data, read_request
from netplane.testing.ports import free_udp_port
from netplane.testing.process import Netplane, NetplaneExited


def stream_of(data: bytes) -> Stream:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return Stream(reader)


async def test_repeated_headers_are_kept_and_pipelined_requests_follow() -> None:
    s = stream_of(
        b"POST /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /b HTTP/1.0\r\n\r\n"
    )
    first = await read_request(s)
    assert first is not None
    assert (first.method, first.target, first.body) == (b"POST", b"/a", b"abcde")
    assert [v for n, v in first.header_list if n == b"x-a"] == [b"1", b"2"]
    assert first.headers[b"x-a"] == b"1, 2"
    assert first.keep_alive
    second = await read_request(s)
    assert second is not None and second.target == b"/b" and not second.keep_alive
    assert await read_request(s) is None


async def test_the_bytes_after_an_upgrade_are_the_streams_again() -> None:
    s = stream_of(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw bytes"
    )
    req = await read_request(s)
    assert req is not None and req.headers[b"upgrade"] == b"websocket"
    assert await s.readexactly(3) == b"raw"
    assert await s.read() == b" bytes"


async def test_a_body_read_later_keeps_its_chunks() -> None:
    s = stream_of(
        b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    req = await read_request(s, body=False)
    assert req is not None and req.body == b""
    pieces = [bytes(d.data) async for d in body_data(req, s)]
    assert pieces == [b"abc", b"de"]


async def test_a_request_cut_short_is_an_error() -> None:
    with pytest.raises(h11.RemoteProtocolError):
        await read_request(stream_of(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab"))


def test_free_udp_port_is_free_on_every_address() -> None:
    import socket

    port = free_udp_port("127.0.60.1", "127.0.60.2")
    for host in ("127.0.60.1", "127.0.60.2"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, port))


def test_a_start_that_fails_says_so_at_once_with_the_log(tmp_path: Path) -> None:
    np = Netplane("run", "--mode", "nonsense", workdir=tmp_path)
    began = time.monotonic()
    with pytest.raises(NetplaneExited, match="exited with 2") as e:
        np.start(timeout=30)
    assert time.monotonic() - began < 20  # not the whole timeout
    assert "nonsense" in str(e.value)  # the tail of its stderr
    assert np.returncode == 2


def test_the_fixture_starts_until_ready_and_stops_by_sigterm(start_netplane) -> None:
    np = start_netplane("demo", "--proxy", "off", "--dns", "off", "--ingress-http", "off",
                        "--ingress-https", "off")  # fmt: skip
    np.wait_ready()
    assert "netplane demo is running" in np.wait_output("Ctrl-C stops")
    assert np.returncode is None and np.admin is not None
    assert np.argv[:3] == [sys.executable, "-m", "netplane"]
    assert np.stop() == 0
    assert "stopped" in np.log


async def test_the_async_form_waits_and_stops_the_same_way(start_netplane) -> None:
    np = start_netplane("demo", "--proxy", "off", "--dns", "off", "--ingress-http", "off",
                        "--ingress-https", "off")  # fmt: skip
    await np.await_ready()
    assert "netplane demo is running" in await np.await_output("Ctrl-C stops")
    np.signal(signal.SIGTERM)
    assert await np.await_exit(15) == 0
