"""Inputs the fuzzers in bench/fuzz/ found, each kept as a regression test."""

from __future__ import annotations

from typing import Any

import httptools
from netplane.ingress.http import ClientConnection, HttpSettings, Listener
from netplane.ingress.routes import Respond
from netplane.ingress.upstream import Pool


class Transport:
    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class NoRoutes:
    def route(self, host: str, path: str, **_: Any) -> Any:
        return Respond(404, b"no route\n")


def client() -> tuple[ClientConnection, Transport]:
    listener = Listener(NoRoutes(), Pool(), HttpSettings(h2c=False), https=False, port=80)
    conn = ClientConnection(listener)
    transport = Transport()
    conn.connection_made(transport)
    return conn, transport


def test_a_malformed_chunk_after_the_answer_in_the_same_read_is_not_answered_again():
    # ingress_request: the 404 (with close: the chunked body is not read) ends the
    # exchange while httptools still parses the same read; the bad chunk that follows
    # raised IllegalTransition (ANSWER when the response is DONE) out of data_received.
    conn, transport = client()
    conn.data_received(
        b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0"
    )
    assert transport.closed
    assert transport.out.startswith(b"HTTP/1.1 404 ")
    assert transport.out.count(b"HTTP/1.1 ") == 1
    httptools.HttpResponseParser(object()).feed_data(transport.out)


def test_an_upstream_status_below_100_is_a_malformed_response():
    # ingress_response: httptools reads "050" as status 50; it went on to the client as
    # "HTTP/1.1 50 Continue", which no client parses. It is a 502 now, as nginx answers.
    from bench.fuzz.ingress_request import check_responses
    from bench.fuzz.ingress_response import TestOneInput

    TestOneInput(b"\x00HTTP/1.1 050 Continue\r\n\r\nrest")  # raises on a malformed answer
    import asyncio

    from bench.fuzz import ingress_response as rig

    async def answer(raw: bytes) -> bytes:
        pool = Pool()
        listener = Listener(rig.OneRoute(), pool, HttpSettings(h2c=False), https=False, port=80)
        conn = ClientConnection(listener)
        ctr = rig.Transport()
        conn.connection_made(ctr)
        up = rig.UpstreamConnection(pool, (*rig.TARGET, False))
        up.connection_made(rig.Transport(rig.TARGET))
        up.keep_alive = True
        up.release()
        conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(0)
        up.data_received(raw)
        return bytes(ctr.out)

    loop = asyncio.new_event_loop()
    try:
        out = loop.run_until_complete(answer(b"HTTP/1.1 050 Continue\r\n\r\nrest"))
    finally:
        loop.close()
    assert out.startswith(b"HTTP/1.1 502 ")
    check_responses(out)


def test_body_bytes_of_an_interim_response_never_reach_the_client():
    # ingress_response: a "199" with a chunked body: the interim head is dropped, but its
    # body went to the client ("abc" before any status line), then a 502 head after it.
    from bench.fuzz.ingress_response import TestOneInput

    TestOneInput(
        b"\x04HTTP/1.1 199 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n01 2"
    )


def test_an_interim_response_with_a_content_length_is_a_malformed_response():
    # ingress_response (the 1,000,000-input run): a "199" with Content-Length: 292. The
    # interim head was dropped, but the next head was searched for from the end of the
    # 199's head, so its body's bytes became the final response's header lines and went
    # to the client as they were (NUL bytes and all). RFC 9110 §8.6: no 1xx carries a
    # Content-Length (nor a body); such an answer is a 502 now.
    import base64

    from bench.fuzz.ingress_response import TestOneInput

    crash = base64.b64decode(
        "BEhUVFAvMS4xIDE5OSABSw0KQ29udGVudC1MZW5ndGg6IDI5Mg0KDQoAAAABAAAA////////////////////"
        "////AUhUVFAvMS4xIDIwMCBPSw0KQ29udGVudC4xIDIwMCBPSw0KVHJFbmMtZGlvZzogLUybm/8AAAAAAAAA"
        "AARIVFRQLzUuMSAyMDAgT0sNClRyRW5jLWRpb2c6IG9udGludWUNCg0KSFRUUC8xLjEgMjA0ZVYgTm9XKbyQ"
        "kHRlVA0KAAAAAAAAAAAAAAAAAARIVFRQLzEuMSAxMDAgQ25voWludWUNCg0KSFRUAAAAAGd0aDogMTANUC8x"
        "LjEgMTAwIENub6FpbnVlDQoNCkhUVFAvMS4xIDEwMCDUbm+haW51ZQ0KDQpIVFRQLzEuMSAxMDAgQ25voSBD"
        "bm+haW51ZSBDbm+haW51ZQ0KDQpIVFRQLzEuMSAxMDAgQ25voWludWUNCg0KSFRUUC8xLjEgMTAwIENub6Fp"
        "bnVlDQoNCkhUVFAvMS4xIDEwMCBDbm+hIENuZQ0KDQpIVFRQLzEuMSAxMDANCg0KDQpIVFRQLzEuCg0KSAo="
    )
    TestOneInput(crash)  # raises on a malformed answer to the client
