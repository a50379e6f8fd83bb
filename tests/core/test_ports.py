"""netplane/ports.py alone: claims between two owners, the probe, and naming a holder."""

from __future__ import annotations

import os
import socket

import pytest

from netplane.ports import Claims, Listener, PortTaken, check, free_port
from netplane.testing.ports import held_elsewhere


def test_a_second_claim_on_a_listener_names_the_first_owner_until_it_lets_go():
    port = free_port()
    web = Listener("ingress HTTP", "127.0.0.1", port, "TCP")
    first, second = Claims(), Claims()
    first.claim(web)
    try:
        with pytest.raises(PortTaken) as e:
            second.claim(web)
        assert str(e.value).startswith(
            f"ingress HTTP: cannot listen on 127.0.0.1:{port}/TCP:"
            f" another netplane holds it (pid {os.getpid()}: "
        )
        assert "\n" not in str(e.value)
    finally:
        first.release()
    second.claim(web)  # released: free again
    second.release()


def test_claim_all_takes_none_when_one_is_held():
    port = free_port(udp_too=True)
    udp = Listener("DNS", "127.0.0.1", port, "UDP")
    tcp = Listener("DNS", "127.0.0.1", port, "TCP")
    other, claims = Claims(), Claims()
    other.claim(tcp)
    try:
        with pytest.raises(PortTaken):
            claims.claim_all([udp, tcp])
        other.claim(udp)  # the UDP lock taken on the way was let go
    finally:
        other.release()
        claims.release()


def test_a_free_port_passes_and_a_bound_one_does_not():
    port = free_port(udp_too=True)
    for proto in ("TCP", "UDP"):
        assert check(Listener("x", "127.0.0.1", port, proto)) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        taken = check(Listener("DNS", "127.0.0.1", port, "UDP"))
        assert taken is not None and taken.in_use
        assert str(taken) == f"DNS: cannot listen on 127.0.0.1:{port}/UDP: Address already in use"
        assert check(Listener("x", "127.0.0.1", port, "TCP")) is None  # the other protocol


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "where", "shown"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", "0.0.0.0", "127.0.0.1"),  # a wildcard holds every address
        pytest.param(
            "::1", "::1", "[::1]", marks=pytest.mark.skipif(not ipv6_loopback(), reason="no ::1")
        ),
    ],
)
def test_the_holder_in_another_process_is_named(host, where, shown):
    port = free_port(host)
    with held_elsewhere(where, port) as pid:
        taken = check(Listener("ingress HTTP", host, port, "TCP"))
        assert taken is not None
        assert str(taken).startswith(
            f"ingress HTTP: cannot listen on {shown}:{port}/TCP: Address already in use"
            f" (held by pid {pid}: "
        )
        assert "\n" not in str(taken)  # the holder's multi-line command, on one line
