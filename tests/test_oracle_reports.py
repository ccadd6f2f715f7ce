"""Verification reports with real files: lines, rotation, an unwritable directory, close."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest

from helix.oracle.reports import FILE_NAME, ReportWriter, files

from waiting import eventually


def _record(writer: ReportWriter, i: int, run: str | None = None) -> None:
    writer.record(
        oracle="sphere",
        candidate_id=f"{i:032x}",
        status="PASSED",
        score=float(i),
        duration_seconds=0.001,
        principal="alice",
        request_id=f"req-{i}",
        run=run,
    )


def _lines(directory: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for path in reversed(files(directory)):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


async def test_lines_are_written_and_parseable(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path, flush_interval=0.02)
    writer.start()
    for i in range(10):
        _record(writer, i, run="run-7" if i % 2 else None)
    await eventually(lambda: writer.written == 10 or None, what="10 lines written")
    lines = _lines(tmp_path)
    assert [line["candidate_id"] for line in lines] == [f"{i:032x}" for i in range(10)]
    assert lines[1]["run"] == "run-7"
    assert "run" not in lines[0]
    assert set(lines[1]) == {
        "time", "oracle", "candidate_id", "status", "score", "duration", "principal",
        "request_id", "run",
    }  # fmt: skip
    await writer.close()


async def test_close_flushes(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path, flush_interval=60.0)
    writer.start()
    for i in range(5):
        _record(writer, i)
    assert not (tmp_path / FILE_NAME).exists()
    await writer.close()
    assert len(_lines(tmp_path)) == 5


async def test_rotation_by_size_keeps_n_files(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path, max_bytes=1000, keep=2, flush_interval=60.0)
    for batch in range(10):
        for i in range(5):
            _record(writer, batch * 5 + i)
        await writer.flush()
    names = sorted(p.name for p in files(tmp_path))
    assert names == sorted([FILE_NAME, f"{FILE_NAME}.1", f"{FILE_NAME}.2"])
    for path in files(tmp_path):
        assert path.stat().st_size <= 1000
    kept = [int(str(line["candidate_id"]), 16) for line in _lines(tmp_path)]
    assert kept == list(range(50 - len(kept), 50))  # the most recent, in order


async def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path, queue_size=4, flush_interval=60.0)
    for i in range(10):
        _record(writer, i)
    assert writer.dropped == 6
    await writer.close()
    assert len(_lines(tmp_path)) == 4


async def test_unwritable_directory_degrades_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Running as root ignores permission bits, so the directory is replaced by a file:
    # every write fails the way a read-only or vanished directory makes it fail.
    directory = tmp_path / "reports"
    directory.mkdir()
    health: list[bool] = []
    writer = ReportWriter(directory, flush_interval=0.02, on_health=health.append)
    writer.start()
    _record(writer, 0)
    await eventually(lambda: writer.written == 1 or None, what="first line written")
    shutil.rmtree(directory)
    directory.write_text("not a directory")
    for i in range(1, 6):
        started = time.perf_counter()
        _record(writer, i)
        assert time.perf_counter() - started < 0.01
    await eventually(lambda: writer.degraded or None, what="DEGRADED")
    assert health == [False]
    await eventually(lambda: writer.dropped == 5 or None, what="5 lines dropped")
    _record(writer, 99)
    await eventually(lambda: writer.dropped == 6 or None, what="6 lines dropped")
    degraded_logs = [r for r in caplog.records if "DEGRADED" in r.getMessage()]
    assert len(degraded_logs) == 1  # one clear line, not one per dropped line
    directory.unlink()
    directory.mkdir()
    _record(writer, 6)
    await eventually(lambda: (not writer.degraded) or None, what="recovered")
    assert health == [False, True]
    await writer.close()
    assert [line["candidate_id"] for line in _lines(directory)] == [f"{6:032x}"]


async def test_cancelled_error_propagates_from_close(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path, flush_interval=0.02)
    writer.start()
    _record(writer, 0)
    closing = asyncio.create_task(writer.close())
    await asyncio.sleep(0)  # close() is now awaiting the background task
    assert not closing.done()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
