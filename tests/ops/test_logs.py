"""Logging setup: the lines a user reads, in both formats, with secrets scrubbed."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from netplane.errors import ConfigError
from netplane.logs import Redactor, redact, setup_logging

TEXT_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (debug|info|warning|error) ([\w.]+): (.*)$"
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzYSJ9.c2lnbmF0dXJl"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAx8AbcdefSECRETSECRET\n"
    "aGVsbG8gd29ybGQgc2VjcmV0IGtleQ==\n"
    "-----END RSA PRIVATE KEY-----"
)


@pytest.fixture(autouse=True)
def restore_netplane_logger() -> Iterator[None]:
    logger = logging.getLogger("netplane")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_format() -> None:
    out = io.StringIO()
    setup_logging("info", "text", stream=out)
    logging.getLogger("netplane.admin").info("listening on %s:%d", "::1", 9090)
    logging.getLogger("netplane.admin").debug("not shown at info")
    (line,) = lines(out)
    ts, level, name, msg = TEXT_LINE.match(line).groups()
    assert (level, name, msg) == ("info", "netplane.admin", "listening on ::1:9090")
    assert ts.endswith("Z")


def test_text_format_puts_traceback_after_the_line() -> None:
    out = io.StringIO()
    setup_logging("error", stream=out)
    try:
        raise ValueError("bad port")
    except ValueError:
        logging.getLogger("netplane.proxy").exception("apply failed")
    first, *rest = lines(out)
    assert TEXT_LINE.match(first).group(4) == "apply failed"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: bad port"


def test_json_format_has_core_fields_extras_and_exc_info() -> None:
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    log = logging.getLogger("netplane.state")
    log.debug("applied %d changes", 3, extra={"service": "default/web", "keys": ["a", "b"]})
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.error("sync failed", exc_info=True, extra={"level": "not mine"})
    first, second = (json.loads(line) for line in lines(out))
    assert first["level"] == "debug"
    assert first["logger"] == "netplane.state"
    assert first["msg"] == "applied 3 changes"
    assert (first["service"], first["keys"]) == ("default/web", ["a", "b"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert "exc_info" not in first
    assert (second["msg"], second["level"]) == ("sync failed", "error")
    assert second["exc_info"].startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError" in second["exc_info"]


def test_json_is_one_line_per_record_even_for_multiline_messages() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    logging.getLogger("netplane").info("line one\nline two", extra={"obj": object()})
    (line,) = lines(out)
    assert json.loads(line)["msg"] == "line one\nline two"


@pytest.mark.parametrize("level", ["DEBUG", "Info", "warning", " error "])
def test_level_names_are_case_insensitive(level: str) -> None:
    logger = setup_logging(level, stream=io.StringIO())
    assert logger.level == getattr(logging, level.strip().upper())


def test_unknown_level_or_format_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="'verbose'"):
        setup_logging("verbose")
    with pytest.raises(ConfigError, match="'xml'"):
        setup_logging("info", "xml")


def test_setup_twice_keeps_one_handler_and_applies_the_second() -> None:
    first, second = io.StringIO(), io.StringIO()
    logger = setup_logging("info", "text", stream=first)
    n = len(logger.handlers)
    setup_logging("warning", "json", stream=second)
    assert len(logger.handlers) == n
    logging.getLogger("netplane.dns").warning("once")
    logging.getLogger("netplane.dns").info("filtered")
    assert first.getvalue() == ""
    (line,) = lines(second)
    assert json.loads(line)["msg"] == "once"


# -- redaction ----------------------------------------------------------------


def test_redact_function() -> None:
    assert redact(f"Authorization: Bearer {TOKEN}") == "Authorization: Bearer <redacted>"
    assert redact(f"{{'authorization': 'bearer {TOKEN}'}}") == (
        "{'authorization': 'bearer <redacted>'}"
    )
    assert redact(f"key: {PEM} end") == "key: <redacted private key> end"
    assert redact(redact(f"Bearer {TOKEN}")) == "Bearer <redacted>"
    # a block cut off before its END line still goes
    assert redact("tls.key=-----BEGIN PRIVATE KEY-----\nMIIEv") == "tls.key=<redacted private key>"
    assert redact("nothing secret here") == "nothing secret here"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_never_reach_the_output(fmt: str) -> None:
    out = io.StringIO()
    setup_logging("debug", fmt, stream=out)
    log = logging.getLogger("netplane.sources.kube")
    log.info(f"GET /api with Authorization: Bearer {TOKEN}")  # in the message
    log.info("headers %r", {"Authorization": f"Bearer {TOKEN}"})  # in an arg
    log.warning("bad secret default/tls: %s", PEM)  # a private key as an arg
    log.info("secret", extra={"secret": {"tls.key": PEM}, "auth": f"Bearer {TOKEN}"})
    try:
        raise RuntimeError(f"upstream said: Bearer {TOKEN}\n{PEM}")
    except RuntimeError:
        log.exception("watch failed")
    text = out.getvalue()
    assert TOKEN not in text
    assert "SECRET" not in text and "aGVsbG8" not in text
    assert text.count("Bearer <redacted>") >= 4  # the traceback quotes the source line too
    assert text.count("<redacted private key>") >= 2  # text lines carry no extras
    if fmt == "json":
        records = [json.loads(line) for line in lines(out)]
        assert len(records) == 5
        assert records[2]["msg"] == "bad secret default/tls: <redacted private key>"
        assert records[3]["auth"] == "Bearer <redacted>"
        assert "<redacted private key>" in records[3]["secret"]
        assert "<redacted private key>" in records[4]["exc_info"]


def test_redactor_leaves_plain_records_alone() -> None:
    record = logging.LogRecord("netplane", logging.INFO, __file__, 1, "%d%% of %s", (50, "x"), None)
    assert Redactor().filter(record)
    assert record.getMessage() == "50% of x"
