"""The registry's promises (DESIGN §3), each against a real suite on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import sqlite3
import time

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

import helix.v1.registry_pb2 as registry_pb2
from helix.registry.store import StoreCorrupt

from registry_support import (
    Suite,
    agent_spec,
    bad_request,
    big_agent,
    error_info,
    quota_failure,
    register_request,
    retry_delay,
    start_suite,
)
from waiting import eventually

PUT = registry_pb2.AGENT_EVENT_TYPE_PUT
DELETE = registry_pb2.AGENT_EVENT_TYPE_DELETE
# Leases for agents a test needs alive throughout: a stalled CI machine expired agents
# with the default 10 s lease in the middle of tests that are not about expiry.
LONG_TTL = 300.0


@pytest.fixture
async def suite(tmp_path, store_settings):
    running = await start_suite(tmp_path / "data", **store_settings)
    yield running
    await running.close()


def watchers(suite: Suite) -> float | None:
    """How many watches the suite's registry serves (its watchers gauge)."""
    return suite.server.metrics.registry.get_sample_value("helix_registry_watchers")


async def collect(stream, count: int, within: float = 10.0) -> list[registry_pb2.AgentEvent]:
    """The next `count` events of a watch stream."""
    events: list[registry_pb2.AgentEvent] = []

    async def read() -> None:
        async for response in stream:
            events.extend(response.events)
            if len(events) >= count:
                return

    await asyncio.wait_for(read(), within)
    return events


# --- promise 1: one revision per change, none for a no-op heartbeat ------------------------


async def test_each_change_advances_the_revision_by_exactly_one(suite):
    stub = suite.stub()
    first = await stub.RegisterAgent(register_request("a1"))
    assert first.revision == 1
    assert first.agent.epoch == 1
    assert first.agent.name == "agents/a1"
    assert first.agent.owner == "alice"
    beat = await stub.Heartbeat(registry_pb2.HeartbeatRequest(name="agents/a1", epoch=1))
    assert beat.revision == 1  # nothing changed, nothing advanced
    changed = await stub.Heartbeat(
        registry_pb2.HeartbeatRequest(
            name="agents/a1", epoch=1, health=registry_pb2.AGENT_HEALTH_DEGRADED
        )
    )
    assert changed.revision == 2
    update = await stub.UpdateAgent(
        registry_pb2.UpdateAgentRequest(
            agent=registry_pb2.Agent(name="agents/a1", capacity=99),
            update_mask=FieldMask(paths=["capacity"]),
        )
    )
    assert update.revision == 3
    assert update.agent.capacity == 99
    gone = await stub.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name="agents/a1"))
    assert gone.revision == 4


# --- promise 3: reads reflect acknowledged writes ---------------------------------------


async def test_get_and_list_reflect_an_acknowledged_write(suite):
    stub = suite.stub()
    registered = await stub.RegisterAgent(register_request("a1", team="x"))
    got = await stub.GetAgent(registry_pb2.GetAgentRequest(name="agents/a1"))
    assert got.agent == registered.agent
    assert got.revision >= registered.revision
    listed = await stub.ListAgents(registry_pb2.ListAgentsRequest(label_selector="team=x"))
    assert [a.name for a in listed.agents] == ["agents/a1"]


# --- promise 4: stale etag -------------------------------------------------------------


async def test_stale_etag_is_aborted_and_changes_nothing(suite):
    stub = suite.stub()
    registered = await stub.RegisterAgent(register_request("a1"))
    old_etag = registered.agent.etag
    await stub.UpdateAgent(
        registry_pb2.UpdateAgentRequest(
            agent=registry_pb2.Agent(name="agents/a1", capacity=2, etag=old_etag),
            update_mask=FieldMask(paths=["capacity"]),
        )
    )
    for call in (
        stub.UpdateAgent(
            registry_pb2.UpdateAgentRequest(
                agent=registry_pb2.Agent(name="agents/a1", capacity=3, etag=old_etag),
                update_mask=FieldMask(paths=["capacity"]),
            )
        ),
        stub.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name="agents/a1", etag=old_etag)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.ABORTED
        assert error_info(caught.value).reason == "STALE_ETAG"
    got = await stub.GetAgent(registry_pb2.GetAgentRequest(name="agents/a1"))
    assert got.agent.capacity == 2
    assert got.revision == 2


