"""The registry's pure core (`registry.core`, `registry.state`): Batch, state, rules, Selector.

No server, no clock, no I/O: a `Batch` is applied on a `RegistryState` and installed, as
the engine's writer does after a durable commit.
"""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from hypothesis import given, settings
from hypothesis import strategies as st

import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors, reasons, rules
from helix.registry.core import Batch, check_heartbeat, check_owner, fingerprint, heartbeat_changes
from helix.registry.state import (
    DELETE,
    DEREGISTERED,
    EXPIRED,
    PUT,
    RESPONSE_OVERHEAD,
    SERVING,
    Event,
    RegistryState,
    Selector,
    check_watchable,
    selector_from,
)
from helix.registry.validation import RegistryLimits
from helix.security.principal import Principal

from registry_support import register_request

ALICE = Principal("alice", frozenset({"agents.write"}))
BOB = Principal("bob", frozenset({"agents.write"}))
ROOT = Principal("root", frozenset({"admin"}))
WALL = 1_700_000_000.0
LIMITS = RegistryLimits()
DEGRADED = registry_pb2.AGENT_HEALTH_DEGRADED


def commit(state: RegistryState, *changes, limits: RegistryLimits = LIMITS) -> Batch:
    """Apply `changes` (functions of a Batch) in one batch and install it, as the writer
    does once the store has committed; returns the batch."""
    batch = Batch(state, limits, WALL)
    for change in changes:
        change(batch)
    state.install(batch.events)
    for owner, request_id, record in batch.new_requests:
        state.remember(owner, request_id, record)
    return batch


def register(
    batch: Batch, agent_id: str, principal: Principal = ALICE, request_id: str | None = None, **spec
) -> registry_pb2.RegisterAgentResponse:
    request = register_request(agent_id, request_id, **spec)
    return batch.register(principal, request, agent_id, fingerprint(request))


def heartbeat(name: str, epoch: int, **fields) -> registry_pb2.HeartbeatRequest:
    return registry_pb2.HeartbeatRequest(name=name, epoch=epoch, **fields)


def update(
    name: str, paths: list[str], etag: str = "", **fields
) -> registry_pb2.UpdateAgentRequest:
    return registry_pb2.UpdateAgentRequest(
        agent=registry_pb2.Agent(name=name, etag=etag, **fields),
        update_mask=FieldMask(paths=paths),
    )


def big_labels(count: int) -> dict[str, str]:
    """`count` labels of about 130 bytes each on the wire."""
    return {f"k{i:062d}": f"v{i:062d}" for i in range(count)}


@pytest.fixture
def state() -> RegistryState:
    return RegistryState(history_limit=100)


# --- register ------------------------------------------------------------------------------


def test_register_creates_an_agent_at_the_next_revision(state):
    batch = commit(state, lambda b: register(b, "a1", ttl=30))
    [event] = batch.events
    agent = state.agents["agents/a1"]
    assert (event.revision, event.type, event.prev) == (1, PUT, None)
    assert state.revision == 1
    assert agent.name == "agents/a1"
    assert agent.owner == "alice"
    assert agent.health == SERVING  # unspecified on register means serving
    assert agent.epoch == agent.create_revision == agent.update_revision == 1
    assert agent.etag == "r1"
    assert agent.ttl == Duration(seconds=30)
    assert agent.create_time.ToNanoseconds() == int(WALL * 1e9)
    assert state.names == ["agents/a1"]


def test_ttl_is_clamped_into_the_limits(state):
    limits = RegistryLimits(min_ttl_seconds=2, default_ttl_seconds=10, max_ttl_seconds=60)
    commit(
        state,
        lambda b: register(b, "short", ttl=0.5),
        lambda b: register(b, "long", ttl=3600),
        lambda b: register(b, "default"),
        limits=limits,
    )
    assert state.agents["agents/short"].ttl.seconds == 2
    assert state.agents["agents/long"].ttl.seconds == 60
    assert state.agents["agents/default"].ttl.seconds == 10


