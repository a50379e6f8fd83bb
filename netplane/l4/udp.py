"""The UDP relay: one flow per client address, replies sent from the service address.

Strategy:

- Each frontend is one datagram endpoint bound to the service address
  (:class:`UdpListener`, an ``asyncio.DatagramProtocol``). A datagram from a
  new client ``(ip, port)`` opens a *flow*: ``route.pick(ip)`` chooses a
  target and a non-blocking UDP socket is ``connect()``-ed to it. Replies
  read from that socket go back through the *listening* transport, so the
  client sees them come from the address and port it sent to, as a
  stateful NAT would do it.
- Node mode binds one wildcard socket per port instead of one per service
  address (:class:`SharedUdpListener`): ``IP_PKTINFO``/``IPV6_PKTINFO``
  tell it the address each datagram was sent to, that address picks the
  route, and replies carry it back as their source (``sendmsg`` with the
  same ancillary data). Its flows are keyed by (that address, client).
- The upstream socket is a plain socket watched with ``loop.add_reader``
  rather than a second asyncio endpoint: opening a flow stays synchronous
  inside ``datagram_received``, so the first datagram goes out at once, with
  no task per flow and no queue for datagrams that arrive while an endpoint
  is being set up. ``connect()`` makes the kernel filter replies to the one
  target, and a refused port (ICMP port unreachable) surfaces as
  ``ConnectionRefusedError``: the target is reported with ``route.failed()``
  and the flow closed, so the client's next datagram picks again.
- Before relaying on an existing flow, the listener checks that its target
  is still ``usable()`` under the listener's current route; if not (the
  endpoint left, or the table was swapped with ``listener.route = ...``), the
  flow is closed and the datagram opens a new one with a fresh pick.
- Idle flows are removed by one coarse sweep per :class:`UdpProxy`, a
  ``call_later`` handle that ticks four times per ``flow_idle_timeout`` while
  any flow exists; traffic only sets a flag on the flow. A flow goes
  between 1 and 1.25 timeouts after its last datagram.
- The flow table is bounded by ``max_flows`` over the whole proxy. A new
  client's datagram beyond it is dropped and counted
  (``dropped_overflow``), with a warning at most once per second. Every
  other failure (no route, no target, a socket error, a full send buffer)
  drops the datagram and counts it too; UDP is allowed to lose datagrams,
  the proxy is not allowed to crash.
- ``route.opened()`` and ``route.closed()`` run once per flow, on the route
  that picked its target.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netplane.config import DEFAULTS
from netplane.l4.relay_shared import IDLE_TICKS, fmt_addr

if TYPE_CHECKING:
    from netplane.l4 import Route, Target

log = logging.getLogger("netplane.l4.udp")

#: datagrams read from one upstream socket per readiness callback (fairness)
_READS_PER_WAKEUP = 64
#: largest UDP payload over IPv4/IPv6 without jumbograms
_MAX_DATAGRAM = 65535
#: the listening transport's queued replies beyond which replies are dropped
_MAX_QUEUED = 1 << 20
_LOG_EVERY = 1.0

#: ancillary data for ``sendmsg``: (level, type, data) items
Cmsg = Sequence[tuple[int, int, bytes]]


@dataclass(frozen=True, slots=True)
class UdpSettings:
    """Flow lifetime and the bound on the flow table."""

    #: seconds without a datagram either way before a flow is removed
    flow_idle_timeout: float = DEFAULTS.udp_idle_seconds
    #: flows over all listeners of one UdpProxy; a new client beyond it is dropped
    max_flows: int = 65536

    def __post_init__(self) -> None:
        if self.flow_idle_timeout <= 0:
            raise ValueError("UdpSettings: flow_idle_timeout must be positive")
        if self.max_flows < 1:
            raise ValueError("UdpSettings: max_flows must be at least 1")


class _Flow:
    """One client address relayed to one target over a connected socket."""

    __slots__ = (
        "busy", "client", "closed", "cmsg", "fd", "key", "listener", "quiet", "route", "sock",
        "target",
    )  # fmt: skip

    def __init__(
        self,
        listener: UdpListener,
        key: Any,
        client: Any,
        route: Route,
        target: Target,
        sock: socket.socket,
        cmsg: Cmsg = (),
    ) -> None:
        self.listener = listener
        self.key = key
        self.client = client
        # ancillary data that makes a shared socket's replies come from the service address
        self.cmsg = cmsg
        self.route = route
        self.target = target
        self.sock = sock
        self.fd = sock.fileno()
        self.busy = True
        self.quiet = 0
        self.closed = False

    def send(self, data: bytes) -> None:
        self.busy = True
        try:
            self.route.counts.to_endpoint += self.sock.send(data)
        except BlockingIOError:
            self.listener._proxy.dropped_errors += 1  # send buffer full: UDP may drop
        except ConnectionRefusedError:
            # An earlier datagram drew an ICMP port unreachable.
            self.listener._proxy.dropped_errors += 1
            self.listener._refused(self)
        except OSError as e:
            self.listener._proxy.dropped_errors += 1
            self.listener._proxy._log_error("send to", self.target, e)

    def readable(self) -> None:
        """The upstream socket has replies: send them to the client from the service address."""
        sock = self.sock
        listener = self.listener
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                listener._refused(self)
                return
            except OSError as e:
                listener._proxy._log_error("receive from", self.target, e)
                listener._close_flow(self)
                return
            self.busy = True
            listener._reply(data, self)


class UdpListener(asyncio.DatagramProtocol):
    """One bound datagram socket of a :class:`UdpProxy` and the flows of its clients.

    ``route`` may be swapped at any time with a Route or a callable returning
    one (or None); new flows use the new value, and existing flows whose
    target it no longer finds ``usable()`` move on their next datagram.
    """

    def __init__(
        self,
        proxy: UdpProxy,
        route: Route | Callable[[], Route | None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._proxy = proxy
        self._loop = loop
        self._transport: asyncio.DatagramTransport | None = None
        self._flows: dict[Any, _Flow] = {}
        self._static: Route | None = None
        self._source: Any = None
        self.route = route

    # -- the route --------------------------------------------------------------

    @property
    def route(self) -> Any:
        """The Route of this frontend, or a callable returning the current one."""
        return self._source

    @route.setter
    def route(self, value: Any) -> None:
        self._source = value
        self._static = value if hasattr(value, "pick") else None

    def _current_route(self) -> Route | None:
        if self._static is not None:
            return self._static
        try:
            return self._source()
        except Exception:
            log.exception("UDP %s: finding the route failed", fmt_addr(self.sockname))
            return None

    # -- introspection ----------------------------------------------------------

    @property
    def sockname(self) -> Any:
        if self._transport is None:
            return None
        return self._transport.get_extra_info("sockname")

    @property
    def flows(self) -> int:
        return len(self._flows)

    @property
    def closed(self) -> bool:
        return self._transport is None

    # -- asyncio.DatagramProtocol -----------------------------------------------

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]  # a datagram endpoint gets a DatagramTransport
        self._transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._relay(data, addr, addr, self._current_route(), ())

    def _relay(self, data: bytes, key: Any, client: Any, route: Route | None, cmsg: Cmsg) -> None:
        flow = self._flows.get(key)
        if flow is not None:
            if route is not None:
                try:
                    usable = route.usable(flow.target)
                except Exception:
                    log.exception("UDP %s: route.usable failed", fmt_addr(self.sockname))
                    usable = False
                if usable:
                    flow.send(data)
                    return
                route.counts.flows_moved += 1
            self._close_flow(flow)  # the target left: this datagram picks again
        flow = self._open_flow(key, client, route, cmsg)
        if flow is not None:
            flow.send(data)

    def _reply(self, data: bytes, flow: _Flow) -> None:
        transport = self._transport
        if transport is None or transport.get_write_buffer_size() > _MAX_QUEUED:  # type: ignore[attr-defined]  # asyncio's and uvloop's have it, typeshed lacks it
            self._proxy.dropped_errors += 1
            return
        transport.sendto(data, flow.client)
        flow.route.counts.to_client += len(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors about replies sent to clients (a client port gone): nothing to do.
        log.debug("UDP %s: %s", fmt_addr(self.sockname), exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.warning("UDP %s: listener closed: %s", fmt_addr(self.sockname), exc)
        self._transport = None
        self._close_all()
        self._proxy._listeners.discard(self)

    # -- flows ------------------------------------------------------------------

    def _open_flow(self, key: Any, client: Any, route: Route | None, cmsg: Cmsg) -> _Flow | None:
        proxy = self._proxy
        if proxy._nflows >= proxy.settings.max_flows:
            proxy._overflow()
            return None
        target = None
        if route is not None:
            try:
                target = route.pick(client[0])
            except Exception:
                log.exception("UDP %s: choosing an endpoint failed", fmt_addr(self.sockname))
        if route is None or target is None:
            proxy.dropped_no_target += 1
            return None
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as e:
            proxy.dropped_errors += 1
            proxy._log_error("open a socket for", target, e)
            return None
        try:
            sock.setblocking(False)
            sock.connect((target.address, target.port))
        except OSError as e:
            sock.close()
            proxy.dropped_errors += 1
            proxy._log_error("connect to", target, e)
            if e.errno in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH):
                route.failed(target)
            return None
        flow = _Flow(self, key, client, route, target, sock, cmsg)
        self._loop.add_reader(flow.fd, flow.readable)
        self._flows[key] = flow
        proxy._nflows += 1
        proxy._arm_sweep()
        try:
            route.opened(target)
        except Exception:
            log.exception("UDP %s: route.opened failed", fmt_addr(self.sockname))
        return flow

    def _close_flow(self, flow: _Flow) -> None:
        if flow.closed:
            return
        flow.closed = True
        if self._flows.get(flow.key) is flow:
            del self._flows[flow.key]
        self._proxy._nflows -= 1
        with contextlib.suppress(Exception):  # the loop may be closing
            self._loop.remove_reader(flow.fd)
        flow.sock.close()
        try:
            flow.route.closed(flow.target)
        except Exception:
            log.exception("UDP %s: route.closed failed", fmt_addr(self.sockname))

    def _refused(self, flow: _Flow) -> None:
        log.debug(
            "UDP %s: %s refused the flow of %s", fmt_addr(self.sockname), flow.target, flow.client
        )
        try:
            flow.route.failed(flow.target)
        except Exception:
            log.exception("UDP %s: route.failed failed", fmt_addr(self.sockname))
        self._close_flow(flow)

    def _close_all(self) -> None:
        for flow in list(self._flows.values()):
            self._close_flow(flow)

    def _sweep(self) -> None:
        for flow in list(self._flows.values()):
            if flow.busy:
                flow.busy = False
                flow.quiet = 0
            else:
                flow.quiet += 1
                if flow.quiet >= IDLE_TICKS:
                    self._close_flow(flow)

    def close(self) -> None:
        """Close the socket and every flow of this listener."""
        transport, self._transport = self._transport, None
        self._close_all()
        self._proxy._listeners.discard(self)
        if transport is not None:
            transport.close()


def _no_route() -> Route | None:
    """The route of a :class:`SharedUdpListener` as a whole: none (it resolves per address)."""
    return None


class SharedUdpListener(UdpListener):
    """One wildcard datagram socket serving every frontend on its port (node mode).

    ``resolve(address, port)`` gives the route for the address a datagram
    was sent to (read from ``IP_PKTINFO``/``IPV6_PKTINFO``), or None. The
    socket is read with ``recvmsg`` from a reader callback, because asyncio's
    datagram transports do not hand out ancillary data.
    """

    def __init__(
        self,
        proxy: UdpProxy,
        resolve: Callable[[str, int], Route | None],
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # No route of its own: each datagram's destination picks one through resolve.
        super().__init__(proxy, _no_route, loop)
        self._resolve = resolve
        self._sock: socket.socket | None = sock
        self._v6 = sock.family == socket.AF_INET6
        self._port = sock.getsockname()[1]
        # one reply's ancillary data per service address, built once
        self._cmsgs: dict[str, Cmsg] = {}
        loop.add_reader(sock.fileno(), self._readable)

    @property
    def sockname(self) -> Any:
        return None if self._sock is None else self._sock.getsockname()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def _readable(self) -> None:
        sock = self._sock
        for _ in range(_READS_PER_WAKEUP):
            if sock is None:
                return
            try:
                data, ancdata, _flags, client = sock.recvmsg(_MAX_DATAGRAM, _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # an ICMP error about an earlier reply to a client: nothing to do
                log.debug("UDP %s: %s", fmt_addr(self.sockname), e)
                continue
            address = _destination(ancdata)
            if address is None:
                self._proxy.dropped_no_target += 1
                continue
            try:
                route = self._resolve(address, self._port)
            except Exception:
                log.exception("UDP %s: finding the route failed", fmt_addr(self.sockname))
                route = None
            cmsg = self._cmsgs.get(address)
            if cmsg is None:
                cmsg = self._cmsgs[address] = _source_cmsg(address, self._v6)
            self._relay(data, (address, client), client, route, cmsg)

    def _reply(self, data: bytes, flow: _Flow) -> None:
        sock = self._sock
        if sock is None:
            self._proxy.dropped_errors += 1
            return
        try:
            flow.route.counts.to_client += sock.sendmsg([data], flow.cmsg, 0, flow.client)
        except (BlockingIOError, InterruptedError):
            self._proxy.dropped_errors += 1  # send buffer full: UDP may drop
        except OSError as e:
            self._proxy.dropped_errors += 1
            log.debug("UDP %s: reply to %s: %s", fmt_addr(self.sockname), flow.client, e)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._close_all()
        self._proxy._listeners.discard(self)
        if sock is not None:
            with contextlib.suppress(Exception):  # the loop may be closing
                self._loop.remove_reader(sock.fileno())
            sock.close()


# Linux's IP_PKTINFO; Python < 3.12 does not name it.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_ANC_SIZE = socket.CMSG_SPACE(32)


def _destination(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """The address a datagram was sent to, from its PKTINFO ancillary data."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            return socket.inet_ntop(socket.AF_INET, data[8:12])
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            # struct in6_pktinfo { in6_addr addr; unsigned int ifindex; }
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None


