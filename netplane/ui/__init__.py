"""The dashboard: ``GET /ui`` on the admin server, one read-only page.

The page is four files of this package (``index.html``, ``ui.css``,
``ui.js`` and ``icon.svg``: plain HTML, CSS and JavaScript, no framework,
nothing fetched from elsewhere, no build step), read once and served as
they are. The
script asks ``GET /ui/data`` for the numbers every 2 seconds (longer when
an answer is slow) and renders them with DOM calls and ``textContent``
only, so no string from the cluster is ever parsed as HTML; the
Content-Security-Policy sent with the page allows nothing but this
origin's own files, so an injected script would not run anyway.

This module is the thin adapter around :func:`netplane.ui_data.build`:
it gathers the inputs from a :class:`~netplane.dataplane.Dataplane` (the
summary of ``/debug/state`` with the workers' planes merged, the service
table, the metric families after the same refresh a ``/metrics`` scrape
does, the current problems) and serves the result. A document is reused for
:data:`REUSE_SECONDS`, per filter, so many open tabs cost one build.

Every route is a GET (HEAD too); nothing here changes any state. The page
is served wherever the admin server listens: on loopback unless
``--admin`` says otherwise (see the README's warning).
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any

from netplane.admin import AdminServer, Request, Response
from netplane.ui_data import build

#: a document this young is served again as it is (per filter)
REUSE_SECONDS = 1.0
#: documents kept at once (one per distinct set of filters)
KEEP = 8

_FILES = {
    "index.html": "text/html; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
    "ui.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# Nothing but this origin's own files; no inline script or style, no frames.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = (
    ("content-security-policy", _CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)
_FILTERS = ("services", "routes", "problems")


def static_file(name: str) -> bytes:
    """One of the page's files, from the installed package."""
    return (resources.files(__name__) / name).read_bytes()


class Dashboard:
    """The ``/ui`` routes of one Dataplane's admin server."""

    def __init__(self, dp: Any) -> None:
        self._dp = dp
        self._started = time.monotonic()
        self._cache: dict[tuple[str, ...], tuple[float, bytes]] = {}
        self._files = {name: static_file(name) for name in _FILES}

    def add_routes(self, admin: AdminServer) -> None:
        page = self._file("index.html")
        admin.add_route("GET", "/ui", page)
        admin.add_route("GET", "/ui/", page)
        admin.add_route("GET", "/ui/ui.css", self._file("ui.css"))
        admin.add_route("GET", "/ui/ui.js", self._file("ui.js"))
        admin.add_route("GET", "/ui/icon.svg", self._file("icon.svg"))
        admin.add_route("GET", "/ui/data", self.data)

    def _file(self, name: str) -> Any:
        response = Response(200, self._files[name], _FILES[name], headers=_PAGE_HEADERS)

        def serve(request: Request) -> Response:
            return response

        return serve

    async def document(self, filters: dict[str, str]) -> dict[str, Any]:
        """Gather the inputs and build the ``/ui/data`` document."""
        dp = self._dp
        for refresh in dp.before_scrape:  # --workers N: the workers' figures
            await refresh()
        state = dp.debug_state(summary=True)
        if dp.remote_planes is not None:
            state["planes"] = {**await dp.remote_planes(), **state["planes"]}
        book = getattr(dp, "problems", None)
        problems = [p.to_dict() for p in book] if book is not None else None
        return build(
            state,
            dp.table,
            dp.metrics.registry.collect(),
            problems,
            uptime=time.monotonic() - self._started,
            now=time.time(),
            filters=filters,
        )

    async def data(self, request: Request) -> Response:
        filters = {k: request.query.get(k, "")[:200] for k in _FILTERS}
        key = tuple(filters[k] for k in _FILTERS)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is None or now - cached[0] > REUSE_SECONDS:
            doc = await self.document(filters)
            body = json.dumps(doc, separators=(",", ":"), default=str).encode()
            self._cache[key] = cached = (time.monotonic(), body)
            while len(self._cache) > KEEP:
                del self._cache[min(self._cache, key=lambda k: self._cache[k][0])]
        return Response(
            200,
            cached[1],
            "application/json",
            headers=(("cache-control", "no-store"), ("x-content-type-options", "nosniff")),
        )


def add_routes(admin: AdminServer, dp: Any) -> Dashboard:
    """Serve the dashboard of ``dp`` on ``admin``: ``/ui``, its files and ``/ui/data``."""
    dashboard = Dashboard(dp)
    dashboard.add_routes(admin)
    return dashboard
