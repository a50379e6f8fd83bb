"""The kernel datapath's sans-IO side: which datapath a port gets, the rules, the diffs.

The last tests hand the generated scripts to a real ``nft`` inside a
network namespace of their own (skipped without root, nft or namespaces):
the kernel must accept the full table, an adoption of it, and incremental
transactions, and the table must end up equal to one written from scratch.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from netplane.events import WatchEvent
from netplane.l4.datapath import DATAPATH_ANNOTATION, annotation_problem, choose
from netplane.l4.nft_ruleset import (
    EMPTY,
    Settings,
    Transaction,
    full_script,
    plan_service,
)
from netplane.l4.picker import NodeInfo
from netplane.model import parse_object
from netplane.service_table import ServiceEntry, ServiceTable
from netplane.state import ClusterState

CIDRS = (ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00::/108"))
SETTINGS = Settings(NodeInfo("n1"), ("0.0.0.0", "::"), CIDRS, "nftables")


def svc(name: str, ip: str = "10.96.0.10", port: int = 80, *, protocol: str = "TCP",
        annotations: dict | None = None, node_port: int | None = None, **spec: Any) -> dict:  # fmt: skip
    p: dict[str, Any] = {"name": "p", "port": port, "protocol": protocol}
    if node_port:
        p["nodePort"] = node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "t", "annotations": annotations or {}},
        "spec": {"clusterIP": ip, "ports": [p], **spec},
    }


def eps(name: str, addrs: list[Any], port: int = 8080, protocol: str = "TCP") -> dict:
    """``addrs``: addresses, or (address, conditions, nodeName) tuples."""
    out = []
    for a in addrs:
        addr, cond, node = (a, {"ready": True}, None) if isinstance(a, str) else a
        ep: dict[str, Any] = {"addresses": [addr], "conditions": cond}
        if node:
            ep["nodeName"] = node
        out.append(ep)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": "t",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv6" if out and ":" in out[0]["addresses"][0] else "IPv4",
        "ports": [{"name": "p", "port": port, "protocol": protocol}],
        "endpoints": out,
    }


def entries(*objs: dict) -> dict[str, ServiceEntry]:
    state, table = ClusterState(), ServiceTable()
    for o in objs:
        obj = parse_object(o)
        assert obj is not None
        state.apply(WatchEvent.upsert(obj))
    table.rebuild(state)
    return {e.key[1]: e for e in table}


def one(*objs: dict) -> ServiceEntry:
    (entry,) = entries(*objs).values()
    return entry


def dnat_targets(rules: tuple[str, ...]) -> list[str]:
    return [m.group(1) for r in rules if (m := re.search(r"dnat ip6? to (\S+)", r))]


# -- which datapath ---------------------------------------------------------------------


def test_choose_follows_the_mode_and_what_the_port_needs() -> None:
    plain = one(svc("a"))
    port = plain.ports[0]
    assert choose(plain, port, "userspace")[0] == "userspace"
    assert choose(plain, port, "nftables") == ("nftables", "--l4-datapath nftables")
    assert choose(plain, port, "auto")[0] == "nftables"

    pp = one(svc("a", annotations={"netplane.io/proxy-protocol": "v2"}))
    for mode in ("nftables", "auto"):
        assert choose(pp, pp.ports[0], mode) == (
            "userspace",
            "PROXY protocol needs the user-space proxy",
        )

    least = one(svc("a", annotations={"netplane.io/lb-policy": "least-connections"}))
    assert choose(least, least.ports[0], "auto") == (
        "userspace",
        "least-connections needs the user-space proxy",
    )
    assert choose(least, least.ports[0], "nftables")[0] == "nftables"
    # the default policy counts as much as the annotation
    assert choose(plain, port, "auto", default_policy="least-connections")[0] == "userspace"

    asked = one(svc("a", annotations={DATAPATH_ANNOTATION: "userspace"}))
    assert choose(asked, asked.ports[0], "nftables")[0] == "userspace"
    kernel = one(svc("a", annotations={DATAPATH_ANNOTATION: "nftables",
                                       "netplane.io/lb-policy": "least-connections"}))  # fmt: skip
    assert choose(kernel, kernel.ports[0], "auto")[0] == "nftables"
    assert choose(kernel, kernel.ports[0], "userspace")[0] == "userspace"  # the operator wins

    bad = one(svc("a", annotations={DATAPATH_ANNOTATION: "ebpf"}))
    assert "not one of" in (annotation_problem(bad) or "")
    assert annotation_problem(plain) is None


# -- the rules of one service ----------------------------------------------------------------


def test_cluster_ip_spreads_over_ready_endpoints_with_a_uniform_cascade() -> None:
    e = one(svc("a"), eps("a", ["198.18.1.2", "198.18.1.3", "198.18.1.4",
                                ("198.18.1.5", {"ready": False}, None)]))  # fmt: skip
    plan = plan_service(e, SETTINGS)
    (chain,) = [c for c in plan.chains if c.startswith("svc4-")]
    rules = plan.chains[chain]
    assert dnat_targets(rules) == ["198.18.1.2:8080", "198.18.1.3:8080", "198.18.1.4:8080"]
    picks = [r.split(" 0 ")[0] for r in rules if r.startswith("numgen")]
    assert picks == ["numgen random mod 3", "numgen random mod 2"]  # 1/3, then 1/2 of the rest
    assert rules[-1].startswith("meta l4proto tcp dnat")
    assert plan.elements == {("service-ips4", "10.96.0.10 . tcp . 80"): f"goto {chain}"}
    # hairpin and the node's own AnyIP-sourced connections are masqueraded
    assert "ip saddr 198.18.1.2 jump mark-for-masquerade" in rules
    assert "ip saddr @service-cidrs4 jump mark-for-masquerade" in rules


def test_no_ready_endpoint_rejects_and_terminating_ones_are_the_fallback() -> None:
    plan = plan_service(one(svc("a")), SETTINGS)
    assert plan.chains == {}
    assert plan.elements == {("no-endpoint-ips4", "10.96.0.10 . tcp . 80"): "goto reject-chain"}

    terminating = {"ready": False, "serving": True, "terminating": True}
    gone = {"ready": False, "serving": False, "terminating": True}
    e = one(svc("a"), eps("a", [("198.18.1.2", terminating, None), ("198.18.1.3", gone, None)]))
    plan = plan_service(e, SETTINGS)
    (rules,) = plan.chains.values()
    assert dnat_targets(rules) == ["198.18.1.2:8080"]


def test_node_ports_and_external_traffic_policy() -> None:
    here = ("198.18.1.2", {"ready": True}, "n1")
    there = ("198.18.1.3", {"ready": True}, "n2")
    cluster = one(svc("a", type="NodePort", node_port=30080), eps("a", [here, there]))
    plan = plan_service(cluster, SETTINGS)
    ext = next(c for c in plan.chains if c.startswith("ext4-"))
    assert plan.elements[("service-nodeports4", "tcp . 30080")] == f"goto {ext}"
    # Cluster: masqueraded, then the cluster chain itself
    assert plan.chains[ext] == ("jump mark-for-masquerade", f"goto {ext.replace('ext', 'svc', 1)}")

    local = one(svc("a", type="NodePort", node_port=30080, externalTrafficPolicy="Local"),
                eps("a", [here, there]))  # fmt: skip
    plan = plan_service(local, SETTINGS)
    ext = next(c for c in plan.chains if c.startswith("ext4-"))
    rules = plan.chains[ext]
    assert rules[0] == "fib saddr type local jump mark-for-masquerade"  # clients keep their IP
    assert dnat_targets(rules) == ["198.18.1.2:8080"]
    svc_chain = next(c for c in plan.chains if c.startswith("svc4-"))
    assert dnat_targets(plan.chains[svc_chain]) == ["198.18.1.2:8080", "198.18.1.3:8080"]

    nowhere = one(svc("a", type="NodePort", node_port=30080, externalTrafficPolicy="Local"),
                  eps("a", [there]))  # fmt: skip
    plan = plan_service(nowhere, SETTINGS)
    assert plan.elements[("no-endpoint-nodeports4", "tcp . 30080")] == "goto reject-chain"
    assert ("service-ips4", "10.96.0.10 . tcp . 80") in plan.elements  # ClusterIP still served


def test_internal_traffic_policy_local_and_external_ips() -> None:
    there = ("198.18.1.3", {"ready": True}, "n2")
    e = one(svc("a", internalTrafficPolicy="Local", externalIPs=["198.18.99.1"]),
            eps("a", [there]))  # fmt: skip
    plan = plan_service(e, SETTINGS)
    assert plan.elements[("no-endpoint-ips4", "10.96.0.10 . tcp . 80")] == "goto reject-chain"
    ext = next(c for c in plan.chains if c.startswith("ext4-"))
    assert plan.elements[("service-ips4", "198.18.99.1 . tcp . 80")] == f"goto {ext}"


def test_client_ip_affinity_gets_a_chain_and_a_timed_set_per_endpoint() -> None:
    e = one(svc("a", sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}),
            eps("a", ["198.18.1.2", "198.18.1.3"]))  # fmt: skip
    plan = plan_service(e, SETTINGS)
    assert len(plan.sets) == 2
    assert all(d.endswith("flags dynamic,timeout; timeout 60s") for d in plan.sets.values())
    svc_chain = next(c for c in plan.chains if c.startswith("svc4-"))
    rules = plan.chains[svc_chain]
    sticky = [r for r in rules if r.startswith("ip saddr @aff4-")]
    assert len(sticky) == 2 and all(" goto ep4-" in r for r in sticky)
    eps_chains = [c for c in plan.chains if c.startswith("ep4-")]
    for c in eps_chains:
        assert any(r.startswith("update @aff4-") for r in plan.chains[c])
    # a new timeout is a new set (a set's timeout cannot change in place)
    longer = one(svc("a", sessionAffinity="ClientIP",
                     sessionAffinityConfig={"clientIP": {"timeoutSeconds": 90}}),
                 eps("a", ["198.18.1.2", "198.18.1.3"]))  # fmt: skip
    assert set(plan_service(longer, SETTINGS).sets).isdisjoint(plan.sets)


def test_ipv6_and_udp() -> None:
    e = one(svc("a", "fd00::10", 53, protocol="UDP", ipFamilies=["IPv6"]),
            eps("a", ["fd00:1::2"], 5353, "UDP"))  # fmt: skip
    plan = plan_service(e, SETTINGS)
    (chain,) = plan.chains
    assert chain.startswith("svc6-")
    assert plan.chains[chain][-1] == "meta l4proto udp dnat ip6 to [fd00:1::2]:5353"
    assert plan.elements == {("service-ips6", "fd00::10 . udp . 53"): f"goto {chain}"}
    (flows,) = plan.udp.values()
    assert flows.frontends == (("fd00::10", 53),)


def test_user_space_ports_are_listed_but_not_programmed() -> None:
    e = one(svc("a", annotations={"netplane.io/proxy-protocol": "v2"}), eps("a", ["198.18.1.2"]))
    plan = plan_service(e, SETTINGS)
    assert plan.chains == {} and plan.elements == {}
    (port,) = plan.ports
    assert (port.datapath, port.reason) == (
        "userspace",
        "PROXY protocol needs the user-space proxy",
    )


# -- transactions ------------------------------------------------------------------------------


def test_an_endpoint_change_rewrites_one_chain_and_nothing_else() -> None:
    before = plan_service(one(svc("a"), eps("a", ["198.18.1.2"])), SETTINGS)
    after = plan_service(one(svc("a"), eps("a", ["198.18.1.2", "198.18.1.3"])), SETTINGS)
    tx = Transaction()
    tx.change(before, after)
    (chain,) = after.chains
    assert tx.flushes == [f"flush chain inet netplane {chain}"]
    assert tx.defines == [] and tx.deletes == []
    assert tx.element_adds == [] and tx.element_deletes == []
    assert all(r.startswith(f"add rule inet netplane {chain} ") for r in tx.rules)

    same = Transaction()
    same.change(after, after)
    assert not same


def test_losing_every_endpoint_moves_the_frontend_to_reject_and_drops_the_chain() -> None:
    before = plan_service(one(svc("a"), eps("a", ["198.18.1.2"])), SETTINGS)
    after = plan_service(one(svc("a")), SETTINGS)
    tx = Transaction()
    tx.change(before, after)
    script = tx.script().splitlines()
    (chain,) = before.chains
    delete_el = "delete element inet netplane service-ips4 { 10.96.0.10 . tcp . 80 }"
    add_el = ("add element inet netplane no-endpoint-ips4 "
              "{ 10.96.0.10 . tcp . 80 : goto reject-chain }")  # fmt: skip
    # the element that points at the chain goes before the chain does
    assert script.index(delete_el) < script.index(f"delete chain inet netplane {chain}")
    assert add_el in script

    gone = Transaction()
    gone.change(before, EMPTY)
    assert f"delete chain inet netplane {chain}" in gone.deletes


def test_a_frontend_held_by_another_service_is_skipped() -> None:
    plan = plan_service(one(svc("a"), eps("a", ["198.18.1.2"])), SETTINGS)
    key = next(iter(plan.elements))
    tx = Transaction()
    tx.change(EMPTY, plan, skip_elements={key})
    assert tx.element_adds == []
    later = Transaction()
    later.change(plan, EMPTY, old_skipped={key})
    assert later.element_deletes == []  # never added, so not deleted


def test_full_script_adopts_and_deletes_what_is_no_longer_wanted() -> None:
    plan = plan_service(one(svc("a"), eps("a", ["198.18.1.2"])), SETTINGS)
    tx = full_script(SETTINGS, [plan], existing_chains={"svc4-OLD-t/b/tcp/p", "services"},
                     existing_sets={"aff4-OLD"})  # fmt: skip
    script = tx.script().splitlines()
    assert "flush table inet netplane" not in script  # never emptied first
    assert script[-2:] == [
        "delete chain inet netplane svc4-OLD-t/b/tcp/p",
        "delete set inet netplane aff4-OLD",
    ]
    assert "flush chain inet netplane svc4-OLD-t/b/tcp/p" in script
    assert "add element inet netplane service-cidrs4 { 10.96.0.0/12 }" in script


def test_node_port_addresses_given_as_ips_use_a_set() -> None:
    settings = Settings(NodeInfo("n1"), ("198.18.0.1", "127.0.0.1"), CIDRS, "nftables")
    script = full_script(settings, []).script()
    assert "add element inet netplane nodeport-ips4 { 198.18.0.1 }" in script
    assert "127.0.0.1 }" not in script  # loopback NodePorts are the proxy's
    assert "ip daddr @nodeport-ips4 meta l4proto . th dport vmap @service-nodeports4" in script
    assert "fib daddr type local" not in script


# -- the kernel accepts the scripts ------------------------------------------------------------


def _netns_nft() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("nft") is None and not os.path.exists("/usr/sbin/nft"):
        return "nft is not installed"
    r = subprocess.run(["ip", "netns", "add", "npnftprobe"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"no network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "npnftprobe"], capture_output=True)
    return None


_why = _netns_nft()
in_netns = pytest.mark.skipif(_why is not None, reason=_why or "")

_CHILD = r"""
import asyncio, json, sys
from netplane.l4.nft_apply import Nft
async def main():
    nft = Nft.find(library=sys.argv[1] == "lib")
    for script in json.load(sys.stdin):
        await nft.apply(script)
    print(await nft._run(["list", "table", "inet", "netplane"]))
