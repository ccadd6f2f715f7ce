"""GeneratorService: the DNA library over gRPC, and Generate streaming candidates in batches.

The servicer is thin: it validates each request, resolves the DNA (library or inline),
decodes and ranks the parents, and then streams what `strategies.generate` breeds. The
breeding and encoding of each chunk runs in the service's thread pool (NumPy releases
the GIL for the heavy parts), one chunk ahead of what the stream is sending, so the event
loop only moves finished messages; a cancelled stream stops after the chunk in progress.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
from helix.agents.presence import AgentPresence
from helix.common import errors, pages, reasons, rules
from helix.common.server import ServiceBinding
from helix.common.services import validate
from helix.generator import strategies
from helix.generator import validation as checks
from helix.generator.library import DnaLibrary, invalid_dna_error
from helix.genome import codec, genome_checks
from helix.genome.documents import check_dna_message, parse_dna_text
from helix.genome.layout import Layout, Population

DEFAULT_BATCH_SIZE = 256
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
STRATEGIES = ("alpha", "random")
# Room for a response's own fields around its candidates, under the message limit.
_RESPONSE_OVERHEAD = 64


# --- Generate -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parents:
    """The parents of a Generate call, ranked, one entry per candidate id.

    `population[i]` is the genome of `ids[i]`, `sources[i]` its Candidate as sent (copied
    unchanged, id filled in, when it is an elite); the first `scored` have a score
    (verdict PASSED or FAILED).
    """

    population: Population
    ids: list[str]
    sources: list[candidate_pb2.Candidate]
    scored: int

    def record(self, i: int) -> bytes:
        """Parent i's Candidate, serialised as it came (with its id), for an elite."""
        source = self.sources[i]
        if source.id == self.ids[i]:
            return source.SerializeToString(deterministic=True)
        copy = candidate_pb2.Candidate()
        copy.CopyFrom(source)
        copy.id = self.ids[i]
        return copy.SerializeToString(deterministic=True)


_SCORED = (candidate_pb2.VERDICT_STATUS_PASSED, candidate_pb2.VERDICT_STATUS_FAILED)


def _check_ids(ids: list[str], own: list[str], claimed: list[str]) -> None:
    """Every non-empty candidate.id and verdict.candidate_id equals the genome's hash."""
    wrong = []
    for i, (real, candidate_id, verdict_id) in enumerate(zip(ids, own, claimed, strict=True)):
        for name, value in (("candidate.id", candidate_id), ("verdict.candidate_id", verdict_id)):
            if value and value != real:
                text = f"must be the genome's content hash {real} (or empty), got {value}"
                path = f"parents[{i}].{name}"
                wrong.append(errors.FieldViolation(path, text, rules.WRONG_ID))
    if wrong:
        raise errors.InvalidArgument(
            "a parent's id is not its genome's content hash", wrong[:100], reason=reasons.WRONG_ID
        )


def rank_parents(layout: Layout, request: generator_pb2.GenerateRequest) -> Parents | None:
    """Decode the request's parents (INVALID_ARGUMENT if a genome does not fit the DNA or
    an id is not the genome's) and rank them, keeping one entry per candidate id: its
    best-ranked verdict, and of several messages the one whose serialisation sorts first.
    The result depends on the set of parents, never on their order or repeats."""
    if not request.parents:
        return None
    candidates, own, claimed, statuses, scores = [], [], [], [], []
    for parent in request.parents:  # one pass: each field access builds a Python object
        candidate, verdict = parent.candidate, parent.verdict
        candidates.append(candidate)
        own.append(candidate.id)
        claimed.append(verdict.candidate_id)
        statuses.append(verdict.status)
        scores.append(verdict.score)
    population = genome_checks.decode_genomes(
        layout, [c.genome for c in candidates], lambda i: f"parents[{i}].candidate.genome"
    )
    ids = codec.candidate_ids(codec.encode_genomes(layout, population))
    if own != ids or claimed != ids:
        _check_ids(ids, own, claimed)
    order = strategies.rank(ids, statuses, scores, request.objective).tolist()
    first: dict[str, int] = {}
    for i in order:
        first.setdefault(ids[i], i)
    keep = list(first.values())  # dicts keep insertion (rank) order
    sources = [candidates[i] for i in keep]
    if len(keep) < len(candidates):  # repeats: pick each id's message canonically
        by_id: dict[str, list[candidate_pb2.Candidate]] = {}
        for i, candidate in enumerate(candidates):
            by_id.setdefault(ids[i], []).append(candidate)
        sources = [
            min(by_id[ids[i]], key=lambda c: c.SerializeToString(deterministic=True)) for i in keep
        ]
    return Parents(
        population.take(keep),
        [ids[i] for i in keep],
        sources,
        sum(1 for i in keep if statuses[i] in _SCORED),
    )