def test_register_retried_with_the_same_request_id_changes_nothing(state):
    first = commit(state, lambda b: register(b, "a1", request_id="r"))
    again: list[registry_pb2.RegisterAgentResponse] = []
    retry = commit(state, lambda b: again.append(register(b, "a1", request_id="r")))
    assert retry.events == []
    assert retry.new_requests == []
    assert again == [first.new_requests[0][2].response]
    assert state.revision == 1


def test_a_retry_within_the_same_batch_is_answered_from_the_batch(state):
    answers: list[registry_pb2.RegisterAgentResponse] = []
    batch = commit(
        state,
        lambda b: answers.append(register(b, "a1", request_id="r")),
        lambda b: answers.append(register(b, "a1", request_id="r")),
    )
    assert len(batch.events) == 1
    assert answers[0] == answers[1]


@pytest.mark.parametrize("same_batch", [True, False])
def test_a_request_id_reused_for_another_request_is_refused(state, same_batch):
    first = lambda b: register(b, "a1", request_id="r")  # noqa: E731
    other = lambda b: register(b, "a1", request_id="r", capacity=3)  # noqa: E731
    if not same_batch:
        commit(state, first)
    batch = Batch(state, LIMITS, WALL)
    if same_batch:
        first(batch)
    with pytest.raises(errors.InvalidArgument) as caught:
        other(batch)
    assert caught.value.reason == reasons.REQUEST_ID_REUSED
    assert [v.field for v in caught.value.violations] == ["request_id"]


def test_the_same_request_id_of_another_principal_is_another_request(state):
    commit(state, lambda b: register(b, "a1", request_id="r"))
    batch = commit(state, lambda b: register(b, "b1", BOB, request_id="r"))
    assert [e.name for e in batch.events] == ["agents/b1"]


def test_registering_again_replaces_the_own_registration_with_a_new_epoch(state):
    commit(state, lambda b: register(b, "a1", request_id="one"))
    batch = commit(state, lambda b: register(b, "a1", request_id="two", capacity=3))
    [event] = batch.events
    assert event.prev is not None
    assert event.prev.epoch == 1
    assert state.agents["agents/a1"].epoch == 2
    assert state.agents["agents/a1"].capacity == 3


def test_a_name_held_by_another_principal_is_already_exists_unless_admin(state):
    commit(state, lambda b: register(b, "a1"))
    with pytest.raises(errors.AlreadyExists):
        register(Batch(state, LIMITS, WALL), "a1", BOB, request_id="bob")
    commit(state, lambda b: register(b, "a1", ROOT, request_id="root"))
    assert state.agents["agents/a1"].owner == "alice"  # an admin's replacement keeps it


def test_the_number_of_agents_is_bounded_counting_the_batch(state):
    limits = RegistryLimits(max_agents=2)
    commit(state, lambda b: register(b, "a1"), limits=limits)
    batch = Batch(state, limits, WALL)
    register(batch, "a2")
    with pytest.raises(errors.ResourceExhausted) as caught:
        register(batch, "a3")
    assert caught.value.reason == reasons.TOO_MANY_AGENTS
    register(batch, "a1", request_id="again")  # replacing one's own is not a new agent
    batch.deregister(ALICE, "agents/a2", "")  # removing one makes room, in the same batch
    register(batch, "a3")
    assert [e.revision for e in batch.events] == [2, 3, 4, 5]


