"""The commands that ``netplane demo`` prints, and ``--probe``, which tries each of them.

Strategy: one list of :class:`Try` is built from the running demo (its
service table, its planes' listeners, its admin port). Each Try carries the
shell command that the greeting prints and a check: what the command
should show, as data. The greeting prints the commands; ``--probe`` runs
the checks from inside the process, so the two cannot drift apart: a command
is printed only with a check beside it.

Building the list, the requests and the judging of replies are pure
functions: HTTP through h11's client state machine, DNS through dnslib's
codec, the certificate through cryptography's x509 parser. Only
:func:`probe` does I/O (asyncio streams, TLS with SNI, a UDP socket), each
attempt bounded by a timeout and each check retried until a deadline,
because the L4 listeners bind just after the table is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import h11
from cryptography import x509
from dnslib import QTYPE, RCODE, DNSRecord

from netplane.config import Listen
from netplane.demo_backends import answered_by

ATTEMPT_TIMEOUT = 2.0  # seconds for one request and its reply
DEADLINE = 8.0  # seconds for one check, retries included
READ_LIMIT = 1 << 16  # the demo's replies are a line or a page


# -- what each command should show -------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """GET ``path`` from host:port (TLS with ``sni`` when set); a demo backend of ``service`` answers.

    ``endpoints`` are the ones allowed to answer; with ``every`` each of them
    must answer once within a few requests (round-robin alternates them).
    ``certificate`` is the (subject, DNS names) that the TLS server must
    present for ``sni``. ``headers`` are sent besides Host (an HTTPRoute's
    header match).
    """

    host: str
    port: int
    path: str
    host_header: str
    service: str
    endpoints: frozenset[str]
    every: bool = False
    sni: str | None = None
    certificate: tuple[str, tuple[str, ...]] | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SplitCheck:
    """GETs of ``path`` share out among services by weight: exactly ``count`` answers each.

    ``shares`` holds (service, the endpoints allowed to answer for it,
    count); as many requests are sent as the counts add up to. Weighted
    round-robin is smooth and deterministic, so any run of requests as long
    as a multiple of the weights' total meets each share exactly.
    """

    host: str
    port: int
    path: str
    host_header: str
    shares: tuple[tuple[str, frozenset[str], int], ...]

    @property
    def requests(self) -> int:
        return sum(count for _, _, count in self.shares)


@dataclass(frozen=True, slots=True)
class UdpCheck:
    """A datagram to host:port comes back from the UDP echo of one of ``endpoints``."""

    host: str
    port: int
    service: str
    endpoints: frozenset[str]


@dataclass(frozen=True, slots=True)
class TlsCheck:
    """A handshake with ``sni`` gets the certificate (subject, DNS names)."""

    host: str
    port: int
    sni: str
    certificate: tuple[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class DnsCheck:
    """A UDP query's reply: its rcode, and its answer records as (type, text).

    With ``exact`` the records of ``qtype`` are exactly ``records``; else
    ``records`` must be among the answers (a CNAME and what it leads to).
    """

    host: str
    port: int
    qname: str
    qtype: str
    rcode: str = "NOERROR"
    records: frozenset[tuple[str, str]] = frozenset()
    exact: bool = True


@dataclass(frozen=True, slots=True)
class AdminCheck:
    """GET an admin path: 200, and for /debug/state a JSON body that says local mode."""

    host: str
    port: int
    path: str


@dataclass(frozen=True, slots=True)
class GatewayStatusCheck:
    """GET /debug/state: the status netplane gives each Gateway API object holds these conditions.

    ``expected`` holds (object key as /debug/state writes it, the condition
    types that must be True): on a Gateway, its listeners' too; on a route,
    in every parent netplane reports.
    """

    host: str
    port: int
    expected: tuple[tuple[str, tuple[str, ...]], ...]


Check = HttpCheck | SplitCheck | UdpCheck | TlsCheck | DnsCheck | AdminCheck | GatewayStatusCheck


@dataclass(frozen=True, slots=True)
class Try:
    """One command of the greeting (``command``, as printed) and what it should show."""

    command: str
    what: str
    where: str
    check: Check


@dataclass(frozen=True, slots=True)
class Result:
    what: str
    where: str
    ok: bool
    detail: str

    def line(self) -> str:
        status = f"ok ({self.detail})" if self.ok else f"FAILED: {self.detail}"
        return f"  {self.what}  {self.where}  {status}"


# -- the list, from the running demo -----------------------------------------------


def tries(dp: Any) -> list[Try]:
    """Every command the greeting prints, with its check, in the greeting's order."""
    out: list[Try] = []
    if dp.config.proxy:
        out += _proxy_tries(dp)
    if "ingress" in dp.planes:
        out += _ingress_tries(dp)
        out += _gateway_tries(dp)
    if "dns" in dp.planes:  # DNS
        out += _dns_tries(dp)
    if dp.admin is not None:
        base = Listen(dp.config.admin.host, dp.admin.port)
        for path in ("/readyz", "/debug/state"):
            url = f"http://{base}{path}"
            check = AdminCheck(base.host, base.port, path)
            out.append(Try(f"curl {url}", f"admin {path}", url, check))
    return out


