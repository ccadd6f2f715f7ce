"""The generational search of one run, without the network: the reproducible core.

    search = Search(spec, dna)                    # or Search.restore(spec, dna, checkpoint)
    while True:
        generation = search.begin()               # generation g: its GenerateRequest
        fresh = generation.add(candidates)        # as the generator streams them, in order
        ... verify `fresh` anywhere, in any order, in any split ...
        generation.record(verdict)                # one per fresh candidate
        outcome = search.finish(generation, elapsed_seconds)
        store(outcome.checkpoint, outcome.events) # then stop if outcome.stop_reason

Determinism: generation g's GenerateRequest is a pure function of (seed, DNA, the
population of g-1) and the generator's output a pure function of that request, so the
run's whole history is fixed by (seed, DNA, oracle configuration) — whoever verifies,
whenever verdicts arrive. Nothing here reads a clock except the `elapsed` it is given.

Duplicates: a candidate whose id was already verified in this run is not verified again;
its earlier verdict is reused and it is counted in `duplicates`, not in `evaluations`.
"Already verified" means within the run's duplicate window: the candidates of the last
`window` generations (and earlier ones of the same generation). The window bounds the
memory a run holds (about `window * population` verdicts) however long it runs; it is
fixed when the run starts and kept in its checkpoints, so a resumed run decides exactly as
an undisturbed one. Elites and unmutated copies, the usual duplicates, come from the
previous generation, so a small window catches nearly all of them
(docs/decisions.md, "Orchestrator").
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2

PASSED = candidate_pb2.VERDICT_STATUS_PASSED
FAILED = candidate_pb2.VERDICT_STATUS_FAILED
ERROR = candidate_pb2.VERDICT_STATUS_ERROR
TIMEOUT = candidate_pb2.VERDICT_STATUS_TIMEOUT
SCORED = frozenset({PASSED, FAILED})
MINIMIZE = common_pb2.OBJECTIVE_MINIMIZE

STOP_TARGET = orchestrator_pb2.RUN_STOP_REASON_TARGET_REACHED
STOP_EVALUATIONS = orchestrator_pb2.RUN_STOP_REASON_MAX_EVALUATIONS
STOP_GENERATIONS = orchestrator_pb2.RUN_STOP_REASON_MAX_GENERATIONS
STOP_DURATION = orchestrator_pb2.RUN_STOP_REASON_MAX_DURATION
STOP_CONVERGED = orchestrator_pb2.RUN_STOP_REASON_CONVERGED

CHECKPOINT_FORMAT = 1

RankKey = tuple[int, float, str]


def rank_key(objective: int, candidate_id: str, verdict: candidate_pb2.Verdict | None) -> RankKey:
    """The ranking rule of common.proto as a sort key: scored candidates first, by score
    (ascending when minimising, descending when maximising), ties by candidate id; the
    unscored after them, by id."""
    if verdict is None or verdict.status not in SCORED:
        return (1, 0.0, candidate_id)
    score = verdict.score if objective == MINIMIZE else -verdict.score
    return (0, score + 0.0, candidate_id)  # + 0.0: -0.0 ranks as 0.0


def reached(objective: int, score: float, target: float) -> bool:
    """Whether `score` meets `target` in the run's direction."""
    return score <= target if objective == MINIMIZE else score >= target


@dataclass(frozen=True, slots=True)
class SearchSpec:
    """What fixes a run's search: all of it is stored with the run."""

    seed: int
    objective: int
    population: int
    max_evaluations: int = 0  # 0: no limit
    max_generations: int = 0  # 0: no limit
    max_duration: float = 0.0  # seconds; 0: no limit
    target: float | None = None
    window: int = 4  # generations whose candidates are remembered for duplicates
    converge_after: int = 100  # generations in a row without a new candidate: CONVERGED

    def __post_init__(self) -> None:
        if self.population < 1 or self.window < 1 or self.converge_after < 1:
            raise ValueError("population, window and converge_after must be at least 1")
        if self.target is not None and not math.isfinite(self.target):
            raise ValueError("target must be finite")


@dataclass(slots=True)
class Counters:
    """RunProgress's counters, and what the loop needs to go on after a restart."""

    generation: int = -1  # the last completed generation; -1 before generation 0 completes
    evaluations: int = 0
    cache_hits: int = 0
    duplicates: int = 0
    failed: int = 0
    errors: int = 0
    idle: int = 0  # generations in a row without a new candidate
    elapsed: float = 0.0  # running seconds over every session of the run


