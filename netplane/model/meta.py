"""Object identity, metadata and the field reader used by every parser.

Parsers read raw API dicts through :class:`Fields`, which knows the path of
the field it stands on, so every :class:`ModelError` names the object and the
exact field (``spec.ports[1].port``) without each parser building strings.
"""

from __future__ import annotations

import builtins
import re
import sys
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

from netplane.errors import ModelError

# Kinds whose objects live outside namespaces.
CLUSTER_SCOPED = frozenset({"IngressClass", "Node", "Namespace", "GatewayClass"})

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# The canonical text of an IPv4 address, matched exactly (no leading zeros,
# each octet 0-255): an address that matches is already what
# str(ipaddress.ip_address(a)) would give, so hot paths skip building one.
is_canonical_ipv4 = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    r"(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
).fullmatch


# The decoded document (JSON or YAML) is garbage once the model holds its
# objects, but every string or large int the model kept from it would stay
# where the decoder put it, scattered across the document's memory, and pin
# all of it (CPython frees an arena only when nothing in it lives). So the
# parsers keep their own copies, allocated beside the model objects.


def own(s: str) -> str:
    """A fresh copy of ``s``, so that the model keeps nothing the decoder allocated."""
    return (s + " ")[:-1] if s else ""


_SHARED: dict[str, str] = {}
_SHARED_MAX = 65536  # distinct values kept; past it the table starts again


def shared(s: str) -> str:
    """:func:`own`, one copy per value: for values that repeat across objects (namespaces, nodes).

    One dict lookup when the value was seen before, which is nearly always.
    """
    v = _SHARED.get(s)
    if v is None:
        if not s:
            return ""
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        v = sys.intern((s + " ")[:-1])
        _SHARED[v] = v
    return v


def own_int(v: int) -> int:
    """A fresh int (small ints are cached by CPython and are returned as they are)."""
    return v + 0


# Shared by every object without labels or annotations; the model is never mutated.
EMPTY_MAP: dict[str, str] = {}


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS1123_LABEL.match(value))


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(_DNS1123_SUBDOMAIN.match(value))


