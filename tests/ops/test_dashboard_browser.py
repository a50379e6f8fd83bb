"""The dashboard (``/ui``) in a real browser: headless Chromium driven by chromium-driver.

``netplane demo`` runs as a child process; Chromium loads the URL that the
demo prints, and the test reads the page as a user sees it, through the DOM:
the services table lists the demo's Services, the routes table its Ingress
hosts and paths, and after requests through the demo's ingress (and a
connection through its L4 proxy) the counters on the page go up by
themselves, with no reload. The browser's console must stay free of errors
(a failed load, a CSP violation, an exception in the script).

Debian's ``chromium`` and ``chromium-driver`` packages provide the browser and
its WebDriver; Selenium (the test extra) speaks WebDriver. The driver's path
is given, so Selenium never looks for or downloads one. Without Chromium
the test is skipped, saying so.

With ``NETPLANE_DASHBOARD_SCREENSHOT=PATH`` set, the page after traffic is
also saved as a PNG there (how the README's ``docs/dashboard.png`` is made);
otherwise the screenshot goes to the test's temporary directory only.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from dnslib import DNSRecord

from netplane.testing.process import Netplane

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "netplane" / "demo"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
# Seconds for anything to show on the page. It refreshes every 2 s, or up to
# 3 times as long as its last answer took, on a busy machine.
WAIT = 15.0

requires_chromium = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Chromium and its WebDriver: apt-get install -y chromium chromium-driver",
)


def _demo_ingress() -> dict[str, list[str]]:
    """host -> paths of the demo's Ingress, read from its manifest."""
    out: dict[str, list[str]] = {}
    for doc in yaml.safe_load_all((DEMO / "ingress.yaml").read_text()):
        if doc and doc.get("kind") == "Ingress":
            for rule in doc["spec"]["rules"]:
                out.setdefault(rule["host"], []).extend(p["path"] for p in rule["http"]["paths"])
    assert out, "the demo has no Ingress rule"
    return out