def _source_cmsg(address: str, v6: bool) -> Cmsg:
    """Ancillary data that sends a reply from ``address``."""
    if v6:
        info = socket.inet_pton(socket.AF_INET6, address) + struct.pack("=I", 0)
        return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)]
    info = struct.pack("=i", 0) + socket.inet_pton(socket.AF_INET, address) + bytes(4)
    return [(socket.IPPROTO_IP, _IP_PKTINFO, info)]


class UdpProxy:
    """Owns the UDP listeners and their flows, with one flow bound and one idle sweep."""

    def __init__(self, settings: UdpSettings | None = None) -> None:
        self.settings = settings or UdpSettings()
        self._listeners: set[UdpListener] = set()
        self._nflows = 0
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._overflow_logged = float("-inf")
        self._error_logged = float("-inf")
        # counters, for metrics
        #: datagrams from new clients dropped because the flow table was full
        self.dropped_overflow = 0
        #: datagrams dropped because there was no route or no endpoint
        self.dropped_no_target = 0
        #: datagrams dropped on socket errors or full buffers
        self.dropped_errors = 0

    @property
    def flows(self) -> int:
        """Flows open now, over all listeners."""
        return self._nflows

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    async def listen(
        self,
        host: str,
        port: int,
        route: Route | Callable[[], Route | None],
        *,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
    ) -> UdpListener:
        """Bind ``host:port`` (or use ``sock``) for ``route``: a Route or a callable returning one."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        listener = UdpListener(self, route, loop)
        if sock is not None:
            await loop.create_datagram_endpoint(lambda: listener, sock=sock)
        else:
            await loop.create_datagram_endpoint(
                lambda: listener, local_addr=(host, port), reuse_port=reuse_port or None
            )
        self._listeners.add(listener)
        return listener

    def listen_shared(
        self,
        family: socket.AddressFamily,
        port: int,
        resolve: Callable[[str, int], Route | None],
        *,
        sock: socket.socket | None = None,
    ) -> SharedUdpListener:
        """Bind the wildcard address of ``family`` on ``port`` for every frontend on that port
        (or use ``sock``, already bound there)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        bound = sock is not None
        sock = sock or socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                if not bound:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                if not bound:
                    sock.bind(("::", port))
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
                if not bound:
                    sock.bind(("0.0.0.0", port))
            listener = SharedUdpListener(self, resolve, sock, loop)
        except BaseException:
            sock.close()
            raise
        self._listeners.add(listener)
        return listener

    async def close(self) -> None:
        """Close every listener and flow."""
        for listener in list(self._listeners):
            listener.close()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        await asyncio.sleep(0)  # let the transports run connection_lost

    # -- internals ----------------------------------------------------------------

    def _arm_sweep(self) -> None:
        if self._sweep_handle is None and self._loop is not None:
            self._sweep_handle = self._loop.call_later(
                self.settings.flow_idle_timeout / IDLE_TICKS, self._sweep
            )

    def _sweep(self) -> None:
        self._sweep_handle = None
        for listener in list(self._listeners):
            listener._sweep()
        if self._nflows:
            self._arm_sweep()

    def _overflow(self) -> None:
        self.dropped_overflow += 1
        now = self._loop.time() if self._loop is not None else 0.0
        if now - self._overflow_logged >= _LOG_EVERY:
            self._overflow_logged = now
            log.warning(
                "UDP flow table full (%d flows): dropping datagrams of new clients (%d so far)",
                self._nflows,
                self.dropped_overflow,
            )

    def _log_error(self, what: str, target: Any, e: OSError) -> None:
        now = self._loop.time() if self._loop is not None else 0.0
        if now - self._error_logged >= _LOG_EVERY:
            self._error_logged = now
            log.warning(
                "UDP: cannot %s %s: %s",
                what,
                fmt_addr((target.address, target.port)),
                e.strerror or e,
            )
