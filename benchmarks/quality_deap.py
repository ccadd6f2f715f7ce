"""DEAP's `eaSimple` at an evaluation budget: the baseline of benchmarks/bench_quality.py.

`run_deap` is `algorithms.eaSimple`'s loop (select, `algorithms.varAnd`,
evaluate the individuals whose fitness is invalid, replace) with the evaluation budget as
its stop: the generation that would overspend it evaluates only what is left, in order,
and ends the run. Settings from DEAP's own examples (github.com/DEAP/deap, read at commit
8a96fd3a, April 2026), never tuned beyond them:

- TSP: `cxOrdered` + `mutShuffleIndexes(indpb=0.05)`, cxpb 0.7, mutpb 0.2, tournament 3,
  population 300 (examples/ga/tsp.py, whose crossover is `cxPartialyMatched`: issue 11
  specifies `cxOrdered`, the textbook OX1; `deap_settings(..., tsp_crossover="pmx")`
  runs the example's PMX instead);
- OneMax: `cxTwoPoint` + `mutFlipBit(indpb=0.05)`, cxpb 0.5, mutpb 0.2, tournament 3,
  population 300 (examples/ga/onemax.py);
- reals: `cxSimulatedBinaryBounded(eta=20)` + `mutPolynomialBounded(eta=20, indpb=1/n)`,
  cxpb 0.9 and every child mutated (mutpb 1.0), population 100 (examples/ga/nsga2.py,
  the only example with these operators; its NSGA-II selection replaced by tournament 3);
- mixed (the hyperparameters DNA): one list per individual, [log10(lr), layers, units,
  optimizer index, dropout, 16 feature bits]; `cxTwoPoint` over the whole list; mutation
  per gene kind with indpb 0.05 each: `mutPolynomialBounded(eta=20)` on the two reals,
  `mutUniformInt` on the integers and the option index, `mutFlipBit` on the bits; cxpb
  0.5, mutpb 0.2, tournament 3, population 300 (onemax.py's schedule).
"""

from __future__ import annotations

import math
import random as pyrandom
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from deap import algorithms, base, creator, tools
from quality import Problem, Result

from helix.genome.layout import Layout, Population


@dataclass(frozen=True)
class DeapSettings:
    population: int
    cxpb: float
    mutpb: float
    toolbox: base.Toolbox
    # Turns a list of DEAP individuals into a Population the problem's scorer reads.
    to_population: Callable[[Sequence[Sequence[Any]]], Population]
    describe: str


def _individual_classes() -> tuple[Any, Any]:
    if not hasattr(creator, "QualityMin"):
        creator.create("QualityMin", base.Fitness, weights=(-1.0,))
        creator.create("QualityMax", base.Fitness, weights=(1.0,))
        creator.create("QualityIndMin", list, fitness=creator.QualityMin)
        creator.create("QualityIndMax", list, fitness=creator.QualityMax)
    return creator.QualityIndMin, creator.QualityIndMax


def _layout_of(problem: Problem) -> Layout:
    return Layout(problem.dna())


def _population_of(layout: Layout, n: int, **columns: Any) -> Population:
    """A Population of n rows with the given columns set (the rest zeros)."""
    empty = layout.empty(n)
    permutations = columns.get("permutations", empty.permutations)
    return Population(
        reals=np.asarray(columns.get("reals", empty.reals), dtype=np.float64),
        integers=np.asarray(columns.get("integers", empty.integers), dtype=np.int64),
        choices=np.asarray(columns.get("choices", empty.choices), dtype=np.int64),
        bits=np.asarray(columns.get("bits", empty.bits), dtype=np.bool_),
        permutations=tuple(np.asarray(p, dtype=np.int64) for p in permutations),
        sequences=empty.sequences,
    )


def _mixed_mutation(low: list[float], high: list[float], indpb: float) -> Callable[..., Any]:
    """Per-gene mutation of the mixed encoding [log10 lr, layers, units, optimizer,
    dropout, bits...]: polynomial (eta 20) on reals, uniform integers, bit flips."""
    reals, integers = (0, 4), (1, 2, 3)

    def mutate(individual: Any) -> tuple[Any]:
        for i in reals:
            part = [individual[i]]
            tools.mutPolynomialBounded(part, eta=20.0, low=low[i], up=high[i], indpb=indpb)
            individual[i] = part[0]
        for i in integers:
            part = [individual[i]]
            tools.mutUniformInt(part, low=int(low[i]), up=int(high[i]), indpb=indpb)
            individual[i] = part[0]
        bits = individual[5:]
        tools.mutFlipBit(bits, indpb=indpb)
        individual[5:] = bits
        return (individual,)

    return mutate


