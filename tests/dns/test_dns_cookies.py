"""DNS cookies (RFC 7873, server cookies as RFC 9018 lays them out): every reply echoes the
client cookie with a valid server cookie, cookies do not defeat the answer and forward
caches, and a COOKIE option of a bad length gets FORMERR. With dig and dnspython, against a
plane in process that forwards to a small upstream in process."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
from dnslib import QTYPE, RR, A, DNSRecord
from netplane.dns.cache import cookie_key, fast_key
from netplane.dns.cookie import ServerCookies, check_cookie
from netplane.dns.plane import DnsPlane, DnsSettings

import netplane

WEB = "web.shop.svc.cluster.local"
FORWARDED = "www.example.test"


def service(name: str, ip: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
    }


class _Upstream(asyncio.DatagramProtocol):
    """Answers every A question with 192.0.2.10 (TTL 300), counting what it is asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        q = DNSRecord.parse(data)
        self.asked.append(str(q.q.qname).lower())
        reply = q.reply()
        reply.add_answer(RR(q.q.qname, QTYPE.A, ttl=300, rdata=A("192.0.2.10")))
        assert self.transport is not None
        self.transport.sendto(reply.pack(), addr)


Body = Callable[[DnsPlane, _Upstream], Awaitable[None]]


async def with_plane(body: Body) -> None:
    loop = asyncio.get_running_loop()
    transport, upstream = await loop.create_datagram_endpoint(
        _Upstream, local_addr=("127.0.0.1", 0)
    )
    up_port = transport.get_extra_info("sockname")[1]
    try:
        async with netplane.Dataplane(netplane.Config(mode="local", admin=None), serve=False) as dp:
            dp.apply(service("web", "127.77.0.20"))
            plane = DnsPlane(dp, DnsSettings(port=0, upstreams=(("127.0.0.1", up_port),)))
            await plane.start()
            try:
                await body(plane, upstream)
            finally:
                await plane.close()
    finally:
        transport.close()


async def ask(
    port: int, name: str, *options: dns.edns.Option, tcp: bool = False
) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0, options=list(options))
    send = dns.query.tcp if tcp else dns.query.udp
    return await asyncio.to_thread(send, q, "127.0.0.1", timeout=3, port=port)


def reply_cookie(m: dns.message.Message) -> tuple[bytes, bytes]:
    """The reply's (client cookie, server cookie)."""
    cookies = [o for o in m.options if o.otype == dns.edns.COOKIE]
    assert len(cookies) == 1, m.options
    c = cookies[0]
    assert isinstance(c, dns.edns.CookieOption)
    return c.client, c.server


def cache_hits(plane: DnsPlane) -> int:
    return sum(plane.responder.answers.hits().values())


@pytest.mark.parametrize(("name", "hits"), [(WEB, cache_hits), (FORWARDED, None)])
def test_dnspython_cookie_queries_share_the_cache_and_get_their_own_cookies(
    run, name: str, hits: Callable[[DnsPlane], int] | None
) -> None:
    async def body(plane: DnsPlane, upstream: _Upstream) -> None:
        cookies = plane.responder.cookies

        def count() -> int:
            if hits is not None:
                return hits(plane)
            return plane.responder.forwarded.hits

        first_client = secrets.token_bytes(8)
        m = await ask(plane.port, name, dns.edns.CookieOption(first_client, b""))
        assert m.rcode() == dns.rcode.NOERROR and m.answer
        client, server = reply_cookie(m)
        assert client == first_client and len(server) == 16 and server[:4] == b"\x01\0\0\0"
        assert cookies.valid(client, server, "127.0.0.1")
        assert not cookies.valid(client, server, "127.0.0.2")  # made for this address
        before = count()

        # Another client (another cookie), then the first again with its server cookie:
        # both are cache hits, each with its own cookie back.
        second_client = secrets.token_bytes(8)
        for sent, sent_server in ((second_client, b""), (first_client, server)):
            m2 = await ask(plane.port, name.upper(), dns.edns.CookieOption(sent, sent_server))
            assert m2.rcode() == dns.rcode.NOERROR
            assert [str(r) for r in m2.answer[0]] == [str(r) for r in m.answer[0]]
            client2, server2 = reply_cookie(m2)
            assert client2 == sent and cookies.valid(client2, server2, "127.0.0.1")
        assert count() == before + 2
        if hits is None:
            assert upstream.asked == [name + "."]  # asked once, whatever the cookies

        # Over TCP too (never from the wire cache, but with the cookie).
        m3 = await ask(plane.port, name, dns.edns.CookieOption(first_client, b""), tcp=True)
        assert reply_cookie(m3)[0] == first_client
        # A query without a cookie gets none.
        assert not (await ask(plane.port, name)).options

    run(with_plane(body))


