"""The Breeder against real generator agents found through a real registry: a generator
that leaves in the middle of a Generate stream (deregistered: the pool closes its channel,
which grpc.aio reports to the caller as a cancellation) is failed over from — whole or
split in ranges — and the candidates are exactly those of an undisturbed stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from test_orchestrator_split import _second_generator

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.common.channel import create_channel
from helix.genome.documents import parse_dna_text
from helix.orchestrator.agents import ORCHESTRATOR_SCOPES, AgentPool
from helix.orchestrator.breeding import Breeder, BreedingPlan
from helix.security.client import MintingTokenSource, bearer_interceptors

from orchestrator_support import DNA_DIR, start_run_suite
from registry_support import Suite
from waiting import eventually

COUNT = 60_000


def _pool(suite: Suite) -> AgentPool:
    signer = suite.server.security.signer
    calls = MintingTokenSource(signer, "helix-orchestrator", ORCHESTRATOR_SCOPES)

    def dial(address: str) -> grpc.aio.Channel:
        return create_channel(address, interceptors=bearer_interceptors(calls))

    return AgentPool(lambda: dial(suite.server.address), dial)


def _request() -> generator_pb2.GenerateRequest:
    file = DNA_DIR / "rastrigin.yaml"
    dna = parse_dna_text(file.read_text(), file.name).dna
    return generator_pb2.GenerateRequest(dna=dna, count=COUNT, seed=3, generation=0, batch_size=200)


async def _ids(breeder: Breeder, plan: BreedingPlan, leave: asyncio.Event) -> list[str]:
    ids: list[str] = []
    async for records, batch_ids in breeder.candidates(_request(), plan):
        # Candidates come serialised, with the ids read from their bytes.
        assert candidate_pb2.Candidate.FromString(records[-1]).id == batch_ids[-1]
        ids += batch_ids
        if len(ids) >= COUNT // 10:
            leave.set()
    return ids


@pytest.mark.parametrize("chunk_size", [0, 1024], ids=["whole", "ranges"])
async def test_a_generator_that_leaves_mid_stream_is_failed_over_from(
    tmp_path: Path, chunk_size: int
) -> None:
    suite = await start_run_suite(tmp_path)
    second = await _second_generator(suite, tmp_path)
    pool = _pool(suite)
    await pool.start()
    try:
        await pool.informer.wait_synced()
        await eventually(lambda: len(pool.generators()) == 2, within=20, what="two generators")
        breeder = Breeder(pool, wait_timeout=30, generate_timeout=60)
        undisturbed = await _ids(breeder, BreedingPlan(), asyncio.Event())
        assert len(undisturbed) == COUNT

        leave = asyncio.Event()
        streaming = asyncio.create_task(_ids(breeder, BreedingPlan(chunk_size), leave))
        await asyncio.wait_for(leave.wait(), 30)
        busy = [name for name, n in pool.outstanding.items() if n > 0]
        assert busy, "no Generate stream in flight"
        admin = suite.stub("root", ("agents.read", "agents.write", "admin"))
        await admin.DeregisterAgent(registry_pb2.DeregisterAgentRequest(name=busy[0]))
        ids = await asyncio.wait_for(streaming, 60)
        assert ids == undisturbed
    finally:
        await pool.close()
        await second.shutdown(1.0)
        await suite.close()
