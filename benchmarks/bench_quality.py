"""Search quality: alpha vs DEAP eaSimple vs random at equal evaluation budgets.

For each problem (benchmarks/quality.py), each of `--seeds` seeds runs these searches at
the problem's evaluation budget (times `--budget-scale`):

- alpha via `helix run` (rastrigin-10D and TSP berlin52, the problems a builtin oracle
  scores): `helix run examples/dna/NAME.yaml --oracle ORACLE --budget N --seed S --json`
  as a child process (benchmarks/helix_cli.py) — the embedded suite, the orchestrator's
  generational loop over real gRPC, the builtin oracle — taking the best_score it prints.
  The orchestrator stops after the generation that reaches the budget, so a run spends up
  to one population more (its evaluations are reported). `--no-run-path` skips it;
- alpha in-process: the shipped example DNA (examples/dna/*.yaml, read now) bred through
  the generator's real Generate path, generation after generation (`quality.run_alpha`);
- DEAP: `algorithms.eaSimple`'s loop with DEAP's standard settings from its examples
  (`quality_deap.run_deap`, whose docstring cites them);
- random: the same loop as alpha with the DNA's strategy replaced by `random`.

A candidate id already scored in a run costs no evaluation (as the orchestrator counts).
Each row gives the medians and min-max spreads of the best score found, and two ratios
oriented so that < 1 means alpha is better: the medians' ratio (alpha/DEAP when
minimising, DEAP/alpha when maximising) and the ratio of their gaps to the known optimum
(1 when both reach it), for alpha via `helix run` where it ran, else the in-process loop.
Prints the Markdown table and one JSON line, and writes the table to `--out`.

    python benchmarks/bench_quality.py [--seeds 5] [--problems tsp-berlin52,onemax-100]
        [--budget-scale 1.0] [--no-run-path] [--out benchmarks/results/quality.md]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import helix_cli
import quality
import quality_deap

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality.md"
SIDES = ("run", "alpha", "deap", "random")
# The problems `helix run` searches: (the example DNA, the builtin oracle scoring it).
RUN_PATH = {
    "rastrigin-10d": ("examples/dna/rastrigin.yaml", "rastrigin"),
    "tsp-berlin52": ("examples/dna/tsp.yaml", "tsp"),
}


@dataclass
class Row:
    """One problem's runs: the best score per seed for each side."""

    problem: quality.Problem
    budget: int
    settings: dict[str, str]
    best: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    short: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SIDES, 0.0))
    # the evaluations each `helix run` spent (the budget, up to one population more)
    run_evaluations: list[int] = field(default_factory=list)

    def median(self, side: str) -> float:
        return statistics.median(self.best[side]) if self.best[side] else math.nan

    @property
    def headline(self) -> str:
        """The alpha side the ratios use: `helix run` where it ran, else in-process."""
        return "run" if self.best["run"] else "alpha"

    def ratio(self) -> float:
        """Medians, alpha over DEAP when minimising (DEAP over alpha when maximising)."""
        alpha, deap = self.median(self.headline), self.median("deap")
        top, bottom = (alpha, deap) if self.problem.minimise else (deap, alpha)
        return top / bottom if bottom else (1.0 if top == bottom else math.inf)

    def gap_ratio(self) -> float:
        """Alpha's median distance to the optimum over DEAP's (1 when both reach it)."""
        alpha, deap = (abs(self.median(s) - self.problem.optimum) for s in (self.headline, "deap"))
        if deap == 0:
            return 1.0 if alpha == 0 else math.inf
        return alpha / deap