def test_the_agents_of_one_principal_are_bounded_counting_the_batch(state):
    # Issue 10 item 6: one principal could fill --registry-max-agents and lock out the rest.
    limits = RegistryLimits(max_agents_per_principal=2)
    commit(state, lambda b: register(b, "a1"), limits=limits)
    batch = Batch(state, limits, WALL)
    register(batch, "a2")
    with pytest.raises(errors.ResourceExhausted) as caught:
        register(batch, "a3")
    assert caught.value.reason == reasons.TOO_MANY_AGENTS_FOR_PRINCIPAL
    assert caught.value.quota_subject == "principal:alice/agents"
    assert caught.value.retry_after is not None
    assert "alice holds its maximum of 2 agents" in caught.value.message
    register(batch, "b1", BOB, request_id="b1")  # another principal is not locked out
    register(batch, "a1", request_id="again")  # replacing one's own is not a new agent
    register(batch, "a2", ROOT, request_id="root")  # an admin's replacement stays alice's
    batch.deregister(ALICE, "agents/a2", "")  # removing one makes room, in the same batch
    register(batch, "a3")
    state.install(batch.events)
    assert state.agents_per_owner == {"alice": 2, "bob": 1}
    one = RegistryLimits(max_agents_per_principal=1)
    commit(state, lambda b: register(b, "r1", ROOT, request_id="r1"), limits=one)
    with pytest.raises(errors.ResourceExhausted):  # admins are counted like anyone
        register(Batch(state, one, WALL), "r2", ROOT, request_id="r2")
    assert state.agents_per_owner == {"alice": 2, "bob": 1, "root": 1}
    commit(state, lambda b: b.expire("agents/b1", state.agents["agents/b1"].epoch))
    assert state.agents_per_owner == {"alice": 2, "root": 1}


def test_an_agent_over_the_size_limit_is_refused_on_register_and_update(state):
    # Issue 10 item 4: 713 KB agents were accepted, and broke every listing and watch.
    limits = RegistryLimits(max_agent_bytes=2048)
    batch = Batch(state, limits, WALL)
    with pytest.raises(errors.InvalidArgument) as caught:
        register(batch, "a1", ALICE, None, **big_labels(20))
    assert caught.value.reason == reasons.AGENT_TOO_LARGE
    [violation] = caught.value.violations
    assert (violation.field, violation.reason) == ("agent", rules.TOO_LARGE)
    assert "over the limit of 2048 bytes" in violation.description
    assert not batch.events
    assert not batch.new_requests
    commit(state, lambda b: register(b, "a1"), limits=limits)
    before = state.agents["agents/a1"]
    batch = Batch(state, limits, WALL)
    with pytest.raises(errors.InvalidArgument) as grown:
        batch.update(ALICE, update("agents/a1", ["labels"], labels=big_labels(30)))
    assert grown.value.reason == reasons.AGENT_TOO_LARGE
    assert not batch.events
    assert state.agents["agents/a1"] is before


# --- update, heartbeat changes, deregister, expire -------------------------------------------


def test_update_changes_the_masked_fields_only(state):
    commit(state, lambda b: register(b, "a1", capacity=8, zone="a"))
    results = []
    batch = commit(
        state,
        lambda b: results.append(
            b.update(ALICE, update("agents/a1", ["capacity"], capacity=9, endpoint="x:1"))
        ),
    )
    agent, event = results[0]
    assert event is batch.events[0]
    assert event.revision == 2
    assert agent.capacity == 9
    assert agent.endpoint == "127.0.0.1:7000"  # not in the mask
    assert agent.labels == {"zone": "a"}
    assert (agent.update_revision, agent.create_revision, agent.etag) == (2, 1, "r2")


def test_an_update_that_changes_nothing_advances_nothing(state):
    commit(state, lambda b: register(b, "a1", capacity=8))
    results = []
    batch = commit(
        state,
        lambda b: results.append(b.update(ALICE, update("agents/a1", ["capacity"], capacity=8))),
    )
    assert batch.events == []
    assert results[0][1] is None
    assert state.revision == 1


def test_update_with_a_stale_etag_is_aborted(state):
    commit(state, lambda b: register(b, "a1"))
    commit(state, lambda b: b.update(ALICE, update("agents/a1", ["capacity"], "r1", capacity=2)))
    with pytest.raises(errors.Aborted) as caught:
        Batch(state, LIMITS, WALL).update(
            ALICE, update("agents/a1", ["capacity"], "r1", capacity=3)
        )
    assert caught.value.reason == reasons.STALE_ETAG
    assert caught.value.metadata == {"etag": "r2"}


