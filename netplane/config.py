"""Settings: one frozen Config built from defaults, a YAML file, then flags.

Every default lives here, once, as a field of :class:`Config`. The planes'
settings objects (``TcpSettings``, ``HttpSettings``, ``DnsSettings`` ...)
are derived from a Config by one function each in :mod:`netplane.plane`,
and where those objects have defaults of their own they read them from
:data:`DEFAULTS`.

Every command-line setting has a config-file key of the same name (the
flag without its dashes: ``cluster-domain``, ``service-cidr`` ...); flags
override the file. An unknown key is an error naming the key and the file,
so a typo never silently does nothing. Relative paths in the file resolve
against the file's directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from netplane.addresses import IPNetwork, hostport
from netplane.errors import ConfigError
from netplane.model.meta import is_dns1123_subdomain

LOCAL_SERVICE_CIDR = "127.77.0.0/16"
# kubeadm's default; a node-mode user with another range sets --service-cidr.
NODE_SERVICE_CIDR = "10.96.0.0/12"
MODES = ("local", "node")
LOG_FORMATS = ("text", "json")
LB_POLICIES = ("round-robin", "least-connections")
TCP_RELAYS = ("splice", "protocol")
L4_DATAPATHS = ("userspace", "nftables", "auto")  # netplane.l4.datapath.MODES
LOG_LEVELS = ("debug", "info", "warning", "error")
# DNS
DNS_POD_MODES = ("disabled", "insecure", "verified")


@dataclass(frozen=True, slots=True)
class Listen:
    """A host and port to listen on; port 0 picks a free one."""

    host: str
    port: int

    def __str__(self) -> str:
        return hostport(self.host, self.port)


def parse_listen(value: str, setting: str) -> Listen | None:
    """``HOST:PORT``, ``[V6]:PORT`` or ``off``."""
    v = value.strip()
    if v.lower() == "off":
        return None
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{setting}: {value!r} is not HOST:PORT or off")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{setting}: {host!r} is not an IP address") from None
    p = int(port)
    if not 0 <= p <= 65535:
        raise ConfigError(f"{setting}: port {p} out of range (0-65535)")
    return Listen(host, p)


DEFAULT_INGRESS_HTTP = Listen("127.0.0.1", 8080)
DEFAULT_INGRESS_HTTPS = Listen("127.0.0.1", 8443)
DEFAULT_DNS = Listen("127.0.0.1", 5353)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``netplane run`` can be told; see the README for each setting."""

    files: tuple[str, ...] = ()
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    namespace: str | None = None
    label_selector: str | None = None
    mode: str = "local"
    cluster_domain: str = "cluster.local"
    service_cidrs: tuple[IPNetwork, ...] = ()
    node_name: str = ""
    node_ips: tuple[str, ...] = ()
    node_port_range: tuple[int, int] = (30000, 32767)
    proxy: bool = True
    ingress_http: Listen | None = DEFAULT_INGRESS_HTTP
    ingress_https: Listen | None = DEFAULT_INGRESS_HTTPS
    dns: Listen | None = DEFAULT_DNS
    admin: Listen | None = Listen("127.0.0.1", 10256)  # kube-proxy's healthz port
    log_format: str = "text"
    log_level: str = "info"
    shutdown_grace: float = 30.0  # SIGTERM: how long open connections may drain
    workers: int = 0  # processes serving the listeners; 0: one per usable core
    manifest_poll_seconds: float = 1.0
    nodeport_addresses: tuple[str, ...] = ()  # empty: the node IPs, else 127.0.0.1 (local) or all
    lb_policy: str = "round-robin"
    connect_timeout: float = 2.0  # one connect attempt to an endpoint
    tcp_idle_seconds: float = 3600.0
    tcp_relay: str = "splice"
    # node mode: which service ports the kernel (nftables) serves; see netplane/l4/datapath.py
    l4_datapath: str = "userspace"
    keep_rules_on_exit: bool = False  # leave the nftables table at exit (traffic flows on)
    udp_idle_seconds: float = 30.0
    derive_endpoints_from_pods: bool | None = None  # None: on unless the API is a source
    # Ingress
    ingress_class: str = "netplane"
    default_certificate: tuple[str, str] | None = None  # (namespace, name) of a tls Secret
    ingress_access_log: str | None = "stdout"  # "stdout", "stderr", a file path; None: off
    ingress_hsts: str | None = "max-age=31536000; includeSubDomains"
    # ingress-nginx's defaults: large_client_header_buffers (4 x 8k), client_header_timeout,
    # client_body_timeout (between two reads of a body), keepalive_timeout
    ingress_max_header_bytes: int = 32 * 1024  # 431 above this (request line and fields)
    ingress_header_timeout: float = 60.0  # the whole head must arrive in this
    ingress_body_timeout: float = 60.0
    ingress_keepalive_timeout: float = 75.0  # an idle keep-alive connection is closed after this
    ingress_tls_resumption: bool = True  # off: no session tickets (full handshakes, for bench)
    ingress_h2c: bool = True  # HTTP/2 with prior knowledge on the plain listener
    ingress_max_connections_per_client: int = 0  # nginx's limit_conn per client IP; 0: off
    publish_addresses: tuple[str, ...] = ()  # Ingress status; empty: the node's address
    # Gateway API: where a Gateway without spec.addresses listens; empty: 127.0.0.1
    # (local mode) or the node IPs (node mode, else every address)
    gateway_addresses: tuple[str, ...] = ()
    # DNS
    dns_ttl: int = 5
    dns_upstreams: tuple[tuple[str, int], ...] = ()  # empty: the nameservers of /etc/resolv.conf
    dns_allow: tuple[IPNetwork, ...] = ()  # empty: loopback, service and pod CIDRs, node IPs
    pod_cidrs: tuple[IPNetwork, ...] = ()
    dns_pods: str = "disabled"
    dns_udp_size: int = 1232  # DNS Flag Day 2020: no fragmented UDP replies
    dns_max_tcp_connections: int = 512  # open DNS-over-TCP connections; new ones beyond: closed
    config_file: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Embedders build Config directly; catch the mistakes that would
        # otherwise surface later as an odd error far from their cause.
        if self.mode not in MODES:
            raise ConfigError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log format: {self.log_format!r} is not one of {', '.join(LOG_FORMATS)}"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"log level: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
            )
        files = (self.files,) if isinstance(self.files, str | os.PathLike) else self.files
        object.__setattr__(self, "files", tuple(os.fspath(f) for f in files))
        cidrs = tuple(
            c if isinstance(c, ipaddress.IPv4Network | ipaddress.IPv6Network)
            else _cidr(c, "service CIDR", Path())
            for c in self.service_cidrs
        )  # fmt: skip
        object.__setattr__(self, "service_cidrs", cidrs)
        # DNS
        for name in ("dns_allow", "pod_cidrs"):
            nets = tuple(_cidr(c, name, Path()) for c in getattr(self, name))
            object.__setattr__(self, name, nets)
        if self.l4_datapath not in L4_DATAPATHS:
            raise ConfigError(
                f"l4 datapath: {self.l4_datapath!r} is not one of {', '.join(L4_DATAPATHS)}"
            )
        if self.l4_datapath == "nftables" and self.mode != "node":
            raise ConfigError("--l4-datapath nftables needs --mode node")
        if self.dns_pods not in DNS_POD_MODES:
            raise ConfigError(
                f"dns pods: {self.dns_pods!r} is not one of {', '.join(DNS_POD_MODES)}"
            )
        for name in ("ingress_http", "ingress_https", "dns", "admin"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, parse_listen(value, name))

    @property
    def uses_api(self) -> bool:
        return bool(self.kubeconfig) or self.in_cluster

    @property
    def effective_service_cidrs(self) -> tuple[IPNetwork, ...]:
        if self.service_cidrs:
            return self.service_cidrs
        return (
            ipaddress.ip_network(LOCAL_SERVICE_CIDR if self.mode == "local" else NODE_SERVICE_CIDR),
        )

    @property
    def effective_nodeport_addresses(self) -> tuple[str, ...]:
        """Where NodePorts listen: the option, else the node IPs, else a default per mode."""
        if self.nodeport_addresses:
            return self.nodeport_addresses
        if self.node_ips:
            return self.node_ips
        return ("127.0.0.1",) if self.mode == "local" else ("0.0.0.0", "::")

    @property
    def effective_gateway_addresses(self) -> tuple[str, ...]:
        """Where a Gateway without ``spec.addresses`` binds (see ``gateway_addresses``)."""
        if self.gateway_addresses:
            return self.gateway_addresses
        if self.mode == "local":
            return ("127.0.0.1",)
        return self.node_ips or ("0.0.0.0",)

    @property
    def effective_dns_allow(self) -> tuple[IPNetwork, ...]:
        """Who may have names outside the cluster forwarded (DNS): never the whole world by default."""
        if self.dns_allow:
            return self.dns_allow
        loopback = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
        nodes = tuple(ipaddress.ip_network(ip) for ip in self.node_ips)
        return (*loopback, *self.effective_service_cidrs, *self.pod_cidrs, *nodes)

    @property
    def effective_workers(self) -> int:
        """How many processes serve the listeners: the setting, else one per core we may use."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)

    @property
    def pods_make_endpoints(self) -> bool:
        if self.derive_endpoints_from_pods is not None:
            return self.derive_endpoints_from_pods
        return not self.uses_api


#: Every setting at its default: what the planes' settings objects read theirs from.
DEFAULTS = Config()


def default_mode() -> str:
    """``node`` for root (it may change routes), ``local`` otherwise."""
    return "node" if hasattr(os, "geteuid") and os.geteuid() == 0 else "local"


# Config-file key -> (Config field, converter). Converters take (value, setting, base dir).
_T = TypeVar("_T")
Converter = Callable[[Any, str, Path], _T]


def _bool(v: Any, setting: str, _base: Path) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("on", "true", "yes"):
        return True
    if isinstance(v, str) and v.lower() in ("off", "false", "no"):
        return False
    raise ConfigError(f"{setting}: {v!r} is not on/off")


def _str(v: Any, setting: str, _base: Path) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{setting}: expected a non-empty string, got {v!r}")
    return v


def _path(v: Any, setting: str, base: Path) -> str:
    p = Path(os.path.expanduser(_str(v, setting, base)))
    return str(p if p.is_absolute() else base / p)


def _list(conv: Converter[_T]) -> Converter[tuple[_T, ...]]:
    def inner(v: Any, setting: str, base: Path) -> tuple[_T, ...]:
        items = v if isinstance(v, list) else [v]
        return tuple(conv(i, setting, base) for i in items)

    return inner


def _choice(choices: tuple[str, ...]) -> Converter[str]:
    def inner(v: Any, setting: str, _base: Path) -> str:
        s = str(v).lower()
        if s not in choices:
            raise ConfigError(f"{setting}: {v!r} is not one of {', '.join(choices)}")
        return s

    return inner


def _cidr(v: Any, setting: str, _base: Path) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(v), strict=True)
    except ValueError as e:
        raise ConfigError(f"{setting}: {v!r} is not a CIDR ({e})") from None


def _ip(v: Any, setting: str, _base: Path) -> str:
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        raise ConfigError(f"{setting}: {v!r} is not an IP address") from None


def _listen(v: Any, setting: str, _base: Path) -> Listen | None:
    if v is False:
        return None
    return parse_listen(str(v), setting)


def _int_in(lo: int, hi: int) -> Converter[int]:
    def inner(v: Any, setting: str, _base: Path) -> int:
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.isdigit())):
            raise ConfigError(f"{setting}: {v!r} is not a whole number")
        n = int(v)
        if not lo <= n <= hi:
            raise ConfigError(f"{setting}: {n} out of range ({lo}-{hi})")
        return n

    return inner


def _workers(v: Any, setting: str, base: Path) -> int:
    """``auto`` (0: one per usable core) or a count of worker processes."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return 0
    return _int_in(1, 256)(v, setting, base)


