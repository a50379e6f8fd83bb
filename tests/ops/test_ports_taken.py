"""A port that is not free: ``netplane run`` stops at start with one line and exit status 2.

With ``--workers N`` the workers bind with SO_REUSEPORT, which would let a
second netplane share the ports (requests split between two instances with
different certificates) and send workers that cannot bind into a restart
loop. The owner claims every port first (netplane/ports.py). Each test runs
real processes: two netplanes, or netplane beside a plain Python socket in
another process, with curl as the client.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import trustme
import yaml
from ingress_fakes import Backends, Request, curl
from ingress_world import endpoints, ingress, ingress_class, path, secret, service
from l4_world import endpoints as l4_endpoints
from l4_world import service as l4_service
from l4_world import udp_port_holders

from netplane.testing.ports import free_port, held_elsewhere
from netplane.testing.process import Netplane

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


def named(name: str):
    async def handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name.encode()))
        await w.drain()

    return handler


class Instance:
    """One ``netplane run`` (a :class:`Netplane`) with its ingress and DNS on given ports."""

    def __init__(self, tmp: Path, name: str, http: int, https: int, dns: int) -> None:
        self.dir = tmp / name
        self.dir.mkdir()
        self.http, self.https, self.dns = http, https, dns
        self.np: Netplane | None = None

    def write(self, objs: list[dict]) -> None:
        (self.dir / "all.yaml").write_text(yaml.safe_dump_all(objs))

    def launch(self, *args: str, env: dict[str, str] | None = None) -> Instance:
        """``netplane ARGS`` in this instance's directory, not waited for."""
        self.np = Netplane(*args, workdir=self.dir, env=env).launch()
        return self

    def start(self, workers: int, *extra: str, proxy: bool = False) -> Instance:
        return self.launch(
            "run", "-f", str(self.dir / "all.yaml"),
            "--mode", "local", "--proxy", "on" if proxy else "off",
            "--manifest-poll-seconds", "0.05",
            "--ingress-http", f"127.0.0.1:{self.http}",
            "--ingress-https", f"127.0.0.1:{self.https}",
            "--dns", f"127.0.0.1:{self.dns}",
            "--shutdown-grace", "1", "--workers", str(workers), *extra,
        )  # fmt: skip

    @property
    def proc(self) -> Netplane:
        assert self.np is not None, "not started"
        return self.np

    @property
    def admin(self) -> int:
        return self.proc.admin_port

    async def exited(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for the process to exit by itself: (status, stderr)."""
        return await self.proc.await_exit(timeout), self.proc.log

    async def stop(self) -> str:
        """SIGTERM (SIGKILL after 15 s) if still running: its stderr."""
        if self.np is None:
            return ""
        await self.np.astop(15)
        return self.np.log


@pytest.fixture
async def instances() -> AsyncIterator[list[Instance]]:
    started: list[Instance] = []
    yield started
    for n in started:
        await n.stop()


def site(name: str, backend_port: int, ca: trustme.CA) -> list[dict]:
    """Ingress host NAME.test (HTTP and HTTPS, a certificate from ``ca``) to a backend
    at 127.0.52.x that answers NAME."""
    leaf = ca.issue_cert(f"{name}.test")
    n = {"one": 1, "two": 2}[name]
    return [
        ingress_class("netplane"),
        service("web"),
        endpoints("web", [f"127.0.52.{n}"], [("http", backend_port)]),
        secret("web-tls", leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes()),
        ingress("web", [(f"{name}.test", [path("/", "web")])],
                tls=[{"hosts": [f"{name}.test"], "secretName": "web-tls"}],
                annotations={"nginx.ingress.kubernetes.io/ssl-redirect": "false"}),
    ]  # fmt: skip


def one_error_line(stderr: str) -> str:
    """The CLI's error line, after checking that nothing on stderr is a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("netplane: ")]
    assert len(lines) == 1, stderr
    assert stderr.rstrip().endswith(lines[0])  # the last word
    return lines[0]


async def test_a_second_instance_on_the_same_ports_exits_2_and_the_first_serves_everything(
    tmp_path: Path, instances: list[Instance]
) -> None:
    http, https, dns = free_port(), free_port(), free_port(udp_too=True)
    b = Backends()
    port = free_port()
    await b.start(named("one"), "127.0.52.1", port)
    await b.start(named("two"), "127.0.52.2", port)
    ca1, ca2 = trustme.CA(), trustme.CA()
    ca1.cert_pem.write_to_path(str(tmp_path / "ca1.pem"))
    try:
        first = Instance(tmp_path, "one", http, https, dns)
        first.write(site("one", port, ca1))
        instances.append(first.start(2))
        url = f"https://one.test:{https}/"
        tls = ("--resolve", f"one.test:{https}:127.0.0.1", "--cacert", str(tmp_path / "ca1.pem"))
        async with asyncio.timeout(30):
            while (await curl(url, *tls))[1] != "one":
                await asyncio.sleep(0.1)

        second = Instance(tmp_path, "two", http, https, dns)
        second.write(site("two", port, ca2))
        instances.append(second.start(2))
        status, err = await second.exited()
        assert status == 2, err
        line = one_error_line(err)
        assert line.startswith(f"netplane: ingress HTTP: cannot listen on 127.0.0.1:{http}/TCP: ")
        assert f"another netplane holds it (pid {first.proc.pid}: " in line

        # every request, over fresh connections, reached the first instance:
        # its backend, and over HTTPS its certificate (verified against its CA)
        for _ in range(50):
            got = await curl(f"http://one.test:{http}/", "--resolve", f"one.test:{http}:127.0.0.1")
            assert got == (0, "one")
        for _ in range(20):
            assert await curl(url, *tls) == (0, "one")
        assert first.proc.returncode is None
        # and the second never served DNS beside it: only the first's workers hold the port
        holders = udp_port_holders(dns)
        assert len(holders) == 2 and first.proc.pid not in holders
    finally:
        await b.close()


def held(
    port: int, *, reuse_port: bool, kind: int = socket.SOCK_STREAM
) -> AbstractContextManager[int]:
    """``port`` on 127.0.0.1 held by a plain Python socket in another process: its pid."""
    return held_elsewhere("127.0.0.1", port, reuse_port=reuse_port, kind=kind)


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "reuseport"])
@pytest.mark.parametrize("workers", [2, 1])
async def test_an_ingress_port_another_program_holds_stops_the_start_with_one_line(
    tmp_path: Path, instances: list[Instance], workers: int, reuse_port: bool
) -> None:
    https = free_port()
    n = Instance(tmp_path, "n", free_port(), https, free_port(udp_too=True))
    n.write([ingress_class("netplane")])
    with held(https, reuse_port=reuse_port) as holder:
        instances.append(n.start(workers))
        status, err = await n.exited()
    assert status == 2, err
    line = one_error_line(err)
    assert line.startswith(
        f"netplane: ingress HTTPS: cannot listen on 127.0.0.1:{https}/TCP: Address already in use"
    )
    if workers > 1:  # the owner's probe names the holder
        assert f"Address already in use (held by pid {holder}: {sys.executable} -c " in line


