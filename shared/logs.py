"""Log lines: one JSON object a line (time, level, service, message, and the ids of the run,
trigger, workspace and trace a line is about), or plain text on a terminal (`LOG_FORMAT`).

The ids come from a record's `extra` (`log.info("...", extra={"run_id": ...})`) or from
`bound_ids`, a context variable a handler sets once for everything it logs meanwhile.
"""

import logging
import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import msgspec

IDS = ("run_id", "trigger_id", "workspace_id", "trace_id")
"""The ids a line carries when known, from `extra` or `bound_ids`."""

LogFormat = Literal["auto", "json", "text"]

bound_ids: ContextVar[Mapping[str, str] | None] = ContextVar("bound_ids", default=None)
"""Ids every line logged in the current context carries (see `bind`)."""

_encoder = msgspec.json.Encoder()


def bind(**ids: str | None) -> None:
    """Add `ids` (run_id, trigger_id, workspace_id, trace_id) to every line logged from here on
    in the current context (an asyncio task has its own copy: binding stays in the task)."""
    current = bound_ids.get()
    merged = dict(current) if current else {}
    for name, value in ids.items():  # on every run's path: no comprehension's frame
        if value:
            merged[name] = value
    bound_ids.set(merged)


class JsonFormatter(logging.Formatter):
    """One JSON object a line; `service` names the process's service."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        bound = bound_ids.get()
        for name in IDS:
            value = getattr(record, name, None) or (bound.get(name) if bound else None)
            if value:
                line[name] = str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return _encoder.encode(line).decode()


def formatter_for(service: str, log_format: LogFormat, stream: TextIO) -> logging.Formatter:
    """JSON unless the format is `text`, or `auto` and `stream` is a terminal."""
    if log_format == "text" or (log_format == "auto" and stream.isatty()):
        return logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
    return JsonFormatter(service)


def configure(service: str, environ: Mapping[str, str] | None = None) -> None:
    """Log to stderr at `LOG_LEVEL` (INFO) in `LOG_FORMAT` (auto: text on a terminal, JSON
    otherwise)."""
    env = os.environ if environ is None else environ
    log_format = env.get("LOG_FORMAT", "auto").lower() or "auto"
    if log_format not in ("auto", "json", "text"):
        raise ValueError(f"LOG_FORMAT={log_format!r}: use auto, json or text")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(service, log_format, sys.stderr))  # type: ignore[arg-type]
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(env.get("LOG_LEVEL", "INFO").upper())