def answering(port: Any) -> frozenset[str]:
    """The endpoints a new connection may reach: the ready ones, else the serving terminating ones."""
    ready = [b for b in port.backends if b.ready]
    chosen = ready or [b for b in port.backends if b.serving and b.terminating]
    return frozenset(f"{b.address}:{b.port}" for b in chosen)


def _proxy_tries(dp: Any) -> list[Try]:
    lines = []
    node_ip = dp.config.effective_nodeport_addresses[0]
    alternate = dp.config.lb_policy == "round-robin"
    for entry in sorted(dp.table, key=lambda e: e.key):
        name = f"{entry.service.key.namespace}/{entry.service.key.name}"
        for p in entry.ports:
            if not p.backends:
                continue
            endpoints = answering(p)
            for f in p.frontends:
                host = f.ip or node_ip
                where = str(Listen(host, f.port))
                if p.protocol == "UDP":
                    command = (
                        'python3 -c "import socket; s = socket.socket(2, 2); s.settimeout(2);'
                        f" s.sendto(b'hello', ('{host}', {f.port})); print(s.recv(512))\""
                        f"    # {name} over UDP ({f.kind})"
                    )
                    check: Check = UdpCheck(host, f.port, name, endpoints)
                    lines.append(Try(command, f"{name} over UDP ({f.kind})", where, check))
                elif p.name.startswith("http"):
                    url = f"http://{where}/"
                    check = HttpCheck(host, f.port, "/", where, name, endpoints, every=alternate)
                    lines.append(
                        Try(f"curl {url}    # {name} ({f.kind})", f"{name} ({f.kind})", url, check)
                    )
    return lines


# Ingress
def _ingress_tries(dp: Any) -> list[Try]:
    """curl for each Ingress host and path over HTTP and HTTPS, and openssl for the SNI pick."""
    plane = dp.planes["ingress"]
    # The server's listeners include the Gateway sockets; those serve HTTPRoutes.
    listeners = {https: (h, p) for h, p, https in plane.addresses}
    lines = []
    for ing in plane.routes.ingresses():
        for rule in ing.rules:
            if not rule.host or rule.host.startswith("*"):
                continue
            for path in rule.paths:
                backend = path.backend.service_name
                service = f"{ing.key.namespace}/{backend}"
                entry = dp.table.get(ing.key.namespace, backend) if backend else None
                endpoints = (
                    frozenset().union(*(answering(p) for p in entry.ports))
                    if entry
                    else frozenset()
                )
                for https, scheme in ((False, "http"), (True, "https")):
                    if https not in listeners:
                        continue
                    ip, port = listeners[https]
                    insecure = "-k " if https else ""
                    url = f"{scheme}://{rule.host}:{port}{path.path}"
                    command = (
                        f"curl {insecure}--resolve {rule.host}:{port}:{ip} {url}"
                        f"    # Ingress {ing.key.namespace}/{ing.key.name} over {scheme.upper()}"
                    )
                    check: Check = HttpCheck(
                        ip, port, path.path, f"{rule.host}:{port}", service, endpoints,
                        sni=rule.host if https else None,
                        certificate=_expected_certificate(plane, rule.host) if https else None,
                    )  # fmt: skip
                    what = f"Ingress {ing.key.namespace}/{ing.key.name} over {scheme.upper()}"
                    lines.append(Try(command, what, f"{url} at {Listen(ip, port)}", check))
    if True in listeners:
        ip, port = listeners[True]
        sni = "web.demo.localhost"  # the demo Ingress's host
        command = (
            f"openssl s_client -connect {ip}:{port} -servername {sni} </dev/null"
            "    # the certificate SNI picks"
        )
        check = TlsCheck(ip, port, sni, _expected_certificate(plane, sni))
        lines.append(Try(command, f"the certificate for SNI {sni}", str(Listen(ip, port)), check))
    return lines


