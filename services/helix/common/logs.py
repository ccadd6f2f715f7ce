"""JSON logs, one object per line, written by a background thread.

Records go through a bounded queue to a listener thread, so the event loop never waits on
stderr. When the queue is full a record is dropped and counted rather than blocking.
The request id and principal of the current call live in context variables that the
RPC interceptors set; every record logged during a call carries them.
"""

from __future__ import annotations

import contextvars
import copy
import datetime
import json
import logging
import logging.handlers
import queue
import sys
import threading
from typing import Any, TextIO

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("helix_request_id", default="")
principal_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "helix_principal", default="anonymous"
)

# Attributes every LogRecord has; anything else was passed with `extra=` and is emitted.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


_TRACEBACKS = logging.Formatter()


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, call context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, separators=(",", ":"))


class _ContextFilter(logging.Filter):
    """Copy the call's context variables onto the record before it leaves the loop thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = request_id_var.get()
        if request_id and not hasattr(record, "request_id"):
            record.request_id = request_id
            if not hasattr(record, "principal"):
                record.principal = principal_var.get()
        return True


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that drops (and counts) records when its bounded queue is full."""

    def __init__(self, bounded: queue.Queue[Any]) -> None:
        super().__init__(bounded)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Render the message and traceback now; keep extras as attributes for the JSON."""
        prepared = copy.copy(record)
        prepared.msg = record.getMessage()
        prepared.args = None
        if record.exc_info:
            prepared.exc_text = _TRACEBACKS.formatException(record.exc_info)
            prepared.exc_info = None
        return prepared

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


_lock = threading.Lock()
_listener: logging.handlers.QueueListener | None = None
_handler: DroppingQueueHandler | None = None


def configure(level: str = "INFO", stream: TextIO | None = None, capacity: int = 10_000) -> None:
    """Send the `helix` loggers' records as JSON lines to `stream` (stderr by default).

    Safe to call more than once: the previous listener is stopped and replaced.
    """
    global _listener, _handler
    with _lock:
        _stop_locked()
        target = logging.StreamHandler(stream or sys.stderr)
        target.setFormatter(JsonFormatter())
        bounded: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        handler = DroppingQueueHandler(bounded)
        handler.addFilter(_ContextFilter())
        listener = logging.handlers.QueueListener(bounded, target, respect_handler_level=False)
        listener.start()
        root = logging.getLogger("helix")
        root.handlers[:] = [handler]
        root.setLevel(level.upper())
        root.propagate = False
        _listener, _handler = listener, handler


def _stop_locked() -> None:
    global _listener, _handler
    if _listener is not None:
        _listener.stop()
    _listener = None
    _handler = None


def shutdown() -> None:
    """Flush queued records and stop the writer thread."""
    with _lock:
        _stop_locked()
