"""The registry on etcd: several replicas sharing one registry, and etcd's faults.

Real etcd processes on loopback (the session's member for the replica tests, each test
under a prefix of its own; members of their own for the fault tests), real registry
servers over real gRPC. The single-replica promises run in test_registry_service.py and
test_registry_client.py against both stores (`store_settings`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import helix.v1.registry_pb2 as registry_pb2
from helix.agents import AgentInformer
from helix.common.config import Duration
from helix.etcd import EtcdClient
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.keys import ensure_hs256_secret
from helix.security.tokens import mint

from etcd_support import EtcdCluster, SessionEtcd
from harness import Processes
from registry_support import Suite, register_request, start_suite
from relay import Relay
from tls_support import make_pki
from waiting import eventually

PUT = registry_pb2.AGENT_EVENT_TYPE_PUT
DELETE = registry_pb2.AGENT_EVENT_TYPE_DELETE
EXPIRED = registry_pb2.AGENT_DELETE_REASON_EXPIRED
SERVICE = "helix.v1.RegistryService"
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Replicas:
    """Registry servers on one etcd prefix, sharing one signing key (a token minted for
    one is good at every other, as behind one load balancer)."""

    def __init__(self, root: Path, store: str, prefix: str | None = None) -> None:
        self.root = root
        self.store = store
        self.prefix = prefix or f"/test-{uuid.uuid4().hex}"
        self.keys = root / "keys"
        ensure_hs256_secret(self.keys)
        self.suites: list[Suite] = []

    async def start(self, store: str | None = None, **overrides: Any) -> Suite:
        settings: dict[str, Any] = {
            "store": store or self.store,
            "etcd_prefix": self.prefix,
            "auth_hs256_dir": self.keys,
            "registry_progress_interval": Duration(0.2),
            "etcd_timeout": Duration(2.0),
        }
        settings.update(overrides)
        suite = await start_suite(self.root / f"replica-{len(self.suites)}", **settings)
        self.suites.append(suite)
        return suite

    async def close(self) -> None:
        for suite in self.suites:
            await suite.close()


@pytest.fixture
async def replicas(tmp_path: Path, session_etcd: SessionEtcd):
    started = Replicas(tmp_path, f"etcd://{session_etcd.endpoint}")
    yield started
    await started.close()


async def watch_events(stub: Any, start: int, count: int, within: float = 20.0) -> list[Any]:
    """The first `count` events of a watch from `start`."""
    events: list[Any] = []
    stream = stub.WatchAgents(registry_pb2.WatchAgentsRequest(start_revision=start))
    try:
        async with asyncio.timeout(within):
            async for response in stream:
                events.extend(response.events)
                if len(events) >= count:
                    return events
    finally:
        stream.cancel()
    return events


async def list_names(stub: Any) -> tuple[list[str], int]:
    response = await stub.ListAgents(registry_pb2.ListAgentsRequest(page_size=1000))
    return sorted(a.name for a in response.agents), response.revision


async def health_of(suite: Suite) -> int:
    async with grpc.aio.insecure_channel(suite.server.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=2
        )
        return int(reply.status)


# --- replicas -------------------------------------------------------------------------------


async def test_a_change_at_one_replica_is_seen_at_once_by_the_other(replicas):
    a, b = await replicas.start(), await replicas.start()
    at_a, at_b = a.stub(), b.stub()
    registered = await at_a.RegisterAgent(register_request("a1", ttl=30))
    # Read right after the write, at the other replica: never an older state.
    found = await at_b.GetAgent(registry_pb2.GetAgentRequest(name="agents/a1"))
    assert found.agent == registered.agent
    assert found.revision >= registered.revision
    beat = await at_b.Heartbeat(
        registry_pb2.HeartbeatRequest(
            name="agents/a1",
            epoch=registered.agent.epoch,
            health=registry_pb2.AGENT_HEALTH_DEGRADED,
        )
    )
    assert beat.revision == registered.revision + 1
    gone = await at_a.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name="agents/a1"))
    assert gone.revision == beat.revision + 1
    for stub in (at_a, at_b):
        events = await watch_events(stub, 1, 3)
        assert [(e.type, e.revision) for e in events] == [
            (PUT, registered.revision),
            (PUT, beat.revision),
            (DELETE, gone.revision),
        ]
        assert events[1].agent.health == registry_pb2.AGENT_HEALTH_DEGRADED


async def test_writes_at_two_replicas_at_once_get_consecutive_revisions(replicas):
    a, b = await replicas.start(), await replicas.start()
    stubs = [a.stub(), b.stub()]
    acknowledged: dict[str, int] = {}

    async def register(i: int) -> None:
        reply = await stubs[i % 2].RegisterAgent(register_request(f"r{i}", ttl=60))
        acknowledged[reply.agent.name] = reply.revision

    await asyncio.gather(*(register(i) for i in range(120)))
    assert sorted(acknowledged.values()) == list(range(1, 121))
    histories = [await watch_events(stub, 1, 120) for stub in stubs]
    assert histories[0] == histories[1]
    assert [e.revision for e in histories[0]] == list(range(1, 121))
    assert {e.agent.name: e.revision for e in histories[0]} == acknowledged
    assert await list_names(stubs[0]) == await list_names(stubs[1])


async def test_a_retry_at_another_replica_gets_the_first_answer(replicas):
    a, b = await replicas.start(), await replicas.start()
    first = await a.stub().RegisterAgent(register_request("", request_id="once", ttl=30))
    again = await b.stub().RegisterAgent(register_request("", request_id="once", ttl=30))
    assert again == first
    names, revision = await list_names(b.stub())
    assert names == [first.agent.name]
    assert revision == first.revision


async def test_an_agent_whose_replica_stopped_expires_at_the_other(replicas):
    a, b = await replicas.start(), await replicas.start()
    registered = await a.stub().RegisterAgent(register_request("lonely", ttl=2))
    await a.close()
    replicas.suites.remove(a)
    started = time.monotonic()
    events = await watch_events(b.stub(), registered.revision, 2, within=15)
    assert events[1].type == DELETE
    assert events[1].reason == EXPIRED
    assert events[1].revision == registered.revision + 1
    assert time.monotonic() - started < 2 + 0.5 + 1.0  # TTL, etcd's sweep, slack


async def test_heartbeats_at_either_replica_keep_an_agent_alive(replicas):
    a, b = await replicas.start(), await replicas.start()
    registered = await a.stub().RegisterAgent(register_request("alive", ttl=2))
    stubs = [a.stub(), b.stub()]
    for i in range(8):  # 8 x 0.7 s: well past the TTL, alternating replicas
        await asyncio.sleep(0.7)
        await stubs[i % 2].Heartbeat(
            registry_pb2.HeartbeatRequest(name="agents/alive", epoch=registered.agent.epoch)
        )
    found = await b.stub().GetAgent(registry_pb2.GetAgentRequest(name="agents/alive"))
    assert found.agent.epoch == registered.agent.epoch


# --- etcd's faults ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_etcd_unreachable_answers_unavailable_and_recovers(tmp_path, etcd: EtcdCluster):
    replicas = Replicas(tmp_path, etcd.url)
    try:
        suite = await replicas.start()
        stub = suite.stub()
        registered = await stub.RegisterAgent(register_request("survivor", ttl=60))
        assert await health_of(suite) == health_pb2.HealthCheckResponse.SERVING
        await etcd.kill("etcd0")
        down_since = time.monotonic()
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "RegisterAgent": lambda: stub.RegisterAgent(register_request("newcomer")),
            "GetAgent": lambda: stub.GetAgent(registry_pb2.GetAgentRequest(name="agents/survivor")),
            "ListAgents": lambda: stub.ListAgents(registry_pb2.ListAgentsRequest()),
            "Heartbeat": lambda: stub.Heartbeat(
                registry_pb2.HeartbeatRequest(name="agents/survivor", epoch=registered.agent.epoch)
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name

        async def not_serving() -> bool:
            return await health_of(suite) == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, 10, what="health to show etcd is gone")
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - down_since)))
        await etcd.restart("etcd0")

        async def serving() -> bool:
            return await health_of(suite) == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, 20, what="health to recover")
        found = await stub.GetAgent(registry_pb2.GetAgentRequest(name="agents/survivor"))
        assert found.agent.epoch == registered.agent.epoch  # its lease outlived the outage
        newcomer = await stub.RegisterAgent(register_request("newcomer"))
        assert newcomer.revision == registered.revision + 1
    finally:
        await replicas.close()


async def test_a_replica_cut_off_past_a_compaction_catches_up_with_no_gap(
    tmp_path, etcd: EtcdCluster
):
    replicas = Replicas(tmp_path, etcd.url)
    relay = await Relay(int(etcd.endpoint.rsplit(":", 1)[1])).start()
    try:
        a = await replicas.start()
        b = await replicas.start(store=f"etcd://{relay.address}")
        await a.stub().RegisterAgent(register_request("first", ttl=60))
        watch = asyncio.create_task(watch_events(b.stub(), 1, 21, within=30))
        await asyncio.sleep(0.3)
        relay.cut()  # b hears nothing from etcd
        for i in range(20):
            await a.stub().RegisterAgent(register_request(f"while-cut-{i}", ttl=60))
        async with EtcdClient([etcd.endpoint]) as client:
            await client.compact((await client.status()).header.revision)
        relay.heal()
        events = await watch
        assert [e.revision for e in events] == list(range(1, 22))
        assert await list_names(b.stub()) == await list_names(a.stub())
    finally:
        await relay.close()
        await replicas.close()


@pytest.mark.timeout(120)
async def test_an_informer_lists_again_when_its_replica_lost_the_history_it_missed(
    tmp_path, etcd: EtcdCluster
):
    replicas = Replicas(tmp_path, etcd.url)
    relay = await Relay(int(etcd.endpoint.rsplit(":", 1)[1])).start()
    try:
        a = await replicas.start(registry_history=100)
        b = await replicas.start(store=f"etcd://{relay.address}", registry_history=100)
        await a.stub().RegisterAgent(register_request("first", ttl=60))
        token = mint(b.server.security.signer, "alice", ("agents.read",), 3600)
        channel = grpc.aio.insecure_channel(
            b.server.address, interceptors=bearer_interceptors(StaticTokenSource(token))
        )
        async with channel, AgentInformer(channel, backoff=(0.05, 0.3)) as informer:
            assert len(informer) == 1
            relay.cut()
            for i in range(110):  # more changes than the history keeps: 10 agents, 11 times
                request = register_request(f"while-cut-{i % 10}", request_id=f"cut-{i}", ttl=60)
                await a.stub().RegisterAgent(request)
            async with EtcdClient([etcd.endpoint]) as client:
                await client.compact((await client.status()).header.revision)
            relay.heal()
            await eventually(lambda: len(informer) == 11, 30, what="the informer to catch up")
            assert informer.lists >= 2  # the replica's history no longer had its revision
            names, _ = await list_names(b.stub())
            assert sorted(a.name for a in informer.agents()) == names
    finally:
        await relay.close()
        await replicas.close()


async def retried(call: Any, attempts: int = 60) -> Any:
    """`call()` until it is answered, through UNAVAILABLE and DEADLINE_EXCEEDED."""
    for _ in range(attempts - 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
        await asyncio.sleep(0.2)
    return await call()


@pytest.mark.timeout(180)
async def test_killing_the_etcd_leader_in_a_burst_loses_nothing(tmp_path, etcd_cluster):
    replicas = Replicas(tmp_path, etcd_cluster.url)
    try:
        a, b = await replicas.start(), await replicas.start()
        stubs = [a.stub(), b.stub()]
        acknowledged: dict[str, int] = {}
        epochs: dict[str, int] = {}

        async def register(i: int) -> None:
            request = register_request(f"burst-{i}", request_id=f"burst-{i}", ttl=5)
            tries = iter(range(1000))
            reply = await retried(
                lambda: stubs[(i + next(tries)) % 2].RegisterAgent(request, timeout=5)
            )
            acknowledged[reply.agent.name] = reply.revision
            epochs[reply.agent.name] = reply.agent.epoch

        async def heartbeat_all(until: float) -> None:
            while time.monotonic() < until:
                for name, epoch in list(epochs.items()):
                    request = registry_pb2.HeartbeatRequest(name=name, epoch=epoch)
                    await retried(lambda r=request, e=epoch: stubs[e % 2].Heartbeat(r, timeout=5))
                await asyncio.sleep(1.0)

        burst = asyncio.gather(*(register(i) for i in range(150)))
        await asyncio.sleep(0.3)
        leader = await etcd_cluster.leader()
        await etcd_cluster.kill(leader.name)
        await burst
        await heartbeat_all(time.monotonic() + 6)  # longer than the TTL: nobody expires
        events = await watch_events(stubs[1], 1, 150, within=30)
        revisions = [e.revision for e in events]
        assert revisions == list(range(1, len(revisions) + 1))  # no gap, no duplicate
        assert not [e for e in events if e.type == DELETE], "an agent expired or vanished"
        for stub in stubs:
            names, _ = await list_names(stub)
            assert set(acknowledged) <= set(names)
        assert {e.agent.name: e.revision for e in events if e.type == PUT} == acknowledged
    finally:
        await replicas.close()


# --- TLS ---------------------------------------------------------------------------------------


async def test_the_registry_reaches_etcd_over_tls_with_its_client_certificate(
    tmp_path: Path, processes: Processes
) -> None:
    """etcd serving TLS and asking for client certificates: with --etcd-ca-file and the
    client certificate the registry works; without the certificate it does not start, and
    says etcd refused it."""
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    async with EtcdCluster(processes, tmp_path / "etcd", tls=pki) as etcd:
        replicas = Replicas(tmp_path / "suites", etcd.url)
        try:
            suite = await replicas.start(
                etcd_ca_file=pki.ca, etcd_cert_file=pki.client_cert, etcd_key_file=pki.client_key
            )
            registered = await suite.stub().RegisterAgent(register_request("secure", ttl=30))
            found = await suite.stub().GetAgent(
                registry_pb2.GetAgentRequest(name=registered.agent.name)
            )
            assert found.agent == registered.agent
            with pytest.raises(OSError, match="etcd") as refused:
                await replicas.start(etcd_ca_file=pki.ca)
            assert "UNAVAILABLE" in str(refused.value)
        finally:
            await replicas.close()
