"""The orchestrator's engine: runs in the store, one task per unfinished run, their events.

Every change to a run goes through `_commit` under the run's lock: the record (its
version, so its etag, moves on), the events with the next sequences, and for a completed
generation its checkpoint, population and retained candidates — one store transaction.
Events reach live watchers only after their commit, through bounded per-watcher queues.

A run's task (`_drive`): wait (PENDING, with the reason in the run and its events) until
a generator that serves its DNA and an oracle agent hosting its oracle are live, failing
after `wait_timeout`; pin the DNA (resolved once through GetDna for a named DNA) and the
oracle's config_hash; then RUNNING, one generation at a time (`search.Search`): breed
(`breeding.Breeder`: failover between generators, ranges across several), verify
(`dispatch.Verifier`), commit. On start, every PENDING or RUNNING run in the store is
resumed from its last checkpoint. Live events reach WatchRun through `watchers.Watchers`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
import helix.v1.orchestrator_pb2 as orchestrator_pb2
from helix.agents.support import describe
from helix.common import errors, reasons, rules, tracing
from helix.common.aio import cancel_and_wait
from helix.common.errors import FieldViolation
from helix.genome.documents import check_dna_message
from helix.genome.layout import fingerprint, normalise, population_size
from helix.orchestrator.agents import GENERATOR, ORACLE, AgentPool, cancelled_by_channel
from helix.orchestrator.breeding import Breeder, BreedingPlan
from helix.orchestrator.dispatch import NoAgents, RunFailed, Verifier, VerifySettings
from helix.orchestrator.ownership import RunOwnership
from helix.orchestrator.search import (
    MINIMIZE,
    Counters,
    Generation,
    Outcome,
    Search,
    SearchSpec,
    Verdicts,
)
from helix.orchestrator.store import (
    RequestExists,
    RunCommit,
    RunConflict,
    RunExists,
    RunStore,
    StoredCandidate,
    StoredEvent,
    StoredRun,
    StoredRunRequest,
)
from helix.orchestrator.watchers import Watcher, Watchers
from helix.security.principal import Principal

log = logging.getLogger("helix.orchestrator")

PENDING = orchestrator_pb2.RUN_STATE_PENDING
RUNNING = orchestrator_pb2.RUN_STATE_RUNNING
SUCCEEDED = orchestrator_pb2.RUN_STATE_SUCCEEDED
FAILED = orchestrator_pb2.RUN_STATE_FAILED
CANCELLED = orchestrator_pb2.RUN_STATE_CANCELLED
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
VERDICT_FAILED = candidate_pb2.VERDICT_STATUS_FAILED
VERDICT_PASSED = candidate_pb2.VERDICT_STATUS_PASSED
MAX_ERROR = 1024
REQUEST_TTL = 600.0
PIN_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What a deployment tunes (flags of `helix up`, OrchestratorConfig)."""

    wait_timeout: float = 600.0  # a run without agents fails after this
    window: int = 4  # duplicate window, in generations (fixed per run when it starts)
    window_entries: int = 200_000  # and at most about this many remembered verdicts
    converge_after: int = 100
    keep_best: int = 1000
    keep_failed: int = 10_000
    keep_events: int = 10_000
    watcher_queue: int = 256
    max_watchers: int = 1000
    max_watchers_per_principal: int = 64
    max_population: int = 100_000
    max_runs: int = 256  # unfinished runs this orchestrator drives at once
    max_runs_per_principal: int = 16  # unfinished runs one caller may have
    keep_finished_runs: int = 500  # finished runs kept per owner (the newest)
    keep_finished_for: float = 30 * 86400.0  # finished runs are deleted this long after (0: never)
    prune_interval: float = 3600.0
    generate_timeout: float = 300.0
    verify: VerifySettings = field(default_factory=VerifySettings)


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def etag_of(version: int) -> str:
    return f"v{version}"


def _no_infinite_scores(verdicts: Verdicts) -> None:
    """The contract says a scored verdict's score is finite; one an agent sent otherwise
    is recorded as ERROR, so it cannot break ranking."""
    bad = ~np.isfinite(np.asarray(verdicts.scores, dtype=np.float64))
    for i in np.flatnonzero(bad).tolist():
        if verdicts.statuses[i] in (VERDICT_PASSED, VERDICT_FAILED):
            verdicts.replace(
                i,
                candidate_pb2.Verdict(
                    candidate_id=verdicts.ids[i],
                    status=candidate_pb2.VERDICT_STATUS_ERROR,
                    message=f"the oracle agent sent a non-finite score ({verdicts.scores[i]})",
                ),
            )


def _stop_state(event: orchestrator_pb2.RunEvent) -> bool:
    return event.WhichOneof("kind") == "state_changed" and event.state_changed.state in TERMINAL


@dataclass(frozen=True, slots=True)
class _Done:
    """A completed generation, as it is to be committed (taken before the next one)."""

    counters: Counters
    best: candidate_pb2.ScoredCandidate | None
    events: list[orchestrator_pb2.RunEvent]
    stop_reason: int
    checkpoint: bytes
    population: tuple[int, bytes]
    keep_generations: int
    candidates: list[StoredCandidate]


@dataclass(eq=False)
class _Active:
    """An unfinished run held by this orchestrator."""

    record: StoredRun
    run: orchestrator_pb2.Run
    last_sequence: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    best: list[tuple[float, str]] = field(default_factory=list)  # retained best (key, id)
    best_ids: set[str] = field(default_factory=set)


class Superseded(errors.Aborted):
    """A commit found the run changed by another writer (a CancelRun at another
    orchestrator, or a successor that took the run over): the run is no longer this
    orchestrator's to drive."""


# How often WatchRun reads the store for a run another orchestrator drives.
TAIL_INTERVAL = 0.2