@pytest.mark.parametrize("name", [WEB, FORWARDED])
def test_a_cookie_of_a_bad_length_gets_formerr(run, name: str) -> None:
    async def body(plane: DnsPlane, upstream: _Upstream) -> None:
        for bad in (b"", b"1234567", b"123456789", b"x" * 15, b"x" * 41):
            m = await ask(plane.port, name, dns.edns.GenericOption(dns.edns.COOKIE, bad))
            assert m.rcode() == dns.rcode.FORMERR, bad
            assert m.edns == 0 and not m.options and not m.answer  # an OPT, and no cookie
        two = [dns.edns.GenericOption(dns.edns.COOKIE, b"12345678")] * 2
        assert (await ask(plane.port, name, *two)).rcode() == dns.rcode.FORMERR
        assert plane.responder.counts["bad_cookies"] == 6
        assert upstream.asked == []
        # The longest good one: client cookie and a 32-byte server cookie (another server's).
        m = await ask(plane.port, name, dns.edns.GenericOption(dns.edns.COOKIE, b"c" * 40))
        assert m.rcode() == dns.rcode.NOERROR and reply_cookie(m)[0] == b"c" * 8

    run(with_plane(body))


_DIG_COOKIE = re.compile(r"^; COOKIE: ([0-9a-f]+) \((good|bad)\)", re.M)


async def dig(port: int, name: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", "+cookie", name, "A",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    return out.decode()


def test_dig_cookies_are_good_and_hit_the_caches(run) -> None:
    async def body(plane: DnsPlane, upstream: _Upstream) -> None:
        cookies = plane.responder.cookies
        for name in (WEB, FORWARDED):
            outs = [await dig(plane.port, name) for _ in range(2)]
            for out in outs:
                assert "status: NOERROR" in out and "ANSWER: 1" in out, out
                found = _DIG_COOKIE.search(out)
                assert found is not None and found[2] == "good", out  # the client cookie came back
                raw = bytes.fromhex(found[1])
                assert cookies.valid(raw[:8], raw[8:], "127.0.0.1")
        assert cache_hits(plane) == 1  # WEB's second dig
        assert plane.responder.forwarded.hits == 1 and upstream.asked == [FORWARDED + "."]

    run(with_plane(body))


def test_cookie_keys_leave_the_cookie_out() -> None:
    def wire(*options: dns.edns.Option) -> bytes:
        return dns.message.make_query(WEB, "A", use_edns=0, options=list(options)).to_wire()

    a = wire(dns.edns.CookieOption(b"a" * 8, b""))
    b = wire(dns.edns.CookieOption(b"b" * 8, b"s" * 16))
    key = cookie_key(a)
    assert key is not None and key == cookie_key(b) and b"a" * 8 not in key[0]
    assert fast_key(a) is None and cookie_key(wire()) is None
    assert fast_key(wire())[0] != key[0]
    # another option beside the cookie, or a server cookie of another size: the parsing path
    padded = wire(dns.edns.CookieOption(b"a" * 8, b""), dns.edns.GenericOption(12, b"\0" * 4))
    assert cookie_key(padded) is None
    assert cookie_key(wire(dns.edns.CookieOption(b"a" * 8, b"s" * 8))) is None
    assert [n for n in range(42) if check_cookie(b"x" * n)] == [8, *range(16, 41)]


def test_server_cookies_expire_and_do_not_travel() -> None:
    now = [1_000_000.0]
    cookies = ServerCookies(b"k" * 16, now=lambda: now[0])
    client = b"c" * 8
    server = cookies.make(client, "::ffff:192.0.2.1")
    assert cookies.valid(client, server, "192.0.2.1")  # a mapped address is the IPv4 one
    assert not cookies.valid(b"d" * 8, server, "192.0.2.1")
    assert not cookies.valid(client, server[:-1] + bytes([server[-1] ^ 1]), "192.0.2.1")
    assert not ServerCookies(b"j" * 16, now=lambda: now[0]).valid(client, server, "192.0.2.1")
    now[0] += 3600
    assert cookies.valid(client, server, "192.0.2.1")
    now[0] += 1
    assert not cookies.valid(client, server, "192.0.2.1")  # older than an hour
    now[0] -= 3601 + 301
    assert not cookies.valid(client, server, "192.0.2.1")  # from more than 5 minutes ahead


@pytest.mark.parametrize("name", ["dns-version.cluster.local", "nope.shop.svc.cluster.local"])
def test_a_cookie_hit_is_the_fresh_reply_byte_for_byte(name: str) -> None:
    from netplane.dns.responder import Allow, Responder
    from netplane.dns.zone import Zone

    zone = Zone("cluster.local", ttl=5)
    zone.ready = True
    r = Responder(zone, allow=Allow([]), cookies=ServerCookies(b"k" * 16, now=lambda: 1e6))
    q = dns.message.make_query(
        name, "A", use_edns=0, options=[dns.edns.CookieOption(b"a" * 8, b"")]
    )
    q.id = 7
    fresh = r.handle(q.to_wire(), "192.0.2.1")
    assert isinstance(fresh, bytes) and len(r.answers) == 1
    q.id = 8
    q.use_edns(0, options=[dns.edns.CookieOption(b"b" * 8, b"s" * 16)])
    q2 = q.to_wire()
    hit = r.answers.reply(q2, "192.0.2.1")
    assert hit is not None and hit[:2] == q2[:2]
    again = r.handle(q2, "192.0.2.1")
    assert hit == again and hit != fresh
