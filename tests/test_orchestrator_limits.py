"""What one caller can hold of the orchestrator: unfinished runs per principal and in all
(RESOURCE_EXHAUSTED, nothing created), and retention of finished runs (per owner by count,
for everyone by age) with their history; the run store's migration from schema 1."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest

import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.common.config import ConfigError
from helix.orchestrator.config import OrchestratorSettings
from helix.orchestrator.sqlite_store import SqliteRunStore
from helix.orchestrator.store import RunCommit, StoredCandidate, StoredEvent, StoredRun

from orchestrator_support import run_request, runs_stub, start_run_suite, watch_to_end
from registry_support import error_info
from waiting import eventually

RUNNING_FOREVER = 10**9  # evaluations: these runs end only when cancelled


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_a_caller_cannot_hold_more_unfinished_runs_than_its_share(
    tmp_path: Path, store_settings: dict[str, Any]
) -> None:
    suite = await start_run_suite(tmp_path, orchestrator_max_runs_per_principal=2, **store_settings)
    try:
        alice, bob = runs_stub(suite, "alice"), runs_stub(suite, "bob")
        first = (await alice.CreateRun(run_request(evaluations=RUNNING_FOREVER))).run
        second_request = run_request(evaluations=RUNNING_FOREVER)
        second = (await alice.CreateRun(second_request)).run
        error = await _refused(alice.CreateRun(run_request(evaluations=RUNNING_FOREVER)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(error)
        assert info.reason == "TOO_MANY_RUNS_FOR_PRINCIPAL"
        assert info.metadata["limit"] == "2"
        listed = await alice.ListRuns(orchestrator_pb2.ListRunsRequest())
        assert {r.name for r in listed.runs} == {first.name, second.name}  # nothing created
        # A retry of an accepted request is no new run: it is answered at the limit too.
        again = (await alice.CreateRun(second_request)).run
        assert again.name == second.name
        # Another caller has its own share.
        other = (await bob.CreateRun(run_request(evaluations=RUNNING_FOREVER))).run
        # A run that ends frees its slot.
        await alice.CancelRun(orchestrator_pb2.CancelRunRequest(name=first.name))
        third = (await alice.CreateRun(run_request(evaluations=RUNNING_FOREVER))).run
        for stub, name in ((alice, second.name), (alice, third.name), (bob, other.name)):
            await stub.CancelRun(orchestrator_pb2.CancelRunRequest(name=name))
    finally:
        await suite.close()


async def test_the_orchestrator_drives_at_most_its_limit_of_runs(
    tmp_path: Path, store_settings: dict[str, Any]
) -> None:
    suite = await start_run_suite(tmp_path, orchestrator_max_runs=2, **store_settings)
    try:
        stubs = [runs_stub(suite, who) for who in ("alice", "bob", "carol")]
        names = [
            (await stub.CreateRun(run_request(evaluations=RUNNING_FOREVER))).run.name
            for stub in stubs[:2]
        ]
        error = await _refused(stubs[2].CreateRun(run_request(evaluations=RUNNING_FOREVER)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(error).reason == "TOO_MANY_RUNS"
        for stub, name in zip(stubs, names, strict=False):
            await stub.CancelRun(orchestrator_pb2.CancelRunRequest(name=name))
        created = (await stubs[2].CreateRun(run_request(evaluations=RUNNING_FOREVER))).run
        await stubs[2].CancelRun(orchestrator_pb2.CancelRunRequest(name=created.name))
    finally:
        await suite.close()


async def test_an_owner_keeps_its_newest_finished_runs(
    tmp_path: Path, store_settings: dict[str, Any]
) -> None:
    suite = await start_run_suite(tmp_path, orchestrator_keep_finished_runs=2, **store_settings)
    try:
        alice, bob = runs_stub(suite, "alice"), runs_stub(suite, "bob")
        admin = runs_stub(suite, "root", ("runs.read", "runs.write", "admin"))
        bobs = (await bob.CreateRun(run_request(evaluations=200))).run.name
        await watch_to_end(bob, bobs)
        names = []
        for _ in range(3):
            name = (await alice.CreateRun(run_request(evaluations=200))).run.name
            await watch_to_end(alice, name)
            names.append(name)
        listed = await alice.ListRuns(orchestrator_pb2.ListRunsRequest())
        assert [r.name for r in listed.runs] == names[:0:-1]  # the newest two, newest first
        error = await _refused(admin.GetRun(orchestrator_pb2.GetRunRequest(name=names[0])))
        assert error.code() == grpc.StatusCode.NOT_FOUND  # deleted, history and all
        for call in (
            alice.GetRun(orchestrator_pb2.GetRunRequest(name=names[0])),
            alice.ListRunCandidates(orchestrator_pb2.ListRunCandidatesRequest(name=names[0])),
        ):
            assert (await _refused(call)).code() == grpc.StatusCode.PERMISSION_DENIED
        # Another owner's runs do not count against alice's.
        assert (await bob.GetRun(orchestrator_pb2.GetRunRequest(name=bobs))).run.name == bobs
    finally:
        await suite.close()


def _stored(name: str, owner: str, state: int, created: int, ended: int) -> StoredRun:
    run = orchestrator_pb2.Run(name=name, owner=owner, state=state)  # type: ignore[arg-type]
    return StoredRun(name, owner, state, created, 1, run.SerializeToString(), end_time_ns=ended)


async def test_prune_deletes_finished_runs_by_count_and_age_never_unfinished(
    tmp_path: Path,
) -> None:
    store = SqliteRunStore(tmp_path / "runs.sqlite3")
    await store.open()
    try:
        succeeded, running = (
            orchestrator_pb2.RUN_STATE_SUCCEEDED,
            orchestrator_pb2.RUN_STATE_RUNNING,
        )
        runs = [
            _stored("runs/a1", "alice", succeeded, 1, 100),
            _stored("runs/a2", "alice", succeeded, 2, 900),
            _stored("runs/a3", "alice", running, 3, 0),
            _stored("runs/a4", "alice", succeeded, 4, 950),
            _stored("runs/b1", "bob", succeeded, 5, 200),
        ]
        for run in runs:
            await store.create(run, StoredEvent(1, b"event"), None)
        candidate = StoredCandidate("c1", 1.0, 1, True, False, b"scored")
        await store.commit(
            RunCommit(
                StoredRun("runs/a1", "alice", succeeded, 1, 2, runs[0].run, end_time_ns=100),
                1,
                [StoredEvent(2, b"more")],
                checkpoint=b"{}",
                population=(0, b"population"),
                candidates=[candidate],
            )
        )
        # By count: alice keeps her newest finished one; her running run is not counted.
        assert await store.prune(owner="alice", keep=1, ended_before_ns=0) == [
            "runs/a1",
            "runs/a2",
        ]
        assert await store.get("runs/a1") is None
        assert await store.events("runs/a1", 0, 10) == []
        assert await store.checkpoint("runs/a1") is None
        page = await store.candidates("runs/a1", status=0, after=None, limit=10)
        assert page.candidates == []
        # By age: everybody's that ended before the cut; unfinished ones never.
        assert await store.prune(owner=None, keep=0, ended_before_ns=300) == ["runs/b1"]
        assert await store.prune(owner=None, keep=0, ended_before_ns=10**18) == ["runs/a4"]
        assert await store.prune(owner="alice", keep=0, ended_before_ns=0) == []
        assert (await store.get("runs/a3")) is not None
    finally:
        await store.close()


async def test_a_schema_1_run_store_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('schema_version', 1);
        CREATE TABLE runs (
            name TEXT PRIMARY KEY, owner TEXT NOT NULL, state INTEGER NOT NULL,
            create_time_ns INTEGER NOT NULL, version INTEGER NOT NULL, run BLOB NOT NULL,
            pinned BLOB NOT NULL, spec BLOB NOT NULL, checkpoint BLOB
        );
        """
    )
    db.execute(
        "INSERT INTO runs VALUES ('runs/old', 'alice', 3, 1, 4, x'', x'', x'', NULL)",
    )
    db.commit()
    db.close()
    store = SqliteRunStore(path)
    await store.open()
    try:
        found = await store.get("runs/old")
        assert found is not None
        # It had ended (SUCCEEDED): its creation time stands in for its end (age rule).
        assert (found.owner, found.version, found.end_time_ns) == ("alice", 4, 1)
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM meta").fetchone()[0] == 2
    finally:
        db.close()


