"""Helix as separate processes for the orchestrator's reliability tests: `helix registry
serve`, generator agents, oracle agents of a paced rastrigin oracle, and `helix
orchestrator serve`, all on 127.0.0.1 port 0 (harness.Cluster, `processes` shape), plus
what a client of the orchestrator needs: runs created with a fixed seed, watched, compared.

The oracle (tests/oracle_workers/paced.py) scores rastrigin and sleeps
PACED_ORACLE_SECONDS per candidate: each agent's speed is its own environment, not its
configuration, so agents of different speeds share one config_hash.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
from helix.genome.codec import genome_id
from helix.genome.documents import parse_dna_text

from harness import HELIX, Cluster, Member, clean_env
from waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
DNA_DIR = ROOT / "examples" / "dna"
PACED = Path(__file__).resolve().parent / "oracle_workers" / "paced.py"
ORACLE = "oracles/rastrigin"
RUN_SCOPES = ("runs.read", "runs.write")
PENDING = orchestrator_pb2.RUN_STATE_PENDING
RUNNING = orchestrator_pb2.RUN_STATE_RUNNING
SUCCEEDED = orchestrator_pb2.RUN_STATE_SUCCEEDED
FAILED = orchestrator_pb2.RUN_STATE_FAILED
CANCELLED = orchestrator_pb2.RUN_STATE_CANCELLED
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
# Python workers (2 per agent, 32 candidates in flight: a VerifyStream window of 16), so a
# generation of 100 goes out in several batches and a killed agent holds some of them.
ORACLE_CONFIG = """\
oracles:
  rastrigin:
    kind: python
    description: rastrigin, paced by PACED_ORACLE_SECONDS per candidate
    entry_point: paced:rastrigin
    batch: true
    workers: 2
    in_flight: 32
    timeout: 30s
    env: [PACED_ORACLE_SECONDS]
    objective: minimize
"""


def write_oracle_config(directory: Path) -> Path:
    """The paced oracle's configuration and module in `directory`; the config file."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(PACED, directory / "paced.py")
    config = directory / "oracles.yaml"
    config.write_text(ORACLE_CONFIG)
    return config


@dataclass(frozen=True)
class Outcome:
    """What must not depend on the agents: the run's counters and its best."""

    state: int
    evaluations: int
    duplicates: int
    generation: int
    best_id: str
    best_score: float

    @classmethod
    def of(cls, run: orchestrator_pb2.Run) -> Outcome:
        progress = run.progress
        return cls(
            run.state,
            progress.evaluations,
            progress.duplicates,
            progress.generation,
            progress.best.candidate.id,
            progress.best.verdict.score,
        )