# --- promise 5: watch exactly once, in order; resume equals uninterrupted -------------------


async def test_resumed_watch_yields_the_same_sequence_as_an_uninterrupted_one(suite):
    stub = suite.stub()
    whole = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=1))
    part = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=1))
    for i in range(12):
        await stub.RegisterAgent(register_request(f"a{i}"))
        if i % 3 == 0:
            await stub.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name=f"agents/a{i}"))
    total = 16
    uninterrupted = await collect(whole, total)
    first_part = await collect(part, 5)
    part.cancel()
    resumed = stub.WatchAgents(
        registry_pb2.WatchAgentsRequest(start_revision=first_part[4].revision + 1)
    )
    rest = await collect(resumed, total - 5)
    stitched = first_part[:5] + rest
    assert [e.revision for e in uninterrupted] == list(range(1, total + 1))
    assert stitched == uninterrupted
    whole.cancel()
    resumed.cancel()


# --- promise 6: compaction and slow watchers ---------------------------------------------


async def test_watch_or_list_from_a_compacted_revision_is_out_of_range(tmp_path):
    suite = await start_suite(tmp_path / "data", registry_history=100)
    try:
        stub = suite.stub()
        first = await stub.ListAgents(registry_pb2.ListAgentsRequest(page_size=1))
        # A long lease: a stalled machine must not expire the agent mid-test.
        await stub.RegisterAgent(register_request("keep", ttl=LONG_TTL))
        for i in range(120):
            await stub.UpdateAgent(
                registry_pb2.UpdateAgentRequest(
                    agent=registry_pb2.Agent(name="agents/keep", capacity=i + 1),
                    update_mask=FieldMask(paths=["capacity"]),
                )
            )
        watch = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=3))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch.read()
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
        info = error_info(caught.value)
        assert info.reason == "REVISION_COMPACTED"
        assert info.metadata["compact_revision"] == "22"  # 121 revisions, the last 100 kept
        await stub.RegisterAgent(register_request("second", ttl=LONG_TTL))  # old listing: page 2
        old = await stub.ListAgents(registry_pb2.ListAgentsRequest(page_size=1))
        assert old.next_page_token
        # A token from a snapshot that has since been compacted.
        for i in range(150):
            await stub.UpdateAgent(
                registry_pb2.UpdateAgentRequest(
                    agent=registry_pb2.Agent(name="agents/keep", capacity=i + 1),
                    update_mask=FieldMask(paths=["capacity"]),
                )
            )
        with pytest.raises(grpc.aio.AioRpcError) as stale:
            await stub.ListAgents(
                registry_pb2.ListAgentsRequest(page_size=1, page_token=old.next_page_token)
            )
        assert stale.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert first.revision == 0
    finally:
        await suite.close()


async def test_a_slow_watcher_is_cancelled_while_fast_ones_continue(tmp_path):
    suite = await start_suite(tmp_path / "data", registry_watch_buffer=20, registry_max_batch=20)
    try:
        stub = suite.stub()
        slow = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=0))
        fast = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=0))
        # The slow watch must be registered before the flood (history replayed to a late
        # one does not count against its buffer): wait until the registry serves both.
        await eventually(lambda: watchers(suite) == 2, what="both watches registered")
        fast_events: list[registry_pb2.AgentEvent] = []

        async def keep_up() -> None:
            async for response in fast:
                fast_events.extend(response.events)
                if len(fast_events) >= 300:
                    return

        reader = asyncio.ensure_future(keep_up())
        # Flood in batches, giving the fast reader time; the slow one reads nothing.
        # Big agents (about 64 KiB each, 19 MB in all): more than HTTP/2 flow control lets
        # the server push into a client that does not read, however large its window grew,
        # so the slow watch's queue must overflow (with small agents it sometimes did not).
        for i in range(300):
            await stub.RegisterAgent(
                registry_pb2.RegisterAgentRequest(
                    agent_id=f"f{i}", agent=big_agent(780), request_id=f"f{i}"
                )
            )
        await asyncio.wait_for(reader, 20)
        # Every revision, in order, none skipped (on a stalled machine the first agents'
        # 10 s leases may expire before the flood ends: their DELETEs are revisions too).
        assert [e.revision for e in fast_events][:300] == list(range(1, 301))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in slow:
                pass
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(caught.value).reason == "WATCHER_TOO_SLOW"
    finally:
        await suite.close()