def deap_settings(problem: Problem, tsp_crossover: str = "ox") -> DeapSettings:
    """DEAP's standard settings for the problem (see the module docstring)."""
    layout = _layout_of(problem)
    toolbox = base.Toolbox()
    toolbox.register("select", tools.selTournament, tournsize=3)
    kind = problem.deap_kind
    if kind == "permutation":
        n = layout.permutation_sizes[0]
        toolbox.register("attributes", pyrandom.sample, range(n), n)
        mate = tools.cxOrdered if tsp_crossover == "ox" else tools.cxPartialyMatched
        toolbox.register("mate", mate)
        toolbox.register("mutate", tools.mutShuffleIndexes, indpb=0.05)
        name = "cxOrdered" if tsp_crossover == "ox" else "cxPartialyMatched"
        return DeapSettings(
            300,
            0.7,
            0.2,
            toolbox,
            lambda inds: _population_of(layout, len(inds), permutations=[list(inds)]),
            f"pop 300, {name} 0.7, mutShuffleIndexes(0.05) 0.2, tournament 3",
        )
    if kind == "bits":
        n = layout.n_bits
        toolbox.register("attributes", lambda: [pyrandom.randint(0, 1) for _ in range(n)])
        toolbox.register("mate", tools.cxTwoPoint)
        toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
        return DeapSettings(
            300,
            0.5,
            0.2,
            toolbox,
            lambda inds: _population_of(layout, len(inds), bits=list(inds)),
            "pop 300, cxTwoPoint 0.5, mutFlipBit(0.05) 0.2, tournament 3",
        )
    if kind == "reals":
        low, high, n = float(layout.real_low[0]), float(layout.real_high[0]), layout.n_reals
        toolbox.register("attributes", lambda: [pyrandom.uniform(low, high) for _ in range(n)])
        toolbox.register("mate", tools.cxSimulatedBinaryBounded, eta=20.0, low=low, up=high)
        toolbox.register(
            "mutate", tools.mutPolynomialBounded, eta=20.0, low=low, up=high, indpb=1.0 / n
        )
        return DeapSettings(
            100,
            0.9,
            1.0,
            toolbox,
            lambda inds: _population_of(layout, len(inds), reals=list(inds)),
            f"pop 100, SBX(eta 20) 0.9, polynomial(eta 20, indpb 1/{n}) 1.0, tournament 3",
        )
    # mixed: the hyperparameters DNA
    lows = [-5.0, 1.0, 16.0, 0.0, 0.0]
    highs = [-1.0, 8.0, 512.0, 3.0, 0.5]

    def attributes() -> list[Any]:
        head = [
            pyrandom.uniform(lows[0], highs[0]),
            pyrandom.randint(1, 8),
            pyrandom.randint(16, 512),
            pyrandom.randint(0, 3),
            pyrandom.uniform(lows[4], highs[4]),
        ]
        return head + [pyrandom.randint(0, 1) for _ in range(layout.n_bits)]

    def to_population(inds: Sequence[Sequence[Any]]) -> Population:
        rows = np.asarray(inds, dtype=np.float64)
        return _population_of(
            layout,
            len(inds),
            reals=np.stack([10.0 ** rows[:, 0], rows[:, 4]], axis=1),
            integers=rows[:, 1:3].astype(np.int64),
            choices=rows[:, 3:4].astype(np.int64),
            bits=rows[:, 5:].astype(np.bool_),
        )

    toolbox.register("attributes", attributes)
    toolbox.register("mate", tools.cxTwoPoint)
    toolbox.register("mutate", _mixed_mutation(lows, highs, 0.05))
    return DeapSettings(
        300,
        0.5,
        0.2,
        toolbox,
        to_population,
        "pop 300, [log10 lr, layers, units, optimizer, dropout, bits]: cxTwoPoint 0.5;"
        " per gene (indpb 0.05) polynomial(eta 20) / mutUniformInt / mutFlipBit 0.2;"
        " tournament 3",
    )


def run_deap(
    problem: Problem, seed: int, budget: int, settings: DeapSettings | None = None
) -> Result:
    """eaSimple's loop (module docstring) until `budget` evaluations are spent."""
    settings = settings or deap_settings(problem)
    pyrandom.seed(seed)
    minimise_class, maximise_class = _individual_classes()
    individual = minimise_class if problem.minimise else maximise_class
    toolbox = settings.toolbox
    best = math.inf if problem.minimise else -math.inf
    spent, generations, trace = 0, 0, []

    def evaluate(population: list[Any]) -> bool:
        """Score the invalid individuals while budget is left; False when it ran out."""
        nonlocal best, spent
        invalid = [ind for ind in population if not ind.fitness.valid]
        todo = invalid[: budget - spent]
        if todo:
            values = problem.score(settings.to_population(todo)).tolist()
            for ind, value in zip(todo, values, strict=True):
                ind.fitness.values = (value,)
                best = min(best, value) if problem.minimise else max(best, value)
            spent += len(todo)
        return len(todo) == len(invalid)

    population = [individual(toolbox.attributes()) for _ in range(settings.population)]
    complete = evaluate(population)
    trace.append(best)
    while complete and spent < budget:
        offspring = toolbox.select(population, len(population))
        offspring = algorithms.varAnd(offspring, toolbox, settings.cxpb, settings.mutpb)
        complete = evaluate(offspring)
        population[:] = offspring
        generations += 1
        trace.append(best)
    return Result(best, spent, generations + 1, trace)
