"""The search strategies: ranking, tournament selection, and the chunked deterministic driver.

`generate` yields the `count` candidates of one generation as a lazy sequence of
`Chunk`s. Determinism contract (GeneratorService.Generate): the output is a pure
function of (normalised DNA, the ranked parents, count, seed, generation), fixed by:

- Chunks. Output positions 0..count-1 are cut into chunks of `chunk_size(layout)` rows:
  `CHUNK` (1024), or fewer for wide genomes so one chunk's arrays stay near
  `CHUNK_BYTES`; a function of the DNA alone. Elites take the first positions (so the
  first chunk or chunks); each chunk's new candidates come from that chunk's own
  random streams, so chunks can be computed one at a time, lazily, in any executor.
- Streams. Every random draw of chunk k has its own PCG64, seeded (state and increment)
  with block ``draw + 64·gene`` of the Philox4x64 keyed by ``(seed, generation << 32 | k)``
  (`_Streams`), `draw` being a `Draw` value and `gene` the permutation or sequence gene's
  index in its kind (0 otherwise). Changing a `Draw` value, the chunking, or any operator
  changes outputs: that is a new major version of the generator.
- Prefix property. Each operator makes one row-ordered draw (see `operators`), so
  within a chunk the first r new candidates do not depend on how many follow; with fixed
  chunks, the candidates for `count` = n are the first n of those for any larger count.
- Parent order does not enter: parents are given ranked (`rank`), and the ranking rule
  of common.proto orders every distinct candidate. Repeats enter as `copies`, a count per
  distinct parent: tournaments draw among all copies (GeneratorService.Generate).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from numpy.random.bit_generator import ISeedSequence

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
from helix.common import versions
from helix.generator import operators as ops
from helix.genome.layout import (
    FloatArray,
    IntArray,
    Layout,
    Population,
    SequenceBlock,
    SequenceSpec,
)

# The generator's major version (bump it with any change of Generate's output for some
# request): defined in helix.common.versions, where the orchestrator reads it too.
GENERATOR_MAJOR = versions.GENERATOR_MAJOR

CHUNK = 1024
# Working arrays of one chunk (their peak is about 12x this, measured on wide genomes).
CHUNK_BYTES = 1 << 23
# Element moves of permutation mutation one chunk may make: an INVERSION reverses about a
# third of the permutation per move, so huge permutations get few rows per chunk, and a
# chunk (the unit of cancellation) stays near a tenth of a second. A chunk holds at least
# one candidate, though: a DNA whose single candidate costs more (a 100,000-long
# permutation with INVERSION at a high rate takes seconds) is cancelled only between
# candidates.
CHUNK_MOVES = 1 << 25
# Row-steps of edge recombination one chunk may make (a step per element and pair of
# children): at 1000 elements, 262 rows, about 0.2 s.
CHUNK_EDGE_STEPS = 1 << 18
# Tournament draws one chunk may make (two tournaments per child).
CHUNK_DRAWS = 1 << 24
_T = TypeVar("_T", bound=np.generic)
_SCORED = (candidate_pb2.VERDICT_STATUS_PASSED, candidate_pb2.VERDICT_STATUS_FAILED)


class Draw(IntEnum):
    """The random draws of a chunk, each with its own stream (part of the contract)."""

    TOURNAMENT = 0
    CROSSOVER_PAIRS = 1
    REAL_CROSSOVER = 2
    REAL_MUTATION = 3
    INTEGER_CROSSOVER = 4
    INTEGER_MUTATION = 5
    CHOICE_CROSSOVER = 6
    CHOICE_MUTATION = 7
    BITS_CROSSOVER = 8
    BITS_MUTATION = 9
    PERMUTATION_CROSSOVER = 10
    PERMUTATION_MUTATION = 11
    SEQUENCE_CROSSOVER = 12
    SEQUENCE_SUBSTITUTION = 13
    SEQUENCE_INSERTION = 14
    SEQUENCE_DELETION = 15
    SAMPLE_REALS = 16
    SAMPLE_INTEGERS = 17
    SAMPLE_CHOICES = 18
    SAMPLE_BITS = 19
    SAMPLE_PERMUTATION = 20
    SAMPLE_SEQUENCE = 21
    MUTATED_CHILDREN = 22


# --- ranking and selection ----------------------------------------------------------------


def rank(
    ids: Sequence[str],
    statuses: npt.ArrayLike,
    scores: npt.ArrayLike,
    objective: int,
) -> npt.NDArray[np.intp]:
    """Indices of the candidates in rank order (common.proto's Objective rule).

    Scored candidates (status VERDICT_STATUS_PASSED or _FAILED) first, by score
    (ascending for OBJECTIVE_MINIMIZE, descending for OBJECTIVE_MAXIMIZE), ties by id in
    ascending code-point (= UTF-8 byte-wise) order; then the rest by id. Entries with
    the same id and score are ordered by status, so the order never depends on the
    input's. `statuses` are
    candidate_pb2.VerdictStatus values (UNSPECIFIED for "no verdict"); `scores` of
    unscored candidates are ignored. Ids are compared as NumPy strings, which drop
    trailing NUL characters (candidate ids are hex, so this never matters).
    """
    if objective not in (common_pb2.OBJECTIVE_MINIMIZE, common_pb2.OBJECTIVE_MAXIMIZE):
        raise ValueError(f"objective must be MINIMIZE or MAXIMIZE, not {objective}")
    status = np.asarray(statuses, dtype=np.int64)
    score = np.asarray(scores, dtype=np.float64)
    if not len(ids) == status.size == score.size:
        raise ValueError("ids, statuses and scores differ in length")
    scored = np.isin(status, _SCORED)
    direction = 1.0 if objective == common_pb2.OBJECTIVE_MINIMIZE else -1.0
    key = np.where(scored, direction * score, 0.0)
    _, id_order = np.unique(np.asarray(ids, dtype=np.str_), return_inverse=True)
    # Last tie-break, by status: one id with equal scores but verdicts PASSED and FAILED.
    return np.lexsort((status, id_order.reshape(-1), key, ~scored))


def tournament(
    rng: np.random.Generator,
    n_parents: int,
    n_picks: int,
    size: int,
    copies: IntArray | None = None,
) -> IntArray:
    """`n_picks` parent indices, each the best (lowest rank index) of `size` drawn with
    replacement from 0..n_parents-1: uniformly, or, given `copies` (a positive count per
    parent), parent i with probability copies[i] / sum(copies) — uniformly among all
    copies. One row-ordered draw of (n_picks, size) doubles."""
    bounds = None if copies is None else np.cumsum(copies, dtype=np.int64)
    if bounds is not None and bounds[-1] == n_parents:
        bounds = None  # every copy count 1 (each is >= 1): the same draws, no lookup
    total = n_parents if bounds is None else int(bounds[-1])
    best = np.empty(n_picks, dtype=np.int64)
    # Row blocks of about a million draws: the stream is consumed in the same order as one
    # (n_picks, size) draw, without its memory when size is large.
    block = max(1, (1 << 20) // max(size, 1))
    for start in range(0, n_picks, block):
        stop = min(start + block, n_picks)
        u = rng.random((stop - start, size))
        drawn = np.minimum((u * total).astype(np.int64), total - 1)
        if bounds is not None:  # copy index -> parent index
            drawn = np.searchsorted(bounds, drawn, side="right")
        best[start:stop] = drawn.min(axis=1)
    return best


# --- parameters ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlphaParams:
    """The alpha strategy of a normalised DNA, every default resolved."""

    elitism: int
    tournament_size: int
    crossover_rate: float
    mutation_rate: float
    child_mutation_rate: float
    real: ops.NumericOperators
    integer: ops.NumericOperators
    choice_mutation_rate: float
    bit_flip_rates: tuple[float, ...]  # per bits gene, in gene order
    permutation_mutation: dna_pb2.PermutationMutation.ValueType
    permutation_crossover: dna_pb2.PermutationCrossover.ValueType
    substitution_rate: float
    insertion_rate: float
    deletion_rate: float

    @classmethod
    def from_dna(cls, normalised: dna_pb2.Dna) -> AlphaParams:
        """The parameters of a normalised DNA whose strategy is alpha."""
        if normalised.strategy.WhichOneof("kind") != "alpha":
            raise ValueError("the DNA's strategy is not alpha")
        alpha = normalised.strategy.alpha
        bits = alpha.bits
        flip = [
            bits.flip_rate if bits.HasField("flip_rate") else 1.0 / gene.bits.size
            for gene in normalised.genes
            if gene.WhichOneof("kind") == "bits"
        ]
        return cls(
            elitism=alpha.elitism,
            tournament_size=alpha.tournament_size,
            crossover_rate=alpha.crossover_rate,
            mutation_rate=alpha.mutation_rate,
            child_mutation_rate=alpha.child_mutation_rate,
            real=ops.NumericOperators.from_proto(alpha.real),
            integer=ops.NumericOperators.from_proto(alpha.integer),
            choice_mutation_rate=alpha.choice.gene_mutation_rate,
            bit_flip_rates=tuple(flip),
            permutation_mutation=alpha.permutation.mutation,
            permutation_crossover=alpha.permutation.crossover,
            substitution_rate=alpha.sequence.substitution_rate,
            insertion_rate=alpha.sequence.insertion_rate,
            deletion_rate=alpha.sequence.deletion_rate,
        )


def chunk_size(layout: Layout) -> int:
    """Rows per chunk for a layout: CHUNK, or fewer so that a chunk's widest working
    arrays (8 bytes per value, bit or symbol) stay near CHUNK_BYTES, its tournaments draw
    at most CHUNK_DRAWS parents, its permutation mutation moves about CHUNK_MOVES
    elements and its edge recombination makes at most CHUNK_EDGE_STEPS row-steps; at
    least 1. A function of the DNA alone."""
    values = (
        layout.n_reals
        + layout.n_integers
        + layout.n_choices
        + layout.n_bits
        + sum(layout.permutation_sizes)
        + sum(s.max_length for s in layout.sequences)
    )
    rows = min(CHUNK, CHUNK_BYTES // (8 * max(values, 1)))
    strategy = layout.dna.strategy
    if strategy.WhichOneof("kind") == "alpha":
        rows = min(rows, CHUNK_DRAWS // (2 * max(strategy.alpha.tournament_size, 1)))
    if strategy.WhichOneof("kind") == "alpha" and layout.permutation_sizes:
        rate = strategy.alpha.mutation_rate
        inversion = strategy.alpha.permutation.mutation != dna_pb2.PERMUTATION_MUTATION_SWAP
        moved = sum(
            rate * size * (size / 3 if inversion else 2) for size in layout.permutation_sizes
        )
        rows = min(rows, int(CHUNK_MOVES // max(moved, 1.0)))
        if strategy.alpha.permutation.crossover in (
            dna_pb2.PERMUTATION_CROSSOVER_UNSPECIFIED,
            dna_pb2.PERMUTATION_CROSSOVER_EDGE_RECOMBINATION,
        ):
            steps = sum(size for size in layout.permutation_sizes if size <= ops.ERX_MAX_SIZE)
            rows = min(rows, CHUNK_EDGE_STEPS // max(steps, 1))
    return max(1, rows)


# --- the driver ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Chunk:
    """One chunk of a generation's output, in output order: elites, then children.

    `elites` are indices into the ranked parents, copied unchanged. `parents` holds, per
    child, the indices of its parents in the ranked parents: (p, q) for a crossover of
    distinct parents, p being the parent whose genome the child started from; (p, -1)
    for a copy of one parent (no crossover, or the same parent drawn twice); (-1, -1)
    for a sampled child.
    """

    elites: IntArray
    children: Population
    parents: IntArray

    def __len__(self) -> int:
        return int(self.elites.size) + len(self.children)


# Blocks of the chunk's Philox per gene index: room for every Draw value (checked below).
DRAWS_PER_GENE = 64
if len(Draw) > DRAWS_PER_GENE:
    raise RuntimeError("more Draw values than DRAWS_PER_GENE: streams would overlap")


class _Words(ISeedSequence):
    """Given uint64 words as a seed sequence: a bit generator asking for as many takes
    them as they are (Philox: 2 for its key; PCG64: 4, its state and increment)."""

    __slots__ = ("_words",)

    def __init__(self, words: npt.NDArray[np.uint64]) -> None:
        self._words = words

    def generate_state(
        self, /, n_words: int, dtype: npt.DTypeLike = np.uint32
    ) -> npt.NDArray[np.uint32 | np.uint64]:
        if n_words != self._words.size or np.dtype(dtype) != np.uint64:
            raise ValueError(f"these seed words are {self._words.size} uint64 values")
        return self._words


class _Streams:
    """The random streams of one chunk: ``streams(draw, gene)`` is the generator of that
    draw (and permutation or sequence gene), the same object never handed out twice.

    Each stream is a PCG64 seeded with 256 bits (its 128-bit state and increment), block
    ``draw + DRAWS_PER_GENE * gene`` of the Philox4x64 counter-based generator keyed by
    ``(seed, generation << 32 | chunk)`` (a fixed stride, so a new `Draw` value leaves the
    other streams as they were). Philox is a keyed pseudo-random function of its
    counter (Salmon et al., SC 2011): distinct keys and blocks give independent words, so
    streams stay independent per (seed, generation, chunk, draw, gene), as with one
    SeedSequence per draw (generator v1) at a twentieth of the cost: one Philox per chunk
    (its blocks drawn once, more only for many genes), then about 1 µs per stream, which
    matters for small generations (4 or more streams per chunk).
    """

    __slots__ = ("_key", "_words")

    def __init__(self, seed: int, generation: int, chunk: int) -> None:
        if not (0 <= seed < 1 << 64 and 0 <= generation < 1 << 32 and 0 <= chunk < 1 << 32):
            raise ValueError("seed must be 0..2^64-1, generation and chunk 0..2^32-1")
        self._key = np.array([seed, generation << 32 | chunk], dtype=np.uint64)
        self._words = np.empty(0, dtype=np.uint64)

    def __call__(self, draw: Draw, gene: int = 0) -> np.random.Generator:
        block = int(draw) + DRAWS_PER_GENE * gene
        if 4 * block + 4 > self._words.size:  # the chunk's first stream, or a far gene
            blocks = max(block + 1, 2 * self._words.size // 4, len(Draw))
            # NumPy's BitGenerators take any ISeedSequence (documented; its stubs say
            # SeedSequence).
            philox = np.random.Philox(_Words(self._key))  # type: ignore[arg-type]
            self._words = philox.random_raw(4 * blocks)  # blocks 0, 1, ... in order
        seed = _Words(self._words[4 * block : 4 * block + 4])
        return np.random.Generator(np.random.PCG64(seed))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, eq=False)
class _Kit:
    """What a generation's chunks share: the layout's columns and the alpha parameters."""

    layout: Layout
    reals: ops.NumericColumns
    integers: ops.NumericColumns
    params: AlphaParams | None
    flip_rates: FloatArray

    @classmethod
    def of(cls, layout: Layout, params: AlphaParams | None) -> _Kit:
        sizes = [g.size for g in layout.genes_of("bits")]
        rates = params.bit_flip_rates if params is not None else (0.0,) * len(sizes)
        return cls(
            layout=layout,
            reals=ops.NumericColumns.reals(layout),
            integers=ops.NumericColumns.integers(layout),
            params=params,
            flip_rates=np.repeat(np.asarray(rates, dtype=np.float64), sizes),
        )


def generate(  # noqa: PLR0913 - the parents' scored count and copies are keyword-only
    layout: Layout,
    ranked_parents: Population | None,
    count: int,
    seed: int,
    generation: int,
    *,
    scored: int | None = None,
    copies: IntArray | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[Chunk]:
    """The `count` candidates of one generation, as lazily computed chunks — only the
    chunks holding positions [start, stop) (stop None: count), each whole: chunk k holds
    positions [k * chunk_size, (k + 1) * chunk_size) and is bred from its own random
    streams, so any range of chunks is the same as in the whole generation.

    `layout` is built from the normalised DNA; `ranked_parents` are the distinct parents
    in rank order (`rank`), or None (or empty) for none; the first `scored` of them have a
    score (None: all); `copies[i]` (>= 1) is how many times parent i was given (None: once
    each), its weight in tournaments. Alpha with parents puts the best min(elitism, count,
    scored) parents first and breeds the rest (dna.proto's AlphaStrategy); alpha without parents,
    whatever the generation, and random always sample uniformly. `seed` is 0..2^64-1 and
    `generation` 0..2^32-1.
    """
    if count < 0 or seed < 0 or generation < 0:
        raise ValueError("count, seed and generation must be >= 0")
    has_parents = ranked_parents is not None and len(ranked_parents) > 0
    breeds = layout.dna.strategy.WhichOneof("kind") == "alpha" and has_parents
    if copies is not None and ranked_parents is not None:
        copies = np.asarray(copies, dtype=np.int64)
        if copies.shape != (len(ranked_parents),) or (copies < 1).any():
            raise ValueError("copies must hold one count >= 1 per parent")
    stop = count if stop is None else stop
    if not 0 <= start <= stop <= count:
        raise ValueError("the range must satisfy 0 <= start <= stop <= count")
    return _chunks(
        _kit(layout, breeds), ranked_parents, count, seed, generation, scored, copies, start, stop
    )


@functools.lru_cache(maxsize=32)
def _kit(layout: Layout, breeds: bool) -> _Kit:
    """The kit of a layout, computed once per layout object (about 20 µs, which shows at
    small generations; `breeding.layout_for` hands out one layout per DNA)."""
    return _Kit.of(layout, AlphaParams.from_dna(layout.dna) if breeds else None)


def _chunks(  # noqa: PLR0913 - generate's arguments, passed on
    kit: _Kit,
    parents: Population | None,
    count: int,
    seed: int,
    generation: int,
    scored: int | None,
    copies: IntArray | None,
    first: int,
    last: int,
) -> Iterator[Chunk]:
    n_elites = 0
    if kit.params is not None and parents is not None:
        n_scored = len(parents) if scored is None else scored
        n_elites = min(kit.params.elitism, count, n_scored)
    size = chunk_size(kit.layout)
    for k in range(first // size, -(-last // size)):
        start = k * size
        stop = min(start + size, count)
        elites = np.arange(start, min(stop, n_elites), dtype=np.int64)
        n = stop - start - elites.size
        streams = _Streams(seed, generation, k)
        if kit.params is None or parents is None:
            children = _sample(kit, streams, n)
            lineage = np.full((n, 2), -1, dtype=np.int64)
        else:
            children, lineage = _breed(kit, kit.params, parents, copies, streams, n)
        yield Chunk(elites, children, lineage)


def _sample(kit: _Kit, streams: _Streams, n: int) -> Population:
    layout = kit.layout
    out = layout.empty(n)
    reals, integers, choices, bits = out.reals, out.integers, out.choices, out.bits
    if layout.n_reals:
        reals = ops.sample_reals(streams(Draw.SAMPLE_REALS), kit.reals, n)
    if layout.n_integers:
        integers = ops.sample_integers(streams(Draw.SAMPLE_INTEGERS), kit.integers, n)
    if layout.n_choices:
        choices = ops.sample_choices(streams(Draw.SAMPLE_CHOICES), layout.choice_counts, n)
    if layout.n_bits:
        bits = ops.sample_bits(streams(Draw.SAMPLE_BITS), layout.n_bits, n)
    return Population(
        reals=reals,
        integers=integers,
        choices=choices,
        bits=bits,
        permutations=tuple(
            ops.sample_permutation(streams(Draw.SAMPLE_PERMUTATION, j), size, n)
            for j, size in enumerate(layout.permutation_sizes)
        ),
        sequences=tuple(
            ops.sample_sequence(streams(Draw.SAMPLE_SEQUENCE, j), spec, n)
            for j, spec in enumerate(layout.sequences)
        ),
    )


def _breed(
    kit: _Kit,
    params: AlphaParams,
    parents: Population,
    copies: IntArray | None,
    streams: _Streams,
    n: int,
) -> tuple[Population, IntArray]:
    """n children: pairs picked by tournament, recombined with probability
    crossover_rate into two children each (interleaved, the last one dropped when n is
    odd), then each mutated with probability child_mutation_rate."""
    pairs = (n + 1) // 2
    picks = tournament(
        streams(Draw.TOURNAMENT), len(parents), 2 * pairs, params.tournament_size, copies
    )
    picks = picks.reshape(pairs, 2)
    cross = streams(Draw.CROSSOVER_PAIRS).random(pairs) < params.crossover_rate
    cross &= picks[:, 0] != picks[:, 1]
    first, second = parents.take(picks[:, 0]), parents.take(picks[:, 1])
    crossed = np.flatnonzero(cross)
    if crossed.size:
        a, b = _recombine(kit, params, first.take(crossed), second.take(crossed), streams)
        _assign(first, crossed, a)
        _assign(second, crossed, b)
    mates = np.where(cross[:, None], picks[:, ::-1], -1)
    lineage = np.stack([picks, mates], axis=2).reshape(2 * pairs, 2)[:n]
    children = _interleave(first, second, n)
    mutated = np.flatnonzero(streams(Draw.MUTATED_CHILDREN).random(n) < params.child_mutation_rate)
    if mutated.size == n:
        return _mutate(kit, params, children, streams), lineage
    if mutated.size:
        _assign(children, mutated, _mutate(kit, params, children.take(mutated), streams))
    return children, lineage


def _recombine(
    kit: _Kit, params: AlphaParams, a: Population, b: Population, streams: _Streams
) -> tuple[Population, Population]:
    layout = kit.layout
    r1, r2 = a.reals, b.reals
    i1, i2 = a.integers, b.integers
    c1, c2 = a.choices, b.choices
    b1, b2 = a.bits, b.bits
    if layout.n_reals:
        r1, r2 = ops.crossover_reals(
            streams(Draw.REAL_CROSSOVER), a.reals, b.reals, kit.reals, params.real
        )
    if layout.n_integers:
        i1, i2 = ops.crossover_integers(
            streams(Draw.INTEGER_CROSSOVER), a.integers, b.integers, kit.integers, params.integer
        )
    if layout.n_choices:
        c1, c2 = ops.crossover_choices(streams(Draw.CHOICE_CROSSOVER), a.choices, b.choices)
    if layout.n_bits:
        b1, b2 = ops.crossover_bits(streams(Draw.BITS_CROSSOVER), a.bits, b.bits)
    perms = [
        ops.crossover_permutation(
            streams(Draw.PERMUTATION_CROSSOVER, j), pa, pb, params.permutation_crossover
        )
        for j, (pa, pb) in enumerate(zip(a.permutations, b.permutations, strict=True))
    ]
    seqs = [
        ops.crossover_sequence(streams(Draw.SEQUENCE_CROSSOVER, j), sa, sb)
        for j, (sa, sb) in enumerate(zip(a.sequences, b.sequences, strict=True))
    ]
    return (
        Population(r1, i1, c1, b1, tuple(p for p, _ in perms), tuple(s for s, _ in seqs)),
        Population(r2, i2, c2, b2, tuple(p for _, p in perms), tuple(s for _, s in seqs)),
    )


def _mutate(kit: _Kit, params: AlphaParams, x: Population, streams: _Streams) -> Population:
    layout = kit.layout
    rate = params.mutation_rate
    reals, integers, choices, bits = x.reals, x.integers, x.choices, x.bits
    if layout.n_reals:
        reals = ops.mutate_reals(streams(Draw.REAL_MUTATION), reals, kit.reals, params.real, rate)
    if layout.n_integers:
        integers = ops.mutate_integers(
            streams(Draw.INTEGER_MUTATION), integers, kit.integers, params.integer, rate
        )
    if layout.n_choices:
        choices = ops.mutate_choices(
            streams(Draw.CHOICE_MUTATION),
            choices,
            layout.choice_counts,
            params.choice_mutation_rate,
        )
    if layout.n_bits:
        bits = ops.mutate_bits(streams(Draw.BITS_MUTATION), bits, kit.flip_rates)
    permutations = tuple(
        ops.mutate_permutation(
            streams(Draw.PERMUTATION_MUTATION, j), p, rate, params.permutation_mutation
        )
        for j, p in enumerate(x.permutations)
    )
    sequences = tuple(
        _mutate_sequence(params, streams, j, block, spec)
        for j, (block, spec) in enumerate(zip(x.sequences, layout.sequences, strict=True))
    )
    return Population(reals, integers, choices, bits, permutations, sequences)


def _mutate_sequence(
    params: AlphaParams, streams: _Streams, j: int, block: SequenceBlock, spec: SequenceSpec
) -> SequenceBlock:
    """Substitution, then insertion, then deletion."""
    alphabet = len(spec.alphabet)
    block = ops.substitute_symbols(
        streams(Draw.SEQUENCE_SUBSTITUTION, j), block, alphabet, params.substitution_rate
    )
    block = ops.insert_symbols(
        streams(Draw.SEQUENCE_INSERTION, j), block, alphabet, params.insertion_rate, spec.max_length
    )
    return ops.delete_symbols(
        streams(Draw.SEQUENCE_DELETION, j), block, params.deletion_rate, spec.min_length
    )


def _assign(target: Population, rows: IntArray, source: Population) -> None:
    """Overwrite rows of a freshly taken (owned) population (kinds without columns
    skipped: each assignment has a fixed cost)."""
    kinds = (
        (target.reals, source.reals),
        (target.integers, source.integers),
        (target.choices, source.choices),
        (target.bits, source.bits),
    )
    for into, values in kinds:
        if into.shape[1]:
            into[rows] = values
    for t, s in zip(target.permutations, source.permutations, strict=True):
        t[rows] = s
    for tb, sb in zip(target.sequences, source.sequences, strict=True):
        tb.symbols[rows] = sb.symbols
        tb.lengths[rows] = sb.lengths


def _interleave(first: Population, second: Population, n: int) -> Population:
    """Rows first[0], second[0], first[1], second[1], ..., the first n of them."""

    def weave(x: npt.NDArray[_T], y: npt.NDArray[_T]) -> npt.NDArray[_T]:
        out = np.empty((2 * len(x), *x.shape[1:]), dtype=x.dtype)
        if out.size:  # kinds without columns: nothing to copy
            out[0::2] = x
            out[1::2] = y
        return out[:n]

    return Population(
        reals=weave(first.reals, second.reals),
        integers=weave(first.integers, second.integers),
        choices=weave(first.choices, second.choices),
        bits=weave(first.bits, second.bits),
        permutations=tuple(
            weave(x, y) for x, y in zip(first.permutations, second.permutations, strict=True)
        ),
        sequences=tuple(
            SequenceBlock(weave(x.symbols, y.symbols), weave(x.lengths, y.lengths))
            for x, y in zip(first.sequences, second.sequences, strict=True)
        ),
    )