# --- promise 7: paginated list is one snapshot; watch from S+1 continues it; progress ------


async def test_paged_listing_is_one_snapshot_and_watch_continues_it(suite):
    stub = suite.stub()
    for i in range(25):
        await stub.RegisterAgent(register_request(f"a{i:02d}"))
    page = await stub.ListAgents(registry_pb2.ListAgentsRequest(page_size=10))
    snapshot = page.revision
    names = [a.name for a in page.agents]
    # Changes between pages must not show up in the listing.
    await stub.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name="agents/a15"))
    await stub.RegisterAgent(register_request("a12x"))
    await stub.RegisterAgent(register_request("zz"))
    token = page.next_page_token
    while token:
        page = await stub.ListAgents(registry_pb2.ListAgentsRequest(page_size=10, page_token=token))
        assert page.revision == snapshot
        names += [a.name for a in page.agents]
        token = page.next_page_token
    assert names == [f"agents/a{i:02d}" for i in range(25)]
    watch = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=snapshot + 1))
    events = await collect(watch, 3)
    assert [(e.type, e.agent.name) for e in events] == [
        (DELETE, "agents/a15"),
        (PUT, "agents/a12x"),
        (PUT, "agents/zz"),
    ]
    watch.cancel()


async def test_idle_watch_gets_progress_notifications(tmp_path):
    suite = await start_suite(tmp_path / "data", registry_progress_interval=0.2)
    try:
        stub = suite.stub()
        await stub.RegisterAgent(register_request("a1"))
        watch = stub.WatchAgents(
            registry_pb2.WatchAgentsRequest(start_revision=2, progress_notify=True)
        )
        response = await asyncio.wait_for(watch.read(), 5)
        assert isinstance(response, registry_pb2.WatchAgentsResponse)
        assert response.progress
        assert not response.events
        assert response.revision == 1
        watch.cancel()
    finally:
        await suite.close()


async def test_filtered_watch_reports_agents_leaving_the_filter(suite):
    stub = suite.stub()
    # From revision 1: every event is delivered however late the watch is registered.
    watch = stub.WatchAgents(
        registry_pb2.WatchAgentsRequest(label_selector="zone=a", start_revision=1)
    )
    await stub.RegisterAgent(register_request("a1", zone="a"))
    await stub.RegisterAgent(register_request("b1", zone="b"))
    await stub.UpdateAgent(
        registry_pb2.UpdateAgentRequest(
            agent=registry_pb2.Agent(name="agents/a1", labels={"zone": "b"}),
            update_mask=FieldMask(paths=["labels"]),
        )
    )
    events = await collect(watch, 2)
    assert [(e.type, e.agent.name, e.reason) for e in events] == [
        (PUT, "agents/a1", 0),
        (DELETE, "agents/a1", registry_pb2.AGENT_DELETE_REASON_FILTERED_OUT),
    ]
    watch.cancel()


# --- promise 8 and 10: leases ------------------------------------------------------------


