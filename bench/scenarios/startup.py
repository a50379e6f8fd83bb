"""``startup``: process start to /readyz 200 with the demo manifests, and RSS then. No peer."""

from __future__ import annotations

from typing import Any

from bench.harness import Context, Metric, Scenario, netplane_cmd, vmrss_mb


class Startup(Scenario):
    name = "startup"
    title = "Start-up: process start to ready (demo manifests)"
    description = (
        "`netplane run -f examples/demo` (local mode; proxy, ingress and DNS off) is spawned "
        "pinned to the server core; the harness polls /readyz on the admin port until it "
        "answers 200, then reads VmRSS from /proc/PID/status. Interpreter start and imports "
        "are included."
    )
    peer_note = "Absolute figures."
    budget_s = 120.0

    def metrics(self, ctx: Context) -> list[Metric]:
        return [
            Metric("ready_s", "s", "lower", "process start → /readyz 200"),
            Metric("rss_mb", "MB", "lower", "VmRSS when ready"),
        ]

    def params(self, ctx: Context) -> dict[str, Any]:
        return {"manifests": "examples/demo"}

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        port = ctx.free_port()
        argv = [
            *ctx.pin("server"),
            *netplane_cmd(),
            "run",
            "-f",
            str(ctx.root / "examples" / "demo"),
            "--mode",
            "local",
            "--admin",
            f"127.0.0.1:{port}",
            "--dns",
            "off",
            "--proxy",
            "off",
            "--ingress-http",
            "off",
            "--ingress-https",
            "off",
            "--shutdown-grace",
            "1",
        ]
        proc = ctx.procs.start(
            argv, name="netplane", log=ctx.workdir / f"startup-{index}.log", cwd=ctx.workdir
        )
        try:
            ready = ctx.wait_http(f"http://127.0.0.1:{port}/readyz", 200, timeout=30, proc=proc)
            rss = vmrss_mb(proc.pid)
        finally:
            ctx.procs.stop(proc)
        return {"ready_s": ready, "rss_mb": rss}
