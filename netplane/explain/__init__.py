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
    if isinstance(t, HttpTarget):
        from netplane.explain.http import explain_http

        return explain_http(views, t, method=method, headers=list(headers), client_ip=client_ip)
    if isinstance(t, L4Target):
        from netplane.explain.l4 import explain_l4

        return explain_l4(views, t)
    assert isinstance(t, DnsTarget)
    from netplane.explain.dns import explain_dns

    return explain_dns(views, t)


def parse_header(line: str) -> tuple[str, str]:
    """``Name: value`` as curl's ``-H`` takes it."""
    name, colon, value = line.partition(":")
    if not colon or not name.strip():
        raise TargetError(f"explain: header {line!r} is not NAME: VALUE")
    return name.strip(), value.strip()
