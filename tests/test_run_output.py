"""helix.cli.run_output: what `helix run` and `helix runs` show, and a run's files, from
synthetic protos (no server)."""

from __future__ import annotations

import io
import itertools
import json
import random

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from rich.console import Console

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
from helix.cli import run_output
from helix.cli.run_output import (
    Convergence,
    EvaluationRate,
    RunDisplay,
    named_candidate,
    runs_table,
    summary_dict,
    summary_table,
    write_run_dir,
)
from helix.common.errors import InvalidArgument
from helix.generator import strategies
from helix.genome import codec
from helix.genome.layout import Layout, Population, normalise
from helix.genome.named import to_named

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

MIXED = dna_pb2.Dna(
    name="mixed",
    genes=[
        dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=-1, high=1, size=2)),
        dna_pb2.Gene(name="lr", real=dna_pb2.RealGene(low=1e-4, high=1, log_scale=True)),
        dna_pb2.Gene(name="n", integer=dna_pb2.IntegerGene(low=-5, high=9)),
        dna_pb2.Gene(name="opt", choice=dna_pb2.ChoiceGene(options=["adam", "sgd", "rmsprop"])),
        dna_pb2.Gene(name="m", bits=dna_pb2.BitsGene(size=11)),
        dna_pb2.Gene(name="route", permutation=dna_pb2.PermutationGene(size=5)),
        dna_pb2.Gene(
            name="primer",
            sequence=dna_pb2.SequenceGene(alphabet="ACGT", min_length=1, max_length=6),
        ),
    ],
)


def sampled(dna: dna_pb2.Dna, count: int, seed: int = 7):
    """`count` random candidates of a DNA, with their layout and population."""
    layout = Layout(normalise(dna))
    chunks = strategies.generate(layout, None, count, seed, 0)
    population = Population.concat([chunk.children for chunk in chunks])
    candidates = codec.to_candidates(layout, population, generation=0, parent_ids=[()] * count)
    return layout, population, candidates


def generation_done(generation: int, evaluations: int, **scores) -> orchestrator_pb2.RunEvent:
    return orchestrator_pb2.RunEvent(
        sequence=generation + 2,
        generation_completed=orchestrator_pb2.GenerationCompleted(
            generation=generation, evaluations=evaluations, scored=10, **scores
        ),
    )


def state_changed(
    state: orchestrator_pb2.RunState.ValueType, **fields
) -> orchestrator_pb2.RunEvent:
    return orchestrator_pb2.RunEvent(
        state_changed=orchestrator_pb2.RunStateChanged(state=state, **fields)
    )


def scored(candidate, status, score=0.0, **verdict) -> candidate_pb2.ScoredCandidate:
    return candidate_pb2.ScoredCandidate(
        candidate=candidate,
        verdict=candidate_pb2.Verdict(
            candidate_id=candidate.id, status=status, score=score, **verdict
        ),
    )


def finished_run(best: candidate_pb2.ScoredCandidate | None = None) -> orchestrator_pb2.Run:
    run = orchestrator_pb2.Run(
        name="runs/sphere-1",
        display_name="sphere, first try",
        dna_name="dnas/mixed",
        oracle="oracles/sphere",
        objective=common_pb2.OBJECTIVE_MINIMIZE,
        budget=orchestrator_pb2.RunBudget(max_evaluations=20_000),
        seed=42,
        state=orchestrator_pb2.RUN_STATE_SUCCEEDED,
        stop_reason=orchestrator_pb2.RUN_STOP_REASON_MAX_EVALUATIONS,
        create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        start_time=timestamp_pb2.Timestamp(seconds=1_700_000_001),
        end_time=timestamp_pb2.Timestamp(seconds=1_700_000_041),
        progress=orchestrator_pb2.RunProgress(
            generation=199,
            evaluations=20_012,
            cache_hits=37,
            duplicates=512,
            failed=3,
            errors=2,
        ),
        dna_fingerprint="f" * 64,
        oracle_config_hash="c" * 64,
    )
    if best is not None:
        run.progress.best.CopyFrom(best)
    return run


