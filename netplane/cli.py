"""The ``netplane`` command: run, check, demo, version.

Flags are turned into config values by the same converters as the config
file (:mod:`netplane.config`), so a flag and a file key can never disagree
about what a value means. Errors in settings print one line and exit 2;
``check`` prints one line per problem and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netplane import __version__
from netplane import config as cfgmod
from netplane.addresses import hostport
from netplane.errors import ConfigError

if TYPE_CHECKING:
    from netplane.demo_probe import Try

# Flag dest -> config key; repeatable flags collect into lists.
_RUN_FLAGS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (
        ("-f", "--file"),
        "files",
        {
            "action": "append",
            "metavar": "PATH",
            "help": "manifest file or directory (recursive; repeatable)",
        },
    ),
    (
        ("--kubeconfig",),
        "kubeconfig",
        {"metavar": "PATH", "help": "read from this cluster's API server"},
    ),
    (("--context",), "context", {"help": "kubeconfig context (default: current-context)"}),
    (
        ("--in-cluster",),
        "in-cluster",
        {"action": "store_const", "const": True, "help": "use the pod's service account"},
    ),
    (("--namespace",), "namespace", {"help": "watch only this namespace (default: all)"}),
    (
        ("--label-selector",),
        "label-selector",
        {"help": "watch only objects matching this selector"},
    ),
    (
        ("--mode",),
        "mode",
        {
            "choices": cfgmod.MODES,
            "help": "local: loopback service CIDR, no routes; node: AnyIP on the host",
        },
    ),
    (
        ("--cluster-domain",),
        "cluster-domain",
        {"metavar": "DOMAIN", "help": "default cluster.local"},
    ),
    (
        ("--service-cidr",),
        "service-cidr",
        {
            "action": "append",
            "metavar": "CIDR",
            "help": "repeatable; default 127.77.0.0/16 in local mode",
        },
    ),
    (("--node-name",), "node-name", {"metavar": "NAME"}),
    (("--node-ip",), "node-ip", {"action": "append", "metavar": "IP", "help": "repeatable"}),
    (
        ("--nodeport-range",),
        "nodeport-range",
        {"metavar": "LOW-HIGH", "help": "default 30000-32767"},
    ),
    (("--proxy",), "proxy", {"choices": ("on", "off"), "help": "the L4 service proxy"}),
    (("--ingress-http",), "ingress-http", {"metavar": "HOST:PORT|off"}),
    (("--ingress-https",), "ingress-https", {"metavar": "HOST:PORT|off"}),
    (("--dns",), "dns", {"metavar": "HOST:PORT|off"}),
    (("--admin",), "admin", {"metavar": "HOST:PORT|off", "help": "default 127.0.0.1:10256"}),
    (("--log-format",), "log-format", {"choices": cfgmod.LOG_FORMATS}),
    (("--log-level",), "log-level", {"choices": cfgmod.LOG_LEVELS}),
    (
        ("--drain-seconds", "--shutdown-grace"),  # the old name first: errors name the new one
        "shutdown-grace",
        {"metavar": "S", "help": "how long open connections may finish at SIGTERM (default 30)"},
    ),
    (
        ("--workers",),
        "workers",
        {
            "metavar": "N|auto",
            "help": "processes serving the listeners (default auto: one per core)",
        },
    ),
    (
        ("--nodeport-addresses",),
        "nodeport-addresses",
        {"action": "append", "metavar": "IP", "help": "where NodePorts listen (repeatable)"},
    ),
    (
        ("--lb-policy",),
        "lb-policy",
        {
            "choices": cfgmod.LB_POLICIES,
            "help": "default balancing (per service: netplane.io/lb-policy)",
        },
    ),
    (
        ("--connect-timeout",),
        "connect-timeout",
        {"metavar": "S", "help": "per endpoint try (default 2)"},
    ),
    (("--tcp-idle-seconds",), "tcp-idle-seconds", {"metavar": "S", "help": "default 3600"}),
    (
        ("--tcp-relay",),
        "tcp-relay",
        {"choices": cfgmod.TCP_RELAYS, "help": "splice (zero-copy, Linux; default) or protocol"},
    ),
    (
        ("--l4-datapath",),
        "l4-datapath",
        {
            "choices": cfgmod.L4_DATAPATHS,
            "help": "node mode: nftables serves service ports in the kernel; auto keeps "
            "those that need the proxy in user space (default userspace)",
        },
    ),
    (
        ("--keep-rules-on-exit",),
        "keep-rules-on-exit",
        {"choices": ("on", "off"), "help": "leave the nftables rules serving at exit"},
    ),
    (
        ("--udp-idle-seconds",),
        "udp-idle-seconds",
        {"metavar": "S", "help": "UDP flow idle timeout (default 30)"},
    ),
    (
        ("--manifest-poll-seconds",),
        "manifest-poll-seconds",
        {"metavar": "S", "help": "how often manifest files are checked for changes (default 1)"},
    ),
    (
        ("--pod-endpoints",),
        "pod-endpoints",
        {
            "choices": ("on", "off"),
            "help": "derive endpoints from Pods (default: on without an API server)",
        },
    ),
    # Ingress
    (("--ingress-class",), "ingress-class", {"metavar": "NAME", "help": "default netplane"}),
    (
        ("--default-certificate",),
        "default-certificate",
        {"metavar": "NAMESPACE/NAME", "help": "tls Secret served when no SNI name matches"},
    ),
    (
        ("--ingress-access-log",),
        "ingress-access-log",
        {"metavar": "stdout|stderr|PATH|off", "help": "one line per request (default stdout)"},
    ),
    (
        ("--ingress-hsts",),
        "ingress-hsts",
        {"metavar": "VALUE|off", "help": "Strict-Transport-Security on HTTPS answers"},
    ),
    (
        ("--ingress-max-header-bytes",),
        "ingress-max-header-bytes",
        {"metavar": "N", "help": "431 above this (default 32768)"},
    ),
    (
        ("--ingress-header-timeout",),
        "ingress-header-timeout",
        {"metavar": "S", "help": "default 60"},
    ),
    (("--ingress-body-timeout",), "ingress-body-timeout", {"metavar": "S", "help": "default 60"}),
    (
        ("--ingress-keepalive-timeout",),
        "ingress-keepalive-timeout",
        {"metavar": "S", "help": "default 75"},
    ),
    (
        ("--ingress-tls-resumption",),
        "ingress-tls-resumption",
        {"choices": ("on", "off"), "help": "TLS session tickets (default on)"},
    ),
    (
        ("--ingress-h2c",),
        "ingress-h2c",
        {
            "choices": ("on", "off"),
            "help": "HTTP/2 with prior knowledge on plain HTTP (default on)",
        },
    ),
    (
        ("--ingress-max-connections-per-client",),
        "ingress-max-connections-per-client",
        {
            "metavar": "N",
            "help": "open connections one client IP may have; beyond, new ones are closed"
            " (default 0: no limit)",
        },
    ),
    (
        ("--gateway-address",),
        "gateway-address",
        {
            "action": "append",
            "metavar": "IP",
            "help": "where Gateways without spec.addresses listen (repeatable; default"
            " 127.0.0.1 in local mode, the node addresses in node mode)",
        },
    ),
    (
        ("--publish-address",),
        "publish-address",
        {
            "action": "append",
            "metavar": "ADDR[,ADDR]",
            "help": "IPs or names written to Ingress status (default: the node's address)",
        },
    ),
    # DNS
    (("--dns-ttl",), "dns-ttl", {"metavar": "S", "help": "TTL of cluster records (default 5)"}),
    (
        ("--dns-upstreams",),
        "dns-upstreams",
        {
            "action": "append",
            "metavar": "IP[:PORT]",
            "help": "where other names go (repeatable; default: /etc/resolv.conf)",
        },
    ),
    (
        ("--dns-allow",),
        "dns-allow",
        {
            "action": "append",
            "metavar": "CIDR",
            "help": "clients that may recurse (default: loopback, service/pod CIDRs, node IPs)",
        },
    ),
    (
        ("--pod-cidr",),
        "pod-cidr",
        {"action": "append", "metavar": "CIDR", "help": "pod addresses (DNS reverse zones, allow)"},
    ),
    (
        ("--dns-pods",),
        "dns-pods",
        {"choices": cfgmod.DNS_POD_MODES, "help": "pod A records (default disabled)"},
    ),
    (
        ("--dns-udp-size",),
        "dns-udp-size",
        {"metavar": "BYTES", "help": "largest UDP reply (default 1232)"},
    ),
    (
        ("--dns-max-tcp-connections",),
        "dns-max-tcp-connections",
        {
            "metavar": "N",
            "help": "open DNS-over-TCP connections; beyond, new ones are closed (default 512)",
        },
    ),
]


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file; flags override it")
    for names, key, kw in _RUN_FLAGS:
        p.add_argument(*names, dest=key.replace("-", "_"), **kw)


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cwd = Path.cwd()
    for names, key, _ in _RUN_FLAGS:
        value = getattr(args, key.replace("-", "_"), None)
        if value is None:
            continue
        fname, conv = cfgmod.KEYS[key]
        out[fname] = conv(value, names[-1], cwd)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="netplane",
        description="Service proxy, ingress and cluster DNS for Kubernetes-style clusters.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the data plane from manifests or an API server")
    _add_run_flags(run)
    demo = sub.add_parser("demo", help="run the built-in example (no cluster, no root)")
    _add_run_flags(demo)
    demo.add_argument(
        "--probe",
        action="store_true",
        help="try every command the demo prints, one line each, then stop; exit 1 if one fails",
    )
    check = sub.add_parser("check", help="validate manifests; one line per problem")
    check.add_argument("-f", "--file", dest="files", action="append", metavar="PATH", required=True)
    check.add_argument("--service-cidr", action="append", metavar="CIDR")
    check.add_argument("--nodeport-range", metavar="LOW-HIGH")
    # DNS: discovery by environment variables
    env = sub.add_parser("env", help="print the service variables kubelet gives a pod of NS")
    env.add_argument("--namespace", required=True, metavar="NS", help="the pod's namespace")
    env.add_argument("-f", "--file", dest="files", action="append", metavar="PATH")
    env.add_argument("--kubeconfig", metavar="PATH")
    env.add_argument("--context")
    env.add_argument("--in-cluster", action="store_const", const=True)
    env.add_argument("--config", metavar="FILE", help="YAML config file; flags override it")
    env.add_argument("--mode", choices=cfgmod.MODES, help="as for run: it picks the service CIDR")
    env.add_argument("--service-cidr", action="append", metavar="CIDR")
    env.add_argument("--timeout", type=float, default=30.0, metavar="S", help="sync wait (30)")
    _add_explain(sub)
    sub.add_parser("version", help="print the version")
    return p


# Run flags that change what an offline explanation answers (as `netplane run` would).
_EXPLAIN_RUN_FLAGS = (
    "kubeconfig", "context", "in-cluster", "namespace", "label-selector", "mode",
    "cluster-domain", "service-cidr", "node-name", "nodeport-range", "nodeport-addresses",
    "proxy", "ingress-http", "ingress-https", "ingress-class", "default-certificate",
    "gateway-address", "lb-policy", "l4-datapath", "pod-endpoints", "dns", "dns-ttl",
    "pod-cidr", "dns-pods",
)  # fmt: skip


def _add_explain(sub: Any) -> None:
    """``netplane explain``: why a URL, a service address or a DNS name gets its answer."""
    ex = sub.add_parser(
        "explain",
        help="why a URL, IP:PORT or DNS name gets the answer it gets",
        description="Ask a running netplane (--admin) or, with -f/--kubeconfig, build the"
        " state here: which rule, service port or record answers TARGET, and why.",
    )
    ex.add_argument("target", metavar="TARGET", help="http[s]://HOST/PATH, IP:PORT[/tcp|udp] or a DNS name or address")  # fmt: skip
    ex.add_argument("type", nargs="?", metavar="TYPE", help="DNS record type (A, AAAA, SRV, PTR ...)")  # fmt: skip
    ex.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    ex.add_argument("--method", default="GET", help="HTTP method (default GET)")
    ex.add_argument("--tls", action="store_true", help="as over HTTPS: also which certificate SNI picks")  # fmt: skip
    ex.add_argument("--client-ip", default="127.0.0.1", metavar="IP", help="the client address allowlists see")  # fmt: skip
    ex.add_argument("-o", "--output", choices=("text", "json"), default="text")
    ex.add_argument("--admin", metavar="HOST:PORT", help=f"the running netplane to ask (default 127.0.0.1:{DEMO_ADMIN_PORT})")  # fmt: skip
    ex.add_argument("--config", metavar="FILE", help="YAML config file (offline); flags override it")  # fmt: skip
    ex.add_argument("-f", "--file", dest="files", action="append", metavar="PATH",
                    help="explain offline from these manifests (repeatable)")  # fmt: skip
    ex.add_argument("--timeout", type=float, default=30.0, metavar="S", help="offline: sync wait (30)")  # fmt: skip
    for names, key, kw in _RUN_FLAGS:
        if key in _EXPLAIN_RUN_FLAGS:
            ex.add_argument(*names, dest=key.replace("-", "_"), **kw)


def demo_manifests() -> str:
    """The directory of the built-in example manifests (installed with the package)."""
    return str(resources.files("netplane") / "demo")


def _setup_logging(cfg: cfgmod.Config) -> None:
    from netplane.logs import setup_logging

    setup_logging(cfg.log_level, cfg.log_format)


def _run(args: argparse.Namespace, *, demo: bool) -> int:
    import uvloop

    from netplane.daemon import serve

    flags = _flag_values(args)
    if demo:
        # Local mode even as root: the demo changes no route on the host, and
        # its ClusterIPs are the loopback ones that `netplane env --mode local` prints.
        if flags.get("mode", "local") != "local":
            raise ConfigError("netplane demo runs in local mode only; use run for --mode node")
        flags["mode"] = "local"
        if "files" not in flags:
            flags["files"] = (demo_manifests(),)
            # Gateway API: the example Gateway's port is in its manifest; when it is
            # taken on 127.0.0.1, the Gateway binds another loopback address instead.
            flags.setdefault("gateway_addresses", (demo_gateway_address(),))
        # Ingress: free loopback ports, so the demo never collides with anything
        flags.setdefault("ingress_http", cfgmod.Listen("127.0.0.1", 0))
        flags.setdefault("ingress_https", cfgmod.Listen("127.0.0.1", 0))
        flags.setdefault("dns", demo_dns_listen())  # DNS
        # The admin server too: a second demo, or a running netplane, keeps its port.
        flags.setdefault("admin", _demo_listen(DEMO_ADMIN_PORT, udp=False))
        # One process: the greeting lists the listeners the planes bound.
        flags.setdefault("workers", 1)
        if args.probe:  # stdout is the probe's report, one line per command
            flags.setdefault("ingress_access_log", None)
    cfg = cfgmod.load(args.config, flags)
    _setup_logging(cfg)

    def reload_config() -> cfgmod.Config:
        return cfgmod.load(args.config, flags)

    on_ready = _Demo(probe=args.probe) if demo else None
    code = uvloop.run(
        serve(cfg, reload_config=reload_config, on_ready=on_ready, apply_logging=_setup_logging)
    )
    return code or (on_ready.exit_code if on_ready is not None else 0)


class _Demo:
    """``on_ready`` of the demo: start its backends, greet, and with ``--probe`` try every command.

    The probe runs as a task beside the demo. When it is done, the process
    sends itself SIGTERM, the stop signal that Ctrl-C's SIGINT also is, so the
    demo shuts down the way it always does; ``exit_code`` then says whether
    every command held.
    """

    def __init__(self, probe: bool) -> None:
        self.probe = probe
        self.exit_code = 0
        self._task: asyncio.Task | None = None

    async def __call__(self, dp: Any) -> Callable[[], Awaitable[None]]:
        from netplane.demo_backends import DemoBackends
        from netplane.demo_probe import tries

        backends = DemoBackends()
        started = await backends.start(dp.table) if dp.config.proxy else []
        commands = tries(dp)
        print(demo_text(dp, started, commands), flush=True)
        if self.probe:
            self.exit_code = 1  # until every probe has passed
            self._task = asyncio.create_task(self._probe(commands), name="demo probe")

        async def close() -> None:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            await backends.close()

        return close

    async def _probe(self, commands: Sequence[Try]) -> None:
        from netplane.demo_probe import probe

        print("", "Probing every command above from inside the demo:", sep="\n", flush=True)
        try:
            results = await probe(commands)
            for r in results:
                print(r.line(), flush=True)
            failed = sum(not r.ok for r in results)
            print(f"{len(results) - failed} of {len(results)} probes passed.", flush=True)
            self.exit_code = 1 if failed or not results else 0
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # stop the demo as Ctrl-C does


def demo_text(dp: Any, backends: list[str], tries: Sequence[Try]) -> str:
    """The demo's greeting: the service table, its backends and commands to try."""
    out = ["", "netplane demo is running. Services in the table:"]
    for entry in sorted(dp.table, key=lambda e: e.key):
        svc = entry.service
        ips = ", ".join(svc.cluster_ips) or ("headless" if svc.headless else svc.external_name)
        ports = (
            ", ".join(
                f"{p.port}/{p.protocol} -> "
                + (
                    ", ".join(
                        hostport(b.address, b.port) + ("" if b.ready else " (not ready)")
                        for b in p.backends
                    )
                    or "no endpoints"
                )
                for p in entry.ports
            )
            or "no ports"
        )
        out.append(f"  {svc.key.namespace}/{svc.key.name}  {svc.type}  {ips}  {ports}")
    if backends:
        out += ["", "Demo backends (started by the demo on loopback):"]
        out += [f"  {line}" for line in backends]
    out += ["", "Try:"]
    out += [f"  {t.command}" for t in tries]
    if dp.admin is not None:
        dashboard = f"http://{hostport(dp.config.admin.host, dp.admin.port)}/ui"
        out += ["", f"Dashboard (live, read-only; open it in a browser): {dashboard}"]
    out += [
        "",
        f"Edit the manifests under {', '.join(dp.config.files)} and watch the state follow;"
        " Ctrl-C stops.",
    ]
    return "\n".join(out)