class RunCluster(Cluster):
    """A `processes` cluster (registry and generators from harness.Cluster) plus oracle
    agents and a standalone orchestrator, all sharing the registry's HS256 key."""

    def __init__(
        self,
        data_dir: Path,
        *,
        generators: int = 1,
        settings: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(
            "processes",
            data_dir / "registry",
            generators=generators,
            dna_dir=DNA_DIR,
            settings=settings,
        )
        self.root = data_dir
        self.oracle_config = write_oracle_config(data_dir / "oracle-config")
        self._stubs: dict[str, orchestrator_pb2_grpc.OrchestratorServiceAsyncStub] = {}

    async def __aenter__(self) -> RunCluster:
        await self.start()
        return self

    async def add_oracle(
        self, agent_id: str, seconds: float = 0.001, *, config: Path | None = None
    ) -> Member:
        """An oracle agent hosting the paced rastrigin, `seconds` per candidate (and the
        oracles of `config` instead, when given)."""
        reports = self.root / f"reports-{agent_id}"
        argv = [HELIX, "oracle", "serve", "--port", "0"]
        argv += ["--oracle-config", str(config or self.oracle_config)]
        argv += ["--oracle-reports-dir", str(reports)]
        argv += ["--registry-address", self.address_of("registry"), "--agent-id", agent_id]
        env = clean_env({**self.settings, "auth_hs256_dir": self.key_dir})
        env["PACED_ORACLE_SECONDS"] = str(seconds)
        return await self._start_member(
            f"oracle-{agent_id}", argv, env, {"oracle"}, agent_id=agent_id
        )

    async def add_orchestrator(self, name: str = "orchestrator", **settings: object) -> Member:
        """`helix orchestrator serve` on its own data dir, registered as `name` (the member
        and agent id; several, on one etcd store, are replicas)."""
        argv = [HELIX, "orchestrator", "serve", "--port", "0"]
        argv += ["--data-dir", str(self.root / name)]
        argv += ["--registry-address", self.address_of("registry"), "--agent-id", name]
        env = clean_env({**self.settings, **settings, "auth_hs256_dir": self.key_dir})
        services = {"orchestrator"} if name == "orchestrator" else {name}
        return await self._start_member(name, argv, env, services, agent_id=name)

    def runs(
        self, subject: str = "alice", member: str = "orchestrator"
    ) -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
        """A stub of the orchestrator `member` for `subject` (runs.read, runs.write). A new
        channel for each address, so a restarted orchestrator is dialled afresh."""
        address = self.member(member).address
        key = f"{subject}@{address}"
        if key not in self._stubs:
            channel = self.channel("orchestrator", subject, RUN_SCOPES, address=address)
            self._stubs[key] = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        return self._stubs[key]

    async def warm_oracle(self, agent_id: str) -> None:
        """Verify one candidate on the oracle agent directly: it has answered a verdict
        (its python workers up, nothing failing) before a run counts on it — on a loaded
        machine an agent still starting took no part in a short run."""
        member = self.member(f"oracle-{agent_id}")
        channel = self.channel("oracle", "tester", ("verify",), address=member.address)
        stub = oracle_pb2_grpc.OracleServiceStub(channel)
        file = DNA_DIR / "rastrigin.yaml"
        dna = parse_dna_text(file.read_text(), file.name).dna
        genome = candidate_pb2.Genome(reals=[0.5] * 10)
        candidate = candidate_pb2.Candidate(id=genome_id(genome), genome=genome)
        request = oracle_pb2.VerifyRequest(oracle=ORACLE, dna=dna, candidates=[candidate])

        async def verified() -> oracle_pb2.VerifyResponse:
            return await stub.Verify(request, timeout=30)

        # (A freshly started agent has reset a first connection on a loaded machine.)
        try:
            response = await eventually(
                verified, 60, what=f"a verdict from {agent_id}", ignore=(grpc.aio.AioRpcError,)
            )
        except AssertionError as failure:  # say what became of the agent's process
            raise AssertionError(
                f"{failure}\n{member.process.describe('gave no verdict')}"
            ) from None
        assert len(response.verdicts) == 1, response

    async def agent(self, agent_id: str) -> registry_pb2.Agent:
        """The agent as the registry has it now."""
        response = await self.registry().GetAgent(
            registry_pb2.GetAgentRequest(name=f"agents/{agent_id}"), timeout=10
        )
        return response.agent


def run_request(
    evaluations: int, seed: int = 7, *, run_id: str = ""
) -> orchestrator_pb2.CreateRunRequest:
    """A run of dnas/rastrigin (population 100) on the paced rastrigin oracle."""
    run = orchestrator_pb2.Run(
        dna_name="dnas/rastrigin",
        oracle=ORACLE,
        objective=common_pb2.OBJECTIVE_MINIMIZE,
        budget=orchestrator_pb2.RunBudget(max_evaluations=evaluations),
        seed=seed,
    )
    return orchestrator_pb2.CreateRunRequest(
        run=run, run_id=run_id or f"r-{uuid.uuid4().hex[:12]}", request_id=uuid.uuid4().hex
    )


async def get_run(
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub, name: str
) -> orchestrator_pb2.Run:
    response = await stub.GetRun(orchestrator_pb2.GetRunRequest(name=name), timeout=10)
    return response.run


async def events(
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub,
    name: str,
    after: int = 0,
    within: float = 120.0,
) -> AsyncIterator[orchestrator_pb2.RunEvent]:
    """The run's events after `after`, replayed then live, to its terminal state."""
    call = stub.WatchRun(
        orchestrator_pb2.WatchRunRequest(name=name, after_sequence=after), timeout=within
    )
    try:
        async for response in call:
            yield response.event
    finally:
        call.cancel()


async def wait_generations(
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub, name: str, count: int
) -> orchestrator_pb2.RunEvent:
    """Until the run has completed `count` generations; the event of the last one."""
    async for event in events(stub, name):
        if event.HasField("generation_completed") and event.generation_completed.generation >= (
            count - 1
        ):
            return event
        if event.HasField("state_changed") and event.state_changed.state in TERMINAL:
            state = orchestrator_pb2.RunState.Name(event.state_changed.state)
            raise AssertionError(f"{name} ended ({state}) before {count} generations")
    raise AssertionError(f"{name}'s events ended before {count} generations")


async def finish(
    stub_of: Callable[[], orchestrator_pb2_grpc.OrchestratorServiceAsyncStub],
    name: str,
    within: float = 120.0,
) -> orchestrator_pb2.Run:
    """Poll GetRun (through `stub_of()`, which may change as the orchestrator restarts)
    until the run ends; the run. Transient UNAVAILABLE while a process restarts is
    ridden out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: orchestrator_pb2.Run | None = None
    while loop.time() < deadline:
        try:
            last = await get_run(stub_of(), name)
        except grpc.aio.AioRpcError as error:
            if error.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                raise
        else:
            if last.state in TERMINAL:
                return last
        await asyncio.sleep(0.2)
    shown = orchestrator_pb2.RunState.Name(last.state) if last is not None else "unknown"
    raise AssertionError(f"{name} did not end within {within}s (last state {shown})")


def _reported(path: Path, run: str) -> int:
    if not path.exists():
        return 0
    count = 0
    with path.open() as lines:
        for line in lines:
            if json.loads(line).get("run") == run:
                count += 1
    return count


async def reported(cluster: RunCluster, agent_id: str, run: str) -> int:
    """Verdicts the oracle agent `agent_id` reported for `run` so far (its verdicts.jsonl:
    the orchestrator names the run in its VerifyStream calls)."""
    path = cluster.root / f"reports-{agent_id}" / "verdicts.jsonl"
    return await asyncio.to_thread(_reported, path, run)