# --- numbers ------------------------------------------------------------------------------


def test_numbers_are_formatted_for_people():
    assert run_output.format_count(12_345) == "12,345"
    assert run_output.format_score(0.1234567891) == "0.123457"
    assert run_output.format_score(1.5e-9) == "1.5e-09"
    assert run_output.format_score(None) == "-"
    assert run_output.format_rate(12_345.6) == "12,346"
    assert run_output.format_rate(3.14159) == "3.14"
    assert run_output.format_seconds(12.34) == "12.3s"
    assert run_output.format_seconds(245) == "4m 05s"
    assert run_output.format_seconds(2 * 3600 + 180) == "2h 03m"
    assert run_output.format_seconds(3 * 86400 + 4 * 3600) == "3d 04h"
    assert run_output.format_seconds(None) == "-"
    assert run_output.state_name(orchestrator_pb2.RUN_STATE_CANCELLED) == "CANCELLED"
    assert run_output.state_name(99) == "99"
    assert run_output.stop_reason_name(orchestrator_pb2.RUN_STOP_REASON_UNSPECIFIED) is None


# --- convergence --------------------------------------------------------------------------


def test_convergence_thinning_keeps_first_and_last_and_stays_bounded():
    convergence = Convergence(max_points=16)
    for g in range(1000):
        assert convergence.add(generation_done(g, (g + 1) * 10, best_score=1.0 / (g + 1)))
        points = convergence.points
        assert len(points) <= 16
        assert points[0].generation == 0
        assert points[-1].generation == g
        assert points[-1].evaluations == (g + 1) * 10
    generations = [p.generation for p in convergence.points]
    assert generations == sorted(set(generations))
    # evenly spread: every kept point but the latest on a multiple of the stride
    stride = convergence.stride
    assert stride > 1
    assert all(g % stride == 0 for g in generations[:-1])
    assert all(b - a == stride for a, b in itertools.pairwise(generations[:-1]))
    assert len(convergence.points) >= 16 // 2
    assert convergence.generations_seen == 1000


def test_convergence_default_bound_is_ten_thousand():
    convergence = Convergence()
    assert convergence.max_points == 10_000
    for g in range(25_000):
        convergence.add(generation_done(g, g))
    assert 5_000 <= len(convergence.points) <= 10_000
    assert convergence.points[0].generation == 0
    assert convergence.points[-1].generation == 24_999


def test_convergence_records_only_new_generations():
    convergence = Convergence()
    assert not convergence.add(state_changed(orchestrator_pb2.RUN_STATE_RUNNING))
    assert convergence.add(generation_done(0, 100, mean_score=3.5, best_score=1.25))
    assert not convergence.add(generation_done(0, 100))  # replayed
    assert convergence.add(generation_done(1, 200, generation_best_score=0.5, best_score=0.5))
    first, second = convergence.points
    assert (first.generation, first.evaluations, first.mean_score) == (0, 100, 3.5)
    assert first.generation_best_score is None
    assert second.generation_best_score == 0.5
    assert second.mean_score is None
    shown = json.loads(json.dumps(convergence.to_json()))
    assert shown["stride"] == 1
    assert shown["generations_seen"] == 2
    assert shown["points"][0]["best_score"] == 1.25
    assert shown["points"][1]["mean_score"] is None
    assert shown["points"][1]["scored"] == 10


def test_convergence_needs_room_for_first_and_last():
    with pytest.raises(ValueError, match="at least 2"):
        Convergence(max_points=1)
    two = Convergence(max_points=2)
    for g in range(50):
        two.add(generation_done(g, g))
        assert two.points[0].generation == 0
        assert two.points[-1].generation == g
        assert len(two.points) <= 2


# --- rates --------------------------------------------------------------------------------


