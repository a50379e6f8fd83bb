"""Manifest files to model objects, with every problem pinned to a file and line.

Sans-IO: :func:`parse_manifest` takes the text of one file and its path (only
to name it in problems) and returns the parsed objects and the problems.

Strategy:

- YAML is *composed* (PyYAML's node graph, libyaml when present), not just
  loaded, so each node keeps its mark. The node graph is only walked when
  something is wrong: :func:`_field_line` follows a ModelError's field path
  (``spec.ports[1].port``, ``data[tls.crt]``, ``endpoints[3].addresses[0]``)
  down the nodes to the line of that field, stopping at the deepest part of
  the path that exists, so the happy path costs one compose and one
  construct per document.
- JSON (by extension, or content that starts with ``{``) is decoded by the
  json module for exact JSON semantics and JSON's own error positions, and
  composed by YAML (a superset of JSON) only for the marks.
- Timestamps stay strings, as in sigs.k8s.io/yaml that kubectl uses: the
  loader drops PyYAML's implicit timestamp type.
- ``kind: List`` (and ``<Kind>List`` as the API serves lists, items without
  kind) expands to its items, each at its own line.
- Kinds that netplane does not use and non-TLS Secrets are skipped silently
  (``parse_object`` returns None).

Each :class:`Problem` renders as one line, ``path:line: Kind ns/name:
field: what is wrong`` (``path:line:col: ...`` for a syntax error).
:func:`resolve_duplicates` picks one definition per key across files (first
path wins), for both the manifest source and ``netplane check``.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from netplane import problems
from netplane.errors import ModelError
from netplane.model import CLUSTER_SCOPED, KINDS, K8sObject, ObjectKey, parse_object, ref_of

if TYPE_CHECKING:
    # Checked against the pure-Python loader: the libyaml one has the same
    # constructor and resolver, which is all that _Loader overrides.
    _BaseLoader = yaml.SafeLoader
else:
    _BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_MERGE_TAG = "tag:yaml.org,2002:merge"

# Problem codes (netplane.problems.CODES) besides "invalid".
UNREADABLE = "unreadable"
DUPLICATE = "duplicate"


class _Loader(_BaseLoader):
    """SafeLoader (libyaml when built in): timestamps stay strings, duplicate keys fail.

    PyYAML lets a repeated key silently replace the first; kubectl refuses
    the file ("mapping key already defined"), and so do we.
    """

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[tuple[str, str], int] = {}
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE_TAG:
                first = seen.setdefault((k.tag, k.value), k.start_mark.line + 1)
                if first != k.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {k.value!r} (first at line {first})",
                        k.start_mark,
                    )
        return super().construct_mapping(node, deep)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a manifest; ``str()`` is its one-line form.

    ``line`` is 1-based (0 when the problem is about the whole path, such as
    a missing file); ``column`` is set for syntax errors only. ``key`` names
    the object the problem is about when it can be told, so that a source
    can keep that object's last good version. ``code`` is the kind of
    problem (:data:`netplane.problems.CODES`): ``invalid``, ``unreadable``
    or ``duplicate``.
    """

    path: str
    line: int
    reason: str
    ref: str = ""
    field: str = ""
    column: int | None = None
    key: ObjectKey | None = None
    code: str = "invalid"

    def __str__(self) -> str:
        where = self.path
        if self.line:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = ": ".join(p for p in (where, self.ref, self.field, self.reason) if p)
        return " ".join(text.splitlines())

    def as_problem(self, origin: str = "manifests") -> problems.Problem:
        """The same, as the daemon-wide :class:`netplane.problems.Problem`."""
        return problems.Problem(
            self.code,
            self.reason,
            self.key,
            ref=self.ref,
            field=self.field,
            path=self.path,
            line=self.line,
            column=self.column,
            origin=origin,
            services=problems.services_of(self.key),
        )


@dataclass(frozen=True, slots=True)
class ManifestObject:
    """A parsed object and where it was defined.

    ``line`` is the 1-based line where the object (document, or List item)
    starts; ``doc_index`` and ``item_index`` find it again in the same text.
    """

    obj: K8sObject
    path: str
    line: int
    doc_index: int = 0
    item_index: int | None = None

    @property
    def key(self) -> ObjectKey:
        return self.obj.key


