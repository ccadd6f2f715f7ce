"""The generational search of one run, without the network: the reproducible core.

    search = Search(spec, dna)                    # or Search.restore(spec, dna, checkpoint)
    while True:
        generation = search.begin()               # generation g; search.request(): its
                                                  # GenerateRequest
        fresh, ids = generation.add(records, ids) # as the generator streams them, in order
        ... verify `fresh` anywhere, in any order, in any split ...
        generation.record(verdicts)               # one verdict per fresh candidate
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

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
from helix.orchestrator import wire

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
MAX_GENERATE_BATCH = 10_000  # GenerateRequest.batch_size at most

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
    """What the candidates of the last `generations` generations were judged, by id: the
    verdict (serialised), its status and score. Each generation is kept as it came (its
    lists and an id -> position map, built in C); `latest` says which of them last had
    an id."""

    def __init__(self, generations: int) -> None:
        self.generations = generations
        self.latest: dict[str, int] = {}  # id -> the last generation that had it
        self._held: dict[int, _Held] = {}

    def __len__(self) -> int:
        return len(self.latest)

    def get(self, candidate_id: str) -> tuple[bytes, int, float, int] | None:
        """(verdict bytes, status, score, generation) of a remembered id, else None."""
        number = self.latest.get(candidate_id)
        if number is None:
            return None
        return (*self._held[number].at(candidate_id), number)

    def add(self, number: int, population: Sequence[candidate_pb2.ScoredCandidate]) -> None:
        """Remember generation `number`'s population (messages: a restored checkpoint's)."""
        self.add_verdicts(
            number,
            [s.candidate.id for s in population],
            [s.verdict.SerializeToString() for s in population],
            [s.verdict.status for s in population],
            [s.verdict.score for s in population],
        )

    def add_verdicts(
        self,
        number: int,
        candidate_ids: Sequence[str],
        raws: Sequence[bytes],
        statuses: Sequence[int],
        scores: Sequence[float],
    ) -> None:
        """Remember generation `number` from its ids and verdicts, position by position
        (the lists are kept, not copied); forget the generation that leaves."""
        if not len(candidate_ids) == len(raws) == len(statuses) == len(scores):
            raise ValueError("ids and verdicts differ in length")
        where = dict(zip(candidate_ids, range(len(candidate_ids)), strict=True))
        self._held[number] = _Held(where, raws, statuses, scores)
        self.latest.update(
            zip(candidate_ids, itertools.repeat(number, len(candidate_ids)), strict=True)
        )
        while len(self._held) > self.generations:
            old = min(self._held)
            latest = self.latest
            for candidate_id in self._held.pop(old).where:
                if latest.get(candidate_id) == old:
                    del latest[candidate_id]


@dataclass(frozen=True, slots=True)
class _Held:
    """One generation in the window."""

    where: dict[str, int]  # id -> a position
    raws: Sequence[bytes]
    statuses: Sequence[int]
    scores: Sequence[float]

    def at(self, candidate_id: str) -> tuple[bytes, int, float]:
        i = self.where[candidate_id]
        return self.raws[i], self.statuses[i], self.scores[i]


@dataclass(slots=True)
class Verdicts:
    """Verdicts of fresh candidates, column by column (one batch's, in any order)."""

    ids: list[str]
    statuses: list[int]
    scores: list[float]
    cached: list[bool]
    raws: list[bytes]  # each verdict serialised

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, picked: Sequence[int]) -> Verdicts:
        """These verdicts at positions `picked`."""
        return Verdicts(
            [self.ids[i] for i in picked],
            [self.statuses[i] for i in picked],
            [self.scores[i] for i in picked],
            [self.cached[i] for i in picked],
            [self.raws[i] for i in picked],
        )

    def replace(self, i: int, verdict: candidate_pb2.Verdict) -> None:
        """Put `verdict` at position `i`."""
        self.ids[i] = verdict.candidate_id
        self.statuses[i] = verdict.status
        self.scores[i] = verdict.score
        self.cached[i] = verdict.cached
        self.raws[i] = verdict.SerializeToString()

    @classmethod
    def of(cls, verdicts: Iterable[candidate_pb2.Verdict]) -> Verdicts:
        listed = list(verdicts)
        return cls(
            [v.candidate_id for v in listed],
            [v.status for v in listed],
            [v.score for v in listed],
            [v.cached for v in listed],
            [v.SerializeToString() for v in listed],
        )


