"""The Gateway API model: what each object becomes, and what an invalid one is told.

Every object goes through ``parse_object`` as a source would hand it over.
Errors name the object and the field path, so most rejections compare the
whole message.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from netplane.errors import ModelError
from netplane.model import (
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    Namespace,
    ObjectKey,
    ReferenceGrant,
    parse_object,
)
from netplane.model.gateway import (
    BackendRef,
    CertificateRef,
    GRPCMethodMatch,
    HeaderMatch,
    HeaderModifier,
    HTTPRouteMatch,
    LabelSelector,
    ParentRef,
    PathModifier,
    RouteKind,
)
from netplane.sources.manifest_parse import parse_manifest

GW = "gateway.networking.k8s.io"
DATA = Path(__file__).resolve().parents[1] / "data" / "manifests" / "gateway"

# -- builders ----------------------------------------------------------------------


def gateway_class(spec: dict[str, Any] | None = None, **meta: Any) -> dict:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "netplane", **meta},
        "spec": {"controllerName": "netplane.io/gateway-controller"} if spec is None else spec,
    }


def listener(**fields: Any) -> dict:
    return {"name": "http", "port": 80, "protocol": "HTTP", **fields}


def gateway(*listeners: dict, **spec: Any) -> dict:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "infra"},
        "spec": {
            "gatewayClassName": "netplane",
            "listeners": list(listeners) or [listener()],
            **spec,
        },
    }


def http_route(*rules: dict, **spec: Any) -> dict:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "shop", "namespace": "apps"},
        "spec": {"parentRefs": [{"name": "edge"}], "rules": list(rules), **spec},
    }


def grpc_route(*rules: dict, **spec: Any) -> dict:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "rpc", "namespace": "apps"},
        "spec": {"parentRefs": [{"name": "edge"}], "rules": list(rules), **spec},
    }


def grant(spec: dict[str, Any] | None = None, version: str = "v1beta1") -> dict:
    return {
        "apiVersion": f"{GW}/{version}",
        "kind": "ReferenceGrant",
        "metadata": {"name": "allow-apps", "namespace": "infra"},
        "spec": {
            "from": [{"group": GW, "kind": "HTTPRoute", "namespace": "apps"}],
            "to": [{"group": "", "kind": "Service"}],
        }
        if spec is None
        else spec,
    }


def svc_ref(name: str = "web", port: int | None = 8080, **extra: Any) -> dict:
    ref: dict[str, Any] = {"name": name, **extra}
    if port is not None:
        ref["port"] = port
    return ref


def rule_with_filters(*filters: dict, **rule: Any) -> dict:
    return {"filters": list(filters), **rule}


def parse(raw: dict) -> Any:
    obj = parse_object(copy.deepcopy(raw))
    assert obj is not None
    return obj


def error_of(raw: Any) -> str:
    with pytest.raises(ModelError) as exc:
        parse_object(raw)
    return str(exc.value)


def only_rule(route: HTTPRoute):
    (rule,) = route.rules
    return rule


def only_filter(raw_filter: dict):
    (f,) = only_rule(parse(http_route(rule_with_filters(raw_filter)))).filters
    return f


# -- GatewayClass --------------------------------------------------------------------


def test_gateway_class_is_cluster_scoped_and_keeps_its_controller_and_generation():
    raw = gateway_class(namespace="ignored", generation=4)
    gc = parse(raw)
    assert isinstance(gc, GatewayClass)
    assert gc.key == ObjectKey("GatewayClass", "", "netplane")
    assert str(gc.key) == "GatewayClass netplane"
    assert gc.controller == "netplane.io/gateway-controller"
    assert gc.generation == 4


def test_gateway_class_keeps_its_raw_status_for_the_status_writer():
    raw = {**gateway_class(), "status": {"conditions": [{"type": "Accepted"}]}}
    assert parse(raw).status == {"conditions": [{"type": "Accepted"}]}
    assert parse(gateway_class()).status is None


def test_gateway_class_without_controller_name():
    assert error_of(gateway_class({})) == ("GatewayClass netplane: spec.controllerName: required")


# -- Gateway ---------------------------------------------------------------------------


def test_gateway_with_one_http_listener_gets_the_defaults():
    gw = parse(gateway())
    assert isinstance(gw, Gateway)
    assert gw.key == ObjectKey("Gateway", "infra", "edge")
    assert gw.class_name == "netplane"
    (lst,) = gw.listeners
    assert (lst.name, lst.port, lst.protocol) == ("http", 80, "HTTP")
    assert lst.hostname == ""
    assert lst.tls_mode == ""
    assert lst.certificate_refs == ()
    assert lst.namespaces_from == "Same"
    assert lst.namespace_selector is None
    assert lst.kinds == ()
    assert gw.addresses == ()


def test_listener_hostname_is_lower_cased_and_may_be_a_wildcard():
    gw = parse(
        gateway(
            listener(name="a", hostname="Shop.Example.COM"),
            listener(name="b", hostname="*.Example.com"),
        )
    )
    assert [lst.hostname for lst in gw.listeners] == ["shop.example.com", "*.example.com"]


def test_https_listener_tls_defaults_terminate_and_certificate_refs_default_secret_here():
    gw = parse(
        gateway(
            listener(
                name="https",
                port=443,
                protocol="HTTPS",
                tls={
                    "certificateRefs": [
                        {"name": "shop-tls"},
                        {"name": "shared-tls", "namespace": "certs"},
                    ]
                },
            )
        )
    )
    (lst,) = gw.listeners
    assert lst.tls_mode == "Terminate"
    assert lst.certificate_refs == (
        CertificateRef("", "Secret", "shop-tls", "infra"),
        CertificateRef("", "Secret", "shared-tls", "certs"),
    )


def test_tls_listener_in_passthrough_mode():
    gw = parse(gateway(listener(name="tls", port=443, protocol="TLS", tls={"mode": "Passthrough"})))
    assert gw.listeners[0].tls_mode == "Passthrough"
    assert gw.listeners[0].certificate_refs == ()


def test_allowed_routes_from_all():
    gw = parse(gateway(listener(allowedRoutes={"namespaces": {"from": "All"}})))
    assert gw.listeners[0].namespaces_from == "All"
    assert gw.listeners[0].namespace_selector is None


def test_allowed_routes_selector_with_labels_and_expressions():
    sel = {
        "matchLabels": {"team": "shop", "env": "prod"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["web", "api"]},
            {"key": "frozen", "operator": "DoesNotExist"},
        ],
    }
    gw = parse(
        gateway(listener(allowedRoutes={"namespaces": {"from": "Selector", "selector": sel}}))
    )
    lst = gw.listeners[0]
    assert lst.namespaces_from == "Selector"
    assert lst.namespace_selector == LabelSelector(
        (("env", "prod"), ("team", "shop")),
        (("tier", "In", ("web", "api")), ("frozen", "DoesNotExist", ())),
    )
    match = lst.namespace_selector.matches
    assert match({"team": "shop", "env": "prod", "tier": "web"})
    assert not match({"team": "shop", "env": "prod", "tier": "db"})
    assert not match({"team": "shop", "env": "prod"})  # In needs the label
    assert not match({"team": "shop", "env": "dev", "tier": "web"})
    assert not match({"team": "shop", "env": "prod", "tier": "web", "frozen": ""})


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        ({"key": "a", "operator": "NotIn", "values": ["x"]}, {}, True),
        ({"key": "a", "operator": "NotIn", "values": ["x"]}, {"a": "y"}, True),
        ({"key": "a", "operator": "NotIn", "values": ["x"]}, {"a": "x"}, False),
        ({"key": "a", "operator": "Exists"}, {"a": ""}, True),
        ({"key": "a", "operator": "Exists"}, {"b": "a"}, False),
        ({"key": "a", "operator": "DoesNotExist"}, {}, True),
    ],
)
def test_selector_operators(expression: dict, labels: dict, expected: bool):
    sel = {"matchExpressions": [expression]}
    gw = parse(
        gateway(listener(allowedRoutes={"namespaces": {"from": "Selector", "selector": sel}}))
    )
    assert gw.listeners[0].namespace_selector.matches(labels) is expected


def test_empty_selector_matches_every_namespace():
    gw = parse(
        gateway(listener(allowedRoutes={"namespaces": {"from": "Selector", "selector": {}}}))
    )
    assert gw.listeners[0].namespace_selector.matches({})
    assert gw.listeners[0].namespace_selector.matches({"any": "thing"})


def test_allowed_route_kinds_default_to_the_gateway_api_group():
    gw = parse(
        gateway(
            listener(
                allowedRoutes={"kinds": [{"kind": "HTTPRoute"}, {"group": "x.io", "kind": "R"}]}
            )
        )
    )
    assert gw.listeners[0].kinds == (RouteKind(GW, "HTTPRoute"), RouteKind("x.io", "R"))


def test_addresses_default_to_ip_address_type():
    gw = parse(
        gateway(addresses=[{"value": "192.0.2.10"}, {"type": "Hostname", "value": "lb.example"}])
    )
    assert gw.addresses == (("IPAddress", "192.0.2.10"), ("Hostname", "lb.example"))


def test_gateway_generation_is_kept():
    raw = gateway()
    raw["metadata"]["generation"] = 7
    assert parse(raw).generation == 7


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            gateway(listeners=[]),
            "Gateway infra/edge: spec.listeners: at least one listener is required",
        ),
        (
            gateway(listener(), listener(port=8080)),
            "Gateway infra/edge: spec.listeners[1].name: 'http' is used by another listener; "
            "listener names must be unique",
        ),
        (
            gateway(listener(port=0)),
            "Gateway infra/edge: spec.listeners[0].port: 0 out of range (1-65535)",
        ),
        (
            gateway(listener(), listener(name="big", port=70000)),
            "Gateway infra/edge: spec.listeners[1].port: 70000 out of range (1-65535)",
        ),
        (
            gateway(listener(hostname="10.0.0.1")),
            "Gateway infra/edge: spec.listeners[0].hostname: '10.0.0.1' must be a DNS name, "
            "not an IP address",
        ),
        (
            gateway(listener(hostname="2001:db8::1")),
            "Gateway infra/edge: spec.listeners[0].hostname: '2001:db8::1' must be a DNS name, "
            "not an IP address",
        ),
        (
            gateway(listener(hostname="foo.*.com")),
            "Gateway infra/edge: spec.listeners[0].hostname: 'foo.*.com' is not a valid hostname "
            "(DNS-1123 subdomain, optional leading '*.')",
        ),
        (
            gateway(listener(name="https", port=443, protocol="HTTPS")),
            "Gateway infra/edge: spec.listeners[0].tls: required for protocol HTTPS",
        ),
        (
            gateway(listener(allowedRoutes={"namespaces": {"from": "Selector"}})),
            "Gateway infra/edge: spec.listeners[0].allowedRoutes.namespaces.selector: "
            "required when from is Selector",
        ),
        (
            gateway(listener(allowedRoutes={"namespaces": {"from": "Others"}})),
            "Gateway infra/edge: spec.listeners[0].allowedRoutes.namespaces.from: unsupported "
            "value 'Others' (one of All, Same, Selector)",
        ),
        (
            gateway(listener(protocol="HTTPS", tls={"mode": "Reencrypt"})),
            "Gateway infra/edge: spec.listeners[0].tls.mode: unsupported value 'Reencrypt' "
            "(one of Terminate, Passthrough)",
        ),
        (
            gateway(addresses=[{"type": "IPAddress"}]),
            "Gateway infra/edge: spec.addresses[0].value: required",
        ),
    ],
    ids=[
        "no-listeners",
        "duplicate-name",
        "port-0",
        "port-70000",
        "ipv4-hostname",
        "ipv6-hostname",
        "wildcard-not-first",
        "https-without-tls",
        "selector-missing",
        "unknown-from",
        "unknown-tls-mode",
        "address-without-value",
    ],
)
def test_gateway_rejections(raw: dict, message: str):
    assert error_of(raw) == message


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ({"key": "a", "operator": "In"}, "values: required for operator In"),
        ({"key": "a", "operator": "Exists", "values": ["x"]}, "values: must be empty for "),
        ({"key": "a", "operator": "Like", "values": ["x"]}, "operator: unsupported value"),
    ],
)
def test_bad_selector_expressions(expression: dict, reason: str):
    sel = {"matchExpressions": [expression]}
    raw = gateway(listener(allowedRoutes={"namespaces": {"from": "Selector", "selector": sel}}))
    with pytest.raises(ModelError, match=r"Gateway infra/edge: spec\.listeners\[0\]") as exc:
        parse_object(raw)
    assert exc.value.field.startswith(
        "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0]."
    )
    assert f"matchExpressions[0].{reason}" in str(exc.value)


# -- HTTPRoute: defaults and matches ---------------------------------------------------


def test_http_route_without_rules_gets_one_catch_all_rule():
    route = parse(http_route())
    assert isinstance(route, HTTPRoute)
    assert route.key == ObjectKey("HTTPRoute", "apps", "shop")
    rule = only_rule(route)
    assert rule.matches == (HTTPRouteMatch("PathPrefix", "/"),)
    assert rule.filters == ()
    assert rule.backends == ()
    assert (rule.request_timeout, rule.backend_timeout) == (None, None)


def test_rule_without_matches_matches_every_path():
    route = parse(http_route({"backendRefs": [svc_ref()]}))
    assert only_rule(route).matches == (HTTPRouteMatch(path_type="PathPrefix", path="/"),)


def test_parent_ref_defaults_to_a_gateway_in_the_route_namespace():
    route = parse(
        http_route(
            parentRefs=[
                {"name": "edge"},
                {"name": "edge", "namespace": "infra", "sectionName": "https", "port": 443},
            ]
        )
    )
    assert route.parents == (
        ParentRef(GW, "Gateway", "apps", "edge"),
        ParentRef(GW, "Gateway", "infra", "edge", "https", 443),
    )


def test_backend_ref_defaults_to_a_service_in_the_route_namespace_with_weight_1():
    route = parse(
        http_route(
            {"backendRefs": [svc_ref(), svc_ref("canary", 9090, namespace="beta", weight=0)]}
        )
    )
    assert only_rule(route).backends == (
        BackendRef("", "Service", "web", "apps", 8080, 1),
        BackendRef("", "Service", "canary", "beta", 9090, 0),
    )


def test_non_service_backend_ref_needs_no_port():
    route = parse(http_route({"backendRefs": [{"group": "x.io", "kind": "Bucket", "name": "b"}]}))
    assert only_rule(route).backends == (BackendRef("x.io", "Bucket", "b", "apps", None, 1),)


def test_hostnames_are_lower_cased():
    route = parse(http_route(hostnames=["Shop.Example.com", "*.example.COM"]))
    assert route.hostnames == ("shop.example.com", "*.example.com")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ({"type": "Exact", "value": "/login"}, ("Exact", "/login")),
        ({"type": "PathPrefix", "value": "/api"}, ("PathPrefix", "/api")),
        ({"value": "/api"}, ("PathPrefix", "/api")),
        (
            {"type": "RegularExpression", "value": r"^/v[0-9]+/.*"},
            ("RegularExpression", r"^/v[0-9]+/.*"),
        ),
        ({"type": "Exact"}, ("Exact", "/")),
    ],
)
def test_path_types(path: dict, expected: tuple[str, str]):
    route = parse(http_route({"matches": [{"path": path}]}))
    (m,) = only_rule(route).matches
    assert (m.path_type, m.path) == expected


def test_header_query_and_method_matches():
    route = parse(
        http_route(
            {
                "matches": [
                    {
                        "headers": [
                            {"name": "X-Env", "value": "canary"},
                            {
                                "type": "RegularExpression",
                                "name": "User-Agent",
                                "value": ".*Firefox.*",
                            },
                        ],
                        "queryParams": [{"name": "debug", "value": "1"}],
                        "method": "POST",
                    }
                ]
            }
        )
    )
    (m,) = only_rule(route).matches
    assert m.headers == (
        HeaderMatch("Exact", "X-Env", "canary"),
        HeaderMatch("RegularExpression", "User-Agent", ".*Firefox.*"),
    )
    assert m.query == (HeaderMatch("Exact", "debug", "1"),)
    assert m.method == "POST"


def test_repeated_header_name_keeps_only_the_first_whatever_its_case():
    route = parse(
        http_route(
            {
                "matches": [
                    {
                        "headers": [
                            {"name": "X-Env", "value": "a"},
                            {"name": "x-env", "value": "b"},
                            {"name": "X-ENV", "value": "c"},
                        ]
                    }
                ]
            }
        )
    )
    assert only_rule(route).matches[0].headers == (HeaderMatch("Exact", "X-Env", "a"),)


def test_repeated_query_param_keeps_only_the_first():
    route = parse(
        http_route(
            {
                "matches": [
                    {"queryParams": [{"name": "v", "value": "1"}, {"name": "v", "value": "2"}]}
                ]
            }
        )
    )
    assert only_rule(route).matches[0].query == (HeaderMatch("Exact", "v", "1"),)


def test_rule_name_and_several_matches_in_order():
    route = parse(
        http_route(
            {
                "name": "api",
                "matches": [{"path": {"value": "/a"}}, {"path": {"value": "/b"}, "method": "GET"}],
            }
        )
    )
    rule = only_rule(route)
    assert rule.name == "api"
    assert [(m.path, m.method) for m in rule.matches] == [("/a", ""), ("/b", "GET")]


# -- HTTPRoute: filters -------------------------------------------------------------------


def test_request_header_modifier_set_add_remove():
    f = only_filter(
        {
            "type": "RequestHeaderModifier",
            "requestHeaderModifier": {
                "set": [{"name": "X-Env", "value": "prod"}],
                "add": [{"name": "X-Trace", "value": "1"}, {"name": "X-Via", "value": "np"}],
                "remove": ["X-Debug"],
            },
        }
    )
    assert f.type == "RequestHeaderModifier"
    assert f.header_modifier == HeaderModifier(
        set=(("X-Env", "prod"),), add=(("X-Trace", "1"), ("X-Via", "np")), remove=("X-Debug",)
    )
    assert (f.redirect, f.rewrite, f.mirror, f.extension) == (None, None, None, None)


def test_response_header_modifier():
    f = only_filter(
        {
            "type": "ResponseHeaderModifier",
            "responseHeaderModifier": {"set": [{"name": "Cache-Control", "value": "no-store"}]},
        }
    )
    assert f.type == "ResponseHeaderModifier"
    assert f.header_modifier == HeaderModifier(set=(("Cache-Control", "no-store"),))


def test_request_redirect_fields_and_default_status_302():
    f = only_filter(
        {
            "type": "RequestRedirect",
            "requestRedirect": {
                "scheme": "https",
                "hostname": "WWW.example.com",
                "port": 8443,
                "path": {"type": "ReplaceFullPath", "replaceFullPath": "/moved"},
            },
        }
    )
    r = f.redirect
    assert (r.scheme, r.hostname, r.port, r.status_code) == ("https", "www.example.com", 8443, 302)
    assert r.path == PathModifier("ReplaceFullPath", "/moved")


def test_request_redirect_explicit_301_without_path():
    f = only_filter({"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}})
    assert f.redirect.status_code == 301
    assert (f.redirect.scheme, f.redirect.hostname, f.redirect.path, f.redirect.port) == (
        "",
        "",
        None,
        None,
    )


def test_url_rewrite_hostname_and_prefix():
    f = only_filter(
        {
            "type": "URLRewrite",
            "urlRewrite": {
                "hostname": "backend.internal",
                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"},
            },
        }
    )
    assert f.rewrite.hostname == "backend.internal"
    assert f.rewrite.path == PathModifier("ReplacePrefixMatch", "/v2")


def test_url_rewrite_full_path():
    f = only_filter(
        {
            "type": "URLRewrite",
            "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/"}},
        }
    )
    assert f.rewrite.hostname == ""
    assert f.rewrite.path == PathModifier("ReplaceFullPath", "/")


def test_request_mirror_with_percent():
    f = only_filter(
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": svc_ref("shadow", 80), "percent": 10},
        }
    )
    assert f.mirror.backend == BackendRef("", "Service", "shadow", "apps", 80)
    assert f.mirror.percent == 10
    assert f.mirror.fraction is None


def test_request_mirror_with_fraction_and_default_denominator():
    f = only_filter(
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": svc_ref("shadow", 80), "fraction": {"numerator": 5}},
        }
    )
    assert f.mirror.fraction == (5, 100)
    assert f.mirror.percent is None

    f = only_filter(
        {
            "type": "RequestMirror",
            "requestMirror": {
                "backendRef": svc_ref("shadow", 80, namespace="ops"),
                "fraction": {"numerator": 1, "denominator": 3},
            },
        }
    )
    assert f.mirror.fraction == (1, 3)
    assert f.mirror.backend.namespace == "ops"


def test_request_mirror_without_percent_or_fraction_mirrors_everything():
    f = only_filter({"type": "RequestMirror", "requestMirror": {"backendRef": svc_ref()}})
    assert (f.mirror.percent, f.mirror.fraction) == (None, None)


def test_extension_ref_and_cors_parse_so_that_status_can_report_them():
    route = parse(
        http_route(
            rule_with_filters(
                {
                    "type": "ExtensionRef",
                    "extensionRef": {"group": "x.io", "kind": "K", "name": "n"},
                },
                {"type": "CORS", "cors": {"allowOrigins": ["https://a.example"]}},
            )
        )
    )
    ext, cors = only_rule(route).filters
    assert ext.extension == ("x.io", "K", "n")
    assert cors.type == "CORS"


def test_backend_ref_filters():
    route = parse(
        http_route(
            {
                "backendRefs": [
                    svc_ref(
                        filters=[
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {"add": [{"name": "X-B", "value": "1"}]},
                            }
                        ]
                    )
                ]
            }
        )
    )
    (backend,) = only_rule(route).backends
    (f,) = backend.filters
    assert f.type == "RequestHeaderModifier"
    assert f.header_modifier.add == (("X-B", "1"),)


# -- HTTPRoute: timeouts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), ("0s", 0.0)],
)
def test_request_timeout_durations(text: str, seconds: float):
    rule = only_rule(parse(http_route({"timeouts": {"request": text}})))
    assert rule.request_timeout == pytest.approx(seconds)
    assert rule.backend_timeout is None


def test_backend_request_timeout_within_request_timeout():
    rule = only_rule(parse(http_route({"timeouts": {"request": "1m", "backendRequest": "15s"}})))
    assert (rule.request_timeout, rule.backend_timeout) == (60.0, 15.0)


def test_backend_request_may_be_longer_when_request_timeout_is_disabled():
    rule = only_rule(parse(http_route({"timeouts": {"request": "0s", "backendRequest": "15s"}})))
    assert (rule.request_timeout, rule.backend_timeout) == (0.0, 15.0)


# -- HTTPRoute: rejections -----------------------------------------------------------------

ROUTE = "HTTPRoute apps/shop"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            rule_with_filters(
                {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}},
                {"type": "URLRewrite", "urlRewrite": {"hostname": "b.example"}},
            ),
            "spec.rules[0].filters: RequestRedirect and URLRewrite cannot be used together",
        ),
        (
            rule_with_filters(
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["a"]}},
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["b"]}},
            ),
            "spec.rules[0].filters: RequestHeaderModifier may appear only once",
        ),
        (
            rule_with_filters(
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {}},
                {"type": "RequestRedirect", "requestRedirect": {"statusCode": 404}},
            ),
            "spec.rules[0].filters[1].requestRedirect.statusCode: 404 is not a redirect status "
            "(301, 302, 303, 307, 308)",
        ),
        (
            rule_with_filters({"type": "RequestRedirect", "requestRedirect": {"scheme": "ftp"}}),
            "spec.rules[0].filters[0].requestRedirect.scheme: unsupported value 'ftp' "
            "(one of , http, https)",
        ),
        (
            rule_with_filters({"type": "URLRewrite"}),
            "spec.rules[0].filters[0].urlRewrite: required for a filter of type URLRewrite",
        ),
        (
            rule_with_filters(
                {"type": "RequestHeaderModifier", "responseHeaderModifier": {"remove": ["a"]}}
            ),
            "spec.rules[0].filters[0].responseHeaderModifier: must not be set for a filter of "
            "type RequestHeaderModifier",
        ),
        (
            rule_with_filters({"type": "Rewrite", "urlRewrite": {}}),
            "spec.rules[0].filters[0].type: unsupported value 'Rewrite' (one of "
            "RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, "
            "RequestMirror, ExtensionRef, CORS, ExternalAuth)",
        ),
        (
            rule_with_filters(
                {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch"}}}
            ),
            "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch: required for type "
            "ReplacePrefixMatch",
        ),
        (
            rule_with_filters(
                {
                    "type": "URLRewrite",
                    "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "x"}},
                }
            ),
            "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath: 'x' must begin with '/'",
        ),
        (
            rule_with_filters(
                {
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {
                        "set": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}]
                    },
                }
            ),
            "spec.rules[0].filters[0].requestHeaderModifier.set[1].name: 'x-a' appears twice",
        ),
        (
            rule_with_filters(
                {
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {"add": [{"name": "Bad Header", "value": "1"}]},
                }
            ),
            "spec.rules[0].filters[0].requestHeaderModifier.add[0].name: 'Bad Header' is not a "
            "valid header name",
        ),
        (
            rule_with_filters({"type": "RequestMirror", "requestMirror": {"percent": 5}}),
            "spec.rules[0].filters[0].requestMirror.backendRef: required",
        ),
        (
            rule_with_filters(
                {
                    "type": "RequestMirror",
                    "requestMirror": {"backendRef": svc_ref(), "percent": 101},
                }
            ),
            "spec.rules[0].filters[0].requestMirror.percent: 101 out of range (0-100)",
        ),
        (
            rule_with_filters(
                {
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": svc_ref(),
                        "fraction": {"numerator": 5, "denominator": 4},
                    },
                }
            ),
            "spec.rules[0].filters[0].requestMirror.fraction: needs 0 <= numerator <= "
            "denominator and denominator >= 1",
        ),
        (
            rule_with_filters(
                {
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": svc_ref(),
                        "percent": 5,
                        "fraction": {"numerator": 1},
                    },
                }
            ),
            "spec.rules[0].filters[0].requestMirror: percent and fraction must not both be set",
        ),
        (
            rule_with_filters(
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow"}}}
            ),
            "spec.rules[0].filters[0].requestMirror.backendRef.port: required when the backend "
            "is a Service",
        ),
        (
            rule_with_filters(
                {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}},
                backendRefs=[svc_ref()],
            ),
            "spec.rules[0].backendRefs: must be empty with a RequestRedirect filter",
        ),
        (
            {"matches": [{"path": {"value": "api"}}]},
            "spec.rules[0].matches[0].path.value: 'api' must begin with '/'",
        ),
        (
            {"matches": [{"path": {"type": "Exact", "value": "/a//b"}}]},
            "spec.rules[0].matches[0].path.value: '/a//b' must not contain '//', '/./' or '/../'",
        ),
        (
            {"matches": [{"path": {"value": "/a/../etc"}}]},
            "spec.rules[0].matches[0].path.value: '/a/../etc' must not contain '//', '/./' or "
            "'/../'",
        ),
        (
            {"matches": [{}, {"method": "FETCH"}]},
            "spec.rules[0].matches[1].method: unsupported value 'FETCH'",
        ),
        (
            {"matches": [{"headers": [{"type": "Prefix", "name": "a", "value": "b"}]}]},
            "spec.rules[0].matches[0].headers[0].type: unsupported value 'Prefix' (one of "
            "Exact, RegularExpression)",
        ),
        (
            {"timeouts": {"request": "10s", "backendRequest": "11s"}},
            "spec.rules[0].timeouts.backendRequest: must not be longer than request",
        ),
        (
            {"timeouts": {"request": "10x"}},
            "spec.rules[0].timeouts.request: '10x' is not a duration (like 10s, 500ms or 1m30s)",
        ),
        (
            {"timeouts": {"backendRequest": "1.5s"}},
            "spec.rules[0].timeouts.backendRequest: '1.5s' is not a duration (like 10s, 500ms "
            "or 1m30s)",
        ),
        (
            {"backendRefs": [svc_ref(), svc_ref("api", port=None)]},
            "spec.rules[0].backendRefs[1].port: required when the backend is a Service",
        ),
        (
            {"backendRefs": [svc_ref(weight=1_000_001)]},
            "spec.rules[0].backendRefs[0].weight: 1000001 out of range (0-1000000)",
        ),
        (
            {"backendRefs": [svc_ref(weight=-1)]},
            "spec.rules[0].backendRefs[0].weight: -1 out of range (0-1000000)",
        ),
        (
            {"backendRefs": [svc_ref(port=0)]},
            "spec.rules[0].backendRefs[0].port: 0 out of range (1-65535)",
        ),
        (
            {
                "backendRefs": [
                    svc_ref(
                        filters=[
                            {"type": "RequestRedirect", "requestRedirect": {}},
                            {"type": "URLRewrite", "urlRewrite": {}},
                        ]
                    )
                ]
            },
            "spec.rules[0].backendRefs[0].filters: RequestRedirect and URLRewrite cannot be "
            "used together",
        ),
    ],
    ids=[
        "redirect-with-rewrite",
        "header-modifier-twice",
        "redirect-status-404",
        "redirect-scheme-ftp",
        "filter-without-config",
        "config-of-another-type",
        "unknown-filter-type",
        "prefix-rewrite-without-value",
        "full-path-without-slash",
        "modifier-duplicate-name",
        "modifier-bad-header-name",
        "mirror-without-backend",
        "mirror-percent-101",
        "mirror-fraction-over-1",
        "mirror-percent-and-fraction",
        "mirror-service-without-port",
        "redirect-with-backends",
        "path-without-slash",
        "path-double-slash",
        "path-dot-dot",
        "unknown-method",
        "unknown-header-match-type",
        "backend-timeout-longer",
        "bad-duration",
        "fractional-duration",
        "service-without-port",
        "weight-too-big",
        "weight-negative",
        "backend-port-0",
        "backend-filters-checked-too",
    ],
)
def test_http_route_rejections(rule: dict, message: str):
    assert error_of(http_route(rule)) == f"{ROUTE}: {message}"


def test_bad_path_regex_names_the_field():
    raw = http_route({"matches": [{"path": {"type": "RegularExpression", "value": "/(a"}}]})
    with pytest.raises(
        ModelError,
        match=r"^HTTPRoute apps/shop: spec\.rules\[0\]\.matches\[0\]\.path\.value: '/\(a' is "
        r"not a valid regular expression \(",
    ):
        parse_object(raw)


def test_bad_header_regex_names_the_field():
    raw = http_route(
        {"matches": [{"headers": [{"type": "RegularExpression", "name": "a", "value": "[z-a]"}]}]}
    )
    with pytest.raises(
        ModelError,
        match=r"spec\.rules\[0\]\.matches\[0\]\.headers\[0\]\.value: '\[z-a\]' is not a valid",
    ):
        parse_object(raw)


def test_error_in_a_later_rule_names_its_index():
    raw = http_route(
        {"backendRefs": [svc_ref()]},
        rule_with_filters(
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {}},
            {"type": "RequestRedirect", "requestRedirect": {"statusCode": 200}},
        ),
    )
    with pytest.raises(
        ModelError, match=r"^HTTPRoute apps/shop: spec\.rules\[1\]\.filters\[1\]\.requestRedirect"
    ) as exc:
        parse_object(raw)
    assert exc.value.ref == "HTTPRoute apps/shop"
    assert exc.value.field == "spec.rules[1].filters[1].requestRedirect.statusCode"


@pytest.mark.parametrize(
    ("hostnames", "message"),
    [
        (["ok.example", "192.0.2.1"], "spec.hostnames[1]: '192.0.2.1' must be a DNS name, "),
        (["foo.*.com"], "spec.hostnames[0]: 'foo.*.com' is not a valid hostname"),
        (["shop_example.com"], "spec.hostnames[0]: 'shop_example.com' is not a valid hostname"),
    ],
)
def test_bad_route_hostnames(hostnames: list[str], message: str):
    assert error_of(http_route(hostnames=hostnames)).startswith(f"{ROUTE}: {message}")


def test_parent_ref_without_name():
    assert error_of(http_route(parentRefs=[{"namespace": "infra"}])) == (
        f"{ROUTE}: spec.parentRefs[0].name: required"
    )


def test_route_in_the_default_namespace_when_none_is_given():
    raw = http_route({"backendRefs": [svc_ref()]})
    del raw["metadata"]["namespace"]
    route = parse(raw)
    assert route.key == ObjectKey("HTTPRoute", "default", "shop")
    assert route.parents[0].namespace == "default"
    assert route.rules[0].backends[0].namespace == "default"


# -- GRPCRoute -----------------------------------------------------------------------------


def grpc_match(**method: Any) -> dict:
    return {"method": method}


def test_grpc_route_defaults():
    route = parse(grpc_route({"backendRefs": [svc_ref("rpc", 50051)]}))
    assert isinstance(route, GRPCRoute)
    assert route.key == ObjectKey("GRPCRoute", "apps", "rpc")
    (rule,) = route.rules
    (m,) = rule.matches
    assert m.method is None
    assert m.headers == ()
    assert rule.backends == (BackendRef("", "Service", "rpc", "apps", 50051),)
    assert route.parents == (ParentRef(GW, "Gateway", "apps", "edge"),)


def test_grpc_route_without_rules_gets_one_catch_all_rule():
    (rule,) = parse(grpc_route()).rules
    assert [m.method for m in rule.matches] == [None]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"service": "shop.Cart", "method": "Add"}, GRPCMethodMatch("Exact", "shop.Cart", "Add")),
        ({"service": "shop.Cart"}, GRPCMethodMatch("Exact", "shop.Cart", "")),
        ({"method": "Add"}, GRPCMethodMatch("Exact", "", "Add")),
        (
            {"type": "RegularExpression", "service": r"shop\..*", "method": "Get.*"},
            GRPCMethodMatch("RegularExpression", r"shop\..*", "Get.*"),
        ),
    ],
)
def test_grpc_method_matches(method: dict, expected: GRPCMethodMatch):
    route = parse(grpc_route({"matches": [grpc_match(**method)]}))
    assert route.rules[0].matches[0].method == expected


def test_grpc_header_matches_keep_the_first_of_a_name():
    route = parse(
        grpc_route(
            {
                "matches": [
                    {
                        "headers": [
                            {"name": "X-Tenant", "value": "a"},
                            {"name": "x-tenant", "value": "b"},
                            {"type": "RegularExpression", "name": "x-v", "value": "v[12]"},
                        ]
                    }
                ]
            }
        )
    )
    assert route.rules[0].matches[0].headers == (
        HeaderMatch("Exact", "X-Tenant", "a"),
        HeaderMatch("RegularExpression", "x-v", "v[12]"),
    )


def test_grpc_filters_from_the_grpc_set():
    route = parse(
        grpc_route(
            rule_with_filters(
                {
                    "type": "ResponseHeaderModifier",
                    "responseHeaderModifier": {"remove": ["X-Internal"]},
                },
                {"type": "RequestMirror", "requestMirror": {"backendRef": svc_ref("shadow", 1)}},
            )
        )
    )
    mod, mirror = route.rules[0].filters
    assert mod.header_modifier == HeaderModifier(remove=("X-Internal",))
    assert mirror.mirror.backend.name == "shadow"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"matches": [grpc_match(type="Exact")]},
            "spec.rules[0].matches[0].method: one or both of service and method must be set",
        ),
        (
            {"matches": [grpc_match(service="shop/Cart")]},
            "spec.rules[0].matches[0].method: an Exact service or method must not contain '/'",
        ),
        (
            {"matches": [grpc_match(service="shop.Cart", method="Add/x")]},
            "spec.rules[0].matches[0].method: an Exact service or method must not contain '/'",
        ),
        (
            rule_with_filters({"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}),
            "spec.rules[0].filters[0].type: unsupported value 'RequestRedirect' (one of "
            "RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, ExtensionRef)",
        ),
        (
            rule_with_filters({"type": "URLRewrite", "urlRewrite": {}}),
            "spec.rules[0].filters[0].type: unsupported value 'URLRewrite' (one of "
            "RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, ExtensionRef)",
        ),
        (
            {"backendRefs": [svc_ref("rpc", port=None)]},
            "spec.rules[0].backendRefs[0].port: required when the backend is a Service",
        ),
    ],
    ids=[
        "neither-service-nor-method",
        "slash-in-service",
        "slash-in-method",
        "redirect-refused",
        "rewrite-refused",
        "service-without-port",
    ],
)
def test_grpc_route_rejections(rule: dict, message: str):
    assert error_of(grpc_route(rule)) == f"GRPCRoute apps/rpc: {message}"


def test_grpc_bad_method_regex():
    raw = grpc_route({"matches": [grpc_match(type="RegularExpression", method="(")]})
    with pytest.raises(
        ModelError,
        match=r"^GRPCRoute apps/rpc: spec\.rules\[0\]\.matches\[0\]\.method\.method: '\(' is "
        "not a valid regular expression",
    ):
        parse_object(raw)


# -- ReferenceGrant ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1beta1", "v1"])
def test_reference_grant_versions(version: str):
    g = parse(grant(version=version))
    assert isinstance(g, ReferenceGrant)
    assert g.key == ObjectKey("ReferenceGrant", "infra", "allow-apps")


def test_reference_grant_v1alpha2_is_refused_naming_the_supported_versions():
    assert error_of(grant(version="v1alpha2")) == (
        "ReferenceGrant infra/allow-apps: apiVersion: 'gateway.networking.k8s.io/v1alpha2' is "
        "not supported for ReferenceGrant (use gateway.networking.k8s.io/v1beta1 or "
        "gateway.networking.k8s.io/v1)"
    )


def test_gateway_kinds_other_than_reference_grant_need_v1():
    raw = {**http_route(), "apiVersion": f"{GW}/v1beta1"}
    assert error_of(raw) == (
        "HTTPRoute apps/shop: apiVersion: 'gateway.networking.k8s.io/v1beta1' is not supported "
        "for HTTPRoute (use gateway.networking.k8s.io/v1)"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"to": [{"group": "", "kind": "Service"}]}, "spec.from: at least one entry is required"),
        (
            {"from": [{"group": GW, "kind": "HTTPRoute", "namespace": "apps"}], "to": []},
            "spec.to: at least one entry is required",
        ),
        (
            {"from": [{"group": GW, "kind": "HTTPRoute"}], "to": [{"kind": "Service"}]},
            "spec.from[0].namespace: required",
        ),
        (
            {"from": [{"group": GW, "kind": "HTTPRoute", "namespace": "apps"}], "to": [{}]},
            "spec.to[0].kind: required",
        ),
    ],
)
def test_reference_grant_rejections(spec: dict, message: str):
    assert error_of(grant(spec)) == f"ReferenceGrant infra/allow-apps: {message}"


def test_reference_grant_to_a_whole_kind():
    g = parse(grant())
    assert g.allows(GW, "HTTPRoute", "apps", "", "Service", "web")
    assert g.allows(GW, "HTTPRoute", "apps", "", "Service", "anything")
    assert not g.allows(GW, "HTTPRoute", "other", "", "Service", "web")  # another namespace
    assert not g.allows(GW, "GRPCRoute", "apps", "", "Service", "web")  # another source kind
    assert not g.allows(GW, "HTTPRoute", "apps", "", "Secret", "web")  # another target kind
    assert not g.allows("", "HTTPRoute", "apps", "", "Service", "web")  # another source group


def test_reference_grant_to_one_named_object():
    g = parse(
        grant(
            {
                "from": [
                    {"group": GW, "kind": "Gateway", "namespace": "infra"},
                    {"group": GW, "kind": "Gateway", "namespace": "edge"},
                ],
                "to": [{"group": "", "kind": "Secret", "name": "shop-tls"}],
            }
        )
    )
    assert g.allows(GW, "Gateway", "edge", "", "Secret", "shop-tls")
    assert g.allows(GW, "Gateway", "infra", "", "Secret", "shop-tls")
    assert not g.allows(GW, "Gateway", "edge", "", "Secret", "other-tls")


# -- Namespace -----------------------------------------------------------------------------


def test_namespace_is_cluster_scoped_and_keeps_its_labels():
    ns = parse(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "apps", "labels": {"team": "shop"}},
        }
    )
    assert isinstance(ns, Namespace)
    assert ns.key == ObjectKey("Namespace", "", "apps")
    assert str(ns.key) == "Namespace apps"
    assert ns.meta.labels == {"team": "shop"}


# -- manifests -----------------------------------------------------------------------------


def test_manifest_with_every_gateway_kind():
    result = parse_manifest((DATA / "shop.yaml").read_text(), "shop.yaml")
    assert [str(p) for p in result.problems] == []
    assert result.complete
    assert [(str(mo.key), mo.line) for mo in result.objects] == [
        ("Namespace apps", 2),
        ("GatewayClass netplane", 9),
        ("Gateway infra/edge", 16),
        ("HTTPRoute apps/shop", 42),
        ("GRPCRoute apps/rpc", 82),
        ("ReferenceGrant infra/allow-apps", 99),
    ]
    ns, gc, gw, route, rpc, rg = (mo.obj for mo in result.objects)
    assert ns.meta.labels == {"team": "shop"}
    assert gc.controller == "netplane.io/gateway-controller"
    assert [lst.name for lst in gw.listeners] == ["http", "https"]
    assert gw.listeners[1].namespace_selector.matches(ns.meta.labels)
    assert gw.listeners[1].certificate_refs == (CertificateRef("", "Secret", "shop-tls", "infra"),)
    assert route.hostnames == ("shop.example.com",)
    assert [r.request_timeout for r in route.rules] == [10.0, None]
    assert route.rules[1].filters[0].redirect.status_code == 301
    assert rpc.rules[0].matches[0].method == GRPCMethodMatch("Exact", "shop.Cart", "")
    assert rg.allows(GW, "Gateway", "infra", "", "Secret", "shop-tls") is False
    assert rg.allows(GW, "HTTPRoute", "apps", "", "Service", "web")


BAD_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: netplane
  listeners:
    - {name: http, port: 80, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
  namespace: apps
spec:
  parentRefs: [{name: edge, namespace: infra}]
  rules:
    - filters:
        - type: RequestRedirect
          requestRedirect:
            scheme: https
            statusCode: 404
"""


