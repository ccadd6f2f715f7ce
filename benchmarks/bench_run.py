"""End-to-end evaluations/s: `helix run` against DEAP eaSimple and Optuna on sphere-10D.

The problem: the sphere function over 10 reals in [-5.12, 5.12], population 1,000, the same
evaluation budget for helix and DEAP (`--budget`, default 200,000: about 12 s of `helix
run`), in this one script run, each side `--repeats` times (medians reported):

- helix: `helix run benchmarks/dna/sphere-10d.yaml --oracle sphere --budget N --seed S
  --json` as a child process (benchmarks/helix_cli.py), exactly what a user runs: the
  embedded suite in that process with auth on (every call carries a token minted by the
  suite's key and checked), the orchestrator driving generator and oracle agent over
  VerifyStream/Generate on loopback gRPC, a checkpoint committed to SQLite per generation,
  the verdict report written, the client watching WatchRun. The compared figure is the
  `evaluations_per_second` it prints: evaluations over the seconds from CreateRun to the
  run's end (the suite's start before and the run directory and plot after are not in it;
  the child's whole life is reported too). A child process rather than the machinery in
  this process, so that nothing of DEAP's or Optuna's state shares its interpreter, and so
  that py-spy can profile it.
- DEAP: `algorithms.eaSimple` in this process, DEAP's standard real-valued settings:
  `cxSimulatedBinaryBounded(eta 20)` at cxpb 0.9, `mutPolynomialBounded(eta 20, indpb
  1/10)` at mutpb 1.0, `selTournament(3)`, population 1,000, evaluation by a Python sphere
  function through `toolbox.map = map`, `ngen = budget / 1000 - 1` (every generation
  re-evaluates all 1,000: every child is mutated).
- Optuna: `RandomSampler` on an in-memory study, the objective suggesting 10 floats and
  returning their sphere, `--optuna-trials` trials (default 20,000: Optuna's time per trial
  is flat in the number of trials, about 0.3 ms here, so a smaller budget gives the same
  rate and the figure compared is evaluations per wall-clock second).

Then one more helix run under py-spy (benchmarks/run_profile.py): the split of its Python
CPU time into generate / verify / orchestrate / plumbing / client, and the hottest
functions. Prints the figures and the ratios helix/DEAP and helix/Optuna (targets >= 2.5
and >= 30), one JSON line, and writes Markdown to `--out`.

    python benchmarks/bench_run.py [--budget 200000] [--optuna-trials 20000] [--repeats 3]
        [--no-profile] [--out benchmarks/results/run.md]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from deap import algorithms, base, creator, tools

sys.path.insert(0, str(Path(__file__).resolve().parent))
import helix_cli
import run_profile
from helix_cli import kept_analysis

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "run.md"
DNA = helix_cli.BENCH_DNA_DIR / "sphere-10d.yaml"
ORACLE = "sphere"
POPULATION = 1000
DIMENSIONS = 10
LOW, HIGH = -5.12, 5.12
TARGET_DEAP = 2.5
TARGET_OPTUNA = 30.0


@dataclass
class Timing:
    """One side's run: evaluations spent, the seconds they took, the best score found."""

    evaluations: int
    seconds: float
    best: float

    @property
    def rate(self) -> float:
        return self.evaluations / self.seconds


def sphere(individual: list[float]) -> tuple[float]:
    return (sum(x * x for x in individual),)


def _deap_toolbox() -> base.Toolbox:
    if not hasattr(creator, "BenchRunFitness"):
        creator.create("BenchRunFitness", base.Fitness, weights=(-1.0,))
        creator.create("BenchRunIndividual", list, fitness=creator.BenchRunFitness)
    toolbox = base.Toolbox()
    toolbox.register("attribute", random.uniform, LOW, HIGH)
    toolbox.register(
        "individual",
        tools.initRepeat,
        creator.BenchRunIndividual,
        toolbox.attribute,
        DIMENSIONS,
    )
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", sphere)
    toolbox.register("mate", tools.cxSimulatedBinaryBounded, eta=20.0, low=LOW, up=HIGH)
    toolbox.register(
        "mutate", tools.mutPolynomialBounded, eta=20.0, low=LOW, up=HIGH, indpb=1 / DIMENSIONS
    )
    toolbox.register("select", tools.selTournament, tournsize=3)
    toolbox.register("map", map)
    return toolbox