class Generation:
    """One generation in progress: its candidates (serialised) in output order, their
    verdicts as they arrive. `add` returns the candidates that need verifying (each fresh
    id once)."""

    def __init__(self, number: int, count: int, window: Window) -> None:
        self.number = number
        self.count = count
        self.records: list[bytes] = []  # each candidate serialised
        self.ids: list[str] = []
        self.verdicts: list[bytes | None] = []  # each verdict serialised, None until known
        self.statuses: list[int] = []
        self.scores: list[float] = []
        self.fresh: list[int] = []  # positions of the candidates verified for this run
        self.cache_hits = 0  # fresh verdicts the oracle answered from its cache
        self._window = window
        self._waiting: dict[str, int] = {}  # fresh id -> its position, awaiting its verdict
        self._repeats: dict[str, list[int]] = {}  # such an id -> its later positions
        self._first: dict[str, int] = {}  # id -> first position in this generation
        self.missing = 0

    def add(self, records: Sequence[bytes], ids: Sequence[str]) -> tuple[list[bytes], list[str]]:
        """Take the next candidates of the generator's output (serialised, with their
        ids); returns those to verify, with their ids."""
        n = len(ids)
        if len(records) != n:
            raise ValueError("records and ids differ in length")
        if len(self.records) + n > self.count:
            raise ValueError(f"more than the {self.count} candidates of a generation")
        start = len(self.records)
        window = self._window
        first = self._first
        waiting_of = self._waiting
        known = list(map(window.latest.get, ids))
        first_row = dict(zip(reversed(ids), range(n - 1, -1, -1), strict=True))
        # Plain: not remembered by the window and the id's first row in the generation;
        # they are filled in bulk, and only the others (duplicates) are visited one by one.
        plain = [
            known[i] is None and first_row[cid] == i and cid not in first
            for i, cid in enumerate(ids)
        ]
        fresh_rows = [i for i, is_plain in enumerate(plain) if is_plain]
        self.records.extend(records)
        self.ids.extend(ids)
        self.verdicts.extend(itertools.repeat(None, n))
        self.statuses.extend(itertools.repeat(0, n))
        self.scores.extend(itertools.repeat(0.0, n))
        everyone = len(fresh_rows) == n
        out = list(records) if everyone else [records[i] for i in fresh_rows]
        out_ids = list(ids) if everyone else [ids[i] for i in fresh_rows]
        positions = range(start, start + n) if everyone else [start + i for i in fresh_rows]
        waiting_of.update(zip(out_ids, positions, strict=True))
        first.update(zip(out_ids, positions, strict=True))
        self.fresh.extend(positions)
        if not everyone:
            for i in (i for i, is_plain in enumerate(plain) if not is_plain):
                self._add_duplicate(start + i, ids[i])
        self.missing += len(out)
        return out, out_ids

    def _add_duplicate(self, position: int, candidate_id: str) -> None:
        """A candidate the window remembers, or whose id came earlier in the generation."""
        known = self._window.get(candidate_id)
        if known is not None:
            self.verdicts[position], self.statuses[position], self.scores[position] = known[:3]
        elif candidate_id in self._waiting:  # its verdict is still to come
            self._repeats.setdefault(candidate_id, []).append(position)
        else:  # its verdict came already
            at = self._first[candidate_id]
            self.verdicts[position] = self.verdicts[at]
            self.statuses[position] = self.statuses[at]
            self.scores[position] = self.scores[at]
        self._first.setdefault(candidate_id, position)

    @property
    def received(self) -> int:
        return len(self.records)

    def record(self, verdicts: Verdicts) -> int:
        """The verdicts of fresh candidates (by id); returns how many were awaited (an
        unknown id, or a second verdict, is ignored)."""
        taken = 0
        waiting = self._waiting
        repeats = self._repeats
        for candidate_id, status, score, cached, raw in zip(
            verdicts.ids,
            verdicts.statuses,
            verdicts.scores,
            verdicts.cached,
            verdicts.raws,
            strict=True,
        ):
            position = waiting.pop(candidate_id, None)
            if position is None:
                continue
            self.verdicts[position] = raw
            self.statuses[position] = status
            self.scores[position] = score
            if repeats:
                for again in repeats.pop(candidate_id, ()):
                    self.verdicts[again] = raw
                    self.statuses[again] = status
                    self.scores[again] = score
            self.cache_hits += cached
            taken += 1
        self.missing -= taken
        return taken

    @property
    def complete(self) -> bool:
        return self.received == self.count and self.missing == 0

    def population(self) -> list[bytes]:
        """The generation's ScoredCandidates (serialised), in output order."""
        if not self.complete:
            raise ValueError(f"generation {self.number} is not complete")
        return wire.scored_records(self.records, self.verdicts)  # type: ignore[arg-type]


@dataclass(slots=True)
class Outcome:
    """What finishing a generation produced: events to record (NewBest, then
    GenerationCompleted), the population (serialised ScoredCandidates in output order,
    with their ids, statuses and scores), the positions of the fresh candidates (to
    retain), why the run stops if it does."""

    events: list[orchestrator_pb2.RunEvent]
    population: list[bytes]
    ids: list[str]
    statuses: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]
    fresh: list[int]
    stop_reason: int = 0
    new_best: bool = False

    def encoded_population(self) -> bytes:
        """The population as stored (`encode_population`'s bytes)."""
        return wire.population_bytes(self.population)


