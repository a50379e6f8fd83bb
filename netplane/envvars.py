"""Service discovery by environment variables, the way kubelet gives them to a pod.

For every Service of the pod's namespace that has a cluster IP (headless and
ExternalName services have none and get no variables), plus the
``kubernetes`` Service of ``default`` unless the namespace has its own
Service of that name, kubelet sets:

- ``{SVC}_SERVICE_HOST`` (the first cluster IP) and ``{SVC}_SERVICE_PORT``
  (the first port), and ``{SVC}_SERVICE_PORT_{NAME}`` per named port;
- the Docker link variables: ``{SVC}_PORT=tcp://IP:PORT`` for the first
  port, and per port ``{SVC}_PORT_{PORT}_{PROTO}`` with ``_PROTO``,
  ``_PORT`` and ``_ADDR``.

``{SVC}`` is the name upper-cased with dashes turned into underscores; an
IPv6 address is bracketed in the URLs. Sans-IO: Services in, pairs out.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from netplane.addresses import hostport
from netplane.model import Service

MASTER_NAMESPACE = "default"
MASTER_SERVICES = ("kubernetes",)


def env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def visible_services(services: Iterable[Service], namespace: str) -> list[Service]:
    """The Services whose variables a pod in ``namespace`` gets, sorted by name."""
    chosen: dict[str, Service] = {}
    masters: dict[str, Service] = {}
    for svc in services:
        ns, name = svc.key.namespace, svc.key.name
        if ns == namespace:
            chosen[name] = svc
        elif ns == MASTER_NAMESPACE and name in MASTER_SERVICES:
            masters[name] = svc
    for name, svc in masters.items():
        chosen.setdefault(name, svc)
    return [chosen[name] for name in sorted(chosen)]


def service_env(svc: Service) -> list[tuple[str, str]]:
    """The variables of one Service; none without a cluster IP."""
    if not svc.cluster_ips or not svc.ports:
        return []
    prefix = env_name(svc.key.name)
    ip = svc.cluster_ips[0]
    out = [
        (f"{prefix}_SERVICE_HOST", ip),
        (f"{prefix}_SERVICE_PORT", str(svc.ports[0].port)),
    ]
    out += [(f"{prefix}_SERVICE_PORT_{env_name(p.name)}", str(p.port)) for p in svc.ports if p.name]
    for i, p in enumerate(svc.ports):
        proto = p.protocol.lower()
        url = f"{proto}://{hostport(ip, p.port)}"
        if i == 0:
            out.append((f"{prefix}_PORT", url))
        base = f"{prefix}_PORT_{p.port}_{p.protocol.upper()}"
        out += [
            (base, url),
            (f"{base}_PROTO", proto),
            (f"{base}_PORT", str(p.port)),
            (f"{base}_ADDR", ip),
        ]
    return out


def namespace_env(services: Iterable[Service], namespace: str) -> list[tuple[str, str]]:
    """Every variable a pod in ``namespace`` gets, in a stable order."""
    return [pair for svc in visible_services(services, namespace) for pair in service_env(svc)]


def shell_exports(pairs: Iterable[tuple[str, str]]) -> str:
    """``export NAME=value`` lines, quoted for ``eval`` in a POSIX shell."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in pairs)
