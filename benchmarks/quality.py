"""Search quality at equal evaluation budgets: the problems and the generator's loop.

Importable and callable for one (problem, DNA, seed, budget) at a time:

    problem = PROBLEMS["tsp-berlin52"]()
    alpha = run_alpha(problem, problem.dna(), seed=1, budget=46_000)      # the shipped DNA
    baseline = run_alpha(problem, random_dna(problem.dna()), seed=1, budget=46_000)
    deap = quality_deap.run_deap(problem, seed=1, budget=46_000)
    alpha.best, alpha.evaluations, deap.best

**Alpha** (`run_alpha`) runs a generator's real path, generation after generation: a
`GenerateRequest` carrying the DNA (normalised as the generator does an inline one),
`parents` = the whole previous generation as ScoredCandidates with PASSED verdicts, the
problem's objective, `count` = the DNA's population size, the run's seed and the
generation number; the request is validated, ranked (`breeding.rank_parents`) and bred
(`breeding.breed`) exactly as `GeneratorService.Generate` does; the candidates of the
responses are decoded (`genome_checks.decode_genomes`) and scored with NumPy. Evaluations
are counted as the orchestrator counts them: a candidate id already scored in this run
(an elite, a copy) is not scored again and costs nothing. The last generation is cut so
the budget is spent exactly; the result is the best score seen. The same loop with the
DNA's strategy replaced by `random` (same population size) is the random baseline.

**DEAP** (`quality_deap.run_deap`): eaSimple at the same budget (see that module).

Problems (`PROBLEMS`): rastrigin-10D, TSP berlin52 (TSPLIB EUC_2D distances), OneMax-100
and the mixed hyperparameters DNA with the synthetic objective of `hyperparameters_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common.services import validate
from helix.generator import breeding
from helix.generator import validation as checks
from helix.genome import documents, genome_checks
from helix.genome.layout import Layout, Population, population_size

ROOT = Path(__file__).resolve().parent.parent
DNA_DIR = ROOT / "examples" / "dna"
BERLIN52 = ROOT / "examples" / "tsp" / "berlin52.tsp"
# Generations in a row that bring no new candidate id before a loop gives up short of its
# budget (the search has converged onto copies); `Result.evaluations` then says so.
MAX_IDLE_GENERATIONS = 50

FloatArray = npt.NDArray[np.float64]
Scorer = Callable[[Population], FloatArray]


# --- problems -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A benchmark problem: the shipped DNA it is searched with, a NumPy scorer of decoded
    genomes, its objective, budget and DEAP setup."""

    name: str
    dna_file: str
    objective: common_pb2.Objective.ValueType
    budget: int
    score: Scorer
    deap_kind: str  # "permutation", "bits", "reals" or "mixed"
    optimum: float
    note: str = ""

    @property
    def minimise(self) -> bool:
        return self.objective == common_pb2.OBJECTIVE_MINIMIZE

    def dna(self) -> dna_pb2.Dna:
        """The shipped example DNA, read now (it may have been tuned), normalised."""
        return load_dna(DNA_DIR / self.dna_file)

    def better(self, a: float, b: float) -> bool:
        return a < b if self.minimise else a > b


def load_dna(path: Path) -> dna_pb2.Dna:
    check = documents.parse_dna_text(path.read_text(encoding="utf-8"), path.name)
    if check.normalised is None:
        raise ValueError(f"{path}: not a valid DNA: {check.violations}")
    return check.normalised


def random_dna(dna: dna_pb2.Dna) -> dna_pb2.Dna:
    """The same DNA searched by the `random` strategy with the same population size."""
    out = dna_pb2.Dna()
    out.CopyFrom(dna)
    size = population_size(dna)
    out.strategy.Clear()
    out.strategy.random.population_size = size
    return load_normalised(out)


def load_normalised(dna: dna_pb2.Dna) -> dna_pb2.Dna:
    check = documents.check_dna_message(dna, "")
    if check.normalised is None:
        raise ValueError(f"not a valid DNA: {check.violations}")
    return check.normalised


def rastrigin(population: Population) -> FloatArray:
    x = population.reals
    return 10.0 * x.shape[1] + (x * x - 10.0 * np.cos(2.0 * np.pi * x)).sum(axis=1)


def read_tsplib(path: Path) -> FloatArray:
    """The NODE_COORD_SECTION of a TSPLIB file, one (x, y) row per node in file order."""
    rows, reading = [], False
    for line in path.read_text(encoding="ascii").splitlines():
        text = line.strip()
        if text == "NODE_COORD_SECTION":
            reading = True
        elif text in ("EOF", "") or not reading:
            continue
        else:
            _, x, y = text.split()
            rows.append((float(x), float(y)))
    return np.asarray(rows, dtype=np.float64)


