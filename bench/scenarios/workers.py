"""``workers``: what ``--workers N`` adds, for the ingress and for DNS, against one worker.

Both sides are netplane with the ingress (HTTP, one Ingress rule, access log
on) and DNS (the dns scenario's names, 1,000 services) in one daemon; only
``--workers`` differs: N (one per usable core) against 1. The daemon is not
pinned, so both sides may use every core; the load generators (wrk
``-t1 -c50`` keep-alive, dnsperf ``-c 10 -T 1`` on the 90% A / 10% SRV mix)
stay on the load core. On a 2-core machine the load generator therefore
takes one of the two cores the second worker would use, and the ratio shows
what N workers gain beside a busy client, not a bare 2x.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from bench.harness import NETPLANE, Context, Metric, Proc, Scenario, netplane_cmd
from bench.scenarios.dns import dns_answers, manifests, names, parse_dnsperf, program, query_files
from bench.scenarios.ingress import LISTEN, IngressBench, objects
from bench.scenarios.l4 import parse_wrk
from netplane.testing.ports import free_udp_tcp_port

ONE = "netplane 1 worker"
FULL_SERVICES, QUICK_SERVICES = 1000, 100


def usable_cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class WorkerScaling(Scenario):
    name = "workers"
    title = "--workers N against one worker: ingress keep-alive req/s and DNS QPS"
    description = (
        "netplane with the ingress (1 rule, access log on) and DNS (1,000 services) in one daemon, "
        "--workers N (one per core) against --workers 1; the daemon unpinned, wrk and dnsperf "
        "on the load core."
    )
    sides = (NETPLANE, ONE)
    peer_note = (
        "The peer is netplane itself with one worker; the ratio is what the extra workers add. "
        "On 2 cores the load generator shares the machine with the second worker."
    )
    packages = ("wrk", "dnsperf", "nginx")

    def __init__(self) -> None:
        self.ingress = IngressBench()
        self.work: Any = None

    def services(self, ctx: Context) -> int:
        return QUICK_SERVICES if ctx.quick else FULL_SERVICES

    def seconds(self, ctx: Context) -> float:
        return 1.0 if ctx.quick else 10.0

    def metrics(self, ctx: Context) -> list[Metric]:
        return [
            Metric("http_rps", "req/s", "higher", "ingress keep-alive HTTP, 1 rule"),
            Metric("dns_qps", "QPS", "higher", "DNS, 90% A / 10% SRV"),
        ]

    def params(self, ctx: Context) -> dict[str, Any]:
        return {
            "workers": usable_cores(),
            "services": self.services(ctx),
            "wrk": f"-t1 -c50 -d{self.seconds(ctx):g}s",
            "dnsperf": f"-c 10 -T 1 -l {self.seconds(ctx):g}",
            "runs": "1 per side (quick)" if ctx.quick else f"{ctx.runs} per side",
        }

    def setup(self, ctx: Context) -> None:
        program("dnsperf")
        self.ingress.setup(ctx)  # the HTTP backend and the certificate
        self.work = work = ctx.workdir / "workers"
        (work / "manifests").mkdir(parents=True, exist_ok=True)
        n = self.services(ctx)
        objs = [*manifests(n)["items"], *objects(1, self.ingress.backend_addr, *self.ingress.cert)]
        (work / "manifests" / "objects.json").write_text(
            json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
        )
        (work / "mix.txt").write_text(query_files(n)["mix"])

    def _start(self, ctx: Context, side: str, index: int) -> tuple[Proc, int, int]:
        work = self.work
        http_port, admin = ctx.free_port(), ctx.free_port()
        dns_port = free_udp_tcp_port()
        workers = 1 if side == ONE else usable_cores()
        argv = [
            *netplane_cmd(), "run", "-f", str(work / "manifests"), "--mode", "local",
            "--service-cidr", "127.77.0.0/16", "--proxy", "off",
            "--ingress-http", f"{LISTEN}:{http_port}", "--ingress-https", "off",
            "--ingress-access-log", str(work / f"access-{workers}-{index}.log"),
            "--dns", f"127.0.0.1:{dns_port}", "--admin", f"127.0.0.1:{admin}",
            "--log-level", "warning", "--shutdown-grace", "1", "--workers", str(workers),
        ]  # fmt: skip
        proc = ctx.procs.start(
            argv, name=f"netplane-{workers}w", log=work / f"netplane-{workers}-{index}.log"
        )
        ctx.wait_http(f"http://127.0.0.1:{admin}/readyz", 200, timeout=120, proc=proc)
        svc, ns, _ = names(1)[0]
        deadline = time.monotonic() + 30
        while dns_answers(dns_port, f"{svc}.{ns}.svc.cluster.local") != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{side} does not answer DNS; see {proc.log}")
            time.sleep(0.05)
        return proc, http_port, dns_port

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        if ctx.quick and index > 0:
            return {}
        secs = self.seconds(ctx)
        proc, http_port, dns_port = self._start(ctx, side, index)
        try:
            url, host = f"http://{LISTEN}:{http_port}/", "h0.bench.test"
            if not ctx.quick:
                self.ingress._wrk(ctx, url, host, 1)  # warm-up: pools and caches
            rps, total, errors = parse_wrk(self.ingress._wrk(ctx, url, host, secs))
            if errors > 0.01 * max(total, 1):
                raise RuntimeError(f"wrk through {side}: {errors} errors in {total} requests")
            self._dnsperf(ctx, dns_port, "-n", "1", name="warm")
            qps = parse_dnsperf(self._dnsperf(ctx, dns_port, "-l", f"{secs:g}", name="mix"))
            return {"http_rps": rps, "dns_qps": qps["qps"]}
        finally:
            ctx.procs.stop(proc)

    def _dnsperf(self, ctx: Context, port: int, *extra: str, name: str) -> str:
        out = self.work / f"dnsperf-{name}.out"
        out.write_text("")
        argv = [
            *ctx.pin("load"), program("dnsperf"), "-s", "127.0.0.1", "-p", str(port),
            "-d", str(self.work / "mix.txt"), "-c", "10", "-T", "1", *extra,
        ]  # fmt: skip
        proc = ctx.procs.start(
            argv, name=f"dnsperf-{name}", log=self.work / "dnsperf.log", stdout=out
        )
        rc = ctx.procs.wait(proc, timeout=120)
        if rc != 0:
            raise RuntimeError(f"dnsperf exited with {rc}: {out.read_text()[-300:]}")
        return out.read_text()

    def teardown(self, ctx: Context) -> None:
        self.ingress.teardown(ctx)
