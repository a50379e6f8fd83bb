"""The HTTP/2 codec as data: raw frames in, handler calls and frames out (RFC 9113).

Request blocks are made with hpack's encoder and answers are read back with
its decoder and h2's client side, so the codec is checked against other
implementations, not against itself.
"""

from __future__ import annotations

import struct
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from h2_peer import frame
from hpack import Decoder, Encoder
from hypothesis import given
from hypothesis import strategies as st
from netplane.ingress.h2_codec import (
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    H2Error,
    Http2Codec,
    encode_block,
)

END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8
GET = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")]


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of each frame in ``data``."""
    out = []
    while data:
        size = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9 : 9 + size]))
        data = data[9 + size :]
    return out


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_request(self, sid, headers, end_stream, malformed):
        self.calls.append(("request", sid, headers, end_stream, malformed))

    def on_data(self, sid, data, size, end_stream):
        self.calls.append(("data", sid, data, size, end_stream))

    def on_trailers(self, sid, headers, malformed):
        self.calls.append(("trailers", sid, headers, malformed))

    def on_reset(self, sid, code):
        self.calls.append(("reset", sid, code))

    def on_window(self, sid):
        self.calls.append(("window", sid))

    def on_goaway(self, last, code):
        self.calls.append(("goaway", last, code))


def opened(**kw: Any) -> tuple[Http2Codec, Recorder, Encoder]:
    rec = Recorder()
    codec = Http2Codec(rec, **kw)
    codec.receive(PREFACE + frame(SETTINGS, 0, 0, b""))
    codec.data_to_send()
    return codec, rec, Encoder()


def goaway_code(codec: Http2Codec) -> int:
    kinds = [f for f in frames(codec.data_to_send()) if f[0] == GOAWAY]
    assert kinds, "no GOAWAY"
    return struct.unpack(">I", kinds[-1][3][4:8])[0]


def test_the_server_opens_with_its_settings_and_acks_the_clients():
    rec = Recorder()
    codec = Http2Codec(rec, max_streams=7, stream_window=1000)
    first = frames(codec.data_to_send())
    assert first[0][0] == SETTINGS
    settings = dict(struct.unpack(">HI", first[0][3][i : i + 6]) for i in range(0, 24, 6))
    assert settings[3] == 7 and settings[4] == 1000  # MAX_CONCURRENT_STREAMS, INITIAL_WINDOW
    assert first[1][0] == WINDOW_UPDATE  # the connection's window, over the default
    codec.receive(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 100)))
    assert frames(codec.data_to_send()) == [(SETTINGS, 1, 0, b"")]


def test_a_request_is_decoded_and_reported_with_its_body():
    codec, rec, enc = opened()
    codec.receive(
        frame(HEADERS, END_HEADERS, 1, enc.encode(GET)) + frame(DATA, END_STREAM, 1, b"hi")
    )
    assert rec.calls[0][:2] == ("request", 1)
    assert dict(rec.calls[0][2])[b":path"] == b"/" and rec.calls[0][3:] == (False, None)
    assert rec.calls[1] == ("data", 1, b"hi", 2, True)


def test_padding_and_priority_are_taken_off():
    codec, rec, enc = opened()
    block = enc.encode(GET)
    payload = bytes((3,)) + b"\0\0\0\x00\x10" + block + b"PAD"
    codec.receive(frame(HEADERS, END_HEADERS | END_STREAM | PADDED | 0x20, 1, payload))
    assert rec.calls[0][0] == "request" and rec.calls[0][3] is True
    codec.receive(frame(HEADERS, END_HEADERS, 3, enc.encode(GET)))
    codec.receive(frame(DATA, PADDED | END_STREAM, 3, b"\x02ab\0\0"))
    assert rec.calls[-1] == ("data", 3, b"ab", 5, True)  # the size counts the padding


def test_a_repeated_block_that_leaves_the_table_alone_is_decoded_once():
    codec, rec, enc = opened()
    first = enc.encode([*GET, ("x-a", "1")])  # inserts into the table
    again = enc.encode([*GET, ("x-a", "1")])  # indexed only: the same bytes every time
    codec.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, first))
    codec.receive(frame(HEADERS, END_HEADERS | END_STREAM, 3, again))
    codec.receive(frame(HEADERS, END_HEADERS | END_STREAM, 5, again))
    lists = [c[2] for c in rec.calls]
    assert lists[0] == lists[1] == lists[2]
    assert lists[2] is lists[1]  # the kept list, not decoded anew


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([*GET, ("X-Upper", "1")], "lower-case"),
        ([*GET, ("connection", "close")], "connection-specific"),
        ([*GET, ("te", "gzip")], "te other than trailers"),
        ([("x-a", "1"), *GET], "after a regular one"),
        ([*GET, (":method", "PUT")], "repeated or unknown"),
        ([*GET, ("x-a", " padded")], "whitespace"),
    ],
)
def test_malformed_fields_are_reported_with_the_request(fields, reason):
    codec, rec, enc = opened()
    codec.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, enc.encode(fields)))
    assert rec.calls[0][0] == "request" and reason in rec.calls[0][4]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10, PROTOCOL_ERROR),  # not the preface
        (frame(HEADERS, END_HEADERS, 2, b"\x82"), PROTOCOL_ERROR),  # an even stream id
        (frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),  # DATA on stream 0
        (frame(DATA, 0, 9, b"x"), PROTOCOL_ERROR),  # DATA on an idle stream
        (frame(PING, 0, 0, b"1234"), FRAME_SIZE_ERROR),
        (frame(SETTINGS, 0, 0, b"12345"), FRAME_SIZE_ERROR),
        (frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 100)), PROTOCOL_ERROR),  # frame size
        (frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31)), FLOW_CONTROL_ERROR),
        (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), PROTOCOL_ERROR),
        (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), FLOW_CONTROL_ERROR),
        (frame(RST_STREAM, 0, 5, b"\0\0\0\0"), PROTOCOL_ERROR),  # on an idle stream
        (frame(5, END_HEADERS, 1, b"\0\0\0\2\x82"), PROTOCOL_ERROR),  # PUSH_PROMISE
        (frame(HEADERS, END_HEADERS, 1, b"\x80"), COMPRESSION_ERROR),  # index 0
        (frame(HEADERS, END_HEADERS, 1, b"\x3f\xe1\x7f"), COMPRESSION_ERROR),  # table too big
        (struct.pack(">I", 16385)[1:] + b"\0\0\0\0\0\1" + b"x" * 16385, FRAME_SIZE_ERROR),
    ],
)
def test_connection_errors_raise_and_queue_goaway_with_their_code(data, code):
    rec = Recorder()
    codec = Http2Codec(rec)
    codec.data_to_send()
    with pytest.raises(H2Error) as info:
        codec.receive((b"" if data.startswith(b"GET") else PREFACE) + data)
    assert info.value.code == code
    assert goaway_code(codec) == code


def test_a_header_block_interrupted_by_another_frame_is_a_protocol_error():
    codec, _, enc = opened()
    codec.receive(frame(HEADERS, 0, 1, enc.encode(GET)[:2]))
    with pytest.raises(H2Error) as info:
        codec.receive(frame(PING, 0, 0, b"12345678"))
    assert info.value.code == PROTOCOL_ERROR


def test_a_continuation_flood_is_cut_before_the_block_is_whole():
    codec, rec, _ = opened(max_header_list=50_000)
    codec.receive(frame(HEADERS, 0, 1, b"\x82"))
    with pytest.raises(H2Error) as info:
        for _ in range(100):
            codec.receive(frame(CONTINUATION, 0, 1, b"\0" * 16384))
    assert info.value.code == ENHANCE_YOUR_CALM
    assert sum(len(b) for b in codec._block) < 70_000  # bounded while it arrived
    assert not rec.calls


def test_streams_over_the_limit_are_refused_and_the_rest_served():
    codec, rec, enc = opened(max_streams=2)
    for sid in (1, 3, 5):
        codec.receive(frame(HEADERS, END_HEADERS, sid, enc.encode(GET)))
    assert [c[1] for c in rec.calls] == [1, 3]
    assert (RST_STREAM, 0, 5, struct.pack(">I", REFUSED_STREAM)) in frames(codec.data_to_send())


def test_flow_control_both_ways():
    codec, rec, enc = opened(stream_window=100, connection_window=65535)
    codec.receive(frame(HEADERS, END_HEADERS, 1, enc.encode(GET)))
    codec.receive(frame(DATA, 0, 1, b"x" * 60))
    codec.ack(1, 60)  # over half the stream's window: one WINDOW_UPDATE for it
    assert (WINDOW_UPDATE, 0, 1, struct.pack(">I", 60)) in frames(codec.data_to_send())
    codec.receive(frame(DATA, 0, 1, b"x" * 100))
    codec.receive(frame(DATA, 0, 1, b"x"))  # one byte over the stream's window
    assert rec.calls[-1] == ("reset", 1, FLOW_CONTROL_ERROR)
    # sending: at most the window, in frames of the client's size
    codec.receive(frame(HEADERS, END_HEADERS, 3, enc.encode(GET)))
    codec.receive(frame(SETTINGS, 0, 0, struct.pack(">HIHI", 4, 40000, 5, 20000)))
    assert codec.window(3) == 40000
    codec.data_to_send()
    codec.send_data(3, b"y" * 40000, False)
    sizes = [len(f[3]) for f in frames(codec.data_to_send())]
    assert sizes == [20000, 20000] and codec.window(3) == 0
    codec.receive(frame(WINDOW_UPDATE, 0, 3, struct.pack(">I", 500)))
    assert rec.calls[-1] == ("window", 3) and codec.window(3) == 500


def test_ping_is_answered_and_goaway_reported():
    codec, rec, _ = opened()
    codec.receive(frame(PING, 0, 0, b"abcdefgh"))
    assert frames(codec.data_to_send()) == [(PING, 1, 0, b"abcdefgh")]
    codec.receive(frame(GOAWAY, 0, 0, struct.pack(">II", 7, 0)))
    assert rec.calls[-1] == ("goaway", 7, 0)


def test_a_long_header_block_goes_out_in_continuations_a_client_reads():
    codec, _, enc = opened()
    codec.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, enc.encode(GET)))
    codec.data_to_send()
    fields = [(b":status", b"200"), (b"x-big", b"v" * 40000)]
    codec.send_headers(1, encode_block(fields), True)
    out = frames(codec.data_to_send())
    assert [f[0] for f in out] == [HEADERS, CONTINUATION, CONTINUATION]
    assert (
        Decoder(max_header_list_size=100_000).decode(b"".join(f[3] for f in out), raw=True)
        == fields
    )


def test_what_the_codec_sends_reads_back_in_h2s_client():
    """A whole exchange, the client being h2: its preface, a request, the answer."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, GET, end_stream=True)
    rec = Recorder()
    codec = Http2Codec(rec)
    codec.receive(client.data_to_send())
    codec.send_headers(1, encode_block([(b":status", b"404"), (b"content-length", b"3")]), False)
    codec.send_data(1, b"no\n", True)
    events = client.receive_data(codec.data_to_send())
    got = {type(e): e for e in events}
    assert dict(got[h2.events.ResponseReceived].headers)[b":status"] == b"404"
    assert got[h2.events.DataReceived].data == b"no\n"
    assert h2.events.StreamEnded in got


@given(
    st.lists(
        st.tuples(
            st.from_regex(rb"[a-z][a-z0-9-]{0,30}", fullmatch=True),
            st.binary(max_size=300).filter(lambda v: b"\0" not in v),
        ),
        max_size=8,
    ),
    st.sampled_from([b"200", b"204", b"302", b"404", b"503"]),
)
def test_encoded_blocks_decode_to_the_same_fields(fields, status):
    block = encode_block([(b":status", status), *fields])
    assert Decoder(max_header_list_size=1 << 20).decode(block, raw=True) == [
        (b":status", status),
        *fields,
    ]
