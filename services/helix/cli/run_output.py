"""What `helix run` and `helix runs` show people, and the files a run leaves.

Pure and gRPC-free: everything takes the orchestrator's protos (`Run`, `RunEvent`,
`ScoredCandidate`, `Dna`), so it is tested without a server.

- `Convergence`: a run's per-generation series from its GenerationCompleted events,
  bounded by thinning evenly.
- `RunDisplay`: a live progress bar on a terminal (plain lines elsewhere) fed with Runs
  and RunEvents.
- `summary_table`, `summary_dict`, `runs_table`: a run, or a page of runs, for people and
  for JSON.
- `named_candidate`, `write_run_dir`: a candidate's genome in named JSON form; the run
  directory (summary.json, candidates.jsonl, convergence.json, convergence.png).

Numbers are shown for people: counts with thousands separators (12,345), scores with six
significant digits.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from google.protobuf import timestamp_pb2
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
from helix.common.errors import InvalidArgument
from helix.generator.strategies import rank
from helix.genome.genome_checks import decode_genomes
from helix.genome.layout import Layout, normalise
from helix.genome.named import to_named_rows

DEFAULT_MAX_POINTS = 10_000
_DECODE_CHUNK = 1_000  # candidates decoded at once by write_run_dir
_SCORED = (candidate_pb2.VERDICT_STATUS_PASSED, candidate_pb2.VERDICT_STATUS_FAILED)
_TERMINAL = (
    orchestrator_pb2.RUN_STATE_SUCCEEDED,
    orchestrator_pb2.RUN_STATE_FAILED,
    orchestrator_pb2.RUN_STATE_CANCELLED,
)
# A run only moves forward: PENDING -> RUNNING -> one terminal state.
_STATE_STEP: dict[int, int] = {
    orchestrator_pb2.RUN_STATE_UNSPECIFIED: 0,
    orchestrator_pb2.RUN_STATE_PENDING: 1,
    orchestrator_pb2.RUN_STATE_RUNNING: 2,
    **dict.fromkeys(_TERMINAL, 3),
}


# --- numbers for people -------------------------------------------------------------------


def format_count(value: int) -> str:
    """A count with thousands separators: 12,345."""
    return f"{value:,}"


def format_score(value: float | None) -> str:
    """A score with six significant digits; "-" for none."""
    return "-" if value is None else f"{value:.6g}"


def format_rate(per_second: float | None) -> str:
    """A rate: whole numbers with separators from 100 up, three significant digits below."""
    if per_second is None:
        return "-"
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


def format_seconds(seconds: float | None) -> str:
    """A duration: 12.3s, 4m 05s, 2h 03m, 3d 04h; "-" for none."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{max(seconds, 0.0):.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def state_name(state: int) -> str:
    """A RunState without its prefix ("SUCCEEDED"); the number if the schema lacks it."""
    return _enum_name(orchestrator_pb2.RunState, state, "RUN_STATE_")


def stop_reason_name(reason: int) -> str | None:
    """A RunStopReason without its prefix ("TARGET_REACHED"); None when unset."""
    if reason == orchestrator_pb2.RUN_STOP_REASON_UNSPECIFIED:
        return None
    return _enum_name(orchestrator_pb2.RunStopReason, reason, "RUN_STOP_REASON_")


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        name: str = enum.Name(value)
    except ValueError:  # a value from a newer schema
        return str(value)
    return name.removeprefix(prefix)


def _verdict_status_name(scored: candidate_pb2.ScoredCandidate) -> str | None:
    if not scored.HasField("verdict"):
        return None
    return _enum_name(candidate_pb2.VerdictStatus, scored.verdict.status, "VERDICT_STATUS_")


