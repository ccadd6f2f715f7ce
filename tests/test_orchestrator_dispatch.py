"""The Verifier (helix.orchestrator.dispatch) against real OracleService servers on
loopback, found through a real registry by the AgentPool, as runs.py uses them.

The registry is an embedded suite's; oracle agents are OracleService servers in this
process (registered by hand with a long lease, so their stats can be read) or
`helix oracle serve` processes that register themselves (to be killed with -9). Their
python oracles really sleep in worker processes, so batches are really in flight.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
from helix.common.config import Duration
from helix.common.server import HelixServer
from helix.genome import codec
from helix.genome.documents import parse_dna_text
from helix.genome.layout import Layout, normalise
from helix.oracle.serving import OracleService, oracle_service
from helix.oracle.settings import OracleSettings
from helix.orchestrator import wire
from helix.orchestrator.agents import AgentPool
from helix.orchestrator.dispatch import NoAgents, RunFailed, Verifier, VerifySettings
from helix.orchestrator.search import Verdicts
from helix.security.client import MintingTokenSource, bearer_interceptors

from harness import HELIX, Processes, clean_env
from registry_support import Suite, start_suite
from waiting import eventually

PASSED = candidate_pb2.VERDICT_STATUS_PASSED
ERROR = candidate_pb2.VERDICT_STATUS_ERROR
REAL_DNA = """
genes:
  - name: x
    real: {low: -5, high: 5, size: 3}
"""
BITS_DNA = """
genes:
  - name: b
    bits: {size: 8}
"""
SLOW_MODULE = """
import os
import time

HOLD = {hold}


def slow(genome):
    time.sleep({pause})
    while HOLD and os.path.exists(HOLD):  # held while the test's file exists
        time.sleep(0.005)
    return float(sum(genome["x"]))
"""
CONFIG = """
oracles:
  slow:
    kind: python
    entry_point: "slow:slow"
    path: .
    workers: {workers}
    capacity: {capacity}
    timeout: 60s
    cache: false
  sphere:
    kind: builtin
    capacity: {capacity}
"""


def dna(text: str) -> dna_pb2.Dna:
    check = parse_dna_text(text)
    assert check.valid, check.violations
    return normalise(check.dna)


def real_candidates(n: int, seed: int = 0) -> list[candidate_pb2.Candidate]:
    layout = Layout(dna(REAL_DNA))
    pop = layout.empty(n)
    pop.reals[:] = np.random.default_rng(seed).uniform(-5, 5, size=(n, 3))
    found = codec.to_candidates(layout, pop, generation=0, parent_ids=[()] * n)
    assert len({c.id for c in found}) == n
    return found


# Agents are processes: on a loaded machine they start slowly.
pytestmark = pytest.mark.timeout(150)


def oracle_dir(
    folder: Path, *, pause: float, workers: int = 2, capacity: int = 8, hold: Path | None = None
) -> Path:
    """An oracle configuration: `slow` (python, sleeps `pause` s per candidate, then waits
    while the file `hold` exists) and the builtin `sphere`; `capacity` changes both
    oracles' config_hash."""
    folder.mkdir(parents=True, exist_ok=True)
    module = SLOW_MODULE.replace("{pause}", repr(pause)).replace("{hold}", repr(str(hold or "")))
    (folder / "slow.py").write_text(module)
    text = CONFIG.replace("{workers}", str(workers)).replace("{capacity}", str(capacity))
    (folder / "oracles.yaml").write_text(text)
    return folder / "oracles.yaml"


class Recorder:
    """The `record` callback of a Verifier: every verdict it was given, in order."""

    def __init__(self) -> None:
        self.verdicts: list[candidate_pb2.Verdict] = []

    def __call__(self, verdicts: Verdicts) -> None:
        for i, raw in enumerate(verdicts.raws):
            verdict = candidate_pb2.Verdict.FromString(raw)
            # The columns the run reads agree with the verdict's bytes.
            assert verdicts.ids[i] == verdict.candidate_id
            assert verdicts.statuses[i] == verdict.status
            assert verdicts.scores[i] == verdict.score
            assert verdicts.cached[i] == verdict.cached
            self.verdicts.append(verdict)

    def counts(self) -> Counter[str]:
        return Counter(v.candidate_id for v in self.verdicts)


