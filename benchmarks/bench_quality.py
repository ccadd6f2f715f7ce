"""Search quality: alpha vs DEAP eaSimple vs random at equal evaluation budgets.

For each problem (benchmarks/quality.py), each of `--seeds` seeds runs three searches at
the problem's evaluation budget (times `--budget-scale`):

- alpha: the shipped example DNA (examples/dna/*.yaml, read now) bred through the
  generator's real Generate path, generation after generation (`quality.run_alpha`);
- DEAP: `algorithms.eaSimple`'s loop with DEAP's standard settings from its examples
  (`quality_deap.run_deap`, whose docstring cites them);
- random: the same loop as alpha with the DNA's strategy replaced by `random`.

A candidate id already scored in a run costs no evaluation (as the orchestrator counts).
Each row gives the medians and min-max spreads of the best score found, and two ratios
oriented so that < 1 means alpha is better: the medians' ratio (alpha/DEAP when
minimising, DEAP/alpha when maximising) and the ratio of their gaps to the known optimum
(1 when both reach it). Prints the Markdown table and one JSON line, and writes the table
to `--out`.

    python benchmarks/bench_quality.py [--seeds 5] [--problems tsp-berlin52,onemax-100]
        [--budget-scale 1.0] [--out benchmarks/results/quality.md]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality
import quality_deap

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality.md"
SIDES = ("alpha", "deap", "random")


@dataclass
class Row:
    """One problem's runs: the best score per seed for each side."""

    problem: quality.Problem
    budget: int
    settings: dict[str, str]
    best: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    short: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SIDES, 0.0))

    def median(self, side: str) -> float:
        return statistics.median(self.best[side])

    def ratio(self) -> float:
        """Medians, alpha over DEAP when minimising (DEAP over alpha when maximising)."""
        alpha, deap = self.median("alpha"), self.median("deap")
        top, bottom = (alpha, deap) if self.problem.minimise else (deap, alpha)
        return top / bottom if bottom else (1.0 if top == bottom else math.inf)

    def gap_ratio(self) -> float:
        """Alpha's median distance to the optimum over DEAP's (1 when both reach it)."""
        alpha, deap = (abs(self.median(s) - self.problem.optimum) for s in ("alpha", "deap"))
        if deap == 0:
            return 1.0 if alpha == 0 else math.inf
        return alpha / deap


def run_problem(problem: quality.Problem, seeds: int, scale: float) -> Row:
    budget = max(1, round(problem.budget * scale))
    dna = problem.dna()
    baseline = quality.random_dna(dna)
    deap = quality_deap.deap_settings(problem)
    row = Row(
        problem,
        budget,
        {
            "alpha": f"{problem.dna_file}: {quality.describe_alpha(dna)}",
            "deap": deap.describe,
            "random": quality.describe_alpha(baseline),
        },
    )
    for seed in range(1, seeds + 1):
        for side in SIDES:
            started = time.perf_counter()
            if side == "alpha":
                result = quality.run_alpha(problem, dna, seed, budget)
            elif side == "random":
                result = quality.run_alpha(problem, baseline, seed, budget)
            else:
                result = quality_deap.run_deap(problem, seed, budget, deap)
            row.seconds[side] += time.perf_counter() - started
            row.best[side].append(result.best)
            row.short[side] += result.evaluations < budget
    return row


def _number(value: float) -> str:
    if math.isinf(value):
        return "inf"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
    return f"{value:.3g}"


def _cell(row: Row, side: str) -> str:
    values = row.best[side]
    text = f"{_number(row.median(side))} ({_number(min(values))}-{_number(max(values))})"
    return text + (f" [{row.short[side]} short]" if row.short[side] else "")


def table(rows: list[Row], seeds: int) -> str:
    lines = [
        f"| problem (objective), budget | alpha median (min-max of {seeds} seeds) | DEAP "
        "eaSimple | random | alpha/DEAP | gap ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        p = row.problem
        goal = "min" if p.minimise else "max"
        lines.append(
            f"| {p.name} ({goal}, optimum {_number(p.optimum)}), {row.budget:,} evals "
            f"| {_cell(row, 'alpha')} | {_cell(row, 'deap')} | {_cell(row, 'random')} "
            f"| {row.ratio():.3f} | {row.gap_ratio():.3f} |"
        )
    lines += [
        "",
        "Ratios < 1 mean alpha is better: alpha/DEAP is the medians' ratio (DEAP/alpha when",
        "maximising); the gap ratio is alpha's median distance to the optimum over DEAP's (1",
        "when both reach it). `[n short]`: n runs stopped before the budget (no new candidate",
        f"for {quality.MAX_IDLE_GENERATIONS} generations).",
        "",
        "Settings:",
        "",
    ]
    for row in rows:
        lines.append(f"- {row.problem.name}")
        for side in SIDES:
            lines.append(f"  - {side}: {row.settings[side]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--problems", default=",".join(quality.PROBLEMS))
    parser.add_argument("--budget-scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    names = [n for n in args.problems.split(",") if n]
    unknown = [n for n in names if n not in quality.PROBLEMS]
    if unknown:
        parser.error(f"unknown problems {unknown}; known: {', '.join(quality.PROBLEMS)}")
    started = time.perf_counter()
    rows = [run_problem(quality.PROBLEMS[n](), args.seeds, args.budget_scale) for n in names]
    elapsed = time.perf_counter() - started
    text = table(rows, args.seeds)
    command = " ".join(["python benchmarks/bench_quality.py", *(argv or sys.argv[1:])])
    document = f"# Search quality\n\n`{command}`: {elapsed:.0f} s on this machine.\n\n{text}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document, encoding="utf-8")
    print(f"search quality, {args.seeds} seeds, {elapsed:.0f} s (written to {args.out})")
    print(text)
    report = {
        "bench": "quality",
        "seeds": args.seeds,
        "budget_scale": args.budget_scale,
        "seconds": round(elapsed, 1),
        "results": {
            row.problem.name: {
                "budget": row.budget,
                "objective": "minimise" if row.problem.minimise else "maximise",
                "optimum": row.problem.optimum,
                **{f"{s}_median": row.median(s) for s in SIDES},
                **{f"{s}_best": row.best[s] for s in SIDES},
                **{f"{s}_seconds": round(row.seconds[s], 2) for s in SIDES},
                "ratio": row.ratio(),
                "gap_ratio": row.gap_ratio(),
                "settings": row.settings,
            }
            for row in rows
        },
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
