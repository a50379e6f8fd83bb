"""Endpoint choice for one service port: kube-proxy's candidate rules, policies, affinity."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from l4_world import ep

import netplane.l4.picker as picker_mod
from netplane.l4.healthcheck import local_ready_endpoints
from netplane.l4.picker import (
    LB_POLICY_ANNOTATION,
    POLICIES,
    NodeInfo,
    Picker,
    Target,
)
from netplane.model import Service, parse_object
from netplane.service_table import PortEntry, ServiceEntry, build_entry

NODE = NodeInfo("n1", "z1")
PORT = 8080


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def svc(annotations: dict[str, str] | None = None, **spec: Any) -> dict:
    md: dict[str, Any] = {"name": "web", "namespace": "default", "resourceVersion": "1"}
    if annotations:
        md["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": md,
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "targetPort": PORT, "nodePort": 30080}],
            **spec,
        },
    }


def table(service: dict, endpoints: list[dict]) -> tuple[ServiceEntry, PortEntry]:
    s = parse_object(service)
    assert isinstance(s, Service)
    family = "IPv6" if any(":" in e["addresses"][0] for e in endpoints) else "IPv4"
    sl = parse_object(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-1",
                "namespace": "default",
                "resourceVersion": "1",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": family,
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
        }
    )
    entry = build_entry(s, [sl])  # type: ignore[list-item]
    return entry, entry.ports[0]


def make(
    service: dict,
    endpoints: list[dict],
    node: NodeInfo = NODE,
    clock: Clock | None = None,
    **kw: Any,
) -> Picker:
    entry, port = table(service, endpoints)
    return Picker(entry, port, node, clock=clock or Clock(), **kw)


def addrs(p: Picker, *, external: bool) -> set[str]:
    return {t.address for t in p.candidates(external=external)}


def T(addr: str) -> Target:
    return Target(addr, PORT)


# -- candidate sets -------------------------------------------------------------

TERMINATING = dict(ready=False, serving=True, terminating=True)
NOT_SERVING = dict(ready=False, serving=False, terminating=True)
NOT_READY = dict(ready=False, serving=False, terminating=False)

CASES: list[tuple[str, dict, list[dict], NodeInfo, set[str], set[str]]] = [
    # (name, spec, endpoints, node, cluster traffic, external traffic)
    (
        "ready only",
        {},
        [ep("10.0.0.1"), ep("10.0.0.2", **NOT_READY), ep("10.0.0.3", **TERMINATING)],
        NODE,
        {"10.0.0.1"},
        {"10.0.0.1"},
    ),
    (
        "terminating fallback takes serving+terminating only",
        {},
        [
            ep("10.0.0.1", **TERMINATING),
            ep("10.0.0.2", **NOT_SERVING),
            ep("10.0.0.3", **NOT_READY),
        ],
        NODE,
        {"10.0.0.1"},
        {"10.0.0.1"},
    ),
    (
        "nothing usable",
        {},
        [ep("10.0.0.2", **NOT_SERVING), ep("10.0.0.3", **NOT_READY)],
        NODE,
        set(),
        set(),
    ),
    (
        "publishNotReadyAddresses: every endpoint counts as ready",
        {"publishNotReadyAddresses": True},
        [ep("10.0.0.1"), ep("10.0.0.2", **NOT_READY), ep("10.0.0.3", **NOT_SERVING)],
        NODE,
        {"10.0.0.1", "10.0.0.2", "10.0.0.3"},
        {"10.0.0.1", "10.0.0.2", "10.0.0.3"},
    ),
    (
        "eTP Local: external goes to local endpoints, cluster traffic to all",
        {"externalTrafficPolicy": "Local"},
        [ep("10.0.0.1", "n1"), ep("10.0.0.2", "n2"), ep("10.0.0.3", "n1")],
        NODE,
        {"10.0.0.1", "10.0.0.2", "10.0.0.3"},
        {"10.0.0.1", "10.0.0.3"},
    ),
    (
        "eTP Local without local endpoints refuses external traffic",
        {"externalTrafficPolicy": "Local"},
        [ep("10.0.0.2", "n2"), ep("10.0.0.3")],
        NODE,
        {"10.0.0.2", "10.0.0.3"},
        set(),
    ),
    (
        "eTP Local: a not-ready local endpoint does not count",
        {"externalTrafficPolicy": "Local"},
        [ep("10.0.0.1", "n1", **NOT_READY), ep("10.0.0.2", "n2")],
        NODE,
        {"10.0.0.2"},
        set(),
    ),
    (
        "eTP Local: terminating fallback within the local set",
        {"externalTrafficPolicy": "Local"},
        [
            ep("10.0.0.1", "n1", **TERMINATING),
            ep("10.0.0.2", "n2"),
            ep("10.0.0.3", "n1", **NOT_SERVING),
        ],
        NODE,
        {"10.0.0.2"},
        {"10.0.0.1"},
    ),
    (
        "eTP Local on a node without a name: nothing is local",
        {"externalTrafficPolicy": "Local"},
        [ep("10.0.0.1"), ep("10.0.0.2", "n2")],
        NodeInfo("", "z1"),
        {"10.0.0.1", "10.0.0.2"},
        set(),
    ),
    (
        "iTP Local: cluster traffic local only, external unaffected",
        {"internalTrafficPolicy": "Local"},
        [ep("10.0.0.1", "n1"), ep("10.0.0.2", "n2")],
        NODE,
        {"10.0.0.1"},
        {"10.0.0.1", "10.0.0.2"},
    ),
    (
        "iTP Local without local endpoints refuses cluster traffic",
        {"internalTrafficPolicy": "Local"},
        [ep("10.0.0.2", "n2")],
        NODE,
        set(),
        {"10.0.0.2"},
    ),
    (
        "hints: the endpoints for this node's zone",
        {},
        [
            ep("10.0.0.1", hints=["z1"]),
            ep("10.0.0.2", hints=["z2"]),
            ep("10.0.0.3", hints=["z1", "z2"]),
        ],
        NODE,
        {"10.0.0.1", "10.0.0.3"},
        {"10.0.0.1", "10.0.0.3"},
    ),
    (
        "hints with trafficDistribution PreferClose",
        {"trafficDistribution": "PreferClose"},
        [ep("10.0.0.1", hints=["z1"]), ep("10.0.0.2", hints=["z2"])],
        NODE,
        {"10.0.0.1"},
        {"10.0.0.1"},
    ),
    (
        "hints ignored when one ready endpoint lacks them",
        {},
        [ep("10.0.0.1", hints=["z1"]), ep("10.0.0.2", hints=["z2"]), ep("10.0.0.3")],
        NODE,
        {"10.0.0.1", "10.0.0.2", "10.0.0.3"},
        {"10.0.0.1", "10.0.0.2", "10.0.0.3"},
    ),
    (
        "hints: a not-ready endpoint without hints does not matter",
        {},
        [ep("10.0.0.1", hints=["z1"]), ep("10.0.0.2", hints=["z2"]), ep("10.0.0.3", **NOT_READY)],
        NODE,
        {"10.0.0.1"},
        {"10.0.0.1"},
    ),
    (
        "hints ignored when none is for this zone",
        {},
        [ep("10.0.0.1", hints=["z2"]), ep("10.0.0.2", hints=["z3"])],
        NODE,
        {"10.0.0.1", "10.0.0.2"},
        {"10.0.0.1", "10.0.0.2"},
    ),
    (
        "hints ignored when the node has no zone",
        {},
        [ep("10.0.0.1", hints=["z1"]), ep("10.0.0.2", hints=["z2"])],
        NodeInfo("n1"),
        {"10.0.0.1", "10.0.0.2"},
        {"10.0.0.1", "10.0.0.2"},
    ),
    (
        "hints do not narrow a Local policy",
        {"externalTrafficPolicy": "Local"},
        [ep("10.0.0.1", "n1", hints=["z2"]), ep("10.0.0.2", "n2", hints=["z1"])],
        NODE,
        {"10.0.0.2"},
        {"10.0.0.1"},
    ),
    (
        "IPv6 endpoints",
        {"clusterIP": "fd00::10", "externalTrafficPolicy": "Local"},
        [ep("fd00::1", "n1"), ep("fd00::2", "n2")],
        NODE,
        {"fd00::1", "fd00::2"},
        {"fd00::1"},
    ),
]


@pytest.mark.parametrize(
    ("spec", "endpoints", "node", "cluster", "external"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_candidates(
    spec: dict, endpoints: list[dict], node: NodeInfo, cluster: set[str], external: set[str]
) -> None:
    p = make(svc(**spec), endpoints, node)
    assert addrs(p, external=False) == cluster
    assert addrs(p, external=True) == external
    for ext, want in ((False, cluster), (True, external)):
        picked = {p.pick("192.0.2.1", external=ext) for _ in range(2 * len(endpoints))}
        if want:
            assert {t.address for t in picked if t} == want
            assert None not in picked
        else:
            assert picked == {None}
        for e in endpoints:
            t = T(e["addresses"][0])
            assert p.usable(t, external=ext) == (t.address in want)


# -- round-robin and least-connections --------------------------------------------

FOUR = [ep(f"10.0.0.{i}") for i in range(1, 5)]


def test_round_robin_spreads_exactly_even() -> None:
    p = make(svc(), FOUR)
    picks = [p.pick("192.0.2.1", external=False) for _ in range(400)]
    assert Counter(picks) == {T(f"10.0.0.{i}"): 100 for i in range(1, 5)}
    # A fixed cycle: every window of four picks is the four endpoints.
    assert all(len(set(picks[i : i + 4])) == 4 for i in range(0, 396))


def test_round_robin_shares_one_cycle_when_policies_agree() -> None:
    p = make(svc(), FOUR)
    picks = [p.pick("192.0.2.1", external=bool(i % 2)) for i in range(8)]
    assert Counter(picks) == {T(f"10.0.0.{i}"): 2 for i in range(1, 5)}


def test_round_robin_start_depends_on_node() -> None:
    firsts = {
        make(svc(), FOUR, NodeInfo(f"node-{i}")).pick("192.0.2.1", external=False)
        for i in range(20)
    }
    assert len(firsts) > 1


def test_least_connections_prefers_the_idle_one() -> None:
    p = make(svc(), [ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")], default_policy=POLICIES[1])
    assert p.policy == "least-connections"
    for a in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        p.opened(T(a))
    assert [p.pick("192.0.2.1", external=False) for _ in range(3)] == [T("10.0.0.3")] * 3
    p.opened(T("10.0.0.3"))
    # 10.0.0.2 and 10.0.0.3 have one each, 10.0.0.1 two: ties alternate.
    assert {p.pick("192.0.2.1", external=False) for _ in range(2)} == {
        T("10.0.0.2"),
        T("10.0.0.3"),
    }
    p.closed(T("10.0.0.1"))
    p.closed(T("10.0.0.1"))
    assert p.connections(T("10.0.0.1")) == 0
    assert p.pick("192.0.2.1", external=False) == T("10.0.0.1")


def test_least_connections_ties_go_round_robin() -> None:
    p = make(svc(), FOUR, default_policy="least-connections")
    picks = [p.pick("192.0.2.1", external=False) for _ in range(400)]
    assert Counter(picks) == {T(f"10.0.0.{i}"): 100 for i in range(1, 5)}
    for t in set(picks):
        p.opened(t)
    picks = [p.pick("192.0.2.1", external=False) for _ in range(8)]
    assert Counter(picks) == {T(f"10.0.0.{i}"): 2 for i in range(1, 5)}


def test_closed_never_goes_negative() -> None:
    p = make(svc(), FOUR)
    p.closed(T("10.0.0.1"))
    p.closed(T("10.9.9.9"))
    assert p.connections(T("10.0.0.1")) == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_exclude(policy: str) -> None:
    p = make(svc(), [ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")], default_policy=policy)
    ex = frozenset({T("10.0.0.1"), T("10.0.0.3")})
    assert {p.pick("192.0.2.1", external=False, exclude=ex) for _ in range(5)} == {T("10.0.0.2")}
    everything = frozenset(p.candidates(external=False))
    assert p.pick("192.0.2.1", external=False, exclude=everything) is None
    # Excluding a target that is not a candidate changes nothing.
    assert p.pick("192.0.2.1", external=False, exclude=frozenset({T("10.9.9.9")})) is not None


# -- session affinity --------------------------------------------------------------

AFFINITY = {
    "sessionAffinity": "ClientIP",
    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
}
TWO = [ep("10.0.0.1"), ep("10.0.0.2")]


def test_affinity_holds_across_picks() -> None:
    p = make(svc(**AFFINITY), FOUR)
    first = p.pick("192.0.2.1", external=False)
    other = p.pick("192.0.2.2", external=False)
    assert first != other
    assert {p.pick("192.0.2.1", external=True) for _ in range(10)} == {first}
    assert {p.pick("192.0.2.2", external=False) for _ in range(10)} == {other}
    assert p.affinity_entries() == 2


def test_affinity_beats_least_connections_until_it_expires() -> None:
    clock = Clock()
    p = make(svc(**AFFINITY), TWO, clock=clock, default_policy="least-connections")
    t = p.pick("192.0.2.1", external=False)
    assert t is not None
    p.opened(t)
    # Each pick refreshes the entry, so it outlives the timeout counted from the first.
    for _ in range(3):
        clock.now += 59
        assert p.pick("192.0.2.1", external=False) == t
    clock.now += 60  # exactly the timeout since the last pick: expired
    moved = p.pick("192.0.2.1", external=False)
    assert moved is not None and moved != t
    assert p.pick("192.0.2.1", external=False) == moved


def test_affinity_moves_when_its_target_leaves() -> None:
    service = svc(**AFFINITY)
    p = make(service, TWO, default_policy="least-connections")
    t = p.pick("192.0.2.1", external=False)
    assert t is not None
    p.opened(t)
    p.opened(t)  # affinity holds the client despite the idle other endpoint
    assert p.pick("192.0.2.1", external=False) == t
    left = [ep(a, **NOT_READY) if a == t.address else ep(a) for a in ("10.0.0.1", "10.0.0.2")]
    p.update(*table(service, [*left, ep("10.0.0.3")]))
    assert not p.usable(t, external=False)
    moved = p.pick("192.0.2.1", external=False)
    assert moved is not None and moved != t
    # It stays on the new one even when the old one comes back.
    p.update(*table(service, [*TWO, ep("10.0.0.3")]))
    assert p.pick("192.0.2.1", external=False) == moved


def test_failed_drops_affinity_entries_pointing_at_it() -> None:
    p = make(svc(**AFFINITY), TWO, default_policy="least-connections")
    bad = p.pick("192.0.2.1", external=False)
    assert bad is not None
    p.opened(bad)
    good = p.pick("192.0.2.2", external=False)
    assert good is not None and good != bad
    p.opened(good)
    assert p.pick("192.0.2.3", external=False) == bad  # 1 vs 1: the tie goes round
    # Client 1's connect to ``bad`` failed: it retries elsewhere and stays there.
    p.closed(bad)
    p.failed(bad)
    assert p.pick("192.0.2.1", external=False, exclude=frozenset({bad})) == good
    assert p.pick("192.0.2.1", external=False) == good
    # Client 3 also pointed at ``bad``; ``bad`` is now the busier one, so a
    # fresh least-connections choice (which the dead entry forces) is ``good``.
    for _ in range(3):
        p.opened(bad)
    assert p.pick("192.0.2.3", external=False) == good
    # Client 2's entry, on a target that did not fail, still holds.
    p.closed(good)
    for _ in range(3):
        p.opened(good)
    assert p.pick("192.0.2.2", external=False) == good


def test_failed_entry_moves_with_round_robin() -> None:
    p = make(svc(**AFFINITY), [*TWO, ep("10.0.0.3")], default_policy="least-connections")
    t = p.pick("192.0.2.1", external=False)
    assert t is not None
    p.opened(t)
    assert p.pick("192.0.2.1", external=False) == t
    p.failed(t)
    assert p.pick("192.0.2.1", external=False) != t


def test_failed_entry_is_chosen_anew() -> None:
    p = make(svc(**AFFINITY), TWO)
    t = p.pick("192.0.2.1", external=False)
    assert t is not None
    p.failed(t)
    # Round-robin moves on: the old entry no longer pins the client.
    assert p.pick("192.0.2.1", external=False) != t


def test_affinity_entry_with_excluded_target_moves() -> None:
    p = make(svc(**AFFINITY), TWO)
    t = p.pick("192.0.2.1", external=False)
    assert t is not None
    other = p.pick("192.0.2.1", external=False, exclude=frozenset({t}))
    assert other is not None and other != t
    assert p.pick("192.0.2.1", external=False) == other


def test_affinity_follows_the_traffic_kind_candidates() -> None:
    spec = {**AFFINITY, "externalTrafficPolicy": "Local"}
    p = make(svc(**spec), [ep("10.0.0.1", "n2"), ep("10.0.0.2", "n1")])
    # Cluster traffic may land on the remote endpoint; external traffic may not.
    client = next(
        f"192.0.2.{i}" for i in range(10) if p.pick(f"192.0.2.{i}", external=False) == T("10.0.0.1")
    )
    assert p.pick(client, external=False) == T("10.0.0.1")
    assert p.pick(client, external=True) == T("10.0.0.2")
    assert p.pick(client, external=False) == T("10.0.0.2")


def test_expired_entries_are_pruned() -> None:
    clock = Clock()
    p = make(svc(**AFFINITY), FOUR, clock=clock)
    for i in range(40):
        p.pick(f"192.0.2.{i}", external=False)
    assert p.affinity_entries() == 40
    clock.now += 61
    for i in range(20):
        p.pick(f"198.51.100.{i}", external=False)
    assert p.affinity_entries() == 20


def test_affinity_table_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(picker_mod, "MAX_AFFINITY_ENTRIES", 8)
    clock = Clock()
    p = make(svc(**AFFINITY), FOUR, clock=clock, default_policy="least-connections")
    first = p.pick("192.0.2.0", external=False)
    for i in range(1, 20):
        clock.now += 1
        p.pick(f"192.0.2.{i}", external=False)
        assert p.affinity_entries() <= 8
    # The least recently used went first: client 0 is a fresh choice now.
    assert first is not None
    p.opened(first)
    assert p.pick("192.0.2.0", external=False) != first


def test_no_affinity_keeps_no_entries() -> None:
    p = make(svc(), FOUR)
    p.pick("192.0.2.1", external=False)
    p.failed(T("10.0.0.1"))
    assert p.affinity_entries() == 0


def test_affinity_switched_off_by_update_clears_entries() -> None:
    p = make(svc(**AFFINITY), FOUR)
    p.pick("192.0.2.1", external=False)
    p.update(*table(svc(), FOUR))
    assert p.affinity_entries() == 0


def test_affinity_with_ipv6_clients() -> None:
    p = make(svc(clusterIP="fd00::10", **AFFINITY), [ep("fd00::1"), ep("fd00::2")])
    t = p.pick("2001:db8::1", external=False)
    assert t is not None and t.address in ("fd00::1", "fd00::2")
    assert {p.pick("2001:db8::1", external=False) for _ in range(5)} == {t}


# -- table updates --------------------------------------------------------------


def test_update_keeps_counts_and_affinity_for_remaining_targets() -> None:
    service = svc(**AFFINITY)
    three = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    p = make(service, [ep(x) for x in three], default_policy="least-connections")
    a = p.pick("192.0.2.1", external=False)
    assert a is not None
    p.opened(a)
    p.opened(a)
    gone, kept = (T(x) for x in three if x != a.address)
    p.opened(gone)
    p.update(*table(service, [ep(x) for x in three if x != gone.address]))
    assert p.connections(a) == 2
    assert p.pick("192.0.2.1", external=False) == a  # held despite two open connections
    assert p.pick("192.0.2.9", external=False) == kept
    # A connection to the target that left still closes cleanly, and its count
    # is right if the target comes back before it closes.
    assert p.connections(gone) == 1
    p.update(*table(service, [ep(x) for x in three]))
    assert p.connections(gone) == 1
    p.closed(gone)
    assert p.connections(gone) == 0


def test_update_keeps_the_round_robin_position() -> None:
    service = svc()
    p = make(service, FOUR)
    picks = [p.pick("192.0.2.1", external=False) for _ in range(3)]
    p.update(*table(service, list(reversed(FOUR))))  # same set, slices reordered
    picks.append(p.pick("192.0.2.1", external=False))
    assert len(set(picks)) == 4


def test_update_to_no_endpoints_refuses() -> None:
    service = svc()
    p = make(service, FOUR)
    p.update(*table(service, []))
    assert p.pick("192.0.2.1", external=False) is None
    assert p.pick("192.0.2.1", external=True) is None
    p.update(*table(service, FOUR))
    assert p.pick("192.0.2.1", external=False) is not None


# -- policy ------------------------------------------------------------------------


def test_annotation_sets_the_policy() -> None:
    service = svc(annotations={LB_POLICY_ANNOTATION: "least-connections"})
    p = make(service, TWO)
    assert (p.policy, p.policy_problem) == ("least-connections", None)
    p.opened(T("10.0.0.1"))
    assert {p.pick("192.0.2.1", external=False) for _ in range(3)} == {T("10.0.0.2")}
    p.update(*table(svc(annotations={LB_POLICY_ANNOTATION: "round-robin"}), TWO))
    assert p.policy == "round-robin"
    assert {p.pick("192.0.2.1", external=False) for _ in range(3)} == set(
        map(T, ("10.0.0.1", "10.0.0.2"))
    )


def test_invalid_annotation_is_ignored_with_a_reason() -> None:
    p = make(
        svc(annotations={LB_POLICY_ANNOTATION: "random"}), TWO, default_policy="least-connections"
    )
    assert p.policy == "least-connections"
    assert p.policy_problem is not None
    assert "'random'" in p.policy_problem and LB_POLICY_ANNOTATION in p.policy_problem
    p.update(*table(svc(), TWO))
    assert (p.policy, p.policy_problem) == ("least-connections", None)


def test_invalid_default_policy() -> None:
    entry, port = table(svc(), TWO)
    with pytest.raises(ValueError, match="weighted"):
        Picker(entry, port, NODE, default_policy="weighted")


# -- health check ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "endpoints", "count"),
    [
        ({}, [ep("10.0.0.1", "n1"), ep("10.0.0.2", "n1"), ep("10.0.0.3", "n2")], 2),
        ({}, [ep("10.0.0.1", "n1", **TERMINATING), ep("10.0.0.2", "n2")], 0),
        ({}, [ep("10.0.0.1", "n1", **NOT_READY), ep("10.0.0.2")], 0),
        ({"publishNotReadyAddresses": True}, [ep("10.0.0.1", "n1", **NOT_READY)], 1),
        ({}, [], 0),
    ],
)
def test_local_endpoint_count(spec: dict, endpoints: list[dict], count: int) -> None:
    """The health check's count (distinct ready addresses on this node) for one port."""
    entry, _ = table(svc(externalTrafficPolicy="Local", **spec), endpoints)
    assert local_ready_endpoints(entry, "n1") == count


