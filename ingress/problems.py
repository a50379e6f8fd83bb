"""What the ingress will not serve as written: Ingress problems from the cluster state (sans-IO).

:meth:`IngressChecker.check` reads the state as the route table and the
certificate store do (the same IngressClass rules, :mod:`.classes`; the
same certificate checks, :func:`.certs.load_certificate`) and returns one
:class:`~netplane.problems.Problem` for each of:

- an Ingress whose ``spec.ingressClassName`` names an IngressClass that
  does not exist: no controller serves it (``no-ingress-class``);
- a backend, of a rule's path or ``spec.defaultBackend``, that names a
  Service that does not exist (or was rejected) or a TCP port the Service
  does not have: its requests get 503 (``backend-not-found``);
- a ``spec.tls`` Secret that does not exist, or whose certificate does not
  parse or does not match its key, and the ``--default-certificate`` Secret
  likewise: the default certificate serves those hosts instead (``tls``).

An Ingress for another controller (an IngressClass with another
``spec.controller``, a ``kubernetes.io/ingress.class`` annotation naming
another class, no class when none of ours is the default) is not a problem:
it is listed in :attr:`IngressDiagnosis.ignored`, for a debug line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from netplane.ingress.classes import ClassSelector
from netplane.ingress.gateway_plane import CertificateCache

from netplane.model import Ingress, IngressBackend, IngressClass, ObjectKey, Secret
from netplane.model.ingress import LEGACY_CLASS_ANNOTATION
from netplane.problems import Problem, ServiceRef
from netplane.state import ClusterState

ORIGIN = "ingress"


@dataclass(slots=True)
class IngressDiagnosis:
    """The problems, and one line per Ingress left to another controller."""

    problems: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _hosts(ing: Ingress) -> tuple[str, ...]:
    hosts = {r.host for r in ing.rules}
    hosts.update(h for t in ing.tls for h in t.hosts)
    if ing.default_backend is not None:
        hosts.add("")  # requests that match no rule
    return tuple(sorted(hosts))


def _services(ing: Ingress) -> tuple[ServiceRef, ...]:
    names = {p.backend.service_name for r in ing.rules for p in r.paths}
    if ing.default_backend is not None:
        names.add(ing.default_backend.service_name)
    return tuple(sorted((ing.key.namespace, n) for n in names if n))


def _list(hosts: tuple[str, ...]) -> str:
    return ", ".join(h or "*" for h in hosts)


class IngressChecker:
    """Ingress problems for one controller; keeps checked certificates between calls."""

    def __init__(
        self,
        *,
        ingress_class: str = "netplane",
        controller: str = "netplane.io/ingress",
        default_secret: tuple[str, str] | None = None,
    ) -> None:
        self.ingress_class = ingress_class
        self.controller = controller
        self.default_secret = default_secret
        self._certificates = CertificateCache()

    def check(self, state: ClusterState) -> IngressDiagnosis:
        out = IngressDiagnosis()
        selector = ClassSelector.from_state(
            state, ingress_class=self.ingress_class, controller=self.controller
        )
        classes = {c.key.name: c for c in state.objects("IngressClass")}
        rejected = state.rejected()
        # Secret -> (Ingress, its hosts) for each spec.tls entry naming it
        tls_users: dict[ObjectKey, list[tuple[ObjectKey, tuple[str, ...]]]] = {}
        for ing in sorted(state.objects("Ingress"), key=lambda i: i.key):
            if not selector.selects(ing):
                self._not_ours(ing, classes, out)
                continue
            for i, rule in enumerate(ing.rules):
                for j, p in enumerate(rule.paths):
                    where = f"host {rule.host or '*'} path {p.path}"
                    at = f"spec.rules[{i}].http.paths[{j}].backend"
                    self._backend(state, rejected, ing, p.backend, at, where, rule.host, out)
            if ing.default_backend is not None:
                where = "its default backend"
                self._backend(
                    state, rejected, ing, ing.default_backend, "spec.defaultBackend", where, "", out
                )
            ns = ing.key.namespace
            for i, t in enumerate(ing.tls):
                if not t.secret_name or not t.hosts:
                    continue  # no host takes a certificate from it
                skey = ObjectKey("Secret", ns, t.secret_name)
                if state.secret(ns, t.secret_name) is None:
                    out.problems.append(
                        Problem(
                            "tls",
                            f"Secret {ns}/{t.secret_name} does not exist (or is not of type"
                            f" kubernetes.io/tls); the default certificate serves"
                            f" {_list(t.hosts)}",
                            ing.key,
                            field=f"spec.tls[{i}].secretName",
                            origin=ORIGIN,
                            hosts=t.hosts,
                        )
                    )
                else:
                    tls_users.setdefault(skey, []).append((ing.key, t.hosts))
        checked: set[ObjectKey] = set()
        for skey, users in sorted(tls_users.items()):
            secret = state.secret(skey.namespace, skey.name)
            assert secret is not None
            checked.add(skey)
            hosts = tuple(sorted({h for _, hs in users for h in hs}))
            ingresses = ", ".join(sorted({str(k) for k, _ in users}))
            self._certificate(
                secret, f"the default certificate serves {_list(hosts)} ({ingresses})", hosts, out
            )
        if self.default_secret is not None:
            ns, name = self.default_secret
            skey = ObjectKey("Secret", ns, name)
            secret = state.secret(ns, name)
            if secret is None:
                out.problems.append(
                    Problem(
                        "tls",
                        "the --default-certificate Secret does not exist (or is not of type"
                        " kubernetes.io/tls); netplane's own default certificate serves",
                        skey,
                        origin=ORIGIN,
                    )
                )
            else:
                checked.add(skey)
                self._certificate(
                    secret,
                    "it is the --default-certificate; netplane's own default certificate serves",
                    (),
                    out,
                )
        self._certificates.keep_only(checked)
        return out

    def _not_ours(
        self, ing: Ingress, classes: dict[str, IngressClass], out: IngressDiagnosis
    ) -> None:
        name = ing.class_name
        legacy = ing.meta.annotations.get(LEGACY_CLASS_ANNOTATION, "")
        if not name:
            out.ignored.append(f"{ing.key}: no IngressClass, and none of ours is the default")
        elif name in classes:
            out.ignored.append(f"{ing.key}: IngressClass {name} is {classes[name].controller}'s")
        elif legacy == name:
            out.ignored.append(f"{ing.key}: kubernetes.io/ingress.class {name} is not ours")
        else:
            hint = ""
            if name == self.ingress_class:
                hint = f" (create it, with spec.controller: {self.controller}, to serve it)"
            out.problems.append(
                Problem(
                    "no-ingress-class",
                    f"IngressClass {name} does not exist; no controller serves this Ingress{hint}",
                    ing.key,
                    field="spec.ingressClassName",
                    origin=ORIGIN,
                    hosts=_hosts(ing),
                    services=_services(ing),
                )
            )

    @staticmethod
    def _backend(
        state: ClusterState,
        rejected: Mapping[ObjectKey, object],
        ing: Ingress,
        backend: IngressBackend,
        at: str,
        where: str,
        host: str,
        out: IngressDiagnosis,
    ) -> None:
        if not backend.service_name:
            return  # a resource backend: the route table says it is not supported
        ns, name = ing.key.namespace, backend.service_name
        svc = state.service(ns, name)
        hosts = (host,)
        if svc is None:
            why = "was rejected" if ObjectKey("Service", ns, name) in rejected else "does not exist"
            out.problems.append(
                Problem(
                    "backend-not-found",
                    f"Service {ns}/{name} {why}; {where} answers 503",
                    ing.key,
                    field=f"{at}.service.name",
                    origin=ORIGIN,
                    hosts=hosts,
                    services=((ns, name),),
                )
            )
            return
        number, pname = backend.port_number, backend.port_name
        for p in svc.ports:
            if p.protocol == "TCP" and (
                p.port == number if number is not None else p.name == pname
            ):
                return
        port = str(number) if number is not None else repr(pname)
        out.problems.append(
            Problem(
                "backend-not-found",
                f"Service {ns}/{name} has no TCP port {port}; {where} answers 503",
                ing.key,
                field=f"{at}.service.port",
                origin=ORIGIN,
                hosts=hosts,
                services=((ns, name),),
            )
        )

    def _certificate(
        self, secret: Secret, then: str, hosts: tuple[str, ...], out: IngressDiagnosis
    ) -> None:
        why = self._certificates.check(secret)
        if not why:
            return
        at = "data[tls.key]" if why.startswith("tls.key") else "data[tls.crt]"
        out.problems.append(
            Problem("tls", f"{why}; {then}", secret.key, at=at, origin=ORIGIN, hosts=hosts)
        )
