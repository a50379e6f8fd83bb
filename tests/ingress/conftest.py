"""The ingress tests' shared fixture: the HTTP version curl speaks, for tests run over both."""

from __future__ import annotations

import pytest
from ingress_fakes import PROTOCOLS, CurlProtocol


@pytest.fixture(params=PROTOCOLS, ids=str)
def proto(request: pytest.FixtureRequest) -> CurlProtocol:
    """HTTP/1.1, then HTTP/2 (h2c with prior knowledge on http://, ALPN h2 on https://)."""
    return request.param
