"""The access log: one line per request, text or JSON, written in batches.

A request's line says who asked (client address), what (method, host,
target), what came of it (status, body bytes sent, the Ingress, the
endpoint) and how long it took (total and upstream seconds), plus the
X-Request-ID that went upstream. Lines gather in memory and go out with
one ``write`` when 320 are waiting (about 64 KiB) or when
:meth:`AccessLog.flush` runs (the server's sweeper calls it twice a
second), as nginx's ``buffer=`` and ``flush=`` do; the logging module
would cost more per line than the proxy spends on the request. The
timestamp's text is made once a second and its milliseconds come from a
table. Timestamps have the daemon log's format
(:mod:`netplane.logs`): UTC, RFC 3339, milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

from netplane.ingress.stats import route_name

from netplane.addresses import hostport

log = logging.getLogger("netplane.ingress")

FORMATS = ("text", "json")
#: Lines formatted and written together (about 64 KiB of text lines).
_BATCH_LINES = 320
_NONE = object()
_MILLIS = [b".%03dZ" % ms for ms in range(1000)]
_LINE = b'%s %s "%s %s %s" %d %d host=%s ingress=%s upstream=%s rt=%.6f urt=%.6f id=%s'
# the same arguments, with b"" for the upstream time: "urt=-"
_LINE_NO_UPSTREAM = _LINE.replace(b"urt=%.6f", b"urt=-%s")


class AccessLog:
    """Buffered access-log lines to a file descriptor (stdout, or a file opened for append)."""

    def __init__(self, target: str = "stdout", fmt: str = "text") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"access log format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.target = target
        if target in ("stdout", "-"):
            self._fd = 1
            self._own = False
        elif target == "stderr":
            self._fd = 2
            self._own = False
        else:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._own = True
        self._lines: list[bytes] = []
        self._stamp_ms = -1
        self._stamp_b = b""
        self._last_ingress: Any = _NONE
        self._ingress_b = b"-"
        self._sec = -1
        self._offset_ms = 0
        self._wall = -1
        self._stamp = b""
        self._names: dict[Any, bytes] = {}
        self._quotes: dict[bytes, bytes] = {}
        self._ups: dict[tuple[str, int], bytes] = {}
        #: lines that could not be written (a full disk, a full non-blocking pipe)
        self.dropped_lines = 0
        self._dropping = False  # said once in the log, until a write succeeds again

    def _stamp_for(self, now: float) -> bytes:
        """The wall-clock time of monotonic ``now``, as the daemon's log writes it."""
        mono_ms = int(now * 1000)
        if mono_ms // 1000 != self._sec:  # once a second: re-anchor the monotonic clock
            self._sec = mono_ms // 1000
            self._offset_ms = round((time.time() - time.monotonic()) * 1000)
        sec, ms = divmod(mono_ms + self._offset_ms, 1000)
        if sec != self._wall:
            self._wall = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        return self._stamp + _MILLIS[ms]

    def _ingress(self, key: Any) -> bytes:
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = route_name(key).encode() if key else b"-"
            if len(self._names) > 10000:
                self._names.clear()
        return name

    # Small caches: the same paths, hosts and endpoints come back request after request.

    def _quoted(self, text: bytes) -> bytes:
        q = self._quotes.get(text)
        if q is None:
            if len(self._quotes) > 4096:
                self._quotes.clear()
            q = self._quotes[text] = _quote(text)
        return q

    def _upstream(self, up: tuple[str, int] | None) -> bytes:
        if up is None:
            return b"-"
        u = self._ups.get(up)
        if u is None:
            if len(self._ups) > 4096:
                self._ups.clear()
            u = self._ups[up] = hostport(*up).encode()
        return u

    def record(self, conn: Any, ex: Any, now: float) -> None:
        """Add the line for exchange ``ex`` of client connection ``conn``; ``now`` is monotonic.

        The line is made at once (holding exchanges for a batch would keep
        them alive long enough for the garbage collector to promote them).
        """
        if self.fmt == "json":
            line = self._json(conn.client_ip_b, ex, now)
        else:
            ms = int(now * 1000)
            if ms != self._stamp_ms:
                self._stamp_ms = ms
                self._stamp_b = self._stamp_for(now)
            head = ex.head
            ingress = getattr(ex.decision, "ingress", None)
            if ingress is not self._last_ingress:
                self._last_ingress = ingress
                self._ingress_b = self._ingress(ingress)
            target = ex.target
            host = head.host
            up = ex.upstream_addr
            t_up = ex.t_up
            # One format per line: the upstream time has its own template.
            line = (_LINE if t_up else _LINE_NO_UPSTREAM) % (
                self._stamp_b,
                conn.client_ip_b,
                ex.method,
                self._quotes.get(target) or self._quoted(target),
                b"HTTP/2.0" if conn.http2 else b"HTTP/1.0" if ex.http10 else b"HTTP/1.1",
                ex.status,
                ex.bytes_out,
                (self._quotes.get(host) or self._quoted(host)) if host else b"-",
                self._ingress_b,
                self._ups.get(up) or self._upstream(up),
                now - ex.t0,
                now - t_up if t_up else b"",
                head.request_id or b"-",
            )
            if ex.grpc_status >= 0:
                line += b" grpc=%d" % ex.grpc_status
        lines = self._lines
        lines.append(line)
        if len(lines) >= _BATCH_LINES:
            self.flush()

    def _json(self, ip: bytes, ex: Any, now: float) -> bytes:
        d = ex.decision
        ingress = getattr(d, "ingress", None)
        up = ex.upstream_addr
        rid = ex.head.request_id
        return json.dumps(
            {
                "ts": self._stamp_for(now).decode(),
                "client": ip.decode(),
                "method": ex.method.decode("latin-1"),
                "host": ex.head.host.decode("latin-1") if ex.head.host is not None else "",
                "path": ex.target.decode("latin-1"),
                "status": ex.status,
                "bytes": ex.bytes_out,
                "ingress": route_name(ingress) if ingress else None,
                "upstream": hostport(*up) if up else None,
                "duration": round(now - ex.t0, 6),
                "upstream_duration": round(now - ex.t_up, 6) if ex.t_up else None,
                "request_id": rid.decode("latin-1") if rid else None,
                "protocol": "HTTP/2.0"
                if ex.client.http2
                else "HTTP/1.0"
                if ex.http10
                else "HTTP/1.1",
                "grpc_status": ex.grpc_status if ex.grpc_status >= 0 else None,
            },
            ensure_ascii=False,
        ).encode()

    def flush(self) -> None:
        """Write the waiting lines with one ``write``."""
        lines = self._lines
        if not lines:
            return
        self._lines = []
        data = b"\n".join(lines) + b"\n"
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError as e:
            # A full disk (ENOSPC), or a non-blocking stdout that is full: lose the rest
            # of this batch, not the loop; count the lines lost, say so once.
            self.dropped_lines += data.count(b"\n")
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "access log %s: cannot write (%s); dropping lines until it can "
                    "(counted in netplane_access_log_dropped_lines_total)",
                    self.target,
                    os.strerror(e.errno) if e.errno else e,
                )
            return
        if self._dropping:
            self._dropping = False
            log.info(
                "access log %s: writing again, %d lines dropped so far",
                self.target,
                self.dropped_lines,
            )

    def metrics(self) -> Any:
        """The lines dropped, as a Prometheus family."""
        from prometheus_client.core import CounterMetricFamily

        return CounterMetricFamily(
            "netplane_access_log_dropped_lines",
            "Access-log lines lost because the log could not be written (full disk or pipe)",
            value=self.dropped_lines,
        )

    def close(self) -> None:
        self.flush()
        if self._own:
            os.close(self._fd)
            self._own = False


_UNSAFE = re.compile(rb'[^\x21-\x7e]|["\\]')


def _quote(text: bytes) -> bytes:
    """One line per request whatever the client sent: quotes, spaces, controls escaped."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda m: b"\\x%02x" % m.group(0)[0], text)