@dataclass(slots=True)
class _Tally:
    """One pass over a complete generation (NumPy): FAILED and ERROR/TIMEOUT counts over
    the population and over its fresh candidates, the scored positions, and the best
    position (-1: none scored) with its rank key."""

    scored: npt.NDArray[np.bool_]
    failed: int
    errors: int
    fresh_failed: int
    fresh_errors: int
    best: int
    best_key: RankKey | None

    @classmethod
    def of(
        cls,
        objective: int,
        ids: Sequence[str],
        statuses: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float64],
        fresh: Sequence[int],
    ) -> _Tally:
        failed = statuses == FAILED
        errors = (statuses == ERROR) | (statuses == TIMEOUT)
        scored = (statuses == PASSED) | failed
        picked = np.asarray(fresh, dtype=np.intp)
        best, best_key = -1, None
        rows = np.flatnonzero(scored & np.isfinite(scores))  # (runs.py makes them finite)
        if rows.size:
            sign = 1.0 if objective == MINIMIZE else -1.0
            keys = sign * scores[rows] + 0.0  # + 0.0: -0.0 ranks as 0.0
            low = keys.min()
            best = min(rows[keys == low].tolist(), key=ids.__getitem__)
            best_key = (0, float(low), ids[best])
        return cls(
            scored,
            int(np.count_nonzero(failed)),
            int(np.count_nonzero(errors)),
            int(np.count_nonzero(failed[picked])),
            int(np.count_nonzero(errors[picked])),
            best,
            best_key,
        )


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
        self._dna = dna.SerializeToString()
        self.counters = Counters()
        self.best: candidate_pb2.ScoredCandidate | None = None
        self.parents: list[bytes] = []  # the last population's ScoredCandidates, serialised
        self.window = Window(spec.window)

    # --- the loop -----------------------------------------------------------------------

    @property
    def next_generation(self) -> int:
        return self.counters.generation + 1

    def request(self) -> Any:
        """The GenerateRequest of the next generation (the DNA inline: pinned), as a
        `wire.RawGenerateRequest` (the parents as the bytes they were stored as)."""
        return wire.RawGenerateRequest(
            dna=self._dna,
            parents=self.parents,
            objective=self.spec.objective,
            count=self.spec.population,
            seed=self.spec.seed,
            generation=self.next_generation,
            # One response for a whole generation where it fits (the generator cuts
            # responses at 4 MiB anyway): every message costs the one shared interpreter.
            batch_size=min(self.spec.population, MAX_GENERATE_BATCH),
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
        ids = generation.ids
        statuses = np.array(generation.statuses, dtype=np.int64)
        scores = np.array(generation.scores, dtype=np.float64)
        fresh = generation.fresh
        tally = _Tally.of(objective, ids, statuses, scores, fresh)
        scored = scores[tally.scored]
        duplicates = generation.count - len(fresh)
        counters.generation = generation.number
        counters.evaluations += len(fresh)
        counters.cache_hits += generation.cache_hits
        counters.duplicates += duplicates
        counters.failed += tally.fresh_failed
        counters.errors += tally.fresh_errors
        counters.idle = 0 if fresh else counters.idle + 1
        counters.elapsed += max(0.0, elapsed)
        events: list[orchestrator_pb2.RunEvent] = []
        new_best = False
        if tally.best_key is not None and (
            self.best is None
            or tally.best_key < rank_key(objective, self.best.candidate.id, self.best.verdict)
        ):
            self.best = candidate_pb2.ScoredCandidate.FromString(population[tally.best])
            new_best = True
            events.append(
                orchestrator_pb2.RunEvent(new_best=orchestrator_pb2.NewBest(best=self.best))
            )
        completed = orchestrator_pb2.GenerationCompleted(
            generation=generation.number,
            evaluations=counters.evaluations,
            scored=len(scored),
            failed=tally.failed,
            errors=tally.errors,
            cache_hits=generation.cache_hits,
            duplicates=duplicates,
        )
        if len(scored):
            completed.generation_best_score = float(scores[tally.best])
            completed.mean_score = math.fsum(scored.tolist()) / len(scored)
        if self.best is not None:
            completed.best_score = self.best.verdict.score
        events.append(orchestrator_pb2.RunEvent(generation_completed=completed))
        self.window.add_verdicts(
            generation.number,
            ids,
            generation.verdicts,  # type: ignore[arg-type]  # complete: none is None
            generation.statuses,
            generation.scores,
        )
        self.parents = population
        return Outcome(
            events, population, ids, statuses, scores, fresh, self._stop_reason(), new_best
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
                search.window.add(number, decode_population(data))
                search.parents = list(wire.RawPopulation.FromString(data).candidates)
        search.best = best
        return search
