"""deploy/: the DaemonSet, RBAC, container build and systemd unit say what netplane can run.

Every command line in them is parsed by netplane's own CLI and config
checks, the RBAC rules are compared with the resources the API source
watches, and the probes are checked against the admin address.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from netplane import cli
from netplane import config as cfgmod
from netplane.sources.kube import RESOURCES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# What the downward API would put in the env vars the DaemonSet refers to.
ENV = {"NODE_NAME": "node-a", "NODE_IP": "198.18.0.1"}


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def by_kind(name: str) -> dict[str, dict]:
    return {d["kind"]: d for d in docs(name)}


def config_from(argv: list[str]) -> cfgmod.Config:
    """The Config `netplane ARGV` would run with (no config file)."""
    args = cli._parser().parse_args(argv)
    assert args.command == "run", argv
    return cfgmod.build({}, cli._flag_values(args))


def expand(arg: str) -> str:
    # Kubernetes replaces $(VAR) in args with the container's env var.
    return re.sub(r"\$\((\w+)\)", lambda m: ENV[m.group(1)], arg)


def container() -> dict:
    ds = by_kind("daemonset.yaml")["DaemonSet"]
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return c


def test_rbac_grants_list_and_watch_on_everything_the_source_watches_and_no_more():
    objs = by_kind("rbac.yaml")
    assert set(objs) == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in objs["ClusterRole"]["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    wanted = {}
    for res in RESOURCES.values():
        group = "" if res.group_version == "v1" else res.group_version.split("/")[0]
        wanted[(group, res.plural)] = {"list", "watch"}
    # The Ingress status writer patches status and re-reads the Ingress after a 409.
    wanted[("networking.k8s.io", "ingresses")].add("get")
    wanted[("networking.k8s.io", "ingresses/status")] = {"patch"}
    # Gateway API: objects read by name too, and the status of those netplane controls.
    gateway = "gateway.networking.k8s.io"
    for plural in ("gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants"):
        wanted[(gateway, plural)].add("get")
    wanted[("", "namespaces")].add("get")
    for plural in ("gatewayclasses", "gateways", "httproutes", "grpcroutes"):
        wanted[(gateway, f"{plural}/status")] = {"get", "update", "patch"}
    assert granted == wanted

    sa = objs["ServiceAccount"]["metadata"]
    binding = objs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == objs["ClusterRole"]["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]} in (
        binding["subjects"]
    )


def test_daemonset_args_are_a_valid_node_mode_command_line():
    ds = by_kind("daemonset.yaml")["DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    sa = by_kind("rbac.yaml")["ServiceAccount"]["metadata"]
    assert spec["serviceAccountName"] == sa["name"]
    assert ds["metadata"]["namespace"] == sa["namespace"]
    assert spec["hostNetwork"] is True
    c = container()
    env = {e["name"] for e in c["env"]}
    assert set(re.findall(r"\$\((\w+)\)", " ".join(c["args"]))) <= env
    cfg = config_from([expand(a) for a in c["args"]])
    assert cfg.mode == "node" and cfg.in_cluster
    assert cfg.node_name == "node-a" and cfg.node_ips == ("198.18.0.1",)
    assert cfg.admin is not None and cfg.admin.host == "198.18.0.1"
    # the container grants what node mode needs (routes, low ports) and nothing else
    caps = c["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # SIGTERM drains for --shutdown-grace; the pod must be given that long
    assert spec["terminationGracePeriodSeconds"] > cfg.shutdown_grace


@pytest.mark.parametrize(
    ("probe", "path"),
    [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")],
)
def test_probes_point_at_the_admin_server(probe: str, path: str):
    c = container()
    cfg = config_from([expand(a) for a in c["args"]])
    get = c[probe]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert get["path"] == path
    assert ports[get["port"]] == cfg.admin.port
    # hostNetwork: kubelet probes the node's address, where --admin listens
    assert cfg.admin.host == ENV["NODE_IP"]


def test_container_ports_match_the_listeners():
    c = container()
    cfg = config_from([expand(a) for a in c["args"]])
    ports = {(p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"]}
    assert (cfg.ingress_http.port, "TCP") in ports
    assert (cfg.ingress_https.port, "TCP") in ports
    assert {(cfg.dns.port, "UDP"), (cfg.dns.port, "TCP")} <= ports


def test_ingress_class_names_this_controller():
    (ic,) = docs("ingressclass.yaml")
    assert ic["kind"] == "IngressClass"
    assert ic["spec"]["controller"] == "netplane.io/ingress"
    cfg = config_from([expand(a) for a in container()["args"]])
    # the DaemonSet serves the class this file creates (netplane's default class name)
    assert getattr(cfg, "ingress_class", "netplane") == ic["metadata"]["name"]


def test_containerfile_runs_the_installed_cli():
    text = (DEPLOY / "Containerfile").read_text()
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert entry and cmd
    assert yaml.safe_load(entry.group(1)) == ["netplane"]
    cfg = config_from(yaml.safe_load(cmd.group(1)))
    assert cfg.in_cluster and cfg.mode == "node"
    assert re.search(r"^RUN pip install .*/src", text, re.M)


def test_systemd_unit_runs_a_valid_command_line():
    text = (DEPLOY / "netplane.service").read_text()
    fields = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    argv = shlex.split(fields["ExecStart"])
    assert Path(argv[0]).name == "netplane"
    cfg = config_from(argv[1:])
    assert cfg.files == ("/etc/netplane/manifests",)
    assert fields["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP re-reads
    assert fields["KillSignal"] == "SIGTERM"
    assert float(fields["TimeoutStopSec"]) > cfg.shutdown_grace
    assert set(fields["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