async def test_lease_expires_after_ttl_not_before_with_an_expired_event(suite):
    stub = suite.stub()
    watch = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=1))
    registered = await stub.RegisterAgent(register_request("a1", ttl=0.6))
    ttl = registered.agent.ttl.seconds + registered.agent.ttl.nanos / 1e9
    if suite.config.uses_etcd:
        # etcd leases are whole seconds, at least etcd's minimum (2 s by default): the
        # registry grants, and says, what the lease really is; etcd looks for expired
        # leases every 500 ms, its sweep interval.
        assert ttl == 2.0
        sweep = 0.5
    else:
        assert ttl == pytest.approx(0.6)
        sweep = 0.05
    # Heartbeats keep it alive well past its TTL. The one sleep of this file: the server's
    # own monotonic clock and sweeper are under test here, so real time must pass (the
    # engine's rules are tested with a fake clock in test_registry_engine.py).
    for _ in range(6):
        await asyncio.sleep(ttl / 3)  # an agent's heartbeat cadence, a third of the TTL
        await stub.Heartbeat(registry_pb2.HeartbeatRequest(name="agents/a1", epoch=1))
    last_beat = time.monotonic()
    events = await collect(watch, 2, within=ttl + 10)
    expired_after = time.monotonic() - last_beat
    assert events[1].type == DELETE
    assert events[1].reason == registry_pb2.AGENT_DELETE_REASON_EXPIRED
    assert expired_after >= ttl
    assert expired_after < ttl + sweep + 0.5  # TTL + sweep interval + scheduling slack
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Heartbeat(registry_pb2.HeartbeatRequest(name="agents/a1", epoch=1))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    again = await stub.RegisterAgent(register_request("a1", request_id="req-a1-again"))
    assert again.agent.epoch > registered.agent.epoch
    assert suite.server.metrics.registry.get_sample_value("helix_registry_expired_total") == 1
    watch.cancel()


async def test_ttl_is_clamped_into_the_server_bounds(suite):
    stub = suite.stub()
    short = await stub.RegisterAgent(register_request("short", ttl=0.01))
    long = await stub.RegisterAgent(register_request("long", ttl=99999))
    # The shortest lease: the configured minimum, or etcd's (2 s by default) on etcd.
    shortest = 2_000_000_000 if suite.config.uses_etcd else 200_000_000
    assert short.agent.ttl.ToNanoseconds() == shortest
    assert long.agent.ttl.seconds == 300


async def test_register_retried_with_the_same_request_id_creates_no_duplicate(suite):
    stub = suite.stub()
    first = await stub.RegisterAgent(register_request("", request_id="same-req"))
    again = await stub.RegisterAgent(register_request("", request_id="same-req"))
    assert again == first
    listed = await stub.ListAgents(registry_pb2.ListAgentsRequest())
    assert len(listed.agents) == 1
    different = register_request("", request_id="same-req", capacity=3)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterAgent(different)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "REQUEST_ID_REUSED"


