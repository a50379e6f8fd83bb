"""The ``netplane`` command end to end: check, version, run, demo, as a user runs them.

Every daemon here is a subprocess this file starts; it is stopped by its PID
(SIGTERM, then SIGKILL) whatever the test's outcome. Its stdout and stderr go
to files, so a chatty process can never block on a full pipe, and every wait
polls with a deadline.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from netplane import __version__
from netplane.testing.ports import free_port
from netplane.testing.process import Netplane

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
WAIT = 8.0
LOCAL = ipaddress.ip_network("127.77.0.0/16")
# Ingress and DNS are off so that these tests never need their ports.
QUIET_PLANES = ["--ingress-http", "off", "--ingress-https", "off", "--dns", "off"]
KEY_BYTES = (
    b"-----BEGIN PRIVATE KEY-----\n"
    b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDxCLIkeyMATERIAL\n"
    b"-----END PRIVATE KEY-----\n"
)
CERT_BYTES = b"-----BEGIN CERTIFICATE-----\nMIIBfakecertificate\n-----END CERTIFICATE-----\n"
SECRET_YAML = f"""\
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata:
  name: web-tls
  namespace: demo
data:
  tls.crt: {base64.b64encode(CERT_BYTES).decode()}
  tls.key: {base64.b64encode(KEY_BYTES).decode()}
