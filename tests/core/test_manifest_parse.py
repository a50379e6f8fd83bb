"""parse_manifest: objects with their lines, and problems as one-line `path:line:` messages."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from netplane.model import Endpoints, EndpointSlice, ObjectKey, Pod, Secret, Service
from netplane.sources.manifest_parse import (
    ManifestObject,
    field_line,
    parse_manifest,
    resolve_duplicates,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "manifests" / "clean"


def lines(result) -> list[str]:
    return [str(p) for p in result.problems]


def keys(result) -> list[tuple[str, int]]:
    return [(str(mo.key), mo.line) for mo in result.objects]


def svc(name: str = "web", ports: str = "    - port: 80\n") -> str:
    return f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n{ports}"


# -- good input ------------------------------------------------------------------


def test_multi_document_file_gives_each_object_its_document_line():
    result = parse_manifest((DATA / "services.yaml").read_text(), "services.yaml")
    assert lines(result) == []
    assert result.complete
    assert keys(result) == [("Service shop/web", 2), ("EndpointSlice shop/web-abc12", 16)]
    web, slice_ = (mo.obj for mo in result.objects)
    assert isinstance(web, Service)
    assert web.cluster_ips == ("10.96.0.10",)
    assert isinstance(slice_, EndpointSlice)
    assert [e.ready for e in slice_.endpoints] == [True, False]
    assert all(mo.path == "services.yaml" for mo in result.objects)


def test_kind_list_expands_items_at_their_own_lines_and_skips_unused_kinds():
    result = parse_manifest((DATA / "apps" / "list.yaml").read_bytes(), "list.yaml")
    assert lines(result) == []
    # The ConfigMap at line 23 is skipped silently.
    assert keys(result) == [("Service default/legacy", 4), ("Endpoints default/legacy", 12)]
    assert [mo.item_index for mo in result.objects] == [0, 1]


def test_v1_endpoints_are_mirrored_into_slices_with_their_addresses():
    result = parse_manifest((DATA / "apps" / "list.yaml").read_text(), "list.yaml")
    ep = result.objects[1].obj
    assert isinstance(ep, Endpoints)
    assert [s.address_type for s in ep.slices] == ["IPv4"]
    (mirror,) = ep.slices
    assert mirror.service_name == "legacy"
    assert [(e.addresses, e.ready) for e in mirror.endpoints] == [
        (("192.0.2.7",), True),
        (("192.0.2.8",), False),
    ]
    assert [p.port for p in mirror.ports] == [5432]


def test_json_file():
    result = parse_manifest((DATA / "apps" / "api.json").read_text(), "api.json")
    assert lines(result) == []
    assert keys(result) == [("Service shop/api", 1)]
    api = result.objects[0].obj
    assert isinstance(api, Service)
    assert api.type == "NodePort"
    assert api.ports[0].node_port == 30080


def test_json_is_recognised_by_content_too():
    raw = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {}}
    result = parse_manifest(json.dumps(raw, indent=2), "svc.yaml")
    assert lines(result) == [
        "svc.yaml:7: Service default/a: spec.ports: required (only headless and ExternalName services may have none)"
    ]


def test_json_list_items_have_their_own_lines():
    doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": n},
                "spec": {"ports": [{"port": 80}]},
            }
            for n in ("a", "b")
        ],
    }
    text = json.dumps(doc, indent=1)
    result = parse_manifest(text, "l.json")
    assert lines(result) == []
    text_lines = text.splitlines()
    for mo in result.objects:
        # The item starts at its opening brace, the line before its "apiVersion".
        assert text_lines[mo.line - 1].strip() == "{"
        assert '"apiVersion"' in text_lines[mo.line]
    assert [str(mo.key) for mo in result.objects] == ["Service default/a", "Service default/b"]


def test_api_style_list_items_take_their_kind_from_the_list():
    text = """apiVersion: v1
kind: ServiceList
items:
  - metadata: {name: a, namespace: x}
    spec: {ports: [{port: 53, protocol: UDP}]}
