"""The Gateway API conformance suite's base world, rebuilt for in-process tests.

kubernetes-sigs/gateway-api ``conformance/base/manifests.yaml`` defines three
namespaces, a GatewayClass, four Gateways and echo backends
(``infra-backend-v1``..``v3``, ``app-backend-v1``/``v2``, ``web-backend``)
that answer every request with a JSON account of it. :class:`ConformanceWorld`
builds the same objects and starts small echo servers in their place, each
on its own loopback address, with EndpointSlices pointing at them, then runs
one netplane Dataplane (local mode) serving them.

Two deliberate differences, which keep the tests runnable without root and
in parallel with other tests: listener ports 80 and 443 (and parentRef
ports) are mapped to free ports, and every base Gateway gets its own
loopback address in ``spec.addresses`` (the suite relies on the
implementation giving each Gateway an address; netplane binds
``--gateway-address`` otherwise, where two Gateways on port 80 would
conflict).

The echo answer carries the fields the suite's checks read: ``path`` (with
the query), ``host``, ``method``, ``headers`` (name -> values),
``namespace`` and ``pod`` (the Service name and an index). A request's
``X-Echo-Set-Header: name:value,...`` becomes response headers, as
echo-basic does.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ingress_fakes import Backends
from netplane.ingress.plane import IngressPlane

import netplane
from netplane.config import Listen
from netplane.model import ObjectKey
from netplane.testing.http import Request, Stream
from netplane.testing.ports import free_port

INFRA = "gateway-conformance-infra"
APP = "gateway-conformance-app-backend"
WEB = "gateway-conformance-web-backend"
CLASS = "netplane"
GROUP = "gateway.networking.k8s.io"
V1 = f"{GROUP}/v1"

#: (namespace, Service) -> the loopback address its echo server listens on
BACKENDS: dict[tuple[str, str], str] = {
    (INFRA, "infra-backend-v1"): "127.0.90.1",
    (INFRA, "infra-backend-v2"): "127.0.90.2",
    (INFRA, "infra-backend-v3"): "127.0.90.3",
    (APP, "app-backend-v1"): "127.0.90.4",
    (APP, "app-backend-v2"): "127.0.90.5",
    (WEB, "web-backend"): "127.0.90.6",
}
#: the base Gateways and the address each one gets
GATEWAYS = {
    "same-namespace": "127.0.91.1",
    "all-namespaces": "127.0.91.2",
    "backend-namespaces": "127.0.91.3",
    "same-namespace-with-https-listener": "127.0.91.4",
}
HAVE_CURL = shutil.which("curl") is not None
#: The specification's ReplacePrefixMatch table (HTTPPathModifier): (request path,
#: PathPrefix matched, replacement, the path that results), for redirects and rewrites alike.
REPLACE_PREFIX_MATCH = [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
]


def meta(name: str, namespace: str = INFRA, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, **extra}


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def gateway(name: str, listeners: list[dict], *, ns: str = INFRA, addresses: Iterable[str] = (),
            cls: str = CLASS) -> dict[str, Any]:  # fmt: skip
    spec: dict[str, Any] = {"gatewayClassName": cls, "listeners": listeners}
    if addresses:
        spec["addresses"] = [{"type": "IPAddress", "value": a} for a in addresses]
    return {"apiVersion": V1, "kind": "Gateway", "metadata": meta(name, ns), "spec": spec}


def listener(name: str, port: int = 80, protocol: str = "HTTP", **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": protocol, **extra}


def http_route(name: str, rules: list[dict], *, ns: str = INFRA, parents: Iterable[Any] = (
        "same-namespace",), hostnames: Iterable[str] = ()) -> dict[str, Any]:  # fmt: skip
    refs = [p if isinstance(p, dict) else {"name": p, "namespace": INFRA} for p in parents]
    spec: dict[str, Any] = {"parentRefs": refs, "rules": rules}
    if hostnames:
        spec["hostnames"] = list(hostnames)
    return {"apiVersion": V1, "kind": "HTTPRoute", "metadata": meta(name, ns), "spec": spec}


def backend(name: str, port: int = 8080, **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": port, **extra}


def base_objects(p80: int, p443: int, tls_secret: dict | None) -> list[dict[str, Any]]:
    """The suite's base manifests (ports mapped, addresses given)."""
    objs: list[dict[str, Any]] = [
        namespace(INFRA, {"gateway-conformance": "infra"}),
        namespace(APP, {"gateway-conformance": "backend"}),
        namespace(WEB, {"gateway-conformance": "backend"}),
        {
            "apiVersion": V1,
            "kind": "GatewayClass",
            "metadata": {"name": CLASS},
            "spec": {"controllerName": "netplane.io/gateway-controller"},
        },
        gateway("same-namespace", [listener("http", p80)], addresses=[GATEWAYS["same-namespace"]]),
        gateway(
            "all-namespaces",
            [listener("http", p80, allowedRoutes={"namespaces": {"from": "All"}})],
            addresses=[GATEWAYS["all-namespaces"]],
        ),
        gateway(
            "backend-namespaces",
            [
                listener(
                    "http",
                    p80,
                    allowedRoutes={
                        "namespaces": {
                            "from": "Selector",
                            "selector": {"matchLabels": {"gateway-conformance": "backend"}},
                        }
                    },
                )
            ],
            addresses=[GATEWAYS["backend-namespaces"]],
        ),
    ]
    if tls_secret is not None:
        cert = {"certificateRefs": [{"kind": "Secret", "name": "tls-validity-checks-certificate"}]}
        objs.append(tls_secret)
        objs.append(
            gateway(
                "same-namespace-with-https-listener",
                [
                    listener("https", p443, "HTTPS", tls=cert),
                    listener(
                        "https-with-hostname",
                        p443,
                        "HTTPS",
                        hostname="second-example.org",
                        tls=cert,
                    ),
                    listener(
                        "https-with-wildcard-hostname",
                        p443,
                        "HTTPS",
                        hostname="*.wildcard.org",
                        tls=cert,
                    ),
                    listener(
                        "https-with-hostname-matching-wildcard",
                        p443,
                        "HTTPS",
                        hostname="fourth-example.wildcard.org",
                        tls=cert,
                    ),
                ],
                addresses=[GATEWAYS["same-namespace-with-https-listener"]],
            )
        )
    return objs


