"""Logging: readable text by default, one JSON object per line with `--log-format json`.

Owns the formatters and `redact_secrets`, the last line of defence that keeps key material out of
every log line, status document and dump. Events that operators alert on are logged with
`extra={"event": …, "node_id": …, "type": …, …}`; the JSON formatter turns every such extra
into a field, so `jq 'select(.event == "nack")'` finds every NACK.
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
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-01-02T03:04:05.678Z WARNING meshplane.x: message`, secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact_secrets(line)


def configure_logging(level: str = "info", log_format: str = "text", stream: TextIO | None = None) -> None:
    """Sends every log record of the process to `stream` (stderr) in `log_format`; replaces earlier handlers."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