async def test_epoch_mismatch_after_the_name_was_registered_again(suite):
    stub = suite.stub()
    await stub.RegisterAgent(register_request("a1", request_id="one"))
    await stub.RegisterAgent(register_request("a1", request_id="two"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Heartbeat(registry_pb2.HeartbeatRequest(name="agents/a1", epoch=1))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "EPOCH_MISMATCH"


async def test_a_heartbeat_returns_the_etag_it_leaves_and_deregistering_with_it_works(suite):
    stub = suite.stub()
    registered = (await stub.RegisterAgent(register_request("hb1"))).agent
    beat = registry_pb2.HeartbeatRequest(name="agents/hb1", epoch=registered.epoch)
    same = await stub.Heartbeat(beat)
    assert same.etag == registered.etag  # nothing changed: the same etag
    beat.health = registry_pb2.AGENT_HEALTH_DEGRADED
    changed = await stub.Heartbeat(beat)
    assert changed.etag != registered.etag
    current = (await stub.GetAgent(registry_pb2.GetAgentRequest(name="agents/hb1"))).agent
    assert current.etag == changed.etag
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # the registration's etag is stale
        await stub.DeregisterAgent(
            registry_pb2.DeregisterAgentRequest(name="agents/hb1", etag=registered.etag)
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    await stub.DeregisterAgent(
        registry_pb2.DeregisterAgentRequest(name="agents/hb1", etag=changed.etag)
    )


async def test_a_heartbeat_of_an_epoch_never_issued_is_not_found(suite):
    stub = suite.stub()
    await stub.RegisterAgent(register_request("a1", request_id="one"))
    await stub.RegisterAgent(register_request("a1", request_id="two"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Heartbeat(registry_pb2.HeartbeatRequest(name="agents/a1", epoch=99))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "epoch 99 was never issued" in (caught.value.details() or "")


# --- ownership -----------------------------------------------------------------------------


async def test_only_the_owner_or_an_admin_may_change_an_agent(suite):
    alice, bob = suite.stub("alice"), suite.stub("bob")
    admin = suite.stub("root", ("admin",))
    await alice.RegisterAgent(register_request("a1"))
    for call in (
        bob.Heartbeat(registry_pb2.HeartbeatRequest(name="agents/a1", epoch=1)),
        bob.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name="agents/a1")),
        bob.UpdateAgent(
            registry_pb2.UpdateAgentRequest(
                agent=registry_pb2.Agent(name="agents/a1", capacity=1),
                update_mask=FieldMask(paths=["capacity"]),
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await bob.RegisterAgent(register_request("a1", request_id="bob-1"))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await admin.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name="agents/a1"))


# --- promise 11: concurrent mutations equal a serial replay -----------------------------------


async def test_concurrent_mutations_equal_a_serial_replay_of_the_history(suite):
    stub = suite.stub()
    watch = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=1))
    rng = random.Random(7)
    names = [f"c{i}" for i in range(60)]

    refused: list[grpc.StatusCode] = []

    async def one(i: int) -> None:
        name = rng.choice(names)
        op = rng.random()
        try:
            if op < 0.5:
                await stub.RegisterAgent(register_request(name, request_id=f"r{i}", capacity=i + 1))
            elif op < 0.8:
                await stub.UpdateAgent(
                    registry_pb2.UpdateAgentRequest(
                        agent=registry_pb2.Agent(name=f"agents/{name}", capacity=i + 1),
                        update_mask=FieldMask(paths=["capacity"]),
                    )
                )
            else:
                await stub.DeregisterAgent(
                    registry_pb2.DeregisterAgentRequest(name=f"agents/{name}")
                )
        except grpc.aio.AioRpcError as error:
            refused.append(error.code())

    await asyncio.gather(*(one(i) for i in range(1000)))
    assert set(refused) <= {grpc.StatusCode.NOT_FOUND}
    final = await stub.ListAgents(registry_pb2.ListAgentsRequest(page_size=1000))
    events = await collect(watch, final.revision, within=30)
    watch.cancel()
    assert [e.revision for e in events] == list(range(1, final.revision + 1))  # gapless
    replay: dict[str, registry_pb2.Agent] = {}
    for event in events:
        if event.type == PUT:
            replay[event.agent.name] = event.agent
        else:
            replay.pop(event.agent.name)
    assert sorted(replay) == [a.name for a in final.agents]
    assert all(replay[a.name] == a for a in final.agents)


# --- promise 2 and 9: restart ------------------------------------------------------------------


async def test_restart_keeps_everything_and_gives_every_lease_a_full_ttl(tmp_path):
    data = tmp_path / "data"
    suite = await start_suite(data)
    stub = suite.stub()
    registered = await stub.RegisterAgent(register_request("a1", ttl=1.0))
    await stub.RegisterAgent(register_request("a2", ttl=1.0))
    await stub.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name="agents/a2"))
    await suite.close()
    # Down for an hour, far longer than the TTL: the restarted registry's lease clock reads
    # an hour later (a new process's monotonic clock has its own origin anyway).
    suite = await start_suite(data, clock=lambda: time.monotonic() + 3600.0)
    try:
        restarted = time.monotonic()
        stub = suite.stub()
        got = await stub.GetAgent(registry_pb2.GetAgentRequest(name="agents/a1"))
        assert got.agent == registered.agent
        assert got.revision == 3  # the revision never goes backwards
        watch = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=4))
        events = await collect(watch, 1)
        assert events[0].reason == registry_pb2.AGENT_DELETE_REASON_EXPIRED
        assert time.monotonic() - restarted >= 1.0  # a full TTL after the restart
        history = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=1))
        replayed = await collect(history, 4)
        assert [e.revision for e in replayed] == [1, 2, 3, 4]
        history.cancel()
        watch.cancel()
    finally:
        await suite.close()