def service_objects(ns: str, name: str, port: int, h2c_port: int | None = None) -> list[dict]:
    """A Service like the suite's (8080 first-port, and on v1 an h2c and a ws port) and its slice."""
    ports = [{"name": "first-port", "port": 8080, "targetPort": 3000}]
    slice_ports = [{"name": "first-port", "port": port}]
    if h2c_port is not None:
        ports += [
            {"name": "second-port", "port": 8081, "appProtocol": "kubernetes.io/h2c"},
            {"name": "third-port", "port": 8082, "appProtocol": "kubernetes.io/ws"},
        ]
        slice_ports += [{"name": "second-port", "port": h2c_port},
                        {"name": "third-port", "port": port}]  # fmt: skip
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(name, ns),
            "spec": {"ports": ports},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": meta(f"{name}-1", ns, labels={"kubernetes.io/service-name": name}),
            "addressType": "IPv4",
            "ports": slice_ports,
            "endpoints": [{"addresses": [BACKENDS[(ns, name)]], "conditions": {"ready": True}}],
        },
    ]


def echo_handler(ns: str, name: str, seen: list[dict]):
    """An echo-basic stand-in: 200 with the request as JSON."""

    async def handle(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        headers: dict[str, list[str]] = {}
        host = ""
        for k, v in req.header_list:
            key = "-".join(part.capitalize() for part in k.decode().split("-"))
            if k == b"host":
                host = v.decode()
                continue
            headers.setdefault(key, []).append(v.decode())
        doc = {
            "path": req.target.decode(),
            "host": host,
            "method": req.method.decode(),
            "headers": headers,
            "namespace": ns,
            "service": name,
            "pod": f"{name}-0",
        }
        seen.append(doc)
        extra = b""
        for item in req_headers(req).get(b"x-echo-set-header", b"").split(b","):
            n, sep, v = item.partition(b":")
            if sep and n.strip():
                extra += n.strip() + b": " + v.strip() + b"\r\n"
        body = json.dumps(doc).encode()
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%bContent-Length: %d\r\n\r\n%b"
            % (extra, len(body), body)
        )
        await w.drain()

    return handle


