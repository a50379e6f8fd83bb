"""Helpers for the DNS end-to-end tests: a second DNS server to forward to, and a netplane
process serving DNS from manifests, waited for with real queries."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
from dnslib import QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from netplane.testing.ports import free_udp_tcp_port
from netplane.testing.process import Netplane

WAIT = 10.0


class _Resolver(BaseResolver):
    """example.test: www (A, TTL 300), nx (NXDOMAIN with a SOA), big (TXT past 1232 bytes)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        name = str(request.q.qname).lower()
        with self.lock:
            self.asked.append((name, handler.protocol))
        reply = request.reply()
        soa = RR(
            "example.test.",
            QTYPE.SOA,
            ttl=3600,
            rdata=SOA("ns.example.test.", "h.example.test.", (1, 7200, 900, 86400, 60)),
        )
        if name == "www.example.test.":
            reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=300, rdata=A("192.0.2.10")))
        elif name == "big.example.test.":
            for i in range(40):
                reply.add_answer(
                    RR(request.q.qname, QTYPE.TXT, ttl=300, rdata=TXT(f"{i:02d}" * 25))
                )
        else:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(soa)
        return reply

    def count(self, name: str) -> int:
        with self.lock:
            return sum(1 for n, _ in self.asked if n == name)


class _Handler(DNSHandler):
    udplen = 1232


class Upstream:
    """A dnslib server on UDP and TCP (threads), what netplane forwards to."""

    def __init__(self) -> None:
        self.port = free_udp_tcp_port()
        self.resolver = _Resolver()
        logger = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data")
        self.servers = [
            DNSServer(
                self.resolver, "127.0.0.1", self.port, tcp=tcp, logger=logger, handler=_Handler
            )
            for tcp in (False, True)
        ]

    def __enter__(self) -> Upstream:
        for s in self.servers:
            s.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.servers:
            s.stop()
            s.server.server_close()


def ask(
    port: int, name: str, rdtype: str = "A", *, tcp: bool = False, source: str = "127.0.0.1", **kw
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=3, source=source)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=3, source=source, ignore_trailing=False)


class NetplaneDns:
    """``netplane run`` serving DNS (proxy and ingress off) from ``manifests``, ready to answer.

    A :class:`Netplane` with an admin port of its own (or the ``--admin``
    among ``extra``), started until /readyz, then until DNS answers a query.
    """

    def __init__(self, tmp: Path, manifests: Path, *extra: str) -> None:
        self.port = free_udp_tcp_port()
        self.np = Netplane(
            "run", "-f", str(manifests), "--mode", "local",
            "--proxy", "off", "--ingress-http", "off", "--ingress-https", "off",
            "--dns", f"127.0.0.1:{self.port}", "--manifest-poll-seconds", "0.05",
            # One process: these tests follow one answer cache's hits and TTLs;
            # each worker of --workers N has its own (tests/e2e/test_workers.py).
            "--shutdown-grace", "0", "--workers", "1", *extra,
            workdir=tmp, name=f"netplane-{self.port}",
        )  # fmt: skip
        self.log = self.np.log_path
        try:
            self.np.start(WAIT)
            self.wait_answering()
        except BaseException:
            self.stop()
            raise

    def wait_answering(self) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                m = ask(self.port, "dns-version.cluster.local", "TXT")
                if m.rcode() == dns.rcode.NOERROR:
                    return
            except (dns.exception.DNSException, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"netplane DNS not answering in {WAIT} s\n{self.np.tail()}")

    def stop(self) -> int:
        return self.np.stop()


def dig(port: int, *args: str, timeout: float = 15) -> str:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out.stdout
