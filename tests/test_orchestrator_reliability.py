"""The orchestrator's reliability, multi-process (issue 13): every service its own process
on 127.0.0.1 — `helix registry serve`, a generator agent, paced rastrigin oracle agents and
`helix orchestrator serve` — killed (-9), restarted and outnumbered while a run goes on.

Whatever happens to the agents, a run with the same seed ends exactly as the undisturbed
run does: the same evaluations, duplicates, generations, best candidate and best score
(`Outcome`). The undisturbed run is made once per module (`baseline`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import pytest

import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2

from cluster_support import (
    CANCELLED,
    FAILED,
    ORACLE,
    ORACLE_CONFIG,
    PENDING,
    ROOT,
    RUNNING,
    SUCCEEDED,
    Outcome,
    RunCluster,
    events,
    finish,
    get_run,
    reported,
    run_request,
    wait_generations,
)
from harness import clean_env, run_helix
from waiting import eventually

pytestmark = pytest.mark.timeout(180)

SERVING = registry_pb2.AGENT_HEALTH_SERVING
DEGRADED = registry_pb2.AGENT_HEALTH_DEGRADED

EVALUATIONS = 4000  # 40 generations of 100, about 5 s on one agent
SEED = 7
_baseline: list[Outcome] = []


async def baseline(directory: Path) -> Outcome:
    """The undisturbed run: one oracle agent, nothing killed (made once per module)."""
    if not _baseline:
        async with RunCluster(directory) as cluster:
            await asyncio.gather(cluster.add_oracle("o1"), cluster.add_orchestrator())
            stub = cluster.runs()
            created = (await stub.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
            run = await finish(lambda: stub, created.name)
            assert run.state == SUCCEEDED, run.error
            _baseline.append(Outcome.of(run))
    return _baseline[0]


async def stalled(
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub, name: str, within: float = 30.0
) -> int:
    """Until the run completes no generation for a second (about 8 take a second when it
    runs); the generation it is stuck after."""
    deadline = time.monotonic() + within
    last = (await get_run(stub, name)).progress.generation
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)  # the span that tells stuck from slow
        now = (await get_run(stub, name)).progress.generation
        if now == last:
            return now
        last = now
    raise AssertionError(f"{name} did not stall within {within}s")


async def generations_of(cluster: RunCluster, name: str) -> list[int]:
    """The generation numbers of the run's generation_completed events, in order."""
    return [
        event.generation_completed.generation
        async for event in events(cluster.runs(), name)
        if event.HasField("generation_completed")
    ]