async def test_a_dns_port_another_program_holds_is_logged_and_the_rest_serves(
    tmp_path: Path, instances: list[Instance]
) -> None:
    """As with one process: DNS is left out with one error line; the workers
    never join the holder's SO_REUSEPORT group."""
    dns = free_port(udp_too=True)
    n = Instance(tmp_path, "n", free_port(), free_port(), dns)
    n.write([ingress_class("netplane")])
    with held(dns, reuse_port=True, kind=socket.SOCK_DGRAM) as holder:
        instances.append(n.start(2))
        async with asyncio.timeout(30):
            while (await curl(f"http://127.0.0.1:{n.admin}/readyz"))[1] != "ok\n":
                assert n.proc.returncode is None
                await asyncio.sleep(0.1)
        assert udp_port_holders(dns) == {holder}
        err = await n.stop()
    assert "Traceback" not in err
    assert (
        f"DNS: cannot listen on 127.0.0.1:{dns}/UDP: Address already in use (held by pid {holder}: "
    ) in err
    assert "; serving without DNS" in err


async def test_a_port_taken_after_the_owner_claimed_it_stops_the_workers_with_its_line(
    tmp_path: Path, instances: list[Instance]
) -> None:
    """The gap between the owner's probe and the workers' binds: the owner
    waits for its API server (down), another program takes the port, then the
    API server comes back. The first worker to fail says why, and the owner
    stops with that line instead of restarting workers."""
    from netplane.testing.fakekube import FakeKube

    http = free_port()
    n = Instance(tmp_path, "n", http, free_port(), free_port(udp_too=True))
    async with FakeKube() as fake:
        fake.apply(ingress_class("netplane"))
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", {"token": "test-token"})
        async with fake.outage():
            n.launch(
                "run", "--kubeconfig", str(kubeconfig),
                "--mode", "local", "--proxy", "off", "--dns", "off", "--admin", "off",
                "--ingress-http", f"127.0.0.1:{http}", "--ingress-https", "off",
                "--shutdown-grace", "1", "--workers", "2",
            )  # fmt: skip
            instances.append(n)
            async with asyncio.timeout(20):  # the claim comes before this line
                while "worker processes" not in n.proc.log:
                    assert n.proc.returncode is None, n.proc.tail()
                    await asyncio.sleep(0.05)
            taken = socket.socket()
            taken.bind(("127.0.0.1", http))
            taken.listen()
        try:
            status, err = await n.exited()
        finally:
            taken.close()
    assert status == 2, err
    line = one_error_line(err)
    assert line.startswith(f"netplane: ingress HTTP: cannot listen on 127.0.0.1:{http}/TCP: ")
    assert "starting it again" not in err