async def feed(
    candidates: list[candidate_pb2.Candidate], chunk: int = 50
) -> AsyncIterator[tuple[list[bytes], list[str]]]:
    """The candidates as the Verifier takes them: serialised, with their ids."""
    for start in range(0, len(candidates), chunk):
        part = candidates[start : start + chunk]
        yield [c.SerializeToString() for c in part], [c.id for c in part]
        await asyncio.sleep(0)


class World:
    """The registry suite, oracle agents, and the pool that sees them."""

    def __init__(self, suite: Suite, processes: Processes, tmp_path: Path) -> None:
        self.suite = suite
        self.processes = processes
        self.tmp_path = tmp_path
        self.services: dict[str, tuple[HelixServer, OracleService]] = {}
        signer = suite.server.security.signer
        reads = MintingTokenSource(signer, "orchestrator", ["agents.read"])
        calls = MintingTokenSource(signer, "orchestrator", ["verify", "oracles.read"])
        self.pool = AgentPool(
            lambda: grpc.aio.insecure_channel(
                suite.server.address, interceptors=bearer_interceptors(reads)
            ),
            lambda address: grpc.aio.insecure_channel(
                address, interceptors=bearer_interceptors(calls)
            ),
        )
        self.registry = suite.stub("oracles-admin", ("agents.read", "agents.write"))

    async def in_process(
        self, start_server: Callable[..., Any], agent_id: str, config: Path, **settings: Any
    ) -> OracleService:
        """An OracleService server in this process, registered as agent `agent_id`."""
        service = oracle_service(
            OracleSettings(
                port=0,
                oracle_config=config,
                oracle_reports_dir=config.parent / "reports",
                **settings,
            )
        )
        server = await start_server([service.binding], grace_period=Duration(1))
        self.services[agent_id] = (server, service)
        await self.register(agent_id, server.address)
        return service

    async def process(self, agent_id: str, config: Path) -> Any:
        """`helix oracle serve`, registering itself with the suite's registry."""
        argv = [HELIX, "oracle", "serve", "--port", "0", "--oracle-config", str(config)]
        argv += ["--registry-address", self.suite.server.address, "--agent-id", agent_id]
        env = clean_env({"auth_hs256_dir": self.suite.config.key_dir})
        return await self.processes.start(argv, env, name=agent_id)

    async def seen(self, oracle: str, count: int) -> list[registry_pb2.Agent]:
        """Until `count` agents hosting `oracle` take work in the pool (all SERVING: a
        DEGRADED one is left out while another is SERVING). The agents' startup is slow on
        a loaded machine, hence the long wait; a timeout names every agent and its health."""

        def found() -> list[registry_pb2.Agent] | None:
            agents = self.pool.oracles(oracle)
            return agents if len(agents) == count else None

        def known() -> str:
            return ", ".join(
                f"{a.name} {registry_pb2.AgentHealth.Name(a.health)}"
                for a in self.pool.informer.agents()
            )

        try:
            return await eventually(found, 45, what=f"{count} agents hosting {oracle}")
        except AssertionError as failure:
            raise AssertionError(f"{failure}; the pool knows: {known() or 'none'}") from None

    async def register(self, agent_id: str, endpoint: str) -> None:
        """An oracle agent in the registry (a lease of 300 s) at `endpoint`."""
        agent = registry_pb2.Agent(
            kind=registry_pb2.AGENT_KIND_ORACLE, endpoint=endpoint, capacity=8
        )
        agent.oracle.oracles.extend(["oracles/slow", "oracles/sphere"])
        agent.ttl.seconds = 300
        await self.registry.RegisterAgent(
            registry_pb2.RegisterAgentRequest(
                agent_id=agent_id, agent=agent, request_id=f"register-{agent_id}"
            )
        )

    async def config_hash(self, agent: registry_pb2.Agent, oracle: str) -> str:
        stub = oracle_pb2_grpc.OracleServiceStub(self.pool.channel(agent))
        found = await stub.GetOracle(oracle_pb2.GetOracleRequest(name=oracle), timeout=10)
        return found.oracle.config_hash


@pytest.fixture
async def world(tmp_path: Path, processes: Processes) -> AsyncIterator[World]:
    suite = await start_suite(tmp_path / "registry")
    made = World(suite, processes, tmp_path)
    await made.pool.start()
    try:
        yield made
    finally:
        await made.pool.close()
        await processes.close()
        await suite.close()


