"""Permutation crossovers (OX1, PMX, ERX): hand-worked examples from the literature, plain
Python references of each textbook algorithm, and their properties."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helix.v1.dna_pb2 as dna_pb2
from helix.generator import operators as ops

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ORDER = dna_pb2.PERMUTATION_CROSSOVER_ORDER
PMX = dna_pb2.PERMUTATION_CROSSOVER_PARTIALLY_MAPPED
ERX = dna_pb2.PERMUTATION_CROSSOVER_EDGE_RECOMBINATION
CROSSOVERS = st.sampled_from([ORDER, PMX, ERX])

# Eiben & Smith, Introduction to Evolutionary Computing, §4.5.2 (figures 4.9 to 4.13),
# written 0-based: the book's cities 1..9 are 0..8 here.
P1 = [1, 2, 3, 4, 5, 6, 7, 8, 9]
P2 = [9, 3, 7, 8, 2, 6, 5, 1, 4]


def rows(*perms: list[int]) -> np.ndarray:
    return np.array([[e - 1 for e in p] for p in perms], dtype=np.int64)


def one_based(x: np.ndarray) -> list[list[int]]:
    return (x + 1).tolist()


def is_permutation(x: np.ndarray) -> bool:
    return bool(np.array_equal(np.sort(x, axis=1), np.broadcast_to(np.arange(x.shape[1]), x.shape)))


def edges(tour: list[int]) -> set[frozenset[int]]:
    return {frozenset((tour[i], tour[(i + 1) % len(tour)])) for i in range(len(tour))}


# --- OX1 ----------------------------------------------------------------------------------


def reference_ox1(keep: list[int], other: list[int], lo: int, hi: int) -> list[int]:
    """Davis' OX1 as Eiben & Smith state it: copy the slice; starting just after it, fill
    the rest with the other parent's elements in its order from just after the second cut,
    wrapping around, skipping those already in the child."""
    size = len(keep)
    child: list[int | None] = [None] * size
    child[lo : hi + 1] = keep[lo : hi + 1]
    position = (hi + 1) % size
    for k in range(size):
        element = other[(hi + 1 + k) % size]
        if element not in child:
            child[position] = element
            position = (position + 1) % size
    return [e for e in child if e is not None]  # every position is filled


def test_ox1_eiben_smith_example() -> None:
    # Slice 4 5 6 7 (positions 3..6) of P1; P2 read from after the second cut is
    # 1 4 9 3 7 8 2 6 5, less 4 5 6 7: 1 9 3 8 2, written from position 7 wrapping.
    lo, hi = np.array([3]), np.array([6])
    assert one_based(ops.order_crossover(rows(P1), rows(P2), lo, hi)) == [
        [3, 8, 2, 4, 5, 6, 7, 1, 9]
    ]
    assert one_based(ops.order_crossover(rows(P2), rows(P1), lo, hi)) == [
        [3, 4, 7, 8, 2, 6, 5, 9, 1]
    ]


def test_ox1_issue_example_crossing_with_itself() -> None:
    # The issue's counterexample: 0..9 with slice 3..5 used to give [7,8,9,3,4,5,0,1,2,6].
    tour = np.arange(10)[None, :]
    assert ops.order_crossover(tour, tour, np.array([3]), np.array([5])).tolist() == [
        list(range(10))
    ]


@PROPERTY
@given(size=st.integers(2, 12), seed=st.integers(0, 2**32))
def test_ox1_matches_the_reference(size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = (ops.sample_permutation(rng, size, 20) for _ in range(2))
    cuts = np.sort(rng.integers(0, size, (20, 2)), axis=1)
    child = ops.order_crossover(a, b, cuts[:, 0], cuts[:, 1])
    for r in range(20):
        lo, hi = int(cuts[r, 0]), int(cuts[r, 1])
        assert child[r].tolist() == reference_ox1(a[r].tolist(), b[r].tolist(), lo, hi)


# --- PMX ----------------------------------------------------------------------------------


def reference_pmx(keep: list[int], other: list[int], lo: int, hi: int) -> list[int]:
    """PMX step by step as Eiben & Smith state it: copy the slice of `keep`; for each
    element i of other's slice not yet copied, with j the child's element at i's
    position, place i where j is in `other`, or, if that place is taken by k, where k is
    in `other`, and so on; then copy the rest of `other`."""
    size = len(keep)
    child: list[int | None] = [None] * size
    child[lo : hi + 1] = keep[lo : hi + 1]
    for p in range(lo, hi + 1):
        i = other[p]
        if i in child:
            continue
        q = p
        while lo <= q <= hi:
            mapped = child[q]  # set: q is in the slice
            assert mapped is not None
            q = other.index(mapped)
        child[q] = i
    return [other[p] if e is None else e for p, e in enumerate(child)]


def test_pmx_eiben_smith_example() -> None:
    lo, hi = np.array([3]), np.array([6])
    # 8 goes where 4 is in P2 (position 8); 2 where 5 is in P2 (6, in the slice), so where
    # 7 is in P2 (position 2); the rest (9, 3, 1) from P2.
    assert one_based(ops.partially_mapped_crossover(rows(P1), rows(P2), lo, hi)) == [
        [9, 3, 2, 4, 5, 6, 7, 1, 8]
    ]
    assert reference_pmx([e - 1 for e in P1], [e - 1 for e in P2], 3, 6) == [
        e - 1 for e in [9, 3, 2, 4, 5, 6, 7, 1, 8]
    ]


@PROPERTY
@given(size=st.integers(2, 12), seed=st.integers(0, 2**32))
def test_pmx_matches_the_reference(size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = (ops.sample_permutation(rng, size, 20) for _ in range(2))
    cuts = np.sort(rng.integers(0, size, (20, 2)), axis=1)
    child = ops.partially_mapped_crossover(a, b, cuts[:, 0], cuts[:, 1])
    for r in range(20):
        lo, hi = int(cuts[r, 0]), int(cuts[r, 1])
        assert child[r].tolist() == reference_pmx(a[r].tolist(), b[r].tolist(), lo, hi)


# --- ERX ----------------------------------------------------------------------------------


def reference_erx(u: np.ndarray, first: list[int], second: list[int]) -> tuple[list[int], int]:
    """Edge recombination one city at a time, with the same draws as the operator: the
    child, and how many steps took a parent edge."""
    size = len(first)
    slots: dict[int, list[int]] = {}
    for city in range(size):
        found = []
        for parent in (first, second):
            at = parent.index(city)
            found += [parent[at - 1], parent[(at + 1) % size]]
        slots[city] = list(dict.fromkeys(found))  # slot order, repeats dropped
    table = {city: set(found) for city, found in slots.items()}
    child, current, via_edges = [first[0]], first[0], 0
    while len(child) < size:
        for neighbours in table.values():
            neighbours.discard(current)
        step = len(child) - 1
        options = [c for c in slots[current] if c not in child]
        if options:
            fewest = min(len(table[c]) for c in options)
            tied = [c for c in options if len(table[c]) == fewest]
            current = tied[min(int(u[step, 0] * len(tied)), len(tied) - 1)]
            via_edges += 1
        else:
            free = [c for c in range(size) if c not in child]
            current = free[min(int(u[step, 1] * len(free)), len(free) - 1)]
        child.append(current)
    return child, via_edges


def test_erx_worked_example() -> None:
    # With every draw 0 (the first tied neighbour, in the order P1's predecessor, P1's
    # successor, P2's predecessor, P2's successor), from city 1: 1's neighbours 9 2 5 4
    # have 3 3 2 3 left, so 5; 5's (4 6) have 2 2: 4; 4's (3 9) have 3 2: 9; 9's (8 3)
    # 2 2: 8; 8's (7 2) 2 2: 7; 7's (6 3) 1 1: 6; then 2, then 3.
    u = np.zeros((1, 9, 2))
    child = ops.edge_recombination(u, rows(P1), rows(P2))
    assert one_based(child) == [[1, 5, 4, 9, 8, 7, 6, 2, 3]]
    assert reference_erx(u[0], [e - 1 for e in P1], [e - 1 for e in P2])[0] == (child[0].tolist())


@PROPERTY
@given(size=st.integers(2, 14), seed=st.integers(0, 2**32))
def test_erx_matches_the_reference_and_keeps_parent_edges(size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = (ops.sample_permutation(rng, size, 10) for _ in range(2))
    u = rng.random((10, size, 2))
    child = ops.edge_recombination(u, a, b)
    for r in range(10):
        want, via_edges = reference_erx(u[r], a[r].tolist(), b[r].tolist())
        assert child[r].tolist() == want
        # Wherever a parent edge was available it was taken.
        parent_edges = edges(a[r].tolist()) | edges(b[r].tolist())
        tour = child[r].tolist()
        taken = sum(frozenset(tour[i : i + 2]) in parent_edges for i in range(size - 1))
        assert taken >= via_edges


# --- all three ----------------------------------------------------------------------------


@PROPERTY
@given(size=st.integers(1, 30), seed=st.integers(0, 2**32), crossover=CROSSOVERS)
def test_children_are_permutations(
    size: int, seed: int, crossover: dna_pb2.PermutationCrossover.ValueType
) -> None:
    rng = np.random.default_rng(seed)
    a, b = (ops.sample_permutation(rng, size, 25) for _ in range(2))
    c1, c2 = ops.crossover_permutation(rng, a, b, crossover)
    assert is_permutation(c1)
    assert is_permutation(c2)


@PROPERTY
@given(size=st.integers(1, 30), seed=st.integers(0, 2**32), crossover=CROSSOVERS)
def test_crossing_a_permutation_with_itself_returns_it(
    size: int, seed: int, crossover: dna_pb2.PermutationCrossover.ValueType
) -> None:
    rng = np.random.default_rng(seed)
    a = ops.sample_permutation(rng, size, 25)
    for child in ops.crossover_permutation(rng, a, a, crossover):
        if crossover == ERX:
            # The same tour from the same first city, in either direction.
            backwards = np.concatenate([a[:, :1], a[:, :0:-1]], axis=1)
            assert np.all(np.all(child == a, axis=1) | np.all(child == backwards, axis=1))
        else:
            assert np.array_equal(child, a)


@PROPERTY
@given(size=st.integers(2, 20), seed=st.integers(0, 2**32), crossover=CROSSOVERS)
def test_one_row_ordered_draw_gives_the_prefix_property(
    size: int, seed: int, crossover: dna_pb2.PermutationCrossover.ValueType
) -> None:
    rng = np.random.default_rng(seed)
    a, b = (ops.sample_permutation(rng, size, 30) for _ in range(2))
    full = ops.crossover_permutation(np.random.default_rng(seed), a, b, crossover)
    part = ops.crossover_permutation(np.random.default_rng(seed), a[:11], b[:11], crossover)
    for whole, prefix in zip(full, part, strict=True):
        assert np.array_equal(whole[:11], prefix)


def test_erx_children_start_at_each_parents_first_city() -> None:
    rng = np.random.default_rng(5)
    a, b = (ops.sample_permutation(rng, 52, 40) for _ in range(2))
    c1, c2 = ops.crossover_permutation(rng, a, b, ERX)
    assert np.array_equal(c1[:, 0], a[:, 0])
    assert np.array_equal(c2[:, 0], b[:, 0])
    # On random tours most steps follow a parent edge (dead ends are rare).
    parent = [edges(a[r].tolist()) | edges(b[r].tolist()) for r in range(40)]
    kept = [len(edges(c1[r].tolist()) & parent[r]) for r in range(40)]
    assert np.median(kept) >= 45