def run_deap(budget: int, seed: int) -> Timing:
    """eaSimple (module docstring) for budget // 1000 generations of 1,000."""
    toolbox = _deap_toolbox()
    random.seed(seed)
    started = time.perf_counter()
    population = toolbox.population(n=POPULATION)
    population, logbook = algorithms.eaSimple(
        population,
        toolbox,
        cxpb=0.9,
        mutpb=1.0,
        ngen=max(0, budget // POPULATION - 1),
        verbose=False,
    )
    seconds = time.perf_counter() - started
    evaluations = sum(int(entry["nevals"]) for entry in logbook)
    best = min(ind.fitness.values[0] for ind in population)
    return Timing(evaluations, seconds, best)


def run_optuna(trials: int, seed: int) -> Timing:
    """RandomSampler on an in-memory study for `trials` trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        return sum(trial.suggest_float(f"x{i}", LOW, HIGH) ** 2 for i in range(DIMENSIONS))

    started = time.perf_counter()
    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    study.optimize(objective, n_trials=trials)
    seconds = time.perf_counter() - started
    return Timing(len(study.trials), seconds, float(study.best_value))


def run_helix(budget: int, seed: int, scratch: Path) -> helix_cli.HelixRun:
    return helix_cli.run_helix(DNA, ORACLE, budget, seed, scratch / f"helix-{seed}")


def _median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Measured:
    """Every side's runs, and the profile (or why there is none)."""

    helix: list[helix_cli.HelixRun]
    deap: list[Timing]
    optuna: list[Timing]
    profile: run_profile.Profile | None
    profiled: helix_cli.HelixRun | None
    profile_error: str

    @property
    def helix_rate(self) -> float:
        return _median([r.evaluations_per_second for r in self.helix])

    @property
    def deap_rate(self) -> float:
        return _median([t.rate for t in self.deap])

    @property
    def optuna_rate(self) -> float:
        return _median([t.rate for t in self.optuna])


def measure(args: argparse.Namespace) -> Measured:
    measured = Measured([], [], [], None, None, "")
    with tempfile.TemporaryDirectory(prefix="helix-bench-run-") as scratch:
        for i in range(args.repeats):
            seed = args.seed + i
            measured.helix.append(run_helix(args.budget, seed, Path(scratch)))
            measured.deap.append(run_deap(args.budget, seed))
            measured.optuna.append(run_optuna(args.optuna_trials, seed))
        if args.profile:
            try:
                measured.profiled, measured.profile = run_profile.profile_helix(
                    DNA, ORACLE, args.budget, args.seed, Path(scratch) / "profiled"
                )
            except RuntimeError as failed:
                measured.profile_error = str(failed)
    return measured


def comparison(m: Measured) -> list[str]:
    """The table of the three sides and the ratios."""
    helix, deap, optuna_runs = m.helix, m.deap, m.optuna
    rows = [
        (
            "helix run (embedded suite, auth on)",
            _median([r.evaluations for r in helix]),
            _median([r.summary["wall_seconds"] for r in helix]),
            m.helix_rate,
            _median([r.best for r in helix]),
        ),
        (
            "DEAP eaSimple (in-process)",
            _median([t.evaluations for t in deap]),
            _median([t.seconds for t in deap]),
            m.deap_rate,
            _median([t.best for t in deap]),
        ),
        (
            "Optuna RandomSampler (in-memory)",
            _median([t.evaluations for t in optuna_runs]),
            _median([t.seconds for t in optuna_runs]),
            m.optuna_rate,
            _median([t.best for t in optuna_runs]),
        ),
    ]
    versus_deap, versus_optuna = m.helix_rate / m.deap_rate, m.helix_rate / m.optuna_rate
    running = _median([r.evaluations / r.running_seconds for r in helix])
    process = _median([r.evaluations / r.process_seconds for r in helix])
    return [
        f"| side (median of {len(helix)}) | evaluations | seconds | evaluations/s | best |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {evaluations:,.0f} | {seconds:.2f} | {rate:,.0f} | {best:.3g} |"
            for name, evaluations, seconds, rate, best in rows
        ),
        "",
        f"- helix/DEAP: **{versus_deap:.2f}x** (target >= {TARGET_DEAP}x: "
        f"{'met' if versus_deap >= TARGET_DEAP else 'missed'})",
        f"- helix/Optuna: **{versus_optuna:.1f}x** (target >= {TARGET_OPTUNA:g}x: "
        f"{'met' if versus_optuna >= TARGET_OPTUNA else 'missed'})",
        f"- helix's other clocks (medians): {running:,.0f} evaluations/s from the run's "
        f"start_time (RUNNING) to its end; {process:,.0f} evaluations/s over the child "
        f"process's whole life ({_median([r.process_seconds for r in helix]):.2f} s: "
        "interpreter, imports, suite start, run, run directory and plot).",
    ]