def _upstream(v: Any, setting: str, _base: Path) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[V6]:PORT``; port 53 when none is given."""
    text = str(v).strip()
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and (not rest.startswith(":") or not rest[1:].isdigit())):
            raise ConfigError(f"{setting}: {v!r} is not IP, IP:PORT or [IPv6]:PORT")
        port = int(rest[1:]) if rest else 53
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not p.isdigit():
            raise ConfigError(f"{setting}: {v!r} is not IP, IP:PORT or [IPv6]:PORT")
        port = int(p)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(f"{setting}: {host!r} is not an IP address") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{setting}: port {port} out of range (1-65535)")
    return (host, port)


def _port_range(v: Any, setting: str, _base: Path) -> tuple[int, int]:
    lo, sep, hi = str(v).partition("-")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise ConfigError(f"{setting}: {v!r} is not LOW-HIGH")
    a, b = int(lo), int(hi)
    if not 1 <= a <= b <= 65535:
        raise ConfigError(f"{setting}: {v!r} is not a valid port range")
    return (a, b)


def _seconds(v: Any, setting: str, _base: Path) -> float:
    if isinstance(v, bool):  # YAML's on/yes/true
        raise ConfigError(f"{setting}: {v!r} is not a number of seconds")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{setting}: {v!r} is not a number of seconds") from None
    if not math.isfinite(f) or f < 0:
        raise ConfigError(f"{setting}: {v!r} is not a finite, non-negative number of seconds")
    return f


def _positive_seconds(v: Any, setting: str, base: Path) -> float:
    f = _seconds(v, setting, base)
    if f <= 0:
        raise ConfigError(f"{setting}: must be more than 0")
    return f


def _poll_seconds(v: Any, setting: str, base: Path) -> float:
    f = _seconds(v, setting, base)
    if f < 0.01:
        raise ConfigError(f"{setting}: {v!r} is too short (at least 0.01 s)")
    return f


# Ingress
def _secret_ref(v: Any, setting: str, _base: Path) -> tuple[str, str]:
    ns, sep, name = str(v).partition("/")
    if not sep or not ns or not name or "/" in name:
        raise ConfigError(f"{setting}: {v!r} is not NAMESPACE/NAME")
    return (ns, name)


def _off_or_str(v: Any, setting: str, base: Path) -> str | None:
    if v is False or (isinstance(v, str) and v.lower() == "off"):
        return None
    return _str(v, setting, base)


def _access_log(v: Any, setting: str, base: Path) -> str | None:
    s = _off_or_str(v, setting, base)
    return s if s in (None, "stdout", "stderr") else _path(s, setting, base)


def _publish_addresses(v: Any, setting: str, _base: Path) -> tuple[str, ...]:
    """IPs or DNS names for Ingress status: a list, or one comma-separated string."""
    items = v if isinstance(v, list) else [v]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{setting}: {item!r} is not an IP address or host name")
        for part in item.split(","):
            text = part.strip()
            try:
                out.append(str(ipaddress.ip_address(text)))
                continue
            except ValueError:
                pass
            if not is_dns1123_subdomain(text.lower()):
                raise ConfigError(f"{setting}: {text!r} is not an IP address or host name")
            out.append(text.lower())
    return tuple(dict.fromkeys(out))


def _header_bytes(v: Any, setting: str, _base: Path) -> int:
    try:
        n = int(str(v))
    except ValueError:
        raise ConfigError(f"{setting}: {v!r} is not a number of bytes") from None
    if not 1024 <= n <= 1024 * 1024:
        raise ConfigError(f"{setting}: {n} is out of range (1024-1048576)")
    return n


KEYS: dict[str, tuple[str, Converter[Any]]] = {
    "files": ("files", _list(_path)),
    "kubeconfig": ("kubeconfig", _path),
    "context": ("context", _str),
    "in-cluster": ("in_cluster", _bool),
    "namespace": ("namespace", _str),
    "label-selector": ("label_selector", _str),
    "mode": ("mode", _choice(MODES)),
    "cluster-domain": ("cluster_domain", _str),
    "service-cidr": ("service_cidrs", _list(_cidr)),
    "node-name": ("node_name", _str),
    "node-ip": ("node_ips", _list(_ip)),
    "nodeport-range": ("node_port_range", _port_range),
    "proxy": ("proxy", _bool),
    "ingress-http": ("ingress_http", _listen),
    "ingress-https": ("ingress_https", _listen),
    "dns": ("dns", _listen),
    "admin": ("admin", _listen),
    "log-format": ("log_format", _choice(LOG_FORMATS)),
    "log-level": ("log_level", _choice(LOG_LEVELS)),
    "shutdown-grace": ("shutdown_grace", _seconds),
    "drain-seconds": ("shutdown_grace", _seconds),  # the name before 0.2; kept for old configs
    "workers": ("workers", _workers),
    "manifest-poll-seconds": ("manifest_poll_seconds", _poll_seconds),
    "pod-endpoints": ("derive_endpoints_from_pods", _bool),
    "nodeport-addresses": ("nodeport_addresses", _list(_ip)),
    "lb-policy": ("lb_policy", _choice(LB_POLICIES)),
    "connect-timeout": ("connect_timeout", _positive_seconds),
    "tcp-idle-seconds": ("tcp_idle_seconds", _positive_seconds),
    "tcp-relay": ("tcp_relay", _choice(TCP_RELAYS)),
    "udp-idle-seconds": ("udp_idle_seconds", _positive_seconds),
    "l4-datapath": ("l4_datapath", _choice(L4_DATAPATHS)),
    "keep-rules-on-exit": ("keep_rules_on_exit", _bool),
    # Ingress
    "ingress-class": ("ingress_class", _str),
    "default-certificate": ("default_certificate", _secret_ref),
    "ingress-access-log": ("ingress_access_log", _access_log),
    "ingress-hsts": ("ingress_hsts", _off_or_str),
    "ingress-max-header-bytes": ("ingress_max_header_bytes", _header_bytes),
    "ingress-header-timeout": ("ingress_header_timeout", _positive_seconds),
    "ingress-body-timeout": ("ingress_body_timeout", _positive_seconds),
    "ingress-keepalive-timeout": ("ingress_keepalive_timeout", _positive_seconds),
    "ingress-tls-resumption": ("ingress_tls_resumption", _bool),
    "ingress-h2c": ("ingress_h2c", _bool),
    "ingress-max-connections-per-client": (
        "ingress_max_connections_per_client",
        _int_in(0, 1_000_000),
    ),
    "publish-address": ("publish_addresses", _publish_addresses),
    "gateway-address": ("gateway_addresses", _list(_ip)),
    # DNS
    "dns-ttl": ("dns_ttl", _int_in(0, 3600)),
    "dns-upstreams": ("dns_upstreams", _list(_upstream)),
    "dns-allow": ("dns_allow", _list(_cidr)),
    "pod-cidr": ("pod_cidrs", _list(_cidr)),
    "dns-pods": ("dns_pods", _choice(DNS_POD_MODES)),
    "dns-udp-size": ("dns_udp_size", _int_in(512, 65535)),
    "dns-max-tcp-connections": ("dns_max_tcp_connections", _int_in(1, 1_000_000)),
}


def convert(settings: Mapping[str, Any], where: str, base: Path) -> dict[str, Any]:
    """Turn ``{key: raw value}`` into Config field values, checking every key."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        fname, conv = KEYS[key]
        if value is None:
            continue
        out[fname] = conv(value, f"{where}: {key}", base)
    return out


def load_file(path: str) -> dict[str, Any]:
    """Read a YAML config file into Config field values."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{pos}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    # The directory the file is named in, not where a symlink leads: a
    # ConfigMap mount links every file into a hidden timestamped directory.
    return convert(data, path, Path(os.path.abspath(p)).parent)


def build(
    file_values: Mapping[str, Any] | None = None,
    flag_values: Mapping[str, Any] | None = None,
    *,
    config_file: str | None = None,
) -> Config:
    """Defaults, then the file, then the flags; then cross-setting checks."""
    values: dict[str, Any] = {"mode": default_mode()}
    values.update(file_values or {})
    values.update(flag_values or {})
    cfg = dataclasses.replace(Config(), config_file=config_file, **values)
    if cfg.kubeconfig and cfg.in_cluster:
        raise ConfigError("--kubeconfig and --in-cluster are exclusive")
    if cfg.context and not cfg.kubeconfig:
        raise ConfigError("--context needs --kubeconfig")
    return cfg


def load(config_file: str | None, flag_values: Mapping[str, Any]) -> Config:
    file_values = load_file(config_file) if config_file else {}
    return build(file_values, flag_values, config_file=config_file)