async def test_a_corrupted_database_is_refused_and_left_as_it_is(tmp_path):
    data = tmp_path / "data"
    suite = await start_suite(data)
    await suite.stub().RegisterAgent(register_request("a1"))
    await suite.close()
    database = data / "registry.sqlite3"
    raw = bytearray(database.read_bytes())
    for offset in range(4096, len(raw), 997):  # scribble over the data pages
        raw[offset] ^= 0xFF
    database.write_bytes(bytes(raw))
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    with pytest.raises(Exception, match=r"registry\.sqlite3") as caught:
        await start_suite(data)
    assert "left as it is" in str(caught.value) or "not a usable" in str(caught.value)
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


# --- issue 10 item 11: damaged databases ----------------------------------------------------


async def test_a_deleted_database_is_refused_not_replaced_by_an_empty_registry(tmp_path):
    # Revisions went from 32,785 back to 1, silently, when registry.sqlite3 was deleted.
    data = tmp_path / "data"
    suite = await start_suite(data)
    for i in range(3):
        await suite.stub().RegisterAgent(register_request(f"a{i}"))
    await suite.close()
    for name in ("registry.sqlite3", "registry.sqlite3-wal", "registry.sqlite3-shm"):
        (data / name).unlink(missing_ok=True)
    with pytest.raises(StoreCorrupt, match=r"registry\.sqlite3 is missing.*reached revision 3"):
        await start_suite(data)
    suite = await start_suite(data, registry_accept_loss=True)  # on purpose
    try:
        response = await suite.stub().RegisterAgent(register_request("again"))
        assert response.revision == 4  # never backwards
    finally:
        await suite.close()


def damage(database, sql: str, *values: object) -> None:
    """Change one row of a closed registry database behind its back."""
    with sqlite3.connect(database) as db:
        db.execute(sql, values)
    db.close()


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        ("UPDATE agents SET agent=? WHERE name='agents/a1'", "table agents, key 'agents/a1'"),
        ("UPDATE events SET agent=? WHERE revision=2", "table events, key 2"),
        ("UPDATE events SET prev=? WHERE revision=2", "table events, key 2"),
    ],
)
async def test_a_corrupt_record_is_refused_naming_file_table_and_key(tmp_path, sql, where):
    # A record that passes SQLite's quick_check but is not a valid message stopped startup
    # with a raw DecodeError traceback.
    data = tmp_path / "data"
    suite = await start_suite(data)
    stub = suite.stub()
    await stub.RegisterAgent(register_request("a1"))
    await stub.RegisterAgent(register_request("a1", request_id="again"))  # event 2 has a prev
    await suite.close()
    damage(data / "registry.sqlite3", sql, b"\xff\xff\xff not a message")
    with pytest.raises(StoreCorrupt) as caught:
        await start_suite(data)
    message = str(caught.value)
    assert str(data / "registry.sqlite3") in message
    assert where in message
    assert "\n" not in message


