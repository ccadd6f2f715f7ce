"""The command oracle's worker pool: protocol, pathologies, sandbox, and no zombies."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from oracle_workers.processes import leftovers as _leftovers

import helix.v1.candidate_pb2 as candidate_pb2
from helix.oracle.command import CommandPool, CommandSpec, Health, Limits, parse_verdict_line

from waiting import eventually

WORKER = str(Path(__file__).parent / "oracle_workers" / "worker.py")
PASSED = candidate_pb2.VERDICT_STATUS_PASSED
ERROR = candidate_pb2.VERDICT_STATUS_ERROR
TIMEOUT = candidate_pb2.VERDICT_STATUS_TIMEOUT


def _cid(i: int) -> str:
    return f"{i:032x}"


def _items(n: int, poison: int | None = None) -> list[tuple[str, dict[str, object]]]:
    return [(_cid(i), {"x": [float(i), 1.0], "poison": i == poison}) for i in range(n)]


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.token = f"token-{uuid.uuid4().hex}"
        self.pools: list[CommandPool] = []

    async def pool(self, mode: str, **kwargs: object) -> CommandPool:
        spec = CommandSpec(
            argv=(sys.executable, WORKER, mode, self.token),
            work_root=str(self.tmp_path),
            **kwargs,  # type: ignore[arg-type]
        )
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
    # never a zombie, never a stray worker (nor a child it forked), no directory left
    await eventually(lambda: not _leftovers(h.token) or None, 5.0, what="no worker process left")
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 - a tiny directory listing


async def test_verdicts_in_order_with_scores_and_metrics(harness: Harness) -> None:
    pool = await harness.pool("ok", workers=2, in_flight=4)
    verdicts = await pool.verify(_items(50))
    assert [v.candidate_id for v in verdicts] == [_cid(i) for i in range(50)]
    assert all(v.status == PASSED for v in verdicts)
    assert [v.score for v in verdicts] == [i + 1.0 for i in range(50)]
    assert all(v.metrics["seen"] >= 1 for v in verdicts)
    assert pool.health is Health.SERVING
    assert pool.counters.verdicts["VERDICT_STATUS_PASSED"] == 50
    assert await pool.verify([]) == []


async def _pathology(
    harness: Harness, mode: str, expected: int, words: str, **kw: object
) -> CommandPool:
    pool = await harness.pool(mode, workers=1, in_flight=4, **kw)
    verdicts = await pool.verify(_items(8, poison=3))
    assert [v.candidate_id for v in verdicts] == [_cid(i) for i in range(8)]
    bad = verdicts[3]
    assert bad.status == expected, bad
    assert words in bad.message, bad.message
    others = [v for i, v in enumerate(verdicts) if i != 3]
    assert all(v.status == PASSED for v in others), others
    assert pool.counters.worker_failures >= 1
    # the replacement serves
    again = await pool.verify(_items(3))
    assert [v.status for v in again] == [PASSED] * 3
    return pool


async def test_crash_gives_error_with_stderr_tail_and_replacement(harness: Harness) -> None:
    pool = await _pathology(harness, "crash", ERROR, "exited with code 3")
    assert pool.counters.worker_starts >= 2
    verdicts = await pool.verify(_items(4, poison=1))
    assert "boom: poisoned candidate" in verdicts[1].message


async def test_hang_times_out_and_worker_is_replaced(harness: Harness) -> None:
    pool = await _pathology(harness, "hang", TIMEOUT, "timeout", timeout=0.5)
    assert pool.counters.timeouts == 1


async def test_non_json_line(harness: Harness) -> None:
    await _pathology(harness, "garbage", ERROR, "not JSON")


async def test_wrong_id(harness: Harness) -> None:
    await _pathology(harness, "wrong_id", ERROR, "answered id")


async def test_stdout_flood_over_line_limit(harness: Harness) -> None:
    await _pathology(harness, "flood_stdout", ERROR, "longer than", max_line_bytes=65536)


async def test_a_long_line_fails_its_candidate_after_the_lines_read_with_it(
    harness: Harness,
) -> None:
    # verdicts 0-2 and the 3,000-character line of 3 arrive in one write
    await _pathology(harness, "long_verdict", ERROR, "longer than 1024 bytes", max_line_bytes=1024)


async def test_a_line_that_is_not_utf8_fails_its_candidate_after_the_lines_read_with_it(
    harness: Harness,
) -> None:
    await _pathology(harness, "not_utf8", ERROR, "not JSON")


async def test_fork_and_exit_kills_the_children(harness: Harness) -> None:
    await _pathology(harness, "fork_exit", ERROR, "exited with code 0")
    # the forked children carry the token in their cmdline: the fixture checks they are gone
    await eventually(
        lambda: (
            not [p for p in _leftovers(harness.token) if p[2] != "Z" and "fork_exit" in p[3]][2:]
            or None
        ),
        5.0,
        what="forked children killed",
    )


async def test_exit_mid_batch_loses_no_candidate(harness: Harness) -> None:
    pool = await harness.pool("exit_after", workers=1, in_flight=1)
    verdicts = await pool.verify(_items(7))
    assert [v.candidate_id for v in verdicts] == [_cid(i) for i in range(7)]
    statuses = [v.status for v in verdicts]
    assert statuses.count(PASSED) >= 4
    assert set(statuses) <= {PASSED, ERROR}
    assert pool.counters.worker_starts >= 3


async def test_stderr_flood_is_bounded(harness: Harness) -> None:
    pool = await harness.pool("flood_stderr", workers=1, stderr_ring_bytes=1000)
    verdicts = await pool.verify(_items(20))
    assert all(v.status == PASSED for v in verdicts)
    assert len(pool._workers[0].ring.data) <= 1000


async def test_invalid_verdict_is_an_error_for_that_candidate_only(harness: Harness) -> None:
    pool = await harness.pool("bad_score", workers=1)
    verdicts = await pool.verify(_items(5, poison=2))
    assert verdicts[2].status == ERROR
    assert "score must be a finite number" in verdicts[2].message
    assert [v.status for i, v in enumerate(verdicts) if i != 2] == [PASSED] * 4
    assert pool.counters.worker_starts == 1


async def test_repeated_failures_degrade_then_recover(harness: Harness) -> None:
    pool = await harness.pool("crash", workers=1, degraded_after=3, backoff_base=0.01)
    for _ in range(3):
        [verdict] = await pool.verify(_items(1, poison=0))
        assert verdict.status == ERROR
    assert pool.health is Health.DEGRADED
    await pool.verify(_items(2))
    assert pool.health.value == "SERVING"


async def test_sandbox_environment_and_working_directory(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELIX_SECRET", "nope")
    pool = await harness.pool("env", workers=1, env_allow=("PATH",))
    [verdict] = await pool.verify(_items(1))
    cwd, names = verdict.message.split("|")
    assert Path(cwd).parent.parent == harness.tmp_path  # the pool's directory, then its own
    assert "HELIX_SECRET" not in names.split(",")
    assert set(names.split(",")) <= {"PATH", "LC_CTYPE"}


async def test_rlimits_are_applied(harness: Harness, tmp_path: Path) -> None:
    script = tmp_path.parent / f"limits-{harness.token}.py"
    script.write_text(
        "import json,resource,sys\n"
        "for raw in sys.stdin:\n"
        " r=json.loads(raw)\n"
        " g=lambda n:resource.getrlimit(n)[0]\n"
        " m={'nofile':g(resource.RLIMIT_NOFILE),'fsize':g(resource.RLIMIT_FSIZE),"
        "'cpu':g(resource.RLIMIT_CPU)}\n"
        " print(json.dumps({'id':r['id'],'status':'passed','score':0,'metrics':m}),flush=True)\n"
    )
    spec = CommandSpec(
        argv=(sys.executable, str(script), harness.token),
        work_root=str(tmp_path),
        limits=Limits(
            cpu_seconds=77, address_space_bytes=2 << 30, open_files=64, file_bytes=1 << 20
        ),
    )
    pool = CommandPool(spec)
    await pool.start()
    harness.pools.append(pool)
    [verdict] = await pool.verify(_items(1))
    assert dict(verdict.metrics) == {"nofile": 64.0, "fsize": float(1 << 20), "cpu": 77.0}


async def test_close_kills_a_busy_worker_and_answers_pending(harness: Harness) -> None:
    pool = await harness.pool("hang", workers=1, timeout=60)
    task = asyncio.create_task(pool.verify(_items(3, poison=0)))
    await eventually(
        lambda: (pool.worker_pids() and pool._workers[0].pending) or None, 5.0, what="in flight"
    )
    await pool.close()
    verdicts = await task
    assert [v.status for v in verdicts] == [ERROR] * 3


def test_verdict_line_rules() -> None:
    good = b'{"id":"a","status":"failed","score":2.5,"metrics":{"m.x":1},"message":"hi"}'
    assert parse_verdict_line(good, "a") == (
        candidate_pb2.VERDICT_STATUS_FAILED,
        2.5,
        {"m.x": 1.0},
        "hi",
    )
    assert parse_verdict_line(b'{"id":"a","status":"error"}', "a")[0] == ERROR
    for bad in (
        b'{"id":"a","status":"ok","score":1}',
        b'{"id":"a","status":"passed"}',
        b'{"id":"a","status":"passed","score":true}',
        b'{"id":"a","status":"passed","score":1,"metrics":{"Bad":1}}',
        b'{"id":"a","status":"passed","score":1,"extra":1}',
        b'{"id":"a","status":"passed","score":1,"message":3}',
        b'{"id":"a","status":["passed"],"score":1}',  # unhashable: once a TypeError
        b'{"id":"a","status":"passed","score":1,"metrics":null}',
    ):
        with pytest.raises(ValueError, match=r"must|unknown|does not match"):
            parse_verdict_line(bad, "a")


async def test_an_unhashable_status_fails_one_candidate_and_the_worker_serves_on(
    harness: Harness,
) -> None:
    pool = await harness.pool("list_status", workers=1)
    verdicts = await pool.verify(_items(4, poison=1))
    assert verdicts[1].status == ERROR
    assert "status must be" in verdicts[1].message
    assert [v.status for i, v in enumerate(verdicts) if i != 1] == [PASSED] * 3
    assert pool.counters.worker_starts == 1


async def test_per_call_timeout_overrides_the_spec_default(harness: Harness) -> None:
    pool = await harness.pool("hang", workers=1, timeout=60)
    started = asyncio.get_running_loop().time()
    verdicts = await pool.verify(_items(3, poison=1), timeout=0.3)
    assert asyncio.get_running_loop().time() - started < 10
    assert [v.status for v in verdicts] == [PASSED, TIMEOUT, PASSED]
    assert "0.3 s per-candidate timeout" in verdicts[1].message
    assert pool.counters.timeouts == 1
    # None: the spec's timeout (60 s) applies again; a quick candidate is not affected
    assert [v.status for v in await pool.verify(_items(2), timeout=None)] == [PASSED] * 2
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            await pool.verify(_items(1), timeout=bad)


async def test_concurrent_calls_and_duplicate_ids_each_get_their_verdicts(
    harness: Harness,
) -> None:
    pool = await harness.pool("ok", workers=2, in_flight=3)
    first = _items(40)
    second: list[tuple[str, dict[str, object]]] = [
        (_cid(7), {"x": [100.0]}),
        (_cid(7), {"x": [200.0]}),
        *_items(5),
    ]
    a, b = await asyncio.gather(pool.verify(first), pool.verify(second))
    assert [v.score for v in a] == [i + 1.0 for i in range(40)]
    assert [(v.candidate_id, v.score) for v in b[:2]] == [(_cid(7), 100.0), (_cid(7), 200.0)]
    assert [v.score for v in b[2:]] == [i + 1.0 for i in range(5)]
    assert all(v.HasField("duration") for v in a + b)


async def test_a_cancelled_call_gives_up_its_queued_candidates(harness: Harness) -> None:
    pool = await harness.pool("ok", workers=1, in_flight=2)
    task = asyncio.create_task(pool.verify(_items(20_000)))
    await eventually(
        lambda: pool.counters.verdicts.get("VERDICT_STATUS_PASSED", 0) > 10 or None,
        5.0,
        what="the big call under way",
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    verdicts = await pool.verify(_items(3))
    assert [v.score for v in verdicts] == [1.0, 2.0, 3.0]
    assert not pool.queue  # the cancelled call's candidates were dropped, not evaluated
    assert pool.counters.verdicts["VERDICT_STATUS_PASSED"] < 20_000


async def test_a_genome_that_is_not_json_fails_that_candidate_only(harness: Harness) -> None:
    pool = await harness.pool("ok", workers=1)
    items = _items(3)
    items[1] = (_cid(1), {"x": [1.0], "bad": object()})
    verdicts = await pool.verify(items)
    assert [v.status for v in verdicts] == [PASSED, ERROR, PASSED]
    assert "cannot be written as JSON" in verdicts[1].message
