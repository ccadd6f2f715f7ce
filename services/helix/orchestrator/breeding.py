"""Breeding a run's generations on the generator agents.

- The DNA of a named run is resolved once (GetDna on a generator serving it) and pinned.
- A generation is one Generate stream, or — with several generators that serve ranges
  (label `helix.dev/generate-ranges`) and a generation of several chunks — ranges of whole
  chunks bred at once, one per generator (GenerateRequest.offset/limit), joined in
  position order, so the candidates are exactly those one generator would stream.
- A stream that fails is asked again of another generator (Generate's output is a pure
  function of its request), skipping what was received; a generator that refuses the
  request (INVALID_ARGUMENT) fails the run, one that keeps failing too, after bounded tries.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
from helix.agents.support import describe
from helix.common.aio import cancel_and_wait
from helix.genome.layout import normalise
from helix.orchestrator import wire
from helix.orchestrator.agents import AgentPool, cancelled_by_channel
from helix.orchestrator.dispatch import NoAgents, RunFailed

log = logging.getLogger("helix.orchestrator")

GENERATE_ATTEMPTS = 5
# Generators that serve GenerateRequest.offset/limit say so with this label
# (helix.generator.agent.RANGES_LABEL): only they get a range of a generation.
RANGES_LABEL = "helix.dev/generate-ranges"


GENERATE = "/helix.v1.GeneratorService/Generate"
# A generation's candidates as they are bred: serialised, with their ids.
Bred = tuple[list[bytes], list[str]]


def _ranged(request: Any) -> bool:
    return bool(request.offset or request.limit)


def _serves_ranges(agent: registry_pb2.Agent) -> bool:
    return agent.labels.get(RANGES_LABEL) == "true"


@dataclass(slots=True)
class BreedingPlan:
    """What a run learned about breeding its DNA: the generators' chunk size (from their
    GenerateResponse.chunk_size; 0 until known)."""

    chunk_size: int = 0


def _failed(agent: registry_pb2.Agent, error: BaseException, name: str) -> str:
    """Why a Generate call failed, to fail over from; raises when it must not: this task
    cancelled (re-raised) or the request refused (RunFailed)."""
    if isinstance(error, asyncio.CancelledError):
        if not cancelled_by_channel():
            raise error
        return "it left"
    assert isinstance(error, grpc.aio.AioRpcError)
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        raise RunFailed(
            f"{agent.name} refused to generate {name or 'the DNA'}: {error.details()}"
        ) from None
    return describe(error)


class Breeder:
    """Generate and GetDna on the pool's generators, for every run of an orchestrator."""

    def __init__(self, pool: AgentPool, *, wait_timeout: float, generate_timeout: float) -> None:
        self.pool = pool
        self.wait_timeout = wait_timeout
        self.generate_timeout = generate_timeout
        self.splits = 0  # generations bred in ranges across generators (metrics)

    def ranges(self, count: int, plan: BreedingPlan) -> list[tuple[int, int]]:
        """How to split a generation of `count` across the live generators: ranges of
        whole chunks, one per generator (at most), or the whole when one is enough."""
        size = plan.chunk_size
        chunks = -(-count // size) if size else 1
        parts = min(sum(1 for a in self.pool.generators() if _serves_ranges(a)), chunks)
        if parts <= 1:
            return [(0, 0)]
        per = -(-chunks // parts)
        return [(k * size, min((k + per) * size, count) - k * size) for k in range(0, chunks, per)]

    async def candidates(self, request: Any, plan: BreedingPlan) -> AsyncIterator[Bred]:
        """The generation's candidates in output order (serialised, with their ids), for a
        GenerateRequest as a `wire.RawGenerateRequest`. With several generators live, a
        generation of several chunks is split into ranges (GenerateRequest.offset/limit)
        bred at once, one per generator; each range is streamed as soon as those before it
        are complete, so the order — and the run — is the same as from one generator."""
        ranges = self.ranges(request.count, plan)
        if len(ranges) == 1:
            async for candidates in self._generate(request, plan):
                yield candidates
            return
        queues: list[asyncio.Queue[Bred | BaseException | None]] = [asyncio.Queue() for _ in ranges]

        async def fill(offset: int, limit: int, queue: asyncio.Queue[Any]) -> None:
            part = type(request)()
            part.CopyFrom(request)
            part.offset, part.limit = offset, limit
            end: BaseException | None = RunFailed(f"breeding range {offset}+{limit} stopped")
            try:
                async for candidates in self._generate(part, plan):
                    queue.put_nowait(candidates)  # at most one generation, held anyway
                end = None
            except Exception as failure:  # handed to the consumer, raised there
                end = failure
            finally:
                queue.put_nowait(end)  # always: the consumer never waits on a dead range

        self.splits += 1
        tasks = [
            asyncio.create_task(fill(offset, limit, queue), name=f"generate {offset}+{limit}")
            for (offset, limit), queue in zip(ranges, queues, strict=True)
        ]
        try:
            for queue in queues:
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            await cancel_and_wait(tasks)

    async def _generate(self, request: Any, plan: BreedingPlan) -> AsyncIterator[Bred]:
        """The candidates of the request (its range), streamed; on a generator's failure
        the same request goes to another (its output is a pure function of the request:
        those already received are skipped)."""
        received = 0
        failures = 0
        rng = random.Random()
        name = request.dna_name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        while True:
            seen = self.pool.version
            agents = self.pool.generators()
            if _ranged(request):
                agents = [a for a in agents if _serves_ranges(a)]
            if not agents:
                if loop.time() > deadline:
                    raise NoAgents(f"no live generator for {self.wait_timeout:g}s")
                await self.pool.wait_changed(1.0, seen)
                continue
            deadline = loop.time() + self.wait_timeout
            agent = self.pool.pick(agents, rng)
            # Raw messages (wire.py): the parents go out and the candidates come back as
            # the bytes they are.
            generate = self.pool.channel(agent).unary_stream(
                GENERATE,
                request_serializer=wire.serialize,
                response_deserializer=wire.RawGenerateResponse.FromString,
            )
            call = generate(request, timeout=self.generate_timeout)
            self.pool.add_outstanding(agent.name, 1)
            skip = received
            try:
                async for response in call:
                    plan.chunk_size = response.chunk_size or plan.chunk_size
                    records = list(response.candidates)
                    dropped = min(skip, len(records))
                    records, skip = records[dropped:], skip - dropped
                    if records:
                        received += len(records)
                        try:
                            ids = wire.candidate_ids(records)
                        except DecodeError:
                            raise RunFailed(
                                f"{agent.name} sent a candidate that is not a Candidate message"
                            ) from None
                        yield records, ids
                return
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
                why = _failed(agent, error, name)
                failures += 1
                if failures >= GENERATE_ATTEMPTS * 4:
                    raise RunFailed(f"Generate kept failing; last: {why}") from None
                log.info("Generate on %s failed (%s); trying again", agent.name, why)
                await asyncio.sleep(min(0.1 * failures, 2.0))
            finally:
                self.pool.add_outstanding(agent.name, -1)
                call.cancel()

    async def resolve_dna(self, name: str) -> tuple[dna_pb2.Dna, str]:
        last = ""
        for _ in range(GENERATE_ATTEMPTS):
            seen = self.pool.version
            agents = self.pool.generators(name)
            if not agents:
                await self.pool.wait_changed(1.0, seen)
                continue
            agent = random.choice(agents)
            stub = generator_pb2_grpc.GeneratorServiceStub(self.pool.channel(agent))
            try:
                found = await stub.GetDna(generator_pb2.GetDnaRequest(name=name), timeout=30)
            except asyncio.CancelledError:
                if not cancelled_by_channel():
                    raise
                last = f"{agent.name} left"
                continue
            except grpc.aio.AioRpcError as error:
                last = f"{agent.name}: {describe(error)}"
                if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise RunFailed(f"cannot resolve {name}: {last}") from None
                await asyncio.sleep(0.5)
                continue
            document = found.dna
            if not document.valid:
                problems = "; ".join(
                    f"{v.field_path}: {v.description}" for v in document.violations[:3]
                )
                raise RunFailed(f"{name} is not valid: {problems}")
            return normalise(document.dna), document.fingerprint
        raise RunFailed(f"cannot resolve {name}: {last or 'no generator answered'}")
