"""The access log: one line per request, text or JSON, written in batches.

A request's line says who asked (client address), what (method, host,
target), what came of it (status, body bytes sent, the Ingress, the
endpoint) and how long it took (total and upstream seconds), plus the
X-Request-ID that went upstream. Lines gather in memory and go out with
one ``write`` when 64 KiB are waiting or when :meth:`AccessLog.flush` runs
(the server's sweeper calls it twice a second), as nginx's ``buffer=`` and
``flush=`` do; the logging module would cost more per line than the proxy
spends on the request. Timestamps have the daemon log's format
(:mod:`netplane.logs`): UTC, RFC 3339, milliseconds.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

FORMATS = ("text", "json")
_BATCH = 64 * 1024


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
        self._lines: list[str] = []
        self._size = 0
        self._sec = -1
        self._stamp = ""
        self.lines_written = 0

    def _now(self) -> str:
        t = time.time()
        sec = int(t)
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._stamp}.{int((t - sec) * 1000):03d}Z"

    def record(self, conn: Any, ex: Any, now: float) -> None:
        """Add the line for exchange ``ex`` of client connection ``conn``."""
        d = ex.decision
        ingress = getattr(d, "ingress", None)
        up = ex.upstream_addr
        duration = now - ex.t0
        up_time = now - ex.t_up if ex.t_up else None
        host = ex.head.host.decode("latin-1") if ex.head.host is not None else ""
        if self.fmt == "json":
            line = json.dumps(
                {
                    "ts": self._now(),
                    "client": conn.client_ip,
                    "method": ex.method.decode("latin-1"),
                    "host": host,
                    "path": ex.target.decode("latin-1"),
                    "status": ex.status,
                    "bytes": ex.bytes_out,
                    "ingress": f"{ingress.namespace}/{ingress.name}" if ingress else None,
                    "upstream": f"{up[0]}:{up[1]}" if up else None,
                    "duration": round(duration, 6),
                    "upstream_duration": round(up_time, 6) if up_time is not None else None,
                    "request_id": ex.head.request_id.decode("latin-1")
                    if ex.head.request_id
                    else None,
                },
                ensure_ascii=False,
            )
        else:
            line = '{} {} "{} {} {}" {} {} host={} ingress={} upstream={} rt={:.6f} urt={} id={}'.format(
                self._now(),
                conn.client_ip,
                ex.method.decode("latin-1"),
                _quote(ex.target.decode("latin-1")),
                "HTTP/1.0" if ex.http10 else "HTTP/1.1",
                ex.status,
                ex.bytes_out,
                _quote(host) or "-",
                f"{ingress.namespace}/{ingress.name}" if ingress else "-",
                f"{up[0]}:{up[1]}" if up else "-",
                duration,
                f"{up_time:.6f}" if up_time is not None else "-",
                ex.head.request_id.decode("latin-1") if ex.head.request_id else "-",
            )
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode("utf-8", "replace")
        n = len(self._lines)
        self._lines.clear()
        self._size = 0
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except BlockingIOError:
            pass  # a non-blocking stdout that is full: lose the rest of this batch, not the loop
        except OSError:
            return
        self.lines_written += n

    def close(self) -> None:
        self.flush()
        if self._own:
            os.close(self._fd)
            self._own = False


def _quote(text: str) -> str:
    # A request target or Host can hold anything llhttp let through: keep one line per request.
    if '"' in text or " " in text or "\\" in text or not text.isprintable():
        return json.dumps(text, ensure_ascii=True)[1:-1].replace(" ", "%20")
    return text
