"""Genetic operators over whole batches, one family per gene kind, and generation-0 sampling.

Pure NumPy on the per-kind arrays of a `Population` (see `layout`): no Python loop over
candidates. Every function takes an explicit `np.random.Generator`, returns new arrays
(its inputs are left alone) and keeps every value valid for its DNA.

Each function draws everything it needs in ONE call whose leading axis is the batch row,
so the first r rows of its result depend only on the first r rows of its input and on
the generator — not on how many rows follow. The chunked driver in `strategies` relies
on this for its prefix property; keep it when changing an operator. Integers are
derived from those uniform doubles as floor(u·k) (a bias below k·2⁻⁵³, immaterial here).

Real and integer operators work in *unit space*: each column mapped affinely onto
[0, 1] (log(value) first for log-scale reals). Every operator dna.proto names (BLX-alpha,
bounded SBX, Gaussian with sigma·range, bounded polynomial, clip, reflect) commutes with
that map, so results are the same, and huge ranges such as ±1e300 stay finite. Values an
operator leaves alone are kept bit for bit rather than round-tripped through unit space.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

import helix.v1.dna_pb2 as dna_pb2
from helix.genome.layout import (
    BoolArray,
    ByteArray,
    FloatArray,
    IntArray,
    Layout,
    SequenceBlock,
    SequenceSpec,
)

Rng = np.random.Generator
_Clip = Callable[[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike], FloatArray]
try:
    # np.clip's ufunc without its Python-level wrappers: the same values, about 1.3 µs
    # less per call (several calls per chunk; it shows at small generations). Private in
    # NumPy 2, so np.clip stands in if it ever moves.
    from numpy._core.umath import clip as _ufunc_clip  # type: ignore[attr-defined]

    _clip: _Clip = _ufunc_clip
except ImportError:  # pragma: no cover
    _clip = np.clip


# --- numeric (real and integer) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NumericOperators:
    """The resolved operators of real or of integer genes (RealOperators / IntegerOperators)."""

    crossover: dna_pb2.NumericCrossover.ValueType
    mutation: dna_pb2.NumericMutation.ValueType
    bounds: dna_pb2.BoundHandling.ValueType
    blend_alpha: float
    sbx_eta: float
    gaussian_sigma: float
    polynomial_eta: float

    @classmethod
    def from_proto(cls, ops: dna_pb2.RealOperators | dna_pb2.IntegerOperators) -> NumericOperators:
        """The operators of a normalised RealOperators or IntegerOperators message."""
        return cls(
            crossover=ops.crossover,
            mutation=ops.mutation,
            bounds=ops.bounds,
            blend_alpha=ops.blend_alpha,
            sbx_eta=ops.sbx_eta,
            gaussian_sigma=ops.gaussian_sigma,
            polynomial_eta=ops.polynomial_eta,
        )


@dataclass(frozen=True, slots=True, eq=False)
class NumericColumns:
    """The real or the integer columns of a layout, with their map onto unit space."""

    low: FloatArray
    high: FloatArray
    log: BoolArray
    integral: bool
    origin: FloatArray  # low in operator space: log(low) for log-scale columns
    span: FloatArray  # high - low in operator space

    @classmethod
    def reals(cls, layout: Layout) -> NumericColumns:
        """The real columns of a layout."""
        low, high, log = layout.real_low, layout.real_high, layout.real_log
        with np.errstate(divide="ignore", invalid="ignore"):
            origin = np.where(log, np.log(low), low)
            span = np.where(log, np.log(high) - origin, high - low)
        return cls(low, high, log, False, origin, span)

    @classmethod
    def integers(cls, layout: Layout) -> NumericColumns:
        """The integer columns of a layout (as doubles: |bounds| <= 2^53 are exact)."""
        low = layout.integer_low.astype(np.float64)
        high = layout.integer_high.astype(np.float64)
        log = np.zeros(low.shape, dtype=np.bool_)
        return cls(low, high, log, True, low, high - low)

    def to_unit(self, values: npt.NDArray[np.float64] | IntArray) -> FloatArray:
        """Natural values (N, columns) in unit space; 0 in columns where low == high."""
        x = values.astype(np.float64)
        if self.log.any():
            np.log(x, out=x, where=np.broadcast_to(self.log, x.shape))
        spread = self.span > 0
        if spread.all():
            t = (x - self.origin) / self.span
        else:
            t = np.where(spread, (x - self.origin) / np.where(spread, self.span, 1.0), 0.0)
        # The clip guards the operators' powers of (1 - t) against a stray rounding.
        return _clip(t, 0.0, 1.0)

    def from_unit(self, unit: FloatArray) -> FloatArray:
        """Unit-space values back in natural space, inside [low, high], rounded (half to
        even) for integer columns."""
        y = self.origin + unit * self.span
        if self.log.any():
            with np.errstate(over="ignore"):  # exp(log(high)) may round past a huge high
                np.exp(y, out=y, where=np.broadcast_to(self.log, y.shape))
        y = _clip(y, self.low, self.high)
        if self.integral:
            y = _clip(np.rint(y), self.low, self.high)
        return y


def bring_into_unit(unit: FloatArray, bounds: dna_pb2.BoundHandling.ValueType) -> FloatArray:
    """Values brought back into [0, 1]: clamped (CLIP) or mirrored at the bound crossed,
    repeatedly until inside (REFLECT; closed form: mirror of t mod 2)."""
    if bounds == dna_pb2.BOUND_HANDLING_CLIP:
        return _clip(unit, 0.0, 1.0)
    folded = np.mod(unit, 2.0)
    # np.mod can round a tiny negative up to exactly 2.0; the clip covers that.
    return _clip(np.where(folded > 1.0, 2.0 - folded, folded), 0.0, 1.0)


def _blend(u: FloatArray, a: FloatArray, b: FloatArray, alpha: float) -> list[FloatArray]:
    """BLX-alpha in unit space: each child uniform in [lo - alpha·d, hi + alpha·d]."""
    lo = np.minimum(a, b)
    d = np.abs(a - b)
    return [lo - alpha * d + u[..., i] * (1.0 + 2.0 * alpha) * d for i in (0, 1)]


def _sbx(u: FloatArray, a: FloatArray, b: FloatArray, eta: float) -> list[FloatArray]:
    """Bounded SBX (Deb & Agrawal; as in Deb's NSGA-II code) in unit space, bounds [0, 1].

    Lane 0 of `u` is the spread draw (shared by both children, as in Deb's code), lane 1
    swaps the two children with probability 1/2.
    """
    y1, y2 = np.minimum(a, b), np.maximum(a, b)
    diff = y2 - y1
    safe = np.where(diff > 0, diff, 1.0)
    rand = u[..., 0]
    exponent = 1.0 / (eta + 1.0)
    children = []
    with np.errstate(over="ignore", divide="ignore"):  # beta -> inf for tiny diff: fine
        for sign, room in ((-1.0, y1), (1.0, 1.0 - y2)):
            beta = 1.0 + 2.0 * room / safe
            alpha = 2.0 - beta ** -(eta + 1.0)
            inner = np.where(rand <= 1.0 / alpha, rand * alpha, 1.0 / (2.0 - rand * alpha))
            children.append(0.5 * (y1 + y2 + sign * inner**exponent * diff))
    c1, c2 = (np.clip(c, 0.0, 1.0) for c in children)
    swap = u[..., 1] < 0.5
    return [np.where(swap, c2, c1), np.where(swap, c1, c2)]


def _polynomial(u: FloatArray, t: FloatArray, eta: float) -> FloatArray:
    """Bounded polynomial mutation (Deb; the NSGA-II / pymoo form) in unit space."""
    rand = u[..., 1]
    power = eta + 1.0
    lower = rand < 0.5
    xy = np.where(lower, 1.0 - t, t)
    val = np.where(
        lower,
        2.0 * rand + (1.0 - 2.0 * rand) * xy**power,
        2.0 * (1.0 - rand) + 2.0 * (rand - 0.5) * xy**power,
    )
    root = val ** (1.0 / power)
    return np.clip(t + np.where(lower, root - 1.0, 1.0 - root), 0.0, 1.0)


def _gaussian(u: FloatArray, t: FloatArray, sigma: float) -> FloatArray:
    """t + Normal(0, sigma²) in unit space (sigma is a fraction of the range), Box-Muller
    from lanes 1 and 2 so the whole draw stays one call."""
    z = np.sqrt(-2.0 * np.log1p(-u[..., 1])) * np.cos(2.0 * np.pi * u[..., 2])
    return t + sigma * z


def _crossover_numeric(
    rng: Rng,
    a: FloatArray | IntArray,
    b: FloatArray | IntArray,
    columns: NumericColumns,
    ops: NumericOperators,
) -> tuple[FloatArray, FloatArray]:
    u = rng.random((*a.shape, 2))
    ta, tb = columns.to_unit(a), columns.to_unit(b)
    if ops.crossover == dna_pb2.NUMERIC_CROSSOVER_BLEND:
        children = _blend(u, ta, tb, ops.blend_alpha)
    else:
        children = _sbx(u, ta, tb, ops.sbx_eta)
    c1, c2 = (columns.from_unit(bring_into_unit(c, ops.bounds)) for c in children)
    same = a == b  # equal parents give equal children: keep them exact
    return np.where(same, a, c1), np.where(same, b, c2)


def _mutate_numeric(
    rng: Rng,
    x: FloatArray | IntArray,
    columns: NumericColumns,
    ops: NumericOperators,
    rate: float,
) -> FloatArray:
    u = rng.random((*x.shape, 3))
    t = columns.to_unit(x)
    if ops.mutation == dna_pb2.NUMERIC_MUTATION_GAUSSIAN:
        moved = _gaussian(u, t, ops.gaussian_sigma)
    else:
        moved = _polynomial(u, t, ops.polynomial_eta)
    mutated = columns.from_unit(bring_into_unit(moved, ops.bounds))
    return np.where(u[..., 0] < rate, mutated, x)


def crossover_reals(
    rng: Rng, a: FloatArray, b: FloatArray, columns: NumericColumns, ops: NumericOperators
) -> tuple[FloatArray, FloatArray]:
    """Two children per pair of rows of real values, element-wise by `ops.crossover`."""
    return _crossover_numeric(rng, a, b, columns, ops)


def mutate_reals(
    rng: Rng, x: FloatArray, columns: NumericColumns, ops: NumericOperators, rate: float
) -> FloatArray:
    """Real values, each mutated by `ops.mutation` with probability `rate`."""
    return _mutate_numeric(rng, x, columns, ops, rate)


def crossover_integers(
    rng: Rng, a: IntArray, b: IntArray, columns: NumericColumns, ops: NumericOperators
) -> tuple[IntArray, IntArray]:
    """The real crossover on integer values as doubles, rounded half to even."""
    c1, c2 = _crossover_numeric(rng, a, b, columns, ops)
    return c1.astype(np.int64), c2.astype(np.int64)


def mutate_integers(
    rng: Rng, x: IntArray, columns: NumericColumns, ops: NumericOperators, rate: float
) -> IntArray:
    """The real mutation on integer values as doubles, rounded half to even."""
    return _mutate_numeric(rng, x, columns, ops, rate).astype(np.int64)


def sample_reals(rng: Rng, columns: NumericColumns, n: int) -> FloatArray:
    """n rows of real values, uniform (log-uniform for log-scale columns) in [low, high]."""
    return columns.from_unit(rng.random((n, columns.low.size)))


def sample_integers(rng: Rng, columns: NumericColumns, n: int) -> IntArray:
    """n rows of integer values, uniform in [low, high]."""
    low = columns.low.astype(np.int64)
    return rng.integers(low, columns.high.astype(np.int64), size=(n, low.size), endpoint=True)


# --- choices and bits ---------------------------------------------------------------------


def crossover_choices(rng: Rng, a: IntArray, b: IntArray) -> tuple[IntArray, IntArray]:
    """Uniform crossover: each position swapped between the children with probability 1/2."""
    swap = rng.random(a.shape) < 0.5
    return np.where(swap, b, a), np.where(swap, a, b)


def mutate_choices(rng: Rng, x: IntArray, counts: IntArray, rate: float) -> IntArray:
    """Each position, with probability `rate`, resampled uniformly among the OTHER options
    (`counts` options per column; single-option columns never change)."""
    u = rng.random((*x.shape, 2))
    others = counts - 1
    offset = np.minimum((u[..., 1] * others).astype(np.int64), np.maximum(others - 1, 0))
    resampled = (x + 1 + offset) % counts
    return np.where((u[..., 0] < rate) & (others > 0), resampled, x)


def sample_choices(rng: Rng, counts: IntArray, n: int) -> IntArray:
    """n rows of option indices, uniform per column."""
    return np.minimum((rng.random((n, counts.size)) * counts).astype(np.int64), counts - 1)


def crossover_bits(rng: Rng, a: BoolArray, b: BoolArray) -> tuple[BoolArray, BoolArray]:
    """Uniform crossover: each bit swapped between the children with probability 1/2."""
    swap = rng.random(a.shape) < 0.5
    return np.where(swap, b, a), np.where(swap, a, b)


def mutate_bits(rng: Rng, x: BoolArray, flip_rates: FloatArray) -> BoolArray:
    """Each bit flipped with its column's probability."""
    return x ^ (rng.random(x.shape) < flip_rates)


def sample_bits(rng: Rng, n_bits: int, n: int) -> BoolArray:
    """n rows of bits, each set with probability 1/2."""
    return rng.random((n, n_bits)) < 0.5


# --- permutations -------------------------------------------------------------------------


def order_crossover(keep: IntArray, other: IntArray, lo: IntArray, hi: IntArray) -> IntArray:
    """OX1 (Davis 1985; Eiben & Smith §4.5.2; DEAP's cxOrdered) children of `keep`: its
    slice lo..hi (inclusive) in place; the other positions, from just after the slice
    and wrapping around, filled with the missing elements in the order they appear in
    `other` read from just after `hi`, wrapping around. Crossing a permutation with
    itself returns it."""
    n, size = keep.shape
    positions = np.arange(size)
    row_start = np.arange(n) * size  # each row's first flat index
    # Flat positions from just after each row's slice, wrapping around.
    after = (row_start[:, None] + (hi[:, None] + 1 + positions) % size).reshape(-1)
    in_slice = (positions >= lo[:, None]) & (positions <= hi[:, None])
    taken = np.zeros(n * size, dtype=np.bool_)
    taken[(row_start[:, None] + keep).reshape(-1)] = in_slice.reshape(-1)
    rotated = other.reshape(-1)[after]  # other read from just after hi
    missing = ~taken[np.repeat(row_start, size) + rotated]
    # The k-th missing element of a row goes to that row's k-th position after the slice.
    k = np.cumsum(missing.reshape(n, size), axis=1).reshape(-1) - 1
    child = keep.copy().reshape(-1)
    child[after[(np.repeat(row_start, size) + k)[missing]]] = rotated[missing]
    return child.reshape(n, size)


def partially_mapped_crossover(
    keep: IntArray, other: IntArray, lo: IntArray, hi: IntArray
) -> IntArray:
    """PMX (Goldberg & Lingle 1985; Eiben & Smith §4.5.2) children of `keep`: its slice
    lo..hi (inclusive) in place; every other position takes `other`'s element there,
    or, when that element is already in the slice, follows the slice's mapping (element
    e at slice position p of `keep` maps to other[p]) until it leaves the slice."""
    n, size = keep.shape
    rows = np.arange(n)[:, None]
    positions = np.arange(size)
    in_slice = (positions >= lo[:, None]) & (positions <= hi[:, None])
    where = np.empty_like(keep)  # where[r, e]: the position of element e in keep[r]
    where[rows, keep] = positions
    kept = np.zeros((n, size), dtype=np.bool_)  # kept[r, e]: e is in keep's slice
    kept[rows, keep] = in_slice
    child = np.where(in_slice, keep, other)
    # The positions whose element is taken follow the mapping one link per step, only
    # those still inside it (a chain is at most the slice long).
    r, p = np.nonzero(kept[rows, other] & ~in_slice)
    x = other[r, p]
    while r.size:
        x = other[r, where[r, x]]
        done = ~kept[r, x]
        child[r[done], p[done]] = x[done]
        r, p, x = r[~done], p[~done], x[~done]
    return child


def _nth_unvisited(visited: BoolArray, u: FloatArray) -> IntArray:
    """Per row, the unvisited city of rank floor(u · unvisited) in city order."""
    free = ~visited
    left = free.sum(axis=1)
    k = np.minimum((u * left).astype(np.int64), left - 1)
    nth: IntArray = np.argmax(np.cumsum(free, axis=1) > k[:, None], axis=1)
    return nth


def edge_recombination(u: FloatArray, first: IntArray, second: IntArray) -> IntArray:
    """ERX (Whitley, Starkweather & Fuquay 1989) children, one per row: a tour built on
    the union of both parents' (cyclic, undirected) edges, starting at first[r, 0]; the
    next city is the unvisited neighbour of the current one with the fewest unvisited
    neighbours of its own, ties broken by `u[r, step, 0]`; with no unvisited neighbour
    left, an unvisited city drawn by `u[r, step, 1]`.

    `u` has shape (rows, size, 2): lane 0 picks among tied neighbours, lane 1 picks the
    city after a dead end.
    """
    n, size = first.shape
    rows = np.arange(n)
    # Neighbours: first's predecessor and successor, then second's (n, size, 4).
    adjacency = np.empty((n, size, 4), dtype=np.int64)
    for k, parent in enumerate((first, second)):
        adjacency[rows[:, None], parent, 2 * k] = np.roll(parent, 1, axis=1)
        adjacency[rows[:, None], parent, 2 * k + 1] = np.roll(parent, -1, axis=1)
    # An edge both parents have appears twice: count it once.
    distinct = np.ones((n, size, 4), dtype=np.bool_)
    for k in range(1, 4):
        for j in range(k):
            distinct[..., k] &= adjacency[..., k] != adjacency[..., j]
    # Flat indices (row · size + city) into raveled tables: cheaper than 2-D indexing.
    base = rows * size
    neighbour_at = (adjacency + base[:, None, None]).reshape(n * size, 4)
    distinct_at = distinct.reshape(n * size, 4)
    degree = distinct_at.sum(axis=1)  # unvisited distinct neighbours of each city
    visited = np.zeros(n * size, dtype=np.bool_)
    child = np.empty((n, size), dtype=np.int64)
    at = base + first[:, 0]
    for step in range(size):
        child[:, step] = at - base
        visited[at] = True
        neighbours = neighbour_at[at]  # (n, 4)
        live = distinct_at[at]
        # Live entries are distinct: no (row, city) pair repeats, so plain indexing works.
        degree[neighbours[live]] -= 1
        if step == size - 1:
            break
        live &= ~visited[neighbours]
        counts = np.where(live, degree[neighbours], 5)
        tied = counts == counts.min(axis=1, keepdims=True)
        n_tied = tied.sum(axis=1)
        pick = np.minimum((u[:, step, 0] * n_tied).astype(np.int64), n_tied - 1)
        slot = np.argmax(np.cumsum(tied, axis=1) > pick[:, None], axis=1)
        at = neighbours[rows, slot]
        stuck = ~live.any(axis=1)
        if stuck.any():
            free = visited.reshape(n, size)[stuck]
            at[stuck] = base[stuck] + _nth_unvisited(free, u[stuck, step, 1])
    return child


# Longest permutation ERX crosses: it takes one NumPy step per element whatever the rows
# (about 40x ORDER at 10,000 elements), so longer genes are crossed by ORDER and a chunk
# stays cancellable within a fraction of a second (dna.proto says so).
ERX_MAX_SIZE = 1000


def crossover_permutation(
    rng: Rng,
    a: IntArray,
    b: IntArray,
    crossover: dna_pb2.PermutationCrossover.ValueType = dna_pb2.PERMUTATION_CROSSOVER_ORDER,
) -> tuple[IntArray, IntArray]:
    """Two children per pair of rows, by `crossover`.

    ORDER (OX1) and PARTIALLY_MAPPED (PMX): two positions drawn uniformly bound the slice
    (inclusive, so 1 to size elements); the first child keeps a's slice, the second b's.
    EDGE_RECOMBINATION: the first child starts at a's first city, the second at b's;
    permutations longer than ERX_MAX_SIZE are crossed by ORDER instead.
    """
    n, size = a.shape
    if crossover == dna_pb2.PERMUTATION_CROSSOVER_EDGE_RECOMBINATION and size <= ERX_MAX_SIZE:
        u = rng.random((n, 2, size, 2))
        first = np.stack([a, b], axis=1).reshape(2 * n, size)
        second = np.stack([b, a], axis=1).reshape(2 * n, size)
        children = edge_recombination(u.reshape(2 * n, size, 2), first, second)
        return children[0::2], children[1::2]
    cuts = np.minimum((rng.random((n, 2)) * size).astype(np.int64), size - 1)
    lo, hi = cuts.min(axis=1), cuts.max(axis=1)
    cross = (
        partially_mapped_crossover
        if crossover == dna_pb2.PERMUTATION_CROSSOVER_PARTIALLY_MAPPED
        else order_crossover
    )
    # Both children in one call (rows are independent): half the fixed cost per call.
    children = cross(np.concatenate([a, b]), np.concatenate([b, a]), np.tile(lo, 2), np.tile(hi, 2))
    return children[:n], children[n:]


# Up to this size, INVERSION moves of all rows are applied together by one gather.
_VECTOR_REVERSE_SIZE = 256


def _reverse_segments(x: IntArray, lo: IntArray, hi: IntArray) -> IntArray:
    positions = np.arange(x.shape[1])
    inside = (positions >= lo[:, None]) & (positions <= hi[:, None])
    source = np.where(inside, (lo + hi)[:, None] - positions, positions)
    return np.take_along_axis(x, source, axis=1)


def mutate_permutation(
    rng: Rng, x: IntArray, rate: float, mutation: dna_pb2.PermutationMutation.ValueType
) -> IntArray:
    """Each position, visited left to right, with probability `rate` swapped with (SWAP),
    or the segment between them reversed (INVERSION), another position drawn uniformly.

    Moves apply in sequence within a row; rows progress together: step e applies the e-th
    move of every row that has one, so the loop runs max(moves per row) times.
    """
    n, size = x.shape
    u = rng.random((n, size, 2))
    rows, at = np.nonzero(u[..., 0] < rate)  # row-major: each row's moves left to right
    partner = np.minimum((u[rows, at, 1] * (size - 1)).astype(np.int64), size - 2)
    partner += partner >= at  # uniform among the other positions
    step = np.arange(rows.size) - np.searchsorted(rows, rows)
    by_step = np.argsort(step, kind="stable")
    edges = np.searchsorted(step[by_step], np.arange(step.max(initial=-1) + 2)).tolist()
    out = x.copy()
    if mutation == dna_pb2.PERMUTATION_MUTATION_SWAP:
        # Flat positions in step order: each step is two slices and three 1-D gathers.
        flat = out.reshape(-1)
        first = (rows * size + at)[by_step]
        second = (rows * size + partner)[by_step]
        for start, stop in itertools.pairwise(edges):
            i, j = first[start:stop], second[start:stop]
            held = flat[i]
            flat[i] = flat[j]
            flat[j] = held
        return out
    for e in range(len(edges) - 1):
        moves = by_step[edges[e] : edges[e + 1]]
        r, p, q = rows[moves], at[moves], partner[moves]
        if size <= _VECTOR_REVERSE_SIZE:
            out[r] = _reverse_segments(out[r], np.minimum(p, q), np.maximum(p, q))
        else:
            # Long permutations: reverse each move's slice alone rather than rebuild every
            # moving row (the same result; the work follows the segments, not the rows).
            lo, hi = np.minimum(p, q).tolist(), (np.maximum(p, q) + 1).tolist()
            for row, a, b in zip(r.tolist(), lo, hi, strict=True):
                out[row, a:b] = out[row, a:b][::-1].copy()
    return out


def sample_permutation(rng: Rng, size: int, n: int) -> IntArray:
    """n uniformly random permutations of 0..size-1."""
    return np.argsort(rng.random((n, size)), axis=1, kind="stable").astype(np.int64)


# --- sequences ----------------------------------------------------------------------------


def _past(lengths: IntArray, width: int) -> BoolArray:
    """Mask of the positions at or past each row's length."""
    return np.arange(width) >= lengths[:, None]


def crossover_sequence(
    rng: Rng, a: SequenceBlock, b: SequenceBlock
) -> tuple[SequenceBlock, SequenceBlock]:
    """One-point crossover within the common prefix: per pair, a cut drawn uniformly in
    0..min(both lengths); the children exchange the symbols before the cut, and each keeps
    its own parent's tail (so its length, which stays within the gene's bounds)."""
    common = np.minimum(a.lengths, b.lengths)
    cut = np.minimum((rng.random(common.shape) * (common + 1)).astype(np.int64), common)
    swap = ~_past(cut, a.symbols.shape[1])  # the positions before each row's cut
    return (
        SequenceBlock(np.where(swap, b.symbols, a.symbols), a.lengths.copy()),
        SequenceBlock(np.where(swap, a.symbols, b.symbols), b.lengths.copy()),
    )


def substitute_symbols(
    rng: Rng, block: SequenceBlock, alphabet_size: int, rate: float
) -> SequenceBlock:
    """Each symbol, with probability `rate`, replaced by another drawn uniformly from the
    rest of the alphabet."""
    u = rng.random((*block.symbols.shape, 2))
    others = alphabet_size - 1
    offset = np.minimum((u[..., 1] * others).astype(np.int64), max(others - 1, 0))
    replaced = ((block.symbols.astype(np.int64) + 1 + offset) % alphabet_size).astype(np.uint8)
    hit = (u[..., 0] < rate) & ~_past(block.lengths, block.symbols.shape[1]) & (others > 0)
    return SequenceBlock(np.where(hit, replaced, block.symbols), block.lengths.copy())


def insert_symbols(
    rng: Rng, block: SequenceBlock, alphabet_size: int, rate: float, max_length: int
) -> SequenceBlock:
    """Per row, with probability `rate` and below max_length, one symbol drawn uniformly
    inserted at a uniform position (0..length)."""
    symbols, lengths = block.symbols, block.lengths
    u = rng.random((lengths.size, 3))
    act = (u[:, 0] < rate) & (lengths < max_length)
    at = np.minimum((u[:, 1] * (lengths + 1)).astype(np.int64), lengths)[:, None]
    new = np.minimum((u[:, 2] * alphabet_size).astype(np.int64), alphabet_size - 1)
    positions = np.arange(symbols.shape[1])
    shifted = np.take_along_axis(symbols, np.where(positions > at, positions - 1, positions), 1)
    shifted = np.where(positions == at, new[:, None].astype(np.uint8), shifted)
    return SequenceBlock(np.where(act[:, None], shifted, symbols), lengths + act)


def delete_symbols(rng: Rng, block: SequenceBlock, rate: float, min_length: int) -> SequenceBlock:
    """Per row, with probability `rate` and above min_length, the symbol at a uniform
    position deleted."""
    symbols, lengths = block.symbols, block.lengths
    width = symbols.shape[1]
    u = rng.random((lengths.size, 2))
    act = (u[:, 0] < rate) & (lengths > min_length)
    at = np.minimum((u[:, 1] * lengths).astype(np.int64), lengths - 1)[:, None]
    positions = np.arange(width)
    source = np.minimum(np.where(positions >= at, positions + 1, positions), width - 1)
    shifted = np.take_along_axis(symbols, source, axis=1)
    shifted[_past(lengths - 1, width)] = 0
    return SequenceBlock(np.where(act[:, None], shifted, symbols), lengths - act)


def sample_sequence(rng: Rng, spec: SequenceSpec, n: int) -> SequenceBlock:
    """n sequences: lengths uniform in [min_length, max_length], symbols uniform."""
    u = rng.random((n, spec.max_length + 1))
    spread = spec.max_length - spec.min_length
    lengths = spec.min_length + np.minimum((u[:, 0] * (spread + 1)).astype(np.int64), spread)
    alphabet = len(spec.alphabet)
    symbols: ByteArray = np.minimum((u[:, 1:] * alphabet).astype(np.uint8), alphabet - 1)
    symbols[_past(lengths, spec.max_length)] = 0
    return SequenceBlock(symbols, lengths)
