"""DNS cookies (RFC 7873) with server cookies in the interoperable format of RFC 9018, sans-IO.

A query may carry a COOKIE option: the client cookie (8 bytes), alone or
followed by the server cookie this server gave it before (8 to 32 bytes).
:func:`check_cookie` takes the option's length apart; a length other than
8 or 16-40 is malformed and answered FORMERR (RFC 7873 section 5.2.2).

Every reply to a query with a cookie carries the client cookie back with a
fresh server cookie (section 5.2.3: "process normally and send a response
with the cookie"). netplane never refuses a query for a missing or stale
server cookie, so a cookie never costs a client an answer; it lets the
client tell our replies from forged ones, and lets a later policy (rate
limits for clients without a valid cookie) tell real clients from spoofed
addresses.

The server cookie (16 bytes, RFC 9018 section 4): version 1, three
reserved zero bytes, a 32-bit timestamp (seconds, serial arithmetic), and
an 8-byte hash of client cookie | version | reserved | timestamp | client
address. RFC 9018 names SipHash-2-4 for the hash; the standard library has
none, so this is keyed BLAKE2b cut to 8 bytes (``hashlib.blake2b`` with
``key=secret, digest_size=8``), an equally strong keyed hash. The hash is
checked only by the server that made it (or by servers that share its
secret and this code), so the choice of function stays inside netplane.
The secret is random per process unless given.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable

COOKIE = 10  # the EDNS option code (RFC 7873 section 4)
CLIENT_COOKIE = 8
SERVER_COOKIE = 16  # the length of the server cookies made here
VERSION_HEAD = b"\x01\x00\x00\x00"  # version 1, reserved
# A server cookie is valid for an hour after it was made and five minutes
# before (clocks of servers sharing a secret differ a little): RFC 9018 section 4.3.
PAST, FUTURE = 3600, 300

#: The reply's COOKIE option head (code, length 8 + 16), after the OPT's rdata length
#: of 28: what every reply to a query with a cookie ends with, before the two cookies.
REPLY_COOKIE_TAIL_HEAD = (4 + CLIENT_COOKIE + SERVER_COOKIE).to_bytes(2, "big") + (
    COOKIE.to_bytes(2, "big") + (CLIENT_COOKIE + SERVER_COOKIE).to_bytes(2, "big")
)


def check_cookie(data: bytes) -> bool:
    """Whether a COOKIE option's data has a well-formed length (8, or 16 to 40)."""
    n = len(data)
    return n == CLIENT_COOKIE or 16 <= n <= 40


def _address_bytes(client: str) -> bytes:
    """The client's address as 4 or 16 bytes (an IPv4-mapped IPv6 address as IPv4); b"" if none."""
    try:
        addr = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return b""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.packed


class ServerCookies:
    """Makes and checks server cookies with one secret."""

    def __init__(
        self, secret: bytes | None = None, *, now: Callable[[], float] = time.time
    ) -> None:
        self.secret = secret if secret is not None else secrets.token_bytes(16)
        if not 8 <= len(self.secret) <= 64:
            raise ValueError("a cookie secret has 8 to 64 bytes")
        self.now = now
        self._address = functools.lru_cache(maxsize=4096)(_address_bytes)

    def _hash(self, client_cookie: bytes, head: bytes, client: str) -> bytes:
        data = client_cookie + head + self._address(client)
        return hashlib.blake2b(data, key=self.secret, digest_size=8).digest()

    def make(self, client_cookie: bytes, client: str) -> bytes:
        """A server cookie for ``client_cookie`` from ``client`` (an IP address), made now."""
        head = VERSION_HEAD + (int(self.now()) & 0xFFFFFFFF).to_bytes(4, "big")
        return head + self._hash(client_cookie, head, client)

    def option(self, client_cookie: bytes, client: str) -> bytes:
        """The reply's COOKIE option data: the client's cookie, then a fresh server cookie."""
        return client_cookie + self.make(client_cookie, client)

    def valid(self, client_cookie: bytes, server_cookie: bytes, client: str) -> bool:
        """Whether ``server_cookie`` was made here for this client cookie and address, lately."""
        if len(server_cookie) != SERVER_COOKIE or server_cookie[:4] != VERSION_HEAD:
            return False
        made = int.from_bytes(server_cookie[4:8], "big")
        age = (int(self.now()) - made) & 0xFFFFFFFF  # serial arithmetic (RFC 1982)
        if age >= 1 << 31:
            age -= 1 << 32
        if not -FUTURE <= age <= PAST:
            return False
        expected = self._hash(client_cookie, server_cookie[:8], client)
        return hmac.compare_digest(expected, server_cookie[8:])
