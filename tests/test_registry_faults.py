"""Faults on real processes, in both deployment shapes: kill -9 the registry in the middle
of a burst of writes, and under running generator agents."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

import helix.v1.registry_pb2 as registry_pb2

from registry_support import register_request
from waiting import eventually

GENEROUS = {"rate_write": 1e6, "rate_read": 1e6, "registry_max_agents_per_principal": 100_000}


async def list_everything(stub) -> tuple[dict[str, registry_pb2.Agent], int]:
    found: dict[str, registry_pb2.Agent] = {}
    token = ""
    while True:
        page = await stub.ListAgents(
            registry_pb2.ListAgentsRequest(page_size=1000, page_token=token), timeout=10
        )
        found.update((a.name, a) for a in page.agents)
        token = page.next_page_token
        if not token:
            return found, page.revision


@pytest.mark.timeout(120)
async def test_kill_9_during_a_burst_loses_no_acknowledged_registration(
    shape, clusters, store_settings
):
    cluster = await clusters(shape, generators=0, settings={**GENEROUS, **store_settings})
    stub = cluster.registry("burst")
    acknowledged: dict[str, int] = {}
    enough = asyncio.Event()
    stop = asyncio.Event()

    async def writer(worker: int) -> None:
        i = 0
        while not stop.is_set():
            agent_id = f"w{worker}-{i}"
            i += 1
            try:
                response = await stub.RegisterAgent(register_request(agent_id, ttl=300), timeout=5)
            except grpc.aio.AioRpcError:
                return  # the registry is gone
            acknowledged[response.agent.name] = response.revision
            if len(acknowledged) >= 300:
                enough.set()

    writers = [asyncio.ensure_future(writer(w)) for w in range(64)]
    try:
        await asyncio.wait_for(enough.wait(), timeout=30)
        assert await cluster.kill("registry") == -signal.SIGKILL
    finally:
        stop.set()
        await asyncio.gather(*writers)

    assert len(acknowledged) >= 300
    await cluster.restart("registry")  # the same data dir (and port)
    found, revision = await list_everything(cluster.registry("burst"))
    missing = set(acknowledged) - set(found)
    assert not missing, f"{len(missing)} acknowledged registrations lost"
    assert revision >= max(acknowledged.values())  # never backwards
    for name, acked_revision in acknowledged.items():
        assert found[name].create_revision == acked_revision


async def get_agent(stub, name: str) -> registry_pb2.Agent | None:
    try:
        response = await stub.GetAgent(registry_pb2.GetAgentRequest(name=name), timeout=5)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None
    agent: registry_pb2.Agent = response.agent
    return agent


@pytest.mark.timeout(90)
async def test_generators_come_back_after_the_registry_is_killed(shape, clusters):
    # Short leases, so heartbeats (every TTL/3) come about once a second.
    cluster = await clusters(shape, settings={"registry_default_ttl": "3s"})
    reader = cluster.registry("watcher", ["agents.read"])
    admin = cluster.registry("root", ["admin"])
    (name,) = cluster.generator_agents()
    before = await eventually(lambda: get_agent(reader, name), what=f"{name} to register")

    assert await cluster.kill("registry") == -signal.SIGKILL
    await cluster.restart("registry")  # the same data dir and port

    # Meanwhile the registry answers UNAVAILABLE, then the agent is found again: kept from
    # the store (its lease starts over), or registered again if it expired meanwhile.
    again = await eventually(
        lambda: get_agent(reader, name),
        within=30,
        what=f"{name} in the restarted registry",
        ignore=(grpc.aio.AioRpcError,),
    )
    assert again.epoch >= before.epoch
    # Removed by hand, it registers again at its next heartbeat: the agent is talking to the
    # new registry process, not just remembered by it.
    await admin.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name=name), timeout=5)

    async def registered_again() -> registry_pb2.Agent | None:
        agent = await get_agent(reader, name)
        return agent if agent is not None and agent.epoch > again.epoch else None

    back = await eventually(registered_again, within=30, what=f"{name} to register again")
    assert back.endpoint == cluster.address_of("generator")