"""
    result = parse_manifest(text, "l.yaml")
    assert lines(result) == []
    assert keys(result) == [("Service x/a", 4)]


def test_pods_and_tls_secrets_are_parsed_other_secrets_and_kinds_skipped():
    pods = parse_manifest((DATA / "apps" / "pods.yml").read_text(), "pods.yml")
    assert lines(pods) == []
    (pod,) = (mo.obj for mo in pods.objects)
    assert isinstance(pod, Pod)
    assert pod.pod_ips == ("10.0.0.1",)
    assert pod.ready
    # YAML timestamps stay strings, as kubectl reads them.
    assert pod.meta.creation_timestamp == "2024-05-01T10:00:00Z"

    ing = parse_manifest((DATA / "apps" / "ingress.yaml").read_text(), "ingress.yaml")
    assert lines(ing) == []
    assert [k for k, _ in keys(ing)] == [
        "IngressClass netplane",
        "Ingress shop/shop",
        "Secret shop/shop-tls",
    ]
    secret = ing.objects[2].obj
    assert isinstance(secret, Secret)
    assert secret.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")


def test_empty_documents_and_comments_are_fine():
    text = "# nothing here\n---\n---\n" + svc() + "---\n# trailing\n"
    result = parse_manifest(text, "a.yaml")
    assert lines(result) == []
    assert keys(result) == [("Service default/web", 4)]


# -- problems, with the line of the field ---------------------------------------


def test_bad_port_points_at_the_port_line():
    text = svc(ports="    - name: http\n      port: 80\n    - name: admin\n      port: 70000\n")
    result = parse_manifest(text, "web.yaml")
    assert lines(result) == [
        "web.yaml:10: Service default/web: spec.ports[1].port: 70000 out of range (1-65535)"
    ]
    assert result.objects == []
    assert result.problems[0].key == ObjectKey("Service", "default", "web")


def test_missing_name_points_at_metadata():
    text = "apiVersion: v1\nkind: Service\nmetadata:\n  labels: {app: web}\nspec:\n  ports: [{port: 80}]\n"
    result = parse_manifest(text, "x.yaml")
    assert lines(result) == ["x.yaml:3: Service: metadata.name: required"]
    assert result.problems[0].key is None


def test_missing_field_falls_back_to_the_nearest_parent_then_the_document():
    no_spec = "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n"
    assert lines(parse_manifest(no_spec, "a.yaml")) == [
        "a.yaml:2: Service default/web: spec.ports: required (only headless and ExternalName services may have none)"
    ]


def test_endpoint_address_error_points_at_the_address():
    text = """apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
  - addresses: [10.0.0.1]
  - addresses: [10.0.0.2]
  - addresses: [10.0.0.3]
  - addresses:
      - 2001:db8::1
"""
    assert lines(parse_manifest(text, "s.yaml")) == [
        "s.yaml:10: EndpointSlice default/s: endpoints[3].addresses[0]: '2001:db8::1' is not an IPv4 address"
    ]


def test_secret_data_key_with_a_dot_points_at_that_key():
    text = """apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata:
  name: tls
data:
  tls.key: LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t
  tls.crt: "not base64!"
"""
    assert lines(parse_manifest(text, "s.yaml")) == [
        "s.yaml:8: Secret default/tls: data[tls.crt]: not valid base64"
    ]


def test_label_key_with_dots_points_at_the_label():
    text = """apiVersion: v1
kind: Service
metadata:
  name: web
  labels:
    app: web
    app.kubernetes.io/version: 2
