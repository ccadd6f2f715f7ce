"""The orchestrator's pure loop: duplicates, stop precedence, and a resume that decides
exactly as an undisturbed run (no network)."""

from __future__ import annotations

import math

from google.protobuf import duration_pb2
from hypothesis import given
from hypothesis import strategies as st

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
from helix.orchestrator import search as s
from helix.orchestrator import wire

DNA = dna_pb2.Dna(name="dnas/t")


def _candidates(ids: list[int]) -> tuple[list[bytes], list[str]]:
    """Serialised candidates with these ids, and the ids (as Generate's stream has them)."""
    texts = [f"{i:032x}" for i in ids]
    return [candidate_pb2.Candidate(id=t).SerializeToString() for t in texts], texts


def _verdicts(ids: list[str]) -> s.Verdicts:
    return s.Verdicts.of(
        candidate_pb2.Verdict(candidate_id=cid, status=s.PASSED, score=float(int(cid, 16) % 97))
        for cid in ids
    )


def _step(search: s.Search, ids: list[int]) -> s.Outcome:
    generation = search.begin()
    _, fresh = generation.add(*_candidates(ids))
    for cid in reversed(fresh):  # any order
        assert generation.record(_verdicts([cid])) == 1
    return search.finish(generation, 0.1)


def _plan(g: int) -> list[int]:
    return [(g * 3 + k) % 20 for k in range(6)]  # overlapping ids across generations


def test_duplicates_are_not_verified_and_resume_decides_the_same() -> None:
    spec = s.SearchSpec(seed=1, objective=common_pb2.OBJECTIVE_MINIMIZE, population=6, window=2)
    whole = s.Search(spec, DNA)
    fresh_counts = [len(_step(whole, _plan(g)).fresh) for g in range(8)]
    assert whole.counters.duplicates == 8 * 6 - whole.counters.evaluations
    assert sum(fresh_counts) == whole.counters.evaluations

    first = s.Search(spec, DNA)
    stored: list[tuple[int, bytes]] = []
    for g in range(4):
        outcome = _step(first, _plan(g))
        stored.append((g, outcome.encoded_population()))
    resumed = s.Search.restore(spec, DNA, first.state(), stored[-spec.window :], first.best)
    for g in range(4, 8):
        _step(resumed, _plan(g))
    assert resumed.state() == whole.state()
    assert resumed.best == whole.best


def test_a_repeat_within_a_generation_waits_for_the_first_verdict() -> None:
    spec = s.SearchSpec(seed=1, objective=common_pb2.OBJECTIVE_MINIMIZE, population=3)
    search = s.Search(spec, DNA)
    generation = search.begin()
    records, ids = _candidates([1, 1, 2])
    fresh, fresh_ids = generation.add(records, ids)
    assert fresh_ids == [ids[0], ids[2]]
    assert fresh == [records[0], records[2]]
    assert not generation.complete
    assert generation.record(_verdicts([fresh_ids[0]])) == 1
    assert generation.record(_verdicts([fresh_ids[0]])) == 0  # a second verdict is ignored
    assert generation.record(_verdicts([fresh_ids[1]])) == 1
    outcome = search.finish(generation, 0.0)
    assert search.counters.evaluations == 2
    assert search.counters.duplicates == 1
    assert len(outcome.population) == 3


def test_the_target_wins_over_the_other_limits() -> None:
    spec = s.SearchSpec(
        seed=1,
        objective=common_pb2.OBJECTIVE_MINIMIZE,
        population=6,
        max_evaluations=1,
        max_generations=1,
        target=1000.0,
    )
    search = s.Search(spec, DNA)
    assert _step(search, _plan(0)).stop_reason == s.STOP_TARGET


def test_only_duplicates_for_long_enough_converges() -> None:
    spec = s.SearchSpec(
        seed=1, objective=common_pb2.OBJECTIVE_MAXIMIZE, population=2, converge_after=3
    )
    search = s.Search(spec, DNA)
    reasons = [_step(search, [5, 6]).stop_reason for _ in range(4)]
    assert reasons == [0, 0, 0, s.STOP_CONVERGED]


def test_ranking_ties_break_by_candidate_id() -> None:
    low = candidate_pb2.Verdict(status=s.PASSED, score=1.0)
    assert s.rank_key(common_pb2.OBJECTIVE_MINIMIZE, "a", low) < s.rank_key(
        common_pb2.OBJECTIVE_MINIMIZE, "b", low
    )
    error = candidate_pb2.Verdict(status=s.ERROR)
    assert s.rank_key(common_pb2.OBJECTIVE_MAXIMIZE, "a", low) < s.rank_key(
        common_pb2.OBJECTIVE_MAXIMIZE, "0", error
    )