def test_update_of_details_that_do_not_match_the_kind_is_refused(state):
    commit(state, lambda b: register(b, "a1"))  # an oracle
    request = update("agents/a1", ["generator"], generator=registry_pb2.GeneratorDetails())
    with pytest.raises(errors.InvalidArgument) as caught:
        Batch(state, LIMITS, WALL).update(ALICE, request)
    assert [v.field for v in caught.value.violations] == ["agent.generator"]


def test_heartbeat_change_commits_health_and_load_and_nothing_else(state):
    commit(state, lambda b: register(b, "a1"))
    load = registry_pb2.AgentLoad(utilization=0.5)
    events: list[Event | None] = []
    commit(
        state,
        lambda b: events.append(
            b.heartbeat_change(ALICE, heartbeat("agents/a1", 1, health=DEGRADED))
        ),
        lambda b: events.append(b.heartbeat_change(ALICE, heartbeat("agents/a1", 1, load=load))),
        lambda b: events.append(b.heartbeat_change(ALICE, heartbeat("agents/a1", 1, load=load))),
    )
    assert [e.revision if e else None for e in events] == [2, 3, None]
    assert state.agents["agents/a1"].health == DEGRADED
    assert state.agents["agents/a1"].load == load


def test_heartbeat_change_checks_the_epoch_and_the_owner(state):
    commit(state, lambda b: register(b, "a1", request_id="one"))
    commit(state, lambda b: register(b, "a1", request_id="two"))
    batch = Batch(state, LIMITS, WALL)
    with pytest.raises(errors.FailedPrecondition) as stale:
        batch.heartbeat_change(ALICE, heartbeat("agents/a1", 1, health=DEGRADED))
    assert stale.value.reason == reasons.EPOCH_MISMATCH
    assert stale.value.metadata == {"epoch": "2"}
    with pytest.raises(errors.PermissionDenied):
        batch.heartbeat_change(BOB, heartbeat("agents/a1", 2, health=DEGRADED))


def test_a_heartbeat_of_an_epoch_never_issued_is_not_found_and_says_so(state):
    # Issue 10 item 13a: "was registered again (epoch 2) since epoch 99" was a lie: epoch
    # 99 was never issued. The caller should register again (NOT_FOUND), not stop.
    commit(state, lambda b: register(b, "a1", request_id="one"))
    commit(state, lambda b: register(b, "a1", request_id="two"))  # epoch 2 now
    batch = Batch(state, LIMITS, WALL)
    with pytest.raises(errors.NotFound) as future:
        batch.heartbeat_change(ALICE, heartbeat("agents/a1", 99, health=DEGRADED))
    assert future.value.message == (
        "epoch 99 was never issued for agents/a1 (its current epoch is 2): register again"
    )
    assert future.value.metadata == {"name": "agents/a1", "epoch": "2"}
    with pytest.raises(errors.FailedPrecondition) as older:
        batch.heartbeat_change(ALICE, heartbeat("agents/a1", 1, health=DEGRADED))
    assert older.value.message.startswith("agents/a1 was registered again (epoch 2) since epoch 1")
    assert not batch.events


def test_deregister_is_a_delete_conditional_on_the_etag(state):
    commit(state, lambda b: register(b, "a1"))
    with pytest.raises(errors.Aborted):
        Batch(state, LIMITS, WALL).deregister(ALICE, "agents/a1", "r0")
    batch = commit(state, lambda b: b.deregister(ALICE, "agents/a1", "r1"))
    [event] = batch.events
    assert (event.type, event.reason, event.revision) == (DELETE, DEREGISTERED, 2)
    assert event.agent.name == "agents/a1"
    assert state.agents == {}
    assert state.names == []
    with pytest.raises(errors.NotFound):
        Batch(state, LIMITS, WALL).deregister(ALICE, "agents/a1", "")


