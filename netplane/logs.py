"""Logging setup for the daemon: one handler on the ``netplane`` logger.

Strategy: every module logs to ``logging.getLogger("netplane.<module>")``;
:func:`setup_logging` gives the ``netplane`` logger exactly one handler
(found again by a marker attribute, so a second call replaces it instead of
adding another) with one of two formatters:

- ``text``: ``2026-11-23T10:00:00.123Z info netplane.admin: message``, UTC
  with milliseconds, a traceback on the lines after;
- ``json``: one object per line with ``ts``, ``level``, ``logger``, ``msg``,
  every ``extra={...}`` field of the call, and ``exc_info`` as a string.

The handler carries a :class:`Redactor` filter. It runs before either
formatter and renders the message itself (``msg % args``), then scrubs
bearer tokens and PEM private key blocks from the result, from the
traceback text and from ``extra`` fields. A handler filter, unlike a
logger filter, sees records from every child logger. It is defence in
depth: code should not log secrets in the first place, but a Secret's
``tls.key`` or an ``Authorization`` header that slips into an error
message must still not reach a log file.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

from netplane.errors import ConfigError

ROOT = "netplane"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")

_MARK = "_netplane_handler"

# RFC 6750 §2.1: "Bearer" 1*SP b64token. The token ends at whitespace or at
# a quote or separator, so a header inside a repr or JSON loses only the
# token. Re-redacting "Bearer <redacted>" gives the same text.
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+")
# RFC 7468 PEM: PRIVATE KEY, RSA/EC/DSA/OPENSSH/ENCRYPTED PRIVATE KEY. A block
# cut off before its END line (a truncated message) is redacted to the end.
_PEM_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"
    r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)",
    re.DOTALL,
)

# Attributes every LogRecord has; anything else on a record came from extra=.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def redact(text: str) -> str:
    """``text`` with bearer tokens and PEM private key blocks replaced."""
    if "PRIVATE KEY-----" in text:
        text = _PEM_KEY.sub("<redacted private key>", text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(lambda m: f"{m.group(1)} <redacted>", text)
    return text


class Redactor(logging.Filter):
    """Scrub secrets from a record's message, args, traceback and extra fields.

    The message is rendered here and stored back with no args, so a secret
    passed as an argument (a str, or an object whose ``str()`` holds it) is
    scrubbed in its final form. A record whose ``msg % args`` fails is left
    for the handler, which reports the formatting error as logging does.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key in _STANDARD_ATTRS or value is None or isinstance(value, (bool, int, float)):
                continue
            text = value if isinstance(value, str) else str(value)
            clean = redact(text)
            if clean != text:
                # A container holding a secret is replaced by its scrubbed text.
                setattr(record, key, clean)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-23T10:00:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
        f".{int(record.msecs):03d}Z"
    )


def _level(record: logging.LogRecord) -> str:
    return record.levelname.lower()


class TextFormatter(logging.Formatter):
    """``<ts> <level> <logger>: <message>``, then any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        line = f"{_timestamp(record)} {_level(record)} {record.name}: {record.message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra`` fields never replace the four core keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": _level(record),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(
    level: str = "info", fmt: str = "text", stream: TextIO | None = None
) -> logging.Logger:
    """Point the ``netplane`` logger at ``stream`` (stderr) in ``fmt`` at ``level``.

    Calling it again replaces the handler it installed before. Raises
    :class:`~netplane.errors.ConfigError` for an unknown level or format.
    """
    key = level.strip().lower() if isinstance(level, str) else level
    if key not in LEVELS:
        raise ConfigError(f"log level: {level!r} is not one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"log format: {fmt!r} is not one of {', '.join(FORMATS)}")
    logger = logging.getLogger(ROOT)
    for old in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _MARK, True)
    handler.addFilter(Redactor())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(LEVELS[key])
    # The daemon owns its output; a root handler someone else set up would
    # print every line twice.
    logger.propagate = False
    return logger
