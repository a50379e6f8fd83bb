"""Problems: every object netplane refused or ignored, with why, in one place (sans-IO).

A :class:`Problem` is one thing wrong with the input: the object it is
about (its key, when the object could be named), a short fixed ``code``
(the ``reason`` label of ``netplane_problems``), a one-line reason, and
where the object came from (``path:line`` for a manifest). Its ``str()``
is the line the log, ``netplane check`` and ``/debug/state`` show:
``path:line: Kind namespace/name: field.path: what is wrong``.

Problems come from several places, each the one that can tell:

- a source, for what it could not parse or validate (``invalid``), a
  manifest file it could not read (``unreadable``), an object defined twice
  (``duplicate``): reported in :class:`netplane.events.SourceProblems`;
- the cluster state, for a Service the cluster-wide checks refused
  (``rejected``: a clusterIP outside the service CIDR, one already held);
- the ingress, for an Ingress no controller will serve (``no-ingress-class``),
  a backend that names a Service or port that is not there
  (``backend-not-found``), a TLS Secret that is missing or whose
  certificate does not match its key (``tls``);
- the Gateway API attachment, for each status condition that is not met
  (``gateway``).

A :class:`ProblemBook` holds the current ones by origin: each origin
replaces its own list wholesale when it looks again, and the book says
which problems are new (logged once) and which are gone. It answers
"which problems concern this object, Service or host"
(:meth:`ProblemBook.concerning`), the question ``netplane explain`` asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

from netplane.errors import ModelError
from netplane.model import ObjectKey

#: code -> what it means (the README's metrics section lists the same)
CODES = {
    "invalid": "a field error: the object (its latest version) was not accepted",
    "unreadable": "a manifest file or path that could not be read or parsed",
    "duplicate": "an object defined more than once; the first definition is used",
    "rejected": "refused by the cluster-wide checks (clusterIP, nodePort)",
    "no-ingress-class": "an Ingress naming an IngressClass that does not exist: ignored",
    "backend-not-found": "a backend naming a Service or port that does not exist",
    "tls": "a TLS Secret that is missing or cannot serve: the default certificate serves",
    "gateway": "a Gateway API status condition that is not met",
}

#: codes of an object refused as a whole (netplane_rejected_objects_*)
REFUSED = frozenset({"invalid", "rejected"})

ServiceRef = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class Problem:
    """One refused or ignored object (or file), and why; ``str()`` is its one line.

    ``ref`` names the object as the message does (``Service shop/web``, or
    just ``Service`` when the name could not be read); ``field`` is shown
    before the reason, ``at`` (when set) is the field the line points at
    instead. ``hosts`` and ``services`` are what the object would have
    served: a question about one of them finds this problem.
    """

    code: str
    reason: str
    key: ObjectKey | None = None
    ref: str = ""
    field: str = ""
    at: str = ""
    path: str = ""
    line: int = 0
    column: int | None = None
    origin: str = ""
    hosts: tuple[str, ...] = ()
    services: tuple[ServiceRef, ...] = ()

    def __post_init__(self) -> None:
        if not self.ref and self.key is not None:
            object.__setattr__(self, "ref", str(self.key))

    @property
    def kind(self) -> str:
        """The object's kind ("" for a problem with a whole file)."""
        if self.key is not None:
            return self.key.kind
        first = self.ref.split(" ", 1)[0]
        return "" if first in ("", "object") else first

    @property
    def where(self) -> str:
        """``path:line`` (``path:line:column`` for a syntax error), or "" when unknown."""
        where = self.path
        if where and self.line:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def describe(self) -> str:
        """The line without where: ``Kind namespace/name: field: what is wrong``."""
        return _one_line(": ".join(p for p in (self.ref, self.field, self.reason) if p))

    def __str__(self) -> str:
        return _one_line(": ".join(p for p in (self.where, self.describe()) if p))

    @property
    def identity(self) -> tuple:
        """What makes two reports the same problem (the same line said again)."""
        return (self.code, self.ref, self.field, self.reason, self.path, self.line, self.column)

    def located(self, path: str, line: int) -> Problem:
        return replace(self, path=path, line=line)

    def to_dict(self) -> dict[str, object]:
        """The JSON form of ``/debug/state``'s ``problems``."""
        out: dict[str, object] = {
            "kind": self.kind,
            "reason": self.code,
            "message": str(self),
        }
        if self.key is not None:
            out["namespace"] = self.key.namespace
            out["name"] = self.key.name
        if self.field:
            out["field"] = self.field
        if self.path:
            out["path"] = self.path
            out["line"] = self.line
        if self.hosts:
            out["hosts"] = list(self.hosts)
        if self.services:
            out["services"] = [f"{ns}/{name}" for ns, name in self.services]
        return out


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def services_of(key: ObjectKey | None) -> tuple[ServiceRef, ...]:
    """The Service an object stands for, when it is one."""
    if key is not None and key.kind == "Service":
        return ((key.namespace, key.name),)
    return ()


