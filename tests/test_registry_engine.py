"""The registry engine (`helix.registry.engine.Registry`) with a fake clock, no gRPC.

The engine runs its real writer over a real SQLite store under tmp_path; the lease clock
(`clock=`) and the wall clock (`wall=`) are fakes that move only when a test moves them,
and the sweeper's own loop is parked (an hour's interval): expiry happens when a test
calls `expire_lapsed()`, exactly as the sweeper does each interval.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from prometheus_client import CollectorRegistry

import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors, reasons
from helix.registry.engine import EngineSettings, Registry
from helix.registry.metrics import register_metrics
from helix.registry.sqlite_store import WAL_SIZE_LIMIT, SqliteRegistryStore
from helix.registry.validation import RegistryLimits
from helix.security.principal import Principal

from registry_support import FakeClock, register_request

ALICE = Principal("alice", frozenset({"agents.write"}))
BOB = Principal("bob", frozenset({"agents.write"}))
SWEEP = 0.5
SETTINGS = EngineSettings(
    limits=RegistryLimits(min_ttl_seconds=0.1, default_ttl_seconds=2.0),
    sweep_interval=3600.0,  # parked: tests call expire_lapsed() themselves
    progress_interval=0.0,
)
DELETE = registry_pb2.AGENT_EVENT_TYPE_DELETE
EXPIRED = registry_pb2.AGENT_DELETE_REASON_EXPIRED
DEGRADED = registry_pb2.AGENT_HEALTH_DEGRADED


@dataclass
class Harness:
    """A started engine on `path`, its clocks, and a way to restart it."""

    path: Path
    clock: FakeClock
    wall: FakeClock
    registry: Registry

    @classmethod
    async def start(cls, path: Path, clock: FakeClock | None = None) -> Harness:
        clock = clock or FakeClock(1000.0)
        wall = FakeClock(1_700_000_000.0)
        store = SqliteRegistryStore(path, synchronous="normal")
        registry = Registry(store, SETTINGS, clock=clock, wall=wall)
        await registry.start()
        return cls(path, clock, wall, registry)

    async def stop(self) -> None:
        await self.registry.end_watches()
        await self.registry.stop()

    async def restart(self, down_for: float = 0.0) -> None:
        """Stop, let `down_for` seconds pass on the lease clock, start on the same file."""
        await self.stop()
        self.clock.advance(down_for)
        restarted = await Harness.start(self.path, self.clock)
        self.registry = restarted.registry


@pytest.fixture
async def harness(tmp_path) -> AsyncIterator[Harness]:
    running = await Harness.start(tmp_path / "registry.sqlite3")
    yield running
    await running.stop()


def beat(name: str = "agents/a1", epoch: int = 1, **fields) -> registry_pb2.HeartbeatRequest:
    return registry_pb2.HeartbeatRequest(name=name, epoch=epoch, **fields)


def capacity_update(name: str, capacity: int) -> registry_pb2.UpdateAgentRequest:
    return registry_pb2.UpdateAgentRequest(
        agent=registry_pb2.Agent(name=name, capacity=capacity),
        update_mask=FieldMask(paths=["capacity"]),
    )


def watch_from(revision: int) -> registry_pb2.WatchAgentsRequest:
    """A watch that gets a bookmark as soon as nothing is queued (progress interval 0)."""
    return registry_pb2.WatchAgentsRequest(start_revision=revision, progress_notify=True)


async def events_from(registry: Registry, revision: int) -> list[registry_pb2.AgentEvent]:
    """Every event from `revision` up to now, read through a watch of the engine."""
    found: list[registry_pb2.AgentEvent] = []
    async with aclosing(registry.watch(watch_from(revision))) as stream:
        async for response in stream:
            found.extend(response.events)
            if response.progress:  # nothing more is queued
                return found
    return found


# --- promise 8: never before the TTL, always within TTL + one sweep ---------------------------


async def test_an_agent_expires_at_its_ttl_after_the_last_heartbeat_never_before(harness):
    registry, clock = harness.registry, harness.clock
    registered = await registry.register(ALICE, register_request("a1", ttl=2.0))
    for _ in range(5):  # heartbeats keep it alive well past its TTL
        clock.advance(1.5)
        await registry.heartbeat(ALICE, beat())
        assert await registry.expire_lapsed() == 0
    clock.advance(1.999)
    assert await registry.expire_lapsed() == 0
    clock.advance(0.001)
    assert await registry.expire_lapsed() == 1
    events = await events_from(registry, registered.revision + 1)
    assert [(e.type, e.reason, e.agent.name) for e in events] == [(DELETE, EXPIRED, "agents/a1")]
    assert registry.state.revision == registered.revision + 1
    assert registry.stats.expired == 1
    with pytest.raises(errors.NotFound):  # promise 10
        await registry.heartbeat(ALICE, beat())
    again = await registry.register(ALICE, register_request("a1", "again"))
    assert again.agent.epoch > registered.agent.epoch


@pytest.mark.parametrize("offset", [0.0, 0.13, 0.49, 0.5])
async def test_swept_each_interval_an_agent_expires_within_ttl_plus_one_interval(tmp_path, offset):
    harness = await Harness.start(tmp_path / "registry.sqlite3")
    try:
        registry, clock = harness.registry, harness.clock
        start = clock.now
        await registry.register(ALICE, register_request("a1", ttl=2.0))
        clock.advance(offset)  # the last heartbeat, at some phase of the sweeps
        await registry.heartbeat(ALICE, beat())
        last_beat = clock.now
        for tick in range(1, 20):  # the sweeper runs every SWEEP seconds from the start
            clock.now = start + tick * SWEEP
            if clock.now >= last_beat and await registry.expire_lapsed() == 1:
                break
        assert 2.0 <= clock.now - last_beat < 2.0 + SWEEP
    finally:
        await harness.stop()


async def test_wall_clock_jumps_change_nothing(harness):
    registry = harness.registry
    await registry.register(ALICE, register_request("a1", ttl=2.0))
    harness.wall.advance(10 * 86400)
    assert await registry.expire_lapsed() == 0
    harness.wall.advance(-20 * 86400)
    assert await registry.expire_lapsed() == 0
    harness.clock.advance(2.0)
    assert await registry.expire_lapsed() == 1


async def test_a_lease_renewed_while_its_expiry_was_queued_survives_and_lapses_later(harness):
    registry, clock = harness.registry, harness.clock
    await registry.register(ALICE, register_request("a1", ttl=2.0))
    clock.advance(2.0)
    sweep = asyncio.ensure_future(registry.expire_lapsed())
    # One turn of the loop (not a wait for time): the sweep finds the lapsed lease and
    # queues its expiry; the writer only runs after this test's next await.
    await asyncio.sleep(0)
    assert registry.queued_writes == 1  # the expiry waits for the writer
    await registry.heartbeat(ALICE, beat())  # ...and a heartbeat renews it before the write
    assert await sweep == 0
    assert "agents/a1" in registry.state.agents
    clock.advance(1.999)
    assert await registry.expire_lapsed() == 0
    clock.advance(0.001)
    assert await registry.expire_lapsed() == 1


# --- promise 9 and 2: restart ----------------------------------------------------------------


async def test_after_a_restart_every_lease_gets_one_full_ttl(harness):
    registry = await harness.registry.register(ALICE, register_request("a1", ttl=2.0))
    await harness.registry.register(ALICE, register_request("a2", ttl=2.0))
    await harness.registry.deregister(ALICE, registry_pb2.DeregisterAgentRequest(name="agents/a2"))
    await harness.restart(down_for=100.0)  # far past the TTL while the registry was down
    after = harness.registry
    assert after.get("agents/a1").agent == registry.agent
    assert after.state.revision == 3  # the revision never goes backwards
    harness.clock.advance(1.999)
    assert await after.expire_lapsed() == 0
    harness.clock.advance(0.001)
    assert await after.expire_lapsed() == 1
    assert after.state.revision == 4
    assert [e.revision for e in await events_from(after, 1)] == [1, 2, 3, 4]


# --- promise 1: revisions; heartbeats that change nothing ---------------------------------------


async def test_a_heartbeat_that_changes_nothing_writes_and_advances_nothing(harness):
    registry = harness.registry
    registered = await registry.register(ALICE, register_request("a1"))
    batches = registry.stats.batch_sizes.count
    for _ in range(3):
        reply = await registry.heartbeat(ALICE, beat())
        assert reply.revision == registered.revision
        assert reply.ttl == registered.agent.ttl
    same_health = await registry.heartbeat(ALICE, beat(health=registry_pb2.AGENT_HEALTH_SERVING))
    assert same_health.revision == registered.revision
    assert registry.stats.batch_sizes.count == batches  # the writer never saw them
    changed = await registry.heartbeat(ALICE, beat(health=DEGRADED))
    assert changed.revision == registered.revision + 1
    assert registry.get("agents/a1").agent.health == DEGRADED


async def test_heartbeat_rules_come_from_the_core(harness):
    registry = harness.registry
    await registry.register(ALICE, register_request("a1", "one"))
    await registry.register(ALICE, register_request("a1", "two"))
    with pytest.raises(errors.FailedPrecondition) as stale:
        await registry.heartbeat(ALICE, beat(epoch=1))
    assert stale.value.reason == reasons.EPOCH_MISMATCH
    with pytest.raises(errors.PermissionDenied):
        await registry.heartbeat(BOB, beat(epoch=2))
    with pytest.raises(errors.NotFound):
        await registry.heartbeat(ALICE, beat("agents/nobody"))


async def test_each_change_advances_the_revision_by_one(harness):
    registry = harness.registry
    first = await registry.register(ALICE, register_request("a1"))
    update = await registry.update(
        ALICE,
        registry_pb2.UpdateAgentRequest(
            agent=registry_pb2.Agent(name="agents/a1", capacity=3),
            update_mask=FieldMask(paths=["capacity"]),
        ),
    )
    same = await registry.update(
        ALICE,
        registry_pb2.UpdateAgentRequest(
            agent=registry_pb2.Agent(name="agents/a1", capacity=3),
            update_mask=FieldMask(paths=["capacity"]),
        ),
    )
    gone = await registry.deregister(ALICE, registry_pb2.DeregisterAgentRequest(name="agents/a1"))
    assert [first.revision, update.revision, same.revision, gone.revision] == [1, 2, 2, 3]


async def test_a_register_retry_is_answered_without_a_write(harness):
    registry = harness.registry
    first = await registry.register(ALICE, register_request("", "same"))
    assert first.agent.name.startswith("agents/agent-")  # the engine names it
    batches = registry.stats.batch_sizes.count
    assert await registry.register(ALICE, register_request("", "same")) == first
    assert registry.stats.batch_sizes.count == batches
    with pytest.raises(errors.InvalidArgument) as caught:
        await registry.register(ALICE, register_request("", "same", capacity=3))
    assert caught.value.reason == reasons.REQUEST_ID_REUSED


# --- group commit, and a commit that fails ------------------------------------------------------


async def test_concurrent_writes_share_one_commit(harness):
    registry = harness.registry
    replies = await asyncio.gather(
        *(registry.register(ALICE, register_request(f"g{i}")) for i in range(50))
    )
    assert sorted(r.revision for r in replies) == list(range(1, 51))
    assert registry.stats.batch_sizes.count == 1
    assert registry.stats.batch_sizes.total == 50
    await harness.restart()  # durable, all of them
    assert len(harness.registry.state.agents) == 50


async def test_a_failed_commit_fails_its_batch_and_installs_nothing(harness):
    registry = harness.registry
    await registry.register(ALICE, register_request("a1"))
    before = (registry.state.revision, dict(registry.state.agents), len(registry.leases))
    async with aclosing(registry.watch(watch_from(0))) as stream:
        assert (await anext(stream)).progress  # watching
        await registry.store.close()  # the disk is gone: every commit fails from now on
        outcomes = await asyncio.gather(
            registry.register(ALICE, register_request("a2")),
            registry.update(
                ALICE,
                registry_pb2.UpdateAgentRequest(
                    agent=registry_pb2.Agent(name="agents/a1", capacity=5),
                    update_mask=FieldMask(paths=["capacity"]),
                ),
            ),
            return_exceptions=True,
        )
        assert all(isinstance(o, errors.Unavailable) for o in outcomes), outcomes
        assert (registry.state.revision, registry.state.agents, len(registry.leases)) == before
        assert (await anext(stream)).progress  # the watcher got no event
    assert registry.stats.batch_sizes.count == 1  # only the first, good commit


async def test_an_unexpected_failure_fails_its_batch_and_the_writer_goes_on(harness, monkeypatch):
    registry = harness.registry
    real_commit = registry.store.commit

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug below the engine")

    monkeypatch.setattr(registry.store, "commit", broken)
    with pytest.raises(errors.Internal):
        await registry.register(ALICE, register_request("a1"))
    monkeypatch.setattr(registry.store, "commit", real_commit)
    reply = await asyncio.wait_for(registry.register(ALICE, register_request("a2")), 5)
    assert reply.agent.name == "agents/a2"  # the writer is still writing
    assert list(registry.state.agents) == ["agents/a2"]


async def test_an_expiry_that_cannot_be_stored_is_tried_again(harness):
    registry, clock = harness.registry, harness.clock
    await registry.register(ALICE, register_request("a1", ttl=2.0))
    clock.advance(2.0)
    await registry.store.close()
    assert await registry.expire_lapsed() == 0
    assert "agents/a1" in registry.state.agents
    assert registry.leases.lapsed(clock.now) == [("agents/a1", 1)]  # looked at again


# --- reads and watches ----------------------------------------------------------------------


async def test_list_pages_read_one_snapshot(harness):
    registry = harness.registry
    for i in range(5):
        await registry.register(ALICE, register_request(f"a{i}"))
    first = registry.list(registry_pb2.ListAgentsRequest(page_size=2))
    await registry.deregister(ALICE, registry_pb2.DeregisterAgentRequest(name="agents/a3"))
    names = [a.name for a in first.agents]
    token = first.next_page_token
    while token:
        page = registry.list(registry_pb2.ListAgentsRequest(page_size=2, page_token=token))
        assert page.revision == first.revision
        names += [a.name for a in page.agents]
        token = page.next_page_token
    assert names == [f"agents/a{i}" for i in range(5)]
    with pytest.raises(errors.InvalidArgument) as caught:
        registry.list(
            registry_pb2.ListAgentsRequest(label_selector="x", page_token=first.next_page_token)
        )
    assert caught.value.reason == reasons.INVALID_PAGE_TOKEN
    with pytest.raises(errors.NotFound):
        registry.get("agents/a3")


async def test_end_watches_ends_streams_and_refuses_new_ones(harness):
    registry = harness.registry
    async with aclosing(registry.watch(watch_from(0))) as stream:
        assert (await anext(stream)).progress
        await registry.end_watches()
        with pytest.raises(errors.Unavailable):
            await anext(stream)
    with pytest.raises(errors.Unavailable):
        await anext(registry.watch(watch_from(0)))
    assert len(registry.hub) == 0


# --- issue 10 item 5: history and database bounded by bytes -----------------------------------


MIB = 1024 * 1024


def wal_size(path: Path) -> int:
    """Bytes of the write-ahead log of the SQLite file `path`."""
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def labels_of(size: int) -> dict[str, str]:
    """Labels taking about `size` bytes on the wire."""
    return {f"k{i:062d}": f"v{i:062d}" for i in range(size // 134)}


async def test_history_and_database_stay_within_their_bytes_and_shrink_back(tmp_path):
    path = tmp_path / "registry.sqlite3"
    settings = dataclasses.replace(
        SETTINGS, history_limit=10_000, history_bytes=256 * 1024, request_bytes=256 * 1024
    )
    registry = Registry(SqliteRegistryStore(path, synchronous="normal"), settings)
    await registry.start()
    try:
        await registry.register(ALICE, register_request("big", **labels_of(16_000)))
        for capacity in range(2, 300):  # 9 MB of history without a byte bound
            await registry.update(ALICE, capacity_update("agents/big", capacity))
        assert registry.state.history_size <= 256 * 1024
        assert len(registry.state.history) == 8  # 16 KB agent and 16 KB previous state
        # What it holds (256 KiB of history, a 16 KB agent) and at most 1 MiB of free pages.
        assert path.stat().st_size < 2 * MIB
        assert wal_size(path) <= WAL_SIZE_LIMIT + MIB
        # Many big agents come and go: the file grows with them, then shrinks back.
        await asyncio.gather(
            *(
                registry.register(ALICE, register_request(f"b{i}", **labels_of(16_000)))
                for i in range(100)
            )
        )
        assert registry.state.requests_size <= 256 * 1024  # each answer holds a 16 KB agent
        assert path.stat().st_size > 4 * MIB
        for i in range(100):
            await registry.deregister(
                ALICE, registry_pb2.DeregisterAgentRequest(name=f"agents/b{i}")
            )
        for capacity in range(300, 320):  # the deletions leave the history too
            await registry.update(ALICE, capacity_update("agents/big", capacity))
        # 256 KiB of history, 256 KiB of idempotency records, and at most 1 MiB free.
        assert path.stat().st_size < 2 * MIB
    finally:
        await registry.stop()
    # What was forgotten stays forgotten after a restart.
    registry = Registry(SqliteRegistryStore(path, synchronous="normal"), settings)
    await registry.start()
    try:
        assert registry.state.history_size <= 256 * 1024
        assert registry.state.requests_size <= 256 * 1024
        # One object per agent state, as before the restart (not a copy per event).
        history = list(registry.state.history)
        assert all(later.prev is earlier.agent for earlier, later in itertools.pairwise(history))
        assert registry.state.agents["agents/big"] is history[-1].agent
    finally:
        await registry.stop()
    assert path.stat().st_size < 2 * MIB


# --- metrics: read from the engine's plain counters at scrape time -------------------------------


async def test_the_collector_reads_the_engine_at_scrape_time(harness):
    metrics = CollectorRegistry()
    register_metrics(harness.registry, metrics)
    registry = harness.registry
    await asyncio.gather(
        *(registry.register(ALICE, register_request(f"m{i}", ttl=2.0)) for i in range(3))
    )
    harness.clock.advance(2.0)
    await registry.expire_lapsed()

    def value(name: str, **labels: str) -> float | None:
        return metrics.get_sample_value(name, labels)

    assert value("helix_registry_expired_total") == 3
    assert value("helix_registry_write_batch_size_count") == 2  # the registers, the expiry
    assert value("helix_registry_write_batch_size_sum") == 6
    assert value("helix_registry_write_batch_size_bucket", le="2.0") == 0
    assert value("helix_registry_write_batch_size_bucket", le="4.0") == 2
    assert value("helix_registry_revision") == 6
    assert value("helix_registry_history_bytes") == registry.state.history_size > 0
    assert value("helix_registry_request_records_bytes") == registry.state.requests_size > 0
    assert value("helix_registry_leases") == 0
    assert value("helix_registry_watchers_cut_off_total") == 0
