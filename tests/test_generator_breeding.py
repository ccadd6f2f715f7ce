"""Breeding without a network: the pure core (breeding.py) and its async shell (streaming.py).

The shell's promises are what keep a generator responsive: items are made one at a time
in the pool, one ahead of the consumer; a closed or cancelled stream leaves at most the
item in progress to finish and queues nothing more; the stream cap answers GENERATOR_BUSY.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common import errors, reasons
from helix.generator import breeding, strategies
from helix.generator.parent_records import ParentRecords
from helix.generator.stats import GeneratorStats
from helix.generator.streaming import StreamSlots, bred_ahead
from helix.genome import codec
from helix.genome.layout import Layout, normalise

from waiting import eventually

WAIT = 10.0  # seconds a test waits for a thread before it fails


def layout_of(*genes: dna_pb2.Gene) -> Layout:
    return breeding.layout_for(normalise(dna_pb2.Dna(genes=genes)))


ROUTE = dna_pb2.Gene(name="route", permutation=dna_pb2.PermutationGene(size=30))
WIDE = dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=0, high=1, size=1000))


def records_of(layout: Layout, request: generator_pb2.GenerateRequest) -> list[bytes]:
    """The candidates of `request` straight from the strategy, as the golden tests see them."""
    parents = breeding.rank_parents(layout, request)
    out: list[bytes] = []
    for chunk in strategies.generate(
        layout,
        parents.population if parents is not None else None,
        request.count,
        request.seed,
        request.generation,
        scored=parents.scored if parents is not None else None,
    ):
        out += breeding.chunk_records(layout, chunk, parents, request.generation)
    return out


def scored(layout: Layout, count: int) -> list[candidate_pb2.ScoredCandidate]:
    chunk = next(strategies.generate(layout, None, count, 1, 0))
    candidates = [
        candidate_pb2.Candidate.FromString(r)
        for r in breeding.chunk_records(layout, chunk, None, 0)
    ]
    return [
        candidate_pb2.ScoredCandidate(
            candidate=c,
            verdict=candidate_pb2.Verdict(
                status=candidate_pb2.VERDICT_STATUS_PASSED, score=float(i)
            ),
        )
        for i, c in enumerate(candidates)
    ]


# --- breeding.py --------------------------------------------------------------------------


@pytest.mark.parametrize("with_parents", [False, True])
def test_breed_frames_every_candidate_in_order_with_remaining_counting_down(
    with_parents: bool,
) -> None:
    layout = layout_of(ROUTE)
    request = generator_pb2.GenerateRequest(
        count=2000, seed=3, generation=4 if with_parents else 0, batch_size=300
    )
    if with_parents:
        request.parents.extend(scored(layout, 50))
        request.objective = common_pb2.OBJECTIVE_MINIMIZE
    stats = GeneratorStats()
    parents = breeding.rank_parents(layout, request)
    chunks = list(breeding.breed(layout, request, parents, stats=stats))
    assert len(chunks) >= 2  # remaining counts down across chunks
    responses = [r for chunk in chunks for r in chunk]
    sent = [c.SerializeToString(deterministic=True) for r in responses for c in r.candidates]
    assert sent == records_of(layout, request)
    assert all(1 <= len(r.candidates) <= 300 for r in responses)
    assert all(r.generation == request.generation for r in responses)
    remaining = [r.remaining for r in responses]
    assert remaining == [
        2000 - sum(len(r.candidates) for r in responses[: i + 1]) for i in range(len(responses))
    ]
    assert remaining[-1] == 0
    assert (stats.chunks, stats.candidates) == (len(chunks), 2000)


def test_breed_keeps_each_response_under_max_bytes() -> None:
    layout = layout_of(WIDE)  # about 8 kB per candidate
    request = generator_pb2.GenerateRequest(count=40, seed=1, batch_size=40)
    responses = [
        r for chunk in breeding.breed(layout, request, None, max_bytes=50_000) for r in chunk
    ]
    assert sum(len(r.candidates) for r in responses) == 40
    assert len(responses) >= 7
    assert all(r.ByteSize() <= 50_000 for r in responses)


def test_batches_cut_by_count_and_size_and_send_an_oversized_record_alone() -> None:
    records = [b"a" * 10] * 5 + [b"b" * 500] + [b"c" * 10] * 2
    assert [len(b) for b in breeding.batches(records, 2, 10_000)] == [2, 2, 2, 2]
    cut = list(breeding.batches(records, 100, breeding.RESPONSE_OVERHEAD + 3 * 16))
    assert [len(b) for b in cut] == [3, 2, 1, 2]
    assert cut[2] == [b"b" * 500]
    assert list(breeding.batches([], 10, 10_000)) == []


def one_by_one(records: list[bytes], batch_size: int, max_bytes: int) -> list[list[bytes]]:
    """The batching rule, record by record: a batch ends at batch_size records or when
    the next record would take it past max_bytes (6 bytes of framing per record)."""
    out: list[list[bytes]] = []
    batch: list[bytes] = []
    size = breeding.RESPONSE_OVERHEAD
    for record in records:
        if batch and (len(batch) >= batch_size or size + len(record) + 6 > max_bytes):
            out.append(batch)
            batch, size = [], breeding.RESPONSE_OVERHEAD
        batch.append(record)
        size += len(record) + 6
    return [*out, batch] if batch else out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 300), max_size=40),
    st.integers(1, 12),
    st.integers(breeding.RESPONSE_OVERHEAD, 3000),
)
def test_batches_follow_the_rule_whether_or_not_everything_fits(
    sizes: list[int], batch_size: int, max_bytes: int
) -> None:
    records = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    expected = one_by_one(records, batch_size, max_bytes)
    assert list(breeding.batches(records, batch_size, max_bytes)) == expected
    assert list(breeding.batches(records, batch_size, 10**9)) == one_by_one(
        records, batch_size, 10**9
    )


def _ranked(layout: Layout, request: generator_pb2.GenerateRequest) -> object:
    """What rank_parents gives (or raises), comparably."""
    try:
        parents = breeding.rank_parents(layout, request)
    except errors.InvalidArgument as error:
        return ("error", error.message, [(v.field, v.description) for v in error.violations])
    assert parents is not None
    return (
        parents.ids,
        [s.SerializeToString(deterministic=True) for s in parents.sources],
        parents.scored,
        parents.copies.tolist(),
        codec.encode_genomes(layout, parents.population),
    )


def _without_some_ids(given: list[candidate_pb2.ScoredCandidate]) -> None:
    for parent in given[::2]:
        parent.candidate.ClearField("id")
    for parent in given[::3]:
        parent.verdict.ClearField("candidate_id")


def _other_statuses(given: list[candidate_pb2.ScoredCandidate]) -> None:
    for i, parent in enumerate(given):
        parent.verdict.status = i % 5  # type: ignore[assignment]
        parent.verdict.score = float(i % 7)
    given[4].ClearField("verdict")


def _wrong_ids(given: list[candidate_pb2.ScoredCandidate]) -> None:
    given[3].candidate.id = given[3].verdict.candidate_id = given[4].candidate.id
    given[6].candidate.ClearField("id")
    given[6].verdict.candidate_id = "0" * 32


def _a_bad_genome(given: list[candidate_pb2.ScoredCandidate]) -> None:
    given[2].candidate.genome.permutations[0] = 99


def _an_unknown_field(given: list[candidate_pb2.ScoredCandidate]) -> None:
    given[8].ParseFromString(given[8].SerializeToString() + b"\x48\x01")


_CHANGES = {
    "none": lambda given: None,
    "no ids": _without_some_ids,
    "statuses": _other_statuses,
    "wrong ids": _wrong_ids,
    "bad genome": _a_bad_genome,
    "unknown field": _an_unknown_field,
}


@pytest.mark.parametrize("change", list(_CHANGES))
def test_parents_read_from_the_request_bytes_rank_as_read_from_the_messages(
    change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = layout_of(ROUTE)
    given = scored(layout, 40)
    for i, parent in enumerate(given):
        parent.verdict.candidate_id = parent.candidate.id
        parent.verdict.duration.nanos = 1000 * i
        parent.candidate.generation = 3
        parent.candidate.parent_ids.extend([given[0].candidate.id, given[1].candidate.id][: i % 3])
    given += [given[5], given[7], given[5]]  # repeats: copies
    dup = candidate_pb2.ScoredCandidate()
    dup.CopyFrom(given[9])
    dup.candidate.generation = 1  # the same id, another message
    given.append(dup)
    _CHANGES[change](given)
    request = generator_pb2.GenerateRequest(
        parents=given, objective=common_pb2.OBJECTIVE_MINIMIZE, count=10
    )
    clean = ParentRecords.of(request).clean
    assert clean.all() == (change != "unknown field")  # (else ranked from the messages)
    from_bytes = _ranked(layout, request)
    monkeypatch.setattr(breeding, "read_parents", lambda request: None)
    assert from_bytes == _ranked(layout, request)


def test_a_strategy_this_generator_does_not_implement_is_a_failed_precondition() -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        breeding.layout_for(dna_pb2.Dna(genes=[ROUTE]))  # no strategy: none this one knows
    assert caught.value.reason == reasons.STRATEGY_NOT_IMPLEMENTED


# --- streaming.py -------------------------------------------------------------------------


class Gated(Iterator[list[int]]):
    """[0], [1], … [n - 1]; making item `gate_at` waits for `release` (in its thread)."""

    def __init__(self, n: int, gate_at: int = -1) -> None:
        self.n = n
        self.gate_at = gate_at
        self.asked = 0
        self.started = threading.Event()
        self.release = threading.Event()

    def __next__(self) -> list[int]:
        i = self.asked
        self.asked += 1
        if i >= self.n:
            raise StopIteration
        if i == self.gate_at:
            self.started.set()
            assert self.release.wait(WAIT)
        return [i]


@pytest.fixture
async def executor() -> AsyncIterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(2)
    yield pool
    await asyncio.to_thread(pool.shutdown, wait=True)


async def test_bred_ahead_yields_every_item_in_order(executor) -> None:
    stats = GeneratorStats()
    items = Gated(5)
    assert [item async for item in bred_ahead(executor, items, stats)] == [[i] for i in range(5)]
    assert stats.pending == 0
    assert items.asked == 6  # the five items and the end


async def test_bred_ahead_makes_the_next_item_while_the_consumer_holds_one(executor) -> None:
    stats = GeneratorStats()
    items = Gated(3, gate_at=1)
    ahead = bred_ahead(executor, items, stats)
    assert await anext(ahead) == [0]
    assert await asyncio.to_thread(items.started.wait, WAIT)  # item 1, before it is asked
    assert stats.pending == 1
    items.release.set()
    assert [item async for item in ahead] == [[1], [2]]


async def test_closing_leaves_only_the_item_in_progress_to_finish(executor) -> None:
    stats = GeneratorStats()
    items = Gated(100, gate_at=1)
    ahead = bred_ahead(executor, items, stats)
    assert await anext(ahead) == [0]
    assert await asyncio.to_thread(items.started.wait, WAIT)
    await ahead.aclose()
    assert stats.pending == 1  # still being made in its thread
    items.release.set()
    await asyncio.to_thread(executor.shutdown, wait=True)  # every thread is done
    assert stats.pending == 0
    assert items.asked == 2  # nothing was asked for after the close


async def test_a_cancelled_consumer_drops_an_item_not_started_and_is_not_swallowed() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    blocker = threading.Event()
    busy = pool.submit(blocker.wait, WAIT)  # the only thread is busy: the item waits in line
    stats = GeneratorStats()
    items = Gated(10)
    ahead = bred_ahead(pool, items, stats)
    consumer = asyncio.create_task(anext(ahead))
    await eventually(lambda: stats.pending == 1, what="the first item to be queued")
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert stats.pending == 0  # cancelled before it started
    blocker.set()
    assert busy.result(WAIT)
    await asyncio.to_thread(pool.shutdown, wait=True)
    assert items.asked == 0


async def test_an_error_while_making_an_item_reaches_the_consumer(executor) -> None:
    def failing() -> Iterator[list[int]]:
        yield [0]
        raise ValueError("broken chunk")

    stats = GeneratorStats()
    ahead = bred_ahead(executor, failing(), stats)
    assert await anext(ahead) == [0]
    with pytest.raises(ValueError, match="broken chunk"):
        await anext(ahead)
    assert stats.pending == 0


async def test_a_shut_down_pool_queues_nothing() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.shutdown()
    stats = GeneratorStats()
    with pytest.raises(RuntimeError):
        await anext(bred_ahead(pool, Gated(1), stats))
    assert stats.pending == 0


def test_stream_slots_refuse_beyond_capacity_with_generator_busy() -> None:
    slots = StreamSlots(2)
    with slots.hold(), slots.hold():
        with pytest.raises(errors.ResourceExhausted) as caught, slots.hold():
            pass
        assert caught.value.reason == reasons.GENERATOR_BUSY
        assert caught.value.retry_after == 1.0
        assert slots.used == 2
    assert slots.used == 0
    with slots.hold():  # freed, whichever way the holders left
        assert slots.used == 1


def test_equal_dnas_share_one_layout_and_large_ones_are_not_kept() -> None:
    tour = dna_pb2.Gene(name="tour", permutation=dna_pb2.PermutationGene(size=52))
    first = layout_of(tour)
    assert layout_of(tour) is first  # an equal DNA, built anew: what breeding derived is kept
    other = layout_of(dna_pb2.Gene(name="tour", permutation=dna_pb2.PermutationGene(size=53)))
    assert other is not first
    assert other.permutation_sizes == (53,)
    # A DNA over the cache's bound gets a layout of its own every time.
    options = [f"option-{i:06d}" for i in range(6000)]
    wide = dna_pb2.Gene(name="pick", choice=dna_pb2.ChoiceGene(options=options))
    assert len(normalise(dna_pb2.Dna(genes=[wide])).SerializeToString()) > (
        breeding.LAYOUT_CACHE_DNA_BYTES
    )
    assert layout_of(wide) is not layout_of(wide)
