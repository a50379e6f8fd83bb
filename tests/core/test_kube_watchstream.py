"""The sans-IO watch-stream decoder, on bytes only."""

from __future__ import annotations

import json

import pytest

from netplane.sources.kube.watchstream import BadLine, RawEvent, WatchDecoder


def ev(etype: str, name: str = "web", rv: str = "1") -> bytes:
    obj = {"metadata": {"name": name, "resourceVersion": rv}}
    return json.dumps({"type": etype, "object": obj}).encode() + b"\n"


def decode(*chunks: bytes, max_line: int | None = None) -> list[RawEvent | BadLine]:
    d = WatchDecoder() if max_line is None else WatchDecoder(max_line)
    out = []
    for c in chunks:
        d.feed(c)
        out.extend(d.events())
    d.close()
    out.extend(d.events())
    return out


def test_one_event() -> None:
    assert decode(ev("ADDED")) == [
        RawEvent("ADDED", {"metadata": {"name": "web", "resourceVersion": "1"}})
    ]


def test_every_known_type() -> None:
    types = ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]
    assert [e.type for e in decode(b"".join(ev(t) for t in types))] == types


def test_many_lines_in_one_feed_keep_order() -> None:
    out = decode(b"".join(ev("MODIFIED", rv=str(i)) for i in range(50)))
    assert [e.object["metadata"]["resourceVersion"] for e in out] == [str(i) for i in range(50)]


@pytest.mark.parametrize("size", [1, 2, 7, 64])
def test_lines_split_across_feeds(size: int) -> None:
    data = ev("ADDED", "a") + ev("MODIFIED", "b") + ev("DELETED", "c")
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    out = decode(*chunks)
    assert [(e.type, e.object["metadata"]["name"]) for e in out] == [
        ("ADDED", "a"),
        ("MODIFIED", "b"),
        ("DELETED", "c"),
    ]


def test_nothing_until_the_newline_arrives() -> None:
    d = WatchDecoder()
    line = ev("ADDED")
    d.feed(line[:-1])
    assert d.next_event() is None
    assert d.pending_bytes == len(line) - 1
    d.feed(b"\n")
    assert isinstance(d.next_event(), RawEvent)
    assert d.next_event() is None


def test_utf8_split_inside_a_character() -> None:
    line = json.dumps({"type": "ADDED", "object": {"x": "é☃"}}, ensure_ascii=False).encode() + b"\n"
    cut = line.index("☃".encode()) + 1
    assert decode(line[:cut], line[cut:]) == [RawEvent("ADDED", {"x": "é☃"})]


def test_bad_json_is_reported_and_the_stream_goes_on() -> None:
    out = decode(ev("ADDED", "a") + b'{"type": "ADDED", "obj\n' + ev("ADDED", "b"))
    assert isinstance(out[1], BadLine) and out[1].line == 2
    assert "invalid JSON" in out[1].reason
    assert [e.object["metadata"]["name"] for e in out if isinstance(e, RawEvent)] == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"type": "EXPLODED", "object": {}}', "unknown event type 'EXPLODED'"),
        (b'{"object": {}}', "unknown event type"),
        (b'{"type": 3, "object": {}}', "unknown event type 'int'"),
        (b'{"type": "ADDED"}', "ADDED event without an object"),
        (b'{"type": "ADDED", "object": [1]}', "ADDED event without an object"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"\xff\xfe{}", "invalid JSON"),
    ],
)
def test_malformed_events(line: bytes, reason: str) -> None:
    out = decode(line + b"\n" + ev("ADDED"))
    assert len(out) == 2
    assert isinstance(out[0], BadLine) and reason in out[0].reason
    assert isinstance(out[1], RawEvent)


def test_bad_line_never_echoes_its_content() -> None:
    out = decode(b'{"type": "ADDED", "object": {"data": {"tls.key": "SECRETKEYBYTES"}}\n')
    assert len(out) == 1 and isinstance(out[0], BadLine)
    assert "SECRETKEYBYTES" not in repr(out[0])


def test_blank_lines_are_ignored() -> None:
    out = decode(b"\n\r\n" + ev("ADDED") + b"\n  \n")
    assert len(out) == 1 and isinstance(out[0], RawEvent)


def test_crlf_line_endings() -> None:
    out = decode(ev("ADDED")[:-1] + b"\r\n")
    assert isinstance(out[0], RawEvent)


def test_trailing_line_without_newline_counts_at_close() -> None:
    d = WatchDecoder()
    d.feed(ev("ADDED")[:-1])
    assert list(d.events()) == []
    d.close()
    assert [e.type for e in d.events()] == ["ADDED"]


def test_truncated_trailing_line_is_bad_at_close() -> None:
    d = WatchDecoder()
    d.feed(b'{"type": "ADD')
    d.close()
    (item,) = d.events()
    assert isinstance(item, BadLine)


def test_over_long_line_is_dropped_across_feeds() -> None:
    big = b'{"type": "ADDED", "object": {"pad": "' + b"x" * 500 + b'"}}\n'
    chunks = [big[i : i + 64] for i in range(0, len(big), 64)]
    out = decode(*chunks, ev("ADDED", "after"), max_line=200)
    assert len(out) == 2
    assert isinstance(out[0], BadLine) and "longer than 200" in out[0].reason
    assert isinstance(out[1], RawEvent) and out[1].object["metadata"]["name"] == "after"


def test_over_long_line_in_one_feed() -> None:
    big = b'{"type": "ADDED", "object": {"pad": "' + b"x" * 500 + b'"}}\n'
    out = decode(big + ev("ADDED"), max_line=200)
    assert [type(e) for e in out] == [BadLine, RawEvent]


def test_line_numbers_count_non_blank_lines() -> None:
    out = decode(ev("ADDED") + b"nope\n" + b"\n" + ev("ADDED") + b"{]\n")
    assert [(type(e).__name__, getattr(e, "line", None)) for e in out] == [
        ("RawEvent", None),
        ("BadLine", 2),
        ("RawEvent", None),
        ("BadLine", 4),
    ]


def test_feed_after_close_is_an_error() -> None:
    d = WatchDecoder()
    d.close()
    with pytest.raises(RuntimeError):
        d.feed(b"{}\n")
