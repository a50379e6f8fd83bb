"""check_paths: the lines `netplane check` prints, one per problem, with file and line."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from netplane.check import check_paths
from netplane.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data" / "manifests" / "clean"


def svc(name: str, extra: str = "", ports: str = "    - port: 80\n") -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{extra}  ports:\n{ports}"
    )


def test_clean_directory_has_no_problems():
    assert check_paths([str(DATA)]) == []
    assert check_paths([str(DATA)], service_cidrs=["10.96.0.0/12"]) == []


def test_clean_directory_with_a_cidr_allocates_missing_cluster_ips(tmp_path):
    (tmp_path / "a.yaml").write_text(svc("a") + "---\n" + svc("b", "  type: NodePort\n"))
    cidrs = [ipaddress.ip_network("10.96.0.0/16")]
    assert check_paths([str(tmp_path)], service_cidrs=cidrs) == []


def test_bad_port_line(tmp_path):
    path = tmp_path / "web.yaml"
    path.write_text(
        svc("web", ports="    - name: http\n      port: 80\n    - name: admin\n      port: 70000\n")
    )
    assert check_paths([str(path)]) == [
        f"{path}:10: Service default/web: spec.ports[1].port: 70000 out of range (1-65535)"
    ]


def test_missing_name(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  namespace: x\nspec: {}\n")
    assert check_paths([str(tmp_path)]) == [f"{path}:3: Service: metadata.name: required"]


def test_duplicate_cluster_ip_across_two_files(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(svc("one", "  clusterIP: 10.96.0.10\n"))
    b.write_text("# second\n" + svc("two", "  type: ClusterIP\n  clusterIP: 10.96.0.10\n"))
    assert check_paths([str(tmp_path)]) == [
        f"{b}:8: Service default/two: spec.clusterIP: 10.96.0.10 is already allocated to Service default/one"
    ]


def test_duplicate_node_port(tmp_path):
    path = tmp_path / "np.yaml"
    ports = "    - port: 80\n      nodePort: 30080\n"
    path.write_text(
        svc("a", "  type: NodePort\n", ports) + "---\n" + svc("b", "  type: NodePort\n", ports)
    )
    assert check_paths([str(path)]) == [
        f"{path}:19: Service default/b: spec.ports[0].nodePort: port 30080/TCP is already allocated to Service default/a"
    ]


def test_node_port_outside_the_range(tmp_path):
    path = tmp_path / "np.yaml"
    path.write_text(svc("a", "  type: NodePort\n", "    - port: 80\n      nodePort: 31000\n"))
    assert check_paths([str(path)], node_port_range=(30000, 30999)) == [
        f"{path}:9: Service default/a: spec.ports[0].nodePort: 31000 is outside the node port range 30000-30999"
    ]


def test_cluster_ip_outside_the_cidr(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(svc("s", "  clusterIP: 10.0.0.5\n"))
    assert check_paths([str(path)], service_cidrs=["10.96.0.0/12"]) == [
        f"{path}:6: Service default/s: spec.clusterIP: 10.0.0.5 is not in the service CIDR (10.96.0.0/12)"
    ]


def test_cluster_ip_line_in_a_json_list_item(tmp_path):
    path = tmp_path / "l.json"
    path.write_text(
        '{"apiVersion": "v1", "kind": "List", "items": [\n'
        ' {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},\n'
        '  "spec": {"ports": [{"port": 80}],\n'
        '           "clusterIP": "192.0.2.1"}}\n'
        "]}\n"
    )
    assert check_paths([str(path)], service_cidrs=["10.96.0.0/12"]) == [
        f"{path}:4: Service default/a: spec.clusterIP: 192.0.2.1 is not in the service CIDR (10.96.0.0/12)"
    ]


def test_non_existent_path(tmp_path):
    missing = tmp_path / "nope"
    assert check_paths([str(DATA), str(missing)]) == [f"{missing}: no such file or directory"]


def test_syntax_error_and_other_problems_in_file_order(tmp_path):
    shutil.copytree(DATA, tmp_path / "m")
    (tmp_path / "m" / "a-broken.yaml").write_text("kind: Service\nmetadata: {name: x\n")
    (tmp_path / "m" / "z-dup.yaml").write_text(
        svc("web").replace("name: web", "name: web\n  namespace: shop")
    )
    out = check_paths([str(tmp_path / "m")])
    assert len(out) == 2
    assert out[0].startswith(f"{tmp_path / 'm' / 'a-broken.yaml'}:3:1: ")
    assert out[1] == (
        f"{tmp_path / 'm' / 'z-dup.yaml'}:1: Service shop/web: also defined at "
        f"{tmp_path / 'm' / 'services.yaml'}:2, which is used"
    )


def test_objects_of_a_broken_file_are_not_loaded(tmp_path):
    """The daemon starts with nothing from a file it cannot read, and so does check."""
    (tmp_path / "a.yaml").write_text(svc("a", "  clusterIP: 10.96.0.10\n") + "---\n[\n")
    (tmp_path / "b.yaml").write_text(svc("b", "  clusterIP: 10.96.0.10\n"))
    out = check_paths([str(tmp_path)])
    assert len(out) == 1
    assert out[0].startswith(f"{tmp_path / 'a.yaml'}:")


def test_bad_cidr_is_a_config_error():
    with pytest.raises(ConfigError):
        check_paths([str(DATA)], service_cidrs=["10.96.0.1/12"])


def test_rejections_are_not_also_logged(tmp_path, caplog):
    (tmp_path / "s.yaml").write_text(svc("s", "  clusterIP: 10.0.0.5\n"))
    assert len(check_paths([str(tmp_path)], service_cidrs=["10.96.0.0/12"])) == 1
    assert caplog.records == []


# -- Gateway API: the conditions the status would carry ------------------------------

GATEWAY_MANIFESTS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: netplane
spec:
  controllerName: netplane.io/gateway-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: infra
spec:
  gatewayClassName: netplane
  listeners:
    - name: http
      port: 8080
      protocol: HTTP
      hostname: "*.shop.test"
      allowedRoutes:
        namespaces:
          from: All
"""