def test_evaluation_rate_over_a_moving_window():
    rate = EvaluationRate(window=5.0)
    assert rate.evaluations_per_second is None
    rate.add(0.0, 0, 0)
    assert rate.evaluations_per_second is None  # one sample: no rate yet
    for t in range(1, 11):  # 10 evaluations per second for 10 s
        rate.add(float(t), 10 * t, t)
    assert rate.evaluations_per_second == pytest.approx(10.0)
    assert rate.generations_per_second == pytest.approx(1.0)
    for t in range(11, 21):  # then 100 per second: the window forgets the slow part
        rate.add(float(t), 100 + 100 * (t - 10), t)
    assert rate.evaluations_per_second == pytest.approx(100.0)


def test_evaluation_rate_of_a_slow_run_spans_the_last_two_generations():
    rate = EvaluationRate(window=5.0)
    rate.add(0.0, 0, 0)
    rate.add(30.0, 300, 1)
    rate.add(90.0, 600, 2)
    assert rate.evaluations_per_second == pytest.approx(5.0)


def test_display_computes_evals_per_second_and_eta_with_an_injected_clock():
    now = [100.0]
    out = io.StringIO()
    display = RunDisplay(Console(file=out, force_terminal=False), clock=lambda: now[0])
    run = orchestrator_pb2.Run(
        name="runs/r",
        state=orchestrator_pb2.RUN_STATE_RUNNING,
        budget=orchestrator_pb2.RunBudget(max_evaluations=1_000),
    )
    display.update_run(run)
    for step in range(5):
        now[0] = 100.0 + step
        display.event(generation_done(step, 50 * (step + 1), best_score=2.0 - step / 10))
    assert display.rate.evaluations_per_second == pytest.approx(50.0)
    line = display.status_line()
    assert "250/1,000 evaluations (25%)" in line
    assert "generation 4" in line
    assert "best 1.6" in line
    assert "50 evals/s" in line
    assert "ETA 15.0s" in line  # 750 left at 50/s


# --- the display --------------------------------------------------------------------------


def plain_display(now: list[float], **kwargs):
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    return out, RunDisplay(console, clock=lambda: now[0], plain_every=5.0, **kwargs)


def test_plain_display_prints_state_changes_and_throttled_progress():
    now = [0.0]
    out, display = plain_display(now)
    pending = orchestrator_pb2.Run(
        name="runs/r1",
        state=orchestrator_pb2.RUN_STATE_PENDING,
        budget=orchestrator_pb2.RunBudget(max_evaluations=10_000),
    )
    with display:
        display.update_run(pending)
        display.event(state_changed(orchestrator_pb2.RUN_STATE_RUNNING))
        for g in range(100):  # 100 generations in 10 s: progress at most every 5 s
            now[0] = g / 10
            display.event(generation_done(g, 100 * (g + 1), best_score=1.0 / (g + 1)))
        now[0] = 10.0
        display.event(
            state_changed(
                orchestrator_pb2.RUN_STATE_SUCCEEDED,
                stop_reason=orchestrator_pb2.RUN_STOP_REASON_MAX_EVALUATIONS,
            )
        )
    lines = out.getvalue().splitlines()
    assert lines[0] == "runs/r1: PENDING"
    assert lines[1] == "runs/r1: RUNNING"
    assert lines[-1] == "runs/r1: SUCCEEDED (MAX_EVALUATIONS)"
    progress = lines[2:-1]
    assert 2 <= len(progress) <= 4  # at 0 s, 5 s, and the final figures
    assert all(line.startswith("runs/r1: ") for line in progress)
    assert progress[-1].startswith(
        "runs/r1: 10,000/10,000 evaluations (100%) · generation 99 · best 0.01"
    )
    assert "ETA" not in progress[-1]  # finished
    assert "\x1b[" not in out.getvalue()  # no escape codes off a terminal


