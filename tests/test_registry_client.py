"""The registry client library against a real embedded suite on 127.0.0.1.

AgentRegistration: registers, heartbeats past many TTLs, reports health and load,
registers again after its agent was removed or expired, stops when superseded,
deregisters on exit, and never swallows its owner's cancellation. AgentInformer: follows
registrations, updates and deletes; equals ListAgents after a burst; survives a registry
restart; re-lists after OUT_OF_RANGE, WATCHER_TOO_SLOW, a stream that ends, and a registry
that went back in time. A SIGSTOPped agent process expires and registers again on SIGCONT.
Partitions are simulated with a TCP relay that cuts connections; no grpc mocks.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.agents import (
    AgentChange,
    AgentInformer,
    AgentRegistration,
    ChangesOverflow,
)
from helix.common import errors
from helix.common.channel import create_channel
from helix.common.config import Duration
from helix.common.status import to_grpc_status, to_rpc_status
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint

from harness import clean_env
from registry_support import Suite, agent_spec, register_request, start_suite
from relay import Relay
from waiting import eventually

PUT = registry_pb2.AGENT_EVENT_TYPE_PUT
DELETE = registry_pb2.AGENT_EVENT_TYPE_DELETE
EXPIRED = registry_pb2.AGENT_DELETE_REASON_EXPIRED
DEREGISTERED = registry_pb2.AGENT_DELETE_REASON_DEREGISTERED
FILTERED_OUT = registry_pb2.AGENT_DELETE_REASON_FILTERED_OUT
ORACLE = registry_pb2.AGENT_KIND_ORACLE
GENERATOR = registry_pb2.AGENT_KIND_GENERATOR
BOTH = ("agents.read", "agents.write")
LONG_TTL = 300.0  # agents registered by hand, which must not expire during a test
AGENT_SCRIPT = Path(__file__).parent / "agents" / "registry_agent.py"
# Reconnect quickly after a simulated partition (grpc's default waits a second or more).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
]


class Channels:
    """Channels to registry servers, each with a token for its principal; closed at the end."""

    def __init__(self) -> None:
        self.opened: list[grpc.aio.Channel] = []

    def open(
        self,
        suite: Suite,
        subject: str = "alice",
        scopes: Sequence[str] = BOTH,
        *,
        address: str | None = None,
        fast_reconnect: bool = False,
    ) -> grpc.aio.Channel:
        token = mint(suite.server.security.signer, subject, scopes, 3600)
        interceptors = bearer_interceptors(StaticTokenSource(token))
        target = address or suite.server.address
        if fast_reconnect:
            channel = grpc.aio.insecure_channel(
                target, options=FAST_RECONNECT, interceptors=interceptors
            )
        else:
            channel = create_channel(target, interceptors=interceptors)
        self.opened.append(channel)
        return channel

    def stub(self, suite: Suite, subject: str = "alice", scopes: Sequence[str] = BOTH) -> Any:
        return registry_pb2_grpc.RegistryServiceStub(self.open(suite, subject, scopes))


@pytest.fixture
async def channels() -> AsyncIterator[Channels]:
    opened = Channels()
    yield opened
    for channel in opened.opened:
        await channel.close()


@pytest.fixture
async def suite(tmp_path: Path, store_settings: dict[str, Any]) -> AsyncIterator[Suite]:
    started = await start_suite(
        tmp_path / "data", registry_progress_interval=Duration(0.2), **store_settings
    )
    yield started
    await started.server.shutdown(0)


class EventLog:
    """A WatchAgents stream from `start`, collected in the background."""

    def __init__(self, stub: Any, start: int, **filters: Any) -> None:
        self.events: list[registry_pb2.AgentEvent] = []
        self._arrived = asyncio.Event()
        request = registry_pb2.WatchAgentsRequest(start_revision=start, **filters)
        self._task = asyncio.create_task(self._run(stub, request))

    async def _run(self, stub: Any, request: registry_pb2.WatchAgentsRequest) -> None:
        call = stub.WatchAgents(request)
        try:
            async for response in call:
                self.events.extend(response.events)
                self._arrived.set()
        finally:
            call.cancel()

    async def wait_for(
        self, match: Callable[[registry_pb2.AgentEvent], bool], within: float = 10.0
    ) -> registry_pb2.AgentEvent:
        async with asyncio.timeout(within):
            checked = 0
            while True:
                for event in self.events[checked:]:
                    if match(event):
                        return event
                checked = len(self.events)
                self._arrived.clear()
                await self._arrived.wait()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task})


@pytest.fixture
async def event_logs() -> AsyncIterator[Callable[..., EventLog]]:
    logs: list[EventLog] = []

    def start(stub: Any, start: int, **filters: Any) -> EventLog:
        log = EventLog(stub, start, **filters)
        logs.append(log)
        return log

    yield start
    for log in logs:
        await log.close()


@pytest.fixture
async def relay_to() -> AsyncIterator[Callable[[Suite], Awaitable[Relay]]]:
    relays: list[Relay] = []

    async def start(suite: Suite) -> Relay:
        relay = await Relay(suite.server.port).start()
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        await relay.close()


async def get_agent(stub: Any, name: str) -> registry_pb2.GetAgentResponse | None:
    try:
        response: registry_pb2.GetAgentResponse = await stub.GetAgent(
            registry_pb2.GetAgentRequest(name=name), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None
    return response


async def list_all(stub: Any, **filters: Any) -> tuple[dict[str, registry_pb2.Agent], int]:
    request = registry_pb2.ListAgentsRequest(page_size=1000, **filters)
    agents: dict[str, registry_pb2.Agent] = {}
    while True:
        page = await stub.ListAgents(request, timeout=5)
        agents.update((a.name, a) for a in page.agents)
        if not page.next_page_token:
            return agents, page.revision
        request.page_token = page.next_page_token


async def register(stub: Any, agent_id: str, **spec: Any) -> registry_pb2.Agent:
    spec.setdefault("ttl", LONG_TTL)
    request = register_request(agent_id, uuid.uuid4().hex, **spec)
    response = await stub.RegisterAgent(request, timeout=5)
    agent: registry_pb2.Agent = response.agent
    return agent


async def set_labels(stub: Any, name: str, **labels: str) -> registry_pb2.Agent:
    request = registry_pb2.UpdateAgentRequest(
        agent=registry_pb2.Agent(name=name, labels=labels), update_mask=FieldMask(paths=["labels"])
    )
    response = await stub.UpdateAgent(request, timeout=5)
    agent: registry_pb2.Agent = response.agent
    return agent


async def deregister(stub: Any, name: str) -> None:
    await stub.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name=name), timeout=5)


async def take(stream: Any, count: int, within: float = 10.0) -> list[AgentChange]:
    async with asyncio.timeout(within):
        return [await anext(stream) for _ in range(count)]


async def in_sync(informer: AgentInformer, stub: Any, **filters: Any) -> bool:
    """Whether the informer has caught up with the registry and holds exactly its agents."""
    listed, revision = await list_all(stub, **filters)
    cached = {agent.name: agent for agent in informer.agents()}
    return informer.revision >= revision and cached == listed


# --- AgentRegistration ----------------------------------------------------------------------


async def test_registration_heartbeats_past_several_ttls_then_deregisters(
    suite, channels, event_logs
):
    channel = channels.open(suite)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    registered: list[int] = []
    spec = agent_spec(kind=ORACLE, endpoint="127.0.0.1:7001")
    async with AgentRegistration(
        channel,
        spec,
        agent_id="oracle-1",
        ttl=0.3,
        on_registered=lambda r: registered.append(r.epoch),
    ) as registration:
        assert registration.name == "agents/oracle-1"
        assert registration.epoch >= 1
        assert registration.registrations == 1
        # etcd leases are whole seconds, at least etcd's minimum (2 s by default).
        ttl = 2.0 if suite.config.uses_etcd else 0.3
        assert registration.ttl == pytest.approx(ttl)
        assert registered == [registration.epoch]
        assert registration.agent.owner == "alice"
        events = event_logs(stub, registration.epoch + 1)
        started = time.monotonic()
        await eventually(lambda: registration.heartbeats >= 10, 10 * ttl, what="10 heartbeats")
        assert time.monotonic() - started > 3 * ttl  # alive well past its TTL
        found = await get_agent(stub, "agents/oracle-1")
        assert found is not None
        assert found.agent.epoch == registration.epoch
        assert registration.registrations == 1
    assert await get_agent(stub, "agents/oracle-1") is None
    gone = await events.wait_for(lambda e: e.type == DELETE)
    assert gone.reason == DEREGISTERED
    assert gone.agent.epoch == registered[0]
    assert registered == [gone.agent.epoch]  # never registered again


async def test_registration_reports_health_at_once_and_load_only_when_changed(
    suite, channels, event_logs
):
    channel = channels.open(suite)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    spec = agent_spec(kind=GENERATOR, endpoint="127.0.0.1:7002")
    async with AgentRegistration(channel, spec, agent_id="gen-2", ttl=15.0) as registration:
        events = event_logs(stub, registration.epoch + 1)
        # A regular beat is 4.5 s away or more (ttl/3 minus jitter): health goes at once.
        registration.health = registry_pb2.AGENT_HEALTH_DEGRADED
        change = await events.wait_for(lambda e: e.type == PUT, within=4)
        assert change.agent.health == registry_pb2.AGENT_HEALTH_DEGRADED
        await eventually(lambda: registration.heartbeats >= 1)
        assert registration.heartbeats == 1  # an early beat, not a regular one
        with pytest.raises(ValueError, match="health must be"):
            registration.health = registry_pb2.AGENT_HEALTH_UNSPECIFIED
    async with AgentRegistration(channel, spec, agent_id="gen-3", ttl=0.6) as registration:
        events = event_logs(stub, registration.epoch + 1)
        registration.load = registry_pb2.AgentLoad(in_flight=3, utilization=0.5)
        loaded = await events.wait_for(lambda e: e.agent.load.in_flight == 3)
        assert loaded.agent.load.utilization == 0.5
        registration.load.queued = 7  # changed in place: reported too
        queued = await events.wait_for(lambda e: e.agent.load.queued == 7)
        # Beats that change nothing advance no revision.
        beats = registration.heartbeats
        await eventually(lambda: registration.heartbeats >= beats + 5, what="5 more beats")
        found = await get_agent(stub, registration.name)
        assert found is not None
        assert found.revision == queued.revision
        assert found.agent.load.in_flight == 3
        assert registration.agent.load.queued == 7
        # Heartbeats return the etag they leave (HeartbeatResponse.etag), so the agent
        # knows its current one and deregisters with it.
        assert registration.agent.etag == found.agent.etag
        assert registration.agent.update_revision == found.agent.update_revision
        epoch = registration.epoch
    # The etag it registered with is stale now; it deregisters its own registration anyway.
    assert await get_agent(stub, "agents/gen-3") is None
    gone = await events.wait_for(lambda e: e.type == DELETE)
    assert (gone.reason, gone.agent.epoch) == (DEREGISTERED, epoch)


async def test_registration_registers_again_after_someone_removed_it(suite, channels, event_logs):
    channel = channels.open(suite)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    admin = channels.stub(suite, "root", ["admin"])
    lost: list[int] = []
    async with AgentRegistration(
        channel,
        agent_spec(),
        agent_id="oracle-3",
        ttl=0.3,
        on_lost=lambda r: lost.append(r.epoch),
    ) as registration:
        first = registration.epoch
        events = event_logs(stub, first + 1)
        await deregister(admin, "agents/oracle-3")
        await eventually(lambda: registration.registrations == 2, what="a second registration")
        assert lost == [first]
        assert registration.epoch > first
        assert registration.registered
        put = await events.wait_for(lambda e: e.type == PUT)
        assert put.agent.epoch == registration.epoch
        found = await get_agent(stub, "agents/oracle-3")
        assert found is not None
        assert (found.agent.epoch, found.agent.owner) == (registration.epoch, "alice")
    assert await get_agent(stub, "agents/oracle-3") is None


async def test_registration_cut_off_past_its_ttl_expires_and_registers_again(
    suite, channels, event_logs, relay_to
):
    relay = await relay_to(suite)
    channel = channels.open(suite, address=relay.address, fast_reconnect=True)
    stub = channels.stub(suite)
    async with AgentRegistration(
        channel, agent_spec(), agent_id="oracle-4", ttl=0.3, backoff=(0.02, 0.2)
    ) as registration:
        first = registration.epoch
        events = event_logs(stub, first + 1)
        relay.cut()
        expired = await events.wait_for(lambda e: e.type == DELETE)
        assert (expired.reason, expired.agent.epoch) == (EXPIRED, first)
        relay.heal()
        await eventually(lambda: registration.registrations == 2, what="a new registration")
        assert registration.epoch > first
        back = await events.wait_for(lambda e: e.type == PUT)
        assert back.agent.epoch == registration.epoch


async def test_superseded_registration_stops_and_leaves_the_newer_one_alone(
    suite, channels, event_logs
):
    channel = channels.open(suite)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    superseded: list[AgentRegistration] = []
    first = AgentRegistration(
        channel, agent_spec(), agent_id="oracle-5", ttl=0.3, on_superseded=superseded.append
    )
    second = AgentRegistration(channel, agent_spec(), agent_id="oracle-5", ttl=0.3)
    async with first, second:
        assert second.epoch > first.epoch
        await eventually(lambda: first.superseded, what="the first to be superseded")
        assert superseded == [first]
        assert not first.registered
        beats = first.heartbeats
        await eventually(lambda: second.heartbeats >= 6, what="the second to beat on")
        assert first.heartbeats == beats  # stopped for good
        assert first.registrations == 1  # and did not register again
        await first.close()  # leaving does not remove the newer registration
        found = await get_agent(stub, "agents/oracle-5")
        assert found is not None
        assert found.agent.epoch == second.epoch
    assert await get_agent(stub, "agents/oracle-5") is None


async def test_registering_waits_for_an_unreachable_registry(suite, channels, relay_to):
    relay = await relay_to(suite)
    relay.cut()
    channel = channels.open(suite, address=relay.address, fast_reconnect=True)
    registration = AgentRegistration(
        channel, agent_spec(), agent_id="oracle-6", ttl=1.0, backoff=(0.02, 0.1)
    )
    entering = asyncio.create_task(registration.__aenter__())
    await eventually(lambda: relay.refused >= 2, what="refused connection attempts")
    assert not entering.done()
    relay.heal()
    async with asyncio.timeout(10):
        await entering
    try:
        assert registration.registrations == 1
        found = await get_agent(channels.stub(suite), "agents/oracle-6")
        assert found is not None
        assert found.agent.epoch == registration.epoch
    finally:
        await registration.close()


async def test_bad_registration_is_raised_on_enter(suite, channels):
    channel = channels.open(suite)
    bad = registry_pb2.Agent(kind=ORACLE, endpoint="not an endpoint", capacity=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with AgentRegistration(channel, bad, agent_id="oracle-bad"):
            pytest.fail("entered with an invalid agent")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reader = channels.open(suite, "bob", ["agents.read"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with AgentRegistration(reader, agent_spec(), agent_id="oracle-bob"):
            pytest.fail("registered without agents.write")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_cancelling_the_owner_deregisters_and_propagates(suite, channels):
    channel = channels.open(suite)
    entered = asyncio.Event()

    async def agent_main() -> None:
        async with AgentRegistration(channel, agent_spec(), agent_id="oracle-7", ttl=0.3):
            entered.set()
            await asyncio.sleep(3600)  # the agent's work, until its owner cancels it

    task = asyncio.create_task(agent_main())
    async with asyncio.timeout(10):
        await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert await get_agent(channels.stub(suite), "agents/oracle-7") is None


# --- AgentInformer ------------------------------------------------------------------------


async def test_informer_follows_registrations_updates_and_deletes(suite, channels):
    stub = channels.stub(suite)
    async with AgentInformer(channels.open(suite, "reader", ["agents.read"])) as informer:
        assert informer.synced
        assert len(informer) == 0
        seen: list[tuple[int, str, int]] = []
        informer.on_change(lambda kind, agent, reason: seen.append((kind, agent.name, reason)))
        stream = informer.changes()
        a1 = await register(stub, "a1", zone="a")
        await set_labels(stub, "agents/a1", zone="b")
        await deregister(stub, "agents/a1")
        await register(stub, "short", ttl=0.2)  # never heartbeats: expires
        changes = await take(stream, 5)
        assert [(c.type, c.agent.name, c.reason) for c in changes] == [
            (PUT, "agents/a1", 0),
            (PUT, "agents/a1", 0),
            (DELETE, "agents/a1", DEREGISTERED),
            (PUT, "agents/short", 0),
            (DELETE, "agents/short", EXPIRED),
        ]
        assert changes[0].agent == a1
        assert changes[1].agent.labels["zone"] == "b"
        assert [c.revision for c in changes] == list(range(a1.epoch, a1.epoch + 5))
        assert not any(c.from_list for c in changes)
        assert seen == [(c.type, c.agent.name, c.reason) for c in changes]
        assert informer.get("a1") is None
        assert "agents/short" not in informer
        assert informer.revision == changes[-1].revision
        await register(stub, "a2")
        await eventually(lambda: informer.get("agents/a2") is not None)
        assert informer.get("a2") is informer.get("agents/a2")
        assert [a.name for a in informer.agents()] == ["agents/a2"]
    (last,) = await take(stream, 1)  # what was buffered is still read, then the stream ends
    assert last.agent.name == "agents/a2"
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_informer_equals_list_after_a_burst(suite, channels):
    stub = channels.stub(suite)
    # Some agents exist before the informer starts: its first listing takes several pages.
    await asyncio.gather(*(register(stub, f"pre-{i}", zone=str(i % 3)) for i in range(30)))
    informer = AgentInformer(
        registry_pb2_grpc.RegistryServiceStub(channels.open(suite)), page_size=7
    )
    mirror: dict[str, registry_pb2.Agent] = {}

    def follow(kind: int, agent: registry_pb2.Agent, reason: int) -> None:
        if kind == PUT:
            mirror[agent.name] = agent
        else:
            mirror.pop(agent.name)

    informer.on_change(follow)
    async with informer:
        assert len(informer) == 30
        assert informer.lists == 1
        await asyncio.gather(
            *(register(stub, f"new-{i}") for i in range(60)),
            *(set_labels(stub, f"agents/pre-{i}", zone="x") for i in range(0, 30, 2)),
            *(deregister(stub, f"agents/pre-{i}") for i in range(1, 30, 4)),
        )
        await eventually(lambda: in_sync(informer, stub), what="the informer to catch up")
        assert len(informer) == 30 + 60 - len(range(1, 30, 4))
        assert mirror == {agent.name: agent for agent in informer.agents()}
        assert informer.lists == 1  # one listing, then the watch did the rest


async def test_filtered_informer_sees_agents_enter_and_leave_its_filter(suite, channels):
    stub = channels.stub(suite)
    async with AgentInformer(channels.open(suite), kind=ORACLE, label_selector="zone=a") as inf:
        stream = inf.changes()
        await register(stub, "o1", kind=ORACLE, zone="a")
        await register(stub, "g1", kind=GENERATOR, zone="a")
        await register(stub, "o2", kind=ORACLE, zone="b")
        await set_labels(stub, "agents/o1", zone="b")
        await set_labels(stub, "agents/o2", zone="a")
        changes = await take(stream, 3)
        assert [(c.type, c.agent.name, c.reason) for c in changes] == [
            (PUT, "agents/o1", 0),
            (DELETE, "agents/o1", FILTERED_OUT),
            (PUT, "agents/o2", 0),
        ]
        assert [a.name for a in inf.agents()] == ["agents/o2"]
        await eventually(lambda: in_sync(inf, stub, kind=ORACLE, label_selector="zone=a"))


async def test_informer_resumes_after_a_registry_restart(tmp_path, channels, store_settings):
    data_dir = tmp_path / "data"
    first = await start_suite(data_dir, registry_progress_interval=Duration(0.2), **store_settings)
    port = first.server.port
    informer = AgentInformer(channels.open(first, fast_reconnect=True), backoff=(0.05, 0.5))
    restarted: Suite | None = None
    try:
        stub = channels.stub(first)
        await register(stub, "a1")
        await register(stub, "a2")
        async with informer:
            await eventually(lambda: len(informer) == 2)
            await first.server.shutdown(0)
            restarted = await start_suite(
                data_dir, port=port, registry_progress_interval=Duration(0.2), **store_settings
            )
            stub = channels.stub(restarted)
            await deregister(stub, "agents/a1")
            await register(stub, "a3")
            await eventually(lambda: in_sync(informer, stub), what="the informer to catch up")
            assert sorted(a.name for a in informer.agents()) == ["agents/a2", "agents/a3"]
            assert informer.reconnects >= 1
            assert informer.lists == 1  # resumed from its revision: no second listing
    finally:
        await first.server.shutdown(0)
        if restarted is not None:
            await restarted.server.shutdown(0)


async def test_informer_lists_again_after_out_of_range(
    tmp_path, channels, relay_to, store_settings
):
    suite = await start_suite(
        tmp_path / "data",
        registry_history=100,
        registry_progress_interval=Duration(0.2),
        **store_settings,
    )
    try:
        stub = channels.stub(suite)
        for i in range(5):
            await register(stub, f"old-{i}")
        relay = await relay_to(suite)
        channel = channels.open(suite, address=relay.address, fast_reconnect=True)
        async with AgentInformer(channel, backoff=(0.05, 0.3)) as informer:
            stream = informer.changes()
            assert len(informer) == 5
            relay.cut()
            # More changes than the history keeps, while the informer cannot see them.
            await deregister(stub, "agents/old-0")
            await set_labels(stub, "agents/old-1", zone="moved")
            for i in range(110):
                await register(stub, f"new-{i % 10}")  # 10 agents, each re-registered
            _, revision = await list_all(stub)
            relay.heal()
            await eventually(lambda: informer.lists == 2, what="a second listing")
            await eventually(lambda: in_sync(informer, stub))
            changes = await take(stream, 12)
            assert all(c.from_list and c.revision == revision for c in changes)
            assert [(c.type, c.agent.name) for c in changes] == [
                (DELETE, "agents/old-0"),
                *[(PUT, f"agents/new-{i}") for i in range(10)],
                (PUT, "agents/old-1"),
            ]
            assert changes[0].reason == 0  # a listing cannot tell why it went
    finally:
        await suite.server.shutdown(0)


async def test_a_slow_consumer_gets_an_overflow_and_the_cache_stays_right(suite, channels):
    stub = channels.stub(suite)
    async with AgentInformer(channels.open(suite)) as informer:
        slow = informer.changes(maxsize=3)
        fast = informer.changes()
        for i in range(5):
            await register(stub, f"a{i}")
        await take(fast, 5)
        with pytest.raises(ChangesOverflow, match="fell more than 3 changes behind"):
            await anext(slow)
        assert len(informer) == 5
        again = informer.changes(maxsize=3)
        await deregister(stub, "agents/a0")
        (change,) = await take(again, 1)
        assert (change.type, change.agent.name) == (DELETE, "agents/a0")


async def test_informer_reports_errors_it_cannot_retry(suite, channels):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with AgentInformer(channels.open(suite), label_selector="=x"):
            pytest.fail("synced with a bad selector")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    informer = AgentInformer(channels.open(suite, "nobody", ["dna.read"]))
    await informer.start()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await informer.wait_synced()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert informer.error is caught.value
    stream = informer.changes()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    await informer.stop()


# --- AgentInformer against a hand-written registry: errors the real one rarely gives --------


class ScriptedRegistry(registry_pb2_grpc.RegistryServiceServicer):
    """ListAgents serves `listings` in turn; each WatchAgents call plays the next script."""

    def __init__(self) -> None:
        self.listings: list[tuple[int, list[registry_pb2.Agent]]] = []
        self.watches: list[Callable[[Any], AsyncIterator[registry_pb2.WatchAgentsResponse]]] = []
        self.list_calls = 0
        self.watch_starts: list[int] = []

    async def ListAgents(self, request: Any, context: Any) -> registry_pb2.ListAgentsResponse:
        revision, agents = self.listings[min(self.list_calls, len(self.listings) - 1)]
        self.list_calls += 1
        return registry_pb2.ListAgentsResponse(agents=agents, revision=revision)

    async def WatchAgents(self, request: Any, context: Any) -> Any:
        self.watch_starts.append(request.start_revision)
        index = len(self.watch_starts) - 1
        if index >= len(self.watches):
            await asyncio.Event().wait()  # idle for ever
        async for response in self.watches[index](context):
            yield response


def oracle(agent_id: str, revision: int) -> registry_pb2.Agent:
    return registry_pb2.Agent(
        name=f"agents/{agent_id}",
        kind=ORACLE,
        endpoint="127.0.0.1:1",
        capacity=1,
        epoch=revision,
        update_revision=revision,
    )


async def cut_off_too_slow(context: Any) -> AsyncIterator[registry_pb2.WatchAgentsResponse]:
    event = registry_pb2.AgentEvent(type=PUT, agent=oracle("b", 11), revision=11)
    yield registry_pb2.WatchAgentsResponse(events=[event], revision=11)
    error = errors.ResourceExhausted("too slow", reason="WATCHER_TOO_SLOW")
    await context.abort_with_status(to_grpc_status(to_rpc_status(error)))


async def end_quietly(context: Any) -> AsyncIterator[registry_pb2.WatchAgentsResponse]:
    yield registry_pb2.WatchAgentsResponse(revision=20, progress=True)


async def go_back_in_time(context: Any) -> AsyncIterator[registry_pb2.WatchAgentsResponse]:
    yield registry_pb2.WatchAgentsResponse(revision=3, progress=True)
    await asyncio.Event().wait()


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedRegistry, grpc.aio.Channel]]:
    registry = ScriptedRegistry()  # type: ignore[abstract]
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield registry, channel
    await channel.close()
    await server.stop(0)


async def test_informer_lists_again_when_too_slow_ended_or_time_went_back(scripted):
    registry, channel = scripted
    registry.listings = [
        (10, [oracle("a", 5)]),
        (15, [oracle("b", 11), oracle("c", 14)]),  # after WATCHER_TOO_SLOW
        (20, [oracle("c", 14)]),  # after the stream ended without an error
        (4, [oracle("d", 4)]),  # after the registry's revision went back
    ]
    registry.watches = [cut_off_too_slow, end_quietly, go_back_in_time]
    informer = AgentInformer(channel, backoff=(0.01, 0.05))
    stream = informer.changes()
    async with informer:
        await eventually(lambda: informer.lists == 4, what="four listings")
        assert [a.name for a in informer.agents()] == ["agents/d"]
        assert informer.revision == 4
        changes = await take(stream, 7)
        assert [(c.type, c.agent.name, c.from_list) for c in changes] == [
            (PUT, "agents/a", True),  # the first listing
            (PUT, "agents/b", False),  # the watch event before the cut-off
            (DELETE, "agents/a", True),  # the second listing: a went, c came, b unchanged
            (PUT, "agents/c", True),
            (DELETE, "agents/b", True),  # the third
            (DELETE, "agents/c", True),  # the fourth
            (PUT, "agents/d", True),
        ]
        # Each watch starts right after what the informer had: its listing or a bookmark.
        await eventually(lambda: len(registry.watch_starts) == 4, what="the fourth watch")
        assert registry.watch_starts == [11, 16, 21, 5]


async def bookmark_then_its_event(context: Any) -> AsyncIterator[registry_pb2.WatchAgentsResponse]:
    # What the registry sends when a progress timer and an event race (see the report on
    # WatchAgents): a bookmark at 12, then the event of revision 12 it claimed was sent.
    yield registry_pb2.WatchAgentsResponse(revision=12, progress=True)
    event = registry_pb2.AgentEvent(type=PUT, agent=oracle("b", 12), revision=12)
    yield registry_pb2.WatchAgentsResponse(events=[event], revision=12)
    await asyncio.Event().wait()


async def test_informer_applies_an_event_that_trails_its_bookmark(scripted):
    registry, channel = scripted
    registry.listings = [(10, [oracle("a", 5)])]
    registry.watches = [bookmark_then_its_event]
    async with AgentInformer(channel) as informer:
        await eventually(lambda: informer.get("b") is not None, what="the trailing event")
        assert informer.revision == 12
        assert [a.name for a in informer.agents()] == ["agents/a", "agents/b"]


# --- A real agent process, stopped past its TTL --------------------------------------------

REGISTERED = re.compile(r"^registered agents/stopped-1 epoch (\d+)$")


async def test_sigstopped_agent_expires_and_registers_again_after_sigcont(
    suite, channels, event_logs, processes
):
    stub = channels.stub(suite, "watcher", ["agents.read"])
    token = mint(suite.server.security.signer, "agent-process", BOTH, 3600)
    env = clean_env({"address": suite.server.address, "token": token})
    argv = [sys.executable, str(AGENT_SCRIPT), "--agent-id", "stopped-1", "--ttl", "0.5"]
    agent = await processes.start(argv, env, ready=REGISTERED)
    assert agent.match is not None
    first = int(agent.match[1])
    events = event_logs(stub, first + 1)
    agent.send_signal(signal.SIGSTOP)
    try:
        expired = await events.wait_for(lambda e: e.type == DELETE)
    finally:
        agent.send_signal(signal.SIGCONT)
    assert (expired.agent.name, expired.reason) == ("agents/stopped-1", EXPIRED)
    assert expired.agent.epoch == first
    assert await agent.next_line() == f"lost agents/stopped-1 epoch {first}"
    line = await agent.next_line()
    match = REGISTERED.match(line)
    assert match, line
    second = int(match.group(1))
    assert second > first
    back = await events.wait_for(lambda e: e.type == PUT)
    assert (back.agent.name, back.agent.epoch) == ("agents/stopped-1", second)
    agent.send_signal(signal.SIGTERM)
    assert await agent.next_line() == "stopped"
    assert await agent.wait() == 0
    gone = await events.wait_for(lambda e: e.type == DELETE and e.revision > back.revision)
    assert (gone.reason, gone.agent.epoch) == (DEREGISTERED, second)


async def test_informer_stops_when_its_channel_is_closed(suite):
    channel = grpc.aio.insecure_channel(
        suite.server.address,
        interceptors=bearer_interceptors(
            StaticTokenSource(mint(suite.server.security.signer, "alice", BOTH, 600))
        ),
    )
    informer = AgentInformer(channel, backoff=(0.01, 0.05))
    async with informer:
        stream = informer.changes()
        await channel.close()
        await eventually(lambda: informer.error is not None, what="the informer to give up")
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    never = AgentInformer(channel)
    await never.stop()
    with pytest.raises(RuntimeError, match="stopped before its first listing"):
        await never.wait_synced()


async def test_registration_whose_channel_is_closed_stops_and_exits_cleanly(suite, channels):
    channel = grpc.aio.insecure_channel(
        suite.server.address,
        interceptors=bearer_interceptors(
            StaticTokenSource(mint(suite.server.security.signer, "alice", BOTH, 600))
        ),
    )
    async with AgentRegistration(channel, agent_spec(), agent_id="orphan", ttl=0.3) as reg:
        await channel.close()
        await eventually(lambda: not reg.registered, what="heartbeats to stop")
    # Nothing deregistered it: its lease runs out instead.
    events = EventLog(channels.stub(suite), reg.epoch)
    try:
        gone = await events.wait_for(lambda e: e.type == DELETE)
        assert gone.reason == EXPIRED
    finally:
        await events.close()
