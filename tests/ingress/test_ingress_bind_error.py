"""An ingress listener that cannot bind names its address as a user types it back: IPv6 bracketed."""

from __future__ import annotations

import errno
import os
import socket

import pytest

import netplane
from netplane.config import Config, Listen
from netplane.errors import ConfigError


@pytest.mark.parametrize(("family", "host", "shown"), [
    (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
    (socket.AF_INET6, "::1", "[::1]"),
])  # fmt: skip
async def test_a_taken_ingress_port_is_named_with_its_address(
    family: int, host: str, shown: str
) -> None:
    with socket.socket(family) as taken:
        taken.bind((host, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        dp = netplane.Dataplane(
            Config(
                mode="local", admin=None, proxy=False, dns=None, ingress_https=None,
                ingress_http=Listen(host, busy),
            )
        )  # fmt: skip
        with pytest.raises(ConfigError) as e:
            await dp.start()
    assert str(e.value) == (
        f"ingress HTTP: cannot listen on {shown}:{busy}/TCP: {os.strerror(errno.EADDRINUSE)}"
    )
    assert not dp.running
