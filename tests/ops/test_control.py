"""The owner-to-worker channel's framing: model objects survive the trip intact."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from netplane.control import Channel, encode
from netplane.model import parse_object

SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {"clusterIP": "127.77.0.9", "ports": [{"name": "http", "port": 80}]},
}
SLICE = {
    "apiVersion": "discovery.k8s.io/v1",
    "kind": "EndpointSlice",
    "metadata": {
        "name": "web-1",
        "namespace": "shop",
        "labels": {"kubernetes.io/service-name": "web"},
    },
    "addressType": "IPv4",
    "ports": [{"name": "http", "port": 8080}],
    "endpoints": [
        {"addresses": ["127.0.9.1"], "conditions": {"ready": True}, "hostname": "a"},
        {"addresses": ["127.0.9.2"], "conditions": {"ready": False}},
    ],
}


async def test_objects_cross_a_socketpair_equal_to_what_was_sent():
    objs = [parse_object(SERVICE), parse_object(SLICE)]
    ours, theirs = socket.socketpair()
    a, b = await Channel.over(ours), await Channel.over(theirs)
    try:
        await a.send(("objects", [(o.key, o) for o in objs]))
        await a.send(("synced",))
        got = await b.recv()
        assert got == ("objects", [(o.key, o) for o in objs])
        assert [type(o) for _, o in got[1]] == [type(o) for o in objs]
        assert await b.recv() == ("synced",)
        a.close()
        assert await b.recv() is None  # the peer went away
    finally:
        b.close()


def test_a_fresh_process_reads_what_the_owner_wrote():
    """The worker unpickles without having pickled anything itself first."""
    body = encode(("objects", [(parse_object(SLICE).key, parse_object(SLICE))]))
    code = (
        "import pickle, sys; m = pickle.loads(sys.stdin.buffer.read()[4:]); "
        "o = m[1][0][1]; print(o.key.name, sorted(e.addresses[0] for e in o.endpoints))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=body, capture_output=True, check=True, timeout=30
    )
    assert out.stdout.decode().strip() == "web-1 ['127.0.9.1', '127.0.9.2']"


async def test_a_frame_that_is_not_a_message_is_refused():
    ours, theirs = socket.socketpair()
    b = await Channel.over(theirs)
    try:
        ours.sendall(encode(["not", "a", "tuple"]))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not a non-empty tuple"):
            await b.recv()
    finally:
        b.close()
        ours.close()