def is_dns1035_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS1035_LABEL.match(value))


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    """Identity of an object: kind, namespace ("" when cluster-scoped), name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class Meta:
    """The parts of ``metadata`` that netplane uses."""

    name: str
    namespace: str
    # Not compared: an object whose only change is a new resourceVersion is the
    # same object to every data plane (a resync or a no-op update).
    resource_version: str = field(default="", compare=False)
    creation_timestamp: str = ""
    labels: dict[str, str] = field(default_factory=dict, compare=True)
    annotations: dict[str, str] = field(default_factory=dict, compare=True)
    deletion_timestamp: str = ""


def fast_constructor(cls: type) -> Any:
    """A positional constructor for a frozen, slotted dataclass, up to five times as fast.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__`` to get past its own guard. Here the object is
    built as an unfrozen twin with the same slots (plain attribute stores,
    in an ``__init__`` generated with ``exec`` as dataclasses itself does)
    that makes itself a ``cls`` at the end, which Python allows between
    classes of identical layout. The result is an ordinary ``cls``: same
    type, equality, hash, repr and immutability. Every field must be
    passed, in order, and no ``__post_init__`` runs; it is for hot paths
    that build an object per request or 100k per update (Forward, Endpoint,
    Backend), nowhere else.

    The one exec-generated constructor in netplane. Whether ``exec`` is
    needed, measured with timeit (Python 3.11, 2 busy cores, best of 9):
    per object, the dataclass ``__init__`` / a loop over the slots'
    setters without ``exec`` / generated setter calls / this twin took
    Forward (8 fields) 1510 / 1410 / 1200 / 430 ns, Endpoint (8) 1400 /
    1600 / 1040 / 380 ns, Backend (2) 280 / 690 / 450 / 270 ns. Without
    ``exec`` nothing beats the dataclass's own ``__init__``.
    """
    names = tuple(f.name for f in fields(cls))
    if cls.__bases__ != (object,) or tuple(getattr(cls, "__slots__", ())) != names:
        raise TypeError(f"{cls.__name__}: fast_constructor needs a slotted dataclass on object")
    args = ", ".join(names)
    body = "\n".join(f"        self.{n} = {n}" for n in names)
    ns: dict[str, Any] = {"_cls": cls}
    exec(
        f"class Twin:\n    __slots__ = {names!r}\n    def __init__(self, {args}):\n{body}\n"
        "        self.__class__ = _cls\n",
        ns,
    )
    make = ns["Twin"]
    make.__qualname__ = f"fast_{cls.__name__}"
    return make


def _fmt_path(parts: tuple[str | int, ...]) -> str:
    out: list[str] = []
    for p in parts:
        if isinstance(p, int):
            out.append(f"[{p}]")
        elif out:
            out.append("." + p)
        else:
            out.append(p)
    return "".join(out)


class Fields:
    """A raw mapping plus its path and owning object, for precise errors.

    Every accessor checks the type of what it finds; a wrong type or a
    missing required field raises :class:`ModelError` naming the path.

    The accessors ``str``, ``int``, ``bool`` and ``list`` shadow the builtins
    in this class's body, so the signatures below them spell the types
    ``builtins.str`` and so on (type checkers resolve annotations there).
    """

    __slots__ = ("_path", "raw", "ref")

    def __init__(self, raw: Any, ref: str, path: tuple[str | int, ...] = ()) -> None:
        if not isinstance(raw, dict):
            raise ModelError(ref, _fmt_path(path), f"expected an object, got {_type(raw)}")
        self.raw = raw
        self.ref = ref
        self._path = path

    def path(self, name: str | int | None = None) -> str:
        return _fmt_path(self._path if name is None else (*self._path, name))

    def fail(self, name: str | int | None, reason: str) -> NoReturn:
        raise ModelError(self.ref, self.path(name), reason)

    def has(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def str(self, name: str, default: str = "", *, required: bool = False) -> str:
        v = self.raw.get(name)
        if v is None:
            if required:
                self.fail(name, "required")
            return default
        if not isinstance(v, str):
            self.fail(name, f"expected a string, got {_type(v)}")
        if required and not v:
            self.fail(name, "required")
        return own(v)

    def choice(
        self,
        name: builtins.str,
        choices: tuple[builtins.str, ...],
        default: builtins.str = "",
        *,
        required: builtins.bool = False,
    ) -> builtins.str:
        """A string that must be one of ``choices`` (compared exactly, as the API does)."""
        v = self.str(name, default, required=required)
        if v not in choices:
            self.fail(name, f"unsupported value {v!r} (one of {', '.join(choices)})")
        return choices[choices.index(v)]

    def int(
        self,
        name: builtins.str,
        default: builtins.int | None = None,
        *,
        required: builtins.bool = False,
    ) -> builtins.int | None:
        v = self.raw.get(name)
        if v is None:
            if required:
                self.fail(name, "required")
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(name, f"expected an integer, got {_type(v)}")
        return own_int(v)

    def bool(
        self, name: builtins.str, default: builtins.bool | None = None
    ) -> builtins.bool | None:
        v = self.raw.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            self.fail(name, f"expected true or false, got {_type(v)}")
        return v

    def obj(self, name: builtins.str, *, required: builtins.bool = False) -> Fields:
        v = self.raw.get(name)
        if v is None:
            if required:
                self.fail(name, "required")
            v = {}
        return Fields(v, self.ref, (*self._path, name))

    def opt_obj(self, name: builtins.str) -> Fields | None:
        v = self.raw.get(name)
        if v is None:
            return None
        return Fields(v, self.ref, (*self._path, name))

    def list(self, name: builtins.str) -> builtins.list[Any]:
        v = self.raw.get(name)
        if v is None:
            return []
        if not isinstance(v, list):
            self.fail(name, f"expected a list, got {_type(v)}")
        return v

    def objs(self, name: builtins.str) -> builtins.list[Fields]:
        return [
            Fields(item, self.ref, (*self._path, name, i)) for i, item in enumerate(self.list(name))
        ]

    def strs(self, name: builtins.str) -> tuple[builtins.str, ...]:
        out = self.list(name)
        for i, item in enumerate(out):
            if not isinstance(item, str):
                raise ModelError(
                    self.ref,
                    _fmt_path((*self._path, name, i)),
                    f"expected a string, got {_type(item)}",
                )
        return tuple([own(item) for item in out])

    def str_map(self, name: builtins.str) -> dict[builtins.str, builtins.str]:
        """A map of strings, copied (keys interned: they repeat across objects)."""
        v = self.raw.get(name)
        if v is None:
            return EMPTY_MAP
        if not isinstance(v, dict):
            self.fail(name, f"expected a map, got {_type(v)}")
        for k, item in v.items():
            if not isinstance(item, str):
                raise ModelError(
                    self.ref,
                    _fmt_path((*self._path, name, k)),
                    f"expected a string, got {_type(item)}",
                )
        if not v:
            return EMPTY_MAP
        return {(shared(k) if isinstance(k, str) else k): own(item) for k, item in v.items()}


def _type(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), type(v).__name__
    )


def ref_of(raw: Any) -> str:
    """``"Kind namespace/name"`` of a raw object, as far as it can be read."""
    if not isinstance(raw, dict):
        return "object"
    kind = raw.get("kind")
    if not isinstance(kind, str):
        kind = "object"
    md = raw.get("metadata")
    if not isinstance(md, dict):
        md = {}
    name = md.get("name")
    if not isinstance(name, str):
        name = ""
    ns = md.get("namespace")
    if not isinstance(ns, str):
        ns = ""
    if kind not in CLUSTER_SCOPED and name:
        ns = ns or "default"
    if not name:
        return kind
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


def parse_meta(f: Fields, kind: str, *, default_namespace: str = "default") -> Meta:
    """Read ``metadata``; names must be DNS-1123 subdomains as the API server requires."""
    md = f.obj("metadata", required=True)
    name = md.str("name", required=True)
    if not is_dns1123_subdomain(name):
        md.fail("name", f"{name!r} is not a valid DNS-1123 subdomain")
    if kind in CLUSTER_SCOPED:
        namespace = ""
    else:
        namespace = sys.intern(md.str("namespace")) or default_namespace
        if not is_dns1123_label(namespace):
            md.fail("namespace", f"{namespace!r} is not a valid DNS-1123 label")
    return Meta(
        name=name,
        namespace=namespace,
        resource_version=md.str("resourceVersion"),
        creation_timestamp=md.str("creationTimestamp"),
        labels=md.str_map("labels"),
        annotations=md.str_map("annotations"),
        deletion_timestamp=md.str("deletionTimestamp"),
    )
