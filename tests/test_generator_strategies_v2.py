"""Generator major 2 (issue 11): the per-child mutation probability, parents' copies in
tournaments, the DNA fields that carry them, and the major version agents advertise."""

from __future__ import annotations

from textwrap import dedent
from typing import Any

import numpy as np
import pytest
from google.protobuf.json_format import ParseDict

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.generator import breeding, strategies
from helix.generator.agent import MAJOR_LABEL, RANGES_LABEL, generator_labels
from helix.genome.documents import parse_dna_text
from helix.genome.layout import Layout, Population, normalise

PASSED = candidate_pb2.VERDICT_STATUS_PASSED


def make_layout(genes: list[dict[str, Any]], alpha: dict[str, Any]) -> Layout:
    dna = ParseDict({"genes": genes, "strategy": {"alpha": alpha}}, dna_pb2.Dna())
    return Layout(normalise(dna))


def children(
    layout: Layout, parents: Population, count: int, copies: Any = None, seed: int = 1
) -> strategies.Chunk:
    (chunk,) = strategies.generate(layout, parents, count, seed, 1, copies=copies)
    return chunk


# --- the per-child mutation probability ---------------------------------------------------

REALS = [{"name": "x", "real": {"low": -1.0, "high": 1.0, "size": 6}}]


@pytest.mark.parametrize("child_rate", [0.0, 0.3, 1.0])
def test_each_child_is_mutated_with_the_child_mutation_rate(child_rate: float) -> None:
    # No crossover and every element mutated when a child is: a child equals its parent
    # exactly when it was not mutated.
    alpha = {"elitism": 0, "crossover_rate": 0.0, "mutation_rate": 1.0}
    layout = make_layout(REALS, {**alpha, "child_mutation_rate": child_rate})
    parents = next(iter(strategies.generate(layout, None, 20, 0, 0))).children
    chunk = children(layout, parents, 1000)
    same = np.all(chunk.children.reals == parents.reals[chunk.parents[:, 0]], axis=1)
    mutated = 1.0 - same.mean()
    assert abs(mutated - child_rate) < 0.05
    if 0 < child_rate < 1:
        # Each mutated child is mutated in every element, as mutation_rate 1 says.
        moved = chunk.children.reals[~same] != parents.reals[chunk.parents[~same, 0]]
        assert moved.mean() > 0.99


def test_child_mutation_keeps_the_prefix_property() -> None:
    alpha = {"elitism": 0, "mutation_rate": 0.5, "child_mutation_rate": 0.5}
    genes = [*REALS, {"name": "route", "permutation": {"size": 12}}]
    layout = make_layout(genes, alpha)
    parents = next(iter(strategies.generate(layout, None, 20, 0, 0))).children
    full, part = children(layout, parents, 300), children(layout, parents, 77)
    assert np.array_equal(full.children.reals[:77], part.children.reals)
    assert np.array_equal(full.children.permutations[0][:77], part.children.permutations[0])


def test_child_mutation_rate_defaults_and_is_validated_in_dna_files() -> None:
    text = """\
    genes:
      - {name: x, real: {low: 0, high: 1}}
    strategy:
      alpha:
        crossover_rate: 0.9
        child_mutation_rate: 1.5
        permutation: {crossover: 7}
    """
    check = parse_dna_text(dedent(text), "rates.yaml")
    assert [(v.field, v.reason, v.line) for v in check.violations] == [
        ("strategy.alpha.child_mutation_rate", "range", 6),
        ("strategy.alpha.permutation.crossover", "enum", 7),
    ]
    plain = normalise(ParseDict({"genes": [{"name": "x", "bits": {"size": 3}}]}, dna_pb2.Dna()))
    assert plain.strategy.alpha.child_mutation_rate == 0.5
    assert plain.strategy.alpha.permutation.crossover == (
        dna_pb2.PERMUTATION_CROSSOVER_EDGE_RECOMBINATION
    )


# --- parents' copies ----------------------------------------------------------------------