# -- properties ------------------------------------------------------------------------

endpoint_st = st.builds(
    lambda i, node, cond, hints: ep(f"10.1.0.{i}", node, hints=hints, **cond),
    st.integers(1, 250),
    st.sampled_from(["", "n1", "n2"]),
    st.sampled_from([{}, TERMINATING, NOT_SERVING, NOT_READY]),
    st.one_of(
        st.none(), st.lists(st.sampled_from(["z1", "z2"]), min_size=1, max_size=2, unique=True)
    ),
)


def reference(spec: dict, endpoints: list[dict], *, external: bool) -> set[str]:
    """The candidate rules, restated endpoint by endpoint."""
    pna = spec.get("publishNotReadyAddresses", False)
    key = "externalTrafficPolicy" if external else "internalTrafficPolicy"
    local = spec.get(key, "Cluster") == "Local"
    seen: dict[str, dict] = {}
    for e in endpoints:
        seen.setdefault(e["addresses"][0], e)
    eps = list(seen.values())

    def is_ready(e: dict) -> bool:
        return pna or e["conditions"]["ready"]

    def fallback(e: dict) -> bool:
        c = e["conditions"]
        return c.get("serving", c["ready"]) and c["terminating"]

    if local:
        eps = [e for e in eps if e.get("nodeName") == "n1"]
    ready = [e for e in eps if is_ready(e)]
    if not local and ready and all(e.get("hints") for e in ready):
        zoned = [e for e in ready if {"name": "z1"} in e["hints"]["forZones"]]
        ready = zoned or ready
    chosen = ready or [e for e in eps if fallback(e)]
    return {e["addresses"][0] for e in chosen}


