"""The search-quality loops of benchmarks/bench_quality.py, on tiny budgets."""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from helix.genome import genome_checks, named
from helix.genome.layout import Layout, Population

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_quality
import quality
import quality_deap

# TSPLIB's berlin52.opt.tour (1-based), length 7542.
BERLIN52_OPTIMAL = [
    1, 49, 32, 45, 19, 41, 8, 9, 10, 43, 33, 51, 11, 52, 14, 13, 47, 26, 27, 28, 12, 25, 4, 6,
    15, 5, 24, 48, 38, 37, 40, 39, 36, 35, 34, 44, 46, 16, 29, 50, 20, 23, 30, 2, 7, 42, 21, 17,
    3, 18, 31, 22,
]  # fmt: skip


def counting(problem: quality.Problem) -> tuple[quality.Problem, list[bytes]]:
    """The problem with a scorer that records every genome it is asked to score."""
    seen: list[bytes] = []

    def score(population: Population) -> np.ndarray:
        for row in range(len(population)):
            one = population.take([row])
            seen.append(b"".join(p.tobytes() for p in (one.reals, one.bits, *one.permutations)))
        return problem.score(population)

    return dataclasses.replace(problem, score=score), seen


def test_berlin52_distances_are_tsplib_euc_2d():
    distances = quality.euc_2d(quality.read_tsplib(quality.BERLIN52))
    assert distances.shape == (52, 52)
    # Nodes 1 (565, 575) and 2 (25, 185): sqrt(540^2 + 390^2) = sqrt(443700) = 666.1 -> 666.
    assert distances[0, 1] == distances[1, 0] == 666
    # nint rounds halves up: (0, 0)-(1, 2) is sqrt(5) = 2.236 -> 2, (0, 0)-(1.5, 2) is 2.5 -> 3.
    pair = quality.euc_2d(np.array([[0.0, 0.0], [1.0, 2.0], [1.5, 2.0]]))
    assert pair[0, 1] == 2
    assert pair[0, 2] == 3
    tour = np.array([BERLIN52_OPTIMAL]) - 1
    assert quality.tour_lengths(distances, tour).tolist() == [7542.0]
    assert quality.tour_lengths(distances, np.roll(tour, 7, axis=1)).tolist() == [7542.0]
    assert quality.tour_lengths(distances, np.arange(52)[None, :]).tolist()[0] > 7542


def test_hyperparameters_loss_is_zero_exactly_at_its_stated_optimum():
    problem = quality.PROBLEMS["hyperparameters"]()
    layout = Layout(problem.dna())
    best = {
        "learning_rate": 10**-2.5,
        "layers": 3,
        "units": 128,
        "optimizer": "adam",
        "dropout": 0.2,
        "features": [int(i in quality.RELEVANT_FEATURES) for i in range(16)],
    }
    others = [
        {**best, "units": 129},
        {**best, "optimizer": "sgd"},
        {**best, "features": [1] * 16},
        {**best, "learning_rate": 1e-3},
    ]
    genomes = [named.from_named(layout, g) for g in (best, *others)]
    population = genome_checks.decode_genomes(layout, genomes, str)
    scores = problem.score(population).tolist()
    assert scores[0] == pytest.approx(0.0, abs=1e-12)
    assert all(s > 1e-6 for s in scores[1:])


@pytest.mark.parametrize("budget", [1, 199, 777])
def test_every_loop_spends_the_budget_exactly(budget):
    problem, seen = counting(quality.PROBLEMS["tsp-berlin52"]())
    dna = problem.dna()
    for run in (
        lambda: quality.run_alpha(problem, dna, 3, budget),
        lambda: quality.run_alpha(problem, quality.random_dna(dna), 3, budget),
        lambda: quality_deap.run_deap(problem, 3, budget),
    ):
        seen.clear()
        result = run()
        assert result.evaluations == budget
        assert len(seen) == budget
        assert result.best == min(
            quality.tour_lengths(
                quality.euc_2d(quality.read_tsplib(quality.BERLIN52)),
                np.frombuffer(b"".join(seen), np.int64).reshape(-1, 52),
            )
        )


def test_an_id_scored_before_costs_nothing():
    problem, seen = counting(quality.PROBLEMS["onemax-100"]())
    budget = quality.Budget(problem, 10)
    layout = Layout(problem.dna())
    rows = layout.empty(3)
    rows.bits[1, :5] = True
    assert budget.score(["a", "b", "a"], rows) == [0.0, 5.0, 0.0]
    assert (budget.spent, len(seen)) == (2, 2)
    assert budget.score(["b", "a"], rows.take([1, 0])) == [5.0, 0.0]
    assert (budget.spent, len(seen)) == (2, 2)
    # The loop: onemax.yaml keeps an elite every generation, and identical children recur;
    # neither is scored twice, so more candidates are bred than evaluations spent.
    seen.clear()
    dna = problem.dna()
    result = quality.run_alpha(problem, dna, 1, 1500)
    assert result.evaluations == len(seen) == 1500
    assert len(set(seen)) == len(seen)
    assert result.generations * quality.population_size(dna) > 1500 + result.generations


def test_runs_are_deterministic_per_seed():
    problem = quality.PROBLEMS["rastrigin-10d"]()
    dna = problem.dna()
    first = quality.run_alpha(problem, dna, 5, 700)
    assert quality.run_alpha(problem, dna, 5, 700) == first
    assert quality.run_alpha(problem, dna, 6, 700).trace != first.trace
    deap = quality_deap.run_deap(problem, 5, 700)
    assert quality_deap.run_deap(problem, 5, 700) == deap
    assert quality_deap.run_deap(problem, 6, 700).trace != deap.trace


@pytest.mark.parametrize(("name", "budget"), [("tsp-berlin52", 3000), ("rastrigin-10d", 2000)])
def test_alpha_beats_random_on_a_small_budget(name, budget):
    problem = quality.PROBLEMS[name]()
    dna = problem.dna()
    alpha = [quality.run_alpha(problem, dna, seed, budget).best for seed in (1, 2, 3)]
    random = [
        quality.run_alpha(problem, quality.random_dna(dna), seed, budget).best for seed in (1, 2, 3)
    ]
    assert max(alpha) < min(random)
    assert statistics.median(alpha) < 0.8 * statistics.median(random)


def test_the_bench_writes_its_table_and_one_json_line(tmp_path, capsys):
    out = tmp_path / "quality.md"
    report = bench_quality.main(
        ["--seeds", "2", "--budget-scale", "0.01", "--no-run-path", "--out", str(out)]
    )
    assert set(report["results"]) == set(quality.PROBLEMS)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "evals" in line]
    assert len(rows) == len(quality.PROBLEMS)
    tsp = report["results"]["tsp-berlin52"]
    assert tsp["budget"] == 460
    assert len(tsp["alpha_best"]) == 2
    assert tsp["ratio"] == pytest.approx(tsp["alpha_median"] / tsp["deap_median"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert json.loads(printed[-1])["bench"] == "quality"