class Orchestrator:
    """Runs: creation, reads, cancellation, watching, and driving them (module docstring)."""

    def __init__(
        self,
        store: RunStore,
        pool: AgentPool,
        settings: RunSettings | None = None,
        ownership: RunOwnership | None = None,
    ) -> None:
        self.store = store
        # With several orchestrators on one etcd run store: which runs this one drives.
        self.ownership = ownership
        self._adopter: asyncio.Task[None] | None = None
        self._taking_over: dict[str, asyncio.Task[None]] = {}
        self._releasing: set[asyncio.Future[None]] = set()
        # Runs being started here (resumed, taken over, created) but not yet driven.
        self._claimed: set[str] = set()
        self.pool = pool
        self.settings = settings or RunSettings()
        self.watchers = Watchers(
            queue=self.settings.watcher_queue,
            max_watchers=self.settings.max_watchers,
            max_per_principal=self.settings.max_watchers_per_principal,
        )
        self.breeder = Breeder(
            pool,
            wait_timeout=self.settings.wait_timeout,
            generate_timeout=self.settings.generate_timeout,
        )
        self._active: dict[str, _Active] = {}
        self._creating: dict[str, int] = {}  # principal -> CreateRun calls storing a run
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False
        self.generations = 0  # completed generations, all runs (metrics)
        self.evaluations = 0
        self.backlog = 0  # candidates handed to verification without a verdict yet
        self.ended: dict[int, int] = {}  # runs ended since start, by final state

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and the agent pool; resume every unfinished run (with several
        orchestrators, every one nobody else drives)."""
        await self.store.open()
        await self.pool.start()
        self._started = True
        if self.ownership is not None:
            await self.ownership.start(self._orphaned)
        for record in await self.store.unfinished():
            await self._resume(record)
        self._sweeper = asyncio.create_task(self._sweep(), name="finished runs retention")
        if self.ownership is not None:
            self._adopter = asyncio.create_task(self._adopt(), name="run takeover")

    async def _resume(self, record: StoredRun) -> None:
        """Drive an unfinished stored run from its last checkpoint (if this orchestrator
        may: with several, once it owns the run)."""
        name = record.name
        if name in self._active or name in self._claimed:
            return
        self._claimed.add(name)  # no other path starts this run meanwhile
        try:
            if self.ownership is not None:
                if not await self.ownership.acquire(name):
                    return
                latest = await self.store.get(name)  # as its last owner left it
                if latest is None or latest.state in TERMINAL:
                    await self.ownership.release(name)
                    return
                record = latest
            run = orchestrator_pb2.Run.FromString(record.run)
            last = await self._last_sequence(name)
            active = _Active(record, run, last)
            self._active[name] = active
            active.task = asyncio.create_task(self._drive(active), name=f"run {name}")
        finally:
            self._claimed.discard(name)
        log.info("resuming %s (%s)", name, orchestrator_pb2.RunState.Name(run.state))

    def _orphaned(self, name: str) -> None:
        """Another orchestrator let run `name` go (it ended, stopped, or died): take it
        over if it is unfinished."""
        if name in self._active or name in self._taking_over:
            return
        task = asyncio.create_task(self._take_over(name), name=f"take over {name}")
        self._taking_over[name] = task
        task.add_done_callback(lambda _: self._taking_over.pop(name, None))

    async def _take_over(self, name: str) -> None:
        try:
            record = await self.store.get(name)
            if record is not None and record.state not in TERMINAL:
                await self._resume(record)
        except (errors.HelixError, OSError) as exc:
            log.warning("taking %s over failed (the next scan tries again): %s", name, exc)

    async def _adopt(self) -> None:
        """Now and then: take over unfinished runs nobody owns (a deletion the watch
        missed, a run whose creator died before owning it); after this process's session
        was lost (it may have been partitioned from etcd), stop driving its runs — others
        own them now — and open a new session."""
        ownership = self.ownership
        assert ownership is not None
        while True:
            await asyncio.sleep(max(ownership.ttl, 1.0))
            try:
                if not ownership.active:
                    await self._new_session()
                owners = await ownership.owners()
                unfinished = await self.store.unfinished()
            except (errors.HelixError, OSError) as exc:
                log.warning("scanning for runs to take over failed: %s", exc)
                continue
            for record in unfinished:
                owner = owners.get(record.name)
                # Nobody's, or this session's but not driven (paused by an outage).
                if owner is None or (
                    owner == ownership.identity and record.name not in self._active
                ):
                    try:
                        await self._resume(record)
                    except (errors.HelixError, OSError) as exc:
                        log.warning("taking %s over failed: %s", record.name, exc)

    async def _new_session(self) -> None:
        """This process's session was lost (or never opened): its runs are others' now;
        stop driving them and open a new session (retried by the next scan if etcd is
        still away)."""
        ownership = self.ownership
        assert ownership is not None
        if self._active:
            log.warning("this orchestrator's etcd session was lost; its runs go")
        for name in list(self._active):
            self.watchers.close_run(name, "this orchestrator no longer drives the run")
        await cancel_and_wait([a.task for a in self._active.values()])
        self._active.clear()
        await ownership.stop(revoke=False)
        await ownership.start(self._orphaned)

    async def _last_sequence(self, name: str) -> int:
        return await self.store.last_sequence(name)

    async def stop(self) -> None:
        """Stop driving runs (they stay PENDING/RUNNING in the store, resumed next start)."""
        tasks = [a.task for a in self._active.values()]
        tasks += [self._sweeper, self._adopter, *self._taking_over.values()]
        self._sweeper = self._adopter = None
        await cancel_and_wait(tasks)
        if self.ownership is not None and self._started:
            await self.ownership.stop()  # the others take the runs over at once
        self.watchers.close("the orchestrator is stopping; watch again from the last sequence")
        self._active.clear()
        if self._started:
            await self.pool.close()
            await self.store.close()
            self._started = False

    async def _sweep(self) -> None:
        """Delete finished runs older than `keep_finished_for`, now and then."""
        while True:
            try:
                await self.prune(None)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("deleting old finished runs failed; trying again later")
            await asyncio.sleep(self.settings.prune_interval)

    async def prune(self, owner: str | None) -> int:
        """Apply retention: `owner`'s finished runs beyond the newest `keep_finished_runs`
        (None: nobody's by count) and everybody's that ended `keep_finished_for` ago.
        Returns how many runs were deleted."""
        ttl = self.settings.keep_finished_for
        before = time.time_ns() - int(ttl * 1e9) if ttl > 0 else 0
        deleted = 0
        while True:
            names = await self.store.prune(
                owner=owner, keep=self.settings.keep_finished_runs, ended_before_ns=before
            )
            deleted += len(names)
            if not names:
                return deleted

    def _unfinished_of(self, principal: str) -> int:
        return self._creating.get(principal, 0) + sum(
            1 for a in self._active.values() if a.record.owner == principal
        )

    def _reserve(self, principal: str) -> None:
        """Count a CreateRun about to store a run against the caller's and the
        orchestrator's limits of unfinished runs (RESOURCE_EXHAUSTED beyond)."""
        limit = self.settings.max_runs_per_principal
        if self._unfinished_of(principal) >= limit:
            raise errors.ResourceExhausted(
                f"{principal} has {limit} unfinished runs, its limit: wait for one to end or "
                "cancel one",
                retry_after=10.0,
                quota_subject=f"principal:{principal}/runs",
                reason=reasons.TOO_MANY_RUNS_FOR_PRINCIPAL,
                metadata={"limit": str(limit)},
            )
        total = len(self._active) + sum(self._creating.values())
        if total >= self.settings.max_runs:
            raise errors.ResourceExhausted(
                f"the orchestrator drives {total} unfinished runs, its limit",
                retry_after=10.0,
                quota_subject="orchestrator/runs",
                reason=reasons.TOO_MANY_RUNS,
                metadata={"limit": str(self.settings.max_runs)},
            )
        self._creating[principal] = self._creating.get(principal, 0) + 1

    def _release(self, principal: str) -> None:
        left = self._creating[principal] - 1
        if left:
            self._creating[principal] = left
        else:
            del self._creating[principal]

    def unfinished_by_state(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for active in self._active.values():
            counts[active.run.state] = counts.get(active.run.state, 0) + 1
        return counts

    # --- the RPCs -------------------------------------------------------------------------

    async def create(
        self, principal: Principal, request: orchestrator_pb2.CreateRunRequest
    ) -> orchestrator_pb2.Run:
        digest = hashlib.sha256(request.run.SerializeToString(deterministic=True))
        digest.update(request.run_id.encode())
        fingerprint_ = digest.digest()
        earlier = await self._remembered(principal, request.request_id, fingerprint_)
        if earlier is not None:
            return earlier
        run, record = self._new_run(principal, request)
        event = orchestrator_pb2.RunEvent(
            sequence=1,
            time=_now(),
            state_changed=orchestrator_pb2.RunStateChanged(state=PENDING),
        )
        stored = StoredRunRequest(
            principal.subject, request.request_id, fingerprint_, run.name, time.time()
        )

        created = self._copy(run)  # the answer: the run as created (its task moves it on)

        async def store_and_start() -> None:
            """Store the run and start driving it, as one: shielded below, so a caller
            cancelled meanwhile (its deadline) never leaves a stored run undriven."""
            self._claimed.add(run.name)  # the takeover scan leaves it to this call
            try:
                await self.store.create(record, StoredEvent(1, event.SerializeToString()), stored)
                if self.ownership is not None and not await self.ownership.acquire(run.name):
                    return  # another orchestrator adopted it in between: it drives it
                active = _Active(record, run, 1)
                self._active[run.name] = active
                active.task = asyncio.create_task(self._drive(active), name=f"run {run.name}")
            finally:
                self._claimed.discard(run.name)

        self._reserve(principal.subject)
        try:
            await self.store.forget_requests(time.time() - REQUEST_TTL)
            starting = asyncio.ensure_future(store_and_start())
            try:
                await asyncio.shield(starting)
            except asyncio.CancelledError:
                await asyncio.wait([starting])
                raise
        except RequestExists:
            # A retry of this request stored its run meanwhile: answer with that one.
            earlier = await self._remembered(principal, request.request_id, fingerprint_)
            if earlier is None:
                raise errors.Aborted(
                    "a concurrent CreateRun with this request_id failed; retry"
                ) from None
            return earlier
        except RunExists:
            raise errors.AlreadyExists(f"{run.name} exists already") from None
        finally:
            self._release(principal.subject)
        # Room among the owner's finished runs kept for this one, once it ends.
        await self.store.prune(
            owner=principal.subject,
            keep=max(self.settings.keep_finished_runs - 1, 0),
            ended_before_ns=0,
        )
        return created

    def _new_run(
        self, principal: Principal, request: orchestrator_pb2.CreateRunRequest
    ) -> tuple[orchestrator_pb2.Run, StoredRun]:
        """The run CreateRun asks for, checked (INVALID_ARGUMENT naming the field), and
        its record: PENDING, version 1."""
        given = request.run
        self._check_known(given)
        dna_name = given.dna_name if given.WhichOneof("dna_source") == "dna_name" else ""
        if not dna_name:
            check = check_dna_message(given.dna)
            if not check.valid or check.normalised is None:
                raise errors.InvalidArgument.from_violations(
                    [
                        FieldViolation(
                            f"run.dna.{v.field}" if v.field else "run.dna", v.description, v.reason
                        )
                        for v in check.violations
                    ]
                )
            self._check_population(check.normalised, "run.dna.strategy")
        run_id = request.run_id or f"run-{secrets.token_hex(6)}"
        run = orchestrator_pb2.Run(
            name=f"runs/{run_id}",
            display_name=given.display_name,
            oracle=given.oracle,
            objective=given.objective,
            budget=given.budget,
            seed=given.seed if given.HasField("seed") else secrets.randbits(64),
            state=PENDING,
            owner=principal.subject,
            create_time=_now(),
        )
        if given.HasField("target_score"):
            run.target_score = given.target_score
        if dna_name:
            run.dna_name = dna_name
        else:
            run.dna.CopyFrom(given.dna)
        run.progress.SetInParent()
        spec = json.dumps(
            {"window": self.settings.window, "converge_after": self.settings.converge_after}
        ).encode()
        run.etag = etag_of(1)
        record = StoredRun(
            run.name,
            run.owner,
            PENDING,
            run.create_time.ToNanoseconds(),
            1,
            run.SerializeToString(),
            b"",
            spec,
        )
        return run, record

    async def _remembered(
        self, principal: Principal, request_id: str, fingerprint_: bytes
    ) -> orchestrator_pb2.Run | None:
        """The run an earlier CreateRun with this request_id created (None: none within
        REQUEST_TTL); INVALID_ARGUMENT when that request was a different one."""
        remembered = await self.store.find_request(principal.subject, request_id)
        if remembered is None or remembered.created_at <= time.time() - REQUEST_TTL:
            return None
        if remembered.fingerprint != fingerprint_:
            raise errors.InvalidArgument(
                "request_id was used for another CreateRun request",
                [
                    FieldViolation(
                        "request_id", "was already used with a different request", rules.REUSED
                    )
                ],
                reason=reasons.REQUEST_ID_REUSED,
            )
        found = await self.store.get(remembered.name)
        return self._public(found) if found is not None else None

    def _check_known(self, run: orchestrator_pb2.Run) -> None:
        """An oracle or named DNA that no registered agent of its kind serves, whatever
        its health, while live agents of that kind exist, is unknown (INVALID_ARGUMENT).
        With no live agent of the kind nobody can tell: the run is created and waits
        (PENDING) for one; one hosted only by agents that do not take work now waits too."""
        registered = self.pool.informer.agents()
        found: list[FieldViolation] = []
        if self.pool.any_of_kind(ORACLE) and not any(
            agent.kind == ORACLE and run.oracle in agent.oracle.oracles for agent in registered
        ):
            found.append(
                FieldViolation(
                    "run.oracle", f"no live oracle agent hosts {run.oracle}", rules.UNKNOWN
                )
            )
        named = run.WhichOneof("dna_source") == "dna_name"
        if (
            named
            and self.pool.any_of_kind(GENERATOR)
            and not any(
                agent.kind == GENERATOR and run.dna_name in agent.generator.dnas
                for agent in registered
            )
        ):
            found.append(
                FieldViolation(
                    "run.dna_name",
                    f"no live generator serves {run.dna_name}",
                    rules.UNKNOWN,
                )
            )
        if found:
            raise errors.InvalidArgument.from_violations(found)

    def _check_population(self, dna: dna_pb2.Dna, path: str) -> None:
        size = population_size(dna)
        if size > self.settings.max_population:
            raise errors.InvalidArgument.from_violations(
                [
                    FieldViolation(
                        path,
                        f"population_size {size} is above this orchestrator's limit of "
                        f"{self.settings.max_population}",
                        rules.RANGE,
                    )
                ]
            )

    async def get(self, principal: Principal, name: str) -> orchestrator_pb2.Run:
        record = await self._visible(principal, name)
        return self._public(record)

    async def _visible(self, principal: Principal, name: str) -> StoredRun:
        """The run if the caller may see it: PERMISSION_DENIED otherwise, whether or not
        it exists; NOT_FOUND only to its possible owners."""
        active = self._active.get(name)
        record = active.record if active is not None else await self.store.get(name)
        if record is None:
            if principal.is_admin:
                raise errors.NotFound(f"{name} does not exist")
            raise errors.PermissionDenied(
                f"{name} is not visible to {principal.subject}", reason=reasons.NOT_OWNER
            )
        if record.owner != principal.subject and not principal.is_admin:
            raise errors.PermissionDenied(
                f"{name} is not visible to {principal.subject}", reason=reasons.NOT_OWNER
            )
        return record

    def _public(self, record: StoredRun) -> orchestrator_pb2.Run:
        active = self._active.get(record.name)
        if active is not None:
            return self._copy(active.run)
        return orchestrator_pb2.Run.FromString(record.run)

    @staticmethod
    def _copy(run: orchestrator_pb2.Run) -> orchestrator_pb2.Run:
        out = orchestrator_pb2.Run()
        out.CopyFrom(run)
        return out

    async def list_runs(
        self,
        principal: Principal,
        state: int,
        after: tuple[int, str] | None,
        limit: int,
    ) -> tuple[list[orchestrator_pb2.Run], tuple[int, str] | None]:
        owner = None if principal.is_admin else principal.subject
        records = await self.store.list_runs(owner=owner, state=state, after=after, limit=limit + 1)
        more = len(records) > limit
        records = records[:limit]
        runs = [self._public(record) for record in records]
        last = (records[-1].create_time_ns, records[-1].name) if more and records else None
        return runs, last

    async def cancel(self, principal: Principal, name: str, etag: str) -> orchestrator_pb2.Run:
        record = await self._visible(principal, name)
        active = self._active.get(name)
        if active is None:
            if self.ownership is not None and record.state not in TERMINAL:
                return await self._cancel_elsewhere(record, etag)
            run = orchestrator_pb2.Run.FromString(record.run)
            return self._cancel_finished(run, etag)
        async with active.lock:
            run = active.run
            if run.state in TERMINAL:
                return self._cancel_finished(run, etag)
            if etag and etag != run.etag:
                raise errors.Aborted(
                    f"{name} changed: its etag is {run.etag}, not {etag}",
                    reason=reasons.STALE_ETAG,
                )
            task = active.task
            if task is not None and task is not asyncio.current_task():
                task.cancel()
            run.state = CANCELLED
            run.end_time.CopyFrom(_now())
            run.state_message = ""
            try:
                await self._commit_locked(
                    active,
                    [
                        orchestrator_pb2.RunEvent(
                            state_changed=orchestrator_pb2.RunStateChanged(state=CANCELLED)
                        )
                    ],
                )
            finally:
                # Its task is cancelled: whether the write went through (even if this
                # call was cancelled meanwhile) or failed (the run stays as stored, and is
                # resumed at the next start), nothing drives it here any more.
                if active.record.state in TERMINAL:
                    self._let_go(name)
                else:
                    self._active.pop(name, None)
        return self._copy(run)

    async def _cancel_elsewhere(self, record: StoredRun, etag: str) -> orchestrator_pb2.Run:
        """CancelRun of a run another orchestrator drives: CANCELLED written to the store
        (compare-and-set on its version); the driver's next commit finds the run changed
        and lets it go. Retried on the driver's own commits meanwhile."""
        for _ in range(20):
            run = orchestrator_pb2.Run.FromString(record.run)
            if run.state in TERMINAL:
                return self._cancel_finished(run, etag)
            if etag and etag != run.etag:
                raise errors.Aborted(
                    f"{run.name} changed: its etag is {run.etag}, not {etag}",
                    reason=reasons.STALE_ETAG,
                )
            run.state = CANCELLED
            run.end_time.CopyFrom(_now())
            run.state_message = ""
            version = record.version + 1
            run.etag = etag_of(version)
            event = orchestrator_pb2.RunEvent(
                sequence=await self.store.last_sequence(run.name) + 1,
                time=_now(),
                state_changed=orchestrator_pb2.RunStateChanged(state=CANCELLED),
            )
            change = RunCommit(
                dataclasses.replace(
                    record,
                    state=CANCELLED,
                    version=version,
                    run=run.SerializeToString(),
                    end_time_ns=run.end_time.ToNanoseconds(),
                ),
                record.version,
                [StoredEvent(event.sequence, event.SerializeToString())],
                keep_events=self.settings.keep_events,
            )
            try:
                await self.store.commit(change)
            except RunConflict:
                latest = await self.store.get(run.name)
                if latest is None:
                    raise errors.NotFound(f"{run.name} was deleted") from None
                record = latest
                continue
            self.ended[CANCELLED] = self.ended.get(CANCELLED, 0) + 1
            return run
        raise errors.Aborted(f"{record.name} keeps changing; retry")

    @staticmethod
    def _cancel_finished(run: orchestrator_pb2.Run, etag: str) -> orchestrator_pb2.Run:
        if run.state == CANCELLED:
            return run
        state = orchestrator_pb2.RunState.Name(run.state)
        raise errors.FailedPrecondition(f"{run.name} already ended: {state}")

    async def watch(
        self, principal: Principal, name: str, after: int
    ) -> AsyncIterator[orchestrator_pb2.RunEvent]:
        """Events with sequence > after: the recorded ones, then live ones, until the
        terminal state's event. The watcher subscribes before reading the history, so an
        event committed meanwhile is in one or the other (duplicates skipped by sequence)."""
        await self._visible(principal, name)
        watcher = self.watchers.subscribe(name, principal.subject)
        try:
            await self._check_watch_from(name, after)
            last = after
            async for event in self._history(name, after, None):
                yield event
                last = event.sequence
                if _stop_state(event):
                    return
            if name not in self._active:
                if self.ownership is not None:
                    async for event in self._tail(name, last):
                        yield event
                    return
                async for event in self._ended(name, watcher, last):
                    yield event
                return
            async for event in self._live(name, watcher, last):
                yield event
        finally:
            self.watchers.unsubscribe(watcher)

    async def _check_watch_from(self, name: str, after: int) -> None:
        """OUT_OF_RANGE when the events after `after` are no longer retained, or when
        `after` is beyond the run's last event (nothing would ever come)."""
        first = await self.store.first_sequence(name)
        if first and after < first - 1:
            raise errors.OutOfRange(
                f"events after {after} of {name} are no longer retained; the oldest is {first}",
                metadata={"first_sequence": str(first)},
            )
        active = self._active.get(name)
        newest = active.last_sequence if active else await self._last_sequence(name)
        if after > newest:
            raise errors.OutOfRange(
                f"after_sequence {after} is beyond the last event of {name}, {newest}",
                metadata={"last_sequence": str(newest)},
            )

    async def _ended(
        self, name: str, watcher: Watcher, last: int
    ) -> AsyncIterator[orchestrator_pb2.RunEvent]:
        """The rest of a run that is no longer driven: its last events are in the history
        read or, if it ended since, in the watcher's queue (it subscribed first); then
        nothing more comes."""
        stored = await self.store.get(name)
        if stored is None:
            raise errors.NotFound(f"{name} was deleted (finished runs are kept for a while)")
        if stored.state not in TERMINAL and not any(
            _stop_state(e) for e in watcher.events if e.sequence > last
        ):
            # Not ended, yet not driven here: this orchestrator is stopping (or failed
            # to record it); the run resumes at the next start.
            raise errors.Unavailable(
                f"{name} is not being driven right now; watch again from sequence {last}",
                retry_after=1.0,
            )
        for event in watcher.take_now():
            if event.sequence > last:
                yield event

    async def _live(
        self, name: str, watcher: Watcher, last: int
    ) -> AsyncIterator[orchestrator_pb2.RunEvent]:
        """Live events after `last`, until the terminal state's."""
        while True:
            for event in await watcher.take():
                if event.sequence <= last:
                    continue
                async for missed in self._history(name, last, event.sequence - 1):
                    yield missed  # (not expected: live events come in order)
                yield event
                last = event.sequence
                if _stop_state(event):
                    return

    async def _tail(self, name: str, last: int) -> AsyncIterator[orchestrator_pb2.RunEvent]:
        """The events of a run another orchestrator drives, from the store as they are
        committed, until the terminal state's (polled every TAIL_INTERVAL)."""
        while True:
            got = False
            first = await self.store.first_sequence(name)
            if first > last + 1:
                raise errors.OutOfRange(
                    f"events after {last} of {name} are no longer retained; the oldest is {first}",
                    metadata={"first_sequence": str(first)},
                )
            async for event in self._history(name, last, None):
                got = True
                yield event
                last = event.sequence
                if _stop_state(event):
                    return
            if not got:
                record = await self.store.get(name)
                if record is None:
                    raise errors.NotFound(f"{name} was deleted (finished runs are kept a while)")
                if record.state in TERMINAL and await self.store.last_sequence(name) <= last:
                    return
                await asyncio.sleep(TAIL_INTERVAL)

    async def _history(
        self, name: str, after: int, upto: int | None
    ) -> AsyncIterator[orchestrator_pb2.RunEvent]:
        """Stored events with after < sequence (<= upto when given), in order."""
        while upto is None or after < upto:
            limit = 500 if upto is None else min(500, upto - after)
            page = await self.store.events(name, after, limit)
            for stored in page:
                yield orchestrator_pb2.RunEvent.FromString(stored.event)
                after = stored.sequence
            if len(page) < limit:
                return

    async def candidates(
        self,
        principal: Principal,
        name: str,
        status: int,
        after: tuple[float, str] | None,
        limit: int,
    ) -> tuple[list[candidate_pb2.ScoredCandidate], tuple[float, str] | None]:
        await self._visible(principal, name)
        page = await self.store.candidates(name, status=status, after=after, limit=limit)
        out = [candidate_pb2.ScoredCandidate.FromString(c.scored) for c in page.candidates]
        last = page.candidates[-1] if page.more and page.candidates else None
        return out, (last.key, last.candidate_id) if last is not None else None

    # --- committing -----------------------------------------------------------------------

    async def _commit_locked(  # noqa: PLR0913 - the parts of one commit, keyword-only
        self,
        active: _Active,
        events: list[orchestrator_pb2.RunEvent],
        *,
        checkpoint: bytes | None = None,
        population: tuple[int, bytes] | None = None,
        candidates: Sequence[StoredCandidate] = (),
        keep_generations: int = 0,
        pinned: bytes | None = None,
    ) -> None:
        run = active.run
        version = active.record.version + 1
        now = _now()
        for event in events:
            active.last_sequence += 1
            event.sequence = active.last_sequence
            event.time.CopyFrom(now)
        run.etag = etag_of(version)
        record = StoredRun(
            run.name,
            run.owner,
            run.state,
            active.record.create_time_ns,
            version,
            run.SerializeToString(),
            active.record.pinned if pinned is None else pinned,
            active.record.spec,
            run.end_time.ToNanoseconds() if run.HasField("end_time") else 0,
        )
        change = RunCommit(
            record,
            active.record.version,
            [StoredEvent(e.sequence, e.SerializeToString()) for e in events],
            checkpoint=checkpoint,
            population=population,
            keep_generations=keep_generations,
            candidates=candidates,
            keep_best=self.settings.keep_best,
            keep_events=self.settings.keep_events,
            fence=self.ownership.fence(run.name) if self.ownership is not None else None,
        )

        async def apply() -> None:
            """The write and what follows it in memory, as one: shielded below, so a
            caller cancelled meanwhile (a client's deadline, a stop) never leaves memory
            and store apart — the store's thread finishes the write regardless."""
            try:
                await self.store.commit(change)
            except BaseException:
                # Memory back to the last committed state: the run as stored, the
                # sequences not taken (the callers changed the run before committing).
                active.last_sequence -= len(events)
                run.ParseFromString(active.record.run)
                raise
            if run.state in TERMINAL:
                self.ended[run.state] = self.ended.get(run.state, 0) + 1
            active.record = record
            self.watchers.publish(run.name, events)

        writing = asyncio.ensure_future(apply())
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            # Cancelled meanwhile: let the write (and memory) finish before the caller
            # lets go of the run's lock, then go on being cancelled.
            await asyncio.wait([writing])
            raise
        except RunConflict:
            raise Superseded(f"{run.name} was changed by another writer") from None

    # --- driving a run ----------------------------------------------------------------------

    async def _drive(self, active: _Active) -> None:
        run = active.run
        verifier: Verifier | None = None
        try:
            pinned, config_hash = await self._start(active)
            spec_data = json.loads(active.record.spec or b"{}")
            population = population_size(pinned)
            window = max(
                1,
                min(
                    int(spec_data.get("window", self.settings.window)),
                    self.settings.window_entries // max(population, 1),
                ),
            )
            budget = run.budget
            spec = SearchSpec(
                seed=run.seed,
                objective=run.objective,
                population=population,
                max_evaluations=budget.max_evaluations,
                max_generations=budget.max_generations,
                max_duration=budget.max_duration.ToNanoseconds() / 1e9,
                target=run.target_score if run.HasField("target_score") else None,
                window=window,
                converge_after=int(spec_data.get("converge_after", self.settings.converge_after)),
            )
            search = await self._search(active, spec, pinned)
            verifier = Verifier(
                self.pool, run.oracle, config_hash, pinned, self.settings.verify, run=run.name
            )
            await self._generations(active, search, verifier)
        except asyncio.CancelledError:
            raise
        except Superseded:
            # Cancelled at another orchestrator, or taken over: no longer this one's.
            log.info("%s changed elsewhere; no longer driven here", run.name)
            self._let_go(run.name)
        except errors.Unavailable as failure:
            if self.ownership is None:
                await self._fail(active, failure.message)
            else:
                # etcd unreachable (or an agent): not the run's fault. It stays as stored
                # and owned; the takeover scan resumes it from its checkpoint.
                log.warning("%s paused: %s", run.name, failure.message)
                self._active.pop(run.name, None)
                self.watchers.close_run(run.name, "the run is paused; watch again")
        except (RunFailed, NoAgents) as failure:
            await self._fail(active, str(failure))
        except errors.HelixError as failure:
            await self._fail(active, failure.message)
        except Exception as failure:
            log.exception("run %s failed", run.name)
            await self._fail(active, f"internal error: {type(failure).__name__}: {failure}")
        finally:
            if verifier is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(verifier.close())
            if active.record.state in TERMINAL:  # committed so (not a cancel in flight)
                self._let_go(run.name)

    def _let_go(self, name: str) -> None:
        """Stop holding run `name`: out of the runs driven here, its ownership released,
        its live watchers told (they watch again, at whichever replica drives it now)."""
        self._active.pop(name, None)
        self.watchers.close_run(name, "this orchestrator no longer drives the run")
        if self.ownership is not None:
            task = asyncio.ensure_future(self.ownership.release(name))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _fail(self, active: _Active, why: str) -> None:
        run = active.run
        try:
            async with active.lock:
                if run.state in TERMINAL:
                    return
                run.state = FAILED
                run.error = why[:MAX_ERROR]
                run.state_message = ""
                run.end_time.CopyFrom(_now())
                await self._commit_locked(
                    active,
                    [
                        orchestrator_pb2.RunEvent(
                            state_changed=orchestrator_pb2.RunStateChanged(
                                state=FAILED, error=run.error
                            )
                        )
                    ],
                )
        except Superseded:
            log.info("%s changed elsewhere before its failure was recorded: %s", run.name, why)
        except Exception:
            # The store refuses even this: the run is left as stored (resumed at the next
            # start) and no longer held here, so it does not keep its place in the limits.
            log.exception("recording that %s failed (%s) failed", run.name, why)
        finally:
            self._let_go(run.name)

    async def _wait_for_agents(self, active: _Active) -> None:
        """Until a generator for the DNA and an oracle agent for the oracle are live;
        PENDING with the reason meanwhile; NoAgents after wait_timeout."""
        run = active.run
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait_timeout
        told = ""
        while True:
            seen = self.pool.version
            missing = []
            if not self.pool.generators(run.dna_name if run.dna_name else ""):
                what = run.dna_name if run.dna_name else "the run's DNA"
                missing.append(f"no live generator serves {what}")
            if not self.pool.oracles(run.oracle):
                missing.append(self._no_oracle(run.oracle))
            if not missing:
                return
            why = "; ".join(missing)
            if why != told and run.state == PENDING:
                async with active.lock:
                    run.state_message = why
                    await self._commit_locked(
                        active,
                        [
                            orchestrator_pb2.RunEvent(
                                state_changed=orchestrator_pb2.RunStateChanged(
                                    state=PENDING, message=why
                                )
                            )
                        ],
                    )
                told = why
            left = deadline - loop.time()
            if left <= 0:
                raise NoAgents(f"waited {self.settings.wait_timeout:g}s: {why}")
            await self.pool.wait_changed(min(left, 1.0), seen)

    def _no_oracle(self, oracle: str) -> str:
        """Why no oracle agent can verify for `oracle`, naming registered agents that host
        it but do not take work (NOT_SERVING, or health unknown)."""
        idle = sorted(
            agent.name
            for agent in self.pool.informer.agents()
            if agent.kind == ORACLE and oracle in agent.oracle.oracles
        )
        if not idle:
            return f"no live oracle agent hosts {oracle}"
        named = ", ".join(idle[:3]) + (f" and {len(idle) - 3} more" if len(idle) > 3 else "")
        return f"no oracle agent hosting {oracle} takes work ({named}: not serving)"

    async def _start(self, active: _Active) -> tuple[dna_pb2.Dna, str]:
        """The pinned DNA and oracle config_hash (resolved now, or kept from before a
        restart); the run RUNNING."""
        run = active.run
        await self.pool.informer.wait_synced()
        if active.record.pinned and run.oracle_config_hash:
            pinned = dna_pb2.Dna.FromString(active.record.pinned)
            if run.state == PENDING:
                await self._running(active, None)
            return pinned, run.oracle_config_hash
        await self._wait_for_agents(active)
        if run.dna_name:
            pinned, fingerprint_ = await self.breeder.resolve_dna(run.dna_name)
        else:
            pinned = normalise(run.dna)
            fingerprint_ = fingerprint(pinned)
        self._check_population(pinned, "run.dna_name" if run.dna_name else "run.dna")
        config_hash = await self._pin_oracle(run.oracle)
        async with active.lock:
            run.dna_fingerprint = fingerprint_
            run.oracle_config_hash = config_hash
        await self._running(active, pinned.SerializeToString(deterministic=True))
        return pinned, config_hash

    async def _running(self, active: _Active, pinned: bytes | None) -> None:
        async with active.lock:
            run = active.run
            run.state = RUNNING
            run.state_message = ""
            if not run.HasField("start_time"):
                run.start_time.CopyFrom(_now())
            await self._commit_locked(
                active,
                [
                    orchestrator_pb2.RunEvent(
                        state_changed=orchestrator_pb2.RunStateChanged(state=RUNNING)
                    )
                ],
                pinned=pinned,
            )

    async def _pin_oracle(self, oracle: str) -> str:
        """The config_hash the run pins: the one most live agents hosting the oracle have
        (ties: the smallest hash), so the run uses as many agents as it can."""
        last = ""
        for _ in range(PIN_ATTEMPTS):
            hashes: dict[str, int] = {}
            seen = self.pool.version
            for agent in self.pool.oracles(oracle):
                stub = oracle_pb2_grpc.OracleServiceStub(self.pool.channel(agent))
                try:
                    info = await stub.GetOracle(
                        oracle_pb2.GetOracleRequest(name=oracle), timeout=10
                    )
                except asyncio.CancelledError:
                    if not cancelled_by_channel():
                        raise
                    last = f"{agent.name} left"
                    continue
                except grpc.aio.AioRpcError as error:
                    last = f"{agent.name}: {describe(error)}"
                    continue
                hashes[info.oracle.config_hash] = hashes.get(info.oracle.config_hash, 0) + 1
            if hashes:
                return min(hashes, key=lambda h: (-hashes[h], h))
            await self.pool.wait_changed(1.0, seen)
        raise RunFailed(f"cannot learn the configuration of {oracle}: {last or 'no agent'}")

    async def _search(self, active: _Active, spec: SearchSpec, pinned: dna_pb2.Dna) -> Search:
        stored = await self.store.checkpoint(active.run.name)
        if stored is None:
            return Search(spec, pinned)
        state, populations = stored
        best = active.run.progress.best if active.run.progress.HasField("best") else None
        return Search.restore(spec, pinned, state, populations, best)

    async def _generations(self, active: _Active, search: Search, verifier: Verifier) -> None:
        """Generation after generation until a limit is reached. Generation g is committed
        while g+1 is bred and verified (its request needs only the population in memory);
        commits stay in order — g+1's waits for g's — and a run whose commit finds it no
        longer RUNNING (cancelled) stops."""
        loop = asyncio.get_running_loop()
        plan = BreedingPlan()
        committing: asyncio.Task[bool] | None = None
        try:
            while True:
                started = loop.time()
                generation = search.begin()
                request = search.request()
                with tracing.generation_span(active.run.name, generation.number):
                    await self._verify(verifier, generation, request, plan)
                outcome = search.finish(generation, loop.time() - started)
                self.generations += 1
                self.evaluations += len(outcome.fresh)
                done = _Done(
                    counters=dataclasses.replace(search.counters),
                    best=search.best,
                    events=outcome.events,
                    stop_reason=outcome.stop_reason,
                    checkpoint=search.state(),
                    population=(generation.number, outcome.encoded_population()),
                    keep_generations=search.spec.window,
                    candidates=self._retained(active, active.run.objective, outcome, search),
                )
                if committing is not None and not await asyncio.shield(committing):
                    return
                committing = asyncio.create_task(
                    self._commit_generation(active, done), name=f"commit {active.run.name}"
                )
                if outcome.stop_reason:
                    await asyncio.shield(committing)
                    return
        finally:
            if committing is not None and not committing.done():
                # The commit in flight goes on by itself (shielded; memory follows the
                # store); wait for it unless cancelled again. Its failure, if any, is
                # not this exit's cause.
                await asyncio.wait([committing])
                if not committing.cancelled() and committing.exception() is not None:
                    log.warning("committing a generation of %s failed", active.run.name)

    async def _commit_generation(self, active: _Active, done: _Done) -> bool:
        """Commit one completed generation; False when the run is no longer RUNNING."""
        run = active.run
        async with active.lock:
            if run.state != RUNNING:
                return False
            c = done.counters
            progress = run.progress
            progress.generation = max(c.generation, 0)
            progress.evaluations = c.evaluations
            progress.cache_hits = c.cache_hits
            progress.duplicates = c.duplicates
            progress.failed = c.failed
            progress.errors = c.errors
            if done.best is not None:
                progress.best.CopyFrom(done.best)
            events = done.events
            if done.stop_reason:
                run.state = SUCCEEDED
                run.stop_reason = done.stop_reason  # type: ignore[assignment]
                run.end_time.CopyFrom(_now())
                events = [
                    *events,
                    orchestrator_pb2.RunEvent(
                        state_changed=orchestrator_pb2.RunStateChanged(
                            state=SUCCEEDED,
                            stop_reason=done.stop_reason,  # type: ignore[arg-type]
                        )
                    ),
                ]
            await self._commit_locked(
                active,
                events,
                checkpoint=done.checkpoint,
                population=done.population,
                keep_generations=done.keep_generations,
                candidates=done.candidates,
            )
            if done.stop_reason:
                self._active.pop(run.name, None)
                return False
            return True

    async def _verify(
        self,
        verifier: Verifier,
        generation: Generation,
        request: Any,
        plan: BreedingPlan,
    ) -> None:
        """Breed and verify one generation, counting its candidates awaiting a verdict in
        the backlog."""
        handed = [0]

        def record(verdicts: Verdicts) -> None:
            _no_infinite_scores(verdicts)
            taken = generation.record(verdicts)
            handed[0] -= taken
            self.backlog -= taken

        try:
            await verifier.verify(self._fresh(generation, request, plan, handed), record)
        finally:
            self.backlog -= handed[0]

    def _retained(
        self, active: _Active, objective: int, outcome: Outcome, search: Search
    ) -> list[StoredCandidate]:
        """The fresh candidates to store: those that enter the run's best `keep_best`
        scored ones, and its FAILED ones while the run keeps fewer than `keep_failed`.

        `active.best` holds the best (key, id) pairs stored so far (after a restart: since
        then — a subset of the store's best, so its worst is never better than the store's
        cut); a candidate behind `keep_best` of them cannot enter and is not even looked
        at, which after the first generations is nearly every one."""
        keep = self.settings.keep_best
        best = active.best
        cut = best[-1] if len(best) >= keep else None
        fresh = np.asarray(outcome.fresh, dtype=np.intp)
        statuses = outcome.statuses[fresh]
        failed = statuses == VERDICT_FAILED
        scored = (statuses == VERDICT_PASSED) | failed
        sign = 1.0 if objective == MINIMIZE else -1.0
        keys = sign * outcome.scores[fresh] + 0.0  # + 0.0: -0.0 ranks as 0.0
        maybe = scored if cut is None else scored & (keys <= cut[0])
        ids = outcome.ids
        positions = outcome.fresh
        entering: dict[str, tuple[float, str]] = {}
        for k in np.flatnonzero(maybe).tolist():
            cid = ids[positions[k]]
            key = (float(keys[k]), cid)
            if (cut is None or key < cut) and cid not in active.best_ids:
                entering[cid] = key
        if entering:
            best_ids = active.best_ids
            for key in sorted(entering.values()):
                if len(best) >= keep and key >= best[-1]:
                    break  # sorted: the rest cannot enter either
                bisect.insort(best, key)
                best_ids.add(key[1])
                if len(best) > keep:
                    best_ids.discard(best.pop()[1])
            entering = {cid: key for cid, key in entering.items() if cid in best_ids}
        failed_room = self.settings.keep_failed - search.counters.failed
        failed_room += int(np.count_nonzero(failed))
        out = []
        for k in range(len(positions)) if entering else np.flatnonzero(failed).tolist():
            position = positions[k]
            cid = ids[position]
            kept_failed = bool(failed[k]) and failed_room > 0
            failed_room -= kept_failed
            entered = entering.get(cid)
            if entered is None and not kept_failed:
                continue
            out.append(
                StoredCandidate(
                    cid,
                    float(keys[k]),
                    int(statuses[k]),
                    entered is not None,
                    kept_failed,
                    outcome.population[position],
                )
            )
        return out

    async def _fresh(
        self,
        generation: Generation,
        request: Any,
        plan: BreedingPlan,
        handed: list[int],
    ) -> AsyncIterator[tuple[list[bytes], list[str]]]:
        """The generation's candidates that need verifying, as they are generated
        (serialised, with their ids; counted in `handed` and the backlog)."""
        async for records, ids in self.breeder.candidates(request, plan):
            fresh, fresh_ids = generation.add(records, ids)
            if fresh:
                handed[0] += len(fresh)
                self.backlog += len(fresh)
                yield fresh, fresh_ids
        if generation.received != generation.count:
            raise RunFailed(
                f"the generator sent {generation.received} candidates, not {generation.count}"
            )