def from_model_error(
    err: ModelError, key: ObjectKey | None, code: str = "invalid", origin: str = ""
) -> Problem:
    """A ModelError (its ref, field and reason) as a problem about ``key``."""
    return Problem(
        code,
        err.reason,
        key,
        ref=err.ref,
        field=err.field,
        origin=origin,
        services=services_of(key),
    )


#: (object key, field) pairs -> (path, line) of each that can be told (a manifest's)
Locate = Callable[
    [Iterable[tuple[ObjectKey, str]]], Mapping[tuple[ObjectKey, str], tuple[str, int]]
]


def place(problems: Iterable[Problem], locate: Locate) -> list[Problem]:
    """Each problem about an object, with the path and line of that object's field at fault
    (``at``, else ``field``; the object's first line when neither is found) when ``locate``
    can tell; those it cannot, and those already placed, as they are."""
    problems = list(problems)
    wanted = {(p.key, p.at or p.field) for p in problems if p.key is not None and not p.path}
    if not wanted:
        return problems
    found = locate(wanted)
    out = []
    for p in problems:
        where = found.get((p.key, p.at or p.field)) if p.key is not None and not p.path else None
        out.append(p.located(*where) if where is not None else p)
    return out


def _sort_key(p: Problem) -> tuple:
    return (p.path == "", p.path, p.line, p.ref, p.field, p.reason)


def host_matches(pattern: str, host: str) -> bool:
    """Whether a rule host (``""`` is every host, ``*.a.b`` one label under a.b) covers ``host``."""
    if not pattern or pattern == host:
        return True
    if pattern.startswith("*."):
        dot = host.find(".")
        return 0 < dot < len(host) - 1 and host[dot + 1 :] == pattern[2:]
    return False


def concerning(
    problems: Iterable[Problem],
    *,
    key: ObjectKey | None = None,
    service: ServiceRef | None = None,
    host: str | None = None,
) -> list[Problem]:
    """The problems about ``key``, or about what would have served ``service`` or ``host``.

    A problem matches when any given criterion matches: its object is
    ``key``; ``service`` is its object or one of the Services it would have
    sent traffic to; ``host`` is one it would have served (a wildcard or an
    any-host rule covers it).
    """
    host = host.lower().rstrip(".") if host else host
    out = []
    for p in problems:
        if (
            (key is not None and p.key == key)
            or (service is not None and service in p.services)
            or (host is not None and any(host_matches(h, host) for h in p.hosts))
        ):
            out.append(p)
    return out


class ProblemBook:
    """The current problems, by origin and scope; says what is new and what is gone.

    ``origin`` is who found them ("state", "ingress", "gateway", or a
    source's name); ``scope`` narrows what one report replaces (a kube
    source reports one object at a time; "" is the whole origin).
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], tuple[Problem, ...]] = {}
        self._cache: list[Problem] | None = None

    def replace(
        self, origin: str, problems: Iterable[Problem], scope: str = ""
    ) -> tuple[list[Problem], list[Problem]]:
        """Make ``problems`` the current ones of ``origin`` (and ``scope``): (new, gone)."""
        new_list = tuple(problems)
        old_list = self._groups.get((origin, scope), ())
        if new_list == old_list:
            return [], []
        if new_list:
            self._groups[(origin, scope)] = new_list
        else:
            self._groups.pop((origin, scope), None)
        self._cache = None
        old = {p.identity for p in old_list}
        now = {p.identity for p in new_list}
        return (
            [p for p in new_list if p.identity not in old],
            [p for p in old_list if p.identity not in now],
        )

    def clear(self, origin: str) -> list[Problem]:
        """Forget every problem of ``origin`` (a source starting over); returns them."""
        gone: list[Problem] = []
        for group in [g for g in self._groups if g[0] == origin]:
            gone.extend(self._groups.pop(group))
        if gone:
            self._cache = None
        return gone

    def of(self, origin: str) -> list[Problem]:
        return [p for (o, _), ps in self._groups.items() if o == origin for p in ps]

    def all(self) -> list[Problem]:
        """Every current problem, once, manifest ones in file and line order first."""
        if self._cache is None:
            seen: set[tuple] = set()
            out: list[Problem] = []
            for ps in self._groups.values():
                for p in ps:
                    if p.identity not in seen:
                        seen.add(p.identity)
                        out.append(p)
            out.sort(key=_sort_key)
            self._cache = out
        return list(self._cache)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.all())

    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, code) -> how many: the ``netplane_problems`` gauge."""
        out: dict[tuple[str, str], int] = {}
        for p in self.all():
            k = (p.kind, p.code)
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    def concerning(
        self,
        *,
        key: ObjectKey | None = None,
        service: ServiceRef | None = None,
        host: str | None = None,
    ) -> list[Problem]:
        """See :func:`concerning`."""
        return concerning(self.all(), key=key, service=service, host=host)