# Gateway API
def _gateway_tries(dp: Any) -> list[Try]:
    """curl for each HTTPRoute rule a Gateway's HTTP socket serves, and the status they got.

    A rule with one backend gets one curl (with its match's exact headers);
    a rule that splits by weight gets a loop of curls long enough to show the
    shares exactly. A rule matching by method, query or a pattern is left out.
    """
    gateway = dp.planes["ingress"].gateway
    lines = []
    for (address, port), sock in sorted(gateway.world.sockets.items()):
        bound = gateway.bound(address, port)
        if sock.protocol != "HTTP" or bound is None:
            continue
        at = Listen(*bound)
        for served in sock.listeners:
            for att in served.routes:
                route = att.route
                if route.kind != "HTTPRoute":
                    continue
                for hostname in att.hostnames:
                    if hostname.startswith("*"):
                        continue
                    for rule in route.rules:
                        lines += _route_tries(dp, route, rule, hostname, at)
    if dp.admin is not None and (expected := _gateway_statuses(dp.state, gateway.controller)):
        base = Listen(dp.config.admin.host, dp.admin.port)
        url = f"http://{base}/debug/state"
        show = (
            'python3 -c "import json, sys; print(json.dumps(json.load(sys.stdin)'
            "['planes']['ingress']['gateway']['status'], indent=1))\""
        )
        command = f"curl -s {url} | {show}    # Gateway API status: Accepted, Programmed"
        check: Check = GatewayStatusCheck(base.host, base.port, expected)
        lines.append(Try(command, "Gateway API status", url, check))
    return lines


