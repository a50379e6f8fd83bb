"""``netplane demo --probe``: its judging of replies without sockets, then the command end to end."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import h11
import pytest
from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord
from netplane.ingress.certs import self_signed

from netplane.demo_backends import answered_by, label
from netplane.demo_probe import (
    DnsCheck,
    certificate_of,
    dns_query,
    http_request,
    http_response,
    judge_admin,
    judge_answer,
    judge_certificate,
    judge_dns,
)

ROOT = Path(__file__).resolve().parents[2]
WEB = frozenset({"127.0.1.1:18080", "127.0.1.2:18080"})

# -- judging, no I/O ------------------------------------------------------------------


def test_a_backend_names_itself_in_the_shape_the_probe_reads() -> None:
    name = label("demo/web", "127.0.1.2", 18080)
    assert answered_by(f"hello from {name}; you are 127.0.0.1:5000\n") == (
        "demo/web",
        "127.0.1.2:18080",
    )
    assert answered_by(f"{name}: hello") == ("demo/web", "127.0.1.2:18080")
    assert answered_by("<html>nginx</html>") is None


def test_judge_answer_wants_the_right_service_and_one_of_its_endpoints() -> None:
    ok = "hello from demo/web endpoint 127.0.1.1:18080; you are x"
    assert judge_answer(ok, "demo/web", WEB) == ("127.0.1.1:18080", "")
    endpoint, why = judge_answer(ok.replace("web", "api"), "demo/web", WEB)
    assert endpoint is None and "not by demo/web" in why
    endpoint, why = judge_answer(ok.replace("0.1.1", "0.9.9"), "demo/web", WEB)
    assert endpoint is None and "127.0.9.9:18080, not one of" in why


def test_http_request_and_response_through_h11() -> None:
    request, wire = http_request("/api", "web.demo.localhost:8080")
    assert wire.startswith(b"GET /api HTTP/1.1\r\n")
    assert b"host: web.demo.localhost:8080\r\n" in wire and b"connection: close\r\n" in wire
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
    assert http_response(request, reply) == (200, b"hello")
    assert http_response(request, b"HTTP/1.1 502 Bad Gateway\r\n\r\nno") == (502, b"no")
    with pytest.raises(ValueError, match="without sending complete message body"):
        http_response(request, reply[:-2])
    with pytest.raises(ValueError, match="closed without a response"):
        http_response(request, b"")
    with pytest.raises(ValueError, match="bad HTTP response"):
        http_response(request, b"SSH-2.0-OpenSSH\r\n\r\n")
    assert isinstance(request, h11.Request)


def _reply(qid: int, qname: str, *rrs: RR, rcode: str = "NOERROR", soa: bool = False) -> bytes:
    q = DNSRecord.question(qname)
    q.header.id = qid
    r = q.reply()
    r.header.rcode = getattr(RCODE, rcode)
    for rr in rrs:
        r.add_answer(rr)
    if soa:
        r.add_auth(
            RR("cluster.local", QTYPE.SOA, rdata=SOA("ns.dns.cluster.local", "h.cluster.local"))
        )
    return r.pack()


def test_judge_dns() -> None:
    name = "web.demo.svc.cluster.local"
    qid, wire = dns_query(name, "A")
    assert DNSRecord.parse(wire).q.qname == name
    check = DnsCheck("127.0.0.1", 53, name, "A", records=frozenset({("A", "127.77.65.164")}))
    one = RR(name, QTYPE.A, rdata=A("127.77.65.164"))
    assert judge_dns(check, qid, _reply(qid, name, one)) == (True, "A 127.77.65.164")
    extra = RR(name, QTYPE.A, rdata=A("127.77.0.9"))
    ok, why = judge_dns(check, qid, _reply(qid, name, one, extra))
    assert not ok and "expected A 127.77.65.164" in why
    assert judge_dns(check, qid, _reply(qid ^ 1, name, one)) == (
        False,
        "reply to another query (ID differs)",
    )
    assert judge_dns(check, qid, b"\x00")[0] is False
    ok, why = judge_dns(check, qid, _reply(qid, name, rcode="SERVFAIL"))
    assert not ok and why == "rcode SERVFAIL, expected NOERROR"

    missing = DnsCheck("127.0.0.1", 53, "nothere", "A", rcode="NXDOMAIN")
    assert judge_dns(missing, qid, _reply(qid, name, rcode="NXDOMAIN", soa=True))[0] is True
    ok, why = judge_dns(missing, qid, _reply(qid, name, rcode="NXDOMAIN"))
    assert not ok and why == "NXDOMAIN without the SOA"


def test_certificate_names_are_compared_with_what_sni_should_pick() -> None:
    cert_pem, _ = self_signed()
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    got = certificate_of(der)
    assert got == ("CN=netplane default certificate", ("ingress.local",))
    assert judge_certificate(got, got)[0] is True
    ok, why = judge_certificate(got, ("CN=web", ("web.demo.localhost",)))
    assert not ok and "expected CN=web for web.demo.localhost" in why


def test_judge_admin() -> None:
    state = json.dumps({"config": {"mode": "local"}}).encode()
    assert judge_admin("/debug/state", 200, state) == (True, "200, mode local")
    node = json.dumps({"config": {"mode": "node"}}).encode()
    assert judge_admin("/debug/state", 200, node)[0] is False
    assert judge_admin("/debug/state", 200, b"<html>")[0] is False
    assert judge_admin("/readyz", 503, b"draining")[0] is False
    assert judge_admin("/readyz", 200, b"ok\n") == (True, "200 ok")


# -- the command -------------------------------------------------------------------------


def _demo_probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "netplane", "demo", "--probe", "--admin", "127.0.0.1:0", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def _tries_and_probes(out: str) -> tuple[list[str], list[str]]:
    tries = out.split("\nTry:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    probes = out.split("Probing every command above from inside the demo:\n", 1)[1].splitlines()
    return tries, [line for line in probes if line.startswith("  ")]  # not the access log


@pytest.mark.e2e
def test_demo_probe_tries_every_printed_command_and_exits_0() -> None:
    r = _demo_probe()
    assert r.returncode == 0, r.stdout + r.stderr
    tries, probes = _tries_and_probes(r.stdout)
    assert len(tries) == len(probes) >= 19, (tries, probes)
    assert all(re.search(r"  ok \(.+\)$", line) for line in probes), probes
    assert f"\n{len(probes)} of {len(probes)} probes passed.\n" in r.stdout
    text = "\n".join(probes)
    # What each kind of probe saw, in its own words:
    assert re.search(r"demo/web \(ClusterIP\)  http://\S+  ok \(200 from demo/web endpoint "
                     r"127\.0\.1\.1:18080, 127\.0\.1\.2:18080\)", text)  # fmt: skip
    assert "certificate CN=netplane default certificate for ingress.local" in text
    assert "ok (SRV 15432 db-0.db.demo.svc.cluster.local., SRV 15432 db-1." in text
    assert "ok (NXDOMAIN with the SOA)" in text
    assert "admin /debug/state" in text and "ok (200, mode local)" in text
    assert re.search(r"info netplane\.daemon: stopped$", r.stderr, re.M)  # a clean shutdown


class _Squatter:
    """An HTTP server on one of demo/web's endpoint addresses, there before the demo.

    The demo's own backend cannot bind there, so the ClusterIP's answers from
    that endpoint are not a demo backend's: the probe must say so.
    """

    ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\nconnection: close\r\n\r\nnot the demo!\n"

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_server(address, reuse_port=False)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(self.ANSWER)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.e2e
def test_demo_probe_exits_1_and_says_which_command_failed() -> None:
    try:
        squatter = _Squatter(("127.0.1.2", 18080))
    except OSError as e:
        pytest.skip(f"127.0.1.2:18080 is taken: {e}")
    try:
        r = _demo_probe("--ingress-http", "off", "--ingress-https", "off", "--dns", "off")
    finally:
        squatter.close()
    assert r.returncode == 1, r.stdout + r.stderr
    _, probes = _tries_and_probes(r.stdout)
    web = [line for line in probes if line.startswith("  demo/web (ClusterIP)")]
    assert len(web) == 1, probes
    assert web[0].endswith("  FAILED: not a demo backend's answer: 'not the demo!\\n'"), web
    assert all(" ok (" in line for line in probes if line not in web), probes
    assert f"{len(probes) - 1} of {len(probes)} probes passed." in r.stdout


@pytest.mark.e2e
def test_demo_takes_a_free_admin_port_when_10256_is_taken() -> None:
    try:
        holder = socket.create_server(("127.0.0.1", 10256))
    except OSError as e:
        pytest.skip(f"127.0.0.1:10256 is taken already: {e}")
    with holder:
        r = subprocess.run(
            [sys.executable, "-m", "netplane", "demo", "--probe",
             "--ingress-http", "off", "--ingress-https", "off", "--dns", "off"],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"^  admin /readyz  http://127\.0\.0\.1:(\d+)/readyz  ok", r.stdout, re.M)
    assert m and int(m.group(1)) not in (0, 10256), r.stdout
