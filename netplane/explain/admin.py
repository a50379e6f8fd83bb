"""``GET /debug/explain`` on the admin server, and the CLI's client for it.

Query parameters: ``target`` (required), ``type`` (DNS record type),
``method``, ``header`` (``Name: value`` lines, one per line: the admin
server keeps the last value of a repeated parameter), ``tls=1``,
``client`` (the client address allowlists see) and ``format=text`` for the
rendered text instead of JSON. The tables are the running planes' own; the
owner of ``--workers N`` builds them from its state on first use and keeps
them current (:class:`netplane.explain.views.Views`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from netplane.explain import explain, parse_header, render
from netplane.explain.target import TargetError
from netplane.explain.views import Views

PATH = "/debug/explain"
TIMEOUT = 10.0


def add_route(admin: Any, dp: Any) -> None:
    """Serve ``GET /debug/explain`` for ``dp`` on its admin server."""
    admin.add_route("GET", PATH, explain_handler(dp))


def explain_handler(dp: Any) -> Any:
    """The admin route's handler for one Dataplane (its tables are read at each request)."""
    views: Views | None = None

    def handle(request: Any) -> Any:
        from netplane.admin import Response

        nonlocal views
        q = request.query
        target = q.get("target", "")
        try:
            if not target:
                raise TargetError("explain: the target parameter is missing")
            headers = [parse_header(h) for h in q.get("header", "").splitlines() if h.strip()]
            if views is None:
                views = Views(dp)
            doc = explain(
                views,
                target,
                qtype=q.get("type") or None,
                method=q.get("method") or "GET",
                headers=headers,
                tls=q.get("tls", "") not in ("", "0", "false"),
                client_ip=q.get("client") or "127.0.0.1",
            )
        except TargetError as e:
            return Response.json({"error": str(e)}, 400)
        if q.get("format") == "text":
            return Response.text(render(doc))
        return Response.json(doc)

    return handle


def ask(
    admin: str,
    target: str,
    *,
    qtype: str | None = None,
    method: str = "GET",
    headers: Sequence[str] = (),
    tls: bool = False,
    client_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """Ask a running netplane's admin server (``HOST:PORT``); raises OSError or TargetError."""
    params = {"target": target, "method": method}
    if qtype:
        params["type"] = qtype
    if headers:
        params["header"] = "\n".join(headers)
    if tls:
        params["tls"] = "1"
    if client_ip != "127.0.0.1":
        params["client"] = client_ip
    url = f"http://{admin}{PATH}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            error = json.loads(body).get("error")
        except ValueError:
            error = None
        if e.code == 400 and error:
            raise TargetError(error) from None
        if e.code == 404:
            raise OSError(f"{admin} has no {PATH} (an older netplane?)") from None
        raise OSError(f"{admin} answered {e.code}") from None
