"""Steer each client to one worker by its source address (SO_REUSEPORT + classic BPF).

With ``--workers N`` every worker binds the same L4 listeners with
SO_REUSEPORT. The kernel's default choice hashes the whole 4-tuple, so two
connections from one client usually land in different workers, and
per-worker state (ClientIP session affinity, a UDP flow's endpoint,
least-connections counts) would split. This program makes the kernel pick
the socket by the client's address alone: the IPv4 source address, or the
last 32 bits of the IPv6 one, modulo N. When a worker dies its socket leaves
the group; an index past the end makes the kernel fall back to its hash, so
nothing is dropped while it restarts.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h
_SKF_NET_OFF = -0x100000  # loads relative to the network header, not the payload

# classic BPF opcodes (linux/filter.h)
_LD_B_ABS, _LD_W_ABS = 0x30, 0x20
_RSH_K, _MOD_K = 0x74, 0x94
_JEQ_K, _JA = 0x15, 0x05
_RET_A = 0x16


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def program(groups: int) -> bytes:
    """The filter: ``return source_address % groups`` for IPv4 and IPv6 packets."""
    if groups < 1:
        raise ValueError("groups must be at least 1")
    return b"".join(
        (
            _ins(_LD_B_ABS, 0, 0, _SKF_NET_OFF + 0),  # A = first byte of the IP header
            _ins(_RSH_K, 0, 0, 4),  # A = IP version
            _ins(_JEQ_K, 0, 2, 4),  # IPv4? fall through, else skip to the IPv6 load
            _ins(_LD_W_ABS, 0, 0, _SKF_NET_OFF + 12),  # IPv4 source address
            _ins(_JA, 0, 0, 1),
            _ins(_LD_W_ABS, 0, 0, _SKF_NET_OFF + 20),  # low 32 bits of the IPv6 source
            _ins(_MOD_K, 0, 0, groups),
            _ins(_RET_A, 0, 0, 0),
        )
    )


def steer_by_source(sock: socket.socket, groups: int) -> None:
    """Attach the filter to ``sock``'s SO_REUSEPORT group (one socket per worker).

    Raises OSError where the kernel refuses it; the group then keeps the
    kernel's own hash, which is correct but splits a client across workers.
    """
    code = program(groups)
    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