@settings(max_examples=300, deadline=None)
@given(
    endpoints=st.lists(endpoint_st, max_size=8),
    etp=st.sampled_from(["Cluster", "Local"]),
    itp=st.sampled_from(["Cluster", "Local"]),
    pna=st.booleans(),
)
def test_candidates_match_the_rules(endpoints: list[dict], etp: str, itp: str, pna: bool) -> None:
    spec = {
        "externalTrafficPolicy": etp,
        "internalTrafficPolicy": itp,
        "publishNotReadyAddresses": pna,
    }
    p = make(svc(**spec), endpoints)
    for external in (False, True):
        assert addrs(p, external=external) == reference(spec, endpoints, external=external)


ops_st = st.lists(
    st.tuples(
        st.sampled_from(["pick", "open", "close"]),
        st.integers(0, 5),
        st.frozensets(st.integers(0, 5), max_size=3),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 6), policy=st.sampled_from(POLICIES), ops=ops_st)
def test_picks_respect_policy_and_exclude(n: int, policy: str, ops: list) -> None:
    p = make(svc(), [ep(f"10.2.0.{i}") for i in range(n)], default_policy=policy)
    targets = [T(f"10.2.0.{i}") for i in range(n)]
    open_: Counter[Target] = Counter()
    for op, i, ex in ops:
        t = targets[i % n]
        if op == "open":
            p.opened(t)
            open_[t] += 1
        elif op == "close":
            p.closed(t)
            if open_[t]:
                open_[t] -= 1
        else:
            exclude = frozenset(targets[j % n] for j in ex)
            got = p.pick("192.0.2.1", external=False, exclude=exclude)
            allowed = [x for x in targets if x not in exclude]
            if not allowed:
                assert got is None
                continue
            assert got in allowed
            if policy == "least-connections":
                assert open_[got] == min(open_[x] for x in allowed)
        assert all(p.connections(x) == open_[x] for x in targets)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 7), rounds=st.integers(1, 5), policy=st.sampled_from(POLICIES))
def test_even_spread(n: int, rounds: int, policy: str) -> None:
    p = make(svc(), [ep(f"10.3.0.{i}") for i in range(n)], default_policy=policy)
    picks = Counter(p.pick("192.0.2.1", external=False) for _ in range(n * rounds))
    assert sorted(picks.values()) == [rounds] * n
