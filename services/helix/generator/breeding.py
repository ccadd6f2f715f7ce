"""Breeding for Generate: rank the parents, breed chunk after chunk, frame the responses.

Pure and synchronous (no grpc, no I/O), so the golden tests and the benchmark run exactly
what the service runs. The servicer resolves the DNA, calls `rank_parents` and `breed` in
its breeding threads, and streams what `breed` yields (streaming.py keeps one chunk
ahead). Candidates are assembled as bytes and parsed once per response, which costs a
fraction of building a message per candidate.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common import errors, reasons, rules
from helix.common.interceptors import Encoded
from helix.generator import strategies
from helix.generator.codec import encode_generate_response
from helix.generator.parent_records import ParentRecords, read_parents
from helix.generator.stats import GeneratorStats
from helix.genome import codec, genome_checks
from helix.genome.layout import IntArray, Layout, Population

STRATEGIES = ("alpha", "random")
DEFAULT_BATCH_SIZE = 256
# generator.proto promises responses under 4 MiB, the default limit of every gRPC client.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# Room for a response's own fields around its candidates, under the message limit.
RESPONSE_OVERHEAD = 64

_SCORED = (candidate_pb2.VERDICT_STATUS_PASSED, candidate_pb2.VERDICT_STATUS_FAILED)


def layout_for(dna: dna_pb2.Dna) -> Layout:
    """The layout to breed a valid, normalised `dna` with; FAILED_PRECONDITION when its
    strategy is not one this generator implements (a newer DNA than this generator).

    The same DNA gets the same layout object while it is among the last few used, so
    what breeding derives from a layout is computed once per DNA, not once per call."""
    kind = dna.strategy.WhichOneof("kind")
    if kind not in STRATEGIES:
        raise errors.FailedPrecondition(
            f"this generator does not implement the strategy {kind!r}",
            reason=reasons.STRATEGY_NOT_IMPLEMENTED,
        )
    encoded = dna.SerializeToString(deterministic=True)
    return _layout(encoded) if len(encoded) <= LAYOUT_CACHE_DNA_BYTES else Layout(dna)


# The layouts of the last few DNAs (a generator serves a few runs at a time), of DNAs
# small enough that a cached one saves more than it holds: at most 16 x 64 KiB of keys.
LAYOUT_CACHE_DNA_BYTES = 64 << 10


@functools.lru_cache(maxsize=16)
def _layout(dna: bytes) -> Layout:
    return Layout(dna_pb2.Dna.FromString(dna))


# --- the parents --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parents:
    """The parents of a Generate call, ranked, one entry per candidate id.

    `population[i]` is the genome of `ids[i]`, `sources[i]` its Candidate as sent (copied
    unchanged, id filled in, when it is an elite), `copies[i]` how many of the request's
    parents had that id (its weight in tournaments); the first `scored` have a score
    (verdict PASSED or FAILED).
    """

    population: Population
    ids: list[str]
    sources: Sequence[candidate_pb2.Candidate]
    scored: int
    copies: IntArray

    def record(self, i: int) -> bytes:
        """Parent i's Candidate, serialised as it came (with its id), for an elite."""
        source = self.sources[i]
        if source.id == self.ids[i]:
            return source.SerializeToString(deterministic=True)
        copy = candidate_pb2.Candidate()
        copy.CopyFrom(source)
        copy.id = self.ids[i]
        return copy.SerializeToString(deterministic=True)


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


class _Sources(Sequence[candidate_pb2.Candidate]):
    """The Candidate messages of some of a request's parents, read when asked for (only
    elites are)."""

    def __init__(self, parents: Sequence[candidate_pb2.ScoredCandidate], rows: list[int]):
        self._parents = parents
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, k: int) -> candidate_pb2.Candidate: ...
    @overload
    def __getitem__(self, k: slice) -> list[candidate_pb2.Candidate]: ...
    def __getitem__(
        self, k: int | slice
    ) -> candidate_pb2.Candidate | list[candidate_pb2.Candidate]:
        if isinstance(k, slice):
            return [self._parents[row].candidate for row in self._rows[k]]
        return self._parents[self._rows[k]].candidate