async def test_a_bad_idempotency_record_is_dropped_with_a_warning(tmp_path, caplog):
    # One bad record made the registry unstartable; it is only a retry cache.
    data = tmp_path / "data"
    suite = await start_suite(data)
    await suite.stub().RegisterAgent(register_request("a1", request_id="r1"))
    await suite.stub().RegisterAgent(register_request("a2", request_id="r2"))
    await suite.close()
    damage(
        data / "registry.sqlite3",
        "UPDATE requests SET response=? WHERE request_id='r1'",
        b"\xff\xff not a message",
    )
    with caplog.at_level(logging.WARNING, logger="helix.registry"):
        suite = await start_suite(data)
    try:
        warned = [r.getMessage() for r in caplog.records if "table requests" in r.getMessage()]
        assert len(warned) == 1
        assert "('alice', 'r1')" in warned[0]
        assert "dropped" in warned[0]
        stub = suite.stub()
        retried = await stub.RegisterAgent(register_request("a2", request_id="r2"))
        assert retried.revision == 2  # the good record still answers its retry
        await stub.RegisterAgent(register_request("b1"))  # the next commit forgets the bad one
    finally:
        await suite.close()
    with sqlite3.connect(data / "registry.sqlite3") as db:
        assert db.execute("SELECT request_id FROM requests ORDER BY request_id").fetchall() == [
            ("r2",),
            ("req-b1",),
        ]
    db.close()


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (registry_pb2.RegisterAgentRequest(agent=agent_spec(), request_id=""), "request_id"),
        (
            registry_pb2.RegisterAgentRequest(
                agent_id="Bad_Name", agent=agent_spec(), request_id="r"
            ),
            "agent_id",
        ),
        (
            registry_pb2.RegisterAgentRequest(
                agent_id="a" * 64, agent=agent_spec(), request_id="r"
            ),
            "agent_id",
        ),
        (
            registry_pb2.RegisterAgentRequest(agent=agent_spec(endpoint="nohost"), request_id="r"),
            "agent.endpoint",
        ),
        (
            registry_pb2.RegisterAgentRequest(agent=agent_spec(endpoint="h:99999"), request_id="r"),
            "agent.endpoint",
        ),
        (
            registry_pb2.RegisterAgentRequest(
                agent=registry_pb2.Agent(
                    kind=registry_pb2.AGENT_KIND_ORACLE,
                    endpoint="h:1",
                    capacity=1,
                    labels={"-bad": "x"},
                ),
                request_id="r",
            ),
            'agent.labels["-bad"]',
        ),
        (registry_pb2.ListAgentsRequest(page_size=-1), "page_size"),
        (registry_pb2.ListAgentsRequest(page_token="garbage!"), "page_token"),
        (registry_pb2.GetAgentRequest(name=""), "name"),
        (registry_pb2.GetAgentRequest(name="agents/" + "x" * 70), "name"),
        (registry_pb2.WatchAgentsRequest(start_revision=-1), "start_revision"),
    ],
)
async def test_bad_input_gets_invalid_argument_naming_the_field(suite, request_, field):
    stub = suite.stub()
    method = {
        registry_pb2.RegisterAgentRequest: stub.RegisterAgent,
        registry_pb2.ListAgentsRequest: stub.ListAgents,
        registry_pb2.GetAgentRequest: stub.GetAgent,
    }.get(type(request_))
    call = stub.WatchAgents(request_).read() if method is None else method(request_)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in bad_request(caught.value)]


async def test_unknown_fields_are_invalid_argument(suite):
    suite.stub()  # opens an authenticated channel
    raw = registry_pb2.GetAgentRequest(name="agents/a1").SerializeToString() + b"\xa8\x1f\x01"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.channels[-1].unary_unary("/helix.v1.RegistryService/GetAgent")(raw)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request(caught.value)] == ["501"]


async def test_registry_metrics(suite):
    stub = suite.stub()
    await stub.RegisterAgent(register_request("m1"))
    await stub.RegisterAgent(register_request("m2", kind=registry_pb2.AGENT_KIND_GENERATOR))
    registry = suite.server.metrics.registry

    def value(name, **labels):
        return registry.get_sample_value(name, labels)

    assert (
        value("helix_registry_agents", kind="AGENT_KIND_ORACLE", health="AGENT_HEALTH_SERVING") == 1
    )
    assert (
        value("helix_registry_agents", kind="AGENT_KIND_GENERATOR", health="AGENT_HEALTH_SERVING")
        == 1
    )
    assert value("helix_registry_revision") == 2
    assert value("helix_registry_write_batch_size_count") == 2
    assert value("helix_registry_leases") == 2