def sphere(candidate: candidate_pb2.Candidate) -> float:
    return float(sum(x * x for x in candidate.genome.reals))


# --- a candidate that keeps failing -------------------------------------------------------


async def test_a_batch_that_always_misses_its_deadline_is_error_after_max_attempts(
    world: World, start_server: Callable[..., Any]
) -> None:
    config = oracle_dir(world.tmp_path / "slow", pause=3.0, workers=4)
    await world.in_process(start_server, "slow-a", config)
    (agent,) = await world.seen("oracles/slow", 1)
    settings = VerifySettings(batch_timeout=0.3, max_attempts=3, wait_timeout=60)
    verifier = Verifier(
        world.pool,
        "oracles/slow",
        await world.config_hash(agent, "oracles/slow"),
        dna(REAL_DNA),
        settings,
    )
    candidates = real_candidates(3)
    recorder = Recorder()
    try:
        async with asyncio.timeout(45):  # never retried forever
            await verifier.verify(feed(candidates), recorder)
    finally:
        await verifier.close()
    assert recorder.counts() == Counter(c.id for c in candidates)  # each exactly once
    assert {v.status for v in recorder.verdicts} == {ERROR}
    for verdict in recorder.verdicts:
        assert "3 attempts failed" in verdict.message, verdict.message
        assert "deadline" in verdict.message, verdict.message
    assert verifier.resent == len(candidates) * (settings.max_attempts - 1)
    assert verifier.streams_opened == settings.max_attempts
    assert world.pool.outstanding.get(agent.name, 0) == 0


# --- an agent that goes away mid-batch ----------------------------------------------------


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
async def test_every_candidate_is_recorded_once_when_an_agent_goes_away_mid_batch(
    world: World, how: str
) -> None:
    config = oracle_dir(world.tmp_path / "oracles", pause=0.01, workers=2)
    doomed = await world.process("oracle-a", config)
    await world.process("oracle-b", config)
    agents = await world.seen("oracles/slow", 2)
    config_hashes = {await world.config_hash(a, "oracles/slow") for a in agents}
    assert len(config_hashes) == 1
    verifier = Verifier(
        world.pool,
        "oracles/slow",
        config_hashes.pop(),
        dna(REAL_DNA),
        VerifySettings(max_batch=10, batch_timeout=30, max_attempts=4, wait_timeout=60),
    )
    candidates = real_candidates(600)
    recorder = Recorder()
    killed: list[int] = []

    def holding() -> bool:
        return len(recorder.verdicts) >= 60 and world.pool.outstanding.get("agents/oracle-a", 0) > 0

    async def kill_mid_batch() -> None:
        while True:
            await eventually(holding, 30, what="oracle-a to hold a batch", interval=0.002)
            if how != "kill -9":
                break
            # Frozen first, so it dies holding a batch (it might answer between the look
            # and the kill); if it answered meanwhile, let it go on and look again.
            doomed.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.05)  # answers already on the wire arrive
            if holding():
                break
            doomed.send_signal(signal.SIGCONT)
        killed.append(len(recorder.verdicts))
        if how == "kill -9":
            await doomed.kill()
        else:
            await doomed.stop()  # drains: answers what it holds, then ends its streams

    killer = asyncio.create_task(kill_mid_batch())
    try:
        async with asyncio.timeout(50):
            await verifier.verify(feed(candidates), recorder)
        await killer
    finally:
        killer.cancel()
        await verifier.close()
    assert killed, "oracle-a was not killed during the verification"
    assert killed[0] < len(candidates)
    counts = recorder.counts()
    assert counts == Counter(c.id for c in candidates), [i for i, n in counts.items() if n != 1]
    assert {v.status for v in recorder.verdicts} == {PASSED}
    by_id = {v.candidate_id: v.score for v in recorder.verdicts}
    for c in candidates:
        assert by_id[c.id] == pytest.approx(sum(c.genome.reals), rel=1e-12)
    if how == "kill -9":
        assert verifier.resent > 0  # the killed agent's batches were re-sent