@dataclass(slots=True)
class ManifestResult:
    """What one file holds: ``complete`` is False after a syntax error.

    After a syntax error ``objects`` holds only what came before it, and the
    manifest source keeps the file's previous objects instead.
    """

    path: str
    objects: list[ManifestObject] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    complete: bool = True


# -- reading documents --------------------------------------------------------


def _line(node: yaml.Node | None, default: int = 1) -> int:
    return node.start_mark.line + 1 if node is not None else default


def _is_json(text: str, path: str) -> bool:
    return path.lower().endswith(".json") or text.lstrip()[:1] == "{"


def _compose(text: str) -> Iterator[tuple[yaml.Node | None, Any]]:
    """Each document's node and value; raises yaml.YAMLError where the text breaks."""
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            yield node, loader.construct_document(node)
    finally:
        loader.dispose()


def _decode(data: str | bytes, path: str) -> tuple[str | None, Problem | None]:
    if isinstance(data, str):
        return data, None
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        problem = Problem(path, line, f"not valid UTF-8 ({e.reason})", column=col, code=UNREADABLE)
        return None, problem


def _syntax_problem(path: str, err: Exception) -> Problem:
    if isinstance(err, json.JSONDecodeError):
        return Problem(path, err.lineno, err.msg, column=err.colno, code=UNREADABLE)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None)
    context = getattr(err, "context", None)
    if problem:
        reason = f"{problem} ({context})" if context else str(problem)
    else:
        reason = str(err) or type(err).__name__
    if mark is None:
        return Problem(path, 1, reason, column=1, code=UNREADABLE)
    return Problem(path, mark.line + 1, reason, column=mark.column + 1, code=UNREADABLE)


def _documents(
    text: str, path: str, result: ManifestResult
) -> Generator[tuple[Any, Any], None, None]:
    """(node or None, value) per document; a syntax error ends the stream as a problem."""
    if _is_json(text, path):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            if path.lower().endswith(".json"):
                result.problems.append(_syntax_problem(path, e))
                result.complete = False
                return
            # Not JSON after all: flow-style YAML, read as YAML below.
        else:
            try:
                node = next(_compose(text), (None, None))[0]
            except (yaml.YAMLError, ValueError, TypeError, RecursionError):
                node = None  # JSON that PyYAML cannot mark: lines fall back to 1
            yield node, value
            return
    try:
        yield from _compose(text)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as e:
        result.problems.append(_syntax_problem(path, e))
        result.complete = False


# -- field paths to lines -----------------------------------------------------


