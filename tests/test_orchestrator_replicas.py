"""Orchestrator replicas on one etcd run store (issue 14), every service its own process:
`helix registry serve`, a generator agent, a paced rastrigin oracle agent and two `helix
orchestrator serve` on the same etcd, one of them killed (-9) mid-run.

The run ends exactly as the undisturbed run does (`Outcome`: evaluations, duplicates,
generations, best candidate and score), whichever orchestrator finishes it; any replica
answers GetRun, WatchRun and CancelRun for any run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

import helix.v1.orchestrator_pb2 as orchestrator_pb2

from cluster_support import (
    CANCELLED,
    SUCCEEDED,
    Outcome,
    RunCluster,
    events,
    finish,
    get_run,
    run_request,
    wait_generations,
)
from etcd_support import EtcdCluster
from orchestrator_support import run_request as suite_run_request
from orchestrator_support import runs_stub, start_run_suite

pytestmark = pytest.mark.timeout(180)

EVALUATIONS = 4000  # 40 generations of 100
SEED = 7
OWNER_TTL = "2s"


async def replicas(cluster: RunCluster, etcd: EtcdCluster, prefix: str) -> None:
    """The oracle agent and two orchestrators ("orch-a", "orch-b") on `etcd`."""
    store = {"store": etcd.url, "etcd_prefix": prefix, "orchestrator_owner_ttl": OWNER_TTL}
    await asyncio.gather(
        cluster.add_oracle("o1"),
        cluster.add_orchestrator("orch-a", **store),
        cluster.add_orchestrator("orch-b", **store),
    )


async def undisturbed(directory: Path, etcd: EtcdCluster) -> Outcome:
    """The run with nothing killed (its own prefix: a store of its own)."""
    async with RunCluster(directory) as cluster:
        await replicas(cluster, etcd, f"/baseline-{uuid.uuid4().hex}")
        stub = cluster.runs(member="orch-a")
        created = (await stub.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
        run = await finish(lambda: stub, created.name)
        assert run.state == SUCCEEDED, run.error
        return Outcome.of(run)


async def test_a_killed_orchestrator_s_run_is_taken_over_with_the_same_result(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    expected = await undisturbed(tmp_path / "baseline", etcd)
    async with RunCluster(tmp_path / "cluster") as cluster:
        await replicas(cluster, etcd, f"/replicas-{uuid.uuid4().hex}")
        a, b = cluster.runs(member="orch-a"), cluster.runs(member="orch-b")
        created = (await a.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
        # b serves the run another drives: its state, and its events as they come.
        assert (await get_run(b, created.name)).name == created.name
        await wait_generations(b, created.name, 10)
        assert await cluster.kill("orch-a") == -9
        killed_at = time.monotonic()

        async def moving_again() -> bool:
            return (await get_run(b, created.name)).progress.generation >= 12

        deadline = killed_at + 30
        while not await moving_again():
            assert time.monotonic() < deadline, "orch-b did not take the run over"
            await asyncio.sleep(0.2)
        taken_over_after = time.monotonic() - killed_at
        run = await finish(lambda: b, created.name)
        assert run.state == SUCCEEDED, run.error
        assert Outcome.of(run) == expected
        # Each generation completed (and reported) once, across the two orchestrators.
        done = [
            e.generation_completed.generation
            async for e in events(b, created.name)
            if e.HasField("generation_completed")
        ]
        assert done == list(range(len(done))), done
        log = cluster.member("orch-b").process.stderr_text()
        assert f"resuming {created.name}" in log, log[-3000:]
        assert taken_over_after < 15, taken_over_after  # the owner TTL, a scan, a generation


async def test_any_replica_watches_and_cancels_a_run_another_drives(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    async with RunCluster(tmp_path / "cluster") as cluster:
        await replicas(cluster, etcd, f"/replicas-{uuid.uuid4().hex}")
        a, b = cluster.runs(member="orch-a"), cluster.runs(member="orch-b")
        created = (await a.CreateRun(run_request(10 * EVALUATIONS, SEED), timeout=10)).run
        seen: list[orchestrator_pb2.RunEvent] = []

        async def watch_at_b() -> None:
            async for event in events(b, created.name):
                seen.append(event)

        watching = asyncio.create_task(watch_at_b())
        await wait_generations(a, created.name, 5)
        cancelled = await b.CancelRun(orchestrator_pb2.CancelRunRequest(name=created.name))
        assert cancelled.run.state == CANCELLED
        await asyncio.wait_for(watching, 30)
        assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
        assert seen[-1].state_changed.state == CANCELLED
        # The driver let it go: no generation is committed after the cancel.
        await asyncio.sleep(1.0)
        after = await get_run(a, created.name)
        assert after.state == CANCELLED
        assert after.progress.generation == (await get_run(b, created.name)).progress.generation
        log = cluster.member("orch-a").process.stderr_text()
        assert "changed elsewhere" in log, log[-3000:]


async def test_a_run_on_etcd_survives_the_etcd_leader_killed(
    tmp_path: Path, etcd: EtcdCluster, etcd_cluster: EtcdCluster
) -> None:
    """Registry and orchestrator on a 3-member etcd; kill -9 its leader mid-run: the run
    completes with the undisturbed run's result."""
    expected = await undisturbed(tmp_path / "baseline", etcd)
    prefix = f"/leader-{uuid.uuid4().hex}"
    settings = {"store": etcd_cluster.url, "etcd_prefix": prefix}
    async with RunCluster(tmp_path / "cluster", settings=settings) as cluster:
        await asyncio.gather(cluster.add_oracle("o1"), cluster.add_orchestrator())
        stub = cluster.runs()
        created = (await stub.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
        await wait_generations(stub, created.name, 8)
        leader = await etcd_cluster.leader()
        await etcd_cluster.kill(leader.name)
        run = await finish(lambda: stub, created.name)
        assert run.state == SUCCEEDED, run.error
        assert Outcome.of(run) == expected


@pytest.mark.timeout(180)
async def test_etcd_unreachable_for_10s_pauses_a_run_and_it_resumes_with_the_same_result(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    """The embedded suite on etcd: etcd killed for 10 s mid-run. Meanwhile the
    orchestrator answers UNAVAILABLE (never INTERNAL); when etcd is back the run resumes
    from its checkpoint by itself and ends as the undisturbed run does."""
    outcomes = []
    for i, disturb in enumerate((False, True)):
        settings = {"store": etcd.url, "etcd_prefix": f"/outage-{i}-{uuid.uuid4().hex}"}
        suite = await start_run_suite(tmp_path / f"suite-{i}", **settings)
        try:
            stub = runs_stub(suite)
            created = (await stub.CreateRun(suite_run_request(evaluations=6000, seed=3))).run
            if disturb:
                await wait_generations(stub, created.name, 5)
                await etcd.kill("etcd0")
                down = time.monotonic()
                # What needs etcd is UNAVAILABLE; the run it drives it knows as last
                # committed.
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ListRuns(orchestrator_pb2.ListRunsRequest())
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetRun(orchestrator_pb2.GetRunRequest(name="runs/elsewhere"))
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(max(0.0, 10 - (time.monotonic() - down)))
                await etcd.restart("etcd0")
            run = await finish(partial(runs_stub_of, stub), created.name, within=120)
            assert run.state == SUCCEEDED, run.error
            outcomes.append(Outcome.of(run))
        finally:
            await suite.close()
    assert outcomes[0] == outcomes[1]


def runs_stub_of(stub: Any) -> Any:
    return stub