def run_problem(
    problem: quality.Problem, seeds: int, scale: float, run_path: bool, scratch: Path
) -> Row:
    budget = max(1, round(problem.budget * scale))
    dna = problem.dna()
    baseline = quality.random_dna(dna)
    deap = quality_deap.deap_settings(problem)
    via_run = RUN_PATH.get(problem.name) if run_path else None
    settings = {
        "alpha": f"{problem.dna_file}: {quality.describe_alpha(dna)}",
        "deap": deap.describe,
        "random": quality.describe_alpha(baseline),
    }
    if via_run is not None:
        settings["run"] = (
            f"`helix run {via_run[0]} --oracle {via_run[1]} --budget {budget} --seed S "
            "--json` (the same DNA, the embedded suite)"
        )
    row = Row(problem, budget, settings)
    for seed in range(1, seeds + 1):
        for side in SIDES:
            started = time.perf_counter()
            if side == "run":
                if via_run is None:
                    continue
                run = helix_cli.run_helix(
                    via_run[0], via_run[1], budget, seed, scratch / f"{problem.name}-{seed}"
                )
                row.seconds[side] += time.perf_counter() - started
                row.best[side].append(run.best)
                row.run_evaluations.append(run.evaluations)
                row.short[side] += run.evaluations < budget
                continue
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
    if not values:
        return "-"
    text = f"{_number(row.median(side))} ({_number(min(values))}-{_number(max(values))})"
    if side == "run":
        text += f" [{statistics.median(row.run_evaluations):,.0f} evals]"
    return text + (f" [{row.short[side]} short]" if row.short[side] else "")


SIDE_NAMES = {
    "run": "alpha via `helix run`",
    "alpha": "alpha in-process",
    "deap": "DEAP eaSimple",
    "random": "random",
}


def table(rows: list[Row], seeds: int) -> str:
    lines = [
        f"| problem (objective), budget | alpha via `helix run`, median (min-max of {seeds} "
        "seeds) | alpha in-process loop | DEAP eaSimple | random | alpha/DEAP | gap ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p = row.problem
        goal = "min" if p.minimise else "max"
        lines.append(
            f"| {p.name} ({goal}, optimum {_number(p.optimum)}), {row.budget:,} evals "
            f"| {_cell(row, 'run')} | {_cell(row, 'alpha')} | {_cell(row, 'deap')} "
            f"| {_cell(row, 'random')} | {row.ratio():.3f} | {row.gap_ratio():.3f} |"
        )
    lines += [
        "",
        "Ratios < 1 mean alpha is better, for alpha via `helix run` where it ran (else the",
        "in-process loop): alpha/DEAP is the medians' ratio (DEAP/alpha when maximising); the",
        "gap ratio is alpha's median distance to the optimum over DEAP's (1 when both reach",
        "it). `[N evals]`: the median evaluations a `helix run` spent (it finishes the",
        "generation that reaches the budget). `[n short]`: n runs stopped before the budget",
        f"(no new candidate for {quality.MAX_IDLE_GENERATIONS} generations in-process; the",
        "orchestrator's CONVERGED for `helix run`).",
        "",
        "Settings:",
        "",
    ]
    for row in rows:
        lines.append(f"- {row.problem.name}")
        for side in SIDES:
            if side in row.settings:
                lines.append(f"  - {SIDE_NAMES[side]}: {row.settings[side]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--problems", default=",".join(quality.PROBLEMS))
    parser.add_argument("--budget-scale", type=float, default=1.0)
    parser.add_argument(
        "--run-path",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"alpha through `helix run` too, for {', '.join(RUN_PATH)}",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    names = [n for n in args.problems.split(",") if n]
    unknown = [n for n in names if n not in quality.PROBLEMS]
    if unknown:
        parser.error(f"unknown problems {unknown}; known: {', '.join(quality.PROBLEMS)}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="helix-bench-quality-") as scratch:
        rows = [
            run_problem(
                quality.PROBLEMS[n](), args.seeds, args.budget_scale, args.run_path, Path(scratch)
            )
            for n in names
        ]
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
                **{f"{s}_median": row.median(s) for s in SIDES if row.best[s]},
                **{f"{s}_best": row.best[s] for s in SIDES if row.best[s]},
                **{f"{s}_seconds": round(row.seconds[s], 2) for s in SIDES if row.best[s]},
                **({"run_evaluations": row.run_evaluations} if row.run_evaluations else {}),
                "ratio_alpha": row.headline,
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