def rank_parents(
    layout: Layout,
    request: generator_pb2.GenerateRequest,
    records: ParentRecords | None = None,
) -> Parents | None:
    """Decode the request's parents (INVALID_ARGUMENT if a genome does not fit the DNA or
    an id is not the genome's) and rank them, keeping one entry per candidate id: its
    best-ranked verdict, and of several messages the one whose serialisation sorts first,
    with the number of messages that had the id as its copies. The result depends on the
    multiset of parents, never on their order.

    `records`: `ParentRecords.of(request)` when the caller has them (of this request,
    unchanged since), else they are read here."""
    parents = request.parents
    if not parents:
        return None
    own, claimed, statuses, scores, genomes = _parent_fields(request, records)
    population = genome_checks.decode_scan(
        layout, genomes, lambda i: f"parents[{i}].candidate.genome"
    )
    ids = codec.candidate_ids(codec.encode_genomes(layout, population))
    if own != ids or claimed != ids:
        _check_ids(ids, own, claimed)
    order = strategies.rank(ids, statuses, scores, request.objective).tolist()
    first: dict[str, int] = {}
    for i in order:
        first.setdefault(ids[i], i)
    keep = list(first.values())  # dicts keep insertion (rank) order
    counts = Counter(ids)
    rows = keep
    if len(keep) < len(ids):  # repeats: pick each repeated id's message canonically
        by_id: dict[str, list[int]] = {key: [] for key, count in counts.items() if count > 1}
        for i, candidate_id in enumerate(ids):
            if candidate_id in by_id:
                by_id[candidate_id].append(i)
        rows = [_canonical(parents, by_id[ids[i]]) if ids[i] in by_id else i for i in keep]
    kept_statuses = np.asarray(statuses, dtype=np.int64)[keep]
    return Parents(
        population.take(keep),
        [ids[i] for i in keep],
        _Sources(parents, rows),
        int(np.isin(kept_statuses, _SCORED).sum()),
        np.array([counts[ids[i]] for i in keep], dtype=np.int64),
    )


def _canonical(parents: Sequence[candidate_pb2.ScoredCandidate], rows: list[int]) -> int:
    """Of parents with one id, the (first) one whose Candidate's serialisation sorts first."""
    return min(rows, key=lambda j: parents[j].candidate.SerializeToString(deterministic=True))


def _parent_fields(
    request: generator_pb2.GenerateRequest, records: ParentRecords | None
) -> tuple[list[str], list[str], npt.ArrayLike, npt.ArrayLike, genome_checks.GenomeScan]:
    """Each parent's candidate.id, verdict.candidate_id, verdict.status and verdict.score,
    and the scan of their genomes: from the request's bytes when every parent reads
    cleanly there (the usual case, all rows at once), else parent by parent."""
    if records is None:
        records = read_parents(request)
    if records is not None and records.clean.all():
        return (
            records.own_ids(),
            records.claimed_ids(),
            records.statuses,
            records.scores,
            records.genomes(),
        )
    candidates, own, claimed, statuses, scores = [], [], [], [], []
    for parent in request.parents:  # one pass: each field access builds a Python object
        candidate, verdict = parent.candidate, parent.verdict
        candidates.append(candidate)
        own.append(candidate.id)
        claimed.append(verdict.candidate_id)
        statuses.append(verdict.status)
        scores.append(verdict.score)
    genomes = genome_checks.GenomeScan.of_genomes([c.genome for c in candidates])
    return own, claimed, statuses, scores, genomes


# --- the children -------------------------------------------------------------------------


def chunk_records(
    layout: Layout, chunk: strategies.Chunk, parents: Parents | None, generation: int
) -> list[bytes]:
    """The candidates of one chunk, serialised, in output order: elites (copied unchanged),
    then children with their id, generation and parent ids."""
    out = [parents.record(i) for i in chunk.elites.tolist()] if parents is not None else []
    if not len(chunk.children):
        return out
    return out + codec.encode_children(
        layout,
        chunk.children,
        generation=generation,
        lineage=chunk.parents if parents is not None else None,
        pool=parents.ids if parents is not None else (),
    )