@given(
    generations=st.lists(
        st.lists(st.integers(0, 12), min_size=1, max_size=12), min_size=1, max_size=6
    ),
    cuts=st.lists(st.integers(1, 5), min_size=1, max_size=12),
    window=st.integers(1, 3),
)
def test_each_position_gets_its_ids_verdict_and_only_new_ids_are_verified(
    generations: list[list[int]], cuts: list[int], window: int
) -> None:
    """Any ids, in any chunks: every position ends with the verdict of its id; an id is
    verified once per generation, and only when the window does not remember it."""
    population = max(len(g) for g in generations)
    spec = s.SearchSpec(
        seed=1, objective=common_pb2.OBJECTIVE_MINIMIZE, population=population, window=window
    )
    search = s.Search(spec, DNA)
    recent: list[set[int]] = []  # the ids of the last `window` generations
    for given_ids in generations:
        plan = (given_ids * population)[:population]
        generation = search.begin()
        verified: list[str] = []
        at, k = 0, 0
        while at < len(plan):
            size = cuts[k % len(cuts)]
            records, ids = _candidates(plan[at : at + size])
            _, fresh = generation.add(records, ids)
            verified += fresh
            if k % 2:  # the verdicts so far now (in reverse), the others' later
                assert generation.record(_verdicts(verified[::-1])) == len(verified)
                assert generation.record(_verdicts(verified)) == 0  # a second: ignored
                verified = []
            at, k = at + size, k + 1
        generation.record(_verdicts(verified))
        remembered = set().union(*recent[-window:]) if recent else set()
        expected_fresh = [i for i in dict.fromkeys(plan) if i not in remembered]
        outcome = search.finish(generation, 0.0)
        assert [outcome.ids[p] for p in outcome.fresh] == [f"{i:032x}" for i in expected_fresh]
        for position, i in enumerate(plan):
            verdict = candidate_pb2.ScoredCandidate.FromString(outcome.population[position])
            assert verdict.candidate.id == f"{i:032x}"
            assert verdict.verdict.candidate_id == f"{i:032x}"
            assert verdict.verdict.score == float(i % 97)
            assert outcome.scores[position] == float(i % 97)
        recent.append(set(plan))


@given(
    ids=st.lists(
        st.one_of(
            st.integers(0, 2**128 - 1).map(lambda i: f"{i:032x}"),
            st.text(max_size=40),
            st.just("\x00" * 32),
            st.just("A" * 32),
        ),
        max_size=20,
    ),
    genome=st.booleans(),
)
def test_ids_read_from_candidate_bytes_are_the_parsed_ids(ids: list[str], genome: bool) -> None:
    """wire.candidate_ids reads well-formed ids from the bytes in bulk and parses anything
    else: the same ids a parse of every candidate gives."""
    records = [
        candidate_pb2.Candidate(
            id=cid, genome=candidate_pb2.Genome(reals=[1.5] * 3) if genome else None
        ).SerializeToString()
        for cid in ids
    ]
    assert wire.candidate_ids(records) == ids


@given(
    st.lists(
        st.builds(
            candidate_pb2.Verdict,
            candidate_id=st.one_of(
                st.integers(0, 2**128 - 1).map(lambda i: f"{i:032x}"), st.text(max_size=34)
            ),
            status=st.integers(0, 300),
            score=st.floats(allow_nan=False) | st.just(0.0) | st.just(-0.0),
            message=st.just("") | st.text(max_size=5),
            metrics=st.dictionaries(st.text(max_size=3), st.floats(allow_nan=False), max_size=2),
            duration=st.none()
            | st.builds(
                duration_pb2.Duration,
                seconds=st.integers(0, 2**40),
                nanos=st.integers(0, 999_999_999),
            ),
            cached=st.booleans(),
        ),
        max_size=12,
    )
)
def test_verdicts_read_from_their_bytes_are_the_parsed_verdicts(
    verdicts: list[candidate_pb2.Verdict],
) -> None:
    """wire.read_verdicts reads plain verdicts from the bytes in bulk and parses the others:
    the same ids, statuses, scores and `cached` as a parse of every verdict."""
    raws = [v.SerializeToString() for v in verdicts]
    ids, statuses, scores, cached = wire.read_verdicts(raws)
    assert ids == [v.candidate_id for v in verdicts]
    assert statuses == [v.status for v in verdicts]
    assert [math.copysign(1.0, s) * abs(s) for s in scores] == [v.score for v in verdicts]
    assert [str(s) for s in scores] == [str(v.score) for v in verdicts]  # -0.0 kept
    assert cached == [v.cached for v in verdicts]