spec: {ports: [{port: 80}]}
"""
    assert lines(parse_manifest(text, "s.yaml")) == [
        "s.yaml:7: Service default/web: metadata.labels.app.kubernetes.io/version: expected a string, got int"
    ]


def test_list_item_error_points_into_the_item():
    text = """apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: ok}
    spec: {ports: [{port: 80}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: bad}
    spec:
      type: Bogus
      ports: [{port: 80}]
  - just a string
"""
    result = parse_manifest(text, "l.yaml")
    assert lines(result) == [
        "l.yaml:12: Service default/bad: spec.type: unsupported value 'Bogus' (one of ClusterIP, NodePort, LoadBalancer, ExternalName)",
        "l.yaml:14: List: items[2]: expected an object, got a string",
    ]
    assert keys(result) == [("Service default/ok", 4)]


def test_yaml_syntax_error_gives_path_line_column():
    text = svc() + "  type: ClusterIP: bad\n"
    result = parse_manifest(text, "broken.yaml")
    assert not result.complete
    assert result.objects == []
    # libyaml says "in this context", PyYAML's pure-Python scanner "here".
    (line,) = lines(result)
    assert line.startswith("broken.yaml:8:18: mapping values are not allowed ")


def test_syntax_error_in_a_later_document_keeps_the_earlier_ones_but_marks_incomplete():
    text = svc("a") + "---\n" + svc("b") + "  - : : :\n  bad: [\n"
    result = parse_manifest(text, "m.yaml")
    assert not result.complete
    assert keys(result) == [("Service default/a", 1)]
    assert result.problems[0].line > 8


def test_json_syntax_error():
    result = parse_manifest('{\n  "kind": "Service",\n  "metadata": {,}\n}\n', "bad.json")
    assert not result.complete
    assert lines(result) == ["bad.json:3:16: Expecting property name enclosed in double quotes"]


def test_invalid_utf8():
    result = parse_manifest(b"kind: Service\nmetadata:\n  name: \xff\n", "u.yaml")
    assert not result.complete
    assert lines(result) == ["u.yaml:3:9: not valid UTF-8 (invalid start byte)"]


def test_document_that_is_not_a_mapping_and_document_without_kind():
    text = "- a\n- b\n---\nplain words\n---\napiVersion: v1\nmetadata: {name: x}\n"
    assert lines(parse_manifest(text, "n.yaml")) == [
        "n.yaml:1: expected an object, got a list",
        "n.yaml:4: expected an object, got a string",
        "n.yaml:6: object default/x: kind: required",
    ]


def test_wrong_api_version_is_a_problem_at_that_line():
    text = "kind: Ingress\napiVersion: extensions/v1beta1\nmetadata: {name: i}\n"
    assert lines(parse_manifest(text, "i.yaml")) == [
        "i.yaml:2: Ingress default/i: apiVersion: 'extensions/v1beta1' is not supported for Ingress (use networking.k8s.io/v1)"
    ]


def test_duplicate_in_the_same_file_is_a_problem_on_the_second():
    text = svc() + "---\n" + svc()
    result = parse_manifest(text, "d.yaml")
    assert lines(result) == [
        "d.yaml:9: Service default/web: duplicate object (first defined at line 1)"
    ]
    assert keys(result) == [("Service default/web", 1)]


def test_field_line_finds_a_field_after_parsing():
    text = (
        "---\n" + svc("a") + "---\n" + svc("b").replace("spec:\n", "spec:\n  clusterIP: 10.0.0.1\n")
    )
    result = parse_manifest(text, "f.yaml")
    b = result.objects[1]
    assert field_line(text, "f.yaml", b, "spec.clusterIP") == 15
    assert field_line(text, "f.yaml", b, "spec.clusterIPs[0]") == 14  # nearest parent: spec
    assert field_line(text, "f.yaml", b, "") == b.line == 10


def test_resolve_duplicates_first_file_wins():
    a = parse_manifest(svc(), "a.yaml").objects
    b = parse_manifest("# x\n" + svc(), "b.yaml").objects
    winners, problems = resolve_duplicates([("a.yaml", a), ("b.yaml", b)])
    assert [mo.path for mo in winners.values()] == ["a.yaml"]
    assert [str(p) for p in problems] == [
        "b.yaml:2: Service default/web: also defined at a.yaml:1, which is used"
    ]


# -- robustness and speed ----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}\"'\n #&*!|>,.0123")), max_size=80))
def test_arbitrary_text_never_raises_and_problems_are_one_line(text):
    result = parse_manifest("kind: Service\n" + text, "h.yaml")
    for problem in result.problems:
        rendered = str(problem)
        assert "\n" not in rendered
        assert rendered.startswith("h.yaml:")
    assert all(isinstance(mo, ManifestObject) for mo in result.objects)


def test_thousands_of_objects_parse_quickly():
    docs = []
    for i in range(2000):
        docs.append(svc(f"svc-{i}"))
        docs.append(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: svc-{i}-x, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n"
            "addressType: IPv4\nendpoints:\n"
            + "".join(f"  - addresses: [10.{i // 250}.{i % 250}.{j}]\n" for j in range(1, 4))
        )
    text = "---\n".join(docs)
    start = time.perf_counter()
    result = parse_manifest(text, "big.yaml")
    elapsed = time.perf_counter() - start
    assert lines(result) == []
    assert len(result.objects) == 4000
    assert elapsed < 5.0, elapsed


def test_duplicate_key_is_an_error_as_in_kubectl_but_merge_keys_are_fine():
    text = svc() + "  ports:\n    - port: 81\n"
    result = parse_manifest(text, "k.yaml")
    assert not result.complete
    assert lines(result) == ["k.yaml:8:3: duplicate key 'ports' (first at line 6)"]

    merged = """apiVersion: v1
kind: List
items:
  - &svc
    apiVersion: v1
    kind: Service
    metadata: {name: a}
    spec: {ports: [{port: 80}]}
  - <<: *svc
    metadata: {name: b}
"""
    result = parse_manifest(merged, "m.yaml")
    assert lines(result) == []
    assert keys(result) == [("Service default/a", 4), ("Service default/b", 9)]
