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
    judge_gateway_status,
    judge_split,
)

ROOT = Path(__file__).resolve().parents[2]
WEB = frozenset({"127.0.1.1:18080", "127.0.1.2:18080"})
API = frozenset({"127.0.2.1:18081"})

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


def test_http_request_sends_the_extra_headers_a_route_matches_on() -> None:
    _, wire = http_request("/", "127.0.0.1:10088", [("x-version", "v2")])
    assert b"\r\nx-version: v2\r\n" in wire


def test_judge_split_wants_each_share_exactly() -> None:
    shares = (("demo/web", WEB, 6), ("demo/api", API, 2))
    web1, web2 = ("demo/web", "127.0.1.1:18080"), ("demo/web", "127.0.1.2:18080")
    api = ("demo/api", "127.0.2.1:18081")
    answers = [web1, web2, api, web1, web2, web1, api, web2]
    assert judge_split(answers, shares) == (True, "200 x8: 6 from demo/web, 2 from demo/api")
    ok, why = judge_split([web1] * 7 + [api], shares)
    assert not ok
    assert why == "7 from demo/web, 1 from demo/api; expected 6 from demo/web, 2 from demo/api"
    ok, why = judge_split([("demo/db", "127.0.4.1:15432")], shares)
    assert not ok and why == "answered by demo/db, not one of demo/web, demo/api"
    ok, why = judge_split([("demo/api", "127.0.2.2:18081")], shares)
    assert not ok and "endpoint 127.0.2.2:18081, not one of its endpoints" in why


def _condition(type_: str, ok: bool = True, reason: str = "", message: str = "") -> dict:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason or type_,
            "message": message}  # fmt: skip


def _state(gateway_listener: list[dict]) -> bytes:
    status = {
        "GatewayClass netplane": {"conditions": [_condition("Accepted")]},
        "Gateway demo/demo": {
            "conditions": [_condition("Accepted"), _condition("Programmed")],
            "listeners": [{"name": "http", "conditions": gateway_listener}],
        },
        "HTTPRoute demo/demo": {
            "parents": [{"conditions": [_condition("Accepted"), _condition("ResolvedRefs")]}]
        },
    }
    return json.dumps({"planes": {"ingress": {"gateway": {"status": status}}}}).encode()


def test_judge_gateway_status() -> None:
    expected = (
        ("GatewayClass netplane", ("Accepted",)),
        ("Gateway demo/demo", ("Accepted", "Programmed")),
        ("HTTPRoute demo/demo", ("Accepted", "ResolvedRefs")),
    )
    good = _state([_condition("Accepted"), _condition("Programmed")])
    assert judge_gateway_status(good, expected) == (
        True,
        "GatewayClass netplane Accepted; Gateway demo/demo Accepted, Programmed;"
        " HTTPRoute demo/demo Accepted, ResolvedRefs",
    )
    taken = _state(
        [_condition("Accepted", False, "PortUnavailable", "port 10088 is in use"),
         _condition("Programmed", False, "Invalid", "not served")]
    )  # fmt: skip
    assert judge_gateway_status(taken, expected) == (
        False,
        "Gateway demo/demo listener http: Accepted is False (PortUnavailable: port 10088 is in use)",
    )
    missing = (*expected, ("HTTPRoute demo/other", ("Accepted",)))
    assert judge_gateway_status(good, missing) == (False, "HTTPRoute demo/other has no status")
    assert judge_gateway_status(b"{}", expected)[0] is False


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
    assert len(tries) == len(probes) >= 22, (tries, probes)
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
    # Gateway API: the header match, the 3:1 split (exact: weighted round-robin is smooth)
    # and the status netplane gave the objects.
    assert re.search(r"HTTPRoute demo/demo with x-version: v2  http://127\.0\.\d+\.\d+:10088/ "
                     r".*  ok \(200 from demo/api endpoint 127\.0\.2\.1:18081\)", text)  # fmt: skip
    assert "HTTPRoute demo/demo split 3:1  " in text
    assert "ok (200 x8: 6 from demo/web, 2 from demo/api)" in text
    assert ("ok (GatewayClass netplane Accepted; Gateway demo/demo Accepted, Programmed;"
            " HTTPRoute demo/demo Accepted, ResolvedRefs)") in text  # fmt: skip
    assert "  curl -H 'x-version: v2' http://" in "\n".join(tries)
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


@pytest.mark.e2e
def test_demo_moves_the_gateway_to_another_loopback_address_when_its_port_is_taken() -> None:
    from netplane.cli import DEMO_GATEWAY_PORT

    try:
        holder = socket.create_server(("127.0.0.1", DEMO_GATEWAY_PORT))
    except OSError as e:
        pytest.skip(f"127.0.0.1:{DEMO_GATEWAY_PORT} is taken already: {e}")
    with holder:
        r = _demo_probe("--dns", "off")
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(rf"^  HTTPRoute demo/demo split 3:1  http://(\S+):{DEMO_GATEWAY_PORT}/ .*  ok",
                  r.stdout, re.M)  # fmt: skip
    assert m and m.group(1).startswith("127.0.5."), r.stdout


def test_the_demo_gateway_listens_on_the_port_the_cli_checks() -> None:
    import yaml

    from netplane.cli import DEMO_GATEWAY_PORT, demo_manifests

    docs = yaml.safe_load_all((Path(demo_manifests()) / "gateway.yaml").read_text())
    ports = [li["port"] for d in docs if d["kind"] == "Gateway" for li in d["spec"]["listeners"]]
    assert ports == [DEMO_GATEWAY_PORT]