def test_expire_deletes_only_the_epoch_that_lapsed(state):
    commit(state, lambda b: register(b, "a1", request_id="one"))
    commit(state, lambda b: register(b, "a1", request_id="two"))  # epoch 2 now
    batch = Batch(state, LIMITS, WALL)
    assert batch.expire("agents/a1", 1) is None
    assert batch.expire("agents/unknown", 1) is None
    event = batch.expire("agents/a1", 2)
    assert event is not None
    assert (event.type, event.reason) == (DELETE, EXPIRED)
    assert batch.expire("agents/a1", 2) is None  # already gone within the batch


def test_every_change_of_a_batch_gets_the_next_revision(state):
    commit(state, lambda b: register(b, "a0"))
    batch = commit(
        state,
        lambda b: register(b, "a1"),
        lambda b: b.update(ALICE, update("agents/a1", ["capacity"], capacity=1)),
        lambda b: b.heartbeat_change(ALICE, heartbeat("agents/a0", 1, health=DEGRADED)),
        lambda b: b.deregister(ALICE, "agents/a1", ""),
        lambda b: b.expire("agents/a0", 1),
    )
    assert [e.revision for e in batch.events] == [2, 3, 4, 5, 6]
    assert state.revision == 6
    assert state.agents == {}


# --- the rules, as pure functions -------------------------------------------------------------


def test_check_owner_checks_existence_then_permission_then_etag(state):
    commit(state, lambda b: register(b, "a1"))
    agent = state.agents["agents/a1"]
    assert check_owner(agent, ALICE, agent.name, "r1") is agent
    assert check_owner(agent, ROOT, agent.name) is agent
    with pytest.raises(errors.NotFound):
        check_owner(None, ALICE, "agents/nope")
    with pytest.raises(errors.PermissionDenied) as caught:
        check_owner(agent, BOB, agent.name, "stale")  # a stranger learns nothing of the etag
    assert caught.value.reason == reasons.NOT_OWNER
    with pytest.raises(errors.Aborted):
        check_owner(agent, ALICE, agent.name, "stale")


def test_check_heartbeat_and_heartbeat_changes(state):
    commit(state, lambda b: register(b, "a1"))
    agent = state.agents["agents/a1"]
    assert check_heartbeat(agent, ALICE, agent.name, 1) is agent
    with pytest.raises(errors.NotFound):
        check_heartbeat(agent, ALICE, agent.name, 7)  # an epoch never issued
    with pytest.raises(errors.PermissionDenied):
        check_heartbeat(agent, BOB, agent.name, 1)
    assert not heartbeat_changes(agent, heartbeat(agent.name, 1))
    assert not heartbeat_changes(agent, heartbeat(agent.name, 1, health=SERVING))
    assert heartbeat_changes(agent, heartbeat(agent.name, 1, health=DEGRADED))
    load = registry_pb2.AgentLoad(utilization=0.25)
    assert heartbeat_changes(agent, heartbeat(agent.name, 1, load=load))


# --- RegistryState: install, history, snapshots ---------------------------------------------


def test_install_refuses_a_gap_in_revisions(state):
    batch = Batch(state, LIMITS, WALL)
    register(batch, "a1")
    register(batch, "a2")
    with pytest.raises(errors.Internal):
        state.install(batch.events[1:])
    assert state.revision == 0
    assert state.agents == {}


def test_history_keeps_the_last_history_limit_events(state):
    small = RegistryState(history_limit=3)
    assert small.first_available == 1
    commit(small, lambda b: register(b, "a1"))
    for capacity in range(2, 6):
        commit(
            small,
            lambda b, c=capacity: b.update(ALICE, update("agents/a1", ["capacity"], capacity=c)),
        )
    assert small.revision == 5
    assert [e.revision for e in small.history] == [3, 4, 5]
    assert small.first_available == 3
    assert [e.revision for e in small.events_since(4)] == [4, 5]
    assert [e.revision for e in small.events_since(6)] == []
    check_watchable(small, 0)
    check_watchable(small, 3)
    check_watchable(small, 99)  # the future is not compacted
    with pytest.raises(errors.OutOfRange) as caught:
        check_watchable(small, 2)
    assert caught.value.reason == reasons.REVISION_COMPACTED
    assert caught.value.metadata == {"compact_revision": "3"}