asyncio.run(main())
"""


def _apply_in_netns(scripts: list[str], backend: str) -> str:
    import json
    import sys

    ns = f"npnft{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _CHILD, backend],
            input=json.dumps(scripts), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _world() -> tuple[dict[str, ServiceEntry], dict[str, ServiceEntry]]:
    here = ("198.18.1.2", {"ready": True}, "n1")
    before = entries(
        svc("a"), eps("a", ["198.18.1.2", "198.18.1.3"]),
        svc("b", "10.96.0.11", type="NodePort", node_port=30080, externalTrafficPolicy="Local",
            sessionAffinity="ClientIP"), eps("b", [here]),
        svc("c", "10.96.0.12", 53, protocol="UDP"),
        svc("d", "fd00::10", ipFamilies=["IPv6"]), eps("d", ["fd00:1::2"]),
        svc("e", "10.96.0.14", externalIPs=["198.18.99.1"]), eps("e", ["198.18.1.4"]),
    )  # fmt: skip
    after = entries(
        svc("a"), eps("a", ["198.18.1.3"]),
        svc("b", "10.96.0.11", type="NodePort", node_port=30080, sessionAffinity="ClientIP"),
        eps("b", [here, "198.18.1.5"]),
        svc("c", "10.96.0.12", 53, protocol="UDP"), eps("c", ["198.18.1.6"], 53, "UDP"),
        svc("e", "10.96.0.14"), eps("e", ["198.18.1.4"]),
    )  # fmt: skip
    return before, after


@in_netns
@pytest.mark.parametrize("backend", ["lib", "cli"])
def test_the_kernel_takes_full_adopting_and_incremental_transactions(backend: str) -> None:
    before, after = _world()
    old = {k: plan_service(e, SETTINGS) for k, e in before.items()}
    new = {k: plan_service(e, SETTINGS) for k, e in after.items()}
    first = full_script(SETTINGS, old.values()).script()
    incremental = Transaction()
    for k in old.keys() | new.keys():
        incremental.change(old.get(k, EMPTY), new.get(k, EMPTY))
    old_chains = {c for p in old.values() for c in p.chains} | {"services", "reject-chain"}
    old_sets = {s for p in old.values() for s in p.sets}
    adopt = full_script(SETTINGS, new.values(), existing_chains=old_chains,
                        existing_sets=old_sets).script()  # fmt: skip

    stepped = _apply_in_netns([first, incremental.script()], backend)
    adopted = _apply_in_netns([first, adopt], backend)
    scratch = _apply_in_netns([full_script(SETTINGS, new.values()).script()], backend)

    def normal(listing: str) -> list[str]:  # element and chain order may differ
        return sorted(line.strip() for line in re.split(r"[\n,]", listing) if line.strip())

    assert normal(stepped) == normal(scratch)
    assert normal(adopted) == normal(scratch)
    assert "dnat ip to 198.18.1.6:53" in scratch
    assert "198.18.99.1" not in scratch


def test_services_spread_over_shard_tables_by_name() -> None:
    from netplane.l4.nft_ruleset import shard_of

    names = {shard_of(("t", f"s{i}"), 16) for i in range(1000)}
    assert names == {f"netplane-{i}" for i in range(16)}  # every shard used
    assert shard_of(("t", "web"), 16) == shard_of(("t", "web"), 16)  # stable across runs
    assert shard_of(("t", "web"), 1) == "netplane"
    # a transaction writes only into its own table
    plan = plan_service(one(svc("a"), eps("a", ["198.18.1.2"])), SETTINGS)
    tx = Transaction("netplane-3")
    tx.change(EMPTY, plan)
    assert all(" inet netplane-3 " in line for line in tx.script().splitlines())
    full = full_script(SETTINGS, [plan], table="netplane-3").script()
    assert all(" inet netplane-3" in line for line in full.splitlines())