def test_plain_display_shows_why_a_run_failed_and_prints_each_state_once():
    now = [0.0]
    out, display = plain_display(now)
    run = orchestrator_pb2.Run(name="runs/r2", state=orchestrator_pb2.RUN_STATE_RUNNING)
    display.update_run(run)
    display.update_run(run)
    display.event(state_changed(orchestrator_pb2.RUN_STATE_RUNNING))
    display.event(
        state_changed(orchestrator_pb2.RUN_STATE_FAILED, error="no oracle serves [sphere]")
    )
    display.update_run(run)  # a stale snapshot: the run does not go back
    lines = out.getvalue().splitlines()
    assert lines.count("runs/r2: RUNNING") == 1
    assert lines[-1] == "runs/r2: FAILED: no oracle serves [sphere]"


def test_display_follows_the_limit_the_run_is_closest_to():
    now, wall = [0.0], [1_000.0]
    _, display = plain_display(now, wall_clock=lambda: wall[0])
    run = orchestrator_pb2.Run(
        name="runs/r3",
        state=orchestrator_pb2.RUN_STATE_RUNNING,
        budget=orchestrator_pb2.RunBudget(max_evaluations=1_000, max_generations=10),
        progress=orchestrator_pb2.RunProgress(generation=4, evaluations=100),
    )
    display.update_run(run)
    assert display.status_line().startswith("5/10 generations (50%)")
    run.budget.max_duration.CopyFrom(duration_pb2.Duration(seconds=60))
    run.start_time.FromSeconds(955)  # 45 s of 60
    display.update_run(run)
    line = display.status_line()
    assert line.startswith("45.0s/1m 00s (75%)")
    assert "ETA 15.0s" in line  # no rate yet: the time limit alone
    unlimited = orchestrator_pb2.Run(name="runs/r4", state=orchestrator_pb2.RUN_STATE_PENDING)
    _, display = plain_display(now)
    display.update_run(unlimited)
    assert display.status_line().startswith("0 evaluations · generation - · best -")


def test_terminal_display_draws_a_live_bar():
    console = Console(file=io.StringIO(), force_terminal=True, record=True, width=160)
    now = [0.0]
    run = orchestrator_pb2.Run(
        name="runs/live",
        state=orchestrator_pb2.RUN_STATE_PENDING,
        budget=orchestrator_pb2.RunBudget(max_generations=4),
    )
    with RunDisplay(console, clock=lambda: now[0]) as display:
        display.update_run(run)
        display.event(state_changed(orchestrator_pb2.RUN_STATE_RUNNING))
        for g in range(4):
            now[0] = float(g)
            display.event(generation_done(g, 10 * (g + 1), best_score=3.0 - g))
        best = candidate_pb2.ScoredCandidate(
            verdict=candidate_pb2.Verdict(status=candidate_pb2.VERDICT_STATUS_PASSED, score=0.25)
        )
        display.event(orchestrator_pb2.RunEvent(new_best=orchestrator_pb2.NewBest(best=best)))
        display.event(state_changed(orchestrator_pb2.RUN_STATE_SUCCEEDED))
    text = console.export_text()
    assert "runs/live: RUNNING" in text
    assert "runs/live: SUCCEEDED" in text
    assert "4/4 generations (100%)" in text
    assert "best 0.25" in text


def test_terminal_display_without_any_limit_is_indeterminate():
    console = Console(file=io.StringIO(), force_terminal=True, record=True, width=160)
    with RunDisplay(console) as display:
        display.update_run(orchestrator_pb2.Run(name="runs/x"))
        display.event(generation_done(0, 7))
    assert "7 evaluations" in console.export_text()


# --- summaries ----------------------------------------------------------------------------


