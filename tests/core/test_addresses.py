"""Address formatting (``host:port``, ``[v6]:port``) and the pure part of AnyIP route
management: what to add and what to remove."""

from ipaddress import ip_network as net

import pytest

from netplane.addresses import bracket_host, hostport, plan


@pytest.mark.parametrize(
    ("host", "port", "bracketed", "joined"),
    [
        ("127.0.0.1", 80, "127.0.0.1", "127.0.0.1:80"),
        ("0.0.0.0", 0, "0.0.0.0", "0.0.0.0:0"),
        ("::1", 53, "[::1]", "[::1]:53"),
        ("::", 8443, "[::]", "[::]:8443"),
        ("fd00:96::a", 443, "[fd00:96::a]", "[fd00:96::a]:443"),
        ("::ffff:127.0.0.1", 80, "[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]:80"),
        ("fe80::1%eth0", 80, "[fe80::1%eth0]", "[fe80::1%eth0]:80"),  # the zone stays
        ("[::1]", 53, "[::1]", "[::1]:53"),  # already bracketed: not twice
        ("kubernetes.default.svc", 443, "kubernetes.default.svc", "kubernetes.default.svc:443"),
        ("localhost", 6443, "localhost", "localhost:6443"),
    ],
)
def test_an_ipv6_address_and_only_that_goes_in_brackets(host, port, bracketed, joined):
    assert bracket_host(host) == bracketed
    assert hostport(host, port) == joined


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