class Window:
    """The verdicts of the candidates of the last `generations` generations, by id."""

    def __init__(self, generations: int) -> None:
        self.generations = generations
        self._verdicts: dict[str, tuple[candidate_pb2.Verdict, int]] = {}
        self._ids: collections.deque[tuple[int, list[str]]] = collections.deque()

    def __len__(self) -> int:
        return len(self._verdicts)

    def get(self, candidate_id: str) -> candidate_pb2.Verdict | None:
        found = self._verdicts.get(candidate_id)
        return found[0] if found is not None else None

    def add(self, number: int, population: Sequence[candidate_pb2.ScoredCandidate]) -> None:
        """Remember generation `number`'s population; forget the generation that leaves."""
        self.add_verdicts(
            number, [s.candidate.id for s in population], [s.verdict for s in population]
        )

    def add_verdicts(
        self,
        number: int,
        candidate_ids: Sequence[str],
        found: Sequence[candidate_pb2.Verdict | None],
    ) -> None:
        """`add` from the generation's ids and verdicts, position by position."""
        ids: list[str] = []
        verdicts = self._verdicts
        for candidate_id, verdict in zip(candidate_ids, found, strict=True):
            known = verdicts.get(candidate_id)
            if known is None or known[1] != number:
                ids.append(candidate_id)
            verdicts[candidate_id] = (verdict, number)  # type: ignore[assignment]
        self._ids.append((number, ids))
        while len(self._ids) > self.generations:
            old, old_ids = self._ids.popleft()
            for candidate_id in old_ids:
                if verdicts.get(candidate_id, (None, -1))[1] == old:
                    del verdicts[candidate_id]


class Generation:
    """One generation in progress: its candidates in output order, their verdicts as they
    arrive. `add` returns the candidates that need verifying (each fresh id once)."""

    def __init__(self, number: int, count: int, window: Window) -> None:
        self.number = number
        self.count = count
        self.candidates: list[candidate_pb2.Candidate] = []
        self.verdicts: list[candidate_pb2.Verdict | None] = []
        self.fresh: list[int] = []  # positions of the candidates verified for this run
        self._window = window
        self._waiting: dict[str, list[int]] = {}  # fresh id -> positions awaiting its verdict
        self._first: dict[str, int] = {}  # id -> first position in this generation
        self.missing = 0
        self._container: orchestrator_pb2.ListRunCandidatesResponse | None = None

    def add(self, candidates: Iterable[candidate_pb2.Candidate]) -> list[candidate_pb2.Candidate]:
        """Take the next candidates of the generator's output; returns those to verify."""
        out: list[candidate_pb2.Candidate] = []
        for candidate in candidates:
            if len(self.candidates) >= self.count:
                raise ValueError(f"more than the {self.count} candidates of a generation")
            position = len(self.candidates)
            self.candidates.append(candidate)
            candidate_id = candidate.id
            known = self._window.get(candidate_id)
            if known is not None:
                self.verdicts.append(known)
                continue
            self.verdicts.append(None)
            waiting = self._waiting.get(candidate_id)
            if waiting is not None:
                waiting.append(position)
            elif candidate_id in self._first:  # a repeat whose verdict came already
                self.verdicts[position] = self.verdicts[self._first[candidate_id]]
                continue
            else:
                self._waiting[candidate_id] = [position]
                self.fresh.append(position)
                self.missing += 1
                out.append(candidate)
            self._first.setdefault(candidate_id, position)
        return out

    @property
    def received(self) -> int:
        return len(self.candidates)

    def record(self, verdict: candidate_pb2.Verdict) -> bool:
        """The verdict of a fresh candidate (by verdict.candidate_id). False when no fresh
        candidate awaits it (an unknown id, or a second verdict: ignored)."""
        positions = self._waiting.pop(verdict.candidate_id, None)
        if positions is None:
            return False
        for position in positions:
            self.verdicts[position] = verdict
        self.missing -= 1
        return True

    @property
    def complete(self) -> bool:
        return self.received == self.count and self.missing == 0

    def population(self) -> Sequence[candidate_pb2.ScoredCandidate]:
        """The generation's candidates with their verdicts, in output order (the repeated
        field of `container()`, built once)."""
        return self.container().candidates

    def container(self) -> orchestrator_pb2.ListRunCandidatesResponse:
        """The population in the message that stores it (built on first use)."""
        if not self.complete:
            raise ValueError(f"generation {self.number} is not complete")
        if self._container is None:
            container = orchestrator_pb2.ListRunCandidatesResponse()
            add = container.candidates.add
            for c, v in zip(self.candidates, self.verdicts, strict=True):
                add(candidate=c, verdict=v)
            self._container = container
        return self._container