def _mapping_get(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k, v
    return None


def _field_line(node: yaml.Node | None, path: str, default: int) -> int:
    """The line of ``path`` below ``node``, or of its deepest part that exists."""
    if node is None:
        return default
    line = _line(node)
    i, n = 0, len(path)
    while i < n:
        if path[i] == "[":
            j = path.find("]", i)
            if j < 0:
                break
            token = path[i + 1 : j]
            if isinstance(node, yaml.SequenceNode) and token.isdigit():
                idx = int(token)
                if idx >= len(node.value):
                    break
                node = node.value[idx]
                line = _line(node)
            else:
                kv = _mapping_get(node, token)
                if kv is None:
                    break
                node, line = kv[1], _line(kv[0])
            i = j + 1
            continue
        if path[i] == ".":
            i += 1
        if not isinstance(node, yaml.MappingNode):
            break
        # Longest key that matches here, so that label keys with dots resolve.
        best: tuple[yaml.Node, yaml.Node] | None = None
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                continue
            key = k.value
            end = i + len(key)
            if (
                key
                and path.startswith(key, i)
                and (end == n or path[end] in ".[")
                and (best is None or len(key) > len(best[0].value))
            ):
                best = (k, v)
        if best is None:
            break
        i += len(best[0].value)
        node, line = best[1], _line(best[0])
    return line


def _list_items_node(node: yaml.Node | None) -> yaml.Node | None:
    kv = _mapping_get(node, "items") if node is not None else None
    return kv[1] if kv is not None and isinstance(kv[1], yaml.SequenceNode) else None


def _object_node(
    doc: yaml.Node | None, item_index: int | None
) -> tuple[yaml.Node | None, yaml.Node | None]:
    """(node of the object, nearest existing node) for a document or List item."""
    if item_index is None or doc is None:
        return doc, doc
    items = _list_items_node(doc)
    if items is None or item_index >= len(items.value):
        return None, doc
    return items.value[item_index], items.value[item_index]


def field_line(text: str | bytes, path: str, obj: ManifestObject, field: str) -> int:
    """The line of ``field`` (a ModelError path) in ``obj`` as defined in ``text``.

    For errors found after parsing (e.g. a clusterIP another Service holds);
    falls back to the object's own line when the text has changed shape.
    """
    return field_lines(text, path, [(obj, field)])[0]


def field_lines(
    text: str | bytes, path: str, wanted: Sequence[tuple[ManifestObject, str]]
) -> list[int]:
    """:func:`field_line` for several (object, field) pairs of one file, reading it once."""
    out = [mo.line for mo, _ in wanted]
    if not wanted:
        return out
    decoded, _ = _decode(text, path)
    if decoded is None:
        return out
    by_doc: dict[int, list[int]] = {}
    for i, (mo, _) in enumerate(wanted):
        by_doc.setdefault(mo.doc_index, []).append(i)
    last = max(by_doc)
    dummy = ManifestResult(path)
    # Documents are composed one at a time, up to the last one asked about.
    docs = _documents(decoded, path, dummy)
    try:
        for d, (node, _value) in enumerate(docs):
            for i in by_doc.get(d, ()):
                mo, field = wanted[i]
                target, fallback = _object_node(node, mo.item_index)
                if target is None:
                    out[i] = _line(fallback, mo.line)
                else:
                    out[i] = _field_line(target, field, mo.line)
            if d >= last:
                break
    finally:
        docs.close()
    return out


def locate_objects(
    objects: Mapping[ObjectKey, ManifestObject],
    texts: Mapping[str, bytes | str],
    wanted: Iterable[tuple[ObjectKey, str]],
) -> dict[tuple[ObjectKey, str], tuple[str, int]]:
    """(path, line) of each (key, field) whose object is in ``objects``: the field's line
    in its file's text (``texts``), each file read once; the object's line for field ""."""
    out: dict[tuple[ObjectKey, str], tuple[str, int]] = {}
    todo: dict[str, list[tuple[tuple[ObjectKey, str], ManifestObject]]] = {}
    for want in wanted:
        mo = objects.get(want[0])
        if mo is None:
            continue
        if want[1] and mo.path in texts:
            todo.setdefault(mo.path, []).append((want, mo))
        else:
            out[want] = (mo.path, mo.line)
    for path, items in todo.items():
        lines = field_lines(texts[path], path, [(mo, want[1]) for want, mo in items])
        for (want, _mo), line in zip(items, lines, strict=True):
            out[want] = (path, line)
    return out


# -- objects -------------------------------------------------------------------


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), type(v).__name__
    )


def _key_of(raw: dict, kind: str) -> ObjectKey | None:
    """The key a raw object would have, when its name can be read."""
    md = raw.get("metadata")
    if not isinstance(md, dict):
        return None
    name = md.get("name")
    if not isinstance(name, str) or not name:
        return None
    ns = md.get("namespace")
    if kind in CLUSTER_SCOPED:
        ns = ""
    elif not isinstance(ns, str) or not ns:
        ns = "default"
    return ObjectKey(kind, ns, name)


