"""Kubernetes list pages and watch streams, through WatchDecoder and the real Reflector.

Input: one control byte (the resource kind; how the watch body is cut
into reads), then a list response body, a line ``---``, and a watch
response body. The Reflector lists (the page as ``get_json`` returns it:
any JSON object), then watches (the body through a :class:`WatchDecoder`,
as ``KubeClient.watch`` feeds it), parsing every object at the boundary
with ``parse_object``. The client is a fake: no I/O, so the coroutines run
to their end in one step.

Contract: only what ``Reflector.run`` handles escapes (SourceError and
ApiError, the relist signal, OSError); the decoder gives the same items
whether fed at once or in pieces, each a RawEvent or a BadLine; what is
emitted and stored are parsed model objects.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from bench.fuzz._common import main, pieces
from netplane.errors import SourceError
from netplane.events import SourceProblems, WatchEvent
from netplane.model import K8sObject
from netplane.problems import Problem
from netplane.sources.kube import reflector as reflector_mod
from netplane.sources.kube.reflector import ListDone, Reflector
from netplane.sources.kube.resources import RESOURCES
from netplane.sources.kube.watchstream import BadLine, RawEvent, WatchDecoder

NAME = "kube_watch"
KINDS = tuple(RESOURCES.values())
SEPARATOR = b"\n---\n"


def decode(body: bytes, cut: int) -> list[Any]:
    whole = WatchDecoder()
    whole.feed(body)
    whole.close()
    items = list(whole.events())
    parts = WatchDecoder()
    for chunk in pieces(body, cut):
        parts.feed(chunk)
    parts.close()
    again = list(parts.events())
    if items != again:
        raise AssertionError(f"pieces of {cut} bytes decode otherwise: {items!r} != {again!r}")
    for item in items:
        if not isinstance(item, RawEvent | BadLine):
            raise AssertionError(f"decoded a {type(item).__name__}")
    return items


class FakeClient:
    def __init__(self, page: bytes, items: list[Any]) -> None:
        self.page = page
        self.items = items

    async def get_json(self, path: str, params: Any = None) -> dict[str, Any]:
        # KubeClient._read_json's checks, on the page's bytes
        try:
            doc = json.loads(self.page)
        except ValueError:
            raise SourceError(f"GET {path}: response is not JSON") from None
        if not isinstance(doc, dict):
            raise SourceError(f"GET {path}: response is not a JSON object")
        meta = doc.get("metadata")
        if isinstance(meta, dict):
            meta.pop("continue", None)  # one page: a continue token would ask forever
        return doc

    async def watch(self, path: str, params: Any = None, **_: Any) -> AsyncIterator[Any]:
        for item in self.items:
            yield item


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits (the fake client has no I/O) to its end."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    coro.close()
    raise AssertionError("the reflector waited on something")


async def _emit(event: Any) -> None:
    if isinstance(event, WatchEvent):
        if event.obj is not None and not isinstance(event.obj, K8sObject):
            raise AssertionError(f"emitted a {type(event.obj).__name__}")
    elif isinstance(event, SourceProblems):
        if not all(isinstance(p, Problem) for p in event.problems):
            raise AssertionError("emitted a problem that is not a Problem")
    elif not isinstance(event, ListDone):
        raise AssertionError(f"emitted a {type(event).__name__}")


HANDLED = (SourceError, OSError, reflector_mod._Relist)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    ctrl, rest = data[0], data[1:]
    page, _, body = rest.partition(SEPARATOR)
    items = decode(body, 1 + (ctrl >> 4) * 3)
    r = Reflector(FakeClient(page, items), KINDS[(ctrl & 0x0F) % len(KINDS)], _emit)  # type: ignore[arg-type]
    try:
        run(r._list())
        run(r._watch())
    except HANDLED:
        pass
    for obj in r.store.values():
        if not isinstance(obj, K8sObject):
            raise AssertionError(f"stored a {type(obj).__name__}")


if __name__ == "__main__":
    main(NAME, TestOneInput, sys.argv)