def http_route(name: str, hosts: str, parent: str = "gw", backend: str = "web") -> str:
    return (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
        f"metadata:\n  name: {name}\n  namespace: shop\n"
        f"spec:\n  parentRefs:\n    - name: {parent}\n      namespace: infra\n"
        f"  hostnames: [{hosts}]\n"
        f"  rules:\n    - backendRefs:\n        - name: {backend}\n          port: 80\n"
    )


def test_gateway_and_an_attached_route_are_clean(tmp_path):
    (tmp_path / "gw.yaml").write_text(GATEWAY_MANIFESTS)
    (tmp_path / "web.yaml").write_text(
        svc("web").replace("name: web", "name: web\n  namespace: shop")
        + "---\n"
        + http_route("web", "web.shop.test")
    )
    assert check_paths([str(tmp_path)]) == []


def test_a_route_that_attaches_to_nothing_is_a_problem(tmp_path):
    (tmp_path / "gw.yaml").write_text(GATEWAY_MANIFESTS)
    route = tmp_path / "route.yaml"
    route.write_text("# the route\n" + http_route("web", "web.other.test"))
    (tmp_path / "svc.yaml").write_text(
        svc("web").replace("name: web", "name: web\n  namespace: shop")
    )
    assert check_paths([str(tmp_path)]) == [
        f"{route}:9: HTTPRoute shop/web: not accepted by Gateway infra/gw: "
        "NoMatchingListenerHostname: no listener hostname intersects the route's hostnames"
    ]


def test_unresolved_refs_missing_parents_and_classes(tmp_path):
    gw = tmp_path / "gw.yaml"
    gw.write_text(
        GATEWAY_MANIFESTS
        + "---\n"
        + GATEWAY_MANIFESTS.split("---\n")[1]
        .replace("name: gw", "name: lost")
        .replace("gatewayClassName: netplane", "gatewayClassName: nope")
    )
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        http_route("api", "api.shop.test", backend="api")
        + "---\n"
        + http_route("orphan", "x.shop.test", parent="nowhere")
    )
    assert check_paths([str(tmp_path)]) == [
        f"{gw}:30: Gateway infra/lost: spec.gatewayClassName: GatewayClass nope does not exist",
        f"{routes}:1: HTTPRoute shop/api: refs not resolved (parent Gateway infra/gw): "
        "BackendNotFound: a backendRef names a Service or port that does not exist: shop/api",
        f"{routes}:23: HTTPRoute shop/orphan: spec.parentRefs[0]: Gateway infra/nowhere does not exist",
    ]


def test_listener_problems_name_the_listener_and_point_at_it(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(GATEWAY_MANIFESTS.replace("protocol: HTTP\n", "protocol: TCP\n"))
    listener = "TCP listeners are not supported; netplane serves HTTP and HTTPS"
    assert check_paths([str(path)]) == [
        f"{path}:8: Gateway infra/gw: not accepted: ListenersNotValid: "
        "some listeners are not served; see their conditions",
        f"{path}:8: Gateway infra/gw: not programmed: Invalid: no listener is served",
        f"{path}:16: Gateway infra/gw: listener http: not accepted: UnsupportedProtocol: {listener}",
        f"{path}:16: Gateway infra/gw: listener http: not programmed: Invalid: not served",
    ]


def test_gateway_problems_make_check_exit_1(tmp_path, capsys):
    from netplane.cli import main

    (tmp_path / "gw.yaml").write_text(GATEWAY_MANIFESTS)
    (tmp_path / "route.yaml").write_text(http_route("web", "web.other.test", backend="web"))
    assert main(["check", "-f", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "NoMatchingListenerHostname" in out.out
