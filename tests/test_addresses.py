"""The pure part of AnyIP route management: what to add and what to remove."""

from ipaddress import ip_network as net

from netplane.addresses import plan


def test_plan_adds_missing_and_removes_what_is_no_longer_wanted():
    owned = {net("198.19.0.0/16"), net("198.18.99.1/32")}
    add, remove = plan(owned, set(), [net("198.19.0.0/16"), net("fd00:77::/112")])
    assert add == {net("fd00:77::/112")}
    assert remove == {net("198.18.99.1/32")}


def test_plan_never_takes_over_a_route_it_does_not_own():
    # the node's own address is local already (a kernel route): leave it alone
    add, remove = plan(set(), {net("198.18.0.1/32")}, [net("198.18.0.1/32")])
    assert add == set() and remove == set()


def test_plan_clears_everything_it_owns():
    owned = {net("198.19.0.0/16")}
    assert plan(owned, {net("127.0.0.0/8")}, []) == (set(), owned)