def _score_of(scored: candidate_pb2.ScoredCandidate) -> float | None:
    """The verdict's score when it has one (PASSED or FAILED)."""
    if scored.HasField("verdict") and scored.verdict.status in _SCORED:
        return _finite(scored.verdict.score)
    return None


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: such a value is shown as none."""
    return value if math.isfinite(value) else None


def _seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _times(run: orchestrator_pb2.Run) -> dict[str, str | None]:
    """The run's timestamps as RFC 3339 UTC, None when unset."""
    return {
        "create_time": run.create_time.ToJsonString() if run.HasField("create_time") else None,
        "start_time": run.start_time.ToJsonString() if run.HasField("start_time") else None,
        "end_time": run.end_time.ToJsonString() if run.HasField("end_time") else None,
    }


def _best_score(run: orchestrator_pb2.Run) -> float | None:
    return _score_of(run.progress.best) if run.progress.HasField("best") else None


def run_seconds(run: orchestrator_pb2.Run, now: float | None = None) -> float | None:
    """How long a run has been running: end_time (or `now`, POSIX seconds, default the
    current time) minus start_time; None before it started."""
    if not run.HasField("start_time"):
        return None
    end = _seconds(run.end_time) if run.HasField("end_time") else now
    return max((time.time() if end is None else end) - _seconds(run.start_time), 0.0)


# --- convergence --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConvergencePoint:
    """One generation's figures, from its GenerationCompleted event (orchestrator.proto)."""

    generation: int
    evaluations: int
    generation_best_score: float | None
    mean_score: float | None
    best_score: float | None
    scored: int
    failed: int
    errors: int
    cache_hits: int
    duplicates: int
    time: float | None  # POSIX seconds of the event; None when the event had no time

    @classmethod
    def of(cls, event: orchestrator_pb2.RunEvent) -> ConvergencePoint:
        done = event.generation_completed
        return cls(
            generation=done.generation,
            evaluations=done.evaluations,
            generation_best_score=(
                _finite(done.generation_best_score)
                if done.HasField("generation_best_score")
                else None
            ),
            mean_score=_finite(done.mean_score) if done.HasField("mean_score") else None,
            best_score=_finite(done.best_score) if done.HasField("best_score") else None,
            scored=done.scored,
            failed=done.failed,
            errors=done.errors,
            cache_hits=done.cache_hits,
            duplicates=done.duplicates,
            time=_seconds(event.time) if event.HasField("time") else None,
        )


class Convergence:
    """A run's per-generation series, at most `max_points` points however long the run.

    When full, every other point is dropped (the first kept) and from then on only every
    `stride`-th generation is kept, so the points stay evenly spread over the run; the
    latest generation is always kept too, so `points` runs from the first generation to the
    last one seen.
    """

    def __init__(self, max_points: int = DEFAULT_MAX_POINTS) -> None:
        if max_points < 2:
            raise ValueError("max_points must be at least 2 (the first and the last)")
        self.max_points = max_points
        self._kept: list[ConvergencePoint] = []  # the generations seen at multiples of stride
        self._latest: ConvergencePoint | None = None  # the last one, when not kept
        self._stride = 1
        self._seen = 0
        self._last_generation = -1

    @property
    def stride(self) -> int:
        """One point is kept for every `stride` generations seen (besides the latest)."""
        return self._stride

    @property
    def generations_seen(self) -> int:
        return self._seen

    @property
    def points(self) -> list[ConvergencePoint]:
        """The kept points in generation order, first and latest included."""
        return self._kept + ([self._latest] if self._latest is not None else [])

    def add(self, event: orchestrator_pb2.RunEvent) -> bool:
        """Records a GenerationCompleted event; True if it was one and new.

        Other events, and a generation not after the last one recorded (a replayed event),
        are ignored.
        """
        if event.WhichOneof("kind") != "generation_completed":
            return False
        if event.generation_completed.generation <= self._last_generation:
            return False
        point = ConvergencePoint.of(event)
        self._last_generation = point.generation
        index, self._seen = self._seen, self._seen + 1
        if index % self._stride == 0:
            self._kept.append(point)
            self._latest = None
        else:
            self._latest = point
        if len(self._kept) + (self._latest is not None) > self.max_points:
            self._kept = self._kept[::2]  # multiples of stride -> multiples of 2 * stride
            self._stride *= 2
            self._latest = None if self._kept[-1] is point else point
        return True

    def to_json(self) -> dict[str, Any]:
        """The series as a JSON-able dict: `stride`, `generations_seen` and `points` (one
        object per point, the fields of ConvergencePoint)."""
        return {
            "stride": self._stride,
            "generations_seen": self._seen,
            "points": [asdict(point) for point in self.points],
        }