def batches(records: Sequence[bytes], batch_size: int, max_bytes: int) -> Iterator[list[bytes]]:
    """Cut serialised candidates into batches of at most `batch_size` and `max_bytes`
    (a single candidate over `max_bytes` still goes out, alone)."""
    # The usual case: everything fits in max_bytes, so only the count cuts (the same
    # batches as the loop below, without a Python step per record).
    if RESPONSE_OVERHEAD + sum(map(len, records)) + 6 * len(records) <= max_bytes:
        for start in range(0, len(records), batch_size):
            yield list(records[start : start + batch_size])
        return
    batch: list[bytes] = []
    size = RESPONSE_OVERHEAD
    for record in records:
        item = len(record) + 6  # the field's tag and length prefix
        if batch and (len(batch) >= batch_size or size + item > max_bytes):
            yield batch
            batch, size = [], RESPONSE_OVERHEAD
        batch.append(record)
        size += item
    if batch:
        yield batch


@overload
def breed(
    layout: Layout,
    request: generator_pb2.GenerateRequest,
    parents: Parents | None,
    *,
    max_bytes: int = ...,
    stats: GeneratorStats | None = ...,
    encoded: Literal[False] = ...,
) -> Iterator[list[generator_pb2.GenerateResponse]]: ...


@overload
def breed(
    layout: Layout,
    request: generator_pb2.GenerateRequest,
    parents: Parents | None,
    *,
    max_bytes: int = ...,
    stats: GeneratorStats | None = ...,
    encoded: Literal[True],
) -> Iterator[list[Encoded]]: ...


def breed(
    layout: Layout,
    request: generator_pb2.GenerateRequest,
    parents: Parents | None,
    *,
    max_bytes: int = MAX_RESPONSE_BYTES,
    stats: GeneratorStats | None = None,
    encoded: bool = False,
) -> Iterator[list[generator_pb2.GenerateResponse]] | Iterator[list[Encoded]]:
    """The responses of a Generate call for a `layout_for` layout and `rank_parents`'
    result, chunk by chunk: each item is one chunk's candidates in responses of at most
    `request.batch_size` candidates and `max_bytes` bytes, `remaining` counting down to 0
    in the last. `encoded`: each response as the bytes Generate sends (`Encoded`), not
    parsed into a message.

    Lazy: a chunk is bred when the next item is asked for, so the caller decides how far
    ahead to breed and stops breeding by not asking. Not thread-safe: ask for one item at
    a time (from any thread). `stats` counts each chunk and its candidates as it is bred.
    """
    start, stop = request_range(request)
    chunks = strategies.generate(
        layout,
        parents.population if parents is not None else None,
        request.count,
        request.seed,
        request.generation,
        scored=parents.scored if parents is not None else None,
        copies=parents.copies if parents is not None else None,
        start=start,
        stop=stop,
    )
    return _responses(layout, request, parents, chunks, (max_bytes, stats, encoded))


def request_range(request: generator_pb2.GenerateRequest) -> tuple[int, int]:
    """The positions [start, stop) a (valid) request asks for: offset and limit."""
    start = request.offset
    stop = start + request.limit if request.limit else request.count
    return start, stop


def _responses(
    layout: Layout,
    request: generator_pb2.GenerateRequest,
    parents: Parents | None,
    chunks: Iterator[strategies.Chunk],
    how: tuple[int, GeneratorStats | None, bool],  # max_bytes, stats, encoded
) -> Iterator[list[Any]]:
    max_bytes, stats, encoded = how
    generation = request.generation
    batch_size = request.batch_size or DEFAULT_BATCH_SIZE
    parse: Callable[[bytes], Any] = (
        Encoded if encoded else generator_pb2.GenerateResponse.FromString
    )
    encode = encode_generate_response
    start, stop = request_range(request)
    size = strategies.chunk_size(layout)
    remaining = stop - start
    position = start - start % size  # the first chunk's first position
    for chunk in chunks:
        records = chunk_records(layout, chunk, parents, generation)
        bred = len(records)
        if position < start or position + bred > stop:  # a range's edge cuts this chunk
            records = records[max(start - position, 0) : stop - position]
        position += bred
        responses = []
        for batch in batches(records, batch_size, max_bytes):
            remaining -= len(batch)
            responses.append(parse(encode(batch, generation, remaining, size)))
        if stats is not None:
            stats.chunk_bred(bred)
        yield responses
