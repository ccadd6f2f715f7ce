"""What the orchestrator needs from durable storage, independent of the backend.

A run is one record (`StoredRun`: the Run message and what pins its search) plus its event
history, its checkpoint (the counters and the populations of the last generations) and its
retained candidates. Every change to a run is one atomic `commit` guarded by the run's
version (compare-and-set), so two writers can never interleave half-changes — the etcd
backend of a later issue maps the same protocol onto etcd transactions. Values are opaque
bytes (serialized protobuf or JSON); nothing above this protocol assumes SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class StoreError(OSError):
    """The store cannot be used; the message names the file or endpoint and the problem
    (an OSError, so `helix` stops with that one line)."""


class StoreCorrupt(StoreError):
    """The stored data is damaged; the message names the file and what to do."""


__all__ = [
    "CandidatePage",
    "RequestExists",
    "RunCommit",
    "RunConflict",
    "RunExists",
    "RunStore",
    "StoreCorrupt",
    "StoreError",
    "StoredCandidate",
    "StoredEvent",
    "StoredRun",
    "StoredRunRequest",
]


class RunExists(Exception):
    """CreateRun: a run with this name exists already."""


class RequestExists(Exception):
    """CreateRun: (owner, request_id) is remembered already — a concurrent retry stored
    its run first (nothing stored)."""


class RunConflict(Exception):
    """A commit's expected version is not the stored one: someone else changed the run."""


@dataclass(frozen=True, slots=True)
class StoredRun:
    """One run: `run` is the serialized Run message; `pinned` the serialized normalised
    Dna the run searches (empty until it starts); `spec` JSON of the search settings fixed
    when it was created (window, convergence); `end_time_ns` when it ended (0 while
    unfinished), which retention goes by."""

    name: str
    owner: str
    state: int
    create_time_ns: int
    version: int
    run: bytes
    pinned: bytes = b""
    spec: bytes = b""
    end_time_ns: int = 0


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One RunEvent (serialized) at `sequence` in its run's history."""

    sequence: int
    event: bytes


@dataclass(frozen=True, slots=True)
class StoredCandidate:
    """A retained candidate: `key` orders it (the score, negated when maximising) and ties
    by `candidate_id`; `best` whether it is among the run's best, `failed` among its first
    FAILED ones; `scored` the serialized ScoredCandidate."""

    candidate_id: str
    key: float
    status: int
    best: bool
    failed: bool
    scored: bytes


@dataclass(frozen=True, slots=True)
class StoredRunRequest:
    """An idempotency record: a CreateRun retried with `request_id` gets run `name`."""

    owner: str
    request_id: str
    fingerprint: bytes
    name: str
    created_at: float


@dataclass
class RunCommit:
    """One atomic change to a run (see `RunStore.commit`)."""

    run: StoredRun  # the new record; its version is expected_version + 1
    expected_version: int
    events: Sequence[StoredEvent] = ()
    checkpoint: bytes | None = None  # the state of the last completed generation
    population: tuple[int, bytes] | None = None  # (generation, serialized population)
    keep_generations: int = 0  # keep only the populations of the last N generations
    candidates: Sequence[StoredCandidate] = ()
    keep_best: int = 0  # then unmark `best` beyond the best N (rows neither best nor failed go)
    keep_events: int = 0  # keep only the last N events (0: all)
    # A shared store's guard that this writer still owns the run: (key, value) the commit
    # must find (see helix.orchestrator.ownership); ignored by a store of one process.
    fence: tuple[bytes, bytes] | None = None


@dataclass
class CandidatePage:
    candidates: list[StoredCandidate] = field(default_factory=list)
    more: bool = False


class RunStore(Protocol):
    """Durable storage of runs."""

    async def open(self) -> None:
        """Check integrity and create the schema if new. StoreCorrupt when damaged."""
        ...

    async def create(
        self, run: StoredRun, event: StoredEvent, request: StoredRunRequest | None
    ) -> None:
        """Store a new run with its first event and its idempotency record, atomically.
        RunExists when the name is taken, RequestExists when the idempotency record is
        (nothing stored either way)."""
        ...

    async def find_request(self, owner: str, request_id: str) -> StoredRunRequest | None:
        """The idempotency record of (owner, request_id), if remembered."""
        ...

    async def forget_requests(self, before: float) -> None:
        """Drop idempotency records created before `before` (epoch seconds)."""
        ...

    async def get(self, name: str) -> StoredRun | None: ...

    async def list_runs(
        self,
        *,
        owner: str | None,
        state: int,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[StoredRun]:
        """Runs newest first (create_time_ns descending, then name ascending), after the
        position `after` (create_time_ns, name); only `owner`'s (None: all), only in
        `state` (0: all)."""
        ...

    async def unfinished(self) -> list[StoredRun]:
        """Every PENDING or RUNNING run (to resume on start)."""
        ...

    async def commit(self, change: RunCommit) -> None:
        """Apply one change atomically: replace the run record (RunConflict when its
        stored version is not `expected_version`; nothing changes), append events, store
        the checkpoint and population, add or refresh candidates, and apply the retention
        limits. When this returns the change survives a crash."""
        ...

    async def events(self, name: str, after: int, limit: int) -> list[StoredEvent]:
        """The run's events with sequence > after, in order, at most `limit`."""
        ...

    async def first_sequence(self, name: str) -> int:
        """The oldest retained event's sequence (0 when none)."""
        ...

    async def last_sequence(self, name: str) -> int:
        """The newest event's sequence (0 when none)."""
        ...

    async def checkpoint(self, name: str) -> tuple[bytes, list[tuple[int, bytes]]] | None:
        """The last checkpoint and the stored populations (generation, bytes), oldest
        first; None when the run has none yet."""
        ...

    async def candidates(
        self, name: str, *, status: int, after: tuple[float, str] | None, limit: int
    ) -> CandidatePage:
        """Retained candidates best first (key, then id) after `after`; only `status`
        (0: all)."""
        ...

    async def prune(self, *, owner: str | None, keep: int, ended_before_ns: int) -> list[str]:
        """Delete finished runs (with their events, checkpoint, populations, candidates and
        idempotency records): `owner`'s beyond its newest `keep` finished ones (by
        create_time; with owner None, nobody's by count), and anyone's that ended before
        `ended_before_ns` (0: none by age). Unfinished runs are never deleted. Returns the
        names deleted; at most a bounded number per call (call again while it returns any)."""
        ...

    async def close(self) -> None:
        """Release the store; safe to call twice."""
        ...
