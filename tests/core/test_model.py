"""The model parsers: what a valid object becomes, and what an invalid one is told.

Every error a user can see names the object and the exact field path, so the
rejection tests compare the whole message, not a fragment.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from netplane.errors import ModelError
from netplane.model import (
    Endpoint,
    EndpointPort,
    Endpoints,
    EndpointSlice,
    Ingress,
    IngressBackend,
    IngressClass,
    IngressPath,
    IngressRule,
    IngressTLS,
    Node,
    NodeAddress,
    ObjectKey,
    Pod,
    Secret,
    Service,
    ServicePort,
    parse_object,
)

# -- builders ----------------------------------------------------------------


def service(spec: dict[str, Any] | None = None, name: str = "web", **extra: Any) -> dict:
    raw: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80}]} if spec is None else spec,
    }
    raw.update(extra)
    return raw


def eslice(endpoints: list, address_type: str = "IPv4", ports: list | None = None) -> dict:
    raw: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": address_type,
        "endpoints": endpoints,
    }
    if ports is not None:
        raw["ports"] = ports
    return raw


def ingress(spec: dict[str, Any], **meta: Any) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "site", "namespace": "default", **meta},
        "spec": spec,
    }


def backend(name: str = "web", port: Any = None) -> dict:
    return {"service": {"name": name, "port": {"number": 80} if port is None else port}}


def path(p: str = "/", path_type: str = "Prefix", be: dict | None = None) -> dict:
    return {"path": p, "pathType": path_type, "backend": backend() if be is None else be}


def error_of(raw: Any) -> str:
    with pytest.raises(ModelError) as exc:
        parse_object(raw)
    return str(exc.value)


# -- identity and apiVersion ---------------------------------------------------


def test_object_key_str_and_order() -> None:
    assert str(ObjectKey("Service", "default", "web")) == "Service default/web"
    assert str(ObjectKey("IngressClass", "", "nginx")) == "IngressClass nginx"
    assert ObjectKey("A", "x", "b") < ObjectKey("A", "y", "a")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {**service(), "apiVersion": "v2"},
            "Service default/web: apiVersion: 'v2' is not supported for Service (use v1)",
        ),
        (
            {**eslice([]), "apiVersion": "discovery.k8s.io/v1beta1"},
            "EndpointSlice default/web-abc: apiVersion: 'discovery.k8s.io/v1beta1' is not "
            "supported for EndpointSlice (use discovery.k8s.io/v1)",
        ),
        (
            {**ingress({"defaultBackend": backend()}), "apiVersion": "extensions/v1beta1"},
            "Ingress default/site: apiVersion: 'extensions/v1beta1' is not supported for "
            "Ingress (use networking.k8s.io/v1)",
        ),
        (
            {"kind": "Service", "metadata": {"name": "web"}, "spec": {}},
            "Service default/web: apiVersion: None is not supported for Service (use v1)",
        ),
    ],
)
def test_api_version_mismatch(raw: dict, message: str) -> None:
    assert error_of(raw) == message


def test_kind_from_argument_and_missing_api_version() -> None:
    raw = service()
    del raw["kind"], raw["apiVersion"]
    svc = parse_object(raw, kind="Service")
    assert isinstance(svc, Service)
    assert svc.key == ObjectKey("Service", "default", "web")


@pytest.mark.parametrize(
    "raw",
    [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}},
        {"apiVersion": "v1", "kind": ["Service"], "metadata": {"name": "x"}},
        {"apiVersion": "v1", "metadata": {"name": "x"}},
    ],
)
def test_unknown_kinds_are_ignored(raw: dict) -> None:
    assert parse_object(raw) is None


def test_not_a_mapping() -> None:
    with pytest.raises(ModelError, match="expected a mapping"):
        parse_object(["Service"])


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, "Service: metadata.name: required"),
        (
            {"name": "Web"},
            "Service default/Web: metadata.name: 'Web' is not a valid DNS-1123 subdomain",
        ),
        (
            {"name": "web", "namespace": "a.b"},
            "Service a.b/web: metadata.namespace: 'a.b' is not a valid DNS-1123 label",
        ),
        (
            {"name": "web", "labels": {"app": 1}},
            "Service default/web: metadata.labels.app: expected a string, got int",
        ),
        ({"name": 7}, "Service: metadata.name: expected a string, got int"),
    ],
)
def test_metadata_errors(metadata: dict, message: str) -> None:
    assert error_of({**service(), "metadata": metadata}) == message


def test_missing_metadata() -> None:
    raw = service()
    del raw["metadata"]
    assert error_of(raw) == "Service: metadata: required"


def test_namespace_defaults_and_meta_fields() -> None:
    raw = service()
    raw["metadata"] = {
        "name": "web",
        "uid": "u1",
        "resourceVersion": "42",
        "labels": {"app": "web"},
        "annotations": {"a": "b"},
    }
    svc = parse_object(raw)
    assert isinstance(svc, Service)
    assert svc.meta.namespace == "default"
    assert svc.meta.resource_version == "42"
    assert svc.meta.labels == {"app": "web"}
    assert svc.meta.annotations == {"a": "b"}


# -- Service -------------------------------------------------------------------


def test_service_full() -> None:
    raw = service(
        {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00::a"],
            "ipFamilies": ["IPv4", "IPv6"],
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http-alt", "nodePort": 30080},
                {
                    "name": "dns",
                    "port": 53,
                    "protocol": "UDP",
                    "targetPort": 5353,
                    "appProtocol": "dns",
                },
            ],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "externalIPs": ["198.18.0.5"],
            "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local",
            "healthCheckNodePort": 31000,
            "publishNotReadyAddresses": True,
            "trafficDistribution": "PreferClose",
        },
        status={"loadBalancer": {"ingress": [{"ip": "198.18.1.1"}, {"hostname": "lb.example"}]}},
    )
    svc = parse_object(raw)
    assert svc == Service(
        key=ObjectKey("Service", "default", "web"),
        meta=svc.meta,
        type="LoadBalancer",
        cluster_ips=("10.96.0.10", "fd00::a"),
        headless=False,
        ip_families=("IPv4", "IPv6"),
        ports=(
            ServicePort("http", "TCP", 80, "http-alt", 30080, ""),
            ServicePort("dns", "UDP", 53, 5353, None, "dns"),
        ),
        selector={"app": "web"},
        session_affinity="ClientIP",
        affinity_timeout=60,
        external_ips=("198.18.0.5",),
        load_balancer_ips=("198.18.1.1",),
        external_name="",
        external_traffic_policy="Local",
        internal_traffic_policy="Local",
        health_check_node_port=31000,
        publish_not_ready_addresses=True,
    )
    assert svc.needs_cluster_ip


def test_service_defaults() -> None:
    svc = parse_object(service({"ports": [{"port": 80}]}))
    assert isinstance(svc, Service)
    assert svc.type == "ClusterIP"
    assert svc.cluster_ips == ()
    assert svc.ports == (ServicePort("", "TCP", 80, 80, None, ""),)
    assert svc.selector is None
    assert svc.session_affinity == "None"
    assert svc.affinity_timeout == 10800
    assert svc.external_traffic_policy == "Cluster"
    assert not svc.headless


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (None, 80),
        (8080, 8080),
        ("8080", 8080),
        (0, 80),
        ("http", "http"),
        ("web-api", "web-api"),
    ],
)
def test_service_target_port(target: Any, expected: int | str) -> None:
    port: dict[str, Any] = {"port": 80}
    if target is not None:
        port["targetPort"] = target
    svc = parse_object(service({"ports": [port]}))
    assert isinstance(svc, Service)
    assert svc.ports[0].target_port == expected


def test_service_empty_selector_selects_nothing() -> None:
    svc = parse_object(service({"selector": {}, "ports": [{"port": 80}]}))
    assert isinstance(svc, Service)
    assert svc.selector is None


@pytest.mark.parametrize("name", ["web", "a", "w-1", "a" * 63])
def test_service_dns1035_names_ok(name: str) -> None:
    assert isinstance(parse_object(service(name=name)), Service)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "1web",
            "Service default/1web: metadata.name: '1web' is not a valid DNS-1035 label "
            "(a lower-case letter first)",
        ),
        (
            "web.app",
            "Service default/web.app: metadata.name: 'web.app' is not a valid DNS-1035 label "
            "(a lower-case letter first)",
        ),
        (
            "a" * 64,
            f"Service default/{'a' * 64}: metadata.name: '{'a' * 64}' is not a valid DNS-1035 "
            "label (a lower-case letter first)",
        ),
        ("web-", "Service default/web-: metadata.name: 'web-' is not a valid DNS-1123 subdomain"),
    ],
)
def test_service_dns1035_names_rejected(name: str, message: str) -> None:
    assert error_of(service(name=name)) == message


def test_headless() -> None:
    for spec in (
        {"clusterIP": "None"},
        {"clusterIPs": ["None"]},
        {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]},
    ):
        svc = parse_object(service(spec))
        assert isinstance(svc, Service)
        assert svc.headless
        assert svc.cluster_ips == ()
        assert not svc.needs_cluster_ip


def test_external_name() -> None:
    svc = parse_object(service({"type": "ExternalName", "externalName": "db.example.com"}))
    assert isinstance(svc, Service)
    assert svc.external_name == "db.example.com"
    assert svc.cluster_ips == ()
    assert svc.ports == ()
    assert not svc.needs_cluster_ip


def test_dual_stack_ipv6_first_is_normalised() -> None:
    svc = parse_object(
        service(
            {
                "clusterIPs": ["FD00:0::A", "10.96.0.10"],
                "ipFamilies": ["IPv6", "IPv4"],
                "ports": [{"port": 80}],
            }
        )
    )
    assert isinstance(svc, Service)
    assert svc.cluster_ips == ("fd00::a", "10.96.0.10")


P = "Service default/web: spec"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "Bogus", "ports": [{"port": 80}]}, f"{P}.type: unsupported value 'Bogus' (one of ClusterIP, NodePort, LoadBalancer, ExternalName)"),
        ({"ports": [{"port": 80, "name": "a"}, {"port": 70000, "name": "b"}]}, f"{P}.ports[1].port: 70000 out of range (1-65535)"),
        ({"ports": [{"port": 0}]}, f"{P}.ports[0].port: 0 out of range (1-65535)"),
        ({"ports": [{"name": "a"}]}, f"{P}.ports[0].port: required"),
        ({"ports": [{"port": "80"}]}, f"{P}.ports[0].port: expected an integer, got a string"),
        ({"ports": [{"port": True}]}, f"{P}.ports[0].port: expected an integer, got a boolean"),
        ({"ports": [{"port": 80}, {"port": 81}]}, f"{P}.ports[0].name: required when the service has more than one port"),
        ({"ports": [{"name": "a", "port": 80}, {"port": 81}]}, f"{P}.ports[1].name: required when the service has more than one port"),
        ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, f"{P}.ports[1].name: duplicate port name 'a'"),
        ({"ports": [{"name": "Http", "port": 80}]}, f"{P}.ports[0].name: 'Http' is not a valid DNS-1123 label"),
        ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}, f"{P}.ports[1].port: duplicate port 80/TCP"),
        ({"ports": [{"port": 80, "protocol": "ICMP"}]}, f"{P}.ports[0].protocol: unsupported value 'ICMP' (one of TCP, UDP, SCTP)"),
        ({"ports": [{"port": 80, "protocol": "tcp"}]}, f"{P}.ports[0].protocol: unsupported value 'tcp' (one of TCP, UDP, SCTP)"),
        ({"ports": [{"port": 80, "targetPort": 70000}]}, f"{P}.ports[0].targetPort: 70000 out of range (1-65535)"),
        ({"ports": [{"port": 80, "targetPort": -1}]}, f"{P}.ports[0].targetPort: -1 out of range (1-65535)"),
        ({"ports": [{"port": 80, "targetPort": "Http"}]}, f"{P}.ports[0].targetPort: 'Http' is not a valid port name"),
        ({"ports": [{"port": 80, "targetPort": "a-very-long-port-name"}]}, f"{P}.ports[0].targetPort: 'a-very-long-port-name' is not a valid port name"),
        ({"ports": [{"port": 80, "targetPort": "a--b"}]}, f"{P}.ports[0].targetPort: 'a--b' is not a valid port name"),
        ({"ports": [{"port": 80, "targetPort": "\u00b2"}]}, f"{P}.ports[0].targetPort: '\u00b2' is not a valid port name"),
        ({"ports": [{"port": 80, "targetPort": 1.5}]}, f"{P}.ports[0].targetPort: expected a number or a port name"),
        ({"ports": [{"port": 80, "targetPort": True}]}, f"{P}.ports[0].targetPort: expected a number or a port name"),
        ({"ports": [{"port": 80, "nodePort": 30000}]}, f"{P}.ports[0].nodePort: may not be set for type ClusterIP"),
        ({"type": "NodePort", "ports": [{"port": 80, "nodePort": 70000}]}, f"{P}.ports[0].nodePort: 70000 out of range (1-65535)"),
        ({"ports": []}, f"{P}.ports: required (only headless and ExternalName services may have none)"),
        ({}, f"{P}.ports: required (only headless and ExternalName services may have none)"),
        ({"ports": {"port": 80}}, f"{P}.ports: expected a list, got an object"),
        ({"ports": [80]}, f"{P}.ports[0]: expected an object, got int"),
        ({"clusterIP": "10.0.0.300", "ports": [{"port": 80}]}, f"{P}.clusterIP: '10.0.0.300' is not a valid IP address"),
        ({"clusterIPs": ["10.0.0.1", "nope"], "ports": [{"port": 80}]}, f"{P}.clusterIPs[1]: 'nope' is not a valid IP address"),
        ({"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.2"], "ports": [{"port": 80}]}, f"{P}.clusterIPs[0]: '10.0.0.2' must match clusterIP '10.0.0.1'"),
        ({"clusterIPs": ["10.0.0.1", "10.0.0.2"], "ports": [{"port": 80}]}, f"{P}.clusterIPs: two addresses must be of different families"),
        ({"clusterIPs": ["10.0.0.1", "fd00::1", "10.0.0.2"], "ports": [{"port": 80}]}, f"{P}.clusterIPs: at most two addresses (one per family)"),
        ({"clusterIPs": ["None", "10.0.0.1"], "ports": [{"port": 80}]}, f"{P}.clusterIPs: a headless service takes only 'None'"),
        ({"clusterIPs": ["10.0.0.1"], "ipFamilies": ["IPv6"], "ports": [{"port": 80}]}, f"{P}.ipFamilies[0]: 'IPv6' does not match the family of clusterIPs[0] '10.0.0.1'"),
        ({"clusterIP": "fd00::1", "ipFamilies": ["IPv4"], "ports": [{"port": 80}]}, f"{P}.ipFamilies[0]: 'IPv4' does not match the family of clusterIPs[0] 'fd00::1'"),
        ({"ipFamilies": ["IPv4", "IPv4"], "ports": [{"port": 80}]}, f"{P}.ipFamilies[1]: duplicate family 'IPv4'"),
        ({"ipFamilies": ["IPv4", "IPv6", "IPv4"], "ports": [{"port": 80}]}, f"{P}.ipFamilies: at most two families"),
        ({"ipFamilies": ["ipv4"], "ports": [{"port": 80}]}, f"{P}.ipFamilies[0]: unsupported value 'ipv4' (one of IPv4, IPv6)"),
        ({"type": "ExternalName"}, f"{P}.externalName: required for type ExternalName"),
        ({"type": "ExternalName", "externalName": "db", "clusterIP": "10.0.0.1"}, f"{P}.clusterIP: must be empty for type ExternalName"),
        ({"type": "ExternalName", "externalName": "Not A Name"}, f"{P}.externalName: 'Not A Name' is not a valid DNS-1123 subdomain"),
        ({"ports": [{"port": 80}], "sessionAffinity": "Cookie"}, f"{P}.sessionAffinity: unsupported value 'Cookie' (one of None, ClientIP)"),
        ({"ports": [{"port": 80}], "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}, f"{P}.sessionAffinityConfig.clientIP.timeoutSeconds: 0 out of range (1-86400)"),
        ({"ports": [{"port": 80}], "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}, f"{P}.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 out of range (1-86400)"),
        ({"ports": [{"port": 80}], "externalTrafficPolicy": "Nearby"}, f"{P}.externalTrafficPolicy: unsupported value 'Nearby' (one of Cluster, Local)"),
        ({"ports": [{"port": 80}], "internalTrafficPolicy": "Nearby"}, f"{P}.internalTrafficPolicy: unsupported value 'Nearby' (one of Cluster, Local)"),
        ({"ports": [{"port": 80}], "externalIPs": ["1.2.3"]}, f"{P}.externalIPs[0]: '1.2.3' is not a valid IP address"),
        ({"ports": [{"port": 80}], "selector": {"app": 3}}, f"{P}.selector.app: expected a string, got int"),
        ({"ports": [{"port": 80}], "healthCheckNodePort": 0}, f"{P}.healthCheckNodePort: 0 out of range (1-65535)"),
        ({"ports": [{"port": 80}], "publishNotReadyAddresses": "yes"}, f"{P}.publishNotReadyAddresses: expected true or false, got a string"),
    ],
)  # fmt: skip
def test_service_errors(spec: dict, message: str) -> None:
    assert error_of(service(spec)) == message


def test_service_spec_not_an_object() -> None:
    assert error_of(service("x")) == "Service default/web: spec: expected an object, got a string"  # type: ignore[arg-type]


def test_service_lb_status_error() -> None:
    raw = service(status={"loadBalancer": {"ingress": [{"ip": "x"}]}})
    assert (
        error_of(raw)
        == "Service default/web: status.loadBalancer.ingress[0].ip: 'x' is not a valid IP address"
    )


@pytest.mark.parametrize("svc_type", ["NodePort", "LoadBalancer"])
def test_node_port_allowed(svc_type: str) -> None:
    svc = parse_object(service({"type": svc_type, "ports": [{"port": 80, "nodePort": 30001}]}))
    assert isinstance(svc, Service)
    assert svc.ports[0].node_port == 30001


# -- EndpointSlice -------------------------------------------------------------------


def test_endpoint_slice_full() -> None:
    raw = eslice(
        [
            {
                "addresses": ["10.1.0.1", "10.1.0.2"],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "hostname": "pod-a",
                "nodeName": "node-1",
                "zone": "z1",
                "hints": {"forZones": [{"name": "z1"}, {"name": "z2"}]},
                "targetRef": {"kind": "Pod", "namespace": "default", "name": "pod-a"},
            }
        ],
        ports=[{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
    )
    raw["metadata"]["resourceVersion"] = "7"
    sl = parse_object(raw)
    assert sl == EndpointSlice(
        key=ObjectKey("EndpointSlice", "default", "web-abc"),
        meta=sl.meta,
        address_type="IPv4",
        endpoints=(
            Endpoint(
                addresses=("10.1.0.1", "10.1.0.2"),
                ready=True,
                serving=True,
                terminating=False,
                hostname="pod-a",
                node_name="node-1",
                zone="z1",
                hints_for_zones=("z1", "z2"),
            ),
        ),
        ports=(EndpointPort("http", "TCP", 8080, "http"),),
        service_name="web",
    )
    assert sl.meta.resource_version == "7"


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        (None, (True, True, False)),
        ({}, (True, True, False)),
        ({"ready": None}, (True, True, False)),
        ({"ready": False}, (False, False, False)),
        ({"ready": False, "serving": True}, (False, True, False)),
        ({"ready": True, "serving": False}, (True, False, False)),
        ({"serving": False}, (True, False, False)),
        ({"ready": False, "serving": True, "terminating": True}, (False, True, True)),
        ({"terminating": True}, (True, True, True)),
    ],
)
def test_endpoint_conditions_default(conditions: dict | None, expected: tuple) -> None:
    ep: dict[str, Any] = {"addresses": ["10.1.0.1"]}
    if conditions is not None:
        ep["conditions"] = conditions
    sl = parse_object(eslice([ep]))
    assert isinstance(sl, EndpointSlice)
    e = sl.endpoints[0]
    assert (e.ready, e.serving, e.terminating) == expected


@pytest.mark.parametrize(
    ("raw_addr", "normalised"),
    [
        ("2001:DB8::0:1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("fd00::a", "fd00::a"),
    ],
)
def test_ipv6_addresses_normalised(raw_addr: str, normalised: str) -> None:
    sl = parse_object(eslice([{"addresses": [raw_addr]}], address_type="IPv6"))
    assert isinstance(sl, EndpointSlice)
    assert sl.endpoints[0].addresses == (normalised,)


def test_fqdn_slice_and_slice_without_label() -> None:
    raw = eslice([{"addresses": ["db.example.com"]}], address_type="FQDN")
    del raw["metadata"]["labels"]
    sl = parse_object(raw)
    assert isinstance(sl, EndpointSlice)
    assert sl.endpoints[0].addresses == ("db.example.com",)
    assert sl.service_name == ""


def test_endpoint_slice_port_without_number() -> None:
    sl = parse_object(eslice([], ports=[{"name": "x"}]))
    assert isinstance(sl, EndpointSlice)
    assert sl.ports == (EndpointPort("x", "TCP", None, ""),)
    assert sl.endpoints == ()


E = "EndpointSlice default/web-abc"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**eslice([]), "addressType": None}, f"{E}: addressType: required"),
        ({**eslice([]), "addressType": "IPv5"}, f"{E}: addressType: unsupported value 'IPv5' (one of IPv4, IPv6, FQDN)"),
        ({**eslice([]), "endpoints": {}}, f"{E}: endpoints: expected a list, got an object"),
        (eslice([5]), f"{E}: endpoints[0]: expected an object"),
        (eslice([{}]), f"{E}: endpoints[0].addresses: at least one address is required"),
        (eslice([{"addresses": []}]), f"{E}: endpoints[0].addresses: at least one address is required"),
        (eslice([{"addresses": "10.0.0.1"}]), f"{E}: endpoints[0].addresses: at least one address is required"),
        (eslice([{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.300"]}]), f"{E}: endpoints[1].addresses[0]: '10.0.0.300' is not a valid IP address"),
        (eslice([{"addresses": ["10.0.0.1", "fd00::1"]}]), f"{E}: endpoints[0].addresses[1]: 'fd00::1' is not an IPv4 address"),
        (eslice([{"addresses": ["10.0.0.1"]}], address_type="IPv6"), f"{E}: endpoints[0].addresses[0]: '10.0.0.1' is not an IPv6 address"),
        (eslice([{"addresses": [3]}]), f"{E}: endpoints[0].addresses[0]: expected a string"),
        (eslice([{"addresses": [None]}], address_type="IPv6"), f"{E}: endpoints[0].addresses[0]: expected a string"),
        (eslice([{"addresses": [""]}], address_type="FQDN"), f"{E}: endpoints[0].addresses[0]: expected a host name"),
        (eslice([{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]), f"{E}: endpoints[0].conditions.ready: expected true or false"),
        (eslice([{"addresses": ["10.0.0.1"], "conditions": {"serving": 1}}]), f"{E}: endpoints[0].conditions.serving: expected true or false"),
        (eslice([{"addresses": ["10.0.0.1"], "conditions": {"terminating": "no"}}]), f"{E}: endpoints[0].conditions.terminating: expected true or false"),
        (eslice([{"addresses": ["10.0.0.1"], "conditions": ["ready"]}]), f"{E}: endpoints[0].conditions: expected an object, got a list"),
        (eslice([{"addresses": ["10.0.0.1"], "hints": {"forZones": [{}]}}]), f"{E}: endpoints[0].hints.forZones[0].name: required"),
        (eslice([{"addresses": ["10.0.0.1"], "nodeName": 5}]), f"{E}: endpoints[0].nodeName: expected a string, got int"),
        (eslice([{"addresses": ["10.0.0.1"], "targetRef": "pod"}]), f"{E}: endpoints[0].targetRef: expected an object, got a string"),
        (eslice([{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"], "targetRef": {"name": 5}}]), f"{E}: endpoints[1].targetRef.name: expected a string, got int"),
        (eslice([{"addresses": ["10.0.0.1"], "hostname": ["a"]}]), f"{E}: endpoints[0].hostname: expected a string, got a list"),
        (eslice([{"addresses": ["10.0.0.1"], "zone": 1}]), f"{E}: endpoints[0].zone: expected a string, got int"),
        (eslice([{"addresses": ["10.0.0.1"], "conditions": {"ready": True, "terminating": 0}}]), f"{E}: endpoints[0].conditions.terminating: expected true or false"),
        (eslice([], ports=[{"port": 0}]), f"{E}: ports[0].port: 0 out of range (1-65535)"),
        (eslice([], ports=[{"port": 80, "protocol": "HTTP"}]), f"{E}: ports[0].protocol: unsupported value 'HTTP' (one of TCP, UDP, SCTP)"),
    ],
)  # fmt: skip
def test_endpoint_slice_errors(raw: dict, message: str) -> None:
    assert error_of(raw) == message


# -- v1 Endpoints mirroring ---------------------------------------------------------


def test_endpoints_mirrored_per_subset_and_family() -> None:
    raw = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "legacy", "namespace": "ns1", "resourceVersion": "5"},
        "subsets": [
            {
                "addresses": [
                    {"ip": "10.2.0.1", "hostname": "a", "nodeName": "n1"},
                    {"ip": "FD00::0:2", "targetRef": {"kind": "Pod", "name": "p2"}},
                ],
                "notReadyAddresses": [{"ip": "10.2.0.3"}],
                "ports": [{"name": "http", "port": 8080}],
            },
            {
                "notReadyAddresses": [{"ip": "10.2.0.9"}],
                "ports": [{"port": 9090, "protocol": "UDP"}],
            },
        ],
    }
    ep = parse_object(raw)
    assert isinstance(ep, Endpoints)
    assert ep.key == ObjectKey("Endpoints", "ns1", "legacy")
    names = [s.key.name for s in ep.slices]
    assert names == ["legacy-mirror-0-ipv4", "legacy-mirror-0-ipv6", "legacy-mirror-1-ipv4"]
    v4, v6, second = ep.slices
    assert all(s.service_name == "legacy" and s.key.namespace == "ns1" for s in ep.slices)
    assert v4.address_type == "IPv4" and v6.address_type == "IPv6"
    assert v4.endpoints == (
        Endpoint(("10.2.0.1",), True, True, False, hostname="a", node_name="n1"),
        Endpoint(("10.2.0.3",), False, False, False),
    )
    assert v6.endpoints == (Endpoint(("fd00::2",), True, True, False),)
    assert v4.ports == v6.ports == (EndpointPort("http", "TCP", 8080, ""),)
    assert second.endpoints == (Endpoint(("10.2.0.9",), False, False, False),)
    assert second.ports == (EndpointPort("", "UDP", 9090, ""),)
    assert second.meta.labels == {"kubernetes.io/service-name": "legacy"}


def test_endpoints_empty_and_errors() -> None:
    raw: dict[str, Any] = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "x"}}
    ep = parse_object(raw)
    assert isinstance(ep, Endpoints)
    assert ep.slices == ()
    raw["subsets"] = [{"addresses": [{"ip": "10.0.0.1"}]}, {"addresses": [{"ip": "bad"}]}]
    assert (
        error_of(raw)
        == "Endpoints default/x: subsets[1].addresses[0].ip: 'bad' is not a valid IP address"
    )
    raw["subsets"] = [{"notReadyAddresses": [{}]}]
    assert (
        error_of(raw)
        == "Endpoints default/x: subsets[0].notReadyAddresses[0].ip: expected a string"
    )


# -- Ingress and IngressClass ------------------------------------------------------------


def test_ingress_full() -> None:
    raw = ingress(
        {
            "ingressClassName": "netplane",
            "defaultBackend": backend("fallback", {"name": "http"}),
            "rules": [
                {
                    "host": "www.example.com",
                    "http": {
                        "paths": [
                            path("/api", "Prefix", backend("api", {"number": 8080})),
                            path("/exact", "Exact"),
                            {"pathType": "ImplementationSpecific", "backend": backend()},
                        ]
                    },
                },
                {"host": "*.example.org", "http": {"paths": [path("/")]}},
                {"host": "bare.example.net"},
                {
                    "http": {
                        "paths": [
                            path(
                                "/static",
                                be={
                                    "resource": {
                                        "apiGroup": "k8s.example.com",
                                        "kind": "Bucket",
                                        "name": "static",
                                    }
                                },
                            )
                        ]
                    }
                },
            ],
            "tls": [{"hosts": ["www.example.com", "*.example.org"], "secretName": "site-tls"}, {}],
        }
    )
    raw["status"] = {"loadBalancer": {"ingress": [{"ip": "198.18.0.1"}, {"hostname": "lb.x"}]}}
    ing = parse_object(raw)
    assert isinstance(ing, Ingress)
    assert ing.class_name == "netplane"
    assert ing.default_backend == IngressBackend("fallback", None, "http")
    web80 = IngressBackend("web", 80, "")
    assert ing.rules[0] == IngressRule(
        "www.example.com",
        (
            IngressPath("/api", "Prefix", IngressBackend("api", 8080, "")),
            IngressPath("/exact", "Exact", web80),
            IngressPath("/", "ImplementationSpecific", web80),
        ),
    )
    assert ing.rules[1] == IngressRule("*.example.org", (IngressPath("/", "Prefix", web80),))
    assert ing.rules[2] == IngressRule("bare.example.net", ())
    res = ing.rules[3].paths[0].backend.resource
    assert res is not None
    assert (res.api_group, res.kind, res.name) == ("k8s.example.com", "Bucket", "static")
    assert ing.rules[3].host == ""
    assert ing.tls == (
        IngressTLS(("www.example.com", "*.example.org"), "site-tls"),
        IngressTLS((), ""),
    )
    assert ing.status_ips == ("198.18.0.1",)
    assert ing.status_hostnames == ("lb.x",)


def test_ingress_legacy_class_annotation() -> None:
    raw = ingress({"defaultBackend": backend()}, annotations={"kubernetes.io/ingress.class": "old"})
    ing = parse_object(raw)
    assert isinstance(ing, Ingress)
    assert ing.class_name == "old"
    raw["spec"]["ingressClassName"] = "new"
    ing = parse_object(raw)
    assert isinstance(ing, Ingress)
    assert ing.class_name == "new"
    ing = parse_object(ingress({"defaultBackend": backend()}))
    assert isinstance(ing, Ingress)
    assert ing.class_name == ""


ING = "Ingress default/site: spec"


def rules(*paths: dict, host: str | None = None) -> dict:
    rule: dict[str, Any] = {"http": {"paths": list(paths)}}
    if host is not None:
        rule["host"] = host
    return {"rules": [rule]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, f"{ING}: either defaultBackend or rules must be specified"),
        ({"rules": []}, f"{ING}: either defaultBackend or rules must be specified"),
        ({"defaultBackend": {}}, f"{ING}.defaultBackend: exactly one of service and resource is required"),
        ({"defaultBackend": {**backend(), "resource": {"kind": "B", "name": "b"}}}, f"{ING}.defaultBackend: exactly one of service and resource is required"),
        ({"defaultBackend": {"service": {"port": {"number": 80}}}}, f"{ING}.defaultBackend.service.name: required"),
        ({"defaultBackend": {"service": {"name": "web"}}}, f"{ING}.defaultBackend.service.port: required"),
        ({"defaultBackend": backend(port={})}, f"{ING}.defaultBackend.service.port: exactly one of name and number is required"),
        ({"defaultBackend": backend(port={"name": "http", "number": 80})}, f"{ING}.defaultBackend.service.port: exactly one of name and number is required"),
        ({"defaultBackend": backend(port={"number": 0})}, f"{ING}.defaultBackend.service.port.number: 0 out of range (1-65535)"),
        ({"defaultBackend": backend(port={"number": 65536})}, f"{ING}.defaultBackend.service.port.number: 65536 out of range (1-65535)"),
        ({"defaultBackend": backend(port={"number": "80"})}, f"{ING}.defaultBackend.service.port.number: expected an integer, got a string"),
        ({"defaultBackend": {"resource": {"name": "b"}}}, f"{ING}.defaultBackend.resource.kind: required"),
        ({"defaultBackend": {"resource": {"kind": "B"}}}, f"{ING}.defaultBackend.resource.name: required"),
        ({"rules": [{"http": {"paths": []}}]}, f"{ING}.rules[0].http.paths: at least one path is required"),
        ({"rules": [{"http": {}}]}, f"{ING}.rules[0].http.paths: at least one path is required"),
        (rules({"path": "/", "backend": backend()}), f"{ING}.rules[0].http.paths[0].pathType: required"),
        (rules(path("/", "Regex")), f"{ING}.rules[0].http.paths[0].pathType: unsupported value 'Regex' (one of Exact, Prefix, ImplementationSpecific)"),
        (rules(path("/"), path("api", "Prefix")), f"{ING}.rules[0].http.paths[1].path: 'api' must begin with '/' for pathType Prefix"),
        (rules(path("", "Exact")), f"{ING}.rules[0].http.paths[0].path: '' must begin with '/' for pathType Exact"),
        (rules(path("api", "ImplementationSpecific")), f"{ING}.rules[0].http.paths[0].path: 'api' must begin with '/' for pathType ImplementationSpecific"),
        (rules({"path": "/", "pathType": "Prefix"}), f"{ING}.rules[0].http.paths[0].backend: required"),
        (rules(path("/", be={"service": {"name": "web", "port": {"number": 99999}}})), f"{ING}.rules[0].http.paths[0].backend.service.port.number: 99999 out of range (1-65535)"),
        (rules(path("/"), host="10.0.0.1"), f"{ING}.rules[0].host: '10.0.0.1' must be a DNS name, not an IP address"),
        (rules(path("/"), host="fd00::1"), f"{ING}.rules[0].host: 'fd00::1' must be a DNS name, not an IP address"),
        (rules(path("/"), host="foo.*.com"), f"{ING}.rules[0].host: 'foo.*.com' is not a valid host (DNS-1123 subdomain, optional leading '*.')"),
        (rules(path("/"), host="*"), f"{ING}.rules[0].host: '*' is not a valid host (DNS-1123 subdomain, optional leading '*.')"),
        (rules(path("/"), host="WWW.example.com"), f"{ING}.rules[0].host: 'WWW.example.com' is not a valid host (DNS-1123 subdomain, optional leading '*.')"),
        (rules(path("/"), host="a_b.example"), f"{ING}.rules[0].host: 'a_b.example' is not a valid host (DNS-1123 subdomain, optional leading '*.')"),
        ({"defaultBackend": backend(), "tls": [{"hosts": ["ok.example", "bad host"]}]}, f"{ING}.tls[0].hosts[1]: 'bad host' is not a valid host (DNS-1123 subdomain, optional leading '*.')"),
        ({"defaultBackend": backend(), "tls": [{"hosts": ["1.2.3.4"]}]}, f"{ING}.tls[0].hosts[0]: '1.2.3.4' must be a DNS name, not an IP address"),
        ({"defaultBackend": backend(), "tls": [{"hosts": [5]}]}, f"{ING}.tls[0].hosts[0]: expected a string, got int"),
        ({"defaultBackend": backend(), "tls": [{"secretName": 5}]}, f"{ING}.tls[0].secretName: expected a string, got int"),
        ({"defaultBackend": backend(), "ingressClassName": 1}, f"{ING}.ingressClassName: expected a string, got int"),
    ],
)  # fmt: skip
def test_ingress_errors(spec: dict, message: str) -> None:
    assert error_of(ingress(spec)) == message


def ingress_class(annotations: dict | None = None, **spec: Any) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": "netplane", "annotations": annotations or {}},
        "spec": {"controller": "netplane.io/ingress", **spec},
    }


@pytest.mark.parametrize(
    ("annotations", "is_default"),
    [
        (None, False),
        ({"ingressclass.kubernetes.io/is-default-class": "true"}, True),
        ({"ingressclass.kubernetes.io/is-default-class": "false"}, False),
        ({"ingressclass.kubernetes.io/is-default-class": "True"}, False),
    ],
)
def test_ingress_class_default(annotations: dict | None, is_default: bool) -> None:
    ic = parse_object(ingress_class(annotations))
    assert isinstance(ic, IngressClass)
    assert ic.key == ObjectKey("IngressClass", "", "netplane")
    assert ic.controller == "netplane.io/ingress"
    assert ic.is_default is is_default
    assert ic.parameters is None


def test_ingress_class_parameters_and_errors() -> None:
    raw = ingress_class(
        parameters={"kind": "Cfg", "name": "c", "scope": "Namespace", "namespace": "x"}
    )
    ic = parse_object(raw)
    assert isinstance(ic, IngressClass)
    assert ic.parameters is not None
    assert (ic.parameters.kind, ic.parameters.scope, ic.parameters.namespace) == (
        "Cfg",
        "Namespace",
        "x",
    )
    raw["spec"]["parameters"]["scope"] = "Global"
    assert (
        error_of(raw)
        == "IngressClass netplane: spec.parameters.scope: unsupported value 'Global' (one of Cluster, Namespace)"
    )
    raw = ingress_class()
    del raw["spec"]["controller"]
    assert error_of(raw) == "IngressClass netplane: spec.controller: required"
    # Cluster-scoped: a namespace in the manifest is ignored.
    raw = ingress_class()
    raw["metadata"]["namespace"] = "default"
    ic = parse_object(raw)
    assert isinstance(ic, IngressClass)
    assert ic.key.namespace == ""


# -- Secret ------------------------------------------------------------------------

CERT = b"-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"
KEY_B64 = base64.b64encode(KEY).decode()


def secret(data: dict | None = None, type_: str = "kubernetes.io/tls", **extra: Any) -> dict:
    raw: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "site-tls", "namespace": "default"},
        "type": type_,
        "data": {"tls.crt": base64.b64encode(CERT).decode(), "tls.key": KEY_B64}
        if data is None
        else data,
    }
    raw.update(extra)
    return raw


def test_tls_secret_decoded() -> None:
    s = parse_object(secret())
    assert isinstance(s, Secret)
    assert s.key == ObjectKey("Secret", "default", "site-tls")
    assert s.cert_pem == CERT
    assert s.key_pem.reveal() == KEY


def test_tls_secret_string_data() -> None:
    s = parse_object(secret({}, stringData={"tls.crt": CERT.decode(), "tls.key": KEY.decode()}))
    assert isinstance(s, Secret)
    assert s.cert_pem == CERT
    assert s.key_pem.reveal() == KEY


@pytest.mark.parametrize("type_", ["Opaque", "kubernetes.io/service-account-token", None])
def test_non_tls_secret_is_ignored(type_: str | None) -> None:
    raw = secret({"password": "aGVsbG8="})
    if type_ is None:
        del raw["type"]
    else:
        raw["type"] = type_
    assert parse_object(raw) is None


def _secret_texts(s: Secret) -> list[str]:
    return [repr(s), str(s), repr(s.key_pem), str(s.key_pem), f"{s}", f"{s!r}", repr(s.meta)]


def test_private_key_never_printed() -> None:
    raw = secret()
    # kubectl apply stores the whole manifest, key included, in an annotation.
    raw["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": f'{{"data":{{"tls.key":"{KEY_B64}"}}}}',
        "note": "kept",
    }
    s = parse_object(raw)
    assert isinstance(s, Secret)
    assert s.meta.annotations == {"note": "kept"}
    for text in _secret_texts(s):
        assert "TOPSECRET" not in text
        assert KEY_B64[:20] not in text
        assert "PRIVATE KEY" not in text


@pytest.mark.parametrize(
    ("key_value", "message"),
    [
        (
            "TOPSECRET!!not*base64",
            "Secret default/site-tls: data[tls.key]: not valid base64",
        ),
        (
            KEY_B64[:-3],
            "Secret default/site-tls: data[tls.key]: not valid base64",
        ),
        (
            "TOPSECRET\u00e9",
            "Secret default/site-tls: data[tls.key]: not valid base64",
        ),
        (
            base64.b64encode(b"TOPSECRET not pem").decode(),
            "Secret default/site-tls: data[tls.key]: not a PEM private key",
        ),
        ("", "Secret default/site-tls: data[tls.key]: required for a kubernetes.io/tls Secret"),
        (5, "Secret default/site-tls: data.tls.key: expected a string, got int"),
    ],
)
def test_secret_errors_never_echo_key(key_value: Any, message: str) -> None:
    raw = secret({"tls.crt": base64.b64encode(CERT).decode(), "tls.key": key_value})
    with pytest.raises(ModelError) as exc:
        parse_object(raw)
    err = exc.value
    assert str(err) == message
    texts = [str(err), repr(err), err.describe(), err.reason, err.field]
    # Neither the error nor what it was raised from may show the value.
    cause = err.__cause__ or err.__context__
    if cause is not None:
        texts += [str(cause), repr(cause)]
    for text in texts:
        assert "TOPSECRET" not in text
        if isinstance(key_value, str) and len(key_value) > 8:
            assert key_value not in text


def test_secret_missing_cert() -> None:
    raw = secret({"tls.key": KEY_B64})
    assert (
        error_of(raw)
        == "Secret default/site-tls: data[tls.crt]: required for a kubernetes.io/tls Secret"
    )
    raw = secret({"tls.crt": base64.b64encode(b"hello").decode(), "tls.key": KEY_B64})
    assert error_of(raw) == "Secret default/site-tls: data[tls.crt]: not a PEM certificate"


# -- Node and Pod -----------------------------------------------------------------


def test_node() -> None:
    raw = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "z1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.10"}]},
    }
    node = parse_object(raw)
    assert isinstance(node, Node)
    assert node.key == ObjectKey("Node", "", "node-1")
    assert node.addresses == (NodeAddress("InternalIP", "198.18.0.10"),)
    assert node.zone == "z1"


def pod(status: dict | None = None, spec: dict | None = None, **meta: Any) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default", **meta},
        "spec": spec
        if spec is not None
        else {
            "nodeName": "node-1",
            "hostname": "web-1",
            "subdomain": "web",
            "containers": [
                {"name": "a", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "b", "ports": [{"containerPort": 53, "protocol": "UDP"}]},
            ],
        },
        "status": status
        if status is not None
        else {
            "phase": "Running",
            "podIP": "10.1.0.5",
            "podIPs": [{"ip": "10.1.0.5"}, {"ip": "FD00::5"}],
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
        },
    }


def test_pod() -> None:
    p = parse_object(pod(labels={"app": "web"}))
    assert isinstance(p, Pod)
    assert p.key == ObjectKey("Pod", "default", "web-1")
    assert p.pod_ips == ("10.1.0.5", "fd00::5")
    assert p.ready
    assert p.phase == "Running"
    assert (p.node_name, p.hostname, p.subdomain) == ("node-1", "web-1", "web")
    assert p.container_ports == (("http", 8080, "TCP"), ("", 53, "UDP"))
    assert not p.terminating
    assert p.meta.labels == {"app": "web"}


@pytest.mark.parametrize(
    ("status", "ips", "ready"),
    [
        ({"podIP": "10.1.0.6"}, ("10.1.0.6",), False),
        ({}, (), False),
        (
            {"podIP": "10.1.0.6", "conditions": [{"type": "Ready", "status": "False"}]},
            ("10.1.0.6",),
            False,
        ),
        ({"conditions": [{"type": "ContainersReady", "status": "True"}]}, (), False),
    ],
)
def test_pod_ips_and_ready(status: dict, ips: tuple, ready: bool) -> None:
    p = parse_object(pod(status=status))
    assert isinstance(p, Pod)
    assert (p.pod_ips, p.ready) == (ips, ready)


def test_pod_terminating() -> None:
    p = parse_object(pod(deletionTimestamp="2024-01-01T00:00:00Z"))
    assert isinstance(p, Pod)
    assert p.terminating


@pytest.mark.parametrize(
    ("status", "spec", "message"),
    [
        ({"podIPs": [{"ip": "10.0.0.1"}, {"ip": "nope"}]}, None, "Pod default/web-1: status.podIPs[1]: 'nope' is not a valid IP address"),
        ({"podIP": "nope"}, None, "Pod default/web-1: status.podIP: 'nope' is not a valid IP address"),
        ({"podIPs": [{}]}, None, "Pod default/web-1: status.podIPs[0].ip: required"),
        (None, {"containers": [{"ports": [{"name": "x"}]}]}, "Pod default/web-1: spec.containers[0].ports[0].containerPort: required"),
        (None, {"containers": [{}, {"ports": [{"containerPort": 0}]}]}, "Pod default/web-1: spec.containers[1].ports[0].containerPort: 0 out of range (1-65535)"),
        (None, {"containers": [{"ports": [{"containerPort": 70000}]}]}, "Pod default/web-1: spec.containers[0].ports[0].containerPort: 70000 out of range (1-65535)"),
    ],
)  # fmt: skip
def test_pod_errors(status: dict | None, spec: dict | None, message: str) -> None:
    assert error_of(pod(status=status, spec=spec)) == message


def test_parse_does_not_modify_input() -> None:
    for raw in (service(), eslice([{"addresses": ["10.0.0.1"]}]), secret(), pod()):
        before = copy.deepcopy(raw)
        parse_object(raw)
        assert raw == before


# -- memory: nothing kept from the decoded document --------------------------


def _held(value: Any, out: dict[int, Any]) -> None:
    """Every str and int reachable from a model value (dataclass fields, tuples, dicts)."""
    if isinstance(value, (str, int)):
        out[id(value)] = value
    elif isinstance(value, (tuple, list)):
        for v in value:
            _held(v, out)
    elif isinstance(value, dict):
        for k, v in value.items():
            _held(k, out)
            _held(v, out)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            _held(getattr(value, name), out)


def _raw_values(value: Any, out: dict[int, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            out[id(k)] = k
            _raw_values(v, out)
    elif isinstance(value, list):
        for v in value:
            _raw_values(v, out)
    elif isinstance(value, (str, int)):
        out[id(value)] = value


@pytest.mark.parametrize("kind", ["Service", "EndpointSlice", "Endpoints"])
def test_parsed_objects_keep_nothing_the_decoder_allocated(kind: str) -> None:
    # A string or large int kept from the decoded document pins the memory the
    # decoder used for the whole document; the parsers keep copies instead.
    docs = {
        "Service": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {
                "clusterIP": "10.96.0.10",
                "selector": {"app": "web"},
                "ports": [
                    {"name": "http", "port": 8080, "targetPort": "web-port"},
                    {"name": "alt", "port": 8443, "targetPort": 9443},
                ],
            },
        },
        "EndpointSlice": {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-1",
                "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": ["10.1.2.3"],
                    "hostname": "web-0",
                    "nodeName": "node-a",
                    "zone": "zone-a",
                    "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0"},
                },
                {"addresses": ["10.1.2.4"], "conditions": {"ready": False}, "hints": None},
                {"addresses": ["fd00::1"], "nodeName": "node-b"},
            ],
        },
        "Endpoints": {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "legacy", "namespace": "shop"},
            "subsets": [
                {
                    "addresses": [{"ip": "10.2.0.1", "hostname": "a", "nodeName": "node-a"}],
                    "ports": [{"name": "http", "port": 8080}],
                }
            ],
        },
    }
    # Through the JSON decoder, so that every string is the decoder's own.
    raw = json.loads(json.dumps(docs[kind]))
    if kind == "EndpointSlice":
        raw["endpoints"].pop()  # an IPv6 address in an IPv4 slice is an error
    obj = parse_object(raw)
    held: dict[int, Any] = {}
    _held(obj, held)
    decoded: dict[int, Any] = {}
    _raw_values(raw, decoded)

    # Cached by CPython itself (one character, small ints): shared by everyone.
    def cached(v: Any) -> bool:
        return len(v) <= 1 if isinstance(v, str) else -5 <= v <= 256

    kept = [v for i, v in decoded.items() if i in held and not cached(v)]
    assert kept == []
