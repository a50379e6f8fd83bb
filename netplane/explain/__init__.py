"""``netplane explain``: why a request, a connection or a DNS query gets the answer it gets.

Three kinds of target (:mod:`netplane.explain.target`): a URL (which
listener, which Ingress or HTTPRoute rule, why the others lost, the policy,
the Service port and its endpoints, the certificate SNI picks), a service
address ``IP:PORT[/proto]`` (the service port, its frontends, datapath,
balancing and traffic policy, each endpoint in or out and why), and a DNS
name or address (the records, the answer as dig prints it, and why).

Every answer comes from the functions that serve traffic (DESIGN.md,
"Explaining"): the route tables' own matching, the picker's own
categorisation, the zone's own lookup, each with a sans-IO companion beside
it that lists the candidates and why each lost. Nothing here decides a
match a second way.

:func:`explain` returns a JSON-ready document; :func:`render` turns it into
text for an 80-column terminal. A running netplane answers on its admin
server (``GET /debug/explain``, :mod:`netplane.explain.admin`); the CLI
either asks it or builds the state itself (``-f PATH``, ``--kubeconfig``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from netplane.explain.target import DnsTarget, HttpTarget, L4Target, TargetError, parse_target
from netplane.explain.text import render
from netplane.explain.views import Views

__all__ = ["TargetError", "Views", "explain", "parse_target", "render"]


def explain(
    views: Views,
    target: str,
    *,
    qtype: str | None = None,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    tls: bool = False,
    client_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """The explanation of one target (raises :class:`TargetError` for one of no kind)."""
    t = parse_target(target, qtype=qtype, tls=tls)
    doc: dict[str, Any]
    if isinstance(t, HttpTarget):
        from netplane.explain.http import explain_http

        doc = explain_http(views, t, method=method, headers=list(headers), client_ip=client_ip)
    elif isinstance(t, L4Target):
        from netplane.explain.l4 import explain_l4

        doc = explain_l4(views, t)
    else:
        assert isinstance(t, DnsTarget)
        from netplane.explain.dns import explain_dns

        doc = explain_dns(views, t)
    doc["problems"] = _problems(views, t, doc)
    return doc


def _problems(views: Views, t: Any, doc: dict[str, Any]) -> list[str]:
    """The refused or ignored objects that would have served this target (the Dataplane's
    ProblemBook, the same list as /debug/state's ``problems``), one line each."""
    book = getattr(views.dp, "problems", None)
    if book is None:
        return []
    found = book.concerning(host=t.name) if isinstance(t, HttpTarget) else []
    for ref in sorted(_services(doc)):
        found += book.concerning(service=ref)
    return list(dict.fromkeys(str(p) for p in found))


def _services(doc: Any) -> set[tuple[str, str]]:
    """Every ``namespace/name`` the answer names as a Service (its "service" fields)."""
    out: set[tuple[str, str]] = set()
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "service" and isinstance(v, str) and v.count("/") == 1:
                ns, name = v.split("/")
                out.add((ns, name))
            else:
                out |= _services(v)
    elif isinstance(doc, list):
        for v in doc:
            out |= _services(v)
    return out


def parse_header(line: str) -> tuple[str, str]:
    """``Name: value`` as curl's ``-H`` takes it."""
    name, colon, value = line.partition(":")
    if not colon or not name.strip():
        raise TargetError(f"explain: header {line!r} is not NAME: VALUE")
    return name.strip(), value.strip()
