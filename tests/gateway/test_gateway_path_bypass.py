"""Path forms that backends read in different ways, routed by an HTTPRoute.

As for Ingress (tests/ingress/test_ingress_path_bypass_e2e.py), a rule on
``/admin`` sends to one backend and a catch-all ``/`` to another. Each form
that some backend reads as ``/admin/...`` must come back as the proxy's 400
or be served by the ``/admin`` rule, never by the catch-all: routing by
Gateway API reads paths with the same function (``paths.request_paths``).
"""

from __future__ import annotations

import pytest
from gateway_world import HAVE_CURL, INFRA, ConformanceWorld, backend, http_route

pytestmark = pytest.mark.skipif(not HAVE_CURL, reason="needs curl")

ADMIN = f"{INFRA}/infra-backend-v2"
ELSE = f"{INFRA}/infra-backend-v1"

# (request target, what the client must get: a status, or the backend that serves it)
FORMS = [
    ("/admin;x=1/x", 400),  # Tomcat and Spring drop ; parameters
    ("/x/..;/admin/x", 400),
    ("/x\\..\\admin/x", 400),  # IIS-style servers read \ as /
    ("/x%5C..%5Cadmin/x", 400),
    ("/admin%2Fx", 400),  # escaped slashes
    ("/x/..%2Fadmin/x", 400),
    ("/x%C0%AF..%C0%AFadmin/x", 400),  # overlong UTF-8
    ("/admin%00/x", 400),  # control bytes
    ("/admin%252Fx", 400),  # double encoding
    ("/admin/x", ADMIN),  # the rule itself
    ("/x/../admin/x", ADMIN),
    ("/x/%2e%2e/admin", ADMIN),
    ("/public/x", ELSE),
    ("/app;jsessionid=ABC/page", ELSE),  # every reader agrees: served
]


async def test_no_form_reaches_the_catch_all_in_place_of_the_admin_rule(
    world: ConformanceWorld,
) -> None:
    route = http_route(
        "site",
        [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
             "backendRefs": [backend("infra-backend-v2")]},
            {"backendRefs": [backend("infra-backend-v1")]},
        ],
    )  # fmt: skip
    await world.start([route])
    wrong = []
    for target, want in FORMS:
        r = await world.request("same-namespace", target)
        got = r.served_by if r.status == 200 else r.status
        if got != want:
            wrong.append(f"{target}: {got}, want {want}")
    assert not wrong, "\n".join(wrong)