"""


def netplane_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "netplane", *args]


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        netplane_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(what: str, cond: Callable[[], object], timeout: float = WAIT) -> object:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
        except (OSError, ValueError, KeyError) as e:
            last_error, value = e, None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )


class Daemon:
    """A started :class:`Netplane`, with its admin endpoints and its log at hand."""

    def __init__(self, np: Netplane) -> None:
        self.np = np
        self.proc = np.proc
        self.port = np.admin_port if np.admin is not None else None

    @property
    def stdout(self) -> str:
        return self.np.stdout

    @property
    def stderr(self) -> str:
        return self.np.log

    def get(self, path: str) -> tuple[int, str]:
        assert self.port is not None
        return get(self.port, path)

    def state(self) -> dict:
        status, body = self.get("/debug/state")
        assert status == 200, body
        return json.loads(body)

    def services(self) -> dict[str, dict]:
        return {f"{s['namespace']}/{s['name']}": s for s in self.state()["services"]}

    def wait_log(self, pattern: str, timeout: float = WAIT) -> re.Match:
        return wait_for(  # type: ignore[return-value]
            f"log {pattern!r}", lambda: re.search(pattern, self.stderr, re.M), timeout
        )

    def signal(self, sig: int) -> None:
        self.np.signal(sig)

    def stop(self, timeout: float = 5.0) -> int:
        return self.np.stop(timeout)


@pytest.fixture
def start(start_netplane: Callable[..., Netplane]) -> Callable[..., Daemon]:
    """``start(*args, admin=True)`` runs netplane with an admin port of its own, until ready."""

    def _start(*args: str, admin: bool = True) -> Daemon:
        np = start_netplane(*args, admin=admin)
        if np.admin is not None:
            np.wait_ready(WAIT)
        return Daemon(np)

    return _start


@pytest.fixture
def manifests(tmp_path) -> Path:
    """A copy of the demo manifests plus a TLS Secret, to edit freely."""
    d = tmp_path / "manifests"
    d.mkdir()
    for f in DEMO.glob("*.yaml"):
        shutil.copy(f, d / f.name)
    (d / "tls.yaml").write_text(SECRET_YAML)
    return d


def run_args(manifests: Path, *more: str) -> list[str]:
    return [
        "run",
        "-f",
        str(manifests),
        "--mode",
        "local",
        "--manifest-poll-seconds",
        "0.2",
        *QUIET_PLANES,
        *more,
    ]


def rewrite(path: Path, old: str, new: str) -> None:
    """Edit ``path`` as a careful user does: a new file renamed over the old one.

    A read never sees it half written. ``path.write_text`` would truncate the
    file first: a re-read that the daemon is still doing (a poll, or the
    SIGHUP before) could find it empty and delete all of its objects, then add
    them back at the next read, where the test waits for them to be modified.
    """
    text = path.read_text()
    assert old in text
    tmp = path.with_name(f".{path.name}.tmp")  # a hidden name: the daemon skips it
    tmp.write_text(text.replace(old, new, 1))
    tmp.replace(path)


# -- check and version ---------------------------------------------------------


def test_version():
    r = cli("version")
    assert r.returncode == 0
    assert r.stdout.startswith(f"netplane {__version__} (Python ")
    assert r.stderr == ""
    script = shutil.which("netplane")
    if script:
        r2 = subprocess.run([script, "version"], capture_output=True, text=True, timeout=30)
        assert r2.stdout == r.stdout


def test_check_demo_is_clean():
    r = cli("check", "-f", "examples/demo")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = cli("check", "-f", "examples/demo", "--service-cidr", "127.77.0.0/16")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def svc_yaml(name: str, extra: str = "", port: int = 80) -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n"
        f"spec:\n{extra}  ports:\n    - port: {port}\n"
    )


def test_check_reports_each_problem_with_file_and_line(tmp_path):
    (tmp_path / "a.yaml").write_text(svc_yaml("web", port=70000))
    (tmp_path / "b.yaml").write_text(
        svc_yaml("Bad_Name") + "---\n" + svc_yaml("one", "  clusterIP: 127.77.0.20\n")
    )
    (tmp_path / "c.yaml").write_text(
        "# the same address\n" + svc_yaml("two", "  clusterIP: 127.77.0.20\n")
    )
    (tmp_path / "d.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: [x\n")
    r = subprocess.run(
        netplane_cmd("check", "-f", "."), capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        "./a.yaml:8: Service shop/web: spec.ports[0].port: 70000 out of range (1-65535)",
        "./b.yaml:4: Service shop/Bad_Name: metadata.name: 'Bad_Name' is not a valid DNS-1123 subdomain",
        "./c.yaml:8: Service shop/two: spec.clusterIP: 127.77.0.20 is already allocated to Service shop/one",
        "./d.yaml:5:1: did not find expected ',' or ']' (while parsing a flow sequence)",
    ]
    assert r.stderr == "4 problem(s)\n"


def test_check_missing_path(tmp_path):
    r = cli("check", "-f", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert r.stdout == f"{tmp_path / 'nope'}: no such file or directory\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--service-cidr", "bad"], "netplane: --service-cidr: 'bad' is not a CIDR"),
        (["--service-cidr", "10.0.0.1/8"], "netplane: --service-cidr: '10.0.0.1/8' is not a CIDR"),
        (
            ["--nodeport-range", "9-1"],
            "netplane: --nodeport-range: '9-1' is not a valid port range",
        ),
    ],
)
def test_check_bad_setting_exits_2_with_one_line(args, message):
    r = cli("check", "-f", "examples/demo", *args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(message)


# -- run: settings errors ---------------------------------------------------------


def test_unknown_config_key_exits_2_naming_key_and_file(tmp_path, manifests):
    conf = tmp_path / "netplane.yaml"
    conf.write_text("log-level: info\nclusterdomain: typo.local\n")
    r = cli(*run_args(manifests, "--config", str(conf)))
    assert r.returncode == 2
    assert r.stderr == f"netplane: {conf}: unknown setting 'clusterdomain'\n"
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "netplane: no source: give -f PATH, --kubeconfig PATH or --in-cluster\n"),
        (["-f", ".", "--admin", "10256"], "netplane: --admin: '10256' is not HOST:PORT or off\n"),
        (
            ["-f", ".", "--kubeconfig", "/k", "--in-cluster"],
            "netplane: --kubeconfig and --in-cluster are exclusive\n",
        ),
        (
            ["-f", ".", "--shutdown-grace", "nan"],
            "netplane: --shutdown-grace: 'nan' is not a finite",
        ),
    ],
)
def test_run_setting_errors(args, message):
    r = cli("run", "--mode", "local", *QUIET_PLANES, "--admin", "off", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(message)
    assert "Traceback" not in r.stderr


def test_admin_port_in_use_exits_2_with_one_line(manifests):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli(*run_args(manifests, "--admin", f"127.0.0.1:{port}"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith(
        f"netplane: admin: cannot listen on 127.0.0.1:{port}: "
    )


# -- run: the daemon ---------------------------------------------------------------


def test_run_serves_health_readiness_and_state(start, manifests):
    d = start(*run_args(manifests))
    assert d.get("/healthz") == (200, "ok\n")
    assert d.get("/readyz") == (200, "ok\n")
    state = d.state()
    assert state["ready"] is True
    assert state["config"]["mode"] == "local"
    services = d.services()
    assert sorted(services) == ["demo/api", "demo/db", "demo/legacy", "demo/search", "demo/web"]
    for name in ("demo/api", "demo/legacy", "demo/web"):
        (ip,) = services[name]["clusterIPs"]
        assert ipaddress.ip_address(ip) in LOCAL, (name, ip)
    assert services["demo/db"]["headless"] is True
    assert services["demo/search"]["externalName"] == "web.demo.svc.cluster.local"

    def endpoints(name: str) -> list[tuple[str, int, bool]]:
        return [
            (e["address"], e["port"], e["ready"])
            for p in services[name]["ports"]
            for e in p["endpoints"]
        ]

    assert endpoints("demo/web") == [("127.0.1.1", 18080, True), ("127.0.1.2", 18080, True)]
    assert endpoints("demo/api") == [("127.0.2.1", 18081, True), ("127.0.2.2", 18081, False)]
    assert endpoints("demo/legacy") == [("127.0.3.1", 19000, True)]
    assert services["demo/api"]["ports"][0]["nodePort"] == 30080
    # The TLS Secret is known, its key is not shown anywhere.
    assert state["secrets"] == [
        {"namespace": "demo", "name": "web-tls", "type": "kubernetes.io/tls", "data": "<redacted>"}
    ]
    assert d.stop() == 0
    text = json.dumps(state) + d.stdout + d.stderr
    for needle in (KEY_BYTES, KEY_BYTES.strip().splitlines()[1], base64.b64encode(KEY_BYTES)):
        assert needle.decode() not in text
    assert d.stdout == ""


def test_edits_show_up_and_a_broken_edit_keeps_the_last_good_state(start, manifests):
    d = start(*run_args(manifests))
    services = manifests / "services.yaml"

    # an edit is picked up by polling
    rewrite(services, "podIP: 127.0.1.2", "podIP: 127.0.1.9")
    wait_for(
        "the edited pod address",
        lambda: (
            [e["address"] for e in d.services()["demo/web"]["ports"][0]["endpoints"]]
            == ["127.0.1.1", "127.0.1.9"]
        ),
    )

    # a syntax error: everything of that file stays, the log says where
    good = services.read_text()
    services.write_text(good.replace("  name: api\n", "  name: [api\n", 1))
    line = good.splitlines().index("  name: api") + 2  # the parser stops on the next line
    d.wait_log(rf"warning netplane\.sources\.manifests: {re.escape(str(services))}:{line}:\d+: ")
    assert sorted(d.services()) == ["demo/api", "demo/db", "demo/legacy", "demo/search", "demo/web"]
    assert d.get("/readyz")[0] == 200

    # an invalid object: it keeps its last good version, the rest of the file updates
    services.write_text(
        good.replace("      nodePort: 30080", "      nodePort: 99999", 1).replace(
            "      port: 5432\n", "      port: 5433\n", 1
        )
    )
    d.wait_log(rf"{re.escape(str(services))}:\d+: Service demo/api: spec\.ports\[0\]\.nodePort: ")
    wait_for("db on 5433", lambda: d.services()["demo/db"]["ports"][0]["port"] == 5433)
    assert d.services()["demo/api"]["ports"][0]["nodePort"] == 30080

    # deleting a file removes its objects
    services.write_text(good)
    (manifests / "ingress.yaml").unlink()
    (manifests / "tls.yaml").unlink()
    wait_for("the Ingress and Secret to go", lambda: "Ingress" not in d.state()["objects"])
    state = d.state()
    assert state["secrets"] == []
    assert "IngressClass" not in state["objects"]
    services.unlink()
    wait_for("every service to go", lambda: d.state()["services"] == [])
    assert d.stop() == 0


def test_sighup_rereads_config_file_and_manifests(start, tmp_path, manifests):
    conf = tmp_path / "netplane.yaml"
    conf.write_text("log-level: info\nmanifest-poll-seconds: 60\n")
    args = run_args(manifests, "--config", str(conf))
    args.remove("--manifest-poll-seconds")
    args.remove("0.2")
    d = start(*args)
    assert " debug " not in d.stderr

    # a manifest change is read at once on SIGHUP, without waiting for a poll
    rewrite(manifests / "services.yaml", "podIP: 127.0.1.2", "podIP: 127.0.1.7")
    d.signal(signal.SIGHUP)
    wait_for(  # long before the next poll (60 s)
        "the change after SIGHUP", lambda: "127.0.1.7" in json.dumps(d.services()["demo/web"])
    )

    # the config file's log level applies on SIGHUP
    conf.write_text("log-level: debug\nmanifest-poll-seconds: 60\n")
    d.signal(signal.SIGHUP)
    d.wait_log(r"SIGHUP: re-reading config and manifests(.|\n)*SIGHUP: re-reading")
    rewrite(manifests / "services.yaml", "podIP: 127.0.1.7", "podIP: 127.0.1.8")
    d.signal(signal.SIGHUP)
    d.wait_log(r"debug netplane\.dataplane: modified Pod demo/web-2 from manifests")

    # a config file that no longer loads: logged, the daemon keeps running
    conf.write_text("log-level: debug\nbogus: 1\n")
    d.signal(signal.SIGHUP)
    d.wait_log(rf"config reload failed, keeping the running config: {re.escape(str(conf))}: ")
    assert d.get("/readyz")[0] == 200
    assert d.stop() == 0


def test_sigterm_exits_0_promptly_and_stops_listening(start, manifests):
    d = start(*run_args(manifests))
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(5) == 0
    assert time.monotonic() - t0 < 3
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.port), timeout=1).close()
    assert re.search(r"info netplane\.daemon: stopped$", d.stderr, re.M)


def test_flags_override_the_config_file(start, tmp_path, manifests):
    file_port, flag_port = free_port(), free_port()
    conf = tmp_path / "netplane.yaml"
    conf.write_text(
        f"admin: 127.0.0.1:{file_port}\ncluster-domain: from.file\nlog-format: json\n"
        "files: [manifests]\n"  # relative to the config file's directory
    )
    d = start(
        "run", "--config", str(conf), "--mode", "local", *QUIET_PLANES,
        "--cluster-domain", "from.flag", "--admin", f"127.0.0.1:{flag_port}",
    )  # fmt: skip
    state = d.state()
    assert state["config"]["clusterDomain"] == "from.flag"
    assert state["config"]["configFile"] == str(conf)
    assert "demo/web" in d.services()  # files: from the file, resolved against its directory
    with pytest.raises(urllib.error.URLError):
        get(file_port, "/healthz")
    assert d.stop() == 0


def test_log_format_json_is_one_object_per_line(start, manifests):
    d = start(*run_args(manifests, "--log-format", "json"))
    assert d.stop() == 0
    lines = d.stderr.splitlines()
    assert len(lines) >= 3
    records = [json.loads(line) for line in lines]
    for r in records:
        assert {"ts", "level", "logger", "msg"} <= set(r)
    msgs = [r["msg"] for r in records]
    assert any(m.startswith("netplane 0.1.0 starting: mode local") for m in msgs)
    assert any(m.startswith("ready: ") for m in msgs)
    assert msgs[-1] == "stopped"


# -- demo ----------------------------------------------------------------------------


def test_demo_prints_the_table_and_serves_readyz(start, tmp_path):
    d = start("demo", "--admin", "127.0.0.1:0", *QUIET_PLANES, admin=False)
    m = wait_for(
        "the curl lines",
        lambda: re.search(r"curl http://127\.0\.0\.1:(\d+)/readyz", d.stdout),
    )
    port = int(m.group(1))  # type: ignore[union-attr]
    assert port != 0
    out = d.stdout
    assert "netplane demo is running. Services in the table:" in out
    web = re.search(
        r"^  demo/web  ClusterIP  (\S+)  8080/TCP -> 127\.0\.1\.1:18080, 127\.0\.1\.2:18080$",
        out,
        re.M,
    )
    assert web and ipaddress.ip_address(web.group(1)) in LOCAL
    assert re.search(
        r"^  demo/api  NodePort  \S+  8081/TCP -> 127\.0\.2\.1:18081, 127\.0\.2\.2:18081 \(not ready\)$",
        out,
        re.M,
    )
    assert re.search(r"^  demo/db  ClusterIP  headless  5432/TCP -> ", out, re.M)
    assert re.search(
        r"^  demo/search  ExternalName  web\.demo\.svc\.cluster\.local  no ports$", out, re.M
    )
    assert f"  curl http://127.0.0.1:{port}/debug/state" in out
    assert get(port, "/readyz") == (200, "ok\n")
    assert d.stop() == 0


def _proto77_routes() -> set[str]:
    """netplane's routes on this host (node mode tags them with protocol 77)."""
    r = subprocess.run(
        ["ip", "route", "show", "table", "all", "proto", "77"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return set(r.stdout.splitlines())


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root (where run would default to node mode) and iproute2",
)
def test_the_demo_runs_in_local_mode_even_as_root(start):
    before = _proto77_routes()
    d = start("demo", *QUIET_PLANES)
    state = d.state()
    assert state["config"]["mode"] == "local"
    assert state["config"]["serviceCIDRs"] == ["127.77.0.0/16"]
    web = d.services()["demo/web"]
    assert all(ipaddress.ip_address(ip) in LOCAL for ip in web["clusterIPs"])
    assert _proto77_routes() - before == set()  # no local route added for the service CIDR
    assert d.stop() == 0
    assert "starting: mode local" in d.stderr


def test_the_demo_refuses_node_mode():
    r = cli("demo", "--mode", "node")
    assert r.returncode == 2
    assert r.stderr == "netplane: netplane demo runs in local mode only; use run for --mode node\n"