def test_summary_dict_keys_and_values():
    _, _, candidates = sampled(MIXED, 1)
    best = scored(candidates[0], candidate_pb2.VERDICT_STATUS_PASSED, 0.125)
    named = named_candidate(MIXED, candidates[0])
    summary = summary_dict(finished_run(best), 40.0, named)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["run"] == "runs/sphere-1"
    assert summary["state"] == "SUCCEEDED"
    assert summary["stop_reason"] == "MAX_EVALUATIONS"
    assert summary["error"] is None
    assert summary["evaluations"] == 20_012
    assert summary["generations"] == 200
    assert (summary["duplicates"], summary["cache_hits"]) == (512, 37)
    assert (summary["failed"], summary["errors"]) == (3, 2)
    assert summary["best_score"] == 0.125
    assert summary["best_candidate"] == named
    assert summary["best_candidate_id"] == candidates[0].id
    assert summary["wall_seconds"] == 40.0
    assert summary["evaluations_per_second"] == pytest.approx(500.3)
    assert summary["seed"] == 42
    assert summary["dna_fingerprint"] == "f" * 64
    assert summary["oracle_config_hash"] == "c" * 64
    assert summary["dna"] == "dnas/mixed"
    assert summary["objective"] == "MINIMIZE"
    assert summary["start_time"] == "2023-11-14T22:13:21Z"


def test_summary_dict_of_a_run_without_results():
    run = orchestrator_pb2.Run(
        name="runs/early", state=orchestrator_pb2.RUN_STATE_FAILED, error="no agents"
    )
    summary = summary_dict(run, 0.0, None)
    assert summary["state"] == "FAILED"
    assert summary["error"] == "no agents"
    assert summary["best_score"] is None
    assert summary["best_candidate"] is None
    assert summary["best_candidate_id"] is None
    assert summary["evaluations_per_second"] is None
    assert summary["seed"] is None
    assert summary["generations"] == 0


def rendered(table) -> str:
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(table)
    return console.export_text()


def test_summary_table_shows_the_figures_for_people():
    _, _, candidates = sampled(MIXED, 1)
    best = scored(candidates[0], candidate_pb2.VERDICT_STATUS_PASSED, 0.1234567891)
    text = rendered(summary_table(finished_run(best), 40.0))
    for expected in [
        "SUCCEEDED",
        "MAX_EVALUATIONS",
        "20,012",
        "0.123457",
        "40.0s",
        "500",
        "42",
        "f" * 64,
        "c" * 64,
        "cache hits",
    ]:
        assert expected in text, expected


def test_runs_table_lists_runs():
    older = finished_run()
    pending = orchestrator_pb2.Run(name="runs/new", state=orchestrator_pb2.RUN_STATE_PENDING)
    text = rendered(runs_table([pending, older]))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATE", "GENERATION"]
    assert lines[1].split()[:4] == ["runs/new", "PENDING", "-", "0"]
    assert lines[2].split()[:4] == ["runs/sphere-1", "SUCCEEDED", "199", "20,012"]
    assert "sphere, first try" in lines[2]


# --- named candidates and the run directory -----------------------------------------------


def test_named_candidate_matches_the_genome_package():
    layout, population, candidates = sampled(MIXED, 12)
    for row, candidate in enumerate(candidates):
        named = named_candidate(MIXED, candidate)
        assert named == to_named(layout, population, row)
        assert list(named) == ["x", "lr", "n", "opt", "m", "route", "primer"]
        assert isinstance(named["opt"], str)
        bits, route = named["m"], named["route"]
        assert isinstance(bits, list)
        assert len(bits) == 11
        assert isinstance(route, list)
        assert sorted(route) == list(range(5))


def test_named_candidate_rejects_a_genome_that_does_not_fit():
    _, _, candidates = sampled(MIXED, 1)
    broken = candidate_pb2.Candidate()
    broken.CopyFrom(candidates[0])
    broken.genome.integers[0] = 1_000
    with pytest.raises(InvalidArgument):
        named_candidate(MIXED, broken)


