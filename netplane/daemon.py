"""The long-running process behind ``netplane run`` and ``netplane demo``.

It builds the sources the config names, runs a :class:`Dataplane` until
SIGTERM or SIGINT, then stops it with the configured drain time. SIGHUP
re-reads the config file (log level and format apply at once; settings
that need new sources or listeners are reported as needing a restart) and
makes every source re-read its input.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import resource
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from netplane import __version__
from netplane.addresses import LocalRoutes
from netplane.config import Config
from netplane.dataplane import Dataplane
from netplane.errors import ConfigError, NetplaneError
from netplane.l4.node_routes import NodeRoutes
from netplane.sources import Source

if TYPE_CHECKING:
    from netplane.ports import Claims
    from netplane.supervisor import WorkerPool

log = logging.getLogger("netplane.daemon")

# Settings that SIGHUP can apply in place; the rest need a restart.
_GC_PAUSE_LIMIT = 60.0
_HOT_SETTINGS = {"log_level", "log_format", "config_file", "l4_datapath"}


def sources_for(cfg: Config) -> list[Source]:
    """The sources a config asks for: manifest files, the API server, or both."""
    sources: list[Source] = []
    if cfg.files:
        from netplane.sources.manifests import ManifestSource

        sources.append(ManifestSource(cfg.files, poll_interval=cfg.manifest_poll_seconds))
    if cfg.uses_api:
        from netplane.sources.kube import KubeSource, in_cluster_config, load_kubeconfig

        cluster = (
            in_cluster_config() if cfg.in_cluster else load_kubeconfig(cfg.kubeconfig, cfg.context)
        )
        # Only the kinds the enabled planes read (no Secrets without the ingress;
        # Nodes only when we know which one is ours), logged once at start.
        sources.append(KubeSource.for_config(cluster, cfg))
    return sources


async def serve(
    cfg: Config,
    *,
    reload_config: Callable[[], Config] | None = None,
    on_ready: Callable[[Dataplane], Awaitable[Callable[[], Awaitable[None]] | None]] | None = None,
    apply_logging: Callable[[Config], None] | None = None,
) -> int:
    """Run until a stop signal; return the process exit code.

    ``on_ready`` runs once the table is built; it may return an async
    cleanup that runs at shutdown (the demo's backends use this).
    """
    sources = sources_for(cfg)
    if not sources:
        raise ConfigError("no source: give -f PATH, --kubeconfig PATH or --in-cluster")
    raise_file_limit()
    workers = cfg.effective_workers
    if workers > 1:
        cfg = pick_free_ports(cfg)  # every worker must bind the same port
        cfg, claims = claim_ports(cfg)  # and no other process may hold it
    # One process: the Dataplane runs the planes. --workers N: they run in the
    # worker processes, and this one keeps the sources, the admin server and
    # (node mode) the routes.
    dp = Dataplane(cfg, sources=sources, serve=workers == 1)
    pool = _worker_pool(dp, workers, claims) if workers > 1 else None
    status = _ingress_status_for(cfg, dp, sources)  # Ingress status: only where the sources run
    gateway_status = _gateway_status_for(cfg, dp, sources)  # Gateway API status: likewise
    cleanups: list[Callable[[], Awaitable[None]]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    kernel = await kernel_datapath_for(cfg, dp)  # raises ConfigError if nftables cannot be had

    tasks: set[asyncio.Task] = set()

    def on_hup() -> None:
        nonlocal cfg
        log.info("SIGHUP: re-reading config and manifests")
        if reload_config is not None:
            try:
                new = reload_config()
            except NetplaneError as e:
                log.error("config reload failed, keeping the running config: %s", e)
            else:
                restart = [
                    f.name
                    for f in dataclasses.fields(Config)
                    if f.name not in _HOT_SETTINGS and getattr(new, f.name) != getattr(cfg, f.name)
                ]
                if restart:
                    log.warning("changed settings need a restart to apply: %s", ", ".join(restart))
                if apply_logging is not None:
                    apply_logging(new)
                if pool is not None:
                    pool.reconfigure_logging(new.log_level, new.log_format)
                if new.l4_datapath != cfg.l4_datapath:
                    if kernel is not None:
                        tasks.add(t := loop.create_task(kernel.set_mode(new.l4_datapath)))
                        t.add_done_callback(tasks.discard)
                    else:
                        log.warning("--l4-datapath applies in node mode with the proxy on only")
                cfg = new
        dp.reload()

    async def run_cleanups() -> None:
        for cleanup in cleanups:
            await cleanup()

    def remove_signal_handlers() -> None:  # from then on a second Ctrl-C cuts the drain short
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    if pool is not None:
        pool.on_failure = stop.set  # a worker that cannot start stops the daemon
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        # Everything started here stops in reverse order, whatever fails on the way.
        async with contextlib.AsyncExitStack() as stack:
            log.info(
                "netplane %s starting: mode %s, service CIDR %s, sources %s, %s",
                __version__,
                cfg.mode,
                ", ".join(str(n) for n in cfg.effective_service_cidrs),
                ", ".join(s.name for s in sources),
                f"{workers} worker processes" if workers > 1 else "one process",
            )
            # on_ready's cleanups (the demo's backends) go last, once the planes have drained
            stack.push_async_callback(run_cleanups)
            if pool is not None and cfg.proxy and cfg.mode == "node":
                node_routes = NodeRoutes(LocalRoutes(), cfg.effective_service_cidrs)
                await node_routes.start(dp)
                stack.push_async_callback(node_routes.close)
            if kernel is not None:  # node mode: the ports nftables serves (all modes: see it)
                await kernel.start()
                stack.push_async_callback(kernel.close)
            # The initial sync allocates objects that all live on; collecting
            # while they arrive only rescans them (a third of the sync's CPU at
            # 10k services). Collection resumes once the table is built, or after
            # a minute if a source cannot sync (retries make cyclic garbage).
            gc.disable()
            loop.call_later(_GC_PAUSE_LIMIT, gc.enable)
            await dp.start()  # admin server, then the planes (one process), then the sources
            stack.push_async_callback(lambda: dp.stop(cfg.shutdown_grace))
            if pool is not None:
                await pool.start()  # each worker starts once the state is complete
                stack.push_async_callback(lambda: pool.close(cfg.shutdown_grace))
            if status is not None:  # Ingress status
                await status.start()
                stack.push_async_callback(status.close)
            if gateway_status is not None:  # Gateway API status
                await gateway_status.start()
                stack.push_async_callback(gateway_status.close)
            waiter = asyncio.create_task(_when_ready(dp, on_ready, cleanups))
            stack.callback(waiter.cancel)
            await stop.wait()
            dp.draining = True  # /readyz answers 503 from here on
            log.info("stopping: draining for up to %.0f s", cfg.shutdown_grace)
            remove_signal_handlers()
    finally:
        gc.enable()
        remove_signal_handlers()
    log.info("stopped")
    if pool is not None and pool.failure is not None:
        line, status = pool.failure
        if status == 2:
            raise ConfigError(line)  # the CLI prints it as its one line and exits 2
        return status
    return 0


async def kernel_datapath_for(cfg: Config, dp: Dataplane) -> Any:
    """Node mode's :class:`KernelDatapath`, wired into ``dp``; None in local mode or proxy off.

    ``--l4-datapath nftables`` without a usable ``nft`` stops the start
    (ConfigError); ``auto`` falls back to user space with one warning.
    ``userspace`` creates no table, and empties one an earlier run left
    (see ``KernelDatapath._full``).
    """
    if not cfg.proxy or cfg.mode != "node":
        if cfg.l4_datapath == "auto":
            log.info("--l4-datapath auto: %s; every service port is served in user space",
                     "the proxy is off" if not cfg.proxy else "local mode")  # fmt: skip
        return None
    from netplane.l4.kernel import KernelDatapath
    from netplane.l4.nft_apply import Nft, NftError

    nft = Nft.find()
    problem = None
    if nft is None:
        problem = "the nft command was not found (Debian's package nftables)"
    else:
        try:
            await nft.check()
        except NftError as e:
            problem = f"nft cannot read the ruleset (node mode needs CAP_NET_ADMIN): {e}"
    mode = cfg.l4_datapath
    if problem is not None:
        if mode == "nftables":
            raise ConfigError(f"--l4-datapath nftables: {problem}")
        if mode == "auto":
            log.warning("--l4-datapath auto: %s; every service port stays in user space", problem)
        nft = None
    elif mode != "userspace":
        log.info("--l4-datapath %s: %s", mode,
                 "every service port the kernel can serve goes to nftables" if mode == "nftables"
                 else "service ports that need no user-space feature go to nftables")  # fmt: skip
    kernel = KernelDatapath(
        dp,
        nft,
        mode=mode if nft is not None else "userspace",
        node_name=cfg.node_name,
        nodeport_addresses=cfg.effective_nodeport_addresses,
        service_cidrs=cfg.effective_service_cidrs,
        default_policy=cfg.lb_policy,
        keep_rules=cfg.keep_rules_on_exit,
    )
    dp.planes["nftables"] = kernel
    dp.ready_checks.append(lambda: kernel.synced)
    return kernel


def _ingress_status_for(cfg: Config, dp: Dataplane, sources: list[Source]) -> Any:
    if not cfg.uses_api:
        return None
    from netplane.sources.kube.status_writer import ingress_status_for

    return ingress_status_for(cfg, dp, sources)


def _gateway_status_for(cfg: Config, dp: Dataplane, sources: list[Source]) -> Any:
    if not cfg.uses_api:
        return None
    from netplane.sources.kube.gateway_status import gateway_status_for

    return gateway_status_for(cfg, dp, sources)


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``).

    The initial sync parses every object from JSON or YAML; those documents
    are garbage once the typed model holds the objects, but glibc keeps the
    freed pages mapped, so without this the resident size stays at the
    parsing peak for the life of the process.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def raise_file_limit() -> None:
    """Lift the soft open-files limit to the hard one: every listener and relayed
    connection is a descriptor, and local mode binds one socket per service port."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, e)


def _worker_pool(dp: Dataplane, workers: int, claims: Claims) -> WorkerPool:
    """The workers of ``--workers N``, wired into the owner's admin server."""
    from netplane.supervisor import WorkerPool

    pool = WorkerPool(dp, workers, claims=claims, preflight=lambda: check_l4_ports(dp.config, dp))
    dp.planes["workers"] = pool
    dp.before_scrape.append(pool.refresh_metrics)
    dp.remote_planes = pool.planes_state
    dp.ready_checks.append(lambda: pool.ready)
    return pool


def pick_free_ports(cfg: Config) -> Config:
    """Port 0 (any free port) made one concrete port, so that every worker binds the same."""
    from netplane.ports import free_port

    changes: dict[str, Any] = {}
    for name in ("ingress_http", "ingress_https", "dns"):
        listen = getattr(cfg, name)
        if listen is None or listen.port != 0:
            continue
        try:
            port = free_port(listen.host, udp_too=name == "dns")
        except OSError as e:
            raise ConfigError(
                f"{name.replace('_', '-')}: no free port on {listen.host}: {e}"
            ) from None
        changes[name] = dataclasses.replace(listen, port=port)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def claim_ports(cfg: Config) -> tuple[Config, Claims]:
    """Claim the ingress and DNS ports for ``--workers N`` before any worker binds them.

    The workers bind with SO_REUSEPORT, which would let them share a port
    with another netplane, or fail one by one on a port another program
    holds. A taken ingress port stops the start (:class:`PortTaken`, one line,
    exit status 2); a taken DNS port is logged and the rest serves, as with
    one process. See :mod:`netplane.ports`.
    """
    from netplane.ports import Claims, Listener, PortTaken

    claims = Claims()
    try:
        for name, listen in (
            ("ingress HTTP", cfg.ingress_http),
            ("ingress HTTPS", cfg.ingress_https),
        ):
            if listen is not None:
                claims.claim(Listener(name, listen.host, listen.port, "TCP"))
        if cfg.dns is not None:
            try:
                claims.claim_all(
                    [Listener("DNS", cfg.dns.host, cfg.dns.port, p) for p in ("UDP", "TCP")]
                )
            except PortTaken as e:
                log.error("%s; serving without DNS", e)
                cfg = dataclasses.replace(cfg, dns=None)
    except BaseException:
        claims.release()
        raise
    return cfg, claims


def check_l4_ports(cfg: Config, dp: Dataplane) -> None:
    """In local mode, raise :class:`PortTaken` if another process holds an L4 listener
    of the table, before ``--workers N`` bind them with SO_REUSEPORT.

    Run once, when the first sync is complete. Local mode's listeners are
    this netplane's own loopback addresses, so any holder there is another
    instance or a leftover. Node mode binds wildcard sockets that may fall
    back to per-address ones on a port the host uses (see
    :class:`L4Proxy`), so it is not probed. A listener taken later is the
    proxy's per-listener error at run time, logged once by each worker.
    """
    if not cfg.proxy or cfg.mode != "local":
        return
    from netplane.l4.picker import NodeInfo
    from netplane.l4.routes import frontends_of
    from netplane.ports import Listener, check

    node = NodeInfo(cfg.node_name, "")
    for entry in dp.table:
        frontends, _ = frontends_of(
            entry, {}, node, cfg.effective_nodeport_addresses, default_policy=cfg.lb_policy
        )
        key = entry.service.key
        for ip, port, proto in frontends:
            taken = check(Listener(f"Service {key.namespace}/{key.name}", ip, port, proto))
            if taken is not None and taken.in_use:
                raise taken


async def _when_ready(
    dp: Dataplane,
    on_ready: Callable[[Dataplane], Awaitable[Callable[[], Awaitable[None]] | None]] | None,
    cleanups: list[Callable[[], Awaitable[None]]],
) -> None:
    await dp.wait_ready()
    # What the initial sync loaded is long-lived; keeping it out of later
    # collections stops GC pauses of tens of ms landing on live changes. This
    # is the process owner's call, so embedders decide for themselves.
    gc.enable()
    gc.collect()
    gc.freeze()
    release_free_memory()
    if on_ready is not None:
        cleanup = await on_ready(dp)
        if cleanup is not None:
            cleanups.append(cleanup)