# DNS
DEMO_DNS_PORT = 10053
DEMO_ADMIN_PORT = 10256  # the admin default, which the README's examples show


def demo_dns_listen(port: int = DEMO_DNS_PORT) -> cfgmod.Listen:
    """127.0.0.1:10053 for the demo's DNS when both its UDP and TCP ports are free, else a free one."""
    return _demo_listen(port, udp=True)


def _demo_listen(port: int, *, udp: bool) -> cfgmod.Listen:
    """127.0.0.1:port when it is free (TCP, and UDP too if asked), else port 0: a free one."""
    return cfgmod.Listen("127.0.0.1", port if _free("127.0.0.1", port, udp=udp) else 0)


# Gateway API
DEMO_GATEWAY_PORT = 10088  # the listener port of the Gateway in netplane/demo/gateway.yaml
# Where the demo Gateway moves when its port is taken on 127.0.0.1 (the demo's
# backends are on 127.0.1.0/24 to 127.0.4.0/24).
DEMO_GATEWAY_FALLBACKS = tuple(f"127.0.5.{i}" for i in range(1, 17))


def demo_gateway_address(port: int = DEMO_GATEWAY_PORT) -> str:
    """127.0.0.1 when the demo Gateway's port is free there, else the first fallback where it is.

    A Gateway's port is part of its spec, so a second demo cannot take a free
    port as its DNS and admin server do; it takes another loopback address.
    """
    for address in ("127.0.0.1", *DEMO_GATEWAY_FALLBACKS):
        if _free(address, port, udp=False):
            return address
    return "127.0.0.1"  # taken everywhere: the Gateway's status says so


