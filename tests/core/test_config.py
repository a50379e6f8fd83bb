"""Config: listen addresses, every config-file key's converter, defaults, precedence, paths,
and the planes' settings derived from it."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest
from netplane.dns.plane import DnsSettings
from netplane.ingress.http import HttpSettings
from netplane.ingress.plane import IngressSettings

from netplane.config import (
    DEFAULTS,
    KEYS,
    Config,
    Listen,
    build,
    convert,
    load,
    load_file,
    parse_listen,
)
from netplane.errors import ConfigError
from netplane.l4.tcp import TcpSettings
from netplane.l4.udp import UdpSettings
from netplane.plane import dns_settings, http_settings, ingress_settings, tcp_settings, udp_settings

BASE = Path("/etc/netplane")


# -- parse_listen ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("127.0.0.1:8080", Listen("127.0.0.1", 8080)),
        ("0.0.0.0:0", Listen("0.0.0.0", 0)),
        (":53", Listen("0.0.0.0", 53)),
        ("[::1]:53", Listen("::1", 53)),
        ("[::]:65535", Listen("::", 65535)),
        ("localhost:10256", Listen("localhost", 10256)),
        (" 10.0.0.1:1 ", Listen("10.0.0.1", 1)),
        ("off", None),
        ("OFF", None),
    ],
)
def test_parse_listen_forms(value, want):
    assert parse_listen(value, "--admin") == want


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("8080", "--admin: '8080' is not HOST:PORT or off"),
        ("127.0.0.1", "--admin: '127.0.0.1' is not HOST:PORT or off"),
        ("127.0.0.1:", "--admin: '127.0.0.1:' is not HOST:PORT or off"),
        ("127.0.0.1:http", "--admin: '127.0.0.1:http' is not HOST:PORT or off"),
        ("127.0.0.1:-1", "--admin: '127.0.0.1:-1' is not HOST:PORT or off"),
        ("127.0.0.1:65536", "--admin: port 65536 out of range (0-65535)"),
        ("example.com:80", "--admin: 'example.com' is not an IP address"),
        ("[::1:53", "--admin: '[::1' is not an IP address"),
        ("", "--admin: '' is not HOST:PORT or off"),
    ],
)
def test_parse_listen_rejects(value, message):
    with pytest.raises(ConfigError) as e:
        parse_listen(value, "--admin")
    assert str(e.value) == message


def test_listen_str_brackets_ipv6():
    assert str(Listen("::1", 53)) == "[::1]:53"
    assert str(Listen("127.0.0.1", 53)) == "127.0.0.1:53"


# -- every KEYS converter ------------------------------------------------------

GOOD: dict[str, list[tuple[object, object]]] = {
    "files": [
        ("m.yaml", (str(BASE / "m.yaml"),)),
        (["a", "/abs/b"], (str(BASE / "a"), "/abs/b")),
    ],
    "kubeconfig": [("kube/config", str(BASE / "kube/config")), ("/k", "/k")],
    "context": [("prod", "prod")],
    "in-cluster": [(True, True), ("on", True), ("no", False), (False, False)],
    "namespace": [("shop", "shop")],
    "label-selector": [("app=web", "app=web")],
    "mode": [("local", "local"), ("Node", "node")],
    "cluster-domain": [("example.internal", "example.internal")],
    "service-cidr": [
        ("10.96.0.0/12", (ipaddress.ip_network("10.96.0.0/12"),)),
        (
            ["10.96.0.0/12", "fd00::/108"],
            (ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00::/108")),
        ),
    ],
    "node-name": [("node-1", "node-1")],
    "node-ip": [("10.0.0.1", ("10.0.0.1",)), (["10.0.0.1", "::1"], ("10.0.0.1", "::1"))],
    "nodeport-range": [("30000-32767", (30000, 32767)), ("1-1", (1, 1))],
    "proxy": [("off", False), (True, True)],
    "ingress-http": [("127.0.0.1:80", Listen("127.0.0.1", 80)), (False, None), ("off", None)],
    "ingress-https": [("[::1]:443", Listen("::1", 443)), (False, None)],
    "dns": [("127.0.0.1:53", Listen("127.0.0.1", 53)), (False, None)],
    "admin": [("127.0.0.1:0", Listen("127.0.0.1", 0)), (False, None)],
    "log-format": [("json", "json"), ("TEXT", "text")],
    "log-level": [("debug", "debug"), ("Warning", "warning")],
    "shutdown-grace": [(0, 0.0), ("2.5", 2.5), (10, 10.0)],
    "drain-seconds": [(0, 0.0), ("2.5", 2.5)],
    "workers": [("auto", 0), (1, 1), ("4", 4)],
    "manifest-poll-seconds": [(0.05, 0.05), ("1", 1.0)],
    "nodeport-addresses": [
        ("198.18.0.1", ("198.18.0.1",)),
        (["::1", "127.0.0.1"], ("::1", "127.0.0.1")),
    ],
    "lb-policy": [("least-connections", "least-connections"), ("Round-Robin", "round-robin")],
    "tcp-relay": [("splice", "splice"), ("Protocol", "protocol")],
    "l4-datapath": [("nftables", "nftables"), ("Auto", "auto"), ("userspace", "userspace")],
    "keep-rules-on-exit": [("on", True), (False, False)],
    "connect-timeout": [(0.5, 0.5), ("3", 3.0)],
    "tcp-idle-seconds": [(60, 60.0)],
    "udp-idle-seconds": [("30", 30.0)],
    "pod-endpoints": [("on", True), (False, False)],
    # Ingress
    "ingress-class": [("nginx", "nginx")],
    "default-certificate": [("ingress/default-tls", ("ingress", "default-tls"))],
    "ingress-access-log": [
        ("stdout", "stdout"),
        ("off", None),
        ("logs/access.log", str(BASE / "logs/access.log")),
    ],
    "ingress-hsts": [("max-age=60", "max-age=60"), ("off", None)],
    "ingress-max-header-bytes": [("65536", 65536)],
    "ingress-header-timeout": [("5", 5.0)],
    "ingress-body-timeout": [(30, 30.0)],
    "ingress-keepalive-timeout": [("1.5", 1.5)],
    "ingress-tls-resumption": [("off", False)],
    "ingress-h2c": [("off", False)],
    "ingress-max-connections-per-client": [(10, 10), ("0", 0)],
    "publish-address": [
        ("198.18.0.1", ("198.18.0.1",)),
        ("198.18.0.1, LB.example.com,fd00::1", ("198.18.0.1", "lb.example.com", "fd00::1")),
        (["a.example", "198.18.0.2"], ("a.example", "198.18.0.2")),
    ],
    "gateway-address": [
        ("127.0.0.2", ("127.0.0.2",)),
        (["198.18.0.1", "::1"], ("198.18.0.1", "::1")),
    ],
    # DNS
    "dns-ttl": [(30, 30), ("0", 0)],
    "dns-upstreams": [
        ("10.0.0.2", (("10.0.0.2", 53),)),
        (
            ["10.0.0.2:5300", "[fd00::2]:53", "::3"],
            (("10.0.0.2", 5300), ("fd00::2", 53), ("::3", 53)),
        ),
    ],
    "dns-allow": [("10.0.0.0/8", (ipaddress.ip_network("10.0.0.0/8"),))],
    "pod-cidr": [("10.244.0.0/16", (ipaddress.ip_network("10.244.0.0/16"),))],
    "dns-pods": [("verified", "verified"), ("Insecure", "insecure")],
    "dns-udp-size": [(4096, 4096), ("512", 512)],
    "dns-max-tcp-connections": [(64, 64), ("1000", 1000)],
}

BAD: dict[str, list[tuple[object, str]]] = {
    "files": [("", "expected a non-empty string"), ([1], "expected a non-empty string")],
    "kubeconfig": [(5, "expected a non-empty string")],
    "context": [("", "expected a non-empty string")],
    "in-cluster": [("maybe", "'maybe' is not on/off"), (1, "1 is not on/off")],
    "namespace": [(["a"], "expected a non-empty string")],
    "label-selector": [({}, "expected a non-empty string")],
    "mode": [("cluster", "'cluster' is not one of local, node")],
    "cluster-domain": [("", "expected a non-empty string")],
    "service-cidr": [
        ("10.96.0.1/12", "'10.96.0.1/12' is not a CIDR"),
        ("nope", "'nope' is not a CIDR"),
    ],
    "node-name": [(7, "expected a non-empty string")],
    "node-ip": [("10.0.0.300", "'10.0.0.300' is not an IP address")],
    "nodeport-range": [
        ("30000", "'30000' is not LOW-HIGH"),
        ("200-100", "'200-100' is not a valid port range"),
        ("0-10", "'0-10' is not a valid port range"),
        ("1-70000", "'1-70000' is not a valid port range"),
    ],
    "proxy": [("enabled", "'enabled' is not on/off")],
    "ingress-http": [("80", "'80' is not HOST:PORT or off"), (True, "'True' is not HOST:PORT")],
    "ingress-https": [("1.2.3.4:99999", "port 99999 out of range")],
    "dns": [("dns.example:53", "'dns.example' is not an IP address")],
    "admin": [("127.0.0.1", "is not HOST:PORT or off")],
    "log-format": [("xml", "'xml' is not one of text, json")],
    "log-level": [("trace", "'trace' is not one of debug, info, warning, error")],
    "workers": [(0, "0 out of range (1-256)"), ("many", "is not a whole number")],
    "drain-seconds": [("soon", "'soon' is not a number of seconds")],
    "shutdown-grace": [
        ("soon", "'soon' is not a number of seconds"),
        (-1, "-1"),
        ("nan", "'nan' is not a finite"),
        ("inf", "'inf' is not a finite"),
        (True, "True is not a number of seconds"),
    ],
    "manifest-poll-seconds": [(0, "too short"), ("x", "not a number of seconds")],
    "nodeport-addresses": [("node-a", "not an IP address")],
    "lb-policy": [("random", "not one of round-robin, least-connections")],
    "tcp-relay": [("copy", "not one of splice, protocol")],
    "l4-datapath": [("ebpf", "not one of userspace, nftables, auto")],
    "keep-rules-on-exit": [("sometimes", "'sometimes' is not on/off")],
    "connect-timeout": [(0, "must be more than 0"), ("soon", "not a number of seconds")],
    "tcp-idle-seconds": [(-1, "not a finite, non-negative number")],
    "udp-idle-seconds": [(0, "must be more than 0")],
    "pod-endpoints": [("auto", "'auto' is not on/off")],
    # Ingress
    "ingress-class": [("", "expected a non-empty string")],
    "default-certificate": [("just-a-name", "is not NAMESPACE/NAME"), ("a/b/c", "NAMESPACE/NAME")],
    "ingress-access-log": [("", "expected a non-empty string")],
    "ingress-hsts": [(7, "expected a non-empty string")],
    "ingress-max-header-bytes": [("big", "not a number of bytes"), (100, "out of range")],
    "ingress-header-timeout": [(0, "must be more than 0")],
    "ingress-body-timeout": [("x", "not a number of seconds")],
    "ingress-keepalive-timeout": [(-1, "not a finite, non-negative number")],
    "ingress-tls-resumption": [("maybe", "'maybe' is not on/off")],
    "ingress-h2c": [("maybe", "'maybe' is not on/off")],
    "ingress-max-connections-per-client": [(-1, "out of range (0-1000000)"), ("x", "not a whole")],
    "publish-address": [
        ("198.18.0.1,,x.example", "'' is not an IP address or host name"),
        ("under_score.example", "'under_score.example' is not an IP address or host name"),
        (7, "7 is not an IP address or host name"),
    ],
    "gateway-address": [("gw.example", "not an IP address")],
    # DNS
    "dns-ttl": [
        (-1, "-1 out of range (0-3600)"),
        (7200, "7200 out of range (0-3600)"),
        (True, "not a whole"),
    ],
    "dns-upstreams": [
        ("dns.example", "'dns.example' is not an IP address"),
        ("10.0.0.2:0", "port 0 out of range"),
        ("[::1", "is not IP, IP:PORT or [IPv6]:PORT"),
    ],
    "dns-allow": [("10.0.0.1/8", "'10.0.0.1/8' is not a CIDR")],
    "pod-cidr": [("pods", "'pods' is not a CIDR")],
    "dns-pods": [("on", "'on' is not one of disabled, insecure, verified")],
    "dns-udp-size": [(100, "100 out of range (512-65535)"), ("big", "is not a whole number")],
    "dns-max-tcp-connections": [(0, "0 out of range (1-1000000)"), ("many", "not a whole")],
}


def test_every_key_is_covered():
    assert set(GOOD) == set(KEYS)
    assert set(BAD) == set(KEYS)


@pytest.mark.parametrize(
    ("key", "value", "want"), [(k, v, w) for k, cases in GOOD.items() for v, w in cases]
)
def test_key_converts(key, value, want):
    field, conv = KEYS[key]
    assert conv(value, key, BASE) == want
    # and through convert(), which maps the key to its Config field
    assert convert({key: value}, "cfg.yaml", BASE) == {field: want}


@pytest.mark.parametrize(
    ("key", "value", "fragment"), [(k, v, f) for k, cases in BAD.items() for v, f in cases]
)
def test_key_rejects(key, value, fragment):
    with pytest.raises(ConfigError) as e:
        convert({key: value}, "cfg.yaml", BASE)
    msg = str(e.value)
    assert msg.startswith(f"cfg.yaml: {key}: "), msg
    assert fragment in msg


def test_every_key_names_a_config_field():
    fields = set(Config.__dataclass_fields__)
    for key, (field, _) in KEYS.items():
        assert field in fields, key


def test_unknown_key_is_named():
    with pytest.raises(ConfigError) as e:
        convert({"cluster_domain": "x"}, "/etc/netplane.yaml", BASE)
    assert str(e.value) == "/etc/netplane.yaml: unknown setting 'cluster_domain'"


def test_null_value_keeps_the_default():
    assert convert({"admin": None}, "cfg.yaml", BASE) == {}


# -- defaults and cross-setting rules ---------------------------------------


def test_local_mode_defaults():
    cfg = build({}, {"mode": "local"})
    assert cfg.effective_service_cidrs == (ipaddress.ip_network("127.77.0.0/16"),)
    assert cfg.cluster_domain == "cluster.local"
    assert cfg.admin == Listen("127.0.0.1", 10256)
    assert cfg.node_port_range == (30000, 32767)
    assert cfg.log_format == "text" and cfg.log_level == "info"
    assert cfg.shutdown_grace == 30.0
    assert cfg.workers == 0 and cfg.effective_workers == len(os.sched_getaffinity(0))
    assert cfg.manifest_poll_seconds == 1.0
    assert not cfg.uses_api
    assert cfg.pods_make_endpoints  # manifests only: Pods stand in for the slice controller


def test_node_mode_defaults():
    cfg = build({}, {"mode": "node"})
    assert cfg.effective_service_cidrs == (ipaddress.ip_network("10.96.0.0/12"),)


def test_default_mode_follows_privilege(monkeypatch):
    import netplane.config as cfgmod

    monkeypatch.setattr(cfgmod.os, "geteuid", lambda: 0)
    assert build().mode == "node"
    monkeypatch.setattr(cfgmod.os, "geteuid", lambda: 1000)
    assert build().mode == "local"


def test_explicit_service_cidr_wins_over_mode_default():
    cidr = ipaddress.ip_network("10.0.0.0/24")
    cfg = build({}, {"mode": "local", "service_cidrs": (cidr,)})
    assert cfg.effective_service_cidrs == (cidr,)


def test_api_source_turns_pod_endpoints_off_unless_asked():
    assert not build({}, {"kubeconfig": "/k"}).pods_make_endpoints
    assert build({}, {"kubeconfig": "/k", "derive_endpoints_from_pods": True}).pods_make_endpoints
    assert not build({}, {"in_cluster": True}).pods_make_endpoints


def test_kubeconfig_and_in_cluster_are_exclusive():
    with pytest.raises(ConfigError, match="--kubeconfig and --in-cluster are exclusive"):
        build({"in_cluster": True}, {"kubeconfig": "/k"})


def test_context_needs_kubeconfig():
    with pytest.raises(ConfigError, match="--context needs --kubeconfig"):
        build({}, {"context": "prod"})


def test_config_constructed_directly_is_checked():
    with pytest.raises(ConfigError, match="mode"):
        Config(mode="cluster")
    with pytest.raises(ConfigError, match="log level"):
        Config(log_level="loud")
    cfg = Config(service_cidrs=("10.0.0.0/16",), files=["a.yaml"], admin="127.0.0.1:0")  # type: ignore[arg-type]
    assert cfg.service_cidrs == (ipaddress.ip_network("10.0.0.0/16"),)
    assert cfg.files == ("a.yaml",)
    assert cfg.admin == Listen("127.0.0.1", 0)


# -- the file --------------------------------------------------------------


def test_file_values_relative_paths_resolve_against_its_directory(tmp_path, monkeypatch):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = conf_dir / "netplane.yaml"
    path.write_text(
        "files: [manifests, /abs/more.yaml]\n"
        "kubeconfig: ../kube/config\n"
        "cluster-domain: corp.internal\n"
        "admin: off\n"
        "service-cidr: 10.100.0.0/16\n"
    )
    monkeypatch.chdir(tmp_path)  # not the file's directory
    values = load_file("conf/netplane.yaml")
    assert values["files"] == (str(conf_dir / "manifests"), "/abs/more.yaml")
    assert values["kubeconfig"] == str(conf_dir / ".." / "kube" / "config")
    assert values["admin"] is None  # YAML reads `off` as false
    assert values["cluster_domain"] == "corp.internal"


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "netplane.yaml"
    path.write_text("cluster-domain: from.file\nlog-level: debug\nadmin: 127.0.0.1:1111\n")
    cfg = load(str(path), {"cluster_domain": "from.flag", "mode": "local"})
    assert cfg.cluster_domain == "from.flag"
    assert cfg.log_level == "debug"  # not given as a flag: the file's value
    assert cfg.admin == Listen("127.0.0.1", 1111)
    assert cfg.config_file == str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("speed: 11\n", "{p}: unknown setting 'speed'"),
        ("- a\n- b\n", "{p}: expected a mapping of settings"),
        ("admin: [1\n", "{p}:2:1: not valid YAML: "),
        ("mode: sideways\n", "{p}: mode: 'sideways' is not one of local, node"),
    ],
)
def test_file_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "netplane.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(str(path), {})
    assert str(e.value).startswith(message.format(p=path))


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file: No such file"):
        load_file(str(tmp_path / "nope.yaml"))
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert load_file(str(empty)) == {}


def test_relative_paths_resolve_against_the_named_directory_not_a_symlink_target(tmp_path):
    # A ConfigMap mount: /etc/netplane/netplane.yaml -> ..data/netplane.yaml -> ..2024_01/...
    real = tmp_path / "..2024_01"
    real.mkdir()
    (real / "netplane.yaml").write_text("files: manifests\n")
    mount = tmp_path / "mount"
    mount.mkdir()
    (mount / "netplane.yaml").symlink_to(real / "netplane.yaml")
    assert load_file(str(mount / "netplane.yaml"))["files"] == (str(mount / "manifests"),)


# -- the planes' settings, derived from a Config --------------------------------


def test_each_settings_default_is_the_configs():
    """The settings objects' own defaults are the Config's, not copies of them."""
    assert tcp_settings(DEFAULTS) == TcpSettings()
    assert udp_settings(DEFAULTS) == UdpSettings()
    assert http_settings(DEFAULTS) == HttpSettings()
    assert ingress_settings(DEFAULTS) == IngressSettings()
    derived, default = dns_settings(DEFAULTS, resolv_conf="/nonexistent"), DnsSettings()
    for name in ("host", "port", "domain", "ttl", "pods", "udp_cap", "upstreams"):
        assert getattr(derived, name) == getattr(default, name), name


def test_settings_carry_every_config_value(tmp_path: Path):
    cfg = build(
        {},
        {
            "mode": "local",
            "connect_timeout": 0.5,
            "tcp_idle_seconds": 60.0,
            "tcp_relay": "protocol",
            "udp_idle_seconds": 7.0,
            "ingress_http": Listen("127.0.0.2", 81),
            "ingress_https": None,
            "ingress_class": "edge",
            "default_certificate": ("infra", "wildcard"),
            "ingress_hsts": None,
            "ingress_access_log": "stderr",
            "log_format": "json",
            "ingress_tls_resumption": False,
            "ingress_max_header_bytes": 4096,
            "ingress_header_timeout": 1.0,
            "ingress_body_timeout": 2.0,
            "ingress_keepalive_timeout": 3.0,
            "dns": Listen("127.0.0.3", 1053),
            "cluster_domain": "example.internal",
            "dns_ttl": 30,
            "dns_pods": "insecure",
            "dns_udp_size": 4096,
            "dns_max_tcp_connections": 7,
            "ingress_max_connections_per_client": 3,
            "pod_cidrs": (ipaddress.ip_network("10.244.0.0/16"),),
        },
    )
    tcp = tcp_settings(cfg)
    assert (tcp.connect_timeout, tcp.idle_timeout, tcp.splice) == (0.5, 60.0, False)
    assert udp_settings(cfg).flow_idle_timeout == 7.0
    http = http_settings(cfg)
    assert (http.max_header_bytes, http.header_timeout) == (4096, 1.0)
    assert (http.body_timeout, http.keepalive_timeout) == (2.0, 3.0)
    assert http.max_connections_per_client == 3
    ing = ingress_settings(cfg, reuse_port=True)
    assert (ing.http, ing.https) == (("127.0.0.2", 81), None)
    assert (ing.ingress_class, ing.default_secret, ing.hsts) == (
        "edge",
        ("infra", "wildcard"),
        None,
    )
    assert (ing.access_log, ing.access_log_format) == ("stderr", "json")
    assert (ing.tls_resumption, ing.reuse_port, ing.http_settings) == (False, True, http)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.3\nnameserver 192.0.2.53\n")
    dns = dns_settings(cfg, resolv_conf=str(resolv))
    assert (dns.host, dns.port, dns.domain, dns.ttl) == ("127.0.0.3", 1053, "example.internal", 30)
    assert (dns.pods, dns.udp_cap, dns.reuse_port) == ("insecure", 4096, False)
    assert dns.max_tcp_connections == 7
    assert dns.upstreams == (("127.0.0.3", 53), ("192.0.2.53", 53))
    assert dns.allow == cfg.effective_dns_allow
    assert dns.reverse_cidrs == (ipaddress.ip_network("127.77.0.0/16"), *cfg.pod_cidrs)
    with_upstreams = dataclasses.replace(cfg, dns_upstreams=(("192.0.2.1", 5300),))
    assert dns_settings(with_upstreams, resolv_conf=str(resolv)).upstreams == (("192.0.2.1", 5300),)
    with pytest.raises(ValueError, match="dns is off"):
        dns_settings(dataclasses.replace(cfg, dns=None))


def test_gateway_addresses_default_per_mode():
    """A Gateway without spec.addresses: loopback in local mode, the node IPs in node mode."""
    assert Config(mode="local").effective_gateway_addresses == ("127.0.0.1",)
    assert Config(mode="node", node_ips=("198.18.0.5",)).effective_gateway_addresses == (
        "198.18.0.5",
    )
    assert Config(mode="node").effective_gateway_addresses == ("0.0.0.0",)
    assert Config(mode="node", gateway_addresses=("198.18.0.9",)).effective_gateway_addresses == (
        "198.18.0.9",
    )


def test_the_kernel_datapath_needs_node_mode():
    with pytest.raises(ConfigError, match="--l4-datapath nftables needs --mode node"):
        build(flag_values={"mode": "local", "l4_datapath": "nftables"})
    with pytest.raises(ConfigError, match="l4 datapath: 'ebpf' is not one of"):
        Config(l4_datapath="ebpf")
    # auto is fine anywhere: local mode serves every port in user space
    assert build(flag_values={"mode": "local", "l4_datapath": "auto"}).l4_datapath == "auto"
    assert build(flag_values={"mode": "node", "l4_datapath": "nftables"}).l4_datapath == "nftables"
