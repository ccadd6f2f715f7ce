"""AgentPresence against a real registry: registers in the background, survives a registry
that is not there yet, stops on supersession, deregisters when stopped; and the embedded
generator leaves the suite's registry when the suite drains."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

import helix.v1.registry_pb2 as registry_pb2
from helix.agents.presence import AgentPresence
from helix.common.config import Duration
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint

from registry_support import Suite, agent_spec, register_request, start_suite
from waiting import eventually


def connector(suite: Suite, address: str | None = None, subject: str = "agent-owner"):
    token = mint(suite.server.security.signer, subject, ["agents.write"], 600)

    def connect() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(
            address or suite.server.address,
            interceptors=bearer_interceptors(StaticTokenSource(token)),
        )

    return connect


async def agents(suite: Suite) -> dict[str, registry_pb2.Agent]:
    listed = await suite.stub("ops", ("agents.read",)).ListAgents(
        registry_pb2.ListAgentsRequest(), timeout=5
    )
    return {a.name: a for a in listed.agents}


@pytest.fixture
async def suite(tmp_path: Path):
    started = await start_suite(tmp_path / "suite", registry_default_ttl=Duration(60))
    yield started
    await started.close()


async def test_presence_registers_and_deregisters_when_stopped(suite):
    presence = AgentPresence(connector(suite), agent_spec(), agent_id="p-1")
    await presence.start()
    await asyncio.wait_for(presence.registered.wait(), 10)
    assert "agents/p-1" in await agents(suite)
    await presence.stop()
    assert not presence.registered.is_set()
    # The lease is 60 s: only a deregistration removes it this soon.
    assert "agents/p-1" not in await agents(suite)


async def test_presence_waits_for_a_registry_that_is_not_up_yet(tmp_path):
    # A registry started once to learn a free port and create its key, then stopped:
    # nothing listens there while the presence starts, so it retries until one answers.
    probe = await start_suite(tmp_path / "later", registry_default_ttl=Duration(60))
    address, connect = probe.server.address, connector(probe)
    await probe.close()
    host, port = address.rsplit(":", 1)
    # Meanwhile a listener there drops every connection, counting the presence's attempts.
    attempts = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.transport.abort()

    gate = await asyncio.start_server(drop, host, int(port))
    presence = AgentPresence(connect, agent_spec(), agent_id="late", backoff=(0.05, 0.2))
    await presence.start()
    try:
        await eventually(lambda: attempts >= 1, what="an attempt to reach the registry")
    finally:
        gate.close()
        await gate.wait_closed()
    assert not presence.registered.is_set()
    assert presence.running
    later = await start_suite(
        tmp_path / "later", registry_default_ttl=Duration(60), host=host, port=int(port)
    )
    try:
        await asyncio.wait_for(presence.registered.wait(), 20)
        assert "agents/late" in await agents(later)
    finally:
        await presence.stop()
        await later.close()


async def test_presence_stops_when_another_process_takes_its_id(suite):
    # A short lease, so heartbeats (every TTL/3) soon find the newer registration.
    presence = AgentPresence(connector(suite), agent_spec(), agent_id="twin", ttl=0.6)
    await presence.start()
    await asyncio.wait_for(presence.registered.wait(), 10)
    other = suite.stub("agent-owner", ("agents.write",))
    await other.RegisterAgent(register_request("twin", request_id="other-process"), timeout=5)
    await eventually(lambda: not presence.running, what="the superseded presence to stop")
    assert not presence.registered.is_set()
    assert "agents/twin" in await agents(suite)  # the newer registration is left alone
    await presence.stop()


async def test_embedded_generator_leaves_the_registry_when_the_suite_drains(tmp_path):
    data = tmp_path / "suite"
    first = await start_suite(data, generator_self_register=True, registry_default_ttl=Duration(60))
    try:

        async def registered() -> bool:
            return "agents/embedded-generator" in await agents(first)

        await eventually(registered, what="the embedded generator to register")
    finally:
        await first.close()
    # Restarted without self-registration: the 60 s lease would have survived the
    # restart had the drain not deregistered it.
    second = await start_suite(data, registry_default_ttl=Duration(60))
    try:
        assert "agents/embedded-generator" not in await agents(second)
    finally:
        await second.close()


async def test_presence_keeps_retrying_a_refused_registration(suite):
    # A token without agents.write: PERMISSION_DENIED is not transient, so the presence
    # itself backs off and retries (an operator may fix the credentials), loudly.
    token = mint(suite.server.security.signer, "agent-owner", ["agents.read"], 600)
    connections = 0

    def connect() -> grpc.aio.Channel:
        nonlocal connections
        connections += 1  # one per attempt to register
        return grpc.aio.insecure_channel(
            suite.server.address, interceptors=bearer_interceptors(StaticTokenSource(token))
        )

    presence = AgentPresence(connect, agent_spec(), agent_id="refused", backoff=(0.05, 0.1))
    await presence.start()
    await eventually(lambda: connections >= 3, what="the refused registration to be retried")
    assert presence.running
    assert not presence.registered.is_set()
    assert "agents/refused" not in await agents(suite)
    await presence.stop()
    assert not presence.running