async def test_an_agent_that_leaves_the_registry_mid_batch_loses_its_batches(
    world: World, start_server: Callable[..., Any]
) -> None:
    """Deregistered while it holds batches (it still runs): its streams are dropped, its
    channel closed, its batches re-sent to the other agent, each verdict recorded once,
    and a late answer from it is not counted."""
    # Answers are held while `hold` exists: oracle-a surely holds a batch when it leaves
    # (without it, the batch could be answered between the check and the deregistration).
    hold = world.tmp_path / "hold"
    config = oracle_dir(world.tmp_path / "oracles", pause=0.01, workers=2, hold=hold)
    leaving = await world.in_process(start_server, "oracle-a", config)
    await world.in_process(start_server, "oracle-b", config)
    agents = await world.seen("oracles/slow", 2)
    verifier = Verifier(
        world.pool,
        "oracles/slow",
        await world.config_hash(agents[0], "oracles/slow"),
        dna(REAL_DNA),
        VerifySettings(max_batch=10, batch_timeout=30, wait_timeout=60),
    )
    candidates = real_candidates(400, seed=5)
    recorder = Recorder()
    left: list[int] = []

    async def leave_mid_batch() -> None:
        await eventually(
            lambda: len(recorder.verdicts) >= 40, 30, what="some verdicts", interval=0.002
        )
        await asyncio.to_thread(hold.touch)
        try:
            await eventually(
                lambda: world.pool.outstanding.get("agents/oracle-a", 0) > 0,
                30,
                what="oracle-a to hold a batch",
                interval=0.002,
            )
            left.append(len(recorder.verdicts))
            await world.registry.DeregisterAgent(
                registry_pb2.DeregisterAgentRequest(name="agents/oracle-a")
            )
            await eventually(lambda: verifier.resent > 0, 30, what="oracle-a's batches re-sent")
        finally:
            await asyncio.to_thread(hold.unlink, missing_ok=True)

    leaver = asyncio.create_task(leave_mid_batch())
    try:
        async with asyncio.timeout(50):
            await verifier.verify(feed(candidates), recorder)
        await leaver
        served_before = leaving.host.stats.batches
        # The next generation goes to oracle-b alone.
        again = real_candidates(100, seed=6)
        async with asyncio.timeout(30):
            await verifier.verify(feed(again), recorder)
    finally:
        leaver.cancel()
        await verifier.close()
    assert left, "oracle-a did not leave during the verification"
    assert recorder.counts() == Counter(c.id for c in [*candidates, *again])
    assert {v.status for v in recorder.verdicts} == {PASSED}
    assert verifier.resent > 0
    assert leaving.host.stats.batches == served_before
    assert [a.name for a in world.pool.oracles("oracles/slow")] == ["agents/oracle-b"]


async def test_batches_stay_within_the_credit_an_agent_grants(
    world: World, start_server: Callable[..., Any]
) -> None:
    """An agent granting 3 candidates of credit gets many small batches, never more than
    it granted (it would end the stream with CREDIT_EXCEEDED): nothing is re-sent."""
    service = await world.in_process(
        start_server, "narrow", oracle_dir(world.tmp_path / "o", pause=0.0, capacity=3)
    )
    (agent,) = await world.seen("oracles/sphere", 1)
    verifier = Verifier(
        world.pool,
        "oracles/sphere",
        await world.config_hash(agent, "oracles/sphere"),
        dna(REAL_DNA),
    )
    candidates = real_candidates(300, seed=8)
    recorder = Recorder()
    try:
        async with asyncio.timeout(30):
            await verifier.verify(feed(candidates, chunk=7), recorder)
    finally:
        await verifier.close()
    assert recorder.counts() == Counter(c.id for c in candidates)
    assert {v.status for v in recorder.verdicts} == {PASSED}
    assert verifier.resent == 0
    assert verifier.streams_opened == 1
    assert service.host.stats.batches >= 100  # 300 candidates, at most 3 at a time