def test_history_is_bounded_by_bytes_as_well_as_by_count():
    # Issue 10 item 5: 3,801 updates of 713 KB agents took 3.5 GB of memory (and 5.5 GB of
    # disk) before the 10,000-event cap forgot anything.
    probe = RegistryState()
    commit(probe, lambda b: register(b, "a1", ALICE, None, **big_labels(8)))
    one = probe.history[0].size  # a registration: the agent, no previous state
    assert one == probe.agents["agents/a1"].ByteSize() > 1000
    small = RegistryState(history_limit=100, history_byte_limit=5 * 2 * one + 64)
    commit(small, lambda b: register(b, "a1", ALICE, None, **big_labels(8)))
    for capacity in range(2, 30):
        change = update("agents/a1", ["capacity"], capacity=capacity)
        batch = Batch(small, LIMITS, WALL)
        batch.update(ALICE, change)
        expected = small.first_kept_after(batch.events)
        small.install(batch.events)
        assert small.first_available == expected
        assert small.history_size == sum(e.size for e in small.history)
        assert small.history_size <= small.history_byte_limit
    assert len(small.history) == 5  # each update holds the agent and its previous state
    assert small.first_available == small.revision - 4
    with pytest.raises(errors.OutOfRange):
        check_watchable(small, small.revision - 5)


def test_install_reports_the_first_revision_it_forgot():
    small = RegistryState(history_limit=2)
    assert commit(small, lambda b: register(b, "a1")).events  # revision 1
    batch = Batch(small, LIMITS, WALL)
    register(batch, "a2")
    register(batch, "a3")
    assert small.install(batch.events) == 2  # revision 1 dropped: 2 is the oldest kept


def test_page_reads_an_older_snapshot(state):
    commit(state, *(lambda b, i=i: register(b, f"a{i}") for i in range(5)))
    snapshot = state.revision
    commit(
        state,
        lambda b: b.deregister(ALICE, "agents/a1", ""),
        lambda b: register(b, "a2x"),
        lambda b: b.update(ALICE, update("agents/a3", ["capacity"], capacity=1)),
    )
    everything = Selector()
    names = []
    after = ""
    while True:
        found, after_next = state.page(snapshot, everything, after, 2)
        names += [(a.name, a.capacity) for a in found]
        if after_next is None:
            break
        after = after_next
    assert names == [(f"agents/a{i}", 8) for i in range(5)]
    now, end = state.page(state.revision, everything, "", 100)
    assert end is None
    assert [a.name for a in now] == [
        "agents/a0",
        "agents/a2",
        "agents/a2x",
        "agents/a3",
        "agents/a4",
    ]


def test_page_filters_and_refuses_a_compacted_snapshot():
    small = RegistryState(history_limit=2)
    commit(small, lambda b: register(b, "a1", zone="x"), lambda b: register(b, "a2"))
    found, _ = small.page(small.revision, Selector.parse(0, "zone=x"), "", 10)
    assert [a.name for a in found] == ["agents/a1"]
    commit(small, lambda b: register(b, "a3"), lambda b: register(b, "a4"))
    small.page(small.first_available - 1, Selector(), "", 10)  # the oldest snapshot it can undo
    with pytest.raises(errors.OutOfRange):
        small.page(1, Selector(), "", 10)


def test_a_page_is_cut_by_bytes_as_well_as_by_count(state):
    commit(
        state,
        *(lambda b, i=i: register(b, f"a{i}", ALICE, None, **big_labels(8)) for i in range(10)),
    )
    size = state.agents["agents/a0"].ByteSize()
    assert size > 1000
    room = RESPONSE_OVERHEAD + 3 * (size + 6)
    found, after = state.page(state.revision, Selector(), "", 100, room)
    assert [a.name for a in found] == ["agents/a0", "agents/a1", "agents/a2"]
    assert after == "agents/a2"
    # An agent larger than a whole response still goes out, alone.
    alone, after = state.page(state.revision, Selector(), "agents/a2", 100, 10)
    assert [a.name for a in alone] == ["agents/a3"]
    assert after == "agents/a3"


