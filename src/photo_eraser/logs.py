"""Structured logs: one JSON object per line with the record's extra fields."""

from __future__ import annotations

import json
import logging
import threading
import time

# uvicorn adds an ANSI-coloured copy of each message; one plain copy is enough.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class RepeatFilter(logging.Filter):
    """Let a warning or error through once per ``interval`` seconds per cause (logger, message
    and exception type and place); the next one that passes carries ``repeats``, the count held
    back.

    A full disk or a database that went away fails every poll, claim and sweep: a line a
    second per loop would bury the first one, which says what happened."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}
        """Cause -> (when it last passed, how many were held back since)."""
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        cause = (record.name, str(record.msg), _exception_cause(record))
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(cause, (-self.interval, 0))
            if now - last < self.interval:
                self._seen[cause] = (last, held + 1)
                return False
            self._seen[cause] = (now, 0)
        if held:
            record.repeats = held
        return True


def _exception_cause(record: logging.LogRecord) -> str:
    """Type and place (innermost frame) of the record's exception: two different bugs that
    fail the same call are two causes; the same full disk failing every poll is one. Not the
    text: it often names a file or a task, and every line would be a cause of its own."""
    if not record.exc_info or record.exc_info[1] is None:
        return ""
    exc = record.exc_info[1]
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(exc).__name__} at {where}"


def configure(level: str = "INFO", repeat_interval: float = 60.0) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter(repeat_interval))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