async def test_a_killed_oracle_agent_does_not_change_the_run(tmp_path: Path) -> None:
    expected = await baseline(tmp_path / "baseline")
    async with RunCluster(tmp_path / "cluster") as cluster:
        await asyncio.gather(
            cluster.add_oracle("o1"), cluster.add_oracle("o2"), cluster.add_orchestrator()
        )
        stub = cluster.runs()
        created = (await stub.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
        await wait_generations(stub, created.name, 8)
        # Frozen first, so it is killed holding a batch: the run stalls on what o2 was
        # sent (o2 always has credit, so each generation gives it work), then goes on
        # only because that batch is re-sent to o1.
        cluster.member("oracle-o2").process.send_signal(signal.SIGSTOP)
        await stalled(stub, created.name)
        assert await cluster.kill("oracle-o2") == -9
        assert (await get_run(stub, created.name)).state == RUNNING
        run = await finish(lambda: stub, created.name)
        assert run.state == SUCCEEDED, run.error
        assert Outcome.of(run) == expected
        assert run.progress.errors == 0  # re-sent, never given up on
        log = cluster.member("orchestrator").process.stderr_text()
        assert "stream to agents/o2 dropped" in log or "agents/o2 left out" in log, log[-3000:]


async def test_a_killed_generator_agent_does_not_change_the_run(tmp_path: Path) -> None:
    """Two generator agents, one frozen (so a generation waits on it) then kill -9ed: the
    Generate call goes to the other, which breeds the same children from the request."""
    expected = await baseline(tmp_path / "baseline")
    async with RunCluster(tmp_path / "cluster", generators=2) as cluster:
        await asyncio.gather(cluster.add_oracle("o1"), cluster.add_orchestrator())
        stub = cluster.runs()
        created = (await stub.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
        await wait_generations(stub, created.name, 8)
        cluster.member("generator-2").process.send_signal(signal.SIGSTOP)
        await stalled(stub, created.name)  # (each generation picks gen-2 half the time)
        assert await cluster.kill("generator-2") == -9
        run = await finish(lambda: stub, created.name)
        assert run.state == SUCCEEDED, run.error
        assert Outcome.of(run) == expected
        log = cluster.member("orchestrator").process.stderr_text()
        assert "Generate on agents/gen-2 failed" in log, log[-3000:]


async def test_a_batch_an_unresponsive_agent_holds_past_its_deadline_is_sent_elsewhere(
    tmp_path: Path,
) -> None:
    """An agent that stops answering (SIGSTOP: its connection stays up) keeps its batch
    only until --orchestrator-batch-timeout; then the batch goes to the other agent."""
    expected = await baseline(tmp_path / "baseline")
    async with RunCluster(tmp_path / "cluster") as cluster:
        await asyncio.gather(
            cluster.add_oracle("o1"),
            cluster.add_oracle("o2"),
            cluster.add_orchestrator(orchestrator_batch_timeout="2s"),
        )
        stub = cluster.runs()
        created = (await stub.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
        await wait_generations(stub, created.name, 8)
        cluster.member("oracle-o2").process.send_signal(signal.SIGSTOP)
        run = await finish(lambda: stub, created.name)
        assert run.state == SUCCEEDED, run.error
        assert Outcome.of(run) == expected
        assert run.progress.errors == 0
        log = cluster.member("orchestrator").process.stderr_text()
        assert "stream to agents/o2 dropped: a batch missed its 2s deadline" in log, log[-3000:]
        await cluster.kill("oracle-o2")  # (a stopped process would not heed SIGTERM)


async def test_an_orchestrator_killed_and_restarted_resumes_the_run(
    tmp_path: Path, store_settings: dict[str, str]
) -> None:
    expected = await baseline(tmp_path / "baseline")
    async with RunCluster(tmp_path / "cluster", settings=store_settings) as cluster:
        await asyncio.gather(cluster.add_oracle("o1"), cluster.add_orchestrator())
        stub = cluster.runs()
        created = (await stub.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
        await wait_generations(stub, created.name, 10)
        assert await cluster.kill("orchestrator") == -9
        await cluster.restart("orchestrator")  # same data dir, same port
        run = await finish(cluster.runs, created.name)
        assert run.state == SUCCEEDED, run.error
        assert Outcome.of(run) == expected
        # Resumed from its checkpoint: each generation was completed (and reported) once.
        done = await generations_of(cluster, created.name)
        assert done == list(range(len(done))), done
        log = cluster.member("orchestrator").process.stderr_text()
        assert f"resuming {created.name}" in log, log[-3000:]
        assert done[-1] == expected.generation


async def test_a_drained_orchestrator_deregisters_and_its_run_resumes(tmp_path: Path) -> None:
    """SIGTERM: the orchestrator leaves the registry and exits 0; the run it was driving
    stays RUNNING in its store and the next start resumes it to the same end."""
    expected = await baseline(tmp_path / "baseline")
    async with RunCluster(tmp_path / "cluster") as cluster:
        await asyncio.gather(cluster.add_oracle("o1"), cluster.add_orchestrator())
        await eventually(partial(_registered, cluster, "orchestrator"), 20, what="registered")
        stub = cluster.runs()
        created = (await stub.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
        await wait_generations(stub, created.name, 8)
        # One process per data dir: a second orchestrator on it is refused.
        status, _, err = await run_helix(
            *(
                "orchestrator",
                "serve",
                "--port",
                "0",
                "--data-dir",
                str(cluster.root / "orchestrator"),
            ),
            *("--registry-address", cluster.address_of("registry")),
            env=clean_env({"auth_hs256_dir": cluster.key_dir}),
        )
        assert status == 1, err
        assert "is in use by" in err
        assert await cluster.stop("orchestrator") == 0
        assert not await _registered(cluster, "orchestrator")
        await cluster.restart("orchestrator")
        run = await finish(cluster.runs, created.name)
        assert run.state == SUCCEEDED, run.error
        assert Outcome.of(run) == expected
        done = await generations_of(cluster, created.name)
        assert done == list(range(len(done))), done
        log = cluster.member("orchestrator").process.stderr_text()
        assert f"resuming {created.name}" in log, log[-3000:]


async def _registered(cluster: RunCluster, agent_id: str) -> bool:
    listed = await cluster.registry().ListAgents(registry_pb2.ListAgentsRequest(), timeout=10)
    return any(agent.name == f"agents/{agent_id}" for agent in listed.agents)


async def test_one_two_or_three_agents_of_different_speeds_give_the_same_run(
    tmp_path: Path,
) -> None:
    expected = await baseline(tmp_path / "baseline")
    speeds = [("slow", 0.002), ("fast", 0.0002), ("middling", 0.001)]  # s per candidate
    async with RunCluster(tmp_path / "cluster") as cluster:
        await cluster.add_orchestrator()
        stub = cluster.runs()
        outcomes = []
        for count, (agent_id, seconds) in enumerate(speeds, 1):
            await cluster.add_oracle(agent_id, seconds)
            await cluster.warm_oracle(agent_id)  # its workers up: it takes part from the start
            await eventually(partial(_oracle_agents, cluster, count), 20, what="agents")
            created = (await stub.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
            outcomes.append(Outcome.of(await finish(lambda: stub, created.name)))
            # Every agent of the run took part (each reports verdicts for it).
            for taking_part, _ in speeds[:count]:
                await eventually(
                    partial(reported, cluster, taking_part, created.name),
                    20,
                    what=f"verdicts of {taking_part} for run {count}",
                )
        assert outcomes == [expected] * 3


async def _oracle_agents(cluster: RunCluster, count: int) -> bool:
    listed = await cluster.registry().ListAgents(registry_pb2.ListAgentsRequest(), timeout=10)
    return sum(1 for a in listed.agents if a.kind == registry_pb2.AGENT_KIND_ORACLE) == count


async def test_a_registry_restarted_mid_run_does_not_stop_the_run(tmp_path: Path) -> None:
    """The run goes on while the registry is down (the orchestrator keeps what it knew),
    and after it restarts on the same data dir and port the orchestrator learns from it
    again: the only oracle agent left is one that registered with the restarted registry."""
    expected = await baseline(tmp_path / "baseline")
    async with RunCluster(tmp_path / "cluster") as cluster:
        await asyncio.gather(cluster.add_oracle("o1"), cluster.add_orchestrator())
        stub = cluster.runs()
        created = (await stub.CreateRun(run_request(EVALUATIONS, SEED), timeout=10)).run
        await wait_generations(stub, created.name, 8)
        assert await cluster.kill("registry") == -9
        reached = (await get_run(stub, created.name)).progress.generation
        await wait_generations(stub, created.name, reached + 3)  # on, without a registry
        assert await cluster.kill("oracle-o1") == -9
        assert (await get_run(stub, created.name)).state == RUNNING
        await cluster.restart("registry")  # same data dir, same port
        await cluster.add_oracle("o2")  # registers with the restarted registry
        run = await finish(lambda: stub, created.name)
        assert run.state == SUCCEEDED, run.error
        assert Outcome.of(run) == expected
        assert await eventually(partial(reported, cluster, "o2", created.name), 20)


async def test_cancel_mid_run_stops_counting_and_releases_the_agents(tmp_path: Path) -> None:
    async with RunCluster(tmp_path) as cluster:
        await asyncio.gather(
            cluster.add_oracle("o1"), cluster.add_oracle("o2"), cluster.add_orchestrator()
        )
        stub = cluster.runs()
        created = (await stub.CreateRun(run_request(1_000_000, SEED), timeout=10)).run
        await wait_generations(stub, created.name, 3)
        # While it runs, its VerifyStreams hold the agents' credit (their reported load).
        await eventually(
            lambda: _loads(cluster, lambda load: load > 0), 20, what="the agents' load > 0"
        )
        ended = asyncio.Event()
        ended_at: list[float] = []

        async def watch() -> None:
            async for event in events(stub, created.name):
                if event.HasField("state_changed") and event.state_changed.state == CANCELLED:
                    ended_at.append(time.monotonic())
                    ended.set()

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)  # (the watch replays history first; it need not be live yet)
        cancelled = (
            await stub.CancelRun(orchestrator_pb2.CancelRunRequest(name=created.name), timeout=10)
        ).run
        returned = time.monotonic()
        assert cancelled.state == CANCELLED
        run = await get_run(stub, created.name)
        assert run.state == CANCELLED
        await asyncio.wait_for(ended.wait(), 10)
        await watcher
        assert ended_at[0] - returned < 1.0, "CANCELLED reached its watcher more than 1s late"
        counted = run.progress.evaluations
        assert 0 < counted < 1_000_000
        # Nothing is counted after: verdicts in flight at the cancel are dropped.
        await asyncio.sleep(1.5)  # a window for any late verdict to show (none may)
        later = await get_run(stub, created.name)
        assert later.progress.evaluations == counted
        assert later.progress == cancelled.progress
        # The streams are closed: each agent's credit comes back (load 0 in the registry).
        await eventually(
            lambda: _loads(cluster, lambda load: load == 0), 30, what="the agents' load = 0"
        )


async def _loads(cluster: RunCluster, test: Callable[[int], bool]) -> bool:
    loads = [(await cluster.agent(a)).load.in_flight for a in ("o1", "o2")]
    return all(test(load) for load in loads)


async def test_a_run_waits_pending_for_an_oracle_agent_then_runs(tmp_path: Path) -> None:
    async with RunCluster(tmp_path) as cluster:
        await cluster.add_orchestrator()
        stub = cluster.runs()
        created = (await stub.CreateRun(run_request(1000, SEED), timeout=10)).run
        why = f"no live oracle agent hosts {ORACLE}"

        async def waiting() -> orchestrator_pb2.Run | None:
            run = await get_run(stub, created.name)
            return run if why in run.state_message else None

        run = await eventually(waiting, 20, what="the PENDING reason")
        assert run.state == PENDING
        await cluster.add_oracle("o1")
        run = await finish(lambda: stub, created.name)
        assert run.state == SUCCEEDED, run.error
        changes = [
            event.state_changed
            async for event in events(stub, created.name)
            if event.HasField("state_changed")
        ]
        # PENDING with the reason in its events, then RUNNING once the agent came.
        states = [change.state for change in changes]
        assert states[-2:] == [RUNNING, SUCCEEDED], states
        assert any(c.state == PENDING and why in c.message for c in changes[:-2]), changes
        assert run.state_message == ""


async def test_a_run_without_an_oracle_agent_fails_after_the_wait_timeout(
    tmp_path: Path,
) -> None:
    async with RunCluster(tmp_path) as cluster:
        await cluster.add_orchestrator(orchestrator_wait_timeout="2s")
        stub = cluster.runs()
        started = time.monotonic()
        created = (await stub.CreateRun(run_request(1000, SEED), timeout=10)).run
        run = await finish(lambda: stub, created.name, within=60)
        assert time.monotonic() - started >= 2.0
        assert run.state == FAILED
        assert f"no live oracle agent hosts {ORACLE}" in run.error, run.error
        assert "2s" in run.error, run.error
        last = [e async for e in events(stub, created.name)][-1]
        assert last.state_changed.state == FAILED
        assert last.state_changed.error == run.error


async def test_a_degraded_oracle_agent_takes_work_when_no_other_serves(tmp_path: Path) -> None:
    """DEGRADED is "accepting work but impaired; balancers prefer others" (registry.proto).
    An oracle agent one of whose oracles fails (a remote one nobody answers) is DEGRADED:
    a run on its working oracle uses it while no agent is SERVING, and prefers one that is."""
    async with RunCluster(tmp_path) as cluster:
        config = cluster.oracle_config.with_name("degraded.yaml")
        config.write_text(ORACLE_CONFIG + "  far:\n    kind: remote\n    address: 127.0.0.1:1\n")
        await asyncio.gather(cluster.add_oracle("d1", config=config), cluster.add_orchestrator())
        await eventually(
            partial(_health, cluster, "d1", DEGRADED), 20, what="d1", ignore=(grpc.aio.AioRpcError,)
        )
        stub = cluster.runs()
        first = (await stub.CreateRun(run_request(1000, SEED), timeout=10)).run
        run = await finish(lambda: stub, first.name, within=60)
        assert run.state == SUCCEEDED, run.error
        assert await eventually(partial(reported, cluster, "d1", first.name), 20)
        await cluster.add_oracle("o1")
        await eventually(
            partial(_health, cluster, "o1", SERVING), 20, what="o1", ignore=(grpc.aio.AioRpcError,)
        )
        hashes = {await _config_hash(cluster, agent) for agent in ("d1", "o1")}
        assert len(hashes) == 1  # one oracle as far as a run is concerned
        second = (await stub.CreateRun(run_request(1000, SEED), timeout=10)).run
        again = await finish(lambda: stub, second.name, within=60)
        assert Outcome.of(again) == Outcome.of(run)
        assert await eventually(partial(reported, cluster, "o1", second.name), 20)
        assert await reported(cluster, "d1", second.name) == 0


async def _health(cluster: RunCluster, agent_id: str, health: int) -> bool:
    return (await cluster.agent(agent_id)).health == health


async def _config_hash(cluster: RunCluster, agent_id: str) -> str:
    address = cluster.member(f"oracle-{agent_id}").address
    channel = cluster.channel("oracle", scopes=("oracles.read",), address=address)
    response = await oracle_pb2_grpc.OracleServiceStub(channel).GetOracle(
        oracle_pb2.GetOracleRequest(name=ORACLE), timeout=10
    )
    return response.oracle.config_hash


async def test_helix_run_against_the_standalone_orchestrator(tmp_path: Path) -> None:
    """docs/processes.md's commands: builtin oracles, `helix run --address ORCHESTRATOR`
    with a token minted from the registry's data dir."""
    async with RunCluster(tmp_path / "cluster") as cluster:
        builtins = ROOT / "examples" / "oracles" / "builtins.yaml"
        await asyncio.gather(
            cluster.add_oracle("oracle-1", config=builtins), cluster.add_orchestrator()
        )
        status, out, err = await run_helix(
            *("run", str(ROOT / "examples" / "dna" / "rastrigin.yaml"), "--oracle", "rastrigin"),
            *("--budget", "3000", "--seed", "7", "--json", "--out", str(tmp_path / "out")),
            *("--address", cluster.address_of("orchestrator"), "--data-dir", str(cluster.data_dir)),
            env=clean_env(),
        )
        assert status == 0, err
        summary = json.loads(out)
        assert summary["state"] == "SUCCEEDED"
        assert 3000 <= summary["evaluations"] < 3100
        assert summary["oracle"] == ORACLE


async def test_orchestrator_serve_needs_a_registry_address(tmp_path: Path) -> None:
    status, out, err = await run_helix(
        "orchestrator", "serve", "--port", "0", "--data-dir", str(tmp_path), env=clean_env()
    )
    assert status == 2, (out, err)
    assert "--registry-address / HELIX_REGISTRY_ADDRESS: must be set" in err
    status, out, err = await run_helix(
        "orchestrator",
        "serve",
        "--registry-address",
        "127.0.0.1:1",
        "--agent-id",
        "Not An Id",
        "--data-dir",
        str(tmp_path),
        env=clean_env(),
    )
    assert status == 2, (out, err)
    assert "--agent-id" in err
    status, out, err = await run_helix(
        *("orchestrator", "serve", "--registry-address", "127.0.0.1:1"),
        *("--data-dir", str(tmp_path)),
        env=clean_env(),
    )
    assert status == 2, (out, err)
    assert "no token verification keys" in err
