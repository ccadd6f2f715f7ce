"""The orchestrator's pure loop: duplicates, stop precedence, and a resume that decides
exactly as an undisturbed run (no network)."""

from __future__ import annotations

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
from helix.orchestrator import search as s

DNA = dna_pb2.Dna(name="dnas/t")


def _candidate(i: int) -> candidate_pb2.Candidate:
    return candidate_pb2.Candidate(id=f"{i:032x}")


def _verdict(candidate: candidate_pb2.Candidate) -> candidate_pb2.Verdict:
    return candidate_pb2.Verdict(
        candidate_id=candidate.id, status=s.PASSED, score=float(int(candidate.id, 16) % 97)
    )


def _step(search: s.Search, ids: list[int]) -> s.Outcome:
    generation = search.begin()
    fresh = generation.add([_candidate(i) for i in ids])
    for candidate in reversed(fresh):  # any order
        assert generation.record(_verdict(candidate))
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
        stored.append((g, s.encode_population(outcome.population)))
    resumed = s.Search.restore(spec, DNA, first.state(), stored[-spec.window :], first.best)
    for g in range(4, 8):
        _step(resumed, _plan(g))
    assert resumed.state() == whole.state()
    assert resumed.best == whole.best


def test_a_repeat_within_a_generation_waits_for_the_first_verdict() -> None:
    spec = s.SearchSpec(seed=1, objective=common_pb2.OBJECTIVE_MINIMIZE, population=3)
    search = s.Search(spec, DNA)
    generation = search.begin()
    fresh = generation.add([_candidate(1), _candidate(1), _candidate(2)])
    assert [c.id for c in fresh] == [_candidate(1).id, _candidate(2).id]
    assert not generation.complete
    generation.record(_verdict(fresh[0]))
    assert not generation.record(_verdict(fresh[0]))  # a second verdict is ignored
    generation.record(_verdict(fresh[1]))
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