def _free(host: str, port: int, *, udp: bool) -> bool:
    """host:port can be bound over TCP (and UDP too if asked)."""
    import socket

    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM) if udp else (socket.SOCK_STREAM,):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:  # as the servers bind: TIME_WAIT does not count
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _env(args: argparse.Namespace) -> int:
    """``netplane env``: the sources' Services as kubelet's variables for one namespace."""
    import asyncio

    from netplane.daemon import sources_for
    from netplane.dataplane import Dataplane
    from netplane.envvars import namespace_env, shell_exports

    cwd = Path.cwd()
    flags: dict[str, Any] = {"admin": None, "proxy": False, "dns": None}
    for key in ("files", "kubeconfig", "context", "in-cluster", "mode", "service-cidr"):
        value = getattr(args, key.replace("-", "_"))
        if value is not None:
            fname, conv = cfgmod.KEYS[key]
            flags[fname] = conv(value, f"--{key}" if key != "files" else "-f", cwd)
    cfg = cfgmod.load(args.config, flags)
    # Every namespace is read: the default namespace's kubernetes Service is included too.
    cfg = cfgmod.build({}, {**_config_values(cfg), "namespace": None, "log_level": "warning"})
    _setup_logging(cfg)
    sources = sources_for(cfg)
    if not sources:
        raise ConfigError("no source: give -f PATH, --kubeconfig PATH or --in-cluster")

    async def collect() -> list | None:
        dp = Dataplane(cfg, sources=sources, serve=False)
        await dp.start()
        try:
            await asyncio.wait_for(dp.wait_ready(), args.timeout)
        except TimeoutError:
            return None
        finally:
            await dp.stop(0)
        return list(dp.state.objects("Service"))

    services = asyncio.run(collect())
    if services is None:
        print(f"netplane: the sources did not sync within {args.timeout:g} s", file=sys.stderr)
        return 1
    sys.stdout.write(shell_exports(namespace_env(services, args.namespace)))
    return 0


