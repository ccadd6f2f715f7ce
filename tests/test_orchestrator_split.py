"""A generation split across generators (GenerateRequest.offset/limit): with a second
generator agent registered, a run whose generations span several chunks breeds them on
both at once, and ends exactly as the same seed on one generator."""

from __future__ import annotations

from pathlib import Path

import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.common.server import HelixServer
from helix.generator.agent import GeneratorAgentConfig, create_agent
from helix.security.setup import security_from_config

from orchestrator_support import DNA_DIR, run_request, runs_stub, start_run_suite, watch_to_end
from registry_support import Suite
from waiting import eventually

POPULATION = 2500  # three chunks of the rastrigin DNA (1024 rows each)
GENERATE = {
    "grpc_type": "SERVER_STREAM",
    "grpc_service": "helix.v1.GeneratorService",
    "grpc_method": "Generate",
    "grpc_code": "OK",
}


async def _second_generator(suite: Suite, data_dir: Path) -> HelixServer:
    config = GeneratorAgentConfig(
        port=0,
        host="127.0.0.1",
        registry_address=suite.server.address,
        agent_id="gen-2",
        generator_dna_dir=DNA_DIR,
        auth_hs256_dir=data_dir / "keys",
        rate_data=1e6,
        rate_read=1e6,
    )
    server, _ = create_agent(config, security_from_config(config))
    await server.start()
    return server


def _generated(server: HelixServer) -> float:
    return server.metrics.registry.get_sample_value("grpc_server_handled_total", GENERATE) or 0.0


async def _run(suite: Suite) -> orchestrator_pb2.Run:
    stub = runs_stub(suite)
    request = run_request(inline=True, evaluations=3 * POPULATION, seed=21)
    request.run.dna.strategy.alpha.population_size = POPULATION
    created = (await stub.CreateRun(request)).run
    await watch_to_end(stub, created.name)
    run = (await stub.GetRun(orchestrator_pb2.GetRunRequest(name=created.name))).run
    assert run.state == orchestrator_pb2.RUN_STATE_SUCCEEDED, run.error
    return run


def _result(run: orchestrator_pb2.Run) -> tuple[object, ...]:
    p = run.progress
    return (p.evaluations, p.duplicates, p.generation, p.best.candidate.id, p.best.verdict.score)


async def test_a_generation_split_across_two_generators_gives_the_same_run(
    tmp_path: Path,
) -> None:
    alone = await start_run_suite(tmp_path / "one")
    try:
        one = await _run(alone)
    finally:
        await alone.close()

    suite = await start_run_suite(tmp_path / "two")
    second = await _second_generator(suite, tmp_path / "two")
    try:
        registry = suite.stub()

        async def both_serving() -> bool:
            listed = await registry.ListAgents(
                registry_pb2.ListAgentsRequest(
                    kind=registry_pb2.AGENT_KIND_GENERATOR, health=registry_pb2.AGENT_HEALTH_SERVING
                )
            )
            return len(listed.agents) == 2

        await eventually(both_serving, within=20, what="two generators registered")
        two = await _run(suite)
        assert _result(two) == _result(one)
        # Both generators bred: generation 0 on one (the chunk size is learned from it),
        # then every later generation split in ranges across the two.
        later = two.progress.generation  # generations after generation 0
        assert later >= 2
        assert _generated(second) + _generated(suite.server) == 1 + 2 * later
        assert _generated(second) >= later
        assert _generated(suite.server) >= later
    finally:
        await second.shutdown(1.0)
        await suite.close()