def _route_tries(dp: Any, route: Any, rule: Any, hostname: str, at: Listen) -> list[Try]:
    backends = [
        b for b in rule.backends if b.weight and b.group == "" and b.kind == "Service" and b.port
    ]
    if not backends or rule.filters:
        return []
    name = f"{route.key.namespace}/{route.key.name}"
    authority = f"{hostname}:{at.port}" if hostname else str(at)
    resolve = f"--resolve {hostname}:{at.port}:{at.host} " if hostname else ""
    lines = []
    for m in rule.matches:
        if m.method or m.query or m.path_type == "RegularExpression":
            continue
        if any(h.type != "Exact" for h in m.headers):
            continue
        headers = tuple((h.name.lower(), h.value) for h in m.headers)
        url = f"http://{authority}{m.path}"
        flags = "".join(f"-H '{h}: {v}' " for h, v in headers)
        where = f"{url} at {at}"
        if len(backends) == 1:
            b = backends[0]
            service = f"{b.namespace}/{b.name}"
            what = f"HTTPRoute {name}" + "".join(f" with {h}: {v}" for h, v in headers)
            command = f"curl {flags}{resolve}{url}    # {what}: {service}"
            check: Check = HttpCheck(
                at.host, at.port, m.path, authority, service, _service_endpoints(dp, b),
                headers=headers,
            )  # fmt: skip
            lines.append(Try(command, what, where, check))
            continue
        total = sum(b.weight for b in backends)
        rounds = max(1, 8 // total)  # whole rounds of the weights: the shares show exactly
        shares = tuple(
            (f"{b.namespace}/{b.name}", _service_endpoints(dp, b), b.weight * rounds)
            for b in backends
        )
        split = SplitCheck(at.host, at.port, m.path, authority, shares)
        ratio = ":".join(str(b.weight) for b in backends)
        what = f"HTTPRoute {name} split {ratio}"
        counts = ", ".join(f"{count} from {service}" for service, _, count in shares)
        command = (
            f"for i in $(seq {split.requests}); do curl -s {flags}{resolve}{url}; done"
            f"    # {what}: {counts}"
        )
        lines.append(Try(command, what, where, split))
    return lines


def _service_endpoints(dp: Any, ref: Any) -> frozenset[str]:
    """The endpoints that may answer for a backendRef: those of its Service port."""
    entry = dp.table.get(ref.namespace, ref.name)
    if entry is None:
        return frozenset()
    ports = [p for p in entry.ports if p.port == ref.port] or list(entry.ports)
    return frozenset().union(*(answering(p) for p in ports))


def _gateway_statuses(state: Any, controller: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """What each Gateway API object of ``controller`` should report, keyed as /debug/state keys it."""
    classes = {gc.meta.name: gc for gc in state.objects("GatewayClass")}
    ours = {name for name, gc in classes.items() if gc.controller == controller}
    out: list[tuple[str, tuple[str, ...]]] = [
        (str(classes[name].key), ("Accepted",)) for name in sorted(ours)
    ]
    gateways = sorted(
        (gw for gw in state.objects("Gateway") if gw.class_name in ours), key=lambda g: g.key
    )
    out += [(str(gw.key), ("Accepted", "Programmed")) for gw in gateways]
    keys = {(gw.key.namespace, gw.key.name) for gw in gateways}
    for route in sorted(state.objects("HTTPRoute"), key=lambda r: r.key):
        if any(p.kind == "Gateway" and (p.namespace, p.name) in keys for p in route.parents):
            out.append((str(route.key), ("Accepted", "ResolvedRefs")))
    return tuple(out)


def _expected_certificate(plane: Any, sni: str) -> tuple[str, tuple[str, ...]]:
    cert = plane.certs.lookup(sni)
    return cert.subject, tuple(cert.names)


# DNS
def _dns_tries(dp: Any) -> list[Try]:
    plane = dp.planes["dns"]
    host, port = plane.settings.host, plane.port
    at = f"dig @{host} -p {port}"
    where = str(Listen(host, port))
    zone = dp.config.cluster_domain
    lines = []

    def add(args: str, comment: str, check: DnsCheck) -> None:
        lines.append(Try(f"{at} {args}    # {comment}", f"DNS {args}", where, check))

    for entry in sorted(dp.table, key=lambda e: e.key):
        svc = entry.service
        name = f"{svc.key.name}.{svc.key.namespace}.svc.{zone}"
        published = [a for a in entry.addresses if a.ready or svc.publish_not_ready_addresses]
        what = "the ClusterIP"
        records = frozenset(("A", ip) for ip in svc.cluster_ips if ":" not in ip)
        exact = True
        if svc.headless:
            what = "every ready endpoint (headless)"
            records = frozenset(("A", a.address) for a in published if ":" not in a.address)
        elif svc.type == "ExternalName":
            what = f"a CNAME to {svc.external_name}"
            records, exact = frozenset({("CNAME", svc.external_name.rstrip(".") + ".")}), False
        add(name, what, DnsCheck(host, port, name, "A", records=records, exact=exact))
        named = [p for p in entry.ports if p.name]
        if named and svc.headless:
            p = named[0]
            srv = f"_{p.name}._{p.protocol.lower()}.{name}"
            targets = frozenset(
                ("SRV", f"{b.port} {b.endpoint.hostname or _dashed(b.address)}.{name}.")
                for b in p.backends
                if b.ready or svc.publish_not_ready_addresses
            )
            add(f"{srv} SRV", "one per endpoint", DnsCheck(host, port, srv, "SRV", records=targets))
        if svc.cluster_ips and svc.key.name == "web":
            ip = svc.cluster_ips[0]
            check = DnsCheck(
                host, port, _reverse_name(ip), "PTR", records=frozenset({("PTR", name + ".")})
            )
            add(f"-x {ip}", f"the PTR back to {name}", check)
    missing = f"nothere.demo.svc.{zone}"
    add(missing, "NXDOMAIN, with the SOA", DnsCheck(host, port, missing, "A", rcode="NXDOMAIN"))
    return lines


def _dashed(address: str) -> str:
    return address.replace(".", "-").replace(":", "-")


def _reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


# -- requests and judging (no I/O) ------------------------------------------------------


def judge_answer(text: str, service: str, endpoints: frozenset[str]) -> tuple[str | None, str]:
    """(the endpoint that answered, or None) and why not."""
    named = answered_by(text)
    if named is None:
        return None, f"not a demo backend's answer: {text[:80]!r}"
    if named[0] != service:
        return None, f"answered by {named[0]} endpoint {named[1]}, not by {service}"
    if named[1] not in endpoints:
        return None, f"answered by endpoint {named[1]}, not one of {', '.join(sorted(endpoints))}"
    return named[1], ""


def http_request(
    path: str, host_header: str, extra: Iterable[tuple[str, str]] = ()
) -> tuple[h11.Request, bytes]:
    """A GET that asks the server to close after the response (EOF ends the read)."""
    headers = [
        ("host", host_header),
        ("connection", "close"),
        ("user-agent", "netplane-demo-probe"),
        *extra,
    ]
    request = h11.Request(method="GET", target=path, headers=headers)
    conn = h11.Connection(h11.CLIENT)
    return request, conn.send(request) + conn.send(h11.EndOfMessage())


def judge_split(
    answers: Iterable[tuple[str, str]], shares: tuple[tuple[str, frozenset[str], int], ...]
) -> tuple[bool, str]:
    """Did the (service, endpoint) answers meet every share of a SplitCheck exactly?"""
    counts: dict[str, int] = {}
    for service, endpoint in answers:
        allowed = next((e for s, e, _ in shares if s == service), None)
        if allowed is None:
            return False, f"answered by {service}, not one of {', '.join(s for s, _, _ in shares)}"
        if endpoint not in allowed:
            return False, f"answered by {service} endpoint {endpoint}, not one of its endpoints"
        counts[service] = counts.get(service, 0) + 1
    got = ", ".join(f"{counts.get(s, 0)} from {s}" for s, _, _ in shares)
    if any(counts.get(s, 0) != n for s, _, n in shares):
        want = ", ".join(f"{n} from {s}" for s, _, n in shares)
        return False, f"{got}; expected {want}"
    return True, f"200 x{sum(counts.values())}: {got}"


def judge_gateway_status(
    body: bytes, expected: tuple[tuple[str, tuple[str, ...]], ...]
) -> tuple[bool, str]:
    """Does /debug/state give each object the conditions of a GatewayStatusCheck, all True?"""
    try:
        statuses = json.loads(body)["planes"]["ingress"]["gateway"]["status"]
    except (ValueError, KeyError, TypeError):
        return False, "the body has no planes.ingress.gateway.status"
    shown = []
    for key, types in expected:
        status = statuses.get(key)
        if status is None:
            return False, f"{key} has no status"
        if key.startswith(("HTTPRoute ", "GRPCRoute ")):
            groups = [(key, p.get("conditions", [])) for p in status.get("parents", [])]
            if not groups:
                return False, f"{key} is attached to no Gateway"
        else:  # a Gateway's listeners first: they say why the Gateway is not ready
            groups = [
                (f"{key} listener {li.get('name')}", li.get("conditions", []))
                for li in status.get("listeners", [])
            ]
            groups.append((key, status.get("conditions", [])))
        for where, conditions in groups:
            by_type = {c.get("type"): c for c in conditions}
            for t in types:
                c = by_type.get(t)
                if c is None:
                    return False, f"{where} has no {t} condition"
                if c.get("status") != "True":
                    why = f"{c.get('reason')}: {c.get('message')}"
                    return False, f"{where}: {t} is {c.get('status')} ({why})"
        shown.append(f"{key} {', '.join(types)}")
    return True, "; ".join(shown)


def http_response(request: h11.Request, data: bytes) -> tuple[int, bytes]:
    """Status and body of the response in ``data`` (all bytes until EOF); ValueError if cut short."""
    if not data:
        raise ValueError("the connection closed without a response")
    conn = h11.Connection(h11.CLIENT)
    conn.send(request)
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status, body = 0, bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            raise ValueError(f"bad HTTP response: {e}") from None
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(body)
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            raise ValueError("the connection closed before the response was complete")


def dns_query(qname: str, qtype: str) -> tuple[int, bytes]:
    """(ID, wire bytes) of a recursion-desired query, as dig sends it."""
    q = DNSRecord.question(qname, qtype)
    return q.header.id, q.pack()


def judge_dns(check: DnsCheck, qid: int, wire: bytes) -> tuple[bool, str]:
    """Does a reply hold what ``check`` expects? (ok, what it held or why not)."""
    try:
        reply = DNSRecord.parse(wire)
    except Exception as e:  # dnslib raises DNSError and assorted decoding errors
        return False, f"reply does not parse: {e}"
    if reply.header.id != qid:
        return False, "reply to another query (ID differs)"
    rcode = RCODE.get(reply.header.rcode)
    if rcode != check.rcode:
        return False, f"rcode {rcode}, expected {check.rcode}"
    if check.rcode == "NXDOMAIN":
        if not any(QTYPE.get(rr.rtype) == "SOA" for rr in reply.auth):
            return False, "NXDOMAIN without the SOA"
        return True, "NXDOMAIN with the SOA"
    got = {_record(rr) for rr in reply.rr}
    if check.exact:
        got_of_type = {r for r in got if r[0] == check.qtype}
        if got_of_type != check.records:
            return False, f"answers {_show(got_of_type)}, expected {_show(check.records)}"
    elif not check.records <= got:
        return False, f"answers {_show(got)}, expected among them {_show(check.records)}"
    return True, _show(got)


def _record(rr: Any) -> tuple[str, str]:
    kind = QTYPE.get(rr.rtype)
    data = rr.rdata
    if kind == "SRV":
        return kind, f"{data.port} {data.target}"
    if kind in ("CNAME", "PTR"):
        return kind, str(data.label)
    return kind, str(data)


def _show(records: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{kind} {text}" for kind, text in sorted(records)) or "none"


def certificate_of(der: bytes) -> tuple[str, tuple[str, ...]]:
    """(subject, DNS names) of a DER certificate, as the ingress's CertStore describes its own."""
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return cert.subject.rfc4514_string(), names


def judge_certificate(
    got: tuple[str, tuple[str, ...]], expected: tuple[str, tuple[str, ...]]
) -> tuple[bool, str]:
    shown = f"{got[0]} for {', '.join(got[1]) or 'no DNS names'}"
    if got != expected:
        return False, f"certificate {shown}, expected {expected[0]} for {', '.join(expected[1])}"
    return True, f"certificate {shown}"


def judge_admin(path: str, status: int, body: bytes) -> tuple[bool, str]:
    if status != 200:
        return False, f"status {status}"
    if path == "/debug/state":
        try:
            mode = json.loads(body)["config"]["mode"]
        except (ValueError, KeyError, TypeError):
            return False, "the body is not the state JSON"
        if mode != "local":
            return False, f"mode {mode}, the demo runs in local mode"
        return True, "200, mode local"
    return True, f"200 {body.decode(errors='replace').strip()}"


# -- I/O ------------------------------------------------------------------------------------


async def probe(all_tries: Iterable[Try], *, deadline: float = DEADLINE) -> list[Result]:
    """Run every check in turn (each retried until ``deadline`` seconds), one Result each."""
    results = []
    for t in all_tries:
        ok, detail = await _until(functools.partial(_run_check, t.check), deadline)
        results.append(Result(t.what, t.where, ok, detail))
    return results


async def _until(attempt: Callable[[], Any], deadline: float) -> tuple[bool, str]:
    end = time.monotonic() + deadline
    while True:
        try:
            ok, detail = await asyncio.wait_for(attempt(), ATTEMPT_TIMEOUT * 6)
        except (OSError, TimeoutError, ValueError, ssl.SSLError) as e:
            ok, detail = False, _reason(e)
        if ok or time.monotonic() >= end:
            return ok, detail
        await asyncio.sleep(0.2)


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return f"no answer within {ATTEMPT_TIMEOUT:g} s"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


async def _run_check(check: Check) -> tuple[bool, str]:
    if isinstance(check, HttpCheck):
        return await _http_check(check)
    if isinstance(check, SplitCheck):
        return await _split_check(check)
    if isinstance(check, UdpCheck):
        return await _udp_check(check)
    if isinstance(check, TlsCheck):
        _, cert = await _exchange(check.host, check.port, None, check.sni)
        return judge_certificate(cert, check.certificate) if cert else (False, "no certificate")
    if isinstance(check, DnsCheck):
        qid, wire = dns_query(check.qname, check.qtype)
        return judge_dns(check, qid, await _udp(check.host, check.port, wire))
    path = "/debug/state" if isinstance(check, GatewayStatusCheck) else check.path
    request, wire = http_request(path, str(Listen(check.host, check.port)))
    data, _ = await _exchange(check.host, check.port, wire, None)
    status, body = http_response(request, data)
    if isinstance(check, GatewayStatusCheck):
        if status != 200:
            return False, f"status {status}"
        return judge_gateway_status(body, check.expected)
    return judge_admin(path, status, body)


async def _http_check(check: HttpCheck) -> tuple[bool, str]:
    # Enough requests for round-robin to reach every endpoint twice over.
    rounds = 2 * len(check.endpoints) if check.every else 1
    seen: list[str] = []
    for _ in range(max(1, rounds)):
        request, wire = http_request(check.path, check.host_header, check.headers)
        data, cert = await _exchange(check.host, check.port, wire, check.sni)
        if check.certificate is not None:
            ok, why = judge_certificate(cert, check.certificate) if cert else (False, "no cert")
            if not ok:
                return False, why
        status, body = http_response(request, data)
        if status != 200:
            return False, f"status {status}: {body[:80]!r}"
        endpoint, why = judge_answer(body.decode(errors="replace"), check.service, check.endpoints)
        if endpoint is None:
            return False, why
        seen.append(endpoint)
    if check.every and set(seen) != check.endpoints:
        missing = ", ".join(sorted(check.endpoints - set(seen)))
        return False, f"answered only by {', '.join(sorted(set(seen)))}; never by {missing}"
    by = ", ".join(sorted(set(seen)))
    tls = f"; {judge_certificate(cert, check.certificate)[1]}" if check.certificate and cert else ""
    return True, f"200 from {check.service} endpoint {by}{tls}"


async def _split_check(check: SplitCheck) -> tuple[bool, str]:
    answers = []
    for _ in range(check.requests):
        request, wire = http_request(check.path, check.host_header)
        data, _ = await _exchange(check.host, check.port, wire, None)
        status, body = http_response(request, data)
        if status != 200:
            return False, f"status {status}: {body[:80]!r}"
        named = answered_by(body.decode(errors="replace"))
        if named is None:
            return False, f"not a demo backend's answer: {body[:80]!r}"
        answers.append(named)
    return judge_split(answers, check.shares)


async def _udp_check(check: UdpCheck) -> tuple[bool, str]:
    reply = await _udp(check.host, check.port, b"hello")
    endpoint, why = judge_answer(reply.decode(errors="replace"), check.service, check.endpoints)
    if endpoint is None:
        return False, why
    if not reply.endswith(b": hello"):
        return False, f"not an echo of what was sent: {reply[:80]!r}"
    return True, f"echoed by {check.service} endpoint {endpoint}"


async def _exchange(
    host: str, port: int, request: bytes | None, sni: str | None
) -> tuple[bytes, tuple[str, tuple[str, ...]] | None]:
    """Connect (TLS with SNI when given), send, read to EOF; the data and the peer certificate."""
    ctx = None
    if sni is not None:
        # As curl -k: the demo's certificate is its own; its names are checked, not its issuer.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, server_hostname=sni), ATTEMPT_TIMEOUT
    )
    try:
        cert = None
        if sni is not None:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            cert = certificate_of(der) if der else None
        data = b""
        if request is not None:
            writer.write(request)
            await writer.drain()
            data = await asyncio.wait_for(_read_to_eof(reader), ATTEMPT_TIMEOUT)
        return data, cert
    finally:
        writer.close()
        with contextlib.suppress(OSError):  # the server closed first: nothing left to say
            await writer.wait_closed()


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while len(data) < READ_LIMIT and (chunk := await reader.read(READ_LIMIT)):
        data += chunk
    return data


class _FirstReply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable, say
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _udp(host: str, port: int, payload: bytes) -> bytes:
    """One datagram to host:port and the first reply."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_FirstReply, remote_addr=(host, port))
    try:
        transport.sendto(payload)
        return await asyncio.wait_for(protocol.reply, ATTEMPT_TIMEOUT)
    finally:
        transport.close()
