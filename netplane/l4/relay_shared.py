"""What the TCP relays (Protocol and splice) and the UDP relay share.

Address formatting for log lines, the ``SO_LINGER`` value that turns a
close into a reset, and the idle-timer granularity. What only the two TCP
relays share (their view of the proxy, the connect retries) is in
:mod:`.relay_host`.
"""

from __future__ import annotations

import struct
from typing import Any

from netplane.addresses import hostport

#: ``struct linger {on=1, seconds=0}``: close() then sends a RST, not a FIN
LINGER_RST = struct.pack("ii", 1, 0)
#: idle timers tick this many times per timeout (an idle peer goes after 1-1.25 timeouts)
IDLE_TICKS = 4


def fmt_addr(addr: tuple | Any) -> str:
    """``host:port`` or ``[v6]:port`` for a socket address; repr() for anything else."""
    if not addr or not isinstance(addr, tuple):
        return repr(addr)
    host, port = addr[0], addr[1]
    return hostport(str(host), port)