async def test_a_worker_that_cannot_start_is_given_up_after_a_few_tries(
    tmp_path: Path, instances: list[Instance]
) -> None:
    """A worker that dies before it is ready, without a word, each time: the
    owner tries a bounded number of times, then stops with one line."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    # Runs at every interpreter start: a child of a netplane owner dies at once.
    (site_dir / "sitecustomize.py").write_text(
        "import os\n"
        "if b'netplane\\0run' in open('/proc/%d/cmdline' % os.getppid(), 'rb').read():\n"
        "    os._exit(3)\n"
    )
    n = Instance(tmp_path, "n", free_port(), free_port(), free_port(udp_too=True))
    n.write([ingress_class("netplane")])
    n.launch(
        "run", "-f", str(n.dir / "all.yaml"),
        "--mode", "local", "--admin", "off", "--ingress-http", f"127.0.0.1:{n.http}",
        "--ingress-https", "off", "--dns", "off", "--workers", "2", "--shutdown-grace", "1",
        env={**os.environ, "PYTHONPATH": str(site_dir)},
    )  # fmt: skip
    instances.append(n)
    status, err = await n.exited(timeout=60)
    assert status == 1, err
    assert "Traceback" not in err
    assert err.count("could not start 5 times in a row") == 1, err
    assert "the last time because it exited with status 3; stopping" in err
    assert err.count("starting it again") <= 2 * 4  # 4 restarts per worker, at most


async def test_a_second_instance_on_the_same_service_addresses_exits_2(
    tmp_path: Path, instances: list[Instance]
) -> None:
    """L4 alone (the ingress and DNS ports differ): in local mode the owner probes
    every ClusterIP listener of the table before its workers bind them."""
    b = Backends()
    backend, svc_port = free_port(), free_port()
    await b.start(named("one"), "127.0.53.1", backend)
    await b.start(named("two"), "127.0.53.2", backend)
    url = f"http://127.77.53.1:{svc_port}/"
    try:
        one, two = (
            Instance(tmp_path, name, free_port(), free_port(), free_port(udp_too=True))
            for name in ("one", "two")
        )
        for n, addr in ((one, "127.0.53.1"), (two, "127.0.53.2")):
            n.write([
                l4_service("web", "127.77.53.1", svc_port),
                l4_endpoints("web", [(addr, backend)]),
            ])  # fmt: skip
        instances.append(one.start(2, proxy=True))
        async with asyncio.timeout(30):
            while (await curl(url))[1] != "one":
                await asyncio.sleep(0.1)
        instances.append(two.start(2, proxy=True))
        status, err = await two.exited()
        assert status == 2, err
        line = one_error_line(err)
        assert line.startswith(
            f"netplane: Service t/web: cannot listen on 127.77.53.1:{svc_port}/TCP:"
            " Address already in use (held by pid "
        )
        assert "-m netplane.worker" in line  # one of the first instance's workers
        for _ in range(20):
            assert await curl(url) == (0, "one")
    finally:
        await b.close()


async def test_an_l4_port_taken_at_run_time_is_logged_by_each_worker_once(
    tmp_path: Path, instances: list[Instance]
) -> None:
    """A Service added later whose address another program holds: the
    listener's error, once per worker; the rest of the table serves, no
    worker restarts."""
    b = Backends()
    backend, svc_port = free_port(), free_port()
    await b.start(named("ok"), "127.0.53.3", backend)
    n = Instance(tmp_path, "n", free_port(), free_port(), free_port(udp_too=True))
    n.write([ingress_class("netplane")])
    taken = socket.socket()
    try:
        instances.append(n.start(2, proxy=True))
        async with asyncio.timeout(30):
            while (await curl(f"http://127.0.0.1:{n.admin}/readyz"))[1] != "ok\n":
                await asyncio.sleep(0.1)
        taken.bind(("127.77.53.2", svc_port))
        taken.listen()
        n.write([
            l4_service("late", "127.77.53.2", svc_port),
            l4_endpoints("late", [("127.0.53.3", backend)]),
            l4_service("fine", "127.77.53.3", svc_port),
            l4_endpoints("fine", [("127.0.53.3", backend)]),
        ])  # fmt: skip
        async with asyncio.timeout(30):
            while (await curl(f"http://127.77.53.3:{svc_port}/"))[1] != "ok":
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # time for a restart loop to show, if there were one
        assert (await curl(f"http://127.0.0.1:{n.admin}/readyz"))[1] == "ok\n"
        err = await n.stop()
    finally:
        taken.close()
        await b.close()
    assert "Traceback" not in err
    line = f"Service t/late: cannot listen on 127.77.53.2:{svc_port}/TCP"
    assert 1 <= err.count(line) <= 2, err  # once by each worker that had the change
    assert "starting it again" not in err
