"""KernelDatapath's full sync, with a recording nft: which table each Service lands in,
and a frontend two Services claim (the first keeps it, as in the user-space proxy)."""

from __future__ import annotations

import asyncio
from typing import Any

from test_nft_ruleset import eps, svc

from netplane.events import WatchEvent
from netplane.l4.kernel import KernelDatapath
from netplane.l4.nft_ruleset import shard_of
from netplane.model import parse_object
from netplane.service_table import ServiceTable
from netplane.state import ClusterState


class RecordingNft:
    backend = "recording"

    def __init__(self) -> None:
        self.scripts: list[str] = []

    async def tables(self) -> dict[str, Any]:
        return {}

    async def apply(self, script: str) -> None:
        self.scripts.append(script)


class TableOnly:
    """What KernelDatapath reads of a Dataplane for a full sync: the table and the state."""

    def __init__(self, *objs: dict) -> None:
        self.state = ClusterState()
        for o in objs:
            obj = parse_object(o)
            assert obj is not None
            self.state.apply(WatchEvent.upsert(obj))
        self.table = ServiceTable()
        self.table.rebuild(self.state)


def test_a_frontend_two_services_claim_is_served_for_the_first_only() -> None:
    dp = TableOnly(
        svc("a", "10.96.0.10", externalIPs=["198.18.99.1"]), eps("a", ["198.18.1.2"]),
        svc("b", "10.96.0.11", externalIPs=["198.18.99.1"]), eps("b", ["198.18.1.3"]),
    )  # fmt: skip
    nft = RecordingNft()
    kernel = KernelDatapath(dp, nft, mode="nftables")  # type: ignore[arg-type]
    assert asyncio.run(kernel._full())
    (script,) = nft.scripts
    shared = [line for line in script.splitlines() if "198.18.99.1 . tcp . 80" in line]
    holder = next(iter(dp.table)).key  # the first in table order keeps it
    assert len(shared) == 1, shared
    assert f"inet {shard_of(holder, 16)} service-ips4" in shared[0]
    assert f"/{holder[1]}/tcp/p" in shared[0]
    # each Service's own ClusterIP is served, in its own table
    for name, ip in (("a", "10.96.0.10"), ("b", "10.96.0.11")):
        table = shard_of(("t", name), 16)
        assert any(f"inet {table} service-ips4 {{ {ip} . tcp . 80" in line
                   for line in script.splitlines())  # fmt: skip