def test_write_run_dir_writes_summary_candidates_and_plot(tmp_path):
    _, _, candidates = sampled(MIXED, 30)
    verdicts = [
        scored(c, candidate_pb2.VERDICT_STATUS_PASSED, float(i % 7), metrics={"b": 1.0, "a": 2})
        for i, c in enumerate(candidates[:25])
    ]
    verdicts += [
        scored(c, candidate_pb2.VERDICT_STATUS_ERROR, message="crash") for c in candidates[25:28]
    ]
    verdicts += [candidate_pb2.ScoredCandidate(candidate=c) for c in candidates[28:]]
    shuffled = list(verdicts)
    random.Random(3).shuffle(shuffled)
    best = min(verdicts[:25], key=lambda v: (v.verdict.score, v.candidate.id))
    convergence = Convergence()
    for g in range(20):
        convergence.add(
            generation_done(g, 50 * (g + 1), mean_score=10.0 / (g + 1), best_score=1e-3 * 0.5**g)
        )
    out = tmp_path / "results" / "sphere"

    files = write_run_dir(out, finished_run(best), MIXED, convergence, iter(shuffled), 40.0)

    assert files.directory == out
    assert files.candidates_written == 30
    assert files.plot.read_bytes().startswith(PNG_SIGNATURE)
    summary = json.loads(files.summary.read_text())
    assert summary["run"] == "runs/sphere-1"
    assert summary["best_candidate_id"] == best.candidate.id
    assert summary["best_candidate"] == named_candidate(MIXED, best.candidate)
    rows = [json.loads(line) for line in files.candidates.read_text().splitlines()]
    assert len(rows) == 30
    assert [row["rank"] for row in rows] == list(range(1, 31))
    assert rows[0]["id"] == best.candidate.id
    scores = [row["score"] for row in rows[:25]]
    assert scores == sorted(scores)
    assert all(row["status"] == "PASSED" for row in rows[:25])
    assert {row["status"] for row in rows[25:]} == {"ERROR", None}
    assert all(row["score"] is None for row in rows[25:])
    by_id = {c.id: c for c in candidates}
    for row in rows:
        assert row["genome"] == named_candidate(MIXED, by_id[row["id"]])
        assert row["generation"] == 0
    assert list(rows[0]["metrics"]) == ["a", "b"]
    assert next(row for row in rows if row["status"] == "ERROR")["message"] == "crash"
    assert json.loads(files.convergence.read_text())["points"][19]["evaluations"] == 1000


def test_write_run_dir_keeps_a_candidate_that_does_not_fit_the_dna(tmp_path):
    _, _, candidates = sampled(MIXED, 3)
    broken = candidate_pb2.Candidate()
    broken.CopyFrom(candidates[1])
    broken.genome.choices[0] = 7
    given = [
        scored(candidates[0], candidate_pb2.VERDICT_STATUS_FAILED, 1.0),
        scored(broken, candidate_pb2.VERDICT_STATUS_PASSED, 2.0),
        scored(candidates[2], candidate_pb2.VERDICT_STATUS_PASSED, 3.0),
    ]
    run = finished_run()
    run.objective = common_pb2.OBJECTIVE_MAXIMIZE
    files = write_run_dir(tmp_path, run, MIXED, Convergence(), given, 1.0)
    rows = [json.loads(line) for line in files.candidates.read_text().splitlines()]
    assert [row["score"] for row in rows] == [3.0, 2.0, 1.0]  # maximize: highest first
    assert rows[1]["genome"] is None
    assert "choices" in rows[1]["genome_error"]
    assert rows[0]["genome"] == named_candidate(MIXED, candidates[2])
    assert rows[2]["status"] == "FAILED"
    assert files.plot.read_bytes().startswith(PNG_SIGNATURE)  # no generation: still a plot
    assert json.loads(files.summary.read_text())["best_candidate"] is None


def test_log_scale_only_for_positive_scores_over_two_decades():
    assert run_output.log_scale_wanted([1e-3, 0.5, 2.0])
    assert not run_output.log_scale_wanted([0.5, 2.0, 40.0])
    assert not run_output.log_scale_wanted([0.0, 1e-3, 10.0])
    assert not run_output.log_scale_wanted([-1.0, 1e3])
    assert not run_output.log_scale_wanted([])