def test_forget_requests_before(state):
    commit(state, lambda b: register(b, "a1"))
    assert state.requests
    state.forget_requests_before(WALL)
    assert state.requests  # created at WALL: not before it
    state.forget_requests_before(WALL + 1)
    assert state.requests == {}


def test_idempotency_records_are_bounded_by_count_and_by_bytes():
    # Each record holds a whole RegisterAgentResponse: 100,000 of 64 KiB agents would be
    # 6 GB. The oldest are forgotten first; `trim_requests` names them for the store.
    probe = RegistryState()
    commit(probe, lambda b: register(b, "a0", ALICE, None, **big_labels(8)))
    one = next(iter(probe.requests.values())).size
    assert one > 1000
    state = RegistryState(request_limit=100, request_byte_limit=3 * one + 64)
    for i in range(5):
        batch = Batch(state, LIMITS, WALL + i)
        register(batch, f"a{i}", ALICE, None, **big_labels(8))
        state.install(batch.events)
        for owner, request_id, record in batch.new_requests:
            state.remember(owner, request_id, record)
        forgotten = state.trim_requests()
        assert forgotten == ([("alice", f"req-a{i - 3}")] if i >= 3 else [])
    assert [k[1] for k in state.requests] == ["req-a2", "req-a3", "req-a4"]
    assert state.requests_size == sum(r.size for r in state.requests.values())
    by_count = RegistryState(request_limit=2)
    commit(by_count, *(lambda b, i=i: register(b, f"a{i}") for i in range(3)))
    assert by_count.trim_requests() == [("alice", "req-a0")]
    assert len(by_count.requests) == 2
    by_count.forget_requests_before(WALL + 1)
    assert (by_count.requests, by_count.requests_size) == ({}, 0)


def test_answered_is_the_committed_response_to_the_same_request(state):
    request = register_request("a1", "r")
    digest = fingerprint(request)
    assert state.answered("alice", "r", digest) is None
    commit(state, lambda b: b.register(ALICE, request, "a1", digest))
    response = state.answered("alice", "r", digest)
    assert response is not None
    assert response.agent.name == "agents/a1"
    assert (
        state.answered("alice", "r", fingerprint(register_request("a1", "r", capacity=2))) is None
    )
    assert state.answered("bob", "r", digest) is None


# --- Selector ------------------------------------------------------------------------------


def test_selector_matches_kind_health_and_labels():
    agent = registry_pb2.Agent(
        kind=registry_pb2.AGENT_KIND_ORACLE, health=SERVING, labels={"zone": "a", "gpu": ""}
    )
    assert Selector().matches(agent)
    assert Selector(kind=registry_pb2.AGENT_KIND_ORACLE).matches(agent)
    assert not Selector(kind=registry_pb2.AGENT_KIND_GENERATOR).matches(agent)
    assert not Selector(health=DEGRADED).matches(agent)
    for selector, expected in [
        ("zone=a", True),
        ("zone==a", True),
        ("zone!=a", False),
        ("zone=b", False),
        ("gpu", True),
        ("!gpu", False),
        ("tpu", False),
        ("!tpu", True),
        ("zone=a,gpu", True),
        ("zone=a,tpu", False),
        ("region!=eu", True),
    ]:
        assert Selector.parse(0, selector).matches(agent) is expected, selector
    with pytest.raises(errors.InvalidArgument):
        Selector.parse(0, "zone=a,,b")