async def test_a_stream_the_agent_closed_while_idle_is_reopened_for_the_next_generation(
    world: World, start_server: Callable[..., Any]
) -> None:
    """Between generations the stream idles; the agent ends it (STREAM_IDLE). The next
    generation opens another and every candidate still gets one verdict."""
    service = await world.in_process(
        start_server,
        "idle",
        oracle_dir(world.tmp_path / "o", pause=0.0),
        oracle_stream_idle_timeout=Duration(0.3),
    )
    (agent,) = await world.seen("oracles/sphere", 1)
    verifier = Verifier(
        world.pool,
        "oracles/sphere",
        await world.config_hash(agent, "oracles/sphere"),
        dna(REAL_DNA),
    )
    recorder = Recorder()
    generations = [real_candidates(50, seed=20 + g) for g in range(3)]
    try:
        for generation in generations:
            async with asyncio.timeout(30):
                await verifier.verify(feed(generation), recorder)
            await eventually(
                lambda: not service.servicer.streams, 10, what="the agent to end the idle stream"
            )
    finally:
        await verifier.close()
    assert recorder.counts() == Counter(c.id for g in generations for c in g)
    assert {v.status for v in recorder.verdicts} == {PASSED}
    assert verifier.streams_opened == 3


# --- agents that must not be used ---------------------------------------------------------


async def test_a_dna_the_oracle_refuses_fails_the_run(
    world: World, start_server: Callable[..., Any]
) -> None:
    config = oracle_dir(world.tmp_path / "oracles", pause=0.0)
    await world.in_process(start_server, "sphere-a", config)
    (agent,) = await world.seen("oracles/sphere", 1)
    bits = dna(BITS_DNA)
    layout = Layout(bits)
    pop = layout.empty(5)
    candidates = codec.to_candidates(layout, pop, generation=0, parent_ids=[()] * 5)
    verifier = Verifier(
        world.pool, "oracles/sphere", await world.config_hash(agent, "oracles/sphere"), bits
    )
    recorder = Recorder()
    try:
        with pytest.raises(RunFailed) as caught:
            async with asyncio.timeout(30):
                await verifier.verify(feed(candidates), recorder)
    finally:
        await verifier.close()
    assert "agents/sphere-a" in str(caught.value)
    assert "refused the run's DNA" in str(caught.value)
    assert recorder.verdicts == []


async def test_an_agent_with_another_config_hash_is_not_used(
    world: World, start_server: Callable[..., Any]
) -> None:
    pinned = await world.in_process(
        start_server, "oracle-a", oracle_dir(world.tmp_path / "a", pause=0.0, capacity=8)
    )
    other = await world.in_process(
        start_server, "oracle-b", oracle_dir(world.tmp_path / "b", pause=0.0, capacity=9)
    )
    agents = {a.name: a for a in await world.seen("oracles/sphere", 2)}
    config_hash = await world.config_hash(agents["agents/oracle-a"], "oracles/sphere")
    assert config_hash != await world.config_hash(agents["agents/oracle-b"], "oracles/sphere")
    verifier = Verifier(world.pool, "oracles/sphere", config_hash, dna(REAL_DNA))
    candidates = real_candidates(400, seed=3)
    recorder = Recorder()
    try:
        async with asyncio.timeout(30):
            await verifier.verify(feed(candidates, chunk=20), recorder)
        # A second generation on the same verifier: still only the pinned agent.
        again = real_candidates(100, seed=4)
        async with asyncio.timeout(30):
            await verifier.verify(feed(again), recorder)
    finally:
        await verifier.close()
    assert recorder.counts() == Counter(c.id for c in [*candidates, *again])
    by_id = {v.candidate_id: v for v in recorder.verdicts}
    for c in [*candidates, *again]:
        assert by_id[c.id].status == PASSED
        assert by_id[c.id].score == pytest.approx(sphere(c), rel=1e-12)
    assert verifier.streams_opened == 1
    assert sum(pinned.host.stats.verified.values()) == 500
    assert other.host.stats.batches == 0
    assert sum(other.host.stats.verified.values()) == 0


async def test_with_no_usable_agent_the_verifier_gives_up_after_its_wait_timeout(
    world: World, start_server: Callable[..., Any]
) -> None:
    """Only an agent of another configuration: nothing can verify, and it says so."""
    await world.in_process(
        start_server, "oracle-b", oracle_dir(world.tmp_path / "b", pause=0.0, capacity=9)
    )
    await world.seen("oracles/sphere", 1)
    verifier = Verifier(
        world.pool,
        "oracles/sphere",
        "0" * 64,
        dna(REAL_DNA),
        VerifySettings(wait_timeout=1.0),
    )
    recorder = Recorder()
    try:
        with pytest.raises(NoAgents, match="oracles/sphere"):
            async with asyncio.timeout(30):
                await verifier.verify(feed(real_candidates(5)), recorder)
    finally:
        await verifier.close()
    assert recorder.verdicts == []


