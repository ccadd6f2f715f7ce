"""Orchestrator test support: an embedded suite whose agents register, stubs per principal,
runs created from the example DNAs, and watching a run to its end."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc

import helix.v1.common_pb2 as common_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
from helix.genome.documents import parse_dna_text
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint

from registry_support import Suite, start_suite

ROOT = Path(__file__).resolve().parent.parent
DNA_DIR = ROOT / "examples" / "dna"
RUN_SCOPES = ("runs.read", "runs.write")
TERMINAL = (
    orchestrator_pb2.RUN_STATE_SUCCEEDED,
    orchestrator_pb2.RUN_STATE_FAILED,
    orchestrator_pb2.RUN_STATE_CANCELLED,
)


async def start_run_suite(data_dir: Path, **overrides: Any) -> Suite:
    settings: dict[str, Any] = {
        "generator_self_register": True,
        "orchestrator_embedded": True,
        "generator_dna_dir": DNA_DIR,
    }
    settings.update(overrides)
    return await start_suite(data_dir, **settings)


def runs_stub(
    suite: Suite, subject: str = "alice", scopes: tuple[str, ...] = RUN_SCOPES
) -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
    token = mint(suite.server.security.signer, subject, scopes, 3600)
    channel = grpc.aio.insecure_channel(
        suite.server.address, interceptors=bearer_interceptors(StaticTokenSource(token))
    )
    suite.channels.append(channel)
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub = (
        orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    )
    return stub


def run_request(
    dna: str = "dnas/rastrigin",
    oracle: str = "oracles/rastrigin",
    *,
    evaluations: int = 2000,
    seed: int = 7,
    inline: bool = False,
    **fields: Any,
) -> orchestrator_pb2.CreateRunRequest:
    run = orchestrator_pb2.Run(
        oracle=oracle,
        objective=common_pb2.OBJECTIVE_MINIMIZE,
        budget=orchestrator_pb2.RunBudget(max_evaluations=evaluations),
        seed=seed,
        **fields,
    )
    if inline:
        file = DNA_DIR / f"{dna.removeprefix('dnas/')}.yaml"
        run.dna.CopyFrom(parse_dna_text(file.read_text(), file.name).dna)
    else:
        run.dna_name = dna
    return orchestrator_pb2.CreateRunRequest(run=run, request_id=uuid.uuid4().hex)


async def watch_to_end(
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub, name: str, after: int = 0
) -> list[orchestrator_pb2.RunEvent]:
    events = []
    async for response in stub.WatchRun(
        orchestrator_pb2.WatchRunRequest(name=name, after_sequence=after), timeout=120
    ):
        events.append(response.event)
    return events