@dataclass(slots=True)
class Outcome:
    """What finishing a generation produced: events to record (NewBest, then
    GenerationCompleted), the fresh candidates (to retain), why the run stops if it does."""

    events: list[orchestrator_pb2.RunEvent]
    fresh: list[candidate_pb2.ScoredCandidate]
    population: Sequence[candidate_pb2.ScoredCandidate]
    stop_reason: int = 0
    new_best: bool = False
    container: orchestrator_pb2.ListRunCandidatesResponse | None = None

    def encoded_population(self) -> bytes:
        """The population as stored (`encode_population`'s bytes)."""
        if self.container is not None:
            return self.container.SerializeToString()
        return encode_population(self.population)


@dataclass(slots=True)
class _Tally:
    """One pass over a complete generation: ids, the scores of the scored, FAILED and
    ERROR/TIMEOUT counts, and the best position (-1: none scored) with its rank key."""

    ids: list[str]
    scores: list[float]
    failed: int
    errors: int
    best: int
    best_key: RankKey | None

    @classmethod
    def of(cls, objective: int, generation: Generation) -> _Tally:
        ids = [c.id for c in generation.candidates]
        scores: list[float] = []
        failed = errors = 0
        best, best_key = -1, None
        sign = 1.0 if objective == MINIMIZE else -1.0
        for position, verdict in enumerate(generation.verdicts):
            assert verdict is not None
            status = verdict.status
            if status in SCORED:
                score = verdict.score
                scores.append(score)
                failed += status == FAILED
                key = (0, sign * score + 0.0, ids[position])
                if best_key is None or key < best_key:
                    best, best_key = position, key
            elif status in (ERROR, TIMEOUT):
                errors += 1
        return cls(ids, scores, failed, errors, best, best_key)


def _tally(fresh: Sequence[candidate_pb2.ScoredCandidate]) -> dict[str, int]:
    stats = {"failed": 0, "errors": 0, "cache_hits": 0}
    for scored in fresh:
        verdict = scored.verdict
        if verdict.status == FAILED:
            stats["failed"] += 1
        elif verdict.status in (ERROR, TIMEOUT):
            stats["errors"] += 1
        if verdict.cached:
            stats["cache_hits"] += 1
    return stats


def encode_population(population: Sequence[candidate_pb2.ScoredCandidate]) -> bytes:
    """A population as bytes (a ListRunCandidatesResponse holding it, for its wire form)."""
    return orchestrator_pb2.ListRunCandidatesResponse(candidates=population).SerializeToString()


def decode_population(data: bytes) -> list[candidate_pb2.ScoredCandidate]:
    return list(orchestrator_pb2.ListRunCandidatesResponse.FromString(data).candidates)


