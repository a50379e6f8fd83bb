"""Ports on this host: a free one for a ``:0`` listener, and a claim on a given one.

``netplane run --workers N`` binds every ingress and DNS listener once per
worker, with SO_REUSEPORT. The kernel lets any other socket with that option
(same user) join the group, so a second netplane on the same ports would
silently take half the connections, and a port another program holds would
only show as workers failing to bind. The owner process therefore claims
each listener before it starts a worker:

1. A lock: an abstract Unix socket named after the listener
   (``\\0netplane/TCP/127.0.0.1/8080``). Binding a name is atomic, the kernel
   frees it when the process dies, and names live per network namespace,
   as ports do. Two netplanes that start together cannot both pass; the
   loser learns the winner's pid from SO_PEERCRED.
2. A probe: a bind without SO_REUSEPORT, closed at once. It fails if any
   socket holds the port, with SO_REUSEPORT or without.

Between the probe and the workers' binds another program could still take
the port. Without SO_REUSEPORT, the workers' binds fail, and the owner stops
with the line the worker reports (see :mod:`netplane.supervisor`). With
SO_REUSEPORT and the same user, in that gap, it goes unnoticed: only a
netplane-aware program does that, and a netplane takes the lock first.

Sockets that workers open while they run (a Gateway's ports) cannot be
claimed by the owner beforehand: :func:`claim_in_group` lets the first
worker take the lock and its siblings share it.

When a claim fails, :func:`holders` names the process from /proc, if this
process may see it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import sys
from dataclasses import dataclass

from netplane.addresses import hostport
from netplane.errors import ConfigError


def free_port(host: str = "127.0.0.1", *, udp_too: bool = False) -> int:
    """A TCP port free on ``host``; with ``udp_too``, free for UDP as well (DNS binds both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = t.getsockname()[1]
            if not udp_too:
                return port
            with socket.socket(family, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no port free for both UDP and TCP on {host}")


@dataclass(frozen=True, slots=True)
class Listener:
    """One socket a plane will bind: what it is for, where, and over which protocol."""

    name: str  # for the error line: "ingress HTTP", "DNS"
    host: str
    port: int
    proto: str  # "TCP" or "UDP"

    def __str__(self) -> str:
        return f"{hostport(self.host, self.port)}/{self.proto}"


class PortTaken(ConfigError):
    """A listener's port is held by another process; the message is one line."""

    def __init__(self, listener: Listener, why: str, *, in_use: bool = True) -> None:
        super().__init__(f"{listener.name}: cannot listen on {listener}: {why}")
        self.listener = listener
        self.in_use = in_use  # another socket holds the port (else e.g. no such address)


class Claims:
    """The locks held on listeners; :meth:`release` frees them (so does exiting)."""

    def __init__(self) -> None:
        self._locks: list[socket.socket] = []

    def claim(self, listener: Listener) -> None:
        """Lock ``listener`` for this process and check that no socket holds its port.

        Raises :class:`PortTaken`, naming the holder when it can be found.
        """
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(_lock_name(listener))
            lock.listen(1)  # so that a loser can connect and read our pid
        except OSError as e:
            lock.close()
            if e.errno != errno.EADDRINUSE:
                raise PortTaken(listener, e.strerror or str(e)) from None
            pid = _lock_holder(listener)
            who = f"pid {pid}: {_cmdline(pid)}" if pid else "its pid unknown"
            raise PortTaken(listener, f"another netplane holds it ({who})") from None
        taken = check(listener)
        if taken is not None:
            lock.close()
            raise taken
        self._locks.append(lock)

    def claim_all(self, listeners: list[Listener]) -> None:
        """Claim every one of ``listeners``, or none: a failure frees the ones just taken."""
        before = len(self._locks)
        try:
            for listener in listeners:
                self.claim(listener)
        except BaseException:
            for lock in self._locks[before:]:
                lock.close()
            del self._locks[before:]
            raise

    def release(self) -> None:
        for lock in self._locks:
            lock.close()
        self._locks.clear()


def claim_in_group(listener: Listener) -> socket.socket | None:
    """Claim a listener that this process's worker group shares (SO_REUSEPORT).

    For sockets a worker opens while it runs (a Gateway's ports), where the
    owner cannot claim them first. The first worker to get here takes the
    lock and probes the port (returned: the lock, to close when the socket
    closes); a sibling worker, or the owner, holding the lock means the port
    is this netplane's already (None). Any other holder raises
    :class:`PortTaken`, as :meth:`Claims.claim` does.
    """
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(_lock_name(listener))
        lock.listen(1)
    except OSError as e:
        lock.close()
        if e.errno != errno.EADDRINUSE:
            raise PortTaken(listener, e.strerror or str(e)) from None
        pid = _lock_holder(listener)
        if pid is not None and pid in _group():
            return None
        who = f"pid {pid}: {_cmdline(pid)}" if pid else "its pid unknown"
        raise PortTaken(listener, f"another netplane holds it ({who})") from None
    taken = check(listener)
    if taken is not None:
        lock.close()
        raise taken
    return lock


def _group() -> set[int]:
    """This process, its parent (a worker's owner) and the parent's other children."""
    me, owner = os.getpid(), os.getppid()
    out = {me, owner}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _parent_of(int(entry)) == owner:
                out.add(int(entry))
    return out


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def check(listener: Listener) -> PortTaken | None:
    """:func:`probe` ``listener``: if its port is in use, the error, naming the holder."""
    problem = probe(listener)
    if problem is None:
        return None
    why = problem.strerror or str(problem)
    if problem.errno == errno.EADDRINUSE:
        found = holders(listener)
        if found:
            why += " (held by " + "; ".join(f"pid {p}: {c}" for p, c in found) + ")"
    return PortTaken(listener, why, in_use=problem.errno == errno.EADDRINUSE)


def probe(listener: Listener) -> OSError | None:
    """Bind ``listener``'s address without SO_REUSEPORT and close at once: the error, if any.

    TCP sets SO_REUSEADDR as the planes' servers do, so that connections of
    a previous run still in TIME_WAIT do not count as a holder.
    """
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    kind = socket.SOCK_STREAM if listener.proto == "TCP" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((listener.host, listener.port))
        except OSError as e:
            return e
    return None


def holders(listener: Listener, limit: int = 3) -> list[tuple[int, str]]:
    """Up to ``limit`` (pid, command line) of processes holding a socket on ``listener``'s port.

    From /proc/net/{tcp,udp}{,6} (sockets bound to the port on the same
    address or a wildcard), then each process's fd table. Empty when the
    holder is in a namespace or under a user this process cannot see.
    """
    inodes = _socket_inodes(listener)
    if not inodes:
        return []
    found: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            held = any(os.readlink(f"/proc/{entry}/fd/{fd}") in inodes for fd in fds)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if held:
            found.append((int(entry), _cmdline(int(entry))))
            if len(found) >= limit:
                break
    return found


# TCP states in /proc/net/tcp that hold a port: LISTEN, and CLOSE (bound, not listening).
_HOLDING_TCP_STATES = {"0A", "07"}


def _socket_inodes(listener: Listener) -> set[str]:
    table = listener.proto.lower()
    want = socket.inet_pton(
        socket.AF_INET6 if ":" in listener.host else socket.AF_INET, listener.host
    )
    inodes = set()
    for suffix in ("", "6"):
        try:
            with open(f"/proc/net/{table}{suffix}") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, port = fields[1].split(":")
            if int(port, 16) != listener.port or fields[9] == "0":
                continue
            if table == "tcp" and fields[3] not in _HOLDING_TCP_STATES:
                continue
            raw = _proc_address(addr)
            if raw == want or not any(raw) or not any(want):
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _proc_address(hexaddr: str) -> bytes:
    """An address as /proc/net prints it (32-bit words in host order) as network bytes."""
    raw = bytes.fromhex(hexaddr)
    if sys.byteorder == "big":
        return raw
    return b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))


def _lock_name(listener: Listener) -> bytes:
    return f"\0netplane/{listener.proto}/{listener.host}/{listener.port}".encode()


def _lock_holder(listener: Listener) -> int | None:
    """The pid of the process that holds ``listener``'s lock (from SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(_lock_name(listener))
            pid, _uid, _gid = struct.unpack(
                "3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            )
        except OSError:
            return None
    return pid or None


def _cmdline(pid: int, width: int = 80) -> str:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            # one line, whatever the arguments hold (python -c with newlines)
            text = " ".join(fh.read().replace(b"\0", b" ").decode(errors="replace").split())
        if text:
            return text if len(text) <= width else text[: width - 3] + "..."
    return "?"
