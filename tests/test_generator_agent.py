"""Generator agents join the registry and serve their library, in both deployment shapes:
the embedded suite's own generator, and standalone `helix generator serve` processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import helix.v1.generator_pb2 as generator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.generator.strategies import GENERATOR_MAJOR

from harness import run_helix as run
from waiting import eventually

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"


async def list_generators(registry) -> list[registry_pb2.Agent]:
    request = registry_pb2.ListAgentsRequest(kind=registry_pb2.AGENT_KIND_GENERATOR)
    listed = await registry.ListAgents(request, timeout=5)
    return list(listed.agents)


@pytest.mark.timeout(60)
async def test_generator_agent_registers_and_serves_its_library(shape, clusters):
    cluster = await clusters(shape, dna_dir=EXAMPLES, settings={"rate_data": 1000})
    registry = cluster.registry("ops", ["agents.read"])
    (agent,) = await eventually(
        lambda: list_generators(registry), what="the generator agent to register"
    )
    assert [agent.name] == cluster.generator_agents()
    assert agent.endpoint == cluster.address_of("generator")
    assert list(agent.generator.strategies) == ["alpha", "random"]
    assert "dnas/tsp" in agent.generator.dnas
    assert agent.capacity == 8  # 4 per breeding thread, 2 threads
    # Which determinism contract it breeds by: an orchestrator mixes only one major.
    assert agent.labels["helix.dev/generator-major"] == str(GENERATOR_MAJOR)

    # The endpoint it advertises serves the library, with the cluster's tokens.
    generator = cluster.generator("user", ["dna.read", "generate"], address=agent.endpoint)
    request = generator_pb2.GenerateRequest(dna_name="dnas/onemax", count=10)
    responses = [r async for r in generator.Generate(request, timeout=10)]
    assert sum(len(r.candidates) for r in responses) == 10


@pytest.mark.timeout(60)
async def test_standalone_generator_deregisters_when_it_drains(clusters):
    # A 60 s lease: only a deregistration can remove the agent as soon as it has stopped.
    # (The embedded generator's drain is covered in test_presence: it stops its registry.)
    cluster = await clusters(
        "processes", dna_dir=EXAMPLES, settings={"registry_default_ttl": "60s"}
    )
    registry = cluster.registry("ops", ["agents.read"])
    (agent,) = await eventually(
        lambda: list_generators(registry), what="the generator agent to register"
    )
    assert agent.name == "agents/gen-1"
    assert agent.owner == "gen-1"  # its service token names its agent id
    assert await cluster.stop("generator") == 0
    assert await list_generators(registry) == []  # deregistered while draining


async def test_generator_agent_needs_a_dna_directory_and_keys(helix_env, tmp_path):
    code, _, err = await run(
        "generator", "serve", "--generator-dna-dir", str(tmp_path / "missing"), env=helix_env
    )
    assert code == 2
    assert "generator-dna-dir" in err
    assert "is not a directory" in err


async def test_dna_list_against_a_running_generator(shape, clusters, helix_env, tmp_path):
    library = tmp_path / "dnas"
    library.mkdir()
    for name in ("sphere.yaml", "tsp.yaml"):
        (library / name).write_text((EXAMPLES / name).read_text())
    (library / "broken.yaml").write_text("genes: [{name: x, real: {low: 2, high: 1}}]\n")
    cluster = await clusters(shape, dna_dir=library)
    token = cluster.token("reader", ["dna.read"])
    common = ("--address", cluster.address_of("generator"), "--token", token)
    code, table, err = await run("dna", "list", *common, env=helix_env)
    assert code == 0, err
    header, *rest = table.splitlines()
    assert header.split()[:2] == ["NAME", "VALID"]
    assert [line.split()[:2] for line in rest[:3]] == [
        ["dnas/broken", "no"],
        ["dnas/sphere", "yes"],
        ["dnas/tsp", "yes"],
    ]
    # Then every violation of the invalid ones, as `helix dna validate` prints them.
    assert "broken.yaml:1: genes[0].real.low: must be <= high [low_le_high]" in rest
    code, lines, err = await run("dna", "list", "--json", *common, env=helix_env)
    assert code == 0, err
    documents = [json.loads(line) for line in lines.splitlines()]
    assert [d.get("valid", False) for d in documents] == [False, True, True]
    assert documents[0]["violations"][0]["rule"] == "low_le_high"
    # Without the scope the command fails with the server's reason.
    weak = cluster.token("nobody", ["agents.read"])
    code, _, err = await run(
        "dna", "list", "--address", cluster.address_of("generator"), "--token", weak, env=helix_env
    )
    assert code == 1
    assert "PERMISSION_DENIED" in err
