"""Verification reports: every verdict appended as a JSON line, off the request path.

`ReportWriter.record(...)` and `record_batch(...)` are synchronous and never await or
block: they append to a bounded in-memory queue (full → the lines are dropped and
counted). A batch is queued as its columns and formatted into lines only when written, so
the request path pays for a reference, not for JSON. A background task
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import aiofiles.os
import numpy as np

_LOG = logging.getLogger(__name__)

FILE_NAME = "verdicts.jsonl"
_STATUS_NAMES = ("UNSPECIFIED", "PASSED", "FAILED", "ERROR", "TIMEOUT")


@dataclass(frozen=True, slots=True)
class _Batch:
    """One verification's report lines, as columns (formatted when written)."""

    time: float
    oracle: str
    principal: str
    request_id: str
    run: str
    ids: Sequence[str]
    statuses: Sequence[int]
    scores: Sequence[float]
    duration: float
    cached: Sequence[bool] | None

    def lines(self) -> bytes:
        """The batch's lines: one shared head (time, oracle, principal, request, run,
        duration), then each candidate's id, status and score. The score's `repr` is most
        of the cost (about 0.35 of 0.5 µs a line)."""
        common = {
            "time": round(self.time, 6),
            "oracle": self.oracle,
            "principal": self.principal,
            "request_id": self.request_id,
            **({"run": self.run} if self.run else {}),
            "duration": self.duration,
        }
        head = json.dumps(common, separators=(",", ":"))[:-1] + ',"candidate_id":"'
        values = np.asarray(self.scores, dtype=np.float64)
        texts = list(map(repr, values.tolist()))
        if not np.isfinite(values).all():  # JSON has no NaN or infinity
            for row in np.flatnonzero(~np.isfinite(values)).tolist():
                texts[row] = "null"
        pieces = _STATUS_PIECES
        if self.cached is None:
            lines = [
                f'{head}{i}{pieces[s]},"score":{t}}}\n'
                for i, s, t in zip(self.ids, self.statuses, texts, strict=True)
            ]
        else:
            marks = ("", ',"cached":true')
            lines = [
                f'{head}{i}{pieces[s]}{marks[c]},"score":{t}}}\n'
                for i, s, t, c in zip(self.ids, self.statuses, texts, self.cached, strict=True)
            ]
        return "".join(lines).encode()


_STATUS_PIECES = tuple(f'","status":"{name}"' for name in _STATUS_NAMES)


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
        self._pending: deque[str | _Batch] = deque()
        self._queued = 0  # lines in _pending
        self._wake = asyncio.Event()
        # Set while the queue is under half full: callers that can wait (a stream's next
        # credit) wait for it instead of having their lines dropped.
        self.room = asyncio.Event()
        self.room.set()
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
        if self._closed or self._queued >= self._queue_size:
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
        self._queued += 1
        self._check_room()

    def record_batch(  # noqa: PLR0913 -- one keyword per report field
        self,
        *,
        oracle: str,
        principal: str,
        request_id: str,
        run: str,
        ids: Sequence[str],
        statuses: Sequence[int],
        scores: Sequence[float],
        duration_seconds: float,
        cached: Sequence[bool] | None = None,
        keep: bool = False,
    ) -> None:
        """Queue one line per candidate of a verification (same principal, request and
        per-candidate duration); never awaits, never blocks, never formats here. With
        `keep`, the lines are queued even over the queue's size: for callers whose own
        flow control bounds them (a VerifyStream stops granting credit while the queue is
        congested, so what it adds stays within its window)."""
        n = len(ids)
        if self._closed or (not keep and self._queued + n > self._queue_size):
            self.dropped += n
            return
        self._pending.append(
            _Batch(
                time.time(),
                oracle,
                principal,
                request_id,
                run,
                ids,
                statuses,
                scores,
                duration_seconds,
                cached,
            )
        )
        self._queued += n
        self._check_room()

    def _check_room(self) -> None:
        if self._queued * 2 >= self._queue_size:
            self._wake.set()
            self.room.clear()

    @property
    def congested(self) -> bool:
        """Whether the queue is half full or more and the writer can write (when it
        cannot, lines are dropped and nobody should wait for it)."""
        return not self.room.is_set() and not self.degraded

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that arrives as the event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # the writer must outlive any one batch's failure
                _LOG.exception("reports: writing a batch of lines failed; they are dropped")
                self.room.set()
            if self._closed:
                return

    async def flush(self) -> None:
        """Write every queued line now (used by the background task and `close`)."""
        if not self._pending:
            return
        items = list(self._pending)
        count, self._queued = self._queued, 0
        self._pending.clear()
        self.room.set()
        try:
            if any(isinstance(item, _Batch) for item in items):
                # Formatting thousands of lines is CPU work: a thread, not the event loop.
                data = await asyncio.to_thread(_format, items)
            else:
                data = _format(items)
        except Exception:
            self.dropped += count  # counted, never silently lost
            raise
        try:
            await self._write(data)
        except OSError as error:
            self.dropped += count
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
        self.written += count
        if self.degraded:
            self.degraded = False
            _LOG.warning("reports: writing %s again; %d lines dropped", self._path, self.dropped)
            if self._on_health is not None:
                self._on_health(True)

    async def _write(self, encoded: bytes) -> None:
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


def _format(items: Sequence[str | _Batch]) -> bytes:
    return b"".join(item.encode() if isinstance(item, str) else item.lines() for item in items)


def files(directory: Path) -> list[Path]:
    """The report files in `directory`, current first."""
    return sorted(
        (p for p in directory.iterdir() if p.name.startswith(FILE_NAME)),
        key=lambda p: 0 if p.name == FILE_NAME else int(p.name.rsplit(".", 1)[1]),
    )


__all__ = ["FILE_NAME", "ReportWriter", "files"]