def _greeting_services(out: str) -> list[str]:
    """``namespace/name`` of each Service the demo's greeting lists."""
    table = out.split("Services in the table:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in table.splitlines() if line.strip()]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and DRIVER is not None
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1440,1000",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=DRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _until(what: str, cond: Callable[[], object], timeout: float = WAIT) -> object:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
        except Exception as e:  # the DOM is re-rendered every refresh: stale elements
            last, value = e, None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


def _http_get(port: int, host: str, path: str, address: str = "127.0.0.1") -> int:
    """One request to the ingress on address:port with this Host; the status code."""
    with socket.create_connection((address, port), timeout=3) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def _number(text: str) -> int:
    digits = re.sub(r"[^\d]", "", text)
    return int(digits) if digits else 0


@requires_chromium
def test_the_dashboard_shows_the_demo_and_its_counters_move(
    browser, start_netplane: Callable[..., Netplane], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    np = start_netplane("demo")  # an admin port of its own, ingress on free ports
    np.wait_ready(20)
    out = np.wait_output("Dashboard", 20)
    url = re.search(r"^Dashboard .*: (http://\S+/ui)$", out, re.M)
    assert url, out
    assert url.group(1) == f"{np.admin_url}/ui"
    ingress = re.search(r"http://web\.demo\.localhost:(\d+)/", out)
    assert ingress, out
    ingress_port = int(ingress.group(1))
    cluster_ip = re.search(r"^  curl http://(127\.77\.[\d.]+):(\d+)/    # demo/web", out, re.M)
    assert cluster_ip, out

    def until(what: str, cond: Callable[[], object]) -> object:
        try:
            return _until(what, cond)
        except AssertionError as e:
            status = driver.find_element(By.ID, "status").text
            raise AssertionError(f"{e}; the page's status: {status!r}\n{np.tail()}") from None

    driver.get(url.group(1))
    assert driver.title == "netplane dashboard"

    # Services: every one the demo's greeting lists, from the JSON, not from a reload.
    services = _greeting_services(out)
    assert "demo/web" in services
    for name in services:
        until(
            f"the services table to list {name}",
            lambda name=name: driver.find_elements(
                By.CSS_SELECTOR, f'#services-table tr[data-service="{name}"]'
            ),
        )
    web = driver.find_element(By.CSS_SELECTOR, '#services-table tr[data-service="demo/web"]')
    assert "ready" in web.find_element(By.CSS_SELECTOR, '[data-field="endpoints"]').text

    # Routes: every host and path of the demo's Ingress.
    for host, paths in _demo_ingress().items():
        for path in paths:
            until(
                f"the routes table to show {host}{path}",
                lambda host=host, path=path: [
                    row
                    for row in driver.find_elements(
                        By.CSS_SELECTOR, f'#routes-table tr[data-host="{host}"]'
                    )
                    if path in (row.get_attribute("data-paths") or "").split(" ")
                ],
            )

    # Read in one script call: the page re-renders every refresh, so two
    # WebDriver look-ups in a row could straddle a render.
    def cell(table: str, row: str, field: str) -> int:
        text = driver.execute_script(
            "const row = document.querySelector(arguments[0]);"
            " return row ? row.querySelector(arguments[1]).textContent : null;",
            f"#{table}-table tbody tr{row}",
            f'[data-field="{field}"]',
        )
        assert text is not None, f"no row {row} in #{table}-table"
        return _number(text)

    def route_requests() -> int:  # data-paths~="/": "/" is one of the row's paths
        return cell("routes", '[data-host="web.demo.localhost"][data-paths~="/"]', "requests")

    def l4_connections() -> int:
        return cell("services", '[data-service="demo/web"]', "connections")

    before_requests = route_requests()
    before_connections = l4_connections()

    # Traffic: through the ingress, through the L4 proxy, and a DNS query.
    for _ in range(3):
        assert _http_get(ingress_port, "web.demo.localhost", "/") == 200
    assert _http_get(ingress_port, "web.demo.localhost", "/api") == 200
    with socket.create_connection((cluster_ip.group(1), int(cluster_ip.group(2))), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
    assert _http_get(ingress_port, "nothere.demo.localhost", "/") == 404  # matches no route
    gateway = re.search(r"curl -H 'x-version: v2' http://([\d.]+):(\d+)/", out)
    if gateway:  # the demo's HTTPRoute
        for _ in range(4):
            assert _http_get(int(gateway.group(2)), "x", "/", gateway.group(1)) == 200
    dns = re.search(r"dig @127\.0\.0\.1 -p (\d+) web\.demo\.svc\.cluster\.local", out)
    if dns:
        for _ in range(2):  # the second from the answer cache
            DNSRecord.question("web.demo.svc.cluster.local", "A").send(
                "127.0.0.1", int(dns.group(1)), timeout=3
            )

    until(
        "the route's request counter to rise by 3 on the page",
        lambda: route_requests() >= before_requests + 3,
    )
    until(
        "demo/web's L4 connection counter to rise on the page",
        lambda: l4_connections() > before_connections,
    )
    assert "error" not in (driver.find_element(By.ID, "status").get_attribute("class") or "")

    # The filter works on the client: only demo/legacy is left.
    box = driver.find_element(By.ID, "services-filter")
    box.send_keys("legacy")
    until(
        "the filter to leave demo/legacy alone",
        lambda: (
            {
                r.get_attribute("data-service")
                for r in driver.find_elements(By.CSS_SELECTOR, "#services-table tr[data-service]")
            }
            == {"demo/legacy"}
        ),
    )
    box.send_keys(*[Keys.BACKSPACE] * len("legacy"))  # typed away: input events, as a user's
    until(
        "every service back",
        lambda: (
            len(driver.find_elements(By.CSS_SELECTOR, "#services-table tr.group-start"))
            == len(services)
        ),
    )

    # A screenshot of the whole page (past the window, through the DevTools
    # protocol), for the README when asked.
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    time.sleep(2.5)  # one more refresh, so that no cell is caught flashing
    width, height = driver.execute_script(
        "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight]"
    )
    png = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )["data"]
    shot = tmp_path / "dashboard.png"
    shot.write_bytes(base64.b64decode(png))
    assert shot.read_bytes().startswith(b"\x89PNG")
    if target := os.environ.get("NETPLANE_DASHBOARD_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)

    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"console errors: {severe}"
    assert np.stop() == 0