def _explain(args: argparse.Namespace) -> int:
    """``netplane explain``: print the explanation; exit 1 when the target matches nothing."""
    import json

    from netplane.explain import parse_header, parse_target, render

    headers = [parse_header(h) for h in args.header]
    parse_target(args.target, qtype=args.type, tls=args.tls)  # a bad target fails here, at once
    offline = bool(args.files or args.kubeconfig or args.in_cluster)
    if offline:
        doc = _explain_offline(args, headers)
        if doc is None:
            print(f"netplane: the sources did not sync within {args.timeout:g} s", file=sys.stderr)
            return 1
    else:
        from netplane.explain.admin import ask

        admin = args.admin or f"127.0.0.1:{DEMO_ADMIN_PORT}"
        try:
            doc = ask(admin, args.target, qtype=args.type, method=args.method,
                      headers=args.header, tls=args.tls, client_ip=args.client_ip)  # fmt: skip
        except OSError as e:
            why = getattr(e, "reason", None) or e
            print(f"netplane explain: cannot ask {admin}: {why}; start netplane there, or"
                  " give -f PATH or --kubeconfig to explain offline", file=sys.stderr)  # fmt: skip
            return 2
    if args.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render(doc))
    return 0 if doc.get("found") else 1


def _explain_offline(args: argparse.Namespace, headers: list[tuple[str, str]]) -> dict | None:
    """Build the state from the sources, as ``netplane run`` would, and explain from it."""
    from netplane.daemon import sources_for
    from netplane.dataplane import Dataplane
    from netplane.explain import Views, explain

    cwd = Path.cwd()
    flags: dict[str, Any] = {"admin": None, "log_level": "error"}
    if args.files:
        flags["files"] = cfgmod.KEYS["files"][1](args.files, "-f", cwd)
    for names, key, _ in _RUN_FLAGS:
        value = getattr(args, key.replace("-", "_"), None)
        if key in _EXPLAIN_RUN_FLAGS and value is not None:
            fname, conv = cfgmod.KEYS[key]
            flags[fname] = conv(value, names[-1], cwd)
    cfg = cfgmod.load(args.config, flags)
    cfg = cfgmod.build({}, {**_config_values(cfg), "admin": None, "log_level": "error"})
    _setup_logging(cfg)
    sources = sources_for(cfg)

    async def run() -> dict | None:
        dp = Dataplane(cfg, sources=sources, serve=False)
        await dp.start()
        try:
            await asyncio.wait_for(dp.wait_ready(), args.timeout)
            return explain(Views(dp), args.target, qtype=args.type, method=args.method,
                           headers=headers, tls=args.tls, client_ip=args.client_ip)  # fmt: skip
        except TimeoutError:
            return None
        finally:
            await dp.stop(0)

    return asyncio.run(run())


def _config_values(cfg: cfgmod.Config) -> dict[str, Any]:
    import dataclasses

    return {
        f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "config_file"
    }


def _check(args: argparse.Namespace) -> int:
    from netplane.check import check_paths

    cwd = Path.cwd()
    kw: dict[str, Any] = {}
    if args.service_cidr:
        kw["service_cidrs"] = cfgmod.KEYS["service-cidr"][1](
            args.service_cidr, "--service-cidr", cwd
        )
    if args.nodeport_range:
        kw["node_port_range"] = cfgmod.KEYS["nodeport-range"][1](
            args.nodeport_range, "--nodeport-range", cwd
        )
    problems = check_paths(args.files, **kw)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"netplane {__version__} (Python {platform.python_version()})")
            return 0
        if args.command == "check":
            return _check(args)
        if args.command == "env":  # DNS
            return _env(args)
        if args.command == "explain":
            return _explain(args)
        return _run(args, demo=args.command == "demo")
    except ConfigError as e:
        print(f"netplane: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