def chunk_records(
    layout: Layout, chunk: strategies.Chunk, parents: Parents | None, generation: int
) -> list[bytes]:
    """The candidates of one chunk, serialised, in output order: elites (copied unchanged),
    then children with their id, generation and parent ids.

    Candidates are assembled as bytes (tag, length, payload) and parsed once per response,
    which costs a fraction of building a message per candidate.
    """
    out = [parents.record(i) for i in chunk.elites.tolist()] if parents is not None else []
    n = len(chunk.children)
    if not n:
        return out
    encodings = codec.encode_genomes(layout, chunk.children)
    lineage: list[tuple[str, ...]]
    if parents is not None:
        ids = parents.ids
        lineage = [
            () if a < 0 else (ids[a],) if b < 0 else (ids[a], ids[b])
            for a, b in chunk.parents.tolist()
        ]
    else:
        lineage = [()] * n
    return out + codec.encode_candidates(
        encodings, codec.candidate_ids(encodings), generation=generation, parent_ids=lineage
    )


def batches(records: Sequence[bytes], batch_size: int, max_bytes: int) -> Iterator[list[bytes]]:
    """Cut serialised candidates into batches of at most `batch_size` and `max_bytes`."""
    batch: list[bytes] = []
    size = _RESPONSE_OVERHEAD
    for record in records:
        item = len(record) + 6  # the field's tag and length prefix
        if batch and (len(batch) >= batch_size or size + item > max_bytes):
            yield batch
            batch, size = [], _RESPONSE_OVERHEAD
        batch.append(record)
        size += item
    if batch:
        yield batch


def response_bytes(batch: Sequence[bytes], generation: int, remaining: int) -> bytes:
    """A GenerateResponse serialised: the candidates, generation and remaining."""
    parts = [b"\x0a" + codec.varint(len(record)) + record for record in batch]
    if generation:
        parts.append(b"\x10" + codec.varint(generation))
    if remaining:
        parts.append(b"\x18" + codec.varint(remaining))
    return b"".join(parts)


@dataclass(slots=True)
class GeneratorStats:
    """What the generator has done, exported as `helix_generator_*` metrics. `chunks` is
    counted by the breeding threads as each chunk is finished, the rest on the loop."""

    chunks: int = 0
    candidates: int = 0
    streams: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def chunk_bred(self) -> None:
        with self._lock:
            self.chunks += 1