def req_headers(req: Request) -> dict[bytes, bytes]:
    return {k: v for k, v in req.header_list}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased name -> value (repeated ones joined with ",")
    body: str

    @property
    def echo(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def served_by(self) -> str:
        """``namespace/service`` of the echo backend that answered ("" when none did)."""
        try:
            doc = self.echo
        except ValueError:
            return ""
        return f"{doc['namespace']}/{doc['service']}"

    def seen_header(self, name: str) -> str | None:
        """A request header as the backend saw it, values joined with "," (the suite's way)."""
        for k, v in self.echo["headers"].items():
            if k.lower() == name.lower():
                return ",".join(v)
        return None


@dataclass
class ConformanceWorld:
    """A Dataplane serving the base world plus a test's own objects (see the module docstring)."""

    p80: int = field(default_factory=free_port)
    p443: int = field(default_factory=free_port)
    backends: Backends = field(default_factory=Backends)
    seen: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    dp: Any = None
    ca: Any = None

    async def start(self, objects: Iterable[dict[str, Any]] = (), *, tls: bool = False) -> None:
        secret = None
        if tls:
            import trustme

            self.ca = trustme.CA()
            cert = self.ca.issue_cert(
                "example.org", "second-example.org", "*.wildcard.org", "*.org"
            )
            secret = tls_secret(INFRA, "tls-validity-checks-certificate", cert)
        objs = base_objects(self.p80, self.p443, secret)
        for (ns, name), addr in BACKENDS.items():
            port = free_port()
            self.seen[(ns, name)] = seen = []
            await self.backends.start(echo_handler(ns, name, seen), addr, port)
            objs += service_objects(ns, name, port, port if name == "infra-backend-v1" else None)
        objs += [self.mapped(o) for o in objects]
        config = netplane.Config(
            mode="local", admin=None, proxy=False, dns=None,
            ingress_http=Listen("127.0.0.1", 0), ingress_https=None, ingress_access_log=None,
        )  # fmt: skip
        self.dp = netplane.Dataplane(config)
        for o in objs:
            result = self.dp.apply(o)
            assert result.error is None, result.error
        await self.dp.start()

    def mapped(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``obj`` with ports 80 and 443 of listeners and parentRefs mapped to this world's."""
        obj = copy.deepcopy(obj)
        ports = {80: self.p80, 443: self.p443}
        spec = obj.get("spec", {})
        for item in [*spec.get("listeners", []), *spec.get("parentRefs", [])]:
            if item.get("port") in ports:
                item["port"] = ports[item["port"]]
        return obj

    async def apply(self, *objects: dict[str, Any]) -> None:
        """Apply more objects (or new versions) and let the planes take the change."""
        for o in objects:
            result = self.dp.apply(self.mapped(o))
            assert result.error is None, result.error
        await self.settle()

    async def delete(self, kind: str, ns: str, name: str) -> None:
        self.dp.delete(kind, ns, name)
        await self.settle()

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0.02)
            if not self.plane._stream.pending:
                await asyncio.sleep(0.02)
                return

    @property
    def plane(self) -> IngressPlane:
        return self.dp.planes["ingress"]

    def status(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        """The status netplane reports for an object (None: it reports none)."""
        key = ObjectKey(kind, "" if kind == "GatewayClass" else ns, name)
        return self.plane.gateway.world.statuses.get(key)

    def parent_condition(self, kind: str, ns: str, name: str, cond: str, parent: str = "") -> dict:
        st = self.status(kind, ns, name)
        assert st is not None, f"no status for {kind} {ns}/{name}"
        for p in st["parents"]:
            if not parent or p["parentRef"]["name"] == parent:
                for c in p["conditions"]:
                    if c["type"] == cond:
                        return c
        raise AssertionError(f"{kind} {ns}/{name} has no {cond} condition for {parent or 'any'}")

    def listener_status(self, gw: str, name: str, ns: str = INFRA) -> dict[str, Any]:
        st = self.status("Gateway", ns, gw)
        assert st is not None
        for li in st["listeners"]:
            if li["name"] == name:
                return li
        raise AssertionError(f"Gateway {ns}/{gw} has no listener {name}")

    def address(self, gw: str, port: int | None = None) -> tuple[str, int]:
        return GATEWAYS.get(gw, "127.0.0.1"), port or self.p80

    async def request(
        self,
        gw: str,
        path: str = "/",
        *,
        host: str | None = None,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        https: bool = False,
        address: tuple[str, int] | None = None,
        http2: bool = False,
    ) -> Reply:
        """One request with curl to a Gateway; the reply as the client saw it."""
        ip, port = address or self.address(gw, self.p443 if https else None)
        name = host or ip
        hostname = name.split(":")[0]
        scheme = "https" if https else "http"
        args = ["-sS", "--max-time", "5", "-D", "-", "-X", method, "--path-as-is"]
        if method == "HEAD":
            args = [a for a in args if a not in ("-X", method)] + ["-I"]
        if https:
            args += ["--resolve", f"{hostname}:{port}:{ip}", "-k"]
            url = f"{scheme}://{hostname}:{port}{path}"
        else:
            url = f"{scheme}://{ip}:{port}{path}"
            args += ["-H", f"Host: {name}"]
        args += ["--http2-prior-knowledge" if http2 and not https else
                 "--http2" if http2 else "--http1.1"]  # fmt: skip
        for k, v in (headers or {}).items():
            args += ["-H", f"{k}: {v}"]
        proc = await asyncio.create_subprocess_exec(
            "curl", *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, f"curl {url}: {err.decode(errors='replace')}"
        text = out.decode("latin-1")
        head, _, body = text.partition("\r\n\r\n")
        while head.startswith("HTTP/") and " 100 " in head.split("\r\n", 1)[0]:
            head, _, body = body.partition("\r\n\r\n")
        lines = head.split("\r\n")
        status = int(lines[0].split()[1])
        hdrs: dict[str, str] = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            k = k.strip().lower()
            hdrs[k] = f"{hdrs[k]},{v.strip()}" if k in hdrs else v.strip()
        return Reply(status, hdrs, body)

    async def close(self) -> None:
        if self.dp is not None:
            await self.dp.stop(1)
        await self.backends.close()


def tls_secret(ns: str, name: str, cert: Any) -> dict[str, Any]:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": meta(name, ns),
        "data": {
            "tls.crt": base64.b64encode(cert.cert_chain_pems[0].bytes()).decode(),
            "tls.key": base64.b64encode(cert.private_key_pem.bytes()).decode(),
        },
    }