def euc_2d(coords: FloatArray) -> npt.NDArray[np.int64]:
    """TSPLIB's EUC_2D distances: nint(sqrt(dx^2 + dy^2)), nint(x) = (int)(x + 0.5)."""
    delta = coords[:, None, :] - coords[None, :, :]
    return np.floor(np.sqrt((delta * delta).sum(axis=2)) + 0.5).astype(np.int64)


def tour_lengths(distances: npt.NDArray[np.int64], tours: npt.NDArray[np.int64]) -> FloatArray:
    """The closed-tour length of each row of `tours` (0-based city indices)."""
    return distances[tours, np.roll(tours, -1, axis=1)].sum(axis=1).astype(np.float64)


def tsp_scorer(path: Path) -> Scorer:
    distances = euc_2d(read_tsplib(path))

    def score(population: Population) -> FloatArray:
        return tour_lengths(distances, population.permutations[0])

    return score


def onemax(population: Population) -> FloatArray:
    return population.bits.sum(axis=1).astype(np.float64)


# The synthetic validation loss of the hyperparameters DNA (minimise; optimum 0.0 at
# learning_rate 10^-2.5, layers 3, units 128, adam, dropout 0.2, and exactly the feature
# bits RELEVANT_FEATURES set). Smooth in log10(lr), dropout and log2(units), quadratic in
# layers; each relevant feature left out costs 0.25, each irrelevant one used 0.02.
OPTIMIZER_COST = {"adam": 0.0, "rmsprop": 0.1, "sgd": 0.2, "adagrad": 0.3}
RELEVANT_FEATURES = (0, 3, 5, 9)


def hyperparameters_loss(
    log_lr: FloatArray,
    layers: FloatArray,
    units: FloatArray,
    optimizer: npt.NDArray[np.int64],
    dropout: FloatArray,
    features: npt.NDArray[np.bool_],
) -> FloatArray:
    """The loss for columns of values; `optimizer` indexes OPTIMIZER_COST's option order
    in the DNA (adam, sgd, rmsprop, adagrad)."""
    option_cost = np.array([OPTIMIZER_COST[o] for o in ("adam", "sgd", "rmsprop", "adagrad")])
    relevant = np.zeros(features.shape[1], dtype=np.bool_)
    relevant[list(RELEVANT_FEATURES)] = True
    missing = (~features[:, relevant]).sum(axis=1)
    noise = features[:, ~relevant].sum(axis=1)
    return (
        0.5 * (log_lr + 2.5) ** 2
        + 4.0 * (dropout - 0.2) ** 2
        + 0.05 * (layers - 3.0) ** 2
        + 0.1 * np.log2(units / 128.0) ** 2
        + option_cost[optimizer]
        + 0.25 * missing
        + 0.02 * noise
    )


def hyperparameters(population: Population) -> FloatArray:
    # Columns in gene order of examples/dna/hyperparameters.yaml: reals (lr, dropout),
    # integers (layers, units), one choice (optimizer), 16 bits (features).
    reals, integers = population.reals, population.integers.astype(np.float64)
    return hyperparameters_loss(
        np.log10(reals[:, 0]),
        integers[:, 0],
        integers[:, 1],
        population.choices[:, 0],
        reals[:, 1],
        population.bits,
    )


def _problems() -> dict[str, Callable[[], Problem]]:
    minimise, maximise = common_pb2.OBJECTIVE_MINIMIZE, common_pb2.OBJECTIVE_MAXIMIZE
    return {
        "rastrigin-10d": lambda: Problem(
            "rastrigin-10d", "rastrigin.yaml", minimise, 20_000, rastrigin, "reals", 0.0
        ),
        "tsp-berlin52": lambda: Problem(
            "tsp-berlin52",
            "tsp.yaml",
            minimise,
            46_000,
            tsp_scorer(BERLIN52),
            "permutation",
            7542.0,
        ),
        "onemax-100": lambda: Problem(
            "onemax-100", "onemax.yaml", maximise, 10_000, onemax, "bits", 100.0
        ),
        "hyperparameters": lambda: Problem(
            "hyperparameters",
            "hyperparameters.yaml",
            minimise,
            10_000,
            hyperparameters,
            "mixed",
            0.0,
            "synthetic loss, optimum 0",
        ),
    }


PROBLEMS = _problems()


# --- the result of one run ------------------------------------------------------------------


