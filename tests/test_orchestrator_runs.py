"""OrchestratorService end to end on the embedded suite: real gRPC on loopback, the real
generator and builtin oracle agents, the run store on SQLite and on etcd."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import grpc
import pytest

import helix.v1.orchestrator_pb2 as orchestrator_pb2

from harness import clean_env
from orchestrator_support import run_request, runs_stub, start_run_suite, watch_to_end

SUCCEEDED = orchestrator_pb2.RUN_STATE_SUCCEEDED
RASTRIGIN = Path(__file__).resolve().parent.parent / "examples" / "dna" / "rastrigin.yaml"


async def test_a_run_reaches_its_budget_and_reports_its_best(
    tmp_path: Path, store_settings: dict[str, str]
) -> None:
    suite = await start_run_suite(tmp_path, **store_settings)
    try:
        stub = runs_stub(suite)
        created = (await stub.CreateRun(run_request(evaluations=2000))).run
        assert created.state == orchestrator_pb2.RUN_STATE_PENDING
        events = await watch_to_end(stub, created.name)
        run = (await stub.GetRun(orchestrator_pb2.GetRunRequest(name=created.name))).run
        assert run.state == SUCCEEDED, run.error
        assert run.stop_reason == orchestrator_pb2.RUN_STOP_REASON_MAX_EVALUATIONS
        assert 2000 <= run.progress.evaluations < 2000 + 100
        assert run.progress.best.verdict.score >= 0
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        kinds = [e.WhichOneof("kind") for e in events]
        assert kinds[0] == "state_changed"
        assert kinds[-1] == "state_changed"
        assert events[-1].state_changed.state == SUCCEEDED
        completed = [e.generation_completed for e in events if e.HasField("generation_completed")]
        assert completed[-1].evaluations == run.progress.evaluations
        listed = await stub.ListRunCandidates(
            orchestrator_pb2.ListRunCandidatesRequest(name=run.name, page_size=5)
        )
        assert listed.candidates[0].candidate.id == run.progress.best.candidate.id
        scores = [c.verdict.score for c in listed.candidates]
        assert scores == sorted(scores)
        assert listed.next_page_token
        # The orchestrator's metrics account for the run.
        metric = suite.server.metrics.registry.get_sample_value
        assert metric("helix_orchestrator_evaluations_total") == run.progress.evaluations
        assert metric("helix_orchestrator_generations_total") == run.progress.generation + 1
        assert metric("helix_orchestrator_runs_ended_total", {"state": "succeeded"}) == 1
        assert metric("helix_orchestrator_runs", {"state": "running"}) == 0
        assert metric("helix_orchestrator_backlog") == 0
        assert (metric("helix_orchestrator_oracle_capacity") or 0) > 0
        assert metric("helix_orchestrator_backlog_ratio") == 0
    finally:
        await suite.close()


async def test_the_same_seed_gives_the_same_run(
    tmp_path: Path, store_settings: dict[str, str]
) -> None:
    results = []
    for i in range(2):
        settings = dict(store_settings)
        if "etcd_prefix" in settings:
            settings["etcd_prefix"] += f"-{i}"
        suite = await start_run_suite(tmp_path / str(i), **settings)
        try:
            stub = runs_stub(suite)
            created = (await stub.CreateRun(run_request(evaluations=1500, seed=11))).run
            await watch_to_end(stub, created.name)
            run = (await stub.GetRun(orchestrator_pb2.GetRunRequest(name=created.name))).run
            results.append(
                (
                    run.progress.evaluations,
                    run.progress.duplicates,
                    run.progress.best.candidate.id,
                    run.progress.best.verdict.score,
                    run.progress.generation,
                )
            )
        finally:
            await suite.close()
    assert results[0] == results[1]


async def test_someone_elses_run_is_denied_whether_or_not_it_exists(
    tmp_path: Path, store_settings: dict[str, str]
) -> None:
    suite = await start_run_suite(tmp_path, **store_settings)
    try:
        alice, bob = runs_stub(suite, "alice"), runs_stub(suite, "bob")
        created = (await alice.CreateRun(run_request(evaluations=300))).run
        for name in (created.name, "runs/does-not-exist"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await bob.GetRun(orchestrator_pb2.GetRunRequest(name=name))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        listed = await bob.ListRuns(orchestrator_pb2.ListRunsRequest())
        assert list(listed.runs) == []
    finally:
        await suite.close()


async def test_helix_run_embedded_prints_the_summary_and_writes_the_run_dir(
    tmp_path: Path,
) -> None:
    """`helix run` as a user runs it: its own process, the embedded suite inside."""
    import asyncio
    import json
    import sys

    out = tmp_path / "out"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "helix.cli",
        "run",
        str(RASTRIGIN),
        "--oracle",
        "rastrigin",
        "--budget",
        "3000",
        "--seed",
        "7",
        "--json",
        "--out",
        str(out),
        "--data-dir",
        str(tmp_path / "data"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    summary = json.loads(stdout)
    assert summary["state"] == "SUCCEEDED"
    assert 3000 <= summary["evaluations"] < 3100
    assert summary["best_score"] == min(
        json.loads(line)["score"] for line in (out / "candidates.jsonl").read_text().splitlines()
    )
    assert set(summary["best_candidate"]) == {"x"}
    assert summary["wall_seconds"] > 0
    assert summary["evaluations_per_second"] > 0
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["run"] == summary["run"]
    assert "SUCCEEDED" in stderr.decode()


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_signal_cancels_helix_run_cleanly(
    tmp_path: Path, signum: signal.Signals, status: int
) -> None:
    """Ctrl-C (SIGINT) or SIGTERM during `helix run`: the run is cancelled (CancelRun),
    the command says CANCELLED, exits 130 or 143, still writes the run directory, and
    leaves no scratch data dir (with its signing key) behind."""
    out = tmp_path / "out"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "helix.cli", "run", str(RASTRIGIN), "--oracle", "rastrigin"),
        *("--budget", "100000000", "--seed", "7", "--json", "--out", str(out)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**clean_env(), "TMPDIR": str(scratch)},
    )
    assert process.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(60):
            while "RUNNING" not in "".join(seen):  # the run started: now interrupt it
                line = (await process.stderr.readline()).decode()
                assert line, f"helix run ended before its run started: {seen}"
                seen.append(line)
        assert [p.name[:10] for p in scratch.iterdir()] == ["helix-run-"]
        process.send_signal(signum)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == status, stderr.decode()
    summary = json.loads(stdout)
    assert summary["state"] == "CANCELLED"
    assert summary["evaluations"] < 100000000
    assert "CANCELLED" in stderr.decode()
    assert json.loads((out / "summary.json").read_text())["state"] == "CANCELLED"
    assert list(scratch.iterdir()) == []


async def test_sigterm_while_the_embedded_suite_starts_stops_helix_run_in_order(
    tmp_path: Path,
) -> None:
    """SIGTERM as soon as the scratch data dir appears, while the embedded suite starts
    (on a slow machine the run may have been created by then: it is cancelled, with the
    same status): the command stops with 143 and no traceback, the suite drained and the
    scratch dir gone."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "helix.cli", "run", str(RASTRIGIN), "--oracle", "rastrigin"),
        *("--budget", "100000000", "--json", "--out", str(tmp_path / "out")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**clean_env(), "TMPDIR": str(scratch)},
    )
    try:
        async with asyncio.timeout(60):
            while not await asyncio.to_thread(lambda: any(scratch.iterdir())):
                assert process.returncode is None
                await asyncio.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 143, stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert list(scratch.iterdir()) == []


async def test_a_cancel_that_comes_after_the_run_ended_changes_nothing(tmp_path: Path) -> None:
    """`helix run`'s follower with its cancel already set (a Ctrl-C as the run ended, its
    end not read yet): CancelRun is refused FAILED_PRECONDITION, which is no error there,
    and the run is followed to its end, SUCCEEDED."""
    import io

    from rich.console import Console

    from helix.cli.run_output import Convergence, RunDisplay
    from helix.cli.runs import _follow

    suite = await start_run_suite(tmp_path)
    try:
        stub = runs_stub(suite)
        created = (await stub.CreateRun(run_request(evaluations=300))).run
        await watch_to_end(stub, created.name)
        cancel = asyncio.Event()
        cancel.set()
        convergence = Convergence()
        with RunDisplay(Console(file=io.StringIO())) as display:
            await _follow(stub, created.name, display, convergence, cancel)
        run = (await stub.GetRun(orchestrator_pb2.GetRunRequest(name=created.name))).run
        assert run.state == SUCCEEDED
        assert convergence.points
    finally:
        await suite.close()