# --- live progress ------------------------------------------------------------------------


class EvaluationRate:
    """Evaluations and generations per second over a moving window of GenerationCompleted
    events: from the newest sample back to the last one at least `window` seconds older
    (so a run slower than one generation per window still has a rate)."""

    def __init__(self, window: float = 5.0, max_samples: int = 4096) -> None:
        self.window = window
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=max_samples)

    def add(self, now: float, evaluations: int, generation: int) -> None:
        """One GenerationCompleted seen at `now` (a monotonic clock)."""
        self._samples.append((now, evaluations, generation))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def _per_second(self, column: int) -> float | None:
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        elapsed = last[0] - first[0]
        return (last[column] - first[column]) / elapsed if elapsed > 0 else None

    @property
    def evaluations_per_second(self) -> float | None:
        return self._per_second(1)

    @property
    def generations_per_second(self) -> float | None:
        return self._per_second(2)


@dataclass(frozen=True, slots=True)
class _Limit:
    """How far a run is towards one of its budget's limits."""

    fraction: float
    shown: str  # "12,345/100,000 evaluations"
    eta: float | None  # seconds until it is reached, at the current rate


class RunDisplay:
    """A run's progress on a console (stderr by default), as a context manager.

    On a terminal: a live bar towards the budget's limit the run is closest to (evaluations,
    generations or running time; an indeterminate bar while none is known) with the
    generation, the best score, evaluations per second over the last `window` seconds and
    the ETA; state changes print above it. Elsewhere (a file, a pipe, CI): one plain line
    per state change and at most one progress line every `plain_every` seconds (the last
    progress is flushed before a terminal state and on exit). `clock` (monotonic) times
    rates and plain lines; `wall_clock` (POSIX seconds) measures running time against
    max_duration. Not thread-safe: feed it from one task.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        window: float = 5.0,
        plain_every: float = 5.0,
    ) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.rate = EvaluationRate(window)
        self._clock, self._wall_clock = clock, wall_clock
        self._plain_every = plain_every
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._run = orchestrator_pb2.Run()
        self._state: int = orchestrator_pb2.RUN_STATE_UNSPECIFIED
        self._generation: int | None = None
        self._evaluations = 0
        self._best: float | None = None
        self._last_plain: float | None = None
        self._unprinted = False

    def __enter__(self) -> RunDisplay:
        if self.console.is_terminal and self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
                refresh_per_second=4,
            )
            self._task = self._progress.add_task(self._description(), total=None, status="")
            self._progress.start()
            self._refresh()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
            self._progress = self._task = None
        else:
            self._print_progress(force=True)

    # -- input --

    def update_run(self, run: orchestrator_pb2.Run) -> None:
        """A snapshot of the run (CreateRun, GetRun): its name, budget, state, progress."""
        self._run.CopyFrom(run)
        progress = run.progress
        before = self._figures()
        if progress.evaluations >= self._evaluations:
            self._evaluations = progress.evaluations
            if progress.evaluations:
                self._generation = progress.generation
        best = _score_of(progress.best) if progress.HasField("best") else None
        self._best = self._best if best is None else best
        self._unprinted |= self._figures() != before
        self._set_state(run.state, stop_reason_name(run.stop_reason), run.error)
        self._refresh()

    def event(self, event: orchestrator_pb2.RunEvent) -> None:
        """One event of WatchRun."""
        kind = event.WhichOneof("kind")
        before = self._figures()
        if kind == "generation_completed":
            done = event.generation_completed
            self.rate.add(self._clock(), done.evaluations, done.generation)
            self._generation = done.generation
            self._evaluations = max(self._evaluations, done.evaluations)
            if done.HasField("best_score"):
                self._best = done.best_score
        elif kind == "new_best":
            best = _score_of(event.new_best.best)
            self._best = self._best if best is None else best
        elif kind == "state_changed":
            changed = event.state_changed
            self._set_state(changed.state, stop_reason_name(changed.stop_reason), changed.error)
        self._unprinted |= self._figures() != before
        self._refresh()

    def _figures(self) -> tuple[int, int | None, float | None]:
        return self._evaluations, self._generation, self._best

    # -- what is shown --

    def status_line(self) -> str:
        """The progress in one line: '12,345/100,000 evaluations (12%) · generation 12 ·
        best 0.123457 · 1,234 evals/s · ETA 4m 05s'."""
        limit = self._limit()
        if limit is None:
            amount = f"{format_count(self._evaluations)} evaluations"
        else:
            amount = f"{limit.shown} ({limit.fraction:.0%})"
        parts = [
            amount,
            f"generation {'-' if self._generation is None else format_count(self._generation)}",
            f"best {format_score(self._best)}",
            f"{format_rate(self.rate.evaluations_per_second)} evals/s",
        ]
        if self._state not in _TERMINAL:
            parts.append(f"ETA {format_seconds(self._eta())}")
        return " · ".join(parts)

    def _elapsed(self) -> float | None:
        return run_seconds(self._run, self._wall_clock())

    def _limits(self) -> list[_Limit]:
        budget, limits = self._run.budget, []
        if budget.max_evaluations:
            rate = self.rate.evaluations_per_second
            left = max(budget.max_evaluations - self._evaluations, 0)
            limits.append(
                _Limit(
                    min(self._evaluations / budget.max_evaluations, 1.0),
                    f"{format_count(self._evaluations)}/{format_count(budget.max_evaluations)}"
                    " evaluations",
                    left / rate if rate else None,
                )
            )
        if budget.max_generations:
            done = 0 if self._generation is None else self._generation + 1
            rate = self.rate.generations_per_second
            left = max(budget.max_generations - done, 0)
            limits.append(
                _Limit(
                    min(done / budget.max_generations, 1.0),
                    f"{format_count(done)}/{format_count(budget.max_generations)} generations",
                    left / rate if rate else None,
                )
            )
        duration = budget.max_duration.ToNanoseconds() / 1e9
        elapsed = self._elapsed()
        if duration > 0 and elapsed is not None:
            limits.append(
                _Limit(
                    min(elapsed / duration, 1.0),
                    f"{format_seconds(elapsed)}/{format_seconds(duration)}",
                    max(duration - elapsed, 0.0),
                )
            )
        return limits

    def _limit(self) -> _Limit | None:
        """The limit the run is closest to reaching (by fraction)."""
        return max(self._limits(), key=lambda limit: limit.fraction, default=None)

    def _eta(self) -> float | None:
        """When the first limit is reached at the current rates (the run stops then)."""
        etas = [limit.eta for limit in self._limits() if limit.eta is not None]
        return min(etas, default=None)

    def _description(self) -> str:
        name = self._run.name or "run"
        state = state_name(self._state) if self._state else "STARTING"
        return f"{name} {state}"

    # -- output --

    def _set_state(self, state: int, stop_reason: str | None, error: str) -> None:
        """Shows a new state; an older one (a stale snapshot after the events) is ignored."""
        step = _STATE_STEP.get(state, 3)
        if step == 0 or step <= _STATE_STEP.get(self._state, 3):
            return
        self._state = state
        if state in _TERMINAL:
            self._print_progress(force=True)
        line = f"{self._run.name or 'run'}: {state_name(state)}"
        if stop_reason:
            line += f" ({stop_reason})"
        if error:
            line += f": {error}"
        self._print(line)

    def _refresh(self) -> None:
        if self._progress is None or self._task is None:
            self._print_progress(force=False)
            return
        limit = self._limit()
        if self._state == orchestrator_pb2.RUN_STATE_SUCCEEDED:
            total, completed = 1.0, 1.0
        elif limit is None:
            total, completed = None, 0.0
        else:
            total, completed = 1.0, limit.fraction
        self._progress.update(
            self._task,
            description=self._description(),
            total=total,
            completed=completed,
            status=self.status_line(),
        )
        self._unprinted = False

    def _print_progress(self, *, force: bool) -> None:
        """Plain mode: the status line, when something changed since the last one and it
        is due (or forced)."""
        if self._progress is not None or not self._unprinted:
            return
        now = self._clock()
        if force or self._last_plain is None or now - self._last_plain >= self._plain_every:
            self._last_plain = now
            self._unprinted = False
            self._print(f"{self._run.name or 'run'}: {self.status_line()}")

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)