@dataclass
class Result:
    """One run: the best score seen, the evaluations spent (= the budget unless the search
    stalled), the generations bred and the best score after each generation."""

    best: float
    evaluations: int
    generations: int
    trace: list[float] = field(default_factory=list)


class Budget:
    """Scores genomes until `budget` evaluations are spent; an id scored before is free."""

    def __init__(self, problem: Problem, budget: int) -> None:
        self.problem = problem
        self.left = budget
        self.spent = 0
        self.cache: dict[str, float] = {}
        self.best = math.inf if problem.minimise else -math.inf

    def score(self, ids: Sequence[str], population: Population) -> list[float | None]:
        """Each id's score: cached, freshly computed while budget is left, else None (the
        run ends at the first None)."""
        fresh: list[int] = []
        seen: set[str] = set()
        for i, candidate_id in enumerate(ids):
            if candidate_id not in self.cache and candidate_id not in seen:
                if len(fresh) < self.left:
                    fresh.append(i)
                seen.add(candidate_id)
        if fresh:
            values = self.problem.score(population.take(fresh)).tolist()
            for i, value in zip(fresh, values, strict=True):
                self.cache[ids[i]] = value
                if self.problem.better(value, self.best):
                    self.best = value
            self.left -= len(fresh)
            self.spent += len(fresh)
        return [self.cache.get(candidate_id) for candidate_id in ids]


# --- alpha: the generator's real path -------------------------------------------------------


def generate(
    layout: Layout, request: generator_pb2.GenerateRequest
) -> list[candidate_pb2.Candidate]:
    """What GeneratorService.Generate streams for `request`, minus the network: validate,
    rank the parents, breed; the candidates in output order."""
    validate(checks.check_generate_request, request)
    parents = breeding.rank_parents(layout, request)
    out: list[candidate_pb2.Candidate] = []
    for responses in breeding.breed(layout, request, parents):
        for response in responses:
            out.extend(response.candidates)
    return out


def run_alpha(problem: Problem, dna: dna_pb2.Dna, seed: int, budget: int) -> Result:
    """The generational loop over the generator's core (module docstring) for a normalised
    `dna` (alpha or random strategy), until `budget` evaluations are spent."""
    layout = breeding.layout_for(dna)
    count = population_size(dna)
    spend = Budget(problem, budget)
    trace: list[float] = []
    parents: list[candidate_pb2.ScoredCandidate] = []
    generation, idle = 0, 0
    while spend.left > 0 and idle < MAX_IDLE_GENERATIONS:
        request = generator_pb2.GenerateRequest(
            dna=dna,
            parents=parents,
            objective=problem.objective,
            count=count,
            seed=seed,
            generation=generation,
        )
        candidates = generate(layout, request)
        genomes = genome_checks.decode_genomes(
            layout, [c.genome for c in candidates], lambda i: f"candidates[{i}].genome"
        )
        before = spend.spent
        scores = spend.score([c.id for c in candidates], genomes)
        idle = idle + 1 if spend.spent == before else 0
        trace.append(spend.best)
        parents = [
            candidate_pb2.ScoredCandidate(
                candidate=candidate,
                verdict=candidate_pb2.Verdict(
                    candidate_id=candidate.id,
                    status=candidate_pb2.VERDICT_STATUS_PASSED,
                    score=score,
                ),
            )
            for candidate, score in zip(candidates, scores, strict=True)
            if score is not None
        ]
        generation += 1
    return Result(spend.best, spend.spent, generation, trace)


# --- describing alpha's side ----------------------------------------------------------------


def describe_alpha(dna: dna_pb2.Dna) -> str:
    """A normalised DNA's strategy in one line: its rates and the operators of its genes'
    kinds (defaults filled in)."""
    strategy = dna.strategy
    kind = strategy.WhichOneof("kind")
    if kind != "alpha":
        return f"{kind}, pop {population_size(dna)}"
    # Every field the normalised strategy sets (new fields show up without a change here),
    # operator messages only for the kinds of genes the DNA has.
    kinds = {gene.WhichOneof("kind") for gene in dna.genes}
    parts = []
    for spec, value in strategy.alpha.ListFields():
        if spec.message_type is None:
            shown = spec.enum_type.values_by_number[value].name if spec.enum_type else value
            parts.append(
                f"{spec.name} {shown:g}" if isinstance(shown, float) else f"{spec.name} {shown}"
            )
        elif spec.name in kinds:
            text = str(value).replace("\n", " ").strip()
            parts.append(f"{spec.name} {{{text}}}")
    return ", ".join(parts)
