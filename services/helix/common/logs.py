"""JSON logs, one object per line, written in batches by a background thread.

A record is formatted where it is logged (a few microseconds) and appended to a bounded
in-memory buffer; a writer thread wakes every `flush_interval` seconds, or as soon as the
buffer is half full, and writes everything buffered in one call. The event loop never
waits on stderr, and the writer takes the GIL once per batch rather than once per line
(a thread per line halved unary throughput in `benchmarks/bench_chain.py`). When the
buffer is full a line is dropped and counted rather than blocking the caller.

The request id and principal of the current call live in context variables that the RPC
chain sets; every record logged during a call carries them.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("helix_request_id", default="")
principal_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "helix_principal", default="anonymous"
)

# Attributes every LogRecord has; anything else was passed with `extra=` and is emitted.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})


def _timestamp(created: float) -> str:
    return datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(timespec="milliseconds")


def dumps(entry: Mapping[str, Any]) -> str:
    """One compact JSON line (no newline); values JSON cannot hold are written with str()."""
    return json.dumps(entry, default=str, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, call context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
            entry["principal"] = principal_var.get()
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in _RESERVED:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return dumps(entry)


class LineSink:
    """A bounded buffer of lines and the thread that writes them to a stream in batches."""

    def __init__(self, stream: TextIO, capacity: int = 10_000, flush_interval: float = 0.05):
        self._stream = stream
        self._capacity = capacity
        self._interval = flush_interval
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="helix-log-writer", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        """Buffer one line; drop it (and count it) if the buffer is full or the sink closed."""
        with self._lock:
            if self._closed or len(self._lines) >= self._capacity:
                self.dropped += 1
                return
            self._lines.append(line)
            if len(self._lines) * 2 >= self._capacity:
                self._wake.set()

    def _take(self) -> list[str]:
        with self._lock:
            lines, self._lines = self._lines, []
        return lines

    def _write(self, lines: list[str]) -> None:
        if lines:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                with self._lock:
                    self.dropped += len(lines)

    def _run(self) -> None:
        # The writer thread is the only one that writes to the stream, final flush included.
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            with self._lock:
                closing = self._closed
            self._write(self._take())
            if closing:
                return

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting lines, let the writer flush what is buffered, and stop it."""
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=timeout)


class SinkHandler(logging.Handler):
    """A logging handler that formats records as JSON and hands the lines to a `LineSink`."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self.sink = sink
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.put(self.format(record))
        except Exception:
            self.handleError(record)


class _Installed:
    """The process's configured sink and its handler (one of each, or none), under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sink: LineSink | None = None
        self.handler: SinkHandler | None = None

    def stop_locked(self) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
        if self.sink is not None:
            self.sink.close()
        self.sink = None
        self.handler = None


_installed = _Installed()


class ClientGoneFilter(logging.Filter):
    """grpc.aio logs `ExecuteBatchError raised in core by servicer method [...]` at ERROR,
    with a traceback, when the core fails a batch of a call the client has just cancelled
    (or dropped) and grpc.aio has not yet seen the cancellation: a client's choice, not a
    server error. Only that case is rewritten, to one INFO line without the traceback;
    a batch the core refused to start (a programming error) stays an ERROR.
    """

    _PREFIX = "ExecuteBatchError raised in core by servicer method"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not str(record.msg).startswith(self._PREFIX):
            return True
        failure = record.exc_info[1] if record.exc_info else None
        if failure is None or not str(failure).startswith('Failed "execute_batch"'):
            return True
        method = str(record.msg)[len(self._PREFIX) :].strip()
        record.msg, record.args = "call ended by the client while the server answered %s", (method,)
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        return logging.getLogger("helix.rpc").isEnabledFor(logging.INFO)


_CLIENT_GONE = ClientGoneFilter()


def configure(level: str = "INFO", stream: TextIO | None = None, capacity: int = 10_000) -> None:
    """Send the `helix` loggers' records as JSON lines to `stream` (stderr by default).

    Safe to call more than once: the previous writer is flushed and replaced.
    """
    with _installed.lock:
        _installed.stop_locked()
        sink = LineSink(stream or sys.stderr, capacity=capacity)
        handler = SinkHandler(sink)
        # On the root logger, so gRPC's and asyncio's own records are JSON lines too; the
        # `helix` loggers propagate to it at their own level, everything else at WARNING.
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
        helix = logging.getLogger("helix")
        helix.setLevel(level.upper())
        helix.propagate = True
        grpc_core = logging.getLogger("grpc._cython.cygrpc")
        if _CLIENT_GONE not in grpc_core.filters:
            grpc_core.addFilter(_CLIENT_GONE)
        _installed.sink, _installed.handler = sink, handler


def access(level: int, logger: logging.Logger, message: str, fields: Mapping[str, Any]) -> None:
    """Log one structured line on the hot path, skipping LogRecord machinery when possible.

    With the Helix sink configured the line is formatted and buffered directly; otherwise
    it goes through `logger` like any record.
    """
    if not logger.isEnabledFor(level):
        return
    sink = _installed.sink
    if sink is None:
        logger.log(level, message, extra=dict(fields))
        return
    entry = {
        "time": _timestamp(time.time()),
        "level": logging.getLevelName(level),
        "logger": logger.name,
        "message": message,
    }
    for key, value in fields.items():
        entry.setdefault(key, value)
    sink.put(dumps(entry))


def shutdown() -> None:
    """Write buffered lines and stop the writer thread."""
    with _installed.lock:
        _installed.stop_locked()
