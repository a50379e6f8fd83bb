"""`netplane check` says what the daemon would refuse or ignore in an Ingress setup, at its line.

The same problems the daemon logs and lists in /debug/state (tests/core/test_problems.py):
an Ingress naming an IngressClass that is not there, a backend naming a Service
or port that is not there, a TLS Secret that is missing or whose key does not
match its certificate. Each is one ``path:line:`` line, and check exits 1.
"""

from __future__ import annotations

import base64
from pathlib import Path

import trustme

from netplane.check import check_paths
from netplane.cli import main

CA = trustme.CA()
A = CA.issue_cert("a.example")
B = CA.issue_cert("b.example")

CLASS = """\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: netplane
spec:
  controller: netplane.io/ingress
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  ports:
    - name: http
      port: 80
"""


def ingress(name: str, cls: str = "netplane", service: str = "web", port: str = "name: http",
            tls: str = "") -> str:  # fmt: skip
    return (
        f"apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n"
        f"  namespace: shop\nspec:\n  ingressClassName: {cls}\n{tls}"
        "  rules:\n    - host: shop.example\n      http:\n        paths:\n"
        "          - path: /\n            pathType: Prefix\n            backend:\n"
        f"              service:\n                name: {service}\n"
        f"                port: {{{port}}}\n"
    )


def tls(secret: str) -> str:
    return f"  tls:\n    - hosts: [shop.example]\n      secretName: {secret}\n"


def secret(name: str, cert: trustme.LeafCert, key: trustme.LeafCert) -> str:
    def b64(pem: bytes) -> str:
        return base64.b64encode(pem).decode()

    return (
        f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: shop\n"
        "type: kubernetes.io/tls\ndata:\n"
        f"  tls.crt: {b64(cert.cert_chain_pems[0].bytes())}\n"
        f"  tls.key: {b64(key.private_key_pem.bytes())}\n"
    )


def line_of(text: str, needle: str, nth: int = 1) -> int:
    return [i for i, line in enumerate(text.splitlines(), 1) if needle in line][nth - 1]


def test_a_clean_ingress_setup_has_no_problems(tmp_path: Path, capsys) -> None:
    (tmp_path / "all.yaml").write_text(
        "---\n".join([CLASS, SERVICE, secret("tls", A, A), ingress("shop", tls=tls("tls"))])
    )
    assert check_paths([str(tmp_path)]) == []
    assert main(["check", "-f", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""


def test_every_ingress_problem_is_a_line_at_the_field(tmp_path: Path, capsys) -> None:
    docs = [
        CLASS,
        SERVICE,
        secret("mismatch", A, B),  # B's key with A's certificate
        ingress("lost", cls="nginx"),
        ingress("gone", service="api"),
        ingress("port", port="number: 8080"),
        ingress("nosecret", tls=tls("nothere")),
        ingress("badsecret", tls=tls("mismatch")),
    ]
    path = tmp_path / "all.yaml"
    text = "---\n".join(docs)
    path.write_text(text)
    at = f"{path}:"
    expected = [
        f"{at}{line_of(text, 'tls.key:')}: Secret shop/mismatch: tls.key does not match the"
        " first certificate in tls.crt; the default certificate serves shop.example"
        " (Ingress shop/badsecret)",
        f"{at}{line_of(text, 'ingressClassName: nginx')}: Ingress shop/lost:"
        " spec.ingressClassName: IngressClass nginx does not exist; no controller serves this"
        " Ingress",
        f"{at}{line_of(text, 'name: api')}: Ingress shop/gone:"
        " spec.rules[0].http.paths[0].backend.service.name: Service shop/api does not exist;"
        " host shop.example path / answers 503",
        f"{at}{line_of(text, 'number: 8080')}: Ingress shop/port:"
        " spec.rules[0].http.paths[0].backend.service.port: Service shop/web has no TCP port"
        " 8080; host shop.example path / answers 503",
        f"{at}{line_of(text, 'secretName: nothere')}: Ingress shop/nosecret:"
        " spec.tls[0].secretName: Secret shop/nothere does not exist (or is not of type"
        " kubernetes.io/tls); the default certificate serves shop.example",
    ]
    assert check_paths([str(tmp_path)]) == expected

    assert main(["check", "-f", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == expected
    assert out.err == "5 problem(s)\n"
    assert "PRIVATE KEY" not in out.out


def test_an_ingress_of_another_controller_is_not_a_problem(tmp_path: Path) -> None:
    other = CLASS.replace("name: netplane", "name: nginx").replace(
        "netplane.io/ingress", "k8s.io/ingress-nginx"
    )
    (tmp_path / "all.yaml").write_text(
        "---\n".join([CLASS, other, SERVICE, ingress("theirs", cls="nginx", service="elsewhere")])
    )
    assert check_paths([str(tmp_path)]) == []


def test_field_errors_and_cluster_wide_rejections_together_in_line_order(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    twin = SERVICE.replace("name: web", "name: twin")
    np = "  type: NodePort\n"
    text = "---\n".join(
        [
            SERVICE.replace("spec:\n", "spec:\n" + np).replace("port: 80", "port: 80\n      nodePort: 30080"),
            twin.replace("spec:\n", "spec:\n" + np).replace("port: 80", "port: 80\n      nodePort: 30080"),
            SERVICE.replace("name: web", "name: bad").replace("port: 80", "port: 70000"),
        ]
    )  # fmt: skip
    path.write_text(text)
    assert check_paths([str(path)]) == [
        f"{path}:{line_of(text, 'nodePort: 30080', 2)}: Service shop/twin:"
        " spec.ports[0].nodePort: port 30080/TCP is already allocated to Service shop/web",
        f"{path}:{line_of(text, 'port: 70000')}: Service shop/bad: spec.ports[0].port:"
        " 70000 out of range (1-65535)",
    ]
