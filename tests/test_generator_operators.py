"""Genetic operators and the chunked driver: validity, determinism, and the exact semantics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from google.protobuf.json_format import ParseDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
from helix.generator import operators as ops
from helix.generator import strategies
from helix.genome.layout import Layout, Population, SequenceBlock, normalise

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MINIMIZE, MAXIMIZE = common_pb2.OBJECTIVE_MINIMIZE, common_pb2.OBJECTIVE_MAXIMIZE
PASSED = candidate_pb2.VERDICT_STATUS_PASSED

RICH_GENES: list[dict[str, Any]] = [
    {"name": "x", "real": {"low": -5.12, "high": 5.12, "size": 10}},
    {"name": "lr", "real": {"low": 1e-5, "high": 1.0, "log_scale": True}},
    {"name": "layers", "integer": {"low": 1, "high": 8, "size": 2}},
    {"name": "optimizer", "choice": {"options": ["adam", "sgd", "rmsprop"]}},
    {"name": "mask", "bits": {"size": 64}},
    {"name": "route", "permutation": {"size": 52}},
    {"name": "primer", "sequence": {"alphabet": "ACGT", "min_length": 18, "max_length": 24}},
]


def make_layout(genes: list[dict[str, Any]], strategy: dict[str, Any] | None = None) -> Layout:
    document = {"genes": genes, "strategy": strategy or {"alpha": {"elitism": 2}}}
    return Layout(normalise(ParseDict(document, dna_pb2.Dna())))


RICH = make_layout(RICH_GENES)


# --- helpers ------------------------------------------------------------------------------


@dataclass
class Output:
    """A whole generation, chunks concatenated."""

    elites: np.ndarray
    children: Population
    lineage: np.ndarray
    chunk_lengths: list[int]


def run(
    layout: Layout, parents: Population | None, count: int, seed: int, generation: int
) -> Output:
    chunks = list(strategies.generate(layout, parents, count, seed, generation))
    empty = layout.empty(0)
    return Output(
        elites=np.concatenate([c.elites for c in chunks] or [np.zeros(0, np.int64)]),
        children=Population.concat([empty] + [c.children for c in chunks]),
        lineage=np.concatenate([c.parents for c in chunks] or [np.zeros((0, 2), np.int64)]),
        chunk_lengths=[len(c) for c in chunks],
    )


def sample(layout: Layout, n: int, seed: int) -> Population:
    return run(layout, None, n, seed, 0).children


def arrays(pop: Population) -> list[np.ndarray]:
    out = [pop.reals, pop.integers, pop.choices, pop.bits, *pop.permutations]
    for block in pop.sequences:
        out += [block.symbols, block.lengths]
    return out


def same(p: Population, q: Population) -> bool:
    return all(
        a.dtype == b.dtype and np.array_equal(a, b)
        for a, b in zip(arrays(p), arrays(q), strict=True)
    )


def same_output(a: Output, b: Output) -> bool:
    return (
        np.array_equal(a.elites, b.elites)
        and np.array_equal(a.lineage, b.lineage)
        and same(a.children, b.children)
    )


def assert_valid(layout: Layout, pop: Population) -> None:
    n = len(pop)
    assert pop.reals.dtype == np.float64
    assert pop.reals.shape == (n, layout.n_reals)
    assert np.all(np.isfinite(pop.reals))
    assert np.all((pop.reals >= layout.real_low) & (pop.reals <= layout.real_high))
    assert pop.integers.dtype == np.int64
    assert pop.integers.shape == (n, layout.n_integers)
    assert np.all((pop.integers >= layout.integer_low) & (pop.integers <= layout.integer_high))
    assert pop.choices.dtype == np.int64
    assert pop.choices.shape == (n, layout.n_choices)
    assert np.all((pop.choices >= 0) & (pop.choices < layout.choice_counts))
    assert pop.bits.dtype == np.bool_
    assert pop.bits.shape == (n, layout.n_bits)
    for perm, size in zip(pop.permutations, layout.permutation_sizes, strict=True):
        assert perm.dtype == np.int64
        assert perm.shape == (n, size)
        assert np.array_equal(np.sort(perm, axis=1), np.broadcast_to(np.arange(size), perm.shape))
    for block, spec in zip(pop.sequences, layout.sequences, strict=True):
        assert_valid_sequence(block, len(spec.alphabet), spec.min_length, spec.max_length)


def assert_valid_sequence(block: SequenceBlock, alphabet: int, low: int, high: int) -> None:
    n = block.lengths.size
    assert block.symbols.dtype == np.uint8
    assert block.symbols.shape == (n, high)
    assert block.lengths.dtype == np.int64
    assert np.all((block.lengths >= low) & (block.lengths <= high))
    assert np.all(block.symbols < alphabet)
    assert not np.any(block.symbols[np.arange(high) >= block.lengths[:, None]])


def ranked(
    pop: Population, ids: Sequence[str], statuses: Sequence[int], scores: Sequence[float]
) -> Population:
    return pop.take(strategies.rank(ids, statuses, scores, MINIMIZE))


# --- hypothesis strategies ----------------------------------------------------------------

rates = st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)
etas = st.sampled_from([0.0, 1000.0]) | st.floats(0.0, 1000.0)
huge = st.floats(-1e300, 1e300, allow_nan=False)


@st.composite
def real_genes(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        low = draw(st.sampled_from([1e-300, 1e-5, 1.0]) | st.floats(1e-300, 1e300))
        high = draw(st.sampled_from([low, 1e300]) | st.floats(low, 1e300))
        return {"low": low, "high": high, "size": draw(st.integers(1, 3)), "log_scale": True}
    low = draw(st.sampled_from([-1e300, -1.0, 0.0]) | huge)
    high = draw(st.sampled_from([low, 1e300]) | st.floats(low, 1e300))
    return {"low": low, "high": high, "size": draw(st.integers(1, 3))}


@st.composite
def integer_genes(draw: st.DrawFn) -> dict[str, Any]:
    limit = 2**53
    low = draw(st.sampled_from([-limit, 0]) | st.integers(-limit, limit))
    high = draw(st.sampled_from([low, limit]) | st.integers(low, min(limit, low + 10)))
    return {"low": low, "high": high, "size": draw(st.integers(1, 3))}


@st.composite
def sequence_genes(draw: st.DrawFn) -> dict[str, Any]:
    alphabet = draw(st.sampled_from(["A", "AC", "ACGT", "".join(map(chr, range(256)))]))
    low = draw(st.integers(0, 4))
    high = draw(st.integers(max(low, 1), low + 6))
    return {"alphabet": alphabet, "min_length": low, "max_length": high}


genes = st.one_of(
    real_genes().map(lambda g: {"real": g}),
    integer_genes().map(lambda g: {"integer": g}),
    st.integers(1, 5).map(lambda k: {"choice": {"options": [f"o{i}" for i in range(k)]}}),
    st.integers(1, 70).map(lambda k: {"bits": {"size": k}}),
    st.integers(2, 12).map(lambda k: {"permutation": {"size": k}}),
    sequence_genes().map(lambda g: {"sequence": g}),
)


@st.composite
def numeric_operators(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "crossover": draw(
            st.sampled_from(["NUMERIC_CROSSOVER_BLEND", "NUMERIC_CROSSOVER_SIMULATED_BINARY"])
        ),
        "mutation": draw(
            st.sampled_from(["NUMERIC_MUTATION_GAUSSIAN", "NUMERIC_MUTATION_POLYNOMIAL"])
        ),
        "bounds": draw(st.sampled_from(["BOUND_HANDLING_CLIP", "BOUND_HANDLING_REFLECT"])),
        "blend_alpha": draw(st.sampled_from([0.0, 10.0]) | st.floats(0.0, 10.0)),
        "sbx_eta": draw(etas),
        "gaussian_sigma": draw(st.sampled_from([10.0]) | st.floats(1e-3, 10.0)),
        "polynomial_eta": draw(etas),
    }


@st.composite
def alpha_strategies(draw: st.DrawFn) -> dict[str, Any]:
    alpha: dict[str, Any] = {
        "population_size": 8,
        "elitism": draw(st.integers(0, 3)),
        "tournament_size": draw(st.integers(1, 4)),
        "crossover_rate": draw(rates),
        "mutation_rate": draw(rates),
        "child_mutation_rate": draw(rates),
        "real": draw(numeric_operators()),
        "integer": draw(numeric_operators()),
        "choice": {"gene_mutation_rate": draw(rates)},
        "permutation": {
            "mutation": draw(
                st.sampled_from(["PERMUTATION_MUTATION_SWAP", "PERMUTATION_MUTATION_INVERSION"])
            ),
            "crossover": draw(
                st.sampled_from(
                    [
                        "PERMUTATION_CROSSOVER_ORDER",
                        "PERMUTATION_CROSSOVER_PARTIALLY_MAPPED",
                        "PERMUTATION_CROSSOVER_EDGE_RECOMBINATION",
                    ]
                )
            ),
        },
        "sequence": {
            "substitution_rate": draw(rates),
            "insertion_rate": draw(rates),
            "deletion_rate": draw(rates),
        },
    }
    if draw(st.booleans()):
        alpha["bits"] = {"flip_rate": draw(rates)}
    return {"alpha": alpha}


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    kinds = draw(st.lists(genes, min_size=1, max_size=4))
    return make_layout(
        [{"name": f"g{i}", **kind} for i, kind in enumerate(kinds)], draw(alpha_strategies())
    )


@dataclass
class Scenario:
    layout: Layout
    pool: Population  # unranked parents
    ids: list[str]
    statuses: list[int]
    scores: list[float]
    count: int
    seed: int
    generation: int

    @property
    def parents(self) -> Population:
        return ranked(self.pool, self.ids, self.statuses, self.scores)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    layout = draw(layouts())
    n = draw(st.integers(1, 10))
    return Scenario(
        layout=layout,
        pool=sample(layout, n, draw(st.integers(0, 2**64 - 1))),
        ids=[f"{i:032x}" for i in draw(st.permutations(range(n)))],
        statuses=draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)),
        scores=draw(st.lists(st.sampled_from([0.0, 1.0]) | huge, min_size=n, max_size=n)),
        count=draw(st.integers(1, 40)),
        seed=draw(st.integers(0, 2**64 - 1)),
        generation=draw(st.integers(1, 2**32 - 1)),
    )


# --- the driver ---------------------------------------------------------------------------


@PROPERTY
@given(layout=layouts(), count=st.integers(0, 40), seed=st.integers(0, 2**64 - 1))
def test_generation_zero_is_valid_and_reproducible(layout: Layout, count: int, seed: int) -> None:
    first = run(layout, None, count, seed, 0)
    assert len(first.children) == count
    assert first.elites.size == 0
    assert np.array_equal(first.lineage, np.full((count, 2), -1))
    assert_valid(layout, first.children)
    assert same_output(first, run(layout, None, count, seed, 0))


@PROPERTY
@given(scenarios())
def test_children_are_valid_and_reproducible(case: Scenario) -> None:
    parents = case.parents
    out = run(case.layout, parents, case.count, case.seed, case.generation)
    n_elites = min(case.layout.dna.strategy.alpha.elitism, case.count, len(parents))
    assert np.array_equal(out.elites, np.arange(n_elites))
    assert len(out.children) == case.count - n_elites
    assert_valid(case.layout, out.children)
    assert out.lineage.shape == (len(out.children), 2)
    assert np.all(out.lineage[:, 0] >= 0)
    assert np.all(out.lineage < len(parents))
    assert not np.any(out.lineage[:, 0] == out.lineage[:, 1])
    assert same_output(out, run(case.layout, parents, case.count, case.seed, case.generation))


@PROPERTY
@given(case=scenarios(), shuffle_seed=st.integers(0, 2**32))
def test_parent_order_does_not_change_the_output(case: Scenario, shuffle_seed: int) -> None:
    order = np.random.default_rng(shuffle_seed).permutation(len(case.pool))
    shuffled = ranked(
        case.pool.take(order),
        [case.ids[i] for i in order],
        [case.statuses[i] for i in order],
        [case.scores[i] for i in order],
    )
    expected = run(case.layout, case.parents, case.count, case.seed, case.generation)
    assert same_output(expected, run(case.layout, shuffled, case.count, case.seed, case.generation))


@settings(max_examples=10, deadline=None, database=None)
@given(seeds=st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=2, unique=True))
def test_different_seeds_give_different_candidates(seeds: list[int]) -> None:
    a, b = (sample(RICH, 8, seed) for seed in seeds)
    assert not same(a, b)
    parents = sample(RICH, 16, 0)
    a, b = (run(RICH, parents, 8, seed, 1).children for seed in seeds)
    assert not same(a, b)
    assert not same(run(RICH, parents, 8, 0, 1).children, run(RICH, parents, 8, 0, 2).children)


@pytest.mark.parametrize("with_parents", [False, True])
def test_fewer_candidates_are_a_prefix_of_more(with_parents: bool) -> None:
    parents = sample(RICH, 64, 1) if with_parents else None
    small = run(RICH, parents, 2500, 9, 3)
    large = run(RICH, parents, 3000, 9, 3)
    assert small.chunk_lengths == [1024, 1024, 452]
    assert large.chunk_lengths == [1024, 1024, 952]
    n = len(small.children)
    assert np.array_equal(small.elites, large.elites)
    assert np.array_equal(small.lineage, large.lineage[:n])
    assert same(small.children, large.children.take(np.arange(n)))


def test_wide_genomes_get_smaller_chunks_with_the_same_prefix_property() -> None:
    layout = make_layout([{"name": "mask", "bits": {"size": 200_000}}])
    size = strategies.chunk_size(layout)
    assert size == strategies.CHUNK_BYTES // (8 * 200_000) < strategies.CHUNK
    assert strategies.chunk_size(RICH) == strategies.CHUNK
    parents = sample(layout, 4, 0)
    small, large = run(layout, parents, 2 * size + 3, 5, 1), run(layout, parents, 3 * size, 5, 1)
    assert small.chunk_lengths == [size, size, 3]
    n = len(small.children)
    assert same(small.children, large.children.take(np.arange(n)))


def test_elites_come_first_in_rank_order_and_can_span_chunks() -> None:
    layout = make_layout(RICH_GENES[:1], {"alpha": {"population_size": 3000, "elitism": 1500}})
    pool = sample(layout, 2000, 4)
    scores = list(np.random.default_rng(0).random(2000))
    ids = [f"{i:032x}" for i in range(2000)]
    parents = ranked(pool, ids, [PASSED] * 2000, scores)
    chunks = list(strategies.generate(layout, parents, 1600, 0, 1))
    assert [c.elites.size for c in chunks] == [1024, 476]
    assert [len(c.children) for c in chunks] == [0, 100]
    assert np.array_equal(np.concatenate([c.elites for c in chunks]), np.arange(1500))
    # count below elitism: only elites
    only = run(layout, parents, 3, 0, 1)
    assert np.array_equal(only.elites, [0, 1, 2])
    assert len(only.children) == 0


def test_random_strategy_ignores_parents_and_alpha_without_parents_samples() -> None:
    layout = make_layout(RICH_GENES, {"random": {}})
    parents = sample(layout, 10, 0)
    with_parents = run(layout, parents, 50, 3, 4)
    assert same_output(with_parents, run(layout, None, 50, 3, 4))
    assert np.all(with_parents.lineage == -1)
    late = run(RICH, None, 50, 3, 7)
    assert late.elites.size == 0
    assert np.all(late.lineage == -1)
    assert_valid(RICH, late.children)


def test_zero_rates_copy_the_parents() -> None:
    layout = make_layout(
        RICH_GENES,
        {
            "alpha": {
                "elitism": 0,
                "crossover_rate": 0.0,
                "mutation_rate": 0.0,
                "bits": {"flip_rate": 0.0},
                "sequence": {"insertion_rate": 0.0, "deletion_rate": 0.0},
            }
        },
    )
    parents = sample(layout, 12, 0)
    out = run(layout, parents, 100, 1, 1)
    assert np.all(out.lineage[:, 1] == -1)
    assert same(out.children, parents.take(out.lineage[:, 0]))


def test_crossover_without_mutation_only_recombines() -> None:
    layout = make_layout(
        RICH_GENES,
        {
            "alpha": {
                "crossover_rate": 1.0,
                "mutation_rate": 0.0,
                "bits": {"flip_rate": 0.0},
                "sequence": {"insertion_rate": 0.0, "deletion_rate": 0.0},
            }
        },
    )
    parents = sample(layout, 12, 0)
    out = run(layout, parents, 100, 1, 1)
    kids, lineage = out.children, out.lineage
    crossed = lineage[:, 1] >= 0
    assert crossed.any()
    copies = np.flatnonzero(~crossed)  # only where the same parent was drawn twice
    assert same(kids.take(copies), parents.take(lineage[copies, 0]))
    first, second = parents.take(lineage[crossed, 0]), parents.take(lineage[crossed, 1])
    kids = kids.take(np.flatnonzero(crossed))
    # choices and bits come from one parent or the other, position by position
    assert np.all((kids.choices == first.choices) | (kids.choices == second.choices))
    assert np.all((kids.bits == first.bits) | (kids.bits == second.bits))
    # a sequence child keeps its own parent's length and tail
    own, mate = first.sequences[0], second.sequences[0]
    assert np.array_equal(kids.sequences[0].lengths, own.lengths)
    beyond = np.arange(24) >= np.minimum(own.lengths, mate.lengths)[:, None]
    assert np.array_equal(kids.sequences[0].symbols[beyond], own.symbols[beyond])


# --- ranking and selection ----------------------------------------------------------------


@settings(max_examples=100, deadline=None, database=None)
@given(
    rows=st.lists(
        st.tuples(
            st.text(st.characters(min_codepoint=1, codec="utf-8"), max_size=3),
            st.integers(0, 4),
            st.sampled_from([0.0, -0.0, 1.0]) | st.floats(allow_nan=False, allow_infinity=False),
        ),
        max_size=30,
    ),
    objective=st.sampled_from([MINIMIZE, MAXIMIZE]),
)
def test_rank_follows_the_objective_rule(
    rows: list[tuple[str, int, float]], objective: int
) -> None:
    ids = [r[0] for r in rows]
    statuses = [r[1] for r in rows]
    scores = [r[2] for r in rows]
    order = strategies.rank(ids, statuses, scores, objective)
    sign = 1.0 if objective == MINIMIZE else -1.0

    def key(i: int) -> tuple[int, float, bytes]:
        if statuses[i] in (1, 2):
            return (0, sign * scores[i], ids[i].encode())
        return (1, 0.0, ids[i].encode())

    assert [key(i) for i in order] == sorted(key(i) for i in range(len(rows)))
    assert sorted(order.tolist()) == list(range(len(rows)))


def test_rank_examples() -> None:
    ids = ["d", "c", "b", "a", "e"]
    statuses = [PASSED, 2, 3, 0, PASSED]
    scores = [1.0, 1.0, -5.0, -9.0, 0.5]
    assert list(strategies.rank(ids, statuses, scores, MINIMIZE)) == [4, 1, 0, 3, 2]
    assert list(strategies.rank(ids, statuses, scores, MAXIMIZE)) == [1, 0, 4, 3, 2]
    with pytest.raises(ValueError, match="objective"):
        strategies.rank(ids, statuses, scores, common_pb2.OBJECTIVE_UNSPECIFIED)


def test_tournament_takes_the_best_of_its_draws() -> None:
    picks = strategies.tournament(np.random.default_rng(3), 10, 1000, 3)
    u = np.random.default_rng(3).random((1000, 3))
    assert np.array_equal(picks, np.floor(u * 10).astype(np.int64).min(axis=1))
    assert np.bincount(picks, minlength=10)[0] > np.bincount(picks, minlength=10)[9]
    uniform = strategies.tournament(np.random.default_rng(3), 10, 5000, 1)
    assert set(uniform.tolist()) == set(range(10))


# --- operators: numeric -------------------------------------------------------------------

EXTREME = make_layout(
    [
        {"name": "wide", "real": {"low": -1e300, "high": 1e300, "size": 3}},
        {"name": "point", "real": {"low": 2.5, "high": 2.5}},
        {"name": "logwide", "real": {"low": 1e-300, "high": 1e300, "log_scale": True}},
        {"name": "tiny", "real": {"low": 0.0, "high": 5e-324}},
    ]
)
EXTREME_INT = make_layout(
    [
        {"name": "wide", "integer": {"low": -(2**53), "high": 2**53, "size": 3}},
        {"name": "point", "integer": {"low": 7, "high": 7}},
    ]
)


@pytest.mark.parametrize("eta", [0.0, 1000.0])
@pytest.mark.parametrize("bounds", [dna_pb2.BOUND_HANDLING_CLIP, dna_pb2.BOUND_HANDLING_REFLECT])
@pytest.mark.parametrize(
    "crossover", [dna_pb2.NUMERIC_CROSSOVER_BLEND, dna_pb2.NUMERIC_CROSSOVER_SIMULATED_BINARY]
)
@pytest.mark.parametrize(
    "mutation", [dna_pb2.NUMERIC_MUTATION_GAUSSIAN, dna_pb2.NUMERIC_MUTATION_POLYNOMIAL]
)
def test_numeric_operators_stay_finite_and_in_bounds_at_the_extremes(
    eta: float, bounds: Any, crossover: Any, mutation: Any
) -> None:
    numeric = ops.NumericOperators(crossover, mutation, bounds, 10.0, eta, 10.0, eta)
    rng = np.random.default_rng(0)
    for layout in (EXTREME, EXTREME_INT):
        pop = sample(layout, 500, 1)
        a, b = pop.take(np.arange(250)), pop.take(np.arange(250, 500))
        if layout is EXTREME:
            columns = ops.NumericColumns.reals(layout)
            c1, c2 = ops.crossover_reals(rng, a.reals, b.reals, columns, numeric)
            kids: list[Any] = [c1, c2, ops.mutate_reals(rng, c1, columns, numeric, 1.0)]
            low: Any = layout.real_low
            high: Any = layout.real_high
        else:
            columns = ops.NumericColumns.integers(layout)
            i1, i2 = ops.crossover_integers(rng, a.integers, b.integers, columns, numeric)
            kids = [i1, i2, ops.mutate_integers(rng, i1, columns, numeric, 1.0)]
            low, high = layout.integer_low, layout.integer_high
            assert all(k.dtype == np.int64 for k in kids)
        for kid in kids:
            assert np.all(np.isfinite(kid))
            assert np.all((kid >= low) & (kid <= high))
        assert not np.array_equal(kids[2], kids[0])  # mutation at rate 1 moves values


@given(st.floats(-1e6, 1e6))
def test_bound_handling_lands_in_the_unit_interval(t: float) -> None:
    for bounds in (dna_pb2.BOUND_HANDLING_CLIP, dna_pb2.BOUND_HANDLING_REFLECT):
        value = ops.bring_into_unit(np.array([t]), bounds)[0]
        assert 0.0 <= value <= 1.0


def test_reflect_mirrors_repeatedly_and_clip_clamps() -> None:
    t = np.array([-0.3, 1.3, 2.5, -2.25, 0.4, 1.0, 0.0])
    reflect = ops.bring_into_unit(t, dna_pb2.BOUND_HANDLING_REFLECT)
    assert np.allclose(reflect, [0.3, 0.7, 0.5, 0.25, 0.4, 1.0, 0.0])
    clip = ops.bring_into_unit(t, dna_pb2.BOUND_HANDLING_CLIP)
    assert np.allclose(clip, [0.0, 1.0, 1.0, 0.0, 0.4, 1.0, 0.0])


def test_log_scale_reals_are_log_uniform_and_mutate_in_log_space() -> None:
    layout = make_layout([{"name": "lr", "real": {"low": 1e-6, "high": 1.0, "log_scale": True}}])
    values = sample(layout, 4000, 0).reals[:, 0]
    assert 0.4 < np.mean(values < 1e-3) < 0.6  # half the draws in the lower half of log space
    numeric = ops.NumericOperators.from_proto(layout.dna.strategy.alpha.real)
    columns = ops.NumericColumns.reals(layout)
    mutated = ops.mutate_reals(np.random.default_rng(0), values[:, None], columns, numeric, 1.0)
    assert np.all((mutated >= 1e-6) & (mutated <= 1.0))


def test_unchanged_values_are_kept_exactly() -> None:
    layout = EXTREME
    pop = sample(layout, 100, 2)
    numeric = ops.NumericOperators.from_proto(layout.dna.strategy.alpha.real)
    columns = ops.NumericColumns.reals(layout)
    rng = np.random.default_rng(0)
    assert np.array_equal(ops.mutate_reals(rng, pop.reals, columns, numeric, 0.0), pop.reals)
    c1, c2 = ops.crossover_reals(rng, pop.reals, pop.reals, columns, numeric)
    assert np.array_equal(c1, pop.reals)
    assert np.array_equal(c2, pop.reals)


# --- operators: choices, bits -------------------------------------------------------------


def test_choice_mutation_picks_another_option_uniformly() -> None:
    counts = np.array([1, 2, 5])
    x = np.zeros((3000, 3), dtype=np.int64)
    y = ops.mutate_choices(np.random.default_rng(0), x, counts, 1.0)
    assert np.all(y[:, 0] == 0)
    assert np.all(y[:, 1] == 1)
    assert set(np.unique(y[:, 2]).tolist()) == {1, 2, 3, 4}
    assert np.bincount(y[:, 2])[1:].min() > 600
    assert np.array_equal(ops.mutate_choices(np.random.default_rng(0), y, counts, 0.0), y)


def test_bit_flips_follow_their_column_rates() -> None:
    x = np.zeros((100, 3), dtype=np.bool_)
    y = ops.mutate_bits(np.random.default_rng(0), x, np.array([0.0, 1.0, 0.5]))
    assert not y[:, 0].any()
    assert y[:, 1].all()
    assert 20 < y[:, 2].sum() < 80


# --- operators: permutations --------------------------------------------------------------


def reference_mutation(x: list[int], u: np.ndarray, rate: float, swap: bool) -> list[int]:
    size = len(x)
    out = list(x)
    for p in range(size):
        if u[p, 0] < rate:
            q = min(int(u[p, 1] * (size - 1)), size - 2)
            q += q >= p
            if swap:
                out[p], out[q] = out[q], out[p]
            else:
                lo, hi = min(p, q), max(p, q)
                out[lo : hi + 1] = out[lo : hi + 1][::-1]
    return out


@PROPERTY
@given(
    size=st.integers(2, 9),
    rate=st.sampled_from([0.0, 0.3, 1.0]),
    swap=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_permutation_mutation_applies_moves_left_to_right(
    size: int, rate: float, swap: bool, seed: int
) -> None:
    x = ops.sample_permutation(np.random.default_rng(seed), size, 30)
    kind = dna_pb2.PERMUTATION_MUTATION_SWAP if swap else dna_pb2.PERMUTATION_MUTATION_INVERSION
    y = ops.mutate_permutation(np.random.default_rng(seed + 1), x, rate, kind)
    u = np.random.default_rng(seed + 1).random((30, size, 2))
    for r in range(30):
        assert y[r].tolist() == reference_mutation(x[r].tolist(), u[r], rate, swap)


# --- operators: sequences -----------------------------------------------------------------


def block_of(rows: list[list[int]], width: int) -> SequenceBlock:
    symbols = np.zeros((len(rows), width), dtype=np.uint8)
    for r, row in enumerate(rows):
        symbols[r, : len(row)] = row
    return SequenceBlock(symbols, np.array([len(r) for r in rows], dtype=np.int64))


def rows_of(block: SequenceBlock) -> list[list[int]]:
    return [block.symbols[r, :n].tolist() for r, n in enumerate(block.lengths)]


sequence_rows = st.lists(
    st.lists(st.integers(0, 3), min_size=1, max_size=6), min_size=1, max_size=8
)


@PROPERTY
@given(rows=sequence_rows, seed=st.integers(0, 2**32), rate=st.sampled_from([0.5, 1.0]))
def test_insertion_and_deletion_match_the_reference(
    rows: list[list[int]], seed: int, rate: float
) -> None:
    block = block_of(rows, 6)
    inserted = ops.insert_symbols(np.random.default_rng(seed), block, 4, rate, 6)
    deleted = ops.delete_symbols(np.random.default_rng(seed), block, rate, 1)
    u = np.random.default_rng(seed).random((len(rows), 3))
    v = np.random.default_rng(seed).random((len(rows), 2))
    for r, row in enumerate(rows):
        grown, shrunk = list(row), list(row)
        n = len(row)
        if u[r, 0] < rate and n < 6:
            grown.insert(min(int(u[r, 1] * (n + 1)), n), min(int(u[r, 2] * 4), 3))
        if v[r, 0] < rate and n > 1:
            del shrunk[min(int(v[r, 1] * n), n - 1)]
        assert rows_of(inserted)[r] == grown
        assert rows_of(deleted)[r] == shrunk
    assert_valid_sequence(inserted, 4, 1, 6)
    assert_valid_sequence(deleted, 4, 1, 6)


@PROPERTY
@given(rows=sequence_rows, seed=st.integers(0, 2**32))
def test_substitution_and_crossover_keep_sequences_valid(rows: list[list[int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    block = block_of(rows, 6)
    changed = ops.substitute_symbols(rng, block, 4, 1.0)
    within = np.arange(6) < block.lengths[:, None]
    assert np.all(changed.symbols[within] != block.symbols[within])
    assert_valid_sequence(changed, 4, 1, 6)
    assert np.array_equal(ops.substitute_symbols(rng, block, 1, 1.0).symbols, block.symbols)
    mate = block_of(rows[::-1], 6)
    c1, c2 = ops.crossover_sequence(rng, block, mate)
    assert np.array_equal(c1.lengths, block.lengths)
    assert np.array_equal(c2.lengths, mate.lengths)
    for c in (c1, c2):
        assert_valid_sequence(c, 4, 1, 6)
    # what one child takes from the mate, the other takes from it: the pair is conserved
    assert np.array_equal(
        np.sort(np.stack([c1.symbols, c2.symbols]), axis=0),
        np.sort(np.stack([block.symbols, mate.symbols]), axis=0),
    )


def test_long_inversions_equal_the_vectorised_form(monkeypatch: pytest.MonkeyPatch) -> None:
    # Permutations longer than _VECTOR_REVERSE_SIZE reverse each move's slice alone; the
    # result must be the one the gather over all rows gives.
    rng = np.random.default_rng(3)
    x = np.argsort(rng.random((40, 300)), axis=1).astype(np.int64)
    inversion = dna_pb2.PERMUTATION_MUTATION_INVERSION
    sliced = ops.mutate_permutation(np.random.default_rng(9), x, 0.05, inversion)
    monkeypatch.setattr(ops, "_VECTOR_REVERSE_SIZE", 10**9)
    gathered = ops.mutate_permutation(np.random.default_rng(9), x, 0.05, inversion)
    assert np.array_equal(sliced, gathered)
    assert not np.array_equal(sliced, x)


def test_tournaments_in_blocks_draw_what_one_draw_would() -> None:
    # 300 picks of 5000 draws is more than one block of 2**20: several blocks.
    picks = strategies.tournament(np.random.default_rng(4), 7000, 300, 5000)
    u = np.random.default_rng(4).random((300, 5000))
    expected = np.minimum((u * 7000).astype(np.int64), 6999).min(axis=1)
    assert np.array_equal(picks, expected)


def test_edge_recombination_chunks_stay_small_and_long_genes_use_order() -> None:
    # ERX walks a permutation one element at a time: its chunks are cut by row-steps, and
    # genes longer than ERX_MAX_SIZE are crossed by ORDER, so a chunk stays cancellable.
    def tour(size: int, crossover: str) -> Layout:
        strategy = {"alpha": {"permutation": {"crossover": crossover}}}
        return make_layout([{"name": "tour", "permutation": {"size": size}}], strategy)

    erx = "PERMUTATION_CROSSOVER_EDGE_RECOMBINATION"
    assert strategies.chunk_size(tour(52, erx)) == strategies.CHUNK
    assert strategies.chunk_size(tour(1000, erx)) == strategies.CHUNK_EDGE_STEPS // 1000
    order = strategies.chunk_size(tour(1000, "PERMUTATION_CROSSOVER_ORDER"))
    assert order > 3 * strategies.CHUNK_EDGE_STEPS // 1000  # bounded by mutation only
    longest = ops.ERX_MAX_SIZE
    assert strategies.chunk_size(tour(longest + 1, erx)) == strategies.chunk_size(
        tour(longest + 1, "PERMUTATION_CROSSOVER_ORDER")
    )
    rng = np.random.default_rng(3)
    a = np.argsort(rng.random((4, longest + 1)), axis=1)
    b = np.argsort(rng.random((4, longest + 1)), axis=1)
    by_erx = ops.crossover_permutation(
        np.random.default_rng(7), a, b, dna_pb2.PERMUTATION_CROSSOVER_EDGE_RECOMBINATION
    )
    by_order = ops.crossover_permutation(
        np.random.default_rng(7), a, b, dna_pb2.PERMUTATION_CROSSOVER_ORDER
    )
    assert all(np.array_equal(x, y) for x, y in zip(by_erx, by_order, strict=True))
