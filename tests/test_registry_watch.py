"""Watch fan-out and the watch stream (`helix.registry.watch`), without a server.

Events are published by hand, as the engine does right after installing a batch; the
stream is driven with a zero progress interval or already-queued events, never a sleep.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors, reasons
from helix.registry.state import (
    DELETE,
    DEREGISTERED,
    EXPIRED,
    FILTERED_OUT,
    PUT,
    RESPONSE_OVERHEAD,
    Event,
    RegistryState,
    Selector,
)
from helix.registry.stats import RegistryStats
from helix.registry.watch import MAX_EVENTS_PER_RESPONSE, Watcher, WatchHub, next_response, view

from waiting import eventually

ZONE_A = Selector.parse(0, "zone=a")
EVERYTHING = Selector()


def agent(name: str = "a1", **labels: str) -> registry_pb2.Agent:
    return registry_pb2.Agent(
        name=f"agents/{name}", labels=labels, kind=registry_pb2.AGENT_KIND_ORACLE
    )


def put(
    revision: int, after: registry_pb2.Agent, before: registry_pb2.Agent | None = None
) -> Event:
    return Event(revision, PUT, after, before)


def delete(revision: int, last: registry_pb2.Agent, reason: int = DEREGISTERED) -> Event:
    return Event(revision, DELETE, last, last, reason)


def installed(*events: Event, history_limit: int = 100) -> RegistryState:
    """A state whose history holds `events` (as the writer installs them)."""
    state = RegistryState(history_limit=history_limit)
    state.install(events)
    return state


# --- view ---------------------------------------------------------------------------------


def test_view_of_each_kind_of_change():
    a, b = agent(zone="a"), agent(zone="b")
    assert view(ZONE_A, put(1, a)) == (PUT, 0)
    assert view(ZONE_A, put(1, b)) is None
    assert view(ZONE_A, put(2, b, a)) == (DELETE, FILTERED_OUT)  # leaves the filter
    assert view(ZONE_A, put(2, a, b)) == (PUT, 0)  # enters it
    assert view(ZONE_A, put(2, a, a)) == (PUT, 0)
    assert view(ZONE_A, delete(3, a, EXPIRED)) == (DELETE, EXPIRED)
    assert view(ZONE_A, delete(3, b)) is None
    assert view(EVERYTHING, delete(3, b)) == (DELETE, DEREGISTERED)


# --- publish ------------------------------------------------------------------------------


def test_publish_queues_what_each_watcher_sees():
    hub = WatchHub(max_watchers=10, buffer=10)
    everything, zone_a = hub.add(EVERYTHING), hub.add(ZONE_A)
    a, b = agent("a1", zone="a"), agent("a1", zone="b")
    hub.publish([put(1, a), put(2, b, a), put(3, agent("b1", zone="b"))])
    assert [(m.revision, m.type) for m in everything.pending] == [(1, PUT), (2, PUT), (3, PUT)]
    assert [(m.revision, m.type, m.reason) for m in zone_a.pending] == [
        (1, PUT, 0),
        (2, DELETE, FILTERED_OUT),
    ]
    assert zone_a.pending[1].agent == b


def test_one_message_per_event_and_view_is_shared_by_the_watchers():
    hub = WatchHub(max_watchers=200, buffer=10)
    watchers = [hub.add(EVERYTHING) for _ in range(100)]
    other = hub.add(Selector.parse(0, "zone"))  # another selector, the same view
    filtered = hub.add(Selector.parse(0, "zone=b"))  # another view: FILTERED_OUT
    a, b = agent(zone="a"), agent(zone="b")
    hub.publish([put(1, b), put(2, a, b)])
    first = watchers[0].pending
    assert all(w.pending[0] is first[0] and w.pending[1] is first[1] for w in watchers)
    assert other.pending[1] is first[1]
    assert filtered.pending[0] is first[0]
    assert filtered.pending[1] is not first[1]
    assert filtered.pending[1].type == DELETE


def test_a_watch_from_a_future_revision_skips_what_comes_before():
    hub = WatchHub(max_watchers=10, buffer=10)
    watcher = hub.add(EVERYTHING, start=3)
    hub.publish([put(1, agent("x")), put(2, agent("y"))])
    assert not watcher.pending
    hub.publish([put(3, agent("z")), put(4, agent("w"))])
    assert [m.revision for m in watcher.pending] == [3, 4]


def test_history_is_replayed_first_without_counting_against_the_buffer():
    a = agent(zone="a")
    hub = WatchHub(max_watchers=10, buffer=1)
    backlog = [put(1, a), put(2, agent("b1", zone="b")), put(3, a, a)]
    watcher = hub.add(ZONE_A, backlog, start=1)
    hub.publish([put(4, a, a)])  # the buffer of 1 is still free
    assert [m.revision for m in watcher.pending] == [4]
    assert watcher.closed_reason is None
    response = next_response(watcher, installed(*backlog, put(4, a, a)))
    assert [e.revision for e in response.events] == [1, 3]
    assert [e.revision for e in next_response(watcher, RegistryState()).events] == [4]


def test_a_replay_copies_no_agent_before_it_is_sent():
    # Issue 10 item 5: each watch from an old revision copied every agent of the history
    # (up to the whole history's bytes per watcher, times --registry-max-watchers).
    labels = {f"k{i:062d}": f"v{i:062d}" for i in range(8)}
    state = installed(*(put(i, agent(f"a{i}", **labels)) for i in range(1, 11)))
    size = registry_pb2.AgentEvent(agent=state.history[0].agent, revision=10, type=PUT).ByteSize()
    room = RESPONSE_OVERHEAD + 4 * (size + 6)
    hub = WatchHub(max_watchers=100, buffer=10, max_response_bytes=room)
    watchers = [hub.add(EVERYTHING, state.history, start=1) for _ in range(50)]
    assert all(not w.pending for w in watchers)  # nothing built yet
    assert all(w.backlog[0] is state.history[0] for w in watchers)  # the history's own events
    first = next_response(watchers[0], state)
    assert [e.revision for e in first.events] == [1, 2, 3, 4]
    assert len(watchers[0].backlog) == 6


def test_a_watcher_that_falls_behind_is_cut_off_and_the_others_continue():
    stats = RegistryStats()
    hub = WatchHub(max_watchers=10, buffer=3, stats=stats)
    slow, fast = hub.add(EVERYTHING), hub.add(EVERYTHING)
    hub.publish([put(1, agent("a")), put(2, agent("b"))])
    fast.pending.clear()  # the fast one reads
    hub.publish([put(3, agent("c")), put(4, agent("d"))])  # 4 would not fit the slow one
    assert slow.closed_reason is not None
    assert slow.closed_reason.reason == reasons.WATCHER_TOO_SLOW
    assert isinstance(slow.closed_reason, errors.ResourceExhausted)
    assert stats.watchers_cut_off == 1
    assert len(hub) == 1
    assert [m.revision for m in fast.pending] == [3, 4]
    with pytest.raises(errors.ResourceExhausted):
        next_response(slow, RegistryState())  # ended before what was still queued


def test_the_number_of_watchers_is_bounded():
    hub = WatchHub(max_watchers=2, buffer=1)
    first = hub.add(EVERYTHING)
    hub.add(EVERYTHING)
    with pytest.raises(errors.ResourceExhausted) as caught:
        hub.add(EVERYTHING)
    assert caught.value.reason == reasons.TOO_MANY_WATCHERS
    hub.remove(first)
    hub.add(EVERYTHING)


def test_close_all_ends_every_watch_and_refuses_new_ones():
    hub = WatchHub(max_watchers=10, buffer=10)
    watchers = [hub.add(EVERYTHING) for _ in range(3)]
    hub.publish([put(1, agent())])
    reason = errors.Unavailable("shutting down")
    hub.close_all(reason)
    assert len(hub) == 0
    assert all(w.closed_reason is reason for w in watchers)
    with pytest.raises(errors.Unavailable):
        hub.add(EVERYTHING)
    hub.publish([put(2, agent())])  # nobody left to deliver to
    assert all(len(w.pending) == 1 for w in watchers)


# --- what a stream sends next ------------------------------------------------------------------


def test_a_bookmark_is_sent_only_when_nothing_is_queued():
    state = installed(put(1, agent("a")), put(2, agent("b")))
    watcher = WatchHub(max_watchers=1, buffer=1).add(EVERYTHING, state.history, start=1)
    response = next_response(watcher, state)
    assert not response.progress
    assert [e.revision for e in response.events] == [1, 2]
    assert (response.revision, response.compact_revision) == (2, 1)
    bookmark = next_response(watcher, state)
    assert bookmark.progress
    assert not bookmark.events
    assert (bookmark.revision, bookmark.compact_revision) == (2, 1)


def test_a_response_carries_at_most_max_events_in_order():
    hub = WatchHub(max_watchers=1, buffer=5000)
    watcher = hub.add(EVERYTHING)
    count = MAX_EVENTS_PER_RESPONSE + 5
    hub.publish([put(i, agent(f"a{i}")) for i in range(1, count + 1)])
    state = RegistryState()
    first, second = next_response(watcher, state), next_response(watcher, state)
    assert [e.revision for e in first.events] == list(range(1, MAX_EVENTS_PER_RESPONSE + 1))
    assert [e.revision for e in second.events] == list(
        range(MAX_EVENTS_PER_RESPONSE + 1, count + 1)
    )
    assert next_response(watcher, state).progress


def test_a_response_is_cut_by_bytes_as_well_as_by_count():
    labels = {f"k{i:062d}": f"v{i:062d}" for i in range(8)}  # about 1 KB per event
    events = [put(i, agent(f"a{i}", **labels)) for i in range(1, 8)]
    size = registry_pb2.AgentEvent(agent=events[0].agent, revision=7, type=PUT).ByteSize()
    room = RESPONSE_OVERHEAD + 3 * (size + 6)
    hub = WatchHub(max_watchers=1, buffer=100, max_response_bytes=room)
    watcher = hub.add(EVERYTHING)
    hub.publish(events)
    state = RegistryState()
    sizes = []
    while not (response := next_response(watcher, state)).progress:
        assert response.ByteSize() <= room
        sizes.append(len(response.events))
    assert sizes == [3, 3, 1]
    # One event larger than a whole response still goes out, alone.
    tiny = WatchHub(max_watchers=1, buffer=100, max_response_bytes=100)
    watcher = tiny.add(EVERYTHING)
    tiny.publish([put(1, agent("a", **labels)), put(2, agent("b", **labels))])
    assert [len(next_response(watcher, state).events) for _ in range(2)] == [1, 1]


# --- the stream ------------------------------------------------------------------------------


async def test_the_stream_replays_history_then_sends_bookmarks_when_idle():
    state = installed(put(1, agent("a")), put(2, agent("b")), put(3, agent("c")))
    hub = WatchHub(max_watchers=10, buffer=10)
    async with aclosing(hub.watch(state, EVERYTHING, 2, progress_interval=0)) as stream:
        first = await anext(stream)
        assert [e.revision for e in first.events] == [2, 3]
        idle = await anext(stream)
        assert idle.progress
        assert idle.revision == 3
        assert len(hub) == 1
    assert len(hub) == 0  # closing the stream removes the watcher


async def test_the_stream_wakes_for_a_publish_and_ends_with_the_close_reason():
    state = RegistryState()
    hub = WatchHub(max_watchers=10, buffer=10)
    async with aclosing(hub.watch(state, EVERYTHING)) as stream:
        waiting = asyncio.ensure_future(anext(stream))
        await eventually(lambda: len(hub) == 1, what="the watch to be added")
        assert not waiting.done()
        state.install([put(1, agent())])
        hub.publish(state.history)
        response = await asyncio.wait_for(waiting, 5)
        assert [e.revision for e in response.events] == [1]
        hub.close_all(errors.Unavailable("bye"))
        with pytest.raises(errors.Unavailable):
            await asyncio.wait_for(anext(stream), 5)


async def test_a_watch_from_a_compacted_revision_is_out_of_range():
    state = installed(*(put(i, agent("a")) for i in range(1, 6)), history_limit=2)
    hub = WatchHub(max_watchers=10, buffer=10)
    with pytest.raises(errors.OutOfRange) as caught:
        await anext(hub.watch(state, EVERYTHING, 3))
    assert caught.value.metadata == {"compact_revision": "4"}
    assert len(hub) == 0


async def test_wait_returns_after_the_idle_limit_with_nothing_queued():
    watcher = Watcher(EVERYTHING, capacity=1)
    await asyncio.wait_for(watcher.wait(0), 5)
    assert not watcher.pending