def test_limits_are_checked_when_configured() -> None:
    for name, value in (
        ("orchestrator_max_runs", 0),
        ("orchestrator_max_runs_per_principal", 0),
        ("orchestrator_keep_finished_runs", -1),
    ):
        with pytest.raises(ConfigError, match=name.replace("_", "-")):
            OrchestratorSettings(**{name: value})  # type: ignore[arg-type]


async def test_an_oracle_hosted_only_by_agents_not_serving_waits_naming_them(
    tmp_path: Path,
) -> None:
    suite = await start_run_suite(tmp_path)
    try:
        agent = registry_pb2.Agent(
            kind=registry_pb2.AGENT_KIND_ORACLE,
            endpoint="127.0.0.1:1",
            capacity=8,
            health=registry_pb2.AGENT_HEALTH_NOT_SERVING,
        )
        agent.oracle.oracles.append("oracles/elsewhere")
        await suite.stub().RegisterAgent(
            registry_pb2.RegisterAgentRequest(agent_id="sleepy", agent=agent, request_id="r1")
        )
        alice = runs_stub(suite)

        async def pending() -> orchestrator_pb2.Run | None:
            try:
                created = await alice.CreateRun(run_request(oracle="oracles/elsewhere"))
            except grpc.aio.AioRpcError as error:  # the orchestrator has not seen it yet
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                return None
            return created.run

        run = await eventually(pending, within=10, what="the run accepted")
        name = run.name

        async def waiting() -> str:
            found = (await alice.GetRun(orchestrator_pb2.GetRunRequest(name=name))).run
            return found.state_message

        message = await eventually(waiting, within=10, what="the reason it waits")
        assert "oracles/elsewhere" in message, message
        assert "agents/sleepy" in message, message
        assert "not serving" in message, message
        await alice.CancelRun(orchestrator_pb2.CancelRunRequest(name=name))
    finally:
        await suite.close()
