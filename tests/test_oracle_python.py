"""The `python` oracle kind: helix.oracle.pyworker run through CommandPool (real processes).

Entry points live in tests/oracle_workers/entry_points.py; each test copies them into a
directory named with a unique token and passes it as `--path`, so the fixture can check
that no worker (nor zombie) is left once the pool is closed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from oracle_workers.processes import leftovers

import helix.v1.candidate_pb2 as candidate_pb2
from helix.oracle.command import CommandPool, Health, python_spec

from waiting import eventually

ENTRY_POINTS = Path(__file__).parent / "oracle_workers" / "entry_points.py"
QUEUEING = Path(__file__).resolve().parent.parent / "examples" / "oracles" / "queueing.py"
PASSED = candidate_pb2.VERDICT_STATUS_PASSED
FAILED = candidate_pb2.VERDICT_STATUS_FAILED
ERROR = candidate_pb2.VERDICT_STATUS_ERROR
TIMEOUT = candidate_pb2.VERDICT_STATUS_TIMEOUT
Items = list[tuple[str, dict[str, Any]]]


def _cid(i: int) -> str:
    return f"{i:032x}"


def _items(n: int, **special: dict[str, Any]) -> Items:
    """n genomes {"x": [i, 1.0]}; special={"3": {...}} merges extra keys into genome 3."""
    return [(_cid(i), {"x": [float(i), 1.0], **special.get(str(i), {})}) for i in range(n)]


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.token = f"token-{uuid.uuid4().hex}"
        self.modules = tmp_path / f"mods-{self.token}"
        self.modules.mkdir()
        shutil.copy(ENTRY_POINTS, self.modules / "entry_points.py")
        shutil.copy(QUEUEING, self.modules / "queueing.py")
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.pools: list[CommandPool] = []

    async def pool(self, entry_point: str, **options: Any) -> CommandPool:
        options.setdefault("workers", 1)
        spec = python_spec(entry_point, path=str(self.modules), work_root=str(self.work), **options)
        pool = CommandPool(spec)
        await pool.start()
        self.pools.append(pool)
        return pool


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    for pool in h.pools:
        await pool.close()
    await eventually(lambda: not leftovers(h.token) or None, 5.0, what="no worker process left")
    assert not any(h.work.iterdir())


async def test_scalar_numbers_are_passed_scores_and_stdout_chatter_is_kept_away(
    harness: Harness,
) -> None:
    pool = await harness.pool("entry_points:total", workers=2)
    verdicts = await pool.verify(_items(30))
    assert [v.candidate_id for v in verdicts] == [_cid(i) for i in range(30)]
    assert [(v.status, v.score) for v in verdicts] == [(PASSED, i + 1.0) for i in range(30)]
    assert pool.counters.protocol_errors == 0  # print() went to stderr, not into the protocol
    assert pool.counters.worker_starts == 2


async def test_scalar_verdict_dicts_and_invalid_results(harness: Harness) -> None:
    pool = await harness.pool("entry_points:judged")
    kinds = ["failed", "bad_status", "with_id", "nan_score", "inf", "raise", "none", "numpy"]
    items = _items(len(kinds) + 1, **{str(i): {"kind": k} for i, k in enumerate(kinds)})
    verdicts = dict(zip([*kinds, "plain"], await pool.verify(items), strict=True))
    failed = verdicts["failed"]
    assert (failed.status, failed.score, dict(failed.metrics), failed.message) == (
        FAILED,
        7.0,
        {"weight": 3.0},
        "too heavy",
    )
    assert verdicts["plain"].status == PASSED
    assert verdicts["plain"].score == len(kinds) + 1.0
    assert (verdicts["numpy"].status, verdicts["numpy"].score) == (PASSED, 2.5)
    expected_errors = {
        "bad_status": "status must be passed, failed or error",
        "with_id": "must not carry an id",
        "nan_score": "score must be a finite number",
        "inf": "non-finite score (inf)",
        "raise": "ValueError: no good genome 5.0",
        "none": "returned NoneType, not a number or a verdict dict",
    }
    for kind, words in expected_errors.items():
        assert verdicts[kind].status == ERROR, kind
        assert words in verdicts[kind].message, (kind, verdicts[kind].message)
    assert "Traceback" not in verdicts["raise"].message
    assert pool.counters.worker_starts == 1  # every bad result failed its candidate only
    assert pool.health is Health.SERVING


async def test_batch_mode_calls_the_function_with_the_lines_available(harness: Harness) -> None:
    pool = await harness.pool("entry_points:batch_total", batch=True, max_batch=8)
    assert pool.spec.in_flight == 16
    verdicts = await pool.verify(_items(100))
    assert [(v.status, v.score) for v in verdicts] == [(PASSED, i + 1.0) for i in range(100)]
    sizes = [v.metrics["batch"] for v in verdicts]
    assert max(sizes) > 1  # lines that arrived together were evaluated together
    assert max(sizes) <= 8
    assert pool.counters.worker_starts == 1


async def test_batch_mode_accepts_numpy_arrays(harness: Harness) -> None:
    pool = await harness.pool("entry_points:batch_numpy", batch=True)
    verdicts = await pool.verify(_items(20))
    assert [(v.status, v.score) for v in verdicts] == [(PASSED, i + 1.0) for i in range(20)]


async def test_batch_of_the_wrong_length_fails_those_candidates_only(harness: Harness) -> None:
    pool = await harness.pool("entry_points:batch_total", batch=True, max_batch=4)
    verdicts = await pool.verify(_items(12, **{"5": {"kind": "short"}}))
    assert verdicts[5].status == ERROR
    message = verdicts[5].message
    assert "the batch entry point returned" in message
    assert "results for" in message
    for v in verdicts:
        assert v.status == PASSED or v.message == message
    assert sum(v.status == ERROR for v in verdicts) <= 4  # only the short batch
    assert pool.counters.worker_starts == 1
    again = await pool.verify(_items(6))
    assert [v.status for v in again] == [PASSED] * 6


async def test_batch_exception_is_an_error_for_its_candidates(harness: Harness) -> None:
    pool = await harness.pool("entry_points:batch_raise", batch=True)
    verdicts = await pool.verify(_items(5))
    assert all(v.status == ERROR for v in verdicts)
    assert all(v.message.startswith("RuntimeError: batch of ") for v in verdicts)
    assert pool.counters.worker_starts == 1


@pytest.mark.parametrize(
    ("entry_point", "words"),
    [
        ("no_such_module:f", "ModuleNotFoundError: No module named 'no_such_module'"),
        ("entry_points:missing", "AttributeError: module 'entry_points' has no attribute"),
        ("broken:f", "RuntimeError: settings file missing"),
    ],
)
async def test_a_failed_import_gives_error_verdicts_with_the_reason(
    harness: Harness, entry_point: str, words: str
) -> None:
    (harness.modules / "broken.py").write_text('raise RuntimeError("settings file missing")\n')
    pool = await harness.pool(entry_point, backoff_base=0.01)
    verdicts = await pool.verify(_items(3))
    assert [v.status for v in verdicts] == [ERROR] * 3
    for verdict in verdicts:
        assert "worker exited with code 2" in verdict.message
        assert f"helix pyworker: cannot load {entry_point}: {words}" in verdict.message


async def test_a_cpu_bound_function_does_not_block_the_event_loop(harness: Harness) -> None:
    pool = await harness.pool("entry_points:spin")
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    try:
        [verdict] = await pool.verify([(_cid(0), {"seconds": 1.5})])
    finally:
        ticker.cancel()
    assert verdict.status == PASSED, verdict.message
    assert time.perf_counter() - started >= 1.5
    # the loop kept turning while the function held its own process's GIL for 1.5 s
    assert len(gaps) >= 30
    assert max(gaps) < 0.5, max(gaps)


async def test_timeout_gives_timeout_and_a_replacement(harness: Harness) -> None:
    pool = await harness.pool("entry_points:sleepy", timeout=30)
    verdicts = await pool.verify(_items(4, **{"1": {"sleep": 60.0}}), timeout=0.5)
    assert [v.status for v in verdicts] == [PASSED, TIMEOUT, PASSED, PASSED]
    assert "0.5 s per-candidate timeout" in verdicts[1].message
    assert pool.counters.worker_starts == 2
    assert [v.status for v in await pool.verify(_items(2))] == [PASSED] * 2


async def test_the_queueing_example_scalar_and_batch(harness: Harness) -> None:
    # the example itself, loaded in this process, gives the expected verdicts
    loader = importlib.util.spec_from_file_location("queueing_example", QUEUEING)
    assert loader is not None
    assert loader.loader is not None
    queueing = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(queueing)
    genomes = [
        {"servers": 4, "speed": 0.8, "waiting_room": 10},
        {"servers": 1, "speed": 0.5, "waiting_room": 3},
        {"servers": 10, "speed": 2.0, "waiting_room": 0},
    ]
    items: Items = [(_cid(i), g) for i, g in enumerate(genomes)]
    scalar = await harness.pool("queueing:evaluate")
    batch = await harness.pool("queueing:evaluate_batch", batch=True)
    for verdicts in (await scalar.verify(items), await batch.verify(items)):
        for genome, verdict in zip(genomes, verdicts, strict=True):
            expected = queueing.evaluate(genome)
            assert verdict.status == {"passed": PASSED, "failed": FAILED}[expected["status"]]
            assert verdict.score == pytest.approx(expected["score"])
            assert dict(verdict.metrics) == pytest.approx(expected["metrics"])
    cheap, understaffed, lavish = await scalar.verify(items)
    assert understaffed.status == FAILED
    assert "turned away" in understaffed.message
    assert cheap.score < lavish.score < understaffed.score


def test_python_spec_builds_the_worker_command_and_checks_its_input() -> None:
    spec = python_spec("pkg.mod:fn", path="/abs/dir", workers=3, timeout=2.0)
    module = ("-I", "-m", "helix.oracle.pyworker")
    assert spec.argv == (sys.executable, *module, "pkg.mod:fn", "--path", "/abs/dir")
    assert (spec.workers, spec.timeout, spec.in_flight) == (3, 2.0, 32)
    batch = python_spec("m:f", batch=True, max_batch=50, in_flight=60)
    assert batch.argv[-3:] == ("--batch", "--max-batch", "50")
    assert batch.in_flight == 60
    for bad in ("m", "m:", ":f", "m:f:g", "m f:g", "1m:f"):
        with pytest.raises(ValueError, match="MODULE:FUNCTION"):
            python_spec(bad)
    with pytest.raises(ValueError, match="absolute"):
        python_spec("m:f", path="relative/dir")
    with pytest.raises(ValueError, match="max_batch"):
        python_spec("m:f", batch=True, max_batch=0)


def test_the_worker_module_loads_nothing_of_helix_grpc_or_protobuf() -> None:
    """It runs in every worker process: its start-up cost is the interpreter's and the
    entry point's, nothing more."""
    probe = (
        "import sys, helix.oracle.pyworker;"
        "print(sorted(m for m in sys.modules if m.startswith(('helix.v1', 'helix.common',"
        " 'grpc', 'google', 'numpy'))))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