async def test_an_unreachable_agent_does_not_keep_the_verifier_waiting_forever(
    world: World,
) -> None:
    """Its lease is long and it never answers: after wait_timeout, NoAgents (the run
    fails with a clear error), as with no agent at all."""
    await world.register("ghost", "127.0.0.1:1")
    await world.seen("oracles/sphere", 1)
    verifier = Verifier(
        world.pool,
        "oracles/sphere",
        "0" * 64,
        dna(REAL_DNA),
        VerifySettings(wait_timeout=2.5),
    )
    recorder = Recorder()
    try:
        with pytest.raises(NoAgents, match="oracles/sphere"):
            async with asyncio.timeout(8):
                await verifier.verify(feed(real_candidates(5)), recorder)
    finally:
        await verifier.close()
    assert recorder.verdicts == []


# --- an agent that answers with bytes that are not the contract's -------------------------


class RogueOracle:
    """A real gRPC server that speaks VerifyStream's framing but answers every batch (or
    its credit) with bytes that do not parse as the contract's messages."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.batches = 0
        self.server = grpc.aio.server()
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.stream_stream_rpc_method_handler(
            self._verify_stream
        )
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "helix.v1.OracleService", {"VerifyStream": handler}
                ),
            )
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def _credit(self, n: int) -> bytes:
        if self.mode == "credit":
            return wire.RawVerifyStreamResponse(credit=b"\xff\xff").SerializeToString()
        credit = oracle_pb2.VerifyCredit(candidates=n)
        return oracle_pb2.VerifyStreamResponse(credit=credit).SerializeToString()

    async def _verify_stream(
        self, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[bytes]:
        opened = False
        async for data in requests:
            if not opened:
                opened = True
                yield self._credit(50)
                continue
            batch = oracle_pb2.VerifyStreamRequest.FromString(data).batch
            self.batches += 1
            if self.mode == "garbage":  # not a VerifyStreamResponse at all
                yield b"\xff\xff\xff\xff"
            else:  # a VerdictBatch whose verdicts are not Verdicts (bad UTF-8 in an id)
                bad = [b"\x0a\x02\xff\xfe"] * len(batch.candidates)
                answer = wire.RawVerdictBatch(batch_id=batch.batch_id, verdicts=bad)
                yield wire.RawVerifyStreamResponse(
                    verdicts=answer.SerializeToString()
                ).SerializeToString()
            yield self._credit(len(batch.candidates))


@pytest.mark.parametrize("mode", ["garbage", "verdicts", "credit"])
async def test_an_agent_answering_bytes_that_do_not_parse_loses_no_candidate(
    world: World, start_server: Callable[..., Any], mode: str
) -> None:
    """An oracle agent whose responses (or verdicts, or credit) do not parse: its stream is
    dropped and its batches go to the other agent; every candidate is recorded exactly once
    (never lost, never an exception out of the Verifier)."""
    rogue = RogueOracle(mode)
    await rogue.server.start()
    try:
        await world.register("rogue", rogue.address)
        await world.in_process(start_server, "good", oracle_dir(world.tmp_path / "o", pause=0.0))
        agents = await world.seen("oracles/sphere", 2)
        good = next(a for a in agents if a.name == "agents/good")
        verifier = Verifier(
            world.pool,
            "oracles/sphere",
            await world.config_hash(good, "oracles/sphere"),
            dna(REAL_DNA),
            VerifySettings(max_batch=20, max_attempts=6, wait_timeout=60),
        )
        candidates = real_candidates(400, seed=3)
        recorder = Recorder()
        try:
            async with asyncio.timeout(60):
                await verifier.verify(feed(candidates, chunk=40), recorder)
        finally:
            await verifier.close()
        assert recorder.counts() == Counter(c.id for c in candidates)  # each exactly once
        assert {v.status for v in recorder.verdicts} <= {PASSED, ERROR}
        assert mode == "credit" or rogue.batches > 0  # the rogue did get work, and lost none
    finally:
        await rogue.server.stop(0)