class _FileParser:
    """Turns the documents of one file into a :class:`ManifestResult`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.result = ManifestResult(path)
        self._seen: dict[ObjectKey, int] = {}

    def problem(
        self,
        line: int,
        reason: str,
        ref: str = "",
        field: str = "",
        key: ObjectKey | None = None,
        code: str = "invalid",
    ) -> None:
        self.result.problems.append(
            Problem(self.path, line, reason, ref, field, key=key, code=code)
        )

    def document(self, index: int, node: yaml.Node | None, value: Any) -> None:
        line = _line(node)
        if value is None:
            return  # an empty document, e.g. after a trailing '---'
        if not isinstance(value, dict):
            self.problem(line, f"expected an object, got {_type_name(value)}")
            return
        kind = value.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and kind not in KINDS:
            self.list_document(index, node, value, kind)
            return
        self.object(value, node, line, index, None, None)

    def list_document(self, index: int, node: yaml.Node | None, value: dict, kind: str) -> None:
        items = value.get("items")
        if items is None:
            return
        if not isinstance(items, list):
            self.problem(
                _field_line(node, "items", _line(node)),
                f"expected a list, got {_type_name(items)}",
                kind,
                "items",
            )
            return
        item_kind = kind[: -len("List")] or None
        if item_kind not in KINDS:
            item_kind = None
        items_node = _list_items_node(node)
        for i, item in enumerate(items):
            item_node = items_node.value[i] if items_node is not None else None
            line = _line(item_node, _line(node))
            if not isinstance(item, dict):
                self.problem(
                    line, f"expected an object, got {_type_name(item)}", kind, f"items[{i}]"
                )
                continue
            self.object(item, item_node, line, index, i, item_kind)

    def object(
        self,
        raw: dict,
        node: yaml.Node | None,
        line: int,
        doc_index: int,
        item_index: int | None,
        default_kind: str | None,
    ) -> None:
        kind = raw.get("kind") or default_kind
        if not kind:
            self.problem(_field_line(node, "kind", line), "required", ref_of(raw), "kind")
            return
        if not isinstance(kind, str):
            self.problem(
                _field_line(node, "kind", line),
                f"expected a string, got {_type_name(kind)}",
                "object",
                "kind",
            )
            return
        try:
            obj = parse_object(raw, kind=default_kind)
        except ModelError as e:
            self.problem(
                _field_line(node, e.field, line), e.reason, e.ref, e.field, _key_of(raw, kind)
            )
            return
        except Exception as e:  # a parser bug must not stop the other objects
            self.problem(
                line,
                f"cannot parse ({type(e).__name__}: {e})",
                ref_of({**raw, "kind": kind}),
                key=_key_of(raw, kind),
            )
            return
        if obj is None:
            return  # a kind or Secret type netplane does not use
        first = self._seen.get(obj.key)
        if first is not None:
            self.problem(
                line,
                f"duplicate object (first defined at line {first})",
                str(obj.key),
                key=obj.key,
                code=DUPLICATE,
            )
            return
        self._seen[obj.key] = line
        self.result.objects.append(ManifestObject(obj, self.path, line, doc_index, item_index))


def parse_manifest(text: str | bytes, path: str) -> ManifestResult:
    """Parse one manifest file's text; ``path`` only names it in problems."""
    parser = _FileParser(path)
    decoded, problem = _decode(text, path)
    if decoded is None:
        assert problem is not None
        parser.result.problems.append(problem)
        parser.result.complete = False
        return parser.result
    for index, (node, value) in enumerate(_documents(decoded, path, parser.result)):
        parser.document(index, node, value)
    return parser.result


def resolve_duplicates(
    files: Iterable[tuple[str, Iterable[ManifestObject]]],
) -> tuple[dict[ObjectKey, ManifestObject], list[Problem]]:
    """One definition per key across files: the first file (in the order given) wins.

    Returns the winners in file order and a problem for each other definition.
    """
    winners: dict[ObjectKey, ManifestObject] = {}
    problems: list[Problem] = []
    for _path, objects in files:
        for mo in objects:
            first = winners.get(mo.key)
            if first is None:
                winners[mo.key] = mo
            else:
                problems.append(
                    Problem(
                        mo.path,
                        mo.line,
                        f"also defined at {first.path}:{first.line}, which is used",
                        str(mo.key),
                        key=mo.key,
                        code=DUPLICATE,
                    )
                )
    return winners, problems
