r"""Logging: readable text by default, one JSON object per line with `--log-format json`.

Owns the formatters and `redact_secrets`, the last line of defence that keeps key material out of
every log line, status document and dump. Events that operators alert on are logged with
`extra={"event": …, "node_id": …, "type": …, …}`; the JSON formatter turns every such extra
into a field, so `jq 'select(.event == "nack")'` finds every NACK.

Log lines carry client-supplied text (node ids, clusters, user agents, NACK messages, device
names, Kubernetes object names). Neither format lets it forge a line or drive a terminal: text
logs escape every control character of a record's message (`escape_controls`: a newline becomes
`\n`, ESC `\x1b`), so one record is one line; JSON logs encode every field with JSON's escapes
and only ASCII, so no raw control or line-separator character is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")

# A PEM private key, whole or cut off; certificates are public and stay.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL | re.ASCII
)
REDACTED = "[redacted]"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact_secrets(text: str) -> str:
    """`text` with every PEM private key replaced by `[redacted]`."""
    if "PRIVATE KEY-----" not in text:
        return text
    return _PRIVATE_KEY.sub(REDACTED, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Control (Cc), format (Cf: bidi overrides, zero-width characters) and line and paragraph
# separators (Zl, Zp): what a terminal or a line-based reader could act on.
# Lone surrogates too: they cannot be written as UTF-8, and the handler would print the error raw.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb]"
)


def escape_controls(text: str) -> str:
    r"""`text` with every control, format and line-separator character written as an escape
    (`\n`, `\r`, `\t`, `\xHH`, `\uHHHH`), so it shows on one line and cannot drive a terminal."""
    if text.isascii() and text.isprintable():
        return text  # the common case, checked in C
    return _UNSAFE.sub(_escape, text)


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extras, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_secrets(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in _RECORD_ATTRIBUTES or key.startswith("_"):
                continue
            entry[key] = redact_secrets(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact_secrets(self.formatException(record.exc_info))
        # ASCII only: JSON escapes every control character, and ensure_ascii also escapes the C1
        # controls and U+2028/U+2029, which a reader splitting lines on them would break at.
        return json.dumps(entry, default=str, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """`2026-01-02T03:04:05.678Z WARNING meshplane.x: message`, secrets redacted, one line per
    record: the message's control characters (its arguments are often client-supplied) are
    escaped. A traceback follows on lines of its own, each indented (`  `) and escaped, so that
    only a record's first line starts at the line's start: an exception's text cannot forge one."""

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(redact_secrets(record.getMessage()))
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: {message}"
        if record.exc_info:
            trace = redact_secrets(self.formatException(record.exc_info))
            line += "".join(f"\n  {escape_controls(part)}" for part in trace.split("\n"))
        return line


def _ours_or_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name == "meshplane" or record.name.startswith("meshplane.")


def configure_logging(level: str = "info", log_format: str = "text", stream: TextIO | None = None) -> None:
    """Sends the process's log records at `level` and above to `stream` (stderr) in `log_format`;
    replaces earlier handlers. Other libraries' records (watchfiles' "2 changes detected", aiohttp's,
    grpc's) are written only from WARNING up, unless `level` is debug: their INFO lines describe
    their own workings, not the control plane's."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    if level.lower() != "debug":
        handler.addFilter(_ours_or_warning)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