class _StatsCollector(Collector):
    def __init__(self, stats: GeneratorStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield CounterMetricFamily(
            "helix_generator_chunks", "Chunks of candidates bred.", value=stats.chunks
        )
        yield CounterMetricFamily(
            "helix_generator_candidates",
            "Candidates bred (elites included).",
            value=stats.candidates,
        )
        yield CounterMetricFamily(
            "helix_generator_streams", "Generate streams started.", value=stats.streams
        )


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """GeneratorService over a DNA library, breeding in `executor`."""

    def __init__(
        self,
        library: DnaLibrary,
        executor: concurrent.futures.Executor,
        *,
        limits: checks.GeneratorLimits = checks.DEFAULT_LIMITS,
        max_message_bytes: int = MAX_RESPONSE_BYTES,
        max_streams: int = 8,
    ) -> None:
        self.library = library
        self._executor = executor
        self._limits = limits
        # generator.proto promises responses under 4 MiB, the default limit of every
        # gRPC client, whatever this server may send.
        self._max_bytes = min(max_message_bytes, MAX_RESPONSE_BYTES)
        self._max_streams = max_streams
        self._streams = 0
        self.stats = GeneratorStats()

    async def _run(self, work: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def ListDnas(
        self, request: generator_pb2.ListDnasRequest, context: Any
    ) -> generator_pb2.ListDnasResponse:
        validate(lambda r: checks.check_list_dnas_request(r, self._limits), request)
        after = ""
        if request.page_token:
            after = pages.decode_page_token(request.page_token).after
        size = pages.page_size(
            request.page_size,
            default=self._limits.default_page_size,
            maximum=self._limits.max_page_size,
        )
        documents = [d for d in await self.library.list() if d.name > after]
        response = generator_pb2.ListDnasResponse()
        room = self._max_bytes - _RESPONSE_OVERHEAD - 2048
        for document in documents[:size]:
            room -= document.ByteSize() + 6
            if room < 0 and response.dnas:
                break
            response.dnas.append(document)
        if len(response.dnas) < len(documents):
            position = pages.PagePosition(response.dnas[-1].name)
            response.next_page_token = pages.encode_page_token(position)
        return response

    async def GetDna(
        self, request: generator_pb2.GetDnaRequest, context: Any
    ) -> generator_pb2.GetDnaResponse:
        validate(lambda r: checks.check_get_dna_request(r, self._limits), request)
        return generator_pb2.GetDnaResponse(dna=await self.library.get(request.name))

    async def ValidateDna(
        self, request: generator_pb2.ValidateDnaRequest, context: Any
    ) -> generator_pb2.ValidateDnaResponse:
        validate(lambda r: checks.check_validate_dna_request(r, self._limits), request)
        if request.WhichOneof("source") == "text":
            check = await asyncio.to_thread(parse_dna_text, request.text, request.filename)
        else:
            check = await asyncio.to_thread(check_dna_message, request.dna, request.filename)
        response = generator_pb2.ValidateDnaResponse(
            valid=check.valid, violations=check.violation_protos()
        )
        if check.normalised is not None:
            response.dna.CopyFrom(check.normalised)
            response.fingerprint = check.fingerprint
        return response

    async def _dna(self, request: generator_pb2.GenerateRequest) -> dna_pb2.Dna:
        if request.WhichOneof("dna_source") == "dna_name":
            return (await self.library.valid(request.dna_name)).dna
        check = await asyncio.to_thread(check_dna_message, request.dna, "")
        if check.normalised is None:
            raise invalid_dna_error("", "dna", check.violation_protos(), field_prefix="dna")
        return check.normalised

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: Any
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        # Thousands of parents take milliseconds to check: not on the event loop, and not in
        # the breeding threads either, where it would queue behind long chunks.
        await asyncio.to_thread(
            validate, lambda r: checks.check_generate_request(r, self._limits), request
        )
        if self._streams >= self._max_streams:
            raise errors.ResourceExhausted(
                f"this generator is serving its capacity of {self._max_streams} Generate "
                "streams; retry later or use another generator agent",
                retry_after=1.0,
                reason=reasons.GENERATOR_BUSY,
                metadata={"capacity": str(self._max_streams)},
            )
        self._streams += 1
        try:
            async with aclosing(self._generate(request)) as responses:
                async for response in responses:
                    yield response
        finally:
            self._streams -= 1

    async def _generate(
        self, request: generator_pb2.GenerateRequest
    ) -> AsyncGenerator[generator_pb2.GenerateResponse, None]:
        dna = await self._dna(request)
        kind = dna.strategy.WhichOneof("kind")
        if kind not in STRATEGIES:
            raise errors.FailedPrecondition(
                f"this generator does not implement the strategy {kind!r}",
                reason=reasons.STRATEGY_NOT_IMPLEMENTED,
            )
        layout = Layout(dna)
        parents = await self._run(lambda: rank_parents(layout, request))
        population = parents.population if parents is not None else None
        chunks = strategies.generate(
            layout,
            population,
            request.count,
            request.seed,
            request.generation,
            scored=parents.scored if parents is not None else None,
        )

        stats = self.stats
        stats.streams += 1
        batch_size = request.batch_size or DEFAULT_BATCH_SIZE
        parse = generator_pb2.GenerateResponse.FromString
        remaining = request.count

        def next_chunk() -> list[generator_pb2.GenerateResponse] | None:
            # In a worker thread; chunks are bred one after another, never two at once.
            nonlocal remaining
            chunk = next(chunks, None)
            if chunk is None:
                return None
            responses = []
            records = chunk_records(layout, chunk, parents, request.generation)
            stats.chunk_bred()
            for batch in batches(records, batch_size, self._max_bytes):
                remaining -= len(batch)
                responses.append(parse(response_bytes(batch, request.generation, remaining)))
            return responses

        pending = asyncio.ensure_future(self._run(next_chunk))
        try:
            while True:
                responses = await pending
                if responses is None:
                    return
                # Breed the next chunk while this one is being sent.
                pending = asyncio.ensure_future(self._run(next_chunk))
                for response in responses:
                    stats.candidates += len(response.candidates)
                    yield response
        finally:
            pending.cancel()


def generator_binding(
    library: DnaLibrary,
    *,
    workers: int = 2,
    max_message_bytes: int = MAX_RESPONSE_BYTES,
    capacity: int = 8,
    presence: AgentPresence | None = None,
) -> ServiceBinding:
    """GeneratorService on a server, with its breeding threads started and stopped alongside.

    `capacity` Generate streams are served at once (more get RESOURCE_EXHAUSTED with
    RetryInfo); it is what the agent advertises. With `presence`, the generator registers
    itself (kind generator, its strategies and the valid DNAs of its library at start) when
    the server starts, and deregisters when the drain begins.
    """
    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="helix-breed")
    servicer = GeneratorServicer(
        library, executor, max_message_bytes=max_message_bytes, max_streams=capacity
    )

    def add(server: grpc.aio.Server) -> None:
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server)

    async def announce() -> None:
        if presence is not None:
            details = presence.agent.generator
            details.strategies[:] = STRATEGIES
            details.dnas[:] = [d.name for d in await library.list() if d.valid]
            await presence.start()

    async def leave() -> None:
        if presence is not None:
            await presence.stop()

    async def stopped() -> None:
        await library.aclose()
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    return ServiceBinding(
        generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name,
        add,
        on_start=(announce,),
        on_shutdown=(leave,),
        on_stopped=(leave, stopped),  # leave again: a start that failed skips the drain
        add_metrics=lambda registry: registry.register(_StatsCollector(servicer.stats)),
    )
