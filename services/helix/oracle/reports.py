"""Verification reports: every verdict appended as a JSON line, off the request path.

`ReportWriter.record(...)` is synchronous and never awaits or blocks: it appends the line to
a bounded in-memory queue (full → the line is dropped and counted). A background task
writes queued lines in batches with `aiofiles` every `flush_interval` seconds (sooner when
half the queue is waiting), and on `close()`. The file `verdicts.jsonl` is rotated by size,
keeping `keep` older files (`verdicts.jsonl.1` the newest).

A write that fails (full disk, unwritable or vanished directory) turns the writer DEGRADED:
one warning line is logged (not one per line), the batch's lines are counted as dropped,
and `on_health(False)` is called; the next successful write logs one recovery line and
calls `on_health(True)`. The verdicts returned to callers never wait on any of this.

Used from the event loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import aiofiles
import aiofiles.os

_LOG = logging.getLogger(__name__)

FILE_NAME = "verdicts.jsonl"


class ReportWriter:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        keep: int = 5,
        queue_size: int = 65_536,
        flush_interval: float = 0.5,
        on_health: Callable[[bool], None] | None = None,
    ) -> None:
        if max_bytes <= 0 or keep < 0 or queue_size <= 0 or flush_interval <= 0:
            raise ValueError("max_bytes, queue_size and flush_interval must be positive")
        self._directory = directory
        self._path = directory / FILE_NAME
        self._max_bytes = max_bytes
        self._keep = keep
        self._queue_size = queue_size
        self._flush_interval = flush_interval
        self._on_health = on_health
        self._pending: deque[str] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._size: int | None = None
        self.degraded = False
        self.dropped = 0
        self.written = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="reports")

    def record(  # noqa: PLR0913 -- one keyword per report field
        self,
        *,
        oracle: str,
        candidate_id: str,
        status: str,
        score: float,
        duration_seconds: float,
        principal: str,
        request_id: str,
        run: str | None = None,
    ) -> None:
        """Queue one report line; never awaits, never blocks (full queue → dropped)."""
        if self._closed or len(self._pending) >= self._queue_size:
            self.dropped += 1
            return
        line: dict[str, object] = {
            "time": time.time(),
            "oracle": oracle,
            "candidate_id": candidate_id,
            "status": status,
            "score": score,
            "duration": duration_seconds,
            "principal": principal,
            "request_id": request_id,
        }
        if run:
            line["run"] = run
        self._pending.append(json.dumps(line, separators=(",", ":")) + "\n")
        if len(self._pending) * 2 >= self._queue_size:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that arrives as the event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
            if self._closed:
                return

    async def flush(self) -> None:
        """Write every queued line now (used by the background task and `close`)."""
        if not self._pending:
            return
        lines = list(self._pending)
        self._pending.clear()
        data = "".join(lines)
        try:
            await self._write(data)
        except OSError as error:
            self.dropped += len(lines)
            self._size = None
            if not self.degraded:
                self.degraded = True
                _LOG.warning(
                    "reports: cannot write %s (%s); health DEGRADED, report lines are dropped "
                    "and counted until the directory is writable again",
                    self._path,
                    error.strerror or error,
                )
                if self._on_health is not None:
                    self._on_health(False)
            return
        self.written += len(lines)
        if self.degraded:
            self.degraded = False
            _LOG.warning("reports: writing %s again; %d lines dropped", self._path, self.dropped)
            if self._on_health is not None:
                self._on_health(True)

    async def _write(self, data: str) -> None:
        encoded = data.encode()
        if self._size is None:
            try:
                self._size = (await aiofiles.os.stat(self._path)).st_size
            except FileNotFoundError:
                self._size = 0
        if self._size > 0 and self._size + len(encoded) > self._max_bytes:
            await self._rotate()
        async with aiofiles.open(self._path, "ab") as out:
            await out.write(encoded)
        self._size += len(encoded)

    async def _rotate(self) -> None:
        if self._keep == 0:
            await aiofiles.os.remove(self._path)
        else:
            for index in range(self._keep - 1, 0, -1):
                older = Path(f"{self._path}.{index}")
                if await aiofiles.os.path.exists(older):
                    await aiofiles.os.replace(older, Path(f"{self._path}.{index + 1}"))
            await aiofiles.os.replace(self._path, Path(f"{self._path}.1"))
        self._size = 0

    async def close(self) -> None:
        """Flush what is queued and stop the background task (lines recorded after are dropped)."""
        self._closed = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        await self.flush()


def files(directory: Path) -> list[Path]:
    """The report files in `directory`, current first."""
    return sorted(
        (p for p in directory.iterdir() if p.name.startswith(FILE_NAME)),
        key=lambda p: 0 if p.name == FILE_NAME else int(p.name.rsplit(".", 1)[1]),
    )


__all__ = ["FILE_NAME", "ReportWriter", "files"]