class Search:
    """The state of one run's generational loop (module docstring)."""

    def __init__(self, spec: SearchSpec, dna: dna_pb2.Dna) -> None:
        self.spec = spec
        self.dna = dna
        self.counters = Counters()
        self.best: candidate_pb2.ScoredCandidate | None = None
        self.parents: Sequence[candidate_pb2.ScoredCandidate] = []
        self.window = Window(spec.window)

    # --- the loop -----------------------------------------------------------------------

    @property
    def next_generation(self) -> int:
        return self.counters.generation + 1

    def request(self) -> generator_pb2.GenerateRequest:
        """The GenerateRequest of the next generation (the DNA inline: pinned)."""
        return generator_pb2.GenerateRequest(
            dna=self.dna,
            parents=self.parents,
            objective=self.spec.objective,  # type: ignore[arg-type]
            count=self.spec.population,
            seed=self.spec.seed,
            generation=self.next_generation,
        )

    def begin(self) -> Generation:
        return Generation(self.next_generation, self.spec.population, self.window)

    def finish(self, generation: Generation, elapsed: float) -> Outcome:
        """Fold a complete generation in; `elapsed` is the running seconds it took."""
        if generation.number != self.next_generation:
            raise ValueError(f"expected generation {self.next_generation}, not {generation.number}")
        population = generation.population()
        objective = self.spec.objective
        counters = self.counters
        fresh = [population[i] for i in generation.fresh]
        tally = _Tally.of(objective, generation)
        scores = tally.scores
        gen_best = population[tally.best] if tally.best >= 0 else None
        gen_best_key = tally.best_key
        stats = _tally(fresh)
        duplicates = generation.count - len(fresh)
        counters.generation = generation.number
        counters.evaluations += len(fresh)
        counters.cache_hits += stats["cache_hits"]
        counters.duplicates += duplicates
        counters.failed += stats["failed"]
        counters.errors += stats["errors"]
        counters.idle = 0 if fresh else counters.idle + 1
        counters.elapsed += max(0.0, elapsed)
        events: list[orchestrator_pb2.RunEvent] = []
        new_best = False
        if (
            gen_best is not None
            and gen_best_key is not None
            and (
                self.best is None
                or gen_best_key < rank_key(objective, self.best.candidate.id, self.best.verdict)
            )
        ):
            # A copy: a sub-message would keep its whole population alive (upb arenas).
            self.best = candidate_pb2.ScoredCandidate()
            self.best.CopyFrom(gen_best)
            new_best = True
            events.append(
                orchestrator_pb2.RunEvent(new_best=orchestrator_pb2.NewBest(best=gen_best))
            )
        completed = orchestrator_pb2.GenerationCompleted(
            generation=generation.number,
            evaluations=counters.evaluations,
            scored=len(scores),
            failed=tally.failed,
            errors=tally.errors,
            cache_hits=stats["cache_hits"],
            duplicates=duplicates,
        )
        if scores:
            assert gen_best is not None
            completed.generation_best_score = gen_best.verdict.score
            completed.mean_score = math.fsum(scores) / len(scores)
        if self.best is not None:
            completed.best_score = self.best.verdict.score
        events.append(orchestrator_pb2.RunEvent(generation_completed=completed))
        # The verdicts as held by the population's message (one arena per generation):
        # those received are sub-messages of whole VerdictBatch responses, and a verdict
        # kept in the window for long (a lasting elite) would keep its batch alive.
        self.window.add_verdicts(generation.number, tally.ids, [p.verdict for p in population])
        self.parents = population
        return Outcome(
            events, fresh, population, self._stop_reason(), new_best, generation.container()
        )

    def _stop_reason(self) -> int:
        spec, counters = self.spec, self.counters
        if (
            spec.target is not None
            and self.best is not None
            and reached(spec.objective, self.best.verdict.score, spec.target)
        ):
            return STOP_TARGET
        if spec.max_evaluations and counters.evaluations >= spec.max_evaluations:
            return STOP_EVALUATIONS
        if spec.max_generations and counters.generation + 1 >= spec.max_generations:
            return STOP_GENERATIONS
        if spec.max_duration and counters.elapsed >= spec.max_duration:
            return STOP_DURATION
        if counters.idle >= spec.converge_after:
            return STOP_CONVERGED
        return 0

    # --- checkpoints --------------------------------------------------------------------

    def state(self) -> bytes:
        """The counters as JSON bytes (the populations are stored beside it)."""
        c = self.counters
        return json.dumps(
            {
                "format": CHECKPOINT_FORMAT,
                "generation": c.generation,
                "evaluations": c.evaluations,
                "cache_hits": c.cache_hits,
                "duplicates": c.duplicates,
                "failed": c.failed,
                "errors": c.errors,
                "idle": c.idle,
                "elapsed": c.elapsed,
                "window": self.spec.window,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def restore(
        cls,
        spec: SearchSpec,
        dna: dna_pb2.Dna,
        state: bytes,
        populations: Sequence[tuple[int, bytes]],
        best: candidate_pb2.ScoredCandidate | None,
    ) -> Search:
        """The search as it was after the checkpoint: `state` from `state()`, the stored
        populations (generation, bytes) of the last generations (at least the last one),
        `best` the run's best so far."""
        loaded = json.loads(state)
        if loaded.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unknown checkpoint format {loaded.get('format')!r}")
        search = cls(spec, dna)
        c = search.counters
        c.generation = int(loaded["generation"])
        c.evaluations = int(loaded["evaluations"])
        c.cache_hits = int(loaded["cache_hits"])
        c.duplicates = int(loaded["duplicates"])
        c.failed = int(loaded["failed"])
        c.errors = int(loaded["errors"])
        c.idle = int(loaded["idle"])
        c.elapsed = float(loaded["elapsed"])
        ordered = sorted(populations)[-spec.window :]
        if c.generation >= 0:
            if not ordered or ordered[-1][0] != c.generation:
                raise ValueError(f"the population of generation {c.generation} is missing")
            for number, data in ordered:
                population = decode_population(data)
                search.window.add(number, population)
                search.parents = population
        search.best = best
        return search
