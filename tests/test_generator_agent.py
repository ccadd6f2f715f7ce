"""A standalone generator agent (`helix generator serve`, a real process) joins a registry."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

import grpc
import pytest

import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
from helix.common.config import Duration
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint

from registry_support import start_suite

HELIX = str(Path(sys.executable).parent / "helix")
LISTENING = re.compile(rb"^helix generator listening on (127\.0\.0\.1:\d+)$")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"


async def list_generators(registry) -> list[registry_pb2.Agent]:
    request = registry_pb2.ListAgentsRequest(kind=registry_pb2.AGENT_KIND_GENERATOR)
    listed = await registry.ListAgents(request, timeout=5)
    return [a for a in listed.agents if a.name != "agents/embedded-generator"]


@pytest.mark.timeout(60)
async def test_generator_agent_registers_serves_and_deregisters(helix_env, tmp_path):
    # A 60 s lease: only a deregistration can remove the agent as soon as it has stopped.
    suite = await start_suite(tmp_path / "suite", registry_default_ttl=Duration(60))
    try:
        keys = suite.config.data_dir / "keys"
        env = dict(helix_env, HELIX_AUTH_HS256_DIR=str(keys), HELIX_RATE_DATA="1000")
        process = await asyncio.create_subprocess_exec(
            HELIX,
            "generator",
            "serve",
            "--port",
            "0",
            "--generator-dna-dir",
            str(EXAMPLES),
            "--registry-address",
            suite.server.address,
            "--agent-id",
            "gen-1",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
            match = LISTENING.match(line.strip())
            assert match, line
            address = match.group(1).decode()
            registry = suite.stub("ops", ("agents.read",))
            for _ in range(200):
                agents = await list_generators(registry)
                if agents:
                    break
                await asyncio.sleep(0.05)
            (agent,) = agents
            assert agent.name == "agents/gen-1"
            assert agent.endpoint == address
            assert agent.owner == "gen-1"
            assert list(agent.generator.strategies) == ["alpha", "random"]
            assert "dnas/tsp" in agent.generator.dnas
            assert agent.capacity == 8  # 4 per breeding thread, 2 threads

            # The endpoint it advertises serves the library, with the suite's tokens.
            token = mint(suite.server.security.signer, "user", ["dna.read", "generate"], 600)
            async with grpc.aio.insecure_channel(
                agent.endpoint, interceptors=bearer_interceptors(StaticTokenSource(token))
            ) as channel:
                stub = generator_pb2_grpc.GeneratorServiceStub(channel)
                request = generator_pb2.GenerateRequest(dna_name="dnas/onemax", count=10)
                responses = [r async for r in stub.Generate(request, timeout=10)]
                assert sum(len(r.candidates) for r in responses) == 10

            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), timeout=20) == 0
            assert await list_generators(registry) == []  # deregistered while draining
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        await suite.close()


async def test_generator_agent_needs_a_dna_directory_and_keys(helix_env, tmp_path):
    process = await asyncio.create_subprocess_exec(
        HELIX,
        "generator",
        "serve",
        "--generator-dna-dir",
        str(tmp_path / "missing"),
        env=helix_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert b"generator-dna-dir" in stderr
    assert b"is not a directory" in stderr


async def test_dna_list_against_a_running_generator(helix_env, tmp_path):
    library = tmp_path / "dnas"
    library.mkdir()
    for name in ("sphere.yaml", "tsp.yaml"):
        (library / name).write_text((EXAMPLES / name).read_text())
    (library / "broken.yaml").write_text("genes: [{name: x, real: {low: 2, high: 1}}]\n")
    suite = await start_suite(tmp_path / "suite", generator_dna_dir=library)
    try:
        token = mint(suite.server.security.signer, "reader", ["dna.read"], 600)
        common = ("--address", suite.server.address, "--token", token)
        process = await asyncio.create_subprocess_exec(
            HELIX, "dna", "list", *common, env=helix_env, stdout=asyncio.subprocess.PIPE
        )
        table, _ = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0
        header, *rest = table.decode().splitlines()
        assert header.split()[:2] == ["NAME", "VALID"]
        assert [line.split()[:2] for line in rest[:3]] == [
            ["dnas/broken", "no"],
            ["dnas/sphere", "yes"],
            ["dnas/tsp", "yes"],
        ]
        # Then every violation of the invalid ones, as `helix dna validate` prints them.
        assert "broken.yaml:1: genes[0].real.low: must be <= high [low_le_high]" in rest
        process = await asyncio.create_subprocess_exec(
            HELIX, "dna", "list", "--json", *common, env=helix_env, stdout=asyncio.subprocess.PIPE
        )
        lines, _ = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0
        documents = [json.loads(line) for line in lines.decode().splitlines()]
        assert [d.get("valid", False) for d in documents] == [False, True, True]
        assert documents[0]["violations"][0]["rule"] == "low_le_high"
        # Without the scope the command fails with the server's reason.
        weak = mint(suite.server.security.signer, "nobody", ["agents.read"], 600)
        process = await asyncio.create_subprocess_exec(
            HELIX,
            "dna",
            "list",
            "--address",
            suite.server.address,
            "--token",
            weak,
            env=helix_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 1
        assert b"PERMISSION_DENIED" in err
    finally:
        await suite.close()