def profile_section(profile: run_profile.Profile, run: helix_cli.HelixRun) -> list[str]:
    generations = max(1, int(run.summary["generations"]))
    lines = [
        f"One more `helix run` at the same budget under `py-spy record --gil` "
        f"({profile.rate} samples/s): {run.evaluations:,} evaluations in {generations} "
        f"generations, {run.running_seconds:.2f} s running, "
        f"{run.running_seconds / generations * 1000:.1f} ms per generation. The samples "
        "are the Python CPU time of the whole process (the four services share one "
        f"interpreter and its GIL): {profile.seconds():.2f} s in all. By part "
        "(benchmarks/run_profile.py says which code goes where):",
        "",
        "| part | seconds | share | ms per generation |",
        "|---|---|---|---|",
    ]
    for part in run_profile.PARTS:
        lines.append(
            f"| {part} | {profile.seconds(part):.2f} | {100 * profile.share(part):.1f}% "
            f"| {profile.seconds(part) / generations * 1000:.1f} |"
        )
    lines += ["", "The innermost frames of each part's own code (seconds):", ""]
    for part in run_profile.PARTS:
        top = profile.functions.get(part)
        if not top:
            continue
        hot = ", ".join(f"`{name}` {n / profile.rate:.2f}" for name, n in top.most_common(6))
        lines.append(f"- {part}: {hot}")
    lines += ["", "Self time, the 12 hottest frames of any code:", ""]
    for name, count in profile.leaves.most_common(12):
        lines.append(
            f"- {count / profile.rate:.2f} s ({100 * count / profile.samples:.1f}%) `{name}`"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--budget", type=int, default=200_000)
    parser.add_argument("--optuna-trials", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.budget < POPULATION or args.repeats < 1 or args.optuna_trials < 1:
        parser.error(f"--budget must be at least {POPULATION}; --repeats, --optuna-trials >= 1")
    started = time.perf_counter()
    m = measure(args)
    elapsed = time.perf_counter() - started
    table = comparison(m)
    command = " ".join(["python benchmarks/bench_run.py", *(argv or sys.argv[1:])])
    document = [
        "# End-to-end evaluations/s: helix run vs DEAP vs Optuna",
        "",
        f"`{command}`: {elapsed:.0f} s on this machine (2 cores, shared with other work "
        "while it ran: figures move by 10-20% between runs). Sphere-10D, population 1,000; "
        f"helix and DEAP at a budget of {args.budget:,} evaluations, Optuna at "
        f"{args.optuna_trials:,} trials (its time per trial does not grow with the number "
        "of trials; evaluations per wall-clock second is the compared figure). Settings in "
        "benchmarks/bench_run.py's docstring and benchmarks/dna/sphere-10d.yaml.",
        "",
        *table,
        "",
        "## Where the time goes",
        "",
    ]
    if m.profile is not None and m.profiled is not None:
        document += profile_section(m.profile, m.profiled)
    else:
        document.append(f"Not profiled: {m.profile_error or '--no-profile'}.")
    document += kept_analysis(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(document) + "\n", encoding="utf-8")
    print(f"end-to-end evaluations/s, {elapsed:.0f} s (written to {args.out})")
    print("\n".join(table))
    profile = m.profile
    if profile is not None:
        shares = (f"{p} {100 * profile.share(p):.0f}%" for p in run_profile.PARTS)
        print("profile: " + ", ".join(shares))
    elif m.profile_error:
        print(f"not profiled: {m.profile_error}")
    report: dict[str, Any] = {
        "bench": "run",
        "budget": args.budget,
        "optuna_trials": args.optuna_trials,
        "repeats": args.repeats,
        "seconds": round(elapsed, 1),
        "helix_evaluations_per_second": m.helix_rate,
        "deap_evaluations_per_second": m.deap_rate,
        "optuna_evaluations_per_second": m.optuna_rate,
        "helix_over_deap": m.helix_rate / m.deap_rate,
        "helix_over_optuna": m.helix_rate / m.optuna_rate,
        "helix_running_evaluations_per_second": _median(
            [r.evaluations / r.running_seconds for r in m.helix]
        ),
        "helix_evaluations": [r.evaluations for r in m.helix],
        "deap_evaluations": [t.evaluations for t in m.deap],
        "optuna_evaluations": [t.evaluations for t in m.optuna],
        "profile": (
            {
                "samples": profile.samples,
                "rate": profile.rate,
                "seconds": {p: round(profile.seconds(p), 3) for p in run_profile.PARTS},
                "share": {p: round(profile.share(p), 4) for p in run_profile.PARTS},
            }
            if profile is not None
            else {"error": m.profile_error or "not requested"}
        ),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