def test_bad_http_route_in_a_manifest_is_rejected_at_its_line():
    result = parse_manifest(BAD_ROUTE, "routes.yaml")
    assert [str(p) for p in result.problems] == [
        "routes.yaml:21: HTTPRoute apps/shop: spec.rules[0].filters[0].requestRedirect."
        "statusCode: 404 is not a redirect status (301, 302, 303, 307, 308)"
    ]
    assert result.problems[0].key == ObjectKey("HTTPRoute", "apps", "shop")
    # The Gateway beside it is still used.
    assert [str(mo.key) for mo in result.objects] == ["Gateway infra/edge"]


def test_reference_grant_v1alpha2_in_a_manifest_points_at_the_api_version():
    text = (DATA / "shop.yaml").read_text()
    text = text.replace("gateway.networking.k8s.io/v1beta1", "gateway.networking.k8s.io/v1alpha2")
    result = parse_manifest(text, "shop.yaml")
    assert [str(p) for p in result.problems] == [
        "shop.yaml:99: ReferenceGrant infra/allow-apps: apiVersion: "
        "'gateway.networking.k8s.io/v1alpha2' is not supported for ReferenceGrant "
        "(use gateway.networking.k8s.io/v1beta1 or gateway.networking.k8s.io/v1)"
    ]
    assert len(result.objects) == 5