def test_selector_from_a_list_or_watch_request():
    listing = registry_pb2.ListAgentsRequest(
        kind=registry_pb2.AGENT_KIND_ORACLE, label_selector="a=b", health=DEGRADED
    )
    assert selector_from(listing) == Selector.parse(2, "a=b", DEGRADED)
    watching = registry_pb2.WatchAgentsRequest(
        kind=registry_pb2.AGENT_KIND_GENERATOR, label_selector="!x"
    )
    assert selector_from(watching) == Selector.parse(1, "!x")


# --- promise 11: batching never changes the outcome ----------------------------------------------

NAMES = ("a", "b", "c")
PRINCIPALS = (ALICE, BOB, ROOT)
operations = st.one_of(
    st.tuples(st.just("register"), st.sampled_from(NAMES), st.integers(0, 2), st.integers(1, 4)),
    st.tuples(st.just("update"), st.sampled_from(NAMES), st.integers(0, 2), st.integers(1, 4)),
    st.tuples(st.just("update_etag"), st.sampled_from(NAMES), st.booleans(), st.integers(1, 4)),
    st.tuples(st.just("heartbeat"), st.sampled_from(NAMES), st.booleans(), st.integers(1, 3)),
    st.tuples(st.just("deregister"), st.sampled_from(NAMES), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("expire"), st.sampled_from(NAMES), st.booleans(), st.just(0)),
)


def apply(batch: Batch, index: int, operation: tuple[str, str, object, int]) -> object:
    """One operation on `batch`; what it returned, or the error class and reason it raised.

    Epochs and etags are read from the batch's own view (committed plus pending), so the
    same operation means the same thing however the sequence is cut into batches.
    """
    kind, agent_id, arg, value = operation
    name = f"agents/{agent_id}"
    current = batch.get(name)
    try:
        if kind == "register":
            principal = PRINCIPALS[int(arg)]  # type: ignore[call-overload]
            request_id = f"r{index % 4}"  # retries and reuses both happen
            return register(batch, agent_id, principal, request_id, capacity=value)
        if kind == "update":
            request = update(name, ["capacity"], capacity=value)
            return batch.update(PRINCIPALS[int(arg)], request)  # type: ignore[call-overload]
        if kind == "update_etag":
            etag = current.etag if current is not None and arg else "r0"
            return batch.update(ALICE, update(name, ["capacity"], etag, capacity=value))
        if kind == "heartbeat":
            epoch = current.epoch if current is not None and arg else 1
            return batch.heartbeat_change(ALICE, heartbeat(name, epoch, health=value))
        if kind == "deregister":
            return batch.deregister(PRINCIPALS[int(arg)], name, "")  # type: ignore[call-overload]
        epoch = current.epoch if current is not None and arg else 1
        return batch.expire(name, epoch)
    except errors.HelixError as exc:
        return (type(exc), exc.reason)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(operations, max_size=40),
    st.lists(st.integers(1, 6), min_size=1, max_size=40),
)
def test_any_batching_equals_a_serial_replay(sequence, cuts):
    serial = RegistryState()
    serial_results = []
    for index, operation in enumerate(sequence):
        commit(serial, lambda b, i=index, o=operation: serial_results.append(apply(b, i, o)))

    batched = RegistryState()
    batched_results: list[object] = []
    position = 0
    for size in cuts * (len(sequence) + 1):
        if position >= len(sequence):
            break
        chunk = list(enumerate(sequence))[position : position + size]
        commit(
            batched, *(lambda b, i=i, o=o: batched_results.append(apply(b, i, o)) for i, o in chunk)
        )
        position += size

    assert batched_results == serial_results
    assert batched.revision == serial.revision
    assert batched.agents == serial.agents
    assert batched.names == sorted(batched.agents)
    assert list(batched.history) == list(serial.history)
    # The history alone rebuilds the state: a watcher replaying it sees exactly this.
    replayed: dict[str, registry_pb2.Agent] = {}
    for revision, event in enumerate(batched.history, start=1):
        assert event.revision == revision
        if event.type == PUT:
            replayed[event.name] = event.agent
        else:
            del replayed[event.name]
    assert replayed == batched.agents