# --- summaries ----------------------------------------------------------------------------


def _evaluations_per_second(run: orchestrator_pb2.Run, wall_seconds: float) -> float | None:
    return run.progress.evaluations / wall_seconds if wall_seconds > 0 else None


def summary_table(run: orchestrator_pb2.Run, wall_seconds: float) -> Table:
    """A finished (or any) run for people: two columns, what and how much."""
    progress = run.progress
    table = Table(title=run.name, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    reason = stop_reason_name(run.stop_reason)
    rows = [
        ("state", state_name(run.state)),
        *([("stop reason", reason)] if reason else []),
        *([("error", run.error)] if run.error else []),
        ("generations", format_count(progress.generation + 1) if progress.evaluations else "0"),
        ("evaluations", format_count(progress.evaluations)),
        ("duplicates", format_count(progress.duplicates)),
        ("cache hits", format_count(progress.cache_hits)),
        ("failed", format_count(progress.failed)),
        ("errors", format_count(progress.errors)),
        ("best score", format_score(_best_score(run))),
        ("wall time", format_seconds(wall_seconds)),
        ("evaluations/s", format_rate(_evaluations_per_second(run, wall_seconds))),
        ("seed", str(run.seed) if run.HasField("seed") else "-"),
        ("dna fingerprint", run.dna_fingerprint or "-"),
        ("oracle config hash", run.oracle_config_hash or "-"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    return table


def summary_dict(
    run: orchestrator_pb2.Run, wall_seconds: float, best_named: dict[str, Any] | None
) -> dict[str, Any]:
    """A run as a JSON-able dict (summary.json, `--json`); `best_named` is the best
    candidate's genome in named JSON form (see `named_candidate`), or None."""
    progress = run.progress
    has_best = progress.HasField("best")
    dna_source = run.WhichOneof("dna_source")
    return {
        "run": run.name,
        "display_name": run.display_name,
        "state": state_name(run.state),
        "stop_reason": stop_reason_name(run.stop_reason),
        "error": run.error or None,
        "dna": run.dna_name if dna_source == "dna_name" else (run.dna.name or None),
        "oracle": run.oracle,
        "objective": _enum_name(common_pb2.Objective, run.objective, "OBJECTIVE_"),
        "target_score": run.target_score if run.HasField("target_score") else None,
        "generations": progress.generation + 1 if progress.evaluations else 0,
        "evaluations": progress.evaluations,
        "duplicates": progress.duplicates,
        "cache_hits": progress.cache_hits,
        "failed": progress.failed,
        "errors": progress.errors,
        "best_score": _best_score(run),
        "best_candidate_id": progress.best.candidate.id if has_best else None,
        "best_candidate": best_named,
        "wall_seconds": wall_seconds,
        "evaluations_per_second": _evaluations_per_second(run, wall_seconds),
        "seed": run.seed if run.HasField("seed") else None,
        "dna_fingerprint": run.dna_fingerprint or None,
        "oracle_config_hash": run.oracle_config_hash or None,
        **_times(run),
    }


def _local_time(stamp: timestamp_pb2.Timestamp) -> str:
    return datetime.fromtimestamp(_seconds(stamp)).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def runs_table(runs: Sequence[orchestrator_pb2.Run]) -> Table:
    """`helix runs list`: one row per run, in the order given (newest first from ListRuns)."""
    table = Table(box=None, pad_edge=False)
    table.add_column("NAME")
    table.add_column("STATE")
    table.add_column("GENERATION", justify="right")
    table.add_column("EVALUATIONS", justify="right")
    table.add_column("BEST", justify="right")
    table.add_column("CREATED")
    table.add_column("DISPLAY NAME")
    for run in runs:
        progress = run.progress
        table.add_row(
            run.name,
            state_name(run.state),
            format_count(progress.generation) if progress.evaluations else "-",
            format_count(progress.evaluations),
            format_score(_best_score(run)),
            _local_time(run.create_time) if run.HasField("create_time") else "-",
            run.display_name,
        )
    return table


# --- named candidates and the run directory -----------------------------------------------


def _layout(dna: dna_pb2.Dna) -> Layout:
    return Layout(normalise(dna))


def _named_rows(layout: Layout, candidates: Sequence[candidate_pb2.Candidate]) -> list[Any]:
    population = decode_genomes(
        layout, [c.genome for c in candidates], lambda i: f"candidates[{i}].genome"
    )
    return to_named_rows(layout, population)


def named_candidate(dna: dna_pb2.Dna, candidate: candidate_pb2.Candidate) -> dict[str, object]:
    """A candidate's genome in named JSON form (candidate.proto): one key per gene of the
    (valid) DNA. Raises `InvalidArgument` when the genome does not fit the DNA."""
    named: dict[str, object] = _named_rows(_layout(dna), [candidate])[0]
    return named


@dataclass(frozen=True, slots=True)
class RunFiles:
    """What `write_run_dir` wrote."""

    directory: Path
    summary: Path  # summary.json
    candidates: Path  # candidates.jsonl
    convergence: Path  # convergence.json
    plot: Path  # convergence.png
    candidates_written: int


def _ranked(
    candidates: Iterable[candidate_pb2.ScoredCandidate], objective: int
) -> list[candidate_pb2.ScoredCandidate]:
    """Best first by common.proto's ranking rule (as the order given when the objective is
    not set)."""
    listed = list(candidates)
    if objective not in (common_pb2.OBJECTIVE_MINIMIZE, common_pb2.OBJECTIVE_MAXIMIZE):
        return listed
    order = rank(
        [c.candidate.id for c in listed],
        [c.verdict.status for c in listed],
        [c.verdict.score for c in listed],
        objective,
    )
    return [listed[i] for i in order.tolist()]


def _genomes_named(
    layout: Layout, chunk: Sequence[candidate_pb2.ScoredCandidate]
) -> list[tuple[Any, str | None]]:
    """Each candidate's named genome, or None and why when it does not fit the DNA."""
    try:
        return [(named, None) for named in _named_rows(layout, [c.candidate for c in chunk])]
    except InvalidArgument:
        pass  # find the culprits one by one
    out: list[tuple[Any, str | None]] = []
    for scored in chunk:
        try:
            out.append((_named_rows(layout, [scored.candidate])[0], None))
        except InvalidArgument as error:
            out.append((None, str(error)))
    return out


def _candidate_line(
    position: int, scored: candidate_pb2.ScoredCandidate, genome: Any, why: str | None
) -> str:
    verdict = scored.verdict
    row = {
        "rank": position,
        "id": scored.candidate.id,
        "status": _verdict_status_name(scored),
        "score": _score_of(scored),
        "metrics": {k: _finite(v) for k, v in sorted(verdict.metrics.items())},
        "message": verdict.message,
        "generation": scored.candidate.generation,
        "parent_ids": list(scored.candidate.parent_ids),
        "genome": genome,
    }
    if why is not None:
        row["genome_error"] = why
    return json.dumps(row, allow_nan=False)


def _write_candidates(
    path: Path, layout: Layout, ranked: Sequence[candidate_pb2.ScoredCandidate]
) -> None:
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, len(ranked), _DECODE_CHUNK):
            chunk = ranked[start : start + _DECODE_CHUNK]
            for i, (scored, (genome, why)) in enumerate(
                zip(chunk, _genomes_named(layout, chunk), strict=True)
            ):
                out.write(_candidate_line(start + i + 1, scored, genome, why) + "\n")


def write_run_dir(
    out: Path,
    run: orchestrator_pb2.Run,
    dna: dna_pb2.Dna,
    convergence: Convergence,
    candidates: Iterable[candidate_pb2.ScoredCandidate],
    wall_seconds: float,
) -> RunFiles:
    """Writes the files a run leaves in `out` (created, parents too), and says which.

    - summary.json: `summary_dict` of the run, with its best candidate in named form;
    - candidates.jsonl: one object per candidate given, best first (common.proto's ranking
      rule): rank, id, status, score, metrics, message, generation, parent_ids and the
      genome in named form (`genome` null and a `genome_error` for one that does not fit
      `dna`);
    - convergence.json: `convergence.to_json()`;
    - convergence.png: best-so-far and generation mean score against evaluations.

    Blocking file I/O (and a matplotlib render): call it from the event loop through
    `asyncio.to_thread`. `dna` is the run's DNA (the inline one, or the one dna_name names,
    with the fingerprint run.dna_fingerprint).
    """
    out.mkdir(parents=True, exist_ok=True)
    layout = _layout(dna)
    best_named = None
    if run.progress.HasField("best"):
        best_named = _genomes_named(layout, [run.progress.best])[0][0]
    files = RunFiles(
        directory=out,
        summary=out / "summary.json",
        candidates=out / "candidates.jsonl",
        convergence=out / "convergence.json",
        plot=out / "convergence.png",
        candidates_written=0,
    )
    summary = summary_dict(run, wall_seconds, best_named)
    files.summary.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    ranked = _ranked(candidates, run.objective)
    _write_candidates(files.candidates, layout, ranked)
    files.convergence.write_text(json.dumps(convergence.to_json(), allow_nan=False) + "\n")
    plot_convergence(files.plot, convergence.points, _plot_title(run, dna), run.objective)
    return replace(files, candidates_written=len(ranked))


def _plot_title(run: orchestrator_pb2.Run, dna: dna_pb2.Dna) -> str:
    shown_dna = run.dna_name or dna.name or f"inline {run.dna_fingerprint[:12] or 'DNA'}"
    name = f"{run.name} ({run.display_name})" if run.display_name else run.name
    return f"{name}\nDNA {shown_dna} · oracle {run.oracle}"


def log_scale_wanted(values: Sequence[float]) -> bool:
    """Whether scores read better on a log axis: all positive, spanning over 2 decades."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100


def plot_convergence(
    path: Path, points: Sequence[ConvergencePoint], title: str, objective: int
) -> None:
    """Writes a PNG of the best score so far and each generation's mean score against
    evaluations (one point per generation); log y-axis when every plotted score is positive
    and they span over two decades. Blocking; matplotlib is imported here (Agg, no pyplot),
    so `helix` starts without it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    evaluations = [p.evaluations for p in points]
    best = [math.nan if p.best_score is None else p.best_score for p in points]
    mean = [math.nan if p.mean_score is None else p.mean_score for p in points]
    if points:
        axes.plot(evaluations, mean, color="tab:gray", linewidth=1, label="generation mean")
        axes.plot(evaluations, best, color="tab:blue", drawstyle="steps-post", label="best so far")
        axes.legend(loc="best")
    else:
        axes.text(0.5, 0.5, "no generation completed", ha="center", transform=axes.transAxes)
    plotted = [v for v in best + mean if not math.isnan(v)]
    if log_scale_wanted(plotted):
        axes.set_yscale("log")
    better: dict[int, str] = {
        common_pb2.OBJECTIVE_MINIMIZE: "lower",
        common_pb2.OBJECTIVE_MAXIMIZE: "higher",
    }
    axes.set_xlabel("evaluations")
    axes.set_ylabel(f"score ({better[objective]} is better)" if objective in better else "score")
    axes.set_title(title, fontsize=10)
    axes.grid(visible=True, alpha=0.3)
    figure.savefig(path, format="png")