def test_a_parent_given_ten_times_is_picked_about_ten_times_as_often() -> None:
    rng = np.random.default_rng(4)
    copies = np.ones(20, dtype=np.int64)
    copies[7] = 10
    picks = strategies.tournament(rng, 20, 200_000, 1, copies)
    counts = np.bincount(picks, minlength=20)
    others = np.delete(counts, 7)
    assert 9.0 < counts[7] / others.mean() < 11.0
    # Copies all 1 draw exactly as no copies do.
    same = strategies.tournament(np.random.default_rng(4), 20, 1000, 3, np.ones(20, np.int64))
    assert np.array_equal(same, strategies.tournament(np.random.default_rng(4), 20, 1000, 3))


def test_tournaments_among_copies_take_the_best_of_their_draws() -> None:
    copies = np.array([1, 3, 2], dtype=np.int64)  # copies 0 | 1 2 3 | 4 5
    picks = strategies.tournament(np.random.default_rng(9), 3, 500, 2, copies)
    u = np.random.default_rng(9).random((500, 2))
    drawn = np.floor(u * 6).astype(np.int64)
    assert np.array_equal(picks, np.array([0, 1, 1, 1, 2, 2])[drawn].min(axis=1))


def request_with(parents: list[candidate_pb2.ScoredCandidate]) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(
        parents=parents, objective=common_pb2.OBJECTIVE_MINIMIZE, count=40, seed=3, generation=2
    )


def scored_parents(layout: Layout, n: int) -> list[candidate_pb2.ScoredCandidate]:
    chunk = next(iter(strategies.generate(layout, None, n, 5, 0)))
    records = breeding.chunk_records(layout, chunk, None, 0)
    out = []
    for i, record in enumerate(records):
        candidate = candidate_pb2.Candidate.FromString(record)
        verdict = candidate_pb2.Verdict(status=PASSED, score=float(i % 4))
        out.append(candidate_pb2.ScoredCandidate(candidate=candidate, verdict=verdict))
    return out


def bred(layout: Layout, parents: list[candidate_pb2.ScoredCandidate]) -> list[bytes]:
    request = request_with(parents)
    ranked = breeding.rank_parents(layout, request)
    return [
        c.SerializeToString()
        for responses in breeding.breed(layout, request, ranked)
        for response in responses
        for c in response.candidates
    ]


def test_copies_are_counted_per_id_and_the_order_still_does_not_matter() -> None:
    layout = make_layout([{"name": "route", "permutation": {"size": 9}}], {"elitism": 2})
    base = scored_parents(layout, 8)
    given = [*base, base[5], base[5], base[2]]
    ranked = breeding.rank_parents(layout, request_with(given))
    assert ranked is not None
    by_id = dict(zip(ranked.ids, ranked.copies.tolist(), strict=True))
    assert by_id[base[5].candidate.id] == 3
    assert by_id[base[2].candidate.id] == 2
    assert sum(by_id.values()) == len(given)
    assert len(by_id) == 8
    shuffled = [given[i] for i in np.random.default_rng(1).permutation(len(given))]
    assert bred(layout, given) == bred(layout, shuffled)
    # Repeats change the output now (they did not in major 1) ...
    assert bred(layout, given) != bred(layout, base)
    # ... but elites stay distinct.
    out = [candidate_pb2.Candidate.FromString(c) for c in bred(layout, [*base, *[base[0]] * 5])]
    assert out[0].id != out[1].id


def test_copies_must_be_one_count_of_at_least_one_per_parent() -> None:
    layout = make_layout(REALS, {})
    parents = next(iter(strategies.generate(layout, None, 4, 0, 0))).children
    for bad in (np.array([1, 1, 1]), np.array([1, 0, 1, 1])):
        with pytest.raises(ValueError, match="copies"):
            strategies.generate(layout, parents, 10, 1, 1, copies=bad)


# --- the major version --------------------------------------------------------------------


def test_generators_advertise_their_major_version_and_ranges() -> None:
    assert strategies.GENERATOR_MAJOR == 2
    assert generator_labels() == {MAJOR_LABEL: "2", RANGES_LABEL: "true"}
    assert MAJOR_LABEL == "helix.dev/generator-major"
    assert RANGES_LABEL == "helix.dev/generate-ranges"