async def test_one_principal_cannot_fill_the_registry(tmp_path):
    # Issue 10 item 6: with only a global cap, one principal locked every other one out.
    suite = await start_suite(
        tmp_path / "data", registry_max_agents=10, registry_max_agents_per_principal=3
    )
    try:
        greedy, other = suite.stub("greedy"), suite.stub("other")
        for i in range(3):
            await greedy.RegisterAgent(register_request(f"g{i}"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await greedy.RegisterAgent(register_request("g3"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(caught.value).reason == "TOO_MANY_AGENTS_FOR_PRINCIPAL"
        assert "principal:greedy/agents" in [v.subject for v in quota_failure(caught.value)]
        assert retry_delay(caught.value) > 0
        await other.RegisterAgent(register_request("o1"))  # not locked out
        metrics = suite.server.metrics.registry
        refused = metrics.get_sample_value(
            "helix_registry_refused_total", {"reason": "TOO_MANY_AGENTS_FOR_PRINCIPAL"}
        )
        assert refused == 1
    finally:
        await suite.close()


# --- issue 10 item 4: big agents must not break listing and watching ---------------------------


async def test_an_agent_over_the_size_limit_is_refused(suite):
    stub = suite.stub()
    request = registry_pb2.RegisterAgentRequest(
        agent_id="huge", agent=big_agent(10_000), request_id="huge"
    )
    assert request.agent.ByteSize() > 700_000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterAgent(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "AGENT_TOO_LARGE"
    assert [f for f, _ in bad_request(caught.value)] == ["agent"]
    # Growing an agent past the limit with UpdateAgent is refused too, and changes nothing.
    small = await stub.RegisterAgent(
        register_request("grows", kind=registry_pb2.AGENT_KIND_GENERATOR)
    )
    grown = big_agent(1000)
    grown.name = "agents/grows"
    with pytest.raises(grpc.aio.AioRpcError) as update:
        await stub.UpdateAgent(
            registry_pb2.UpdateAgentRequest(agent=grown, update_mask=FieldMask(paths=["generator"]))
        )
    assert error_info(update.value).reason == "AGENT_TOO_LARGE"
    got = await stub.GetAgent(registry_pb2.GetAgentRequest(name="agents/grows"))
    assert got.agent == small.agent
    refused = suite.server.metrics.registry.get_sample_value(
        "helix_registry_refused_total", {"reason": "AGENT_TOO_LARGE"}
    )
    assert refused == 2


async def test_agents_at_the_size_limit_can_be_listed_and_watched_by_any_client(suite):
    # 80 agents just under 64 KiB: a default page (100) of them is 5 MB, over the 4 MiB
    # every gRPC client accepts by default (the stub's channel keeps that default).
    stub = suite.stub()
    count = 80
    for i in range(count):
        agent = big_agent(780)
        agent.ttl.seconds = int(LONG_TTL)  # a stalled machine must not expire one mid-test
        request = registry_pb2.RegisterAgentRequest(
            agent_id=f"big{i:02d}", agent=agent, request_id=f"big{i}"
        )
        await stub.RegisterAgent(request)
    names: list[str] = []
    token = ""
    while True:
        page = await stub.ListAgents(registry_pb2.ListAgentsRequest(page_token=token))
        assert page.ByteSize() <= 4 * 1024 * 1024
        names += [a.name for a in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"agents/big{i:02d}" for i in range(count)]
    watch = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=1))
    events = await collect(watch, count)
    assert [e.revision for e in events] == list(range(1, count + 1))
    watch.cancel()


async def test_the_number_of_agents_is_bounded(tmp_path):
    suite = await start_suite(tmp_path / "data", registry_max_agents=3)
    try:
        stub = suite.stub()
        for i in range(3):
            await stub.RegisterAgent(register_request(f"cap{i}"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RegisterAgent(register_request("cap3"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(caught.value).reason == "TOO_MANY_AGENTS"
        # Replacing one's own registration is not a new agent; removing one makes room.
        await stub.RegisterAgent(register_request("cap0", request_id="again"))
        await stub.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name="agents/cap1"))
        await stub.RegisterAgent(register_request("cap3"))
    finally:
        await suite.close()
