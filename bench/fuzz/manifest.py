"""Manifest files, YAML and JSON, through :func:`netplane.sources.manifest_parse.parse_manifest`.

Input: one control byte (the file's name: ``.yaml`` or ``.json``), then
the file's bytes.

Contract: ``parse_manifest`` never raises; every problem names the file
and a line from 1 up; every object is a parsed model object whose line is
from 1 up; a file with a problem is not complete; ``field_line`` on any
object and field gives a line from 1 up.
"""

from __future__ import annotations

import sys

from bench.fuzz._common import main
from netplane.model import K8sObject
from netplane.sources.manifest_parse import field_line, parse_manifest

NAME = "manifest"


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    path = "m.json" if data[0] & 1 else "m.yaml"
    text = data[1:]
    result = parse_manifest(text, path)
    for p in result.problems:
        if p.path != path or p.line < 1:
            raise AssertionError(f"a problem at {p.path}:{p.line}: {p}")
        str(p)
    for mo in result.objects:
        if not isinstance(mo.obj, K8sObject) or mo.line < 1:
            raise AssertionError(f"object {mo!r}")
        if field_line(text, path, mo, "spec.ports[0].port") < 1:
            raise AssertionError("field_line below 1")


if __name__ == "__main__":
    main(NAME, TestOneInput, sys.argv)
