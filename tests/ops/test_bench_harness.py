"""The bench harness: report rows and plots from a synthetic result, run order, process stopping.

Fast and offline: no apt, no peers, no netplane process.
"""

from __future__ import annotations

import json
import re
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest

# bench/ is not installed: tests/conftest.py registers it by location
pytest.importorskip("matplotlib")  # the bench extra brings it; without it, skip

from bench import report
from bench.harness import (
    Context,
    Metric,
    ProcessManager,
    Scenario,
    run_scenario,
    schedule,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic() -> dict[str, Any]:
    return {
        "started_utc": "2026-01-01T00:00:00Z",
        "duration_s": 1.0,
        "quick": True,
        "runs": 3,
        "pinning": "load generators on CPU 0, servers and peers on CPU 1",
        "machine": {"cpu_model": "Test CPU", "cores": 2, "versions": {"netplane": "0.1.0"}},
        "scenarios": [
            {
                "name": "ingress",
                "title": "HTTP proxy",
                "description": "synthetic",
                "sides": ["netplane", "nginx"],
                "peer_note": "",
                "params": {},
                "metrics": [
                    {"name": "rps", "unit": "req/s", "better": "higher", "title": "requests"},
                    {"name": "p99", "unit": "ms", "better": "lower", "title": "latency p99"},
                ],
                "samples": {
                    "netplane": {"rps": [90.0, 100.0, 120.0], "p99": [2.0, 2.5, 1.5]},
                    "nginx": {"rps": [50.0, 40.0, 60.0], "p99": [1.0, 0.9, 1.1]},
                },
                "order": ["netplane", "nginx"] * 3,
                "series": {
                    "latency_percentiles": [
                        {"group": "50 conns", "side": s, "unit": "ms", "values": v}
                        for s, v in (
                            ("netplane", {"p50": 1.0, "p90": 1.5, "p99": 2.0}),
                            ("nginx", {"p50": 0.5, "p90": 0.8, "p99": 1.0}),
                        )
                    ]
                },
                "errors": [],
            },
            {
                "name": "prog",
                "title": "Programming",
                "sides": ["netplane"],
                "peer_note": "Absolute figures.",
                "metrics": [{"name": "ms", "unit": "ms", "better": "lower", "title": "change"}],
                "samples": {"netplane": {"ms": [0.2, 0.3, 0.25]}},
                "series": {
                    "programming_latency": {
                        "x": "endpoints",
                        "unit": "ms",
                        "points": [
                            {"side": "netplane", "stage": "s", "size": n, "p50": p, "p99": 2 * p}
                            for n, p in ((1000, 0.1), (100_000, 0.2))
                        ],
                    }
                },
                "errors": [],
            },
        ],
    }


def test_report_rows_and_plots(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(synthetic()))
    written = report.generate(path)
    md = (tmp_path / "run.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if "|" in line}
    # higher is better: median 100 vs 50 -> ratio 2, netplane ahead
    assert "100 (90\u2013120)" in rows["requests"]
    assert "50 (40\u201360)" in rows["requests"]
    assert "2 (netplane better, 2.00\u00d7)" in rows["requests"]
    # lower is better: median 2.0 vs 1.0 -> ratio 2, peer ahead
    assert "| lower |" in rows["latency p99"]
    assert "2 (1.5\u20132.5)" in rows["latency p99"]
    assert "2 (peer better, 2.00\u00d7)" in rows["latency p99"]
    assert "**No peer.** Absolute figures." in md
    for key in ("standing", "percentiles", "programming"):
        png = tmp_path / f"run-{key}.png"
        assert written[key] == png
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 100 and height > 100
        assert f"]({png.name})" in md


def test_report_skips_unfed_plots_and_removes_stale_ones(tmp_path: Path) -> None:
    doc = synthetic()
    doc["scenarios"] = doc["scenarios"][1:]  # no peer, no percentiles
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    stale = tmp_path / "run-standing.png"
    stale.write_bytes(PNG_MAGIC)
    written = report.generate(path)
    assert set(written) == {"md", "programming"}
    assert not stale.exists()
    assert not (tmp_path / "run-percentiles.png").exists()


def test_standing_plot_has_one_panel_per_plane_and_ratios_against_other_software() -> None:
    doc = synthetic()
    doc["scenarios"].append(
        {
            "name": "l4",
            "sides": ["netplane", "haproxy", "direct"],
            "metrics": [
                {"name": "conn_per_s", "unit": "conn/s", "better": "higher", "title": "conns"},
                {"name": "conn_load_cpu_pct", "unit": "%", "better": "lower", "title": "wrk"},
            ],
            "samples": {
                "netplane": {"conn_per_s": [10.0], "conn_load_cpu_pct": [50.0]},
                "haproxy": {"conn_per_s": [20.0], "conn_load_cpu_pct": [60.0]},
                "direct": {"conn_per_s": [40.0]},
            },
        }
    )
    doc["scenarios"].append(
        {
            "name": "workers",
            "sides": ["netplane", "netplane 1 worker"],
            "metrics": [{"name": "rps", "unit": "req/s", "better": "higher", "title": "w"}],
            "samples": {"netplane": {"rps": [2.0]}, "netplane 1 worker": {"rps": [1.0]}},
        }
    )
    rows = report.standing_rows(doc)
    # Planes in a fixed order; netplane against itself (workers) and the load
    # generator's CPU are not standings, and a scenario without a peer has none.
    assert list(rows) == ["L4 proxy", "Ingress"]
    assert rows["L4 proxy"] == [("conns", "haproxy", 0.5), ("conns", "direct", 0.25)]
    assert rows["Ingress"] == [("requests", "nginx", 2.0), ("latency p99", "nginx", 0.5)]


def test_standing_direction() -> None:
    assert report.standing(100, 50, "higher") == 2
    assert report.standing(1, 2, "lower") == 2
    assert report.standing(2, 1, "lower") == 0.5


def test_schedule_alternates_sides_after_warmups() -> None:
    assert schedule(["netplane", "nginx", "haproxy"], runs=2, warmup=1) == [
        ("netplane", 0, True),
        ("nginx", 0, True),
        ("haproxy", 0, True),
        ("netplane", 0, False),
        ("nginx", 0, False),
        ("haproxy", 0, False),
        ("netplane", 1, False),
        ("nginx", 1, False),
        ("haproxy", 1, False),
    ]
    assert schedule(["netplane"], runs=3, warmup=0) == [("netplane", i, False) for i in range(3)]


class Toy(Scenario):
    name = "toy"
    title = "toy"
    sides = ("netplane", "peer")

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.calls: list[tuple[str, int]] = []
        self.torn_down = False

    def metrics(self, ctx: Context) -> list[Metric]:
        return [Metric("x", "s", "lower")]

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        self.calls.append((side, index))
        if len(self.calls) == self.fail_at:
            raise RuntimeError("boom")
        return {"x": float(index)}

    def teardown(self, ctx: Context) -> None:
        self.torn_down = True


def test_run_scenario_alternates_and_records_errors(tmp_path: Path) -> None:
    ctx = Context(quick=True, runs=2, workdir=tmp_path, echo=lambda _msg: None)
    toy = Toy()
    result = run_scenario(ctx, toy)
    warmups = [("netplane", 0), ("peer", 0)]
    assert toy.calls == [*warmups, ("netplane", 0), ("peer", 0), ("netplane", 1), ("peer", 1)]
    assert result["order"] == ["netplane", "peer", "netplane", "peer"]
    assert result["samples"] == {"netplane": {"x": [0.0, 1.0]}, "peer": {"x": [0.0, 1.0]}}
    assert result["errors"] == [] and toy.torn_down

    broken = Toy(fail_at=4)
    result = run_scenario(ctx, broken)
    assert result["errors"] == ["RuntimeError: boom"] and broken.torn_down


class ToyRounds(Toy):
    interleaved = True

    def run_round(self, ctx: Context, index: int) -> dict[str, dict[str, float]]:
        self.calls.append(("round", index))
        return {"netplane": {"x": float(index)}, "peer": {"x": 10.0 + index}}


def test_run_scenario_interleaved_records_every_side_per_round(tmp_path: Path) -> None:
    ctx = Context(quick=True, runs=2, workdir=tmp_path, echo=lambda _msg: None)
    toy = ToyRounds()
    result = run_scenario(ctx, toy)
    assert toy.calls == [("round", 0), ("round", 0), ("round", 1)]  # one warm-up round first
    assert result["order"] == ["netplane", "peer", "netplane", "peer"]
    assert result["samples"] == {"netplane": {"x": [0.0, 1.0]}, "peer": {"x": [10.0, 11.0]}}
    assert result["interleaved"] is True and result["errors"] == []


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_process_manager_stops_sleep_by_pid(tmp_path: Path) -> None:
    procs = ProcessManager(term_timeout=5)
    proc = procs.start(["sleep", "60"], name="sleep", log=tmp_path / "sleep.log")
    assert proc.popen.poll() is None and procs.running == [proc]
    assert procs.stop(proc) == -signal.SIGTERM
    assert _gone(proc.pid) and procs.running == []


def test_process_manager_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    procs = ProcessManager(term_timeout=0.5)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(30)"
    out = tmp_path / "out"
    proc = procs.start([sys.executable, "-c", code], name="stubborn", stdout=out)
    deadline = time.monotonic() + 5
    while "up" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, "child did not start"
        time.sleep(0.01)
    assert procs.stop(proc) == -signal.SIGKILL
    assert _gone(proc.pid)


def test_stop_all_stops_everything(tmp_path: Path) -> None:
    procs = ProcessManager(term_timeout=5)
    started = [procs.start(["sleep", "60"], name=f"s{i}") for i in range(3)]
    procs.stop_all()
    assert all(_gone(p.pid) for p in started) and procs.running == []


def test_pin_roles(tmp_path: Path) -> None:
    ctx = Context(quick=True, runs=1, workdir=tmp_path, cpus=[0, 1])
    if not ctx.pin("load"):
        pytest.skip("taskset not installed")
    assert ctx.pin("load") == ["taskset", "-c", "0"]
    assert ctx.pin("server") == ctx.pin("peer") == ["taskset", "-c", "1"]
    assert Context(quick=True, runs=1, workdir=tmp_path, cpus=[0]).pin("load") == []
    with pytest.raises(ValueError):
        ctx.pin("client")


def test_gateway_scenario_runs_right_after_ingress_with_netplane_ingress_as_a_side() -> None:
    from bench.scenarios import SCENARIOS
    from bench.scenarios.gateway import INGRESS, GatewayBench
    from bench.scenarios.ingress import IngressBench

    names = [cls.name for cls in SCENARIOS]
    assert names.index("gateway") == names.index("ingress") + 1
    assert GatewayBench.sides == ("netplane", INGRESS, "nginx") and GatewayBench.interleaved
    ctx = Context(quick=True, runs=1, workdir=Path("/nonexistent"), echo=lambda _msg: None)
    assert GatewayBench().sizes(ctx) == IngressBench().sizes(ctx) == (1,)
    full = Context(quick=False, runs=1, workdir=Path("/nonexistent"), echo=lambda _msg: None)
    assert GatewayBench().sizes(full) == (1, 1000)
    assert {m.name for m in GatewayBench().metrics(full)} >= {"rps@1", "rps@1000"}


def _nginx_routing(conf: str) -> tuple[dict[str, str], dict[str, str], set[int]]:
    """(x-tenant value -> route, server_name -> route it checks, listen ports) from a config."""
    (block,) = re.findall(r"map \$http_x_tenant \$gw_x_tenant \{(.*?)\}", conf, re.S)
    by_tenant = dict(re.findall(r'"([^"]+)" "([^"]+)";', block))
    by_host = dict(
        re.findall(
            r"server_name (\S+);\s+location / \{\s+"
            r'if \(\$gw_x_tenant != "([^"]+)"\) \{ return 404; \}\s+proxy_pass http://bench_web;',
            conf,
        )
    )
    ports = {int(p) for p in re.findall(r"listen 127\.0\.0\.1:(\d+)", conf)}
    return by_tenant, by_host, ports


def test_gateway_nginx_config_routes_as_the_httproutes_do(tmp_path: Path) -> None:
    from bench.scenarios.gateway import gateway_nginx_conf, gateway_objects

    n, port = 5, 18080
    objs = gateway_objects(n, port, ("127.0.0.1", 9))
    conf = gateway_nginx_conf(objs, tmp_path, tmp_path / "access.log")
    by_tenant, by_host, ports = _nginx_routing(conf)
    assert ports == {port}
    assert "server 127.0.0.1:9;" in conf and "default_server;\n        return 404;" in conf

    (cls,) = (o for o in objs if o["kind"] == "GatewayClass")
    (gw,) = (o for o in objs if o["kind"] == "Gateway")
    routes = [o for o in objs if o["kind"] == "HTTPRoute"]
    assert cls["spec"]["controllerName"] == "netplane.io/gateway-controller"
    assert gw["spec"]["gatewayClassName"] == cls["metadata"]["name"]
    assert gw["spec"]["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
    assert [lst["port"] for lst in gw["spec"]["listeners"]] == [port]
    assert len(routes) == n

    def by_routes(host: str, tenant: str | None) -> str | None:
        for r in routes:
            ident = f"{r['metadata']['namespace']}/{r['metadata']['name']}"
            for rule in r["spec"]["rules"]:
                for m in rule["matches"]:
                    if host in r["spec"]["hostnames"] and all(
                        tenant == h["value"] for h in m["headers"]
                    ):
                        return ident
        return None

    def by_nginx(host: str, tenant: str | None) -> str | None:
        want = by_host.get(host)
        return want if want is not None and by_tenant.get(tenant or "") == want else None

    for r in routes:
        assert r["spec"]["parentRefs"] == [{"name": gw["metadata"]["name"], "sectionName": "http"}]
    hosts = [f"h{i}.bench.test" for i in range(n + 1)]  # the last is no route's
    for host in hosts:
        for tenant in [None, "", *(f"t{i}" for i in range(n + 1))]:
            assert by_nginx(host, tenant) == by_routes(host, tenant), (host, tenant)
    # the request wrk sends matches the last route on both
    assert by_nginx(f"h{n - 1}.bench.test", f"t{n - 1}") == f"bench/r{n - 1}"


def test_gateway_manifests_pass_netplane_check(tmp_path: Path) -> None:
    from bench.scenarios.gateway import gateway_objects
    from netplane.check import check_paths

    path = tmp_path / "objects.json"
    items = gateway_objects(3, 18080, ("127.0.0.1", 9))
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    assert check_paths([str(tmp_path)]) == []


def test_standing_plot_leaves_out_netplane_against_itself_in_the_gateway_scenario() -> None:
    doc = synthetic()
    doc["scenarios"].append(
        {
            "name": "gateway",
            "sides": ["netplane", "netplane Ingress", "nginx"],
            "metrics": [{"name": "rps@1", "unit": "req/s", "better": "higher", "title": "g"}],
            "samples": {
                "netplane": {"rps@1": [90.0]},
                "netplane Ingress": {"rps@1": [100.0]},
                "nginx": {"rps@1": [180.0]},
            },
        }
    )
    rows = report.standing_rows(doc)
    assert rows["Ingress"][-1] == ("gateway: g", "nginx", 0.5)
    assert all(peer == "nginx" for _, peer, _ in rows["Ingress"])


def test_overload_and_soak_are_registered_with_their_metrics() -> None:
    from bench.scenarios import by_name
    from bench.scenarios.overload import Overload
    from bench.scenarios.soak import CATEGORIES, KINDS, Soak

    assert by_name()["overload"] is Overload and by_name()["soak"] is Soak
    quick = Context(quick=True, runs=1, workdir=Path("/nonexistent"), echo=lambda _msg: None)
    full = Context(quick=False, runs=1, workdir=Path("/nonexistent"), echo=lambda _msg: None)
    assert Overload().size(quick)["idle"] < Overload().size(full)["idle"] == 10_000
    assert Overload().size(full)["slow"] == 1_000
    names = {m.name for m in Overload().metrics(full)}
    assert {"rps_ratio", "kb_per_idle", "probe_p99_ms@alone", "probe_p99_ms@flood"} <= names
    soak = Soak()
    assert soak.timing(quick)[:2] == (2.0, 10.0) and soak.bins(quick) == 2
    assert soak.timing(full)[1] == 600.0 and soak.bins(full) == 10
    names = {m.name for m in soak.metrics(full)}
    assert {f"failed_{c}" for c in CATEGORIES} <= names
    assert {f"p99_ms@{k}/10" for k in KINDS} <= names and "p99_ms@dns/11" not in names


def test_soak_minutes_option_sets_the_soak_length(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.__main__ import parse_args
    from bench.scenarios.soak import Soak

    monkeypatch.setattr(Soak, "minutes", Soak.minutes)  # restored after the test
    args = parse_args(["--only", "soak", "--soak-minutes", "2.5"])
    assert args.soak_minutes == 2.5
    with pytest.raises(SystemExit):
        parse_args(["--soak-minutes", "0"])
    Soak.minutes = args.soak_minutes
    full = Context(quick=False, runs=1, workdir=Path("/nonexistent"), echo=lambda _msg: None)
    assert Soak().timing(full)[1] == 150.0 and Soak().bins(full) == 3


def test_soak_changes_cycle_kinds_and_pass_netplane_check(tmp_path: Path) -> None:
    import trustme

    from bench.scenarios.soak import CHANGES, base_objects, change
    from netplane.check import check_paths

    leaf = trustme.CA().issue_cert("*.bench.test")
    certs = [(leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())] * 2
    seen = [change(i, 18080, certs) for i in range(2 * len(CHANGES))]
    assert [name for name, _ in seen] == list(CHANGES) * 2
    # each kind flips between two states
    for k in range(len(CHANGES)):
        assert seen[k][1] != seen[k + len(CHANGES)][1] or CHANGES[k] == "secret"
    for i in range(2):  # both states of every file, beside the fixed objects
        d = tmp_path / str(i)
        d.mkdir()
        items = base_objects() + [obj for _, obj in seen[i * len(CHANGES) : (i + 1) * len(CHANGES)]]
        (d / "objects.json").write_text(
            json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        )
        assert check_paths([str(d)]) == []
