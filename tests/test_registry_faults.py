"""Faults on a real `helix up` process: kill -9 in the middle of a burst of writes."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from pathlib import Path

import grpc
import pytest

import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.keys import load_hs256_dir
from helix.security.tokens import mint

from registry_support import register_request

HELIX = str(Path(sys.executable).parent / "helix")
LISTENING = re.compile(rb"^helix listening on (127\.0\.0\.1:\d+)$")


async def start_helix(
    data_dir: Path, env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        HELIX,
        "up",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    match = LISTENING.match(line.strip())
    assert match, line
    return process, match.group(1).decode()


def stub_for(
    address: str, data_dir: Path
) -> tuple[grpc.aio.Channel, registry_pb2_grpc.RegistryServiceStub]:
    _, signer = load_hs256_dir(data_dir / "keys")
    assert signer is not None
    token = mint(signer, "burst", ["agents.read", "agents.write"], 600)
    channel = grpc.aio.insecure_channel(
        address, interceptors=bearer_interceptors(StaticTokenSource(token))
    )
    return channel, registry_pb2_grpc.RegistryServiceStub(channel)


@pytest.mark.timeout(120)
async def test_kill_9_during_a_burst_loses_no_acknowledged_registration(helix_env, tmp_path):
    data_dir = tmp_path / "suite"
    helix_env = dict(helix_env, HELIX_RATE_WRITE="1000000", HELIX_RATE_READ="1000000")
    process, address = await start_helix(data_dir, helix_env)
    acknowledged: dict[str, int] = {}
    enough = asyncio.Event()
    try:
        channel, stub = stub_for(address, data_dir)
        stop = asyncio.Event()

        async def writer(worker: int) -> None:
            i = 0
            while not stop.is_set():
                agent_id = f"w{worker}-{i}"
                i += 1
                try:
                    response = await stub.RegisterAgent(
                        register_request(agent_id, ttl=300), timeout=5
                    )
                except grpc.aio.AioRpcError:
                    return  # the registry is gone
                acknowledged[response.agent.name] = response.revision
                if len(acknowledged) >= 300:
                    enough.set()

        writers = [asyncio.ensure_future(writer(w)) for w in range(64)]
        await asyncio.wait_for(enough.wait(), timeout=30)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        stop.set()
        await asyncio.gather(*writers)
        await channel.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert len(acknowledged) >= 300
    process, address = await start_helix(data_dir, helix_env)
    try:
        channel, stub = stub_for(address, data_dir)
        found: dict[str, registry_pb2.Agent] = {}
        token = ""
        revision = None
        while True:
            page = await stub.ListAgents(
                registry_pb2.ListAgentsRequest(page_size=1000, page_token=token)
            )
            revision = page.revision
            found.update((a.name, a) for a in page.agents)
            token = page.next_page_token
            if not token:
                break
        missing = set(acknowledged) - set(found)
        assert not missing, f"{len(missing)} acknowledged registrations lost"
        assert revision >= max(acknowledged.values())  # never backwards
        for name, acked_revision in acknowledged.items():
            assert found[name].create_revision == acked_revision
        await channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), timeout=20)
        if process.returncode is None:
            process.kill()
            await process.wait()
