"""The registry engine: the one serialized write path, leases, the sweeper, the watch hub.

Every mutation is submitted to a single writer task as a function of a `Batch`. The
writer takes whatever is queued (up to `max_batch`), applies it in order on top of the
committed state (each change gets the next revision), makes the whole batch durable in
one store commit (group commit), and only then installs it, updates leases, publishes
events to watchers and answers the callers. Reads use the committed in-memory state and
never wait behind writes; heartbeats that change nothing never reach the writer.

The public methods speak the RegistryService messages (request in, reply out) and raise
`helix.common.errors`; the servicer only validates and calls them. The clocks are
injected: `clock` (monotonic) measures leases, `wall` stamps create and update times.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors, pages, reasons
from helix.common.aio import cancel_and_wait
from helix.common.validation import duration_seconds
from helix.registry.core import Batch, check_heartbeat, fingerprint, heartbeat_changes
from helix.registry.leases import LeaseTable
from helix.registry.records import load_state, stored_events, stored_requests
from helix.registry.state import (
    DELETE,
    HISTORY_BYTE_LIMIT,
    HISTORY_LIMIT,
    MAX_RESPONSE_BYTES,
    REQUEST_BYTE_LIMIT,
    REQUEST_LIMIT,
    Event,
    RegistryState,
    selector_from,
)
from helix.registry.stats import RegistryStats
from helix.registry.store import RegistryStore, Snapshot, StoreConflict, StoreError
from helix.registry.validation import RegistryLimits
from helix.registry.watch import WatchHub
from helix.security.principal import Principal

if TYPE_CHECKING:
    from helix.registry.replica import Replica

log = logging.getLogger("helix.registry")
T = TypeVar("T")
# The refusals counted in `RegistryStats.refused` (helix_registry_refused_total).
LIMIT_REASONS = frozenset(
    {
        reasons.AGENT_TOO_LARGE,
        reasons.TOO_MANY_AGENTS,
        reasons.TOO_MANY_AGENTS_FOR_PRINCIPAL,
        reasons.WRITE_QUEUE_FULL,
    }
)


@dataclass(frozen=True)
class EngineSettings:
    """How the engine behaves; filled from `RegistryConfig`."""

    limits: RegistryLimits = RegistryLimits()
    sweep_interval: float = 0.5
    history_limit: int = HISTORY_LIMIT
    history_bytes: int = HISTORY_BYTE_LIMIT
    watch_buffer: int = 1024
    max_watchers: int = 1000
    progress_interval: float = 10.0
    max_batch: int = 1000
    write_queue: int = 10_000
    request_ttl: float = 600.0
    # Start even if the store lost acknowledged changes (RegistryStore.open).
    accept_loss: bool = False
    max_requests: int = REQUEST_LIMIT
    request_bytes: int = REQUEST_BYTE_LIMIT
    # Not a setting: the message size every gRPC client accepts by default (registry.proto).
    max_response_bytes: int = MAX_RESPONSE_BYTES


@dataclass
class _Job:
    apply: Callable[[Batch], Any]
    done: asyncio.Future[Any]


# A replica that keeps losing the revision compare to others (each attempt first catches
# up) gives up after this many seconds (UNAVAILABLE: the caller retries). A loser may lose
# several rounds in a row while another replica has a stream of writes: not a failure.
_COMMIT_PATIENCE = 5.0
# Idempotency records waiting to be dropped from the store, at most.
_FORGET_LIMIT = 100_000


def _shutting_down() -> errors.Unavailable:
    return errors.Unavailable("the registry is shutting down; reconnect", retry_after=1.0)


class Registry:
    """Committed state plus the machinery that changes it."""

    def __init__(
        self,
        store: RegistryStore,
        settings: EngineSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or EngineSettings()
        self.store = store
        self.state = RegistryState(
            history_limit=self.settings.history_limit,
            history_byte_limit=self.settings.history_bytes,
            request_limit=self.settings.max_requests,
            request_byte_limit=self.settings.request_bytes,
        )
        self.leases = LeaseTable()
        self.stats = RegistryStats()
        # Every refusal counter exists from the start (at 0), and the exporter's thread never
        # sees the dict change size.
        self.stats.refused = dict.fromkeys(sorted(LIMIT_REASONS), 0)
        self.hub = WatchHub(
            self.settings.max_watchers,
            self.settings.watch_buffer,
            self.stats,
            max_response_bytes=self.settings.max_response_bytes,
        )
        self._clock = clock
        self._wall = wall
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=self.settings.write_queue)
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._pruned_at = 0.0
        # Idempotency records forgotten in memory for their bounds, for the store to forget
        # in the next commit.
        self._forgotten_requests: builtins.list[tuple[str, str]] = []
        # On a store shared by several registry processes (etcd), the replica: leases in
        # the store, the other replicas' changes followed. None on the embedded store.
        self.replica: Replica | None = None
        if getattr(store, "shared", False):
            from helix.registry.replica import Replica

            self.replica = Replica(self, store)  # type: ignore[arg-type]

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load the store and start the writer and the sweeper."""
        snapshot = await self.store.open(accept_loss=self.settings.accept_loss)
        try:
            self._load(snapshot)
            if self.replica is not None:
                await self.replica.start()
        except BaseException:
            await self.store.close()
            raise
        self._tasks = [asyncio.create_task(self._write_loop(), name="registry-writer")]
        if self.replica is None:
            self._tasks.append(asyncio.create_task(self._sweep_loop(), name="registry-sweeper"))

    def _load(self, snapshot: Snapshot) -> None:
        state = self.state
        unreadable = load_state(state, snapshot)
        self._forgotten_requests = unreadable + state.trim_requests()
        now = self._clock()
        # Promise 9: after a restart every lease gets one full TTL (on a shared store the
        # leases live in the store: `Replica.start`).
        if self.replica is None:
            for agent in state.agents.values():
                self.leases.grant(agent.name, agent.epoch, duration_seconds(agent.ttl), now)
        log.info(
            "registry loaded",
            extra={"revision": state.revision, "agents": len(state.agents)},
        )

    @property
    def queued_writes(self) -> int:
        """Mutations waiting for the writer (exported as a gauge; bounded by write_queue)."""
        return self._queue.qsize()

    async def end_watches(self) -> None:
        """End every watch with UNAVAILABLE and refuse new ones: the one place watches end
        at shutdown. The service binding runs this when the drain begins, since the server
        waits for open streams before `stop` is called."""
        self.hub.close_all(_shutting_down())

    async def stop(self) -> None:
        """Stop sweeping and writing, fail writes still queued, close the store.

        Watches end first (`end_watches`; a no-op when the drain already ended them):
        a stream left open would wait for events that no longer come.
        """
        await self.end_watches()
        tasks, self._tasks = self._tasks, []
        if self.replica is not None:
            await self.replica.stop()
        await cancel_and_wait(tasks)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.done.done():
                job.done.set_exception(_shutting_down())
        await self.store.close()

    # --- what RegistryService calls -----------------------------------------------------------

    async def register(
        self, principal: Principal, request: registry_pb2.RegisterAgentRequest
    ) -> registry_pb2.RegisterAgentResponse:
        """RegisterAgent; a retry with the same request_id is answered without a write."""
        digest = fingerprint(request)
        answered = self.state.answered(principal.subject, request.request_id, digest)
        if answered is not None:
            return answered
        agent_id = request.agent_id or f"agent-{secrets.token_hex(6)}"
        if self.replica is not None:
            return await self.replica.register(principal, request, agent_id, digest)
        return await self.submit(lambda batch: batch.register(principal, request, agent_id, digest))

    async def heartbeat(
        self, principal: Principal, request: registry_pb2.HeartbeatRequest
    ) -> registry_pb2.HeartbeatResponse:
        """Renew the lease; commit only a change of health or load.

        The registry's hottest call: when nothing changes it renews in memory and builds
        the reply, nothing else (the TTL is the committed agent's, no new Duration).
        """
        name = request.name
        if self.replica is not None:
            agent = await self._renew_shared(principal, request)
        else:
            agent = check_heartbeat(self.state.agents.get(name), principal, name, request.epoch)
        if self.replica is None and self.leases.renew(name, request.epoch, self._clock()) is None:
            raise errors.NotFound(
                f"{name}'s lease expired: register again", metadata={"name": name}
            )
        revision, etag = self.state.revision, agent.etag
        if heartbeat_changes(agent, request):
            event = await self.submit(lambda batch: batch.heartbeat_change(principal, request))
            revision = event.revision if event is not None else self.state.revision
            current = self.state.agents.get(name)
            etag = current.etag if current is not None else etag
        return registry_pb2.HeartbeatResponse(revision=revision, ttl=agent.ttl, etag=etag)

    async def _renew_shared(
        self, principal: Principal, request: registry_pb2.HeartbeatRequest
    ) -> registry_pb2.Agent:
        """A heartbeat's checks and renewal on a shared store. A refusal (unknown name,
        another epoch, no lease) may come from a replica behind another one: it is given
        only once this replica has caught up with everything committed."""
        assert self.replica is not None
        name = request.name
        for attempt in (1, 2):
            try:
                agent = check_heartbeat(self.state.agents.get(name), principal, name, request.epoch)
                await self.replica.renew(agent)
            except (errors.NotFound, errors.FailedPrecondition, errors.PermissionDenied):
                if attempt == 2:
                    raise
                await self.replica.sync_all()
                continue
            return agent
        raise AssertionError("unreachable")

    async def update(
        self, principal: Principal, request: registry_pb2.UpdateAgentRequest
    ) -> registry_pb2.UpdateAgentResponse:
        """UpdateAgent; an update that changes nothing advances nothing."""
        agent, event = await self.submit(lambda batch: batch.update(principal, request))
        revision = event.revision if event is not None else self.state.revision
        if self.replica is not None and event is not None and event.prev is not None:
            await self.replica.ttl_changed(event.prev, event.agent)
        return registry_pb2.UpdateAgentResponse(agent=agent, revision=revision)

    async def deregister(
        self, principal: Principal, request: registry_pb2.DeregisterAgentRequest
    ) -> registry_pb2.DeregisterAgentResponse:
        """DeregisterAgent, conditional on the etag when one is given."""
        event = await self.submit(
            lambda batch: batch.deregister(principal, request.name, request.etag)
        )
        return registry_pb2.DeregisterAgentResponse(revision=event.revision)

    def report_health_to(self, report: Callable[[bool], None]) -> None:
        """Tell `report` whether the registry can serve: on a shared store, whether it is
        in touch with the store (now and on every change); always, on the embedded one."""
        if self.replica is not None:
            self.replica.report_health_to(report)

    async def sync(self) -> None:
        """Before a read: on a shared store, wait until this replica has every change
        committed before the read began (a linearizable read of the revision in the
        store, then the replica's state at least there), so a read never misses a change
        another replica acknowledged; UNAVAILABLE when the store cannot say. Nothing to do
        on the embedded store, whose state is the committed one."""
        if self.replica is not None:
            await self.replica.sync()

    def get(self, name: str) -> registry_pb2.GetAgentResponse:
        """GetAgent, from committed state."""
        agent = self.state.agents.get(name)
        if agent is None:
            raise errors.NotFound(f"{name} not found", metadata={"name": name})
        return registry_pb2.GetAgentResponse(agent=agent, revision=self.state.revision)

    def list(self, request: registry_pb2.ListAgentsRequest) -> registry_pb2.ListAgentsResponse:
        """One page of ListAgents; every page of a listing reads the first page's snapshot."""
        state = self.state
        filters = pages.filters_digest(request.kind, request.label_selector, request.health)
        if request.page_token:
            position = pages.decode_page_token(request.page_token, filters)
            if not 0 < position.snapshot <= state.revision:
                raise pages.invalid_page_token("is not a next_page_token of this listing")
            snapshot, after = position.snapshot, position.after
        else:
            snapshot, after = state.revision, ""
        limits = self.settings.limits
        limit = limits.page_size(request.page_size)
        agents, next_after = state.page(
            snapshot, selector_from(request), after, limit, self.settings.max_response_bytes
        )
        token = ""
        if next_after is not None:
            token = pages.encode_page_token(pages.PagePosition(next_after, snapshot), filters)
        return registry_pb2.ListAgentsResponse(
            agents=agents, next_page_token=token, revision=snapshot
        )

    def watch(
        self,
        request: registry_pb2.WatchAgentsRequest,
        on_close: Callable[[errors.HelixError], None] | None = None,
    ) -> AsyncGenerator[registry_pb2.WatchAgentsResponse, None]:
        """WatchAgents: ready responses (events in batches, and bookmarks when asked for),
        until shutdown or a too-slow reader ends it with an error (`on_close` is told at
        once)."""
        interval = self.settings.progress_interval if request.progress_notify else None
        return self.hub.watch(
            self.state, selector_from(request), request.start_revision, interval, on_close
        )

    # --- leases -----------------------------------------------------------------------------

    async def expire_lapsed(self) -> int:
        """Expire every agent whose lease has lapsed on the engine's clock; returns how many.

        The sweeper calls this every `sweep_interval`, so an agent expires no sooner than
        its TTL after its last heartbeat and within one interval more.
        """
        lapsed = self.leases.lapsed(self._clock())
        if not lapsed:
            return 0

        def apply(batch: Batch) -> builtins.list[Event]:
            now = self._clock()
            expired = []
            for name, epoch in lapsed:
                deadline = self.leases.deadline(name, epoch)
                if deadline is not None and deadline > now:
                    # Renewed since the sweep looked: watch the new deadline instead.
                    self.leases.recheck(name, now)
                    continue
                event = batch.expire(name, epoch)
                if event is not None:
                    expired.append(event)
            return expired

        try:
            events = await self.submit(apply)
        except errors.HelixError as exc:
            log.warning("expiring %d lapsed leases failed: %s", len(lapsed), exc.message)
            now = self._clock()
            for name, _ in lapsed:
                self.leases.recheck(name, now)
            return 0
        self.stats.expired += len(events)
        for event in events:
            log.info("agent expired", extra={"agent": event.name, "revision": event.revision})
        return len(events)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                await self.expire_lapsed()
            except Exception:  # a bug must not end expiry for good (CancelledError passes)
                log.exception("sweeping lapsed leases failed; trying again next interval")

    # --- the write path -------------------------------------------------------------------

    async def submit(self, apply: Callable[[Batch], T]) -> T:
        """Run `apply` in the writer's next batch; returns its result once durable.

        A domain error `apply` raises fails this job only; a failed store commit fails
        every job of its batch with UNAVAILABLE and installs nothing.
        """
        job = _Job(apply, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            error = errors.ResourceExhausted(
                "the registry's write queue is full",
                retry_after=0.1,
                reason=reasons.WRITE_QUEUE_FULL,
            )
            self._count_refusal(error)
            raise error from None
        result: T = await job.done
        return result

    async def _write_loop(self) -> None:
        carried: builtins.list[_Job] = []  # jobs the last batch had no room for
        while True:
            jobs = carried or [await self._queue.get()]
            while len(jobs) < self.settings.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            carried = []
            try:
                carried = await self._run_batch(jobs)
            except asyncio.CancelledError:
                for job in jobs:  # stopped mid-batch: the callers get an answer
                    if not job.done.done():
                        job.done.set_exception(_shutting_down())
                raise
            except Exception:
                # A broken invariant (say, a revision out of order): answer this batch's
                # callers INTERNAL and keep writing, rather than leave every later write
                # waiting on a writer that is gone.
                log.exception("the registry's writer failed a batch")
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(errors.Internal("the registry failed a write"))

    def _apply_jobs(
        self, jobs: builtins.list[_Job]
    ) -> tuple[Batch, builtins.list[tuple[_Job, bool, Any]], builtins.list[_Job]]:
        """Apply the jobs in order on a new batch: (the batch, each job's outcome — ok and
        result or error —, the jobs left for the next batch: on a shared store a batch
        stays within one store transaction's room)."""
        batch = Batch(self.state, self.settings.limits, self._wall())
        outcomes: builtins.list[tuple[_Job, bool, Any]] = []
        room = self.replica.room(batch) if self.replica is not None else None
        for index, job in enumerate(jobs):
            if job.done.done():  # the caller went away
                continue
            if room is not None and not room():
                return batch, outcomes, jobs[index:]
            try:
                outcomes.append((job, True, job.apply(batch)))
            except Exception as exc:  # a domain error for this job only
                outcomes.append((job, False, exc))
        return batch, outcomes, []

    async def _run_batch(self, jobs: builtins.list[_Job]) -> builtins.list[_Job]:
        """Apply, commit and install one batch; answer its callers. Returns the jobs left
        for the next batch. On a shared store a commit that lost the revision compare to
        another replica catches up and applies the jobs again on the newer state."""
        give_up = time.monotonic() + _COMMIT_PATIENCE
        synced = False
        while True:
            batch, outcomes, rest = self._apply_jobs(jobs)
            if self.replica is not None and not synced and not batch.events:
                # Nothing to commit, so no compare proves these answers current (a refusal
                # from a replica behind another, say): catch up first, then apply again.
                synced = True
                before = self.state.revision
                try:
                    await self.replica.sync_all()
                except errors.HelixError as exc:
                    self._fail(outcomes, exc)
                    return rest
                if self.state.revision != before:
                    continue
            if not (batch.events or batch.new_requests):
                self._apply_committed(batch)
                self._answer(outcomes)
                return rest
            try:
                await self._commit_and_install(batch)
            except StoreConflict as conflict:
                try:
                    await self._catch_up(conflict)
                except errors.HelixError as exc:
                    self._fail(outcomes, exc)
                    return rest
                if time.monotonic() < give_up:
                    continue
                busy = errors.Unavailable(
                    "the registry's replicas are writing too much at once; try again",
                    retry_after=0.1,
                )
                self._fail(outcomes, busy)
                return rest
            except StoreError as exc:
                log.error("registry commit failed: %s", exc)
                self._fail(
                    outcomes,
                    errors.Unavailable("the registry could not store the change", retry_after=1.0),
                )
                return rest
            self._answer(outcomes)
            return rest

    def _answer(self, outcomes: builtins.list[tuple[_Job, bool, Any]]) -> None:
        """Answer a batch's callers once it is installed: results, and domain errors."""
        for job, ok, value in outcomes:
            if job.done.done():
                continue
            if ok:
                job.done.set_result(value)
            else:
                self._count_refusal(value)
                job.done.set_exception(value)

    async def _commit_and_install(self, batch: Batch) -> None:
        """Make `batch` durable, then visible. On a shared store the replica's lock is held
        throughout (its follower installs nothing in between), after waiting its turn."""
        if self.replica is None:
            await self._commit(batch)
            self._apply_committed(batch)
            return
        await self.replica.take_turns()
        async with self.replica.lock:
            await self._commit(batch)
            self._apply_committed(batch)

    def _fail(self, outcomes: builtins.list[tuple[_Job, bool, Any]], error: Exception) -> None:
        """Answer a batch that was not stored: domain errors stand, the rest get `error`."""
        for job, ok, value in outcomes:
            if not job.done.done():
                job.done.set_exception(error if ok else value)

    async def _catch_up(self, conflict: StoreConflict) -> None:
        if self.replica is None:
            raise errors.Internal("the registry's store reported a conflict it cannot have")
        await self.replica.caught_up_after(conflict)

    def _count_refusal(self, error: Exception) -> None:
        """Count a write refused for one of the registry's limits (a metric)."""
        if isinstance(error, errors.HelixError) and error.reason in LIMIT_REASONS:
            self.stats.refused[error.reason] += 1

    async def _commit(self, batch: Batch) -> None:
        # The store forgets what the history will: the same events, in the same commit. (Asked
        # every time, so a store holding more than memory, after the bounds were lowered,
        # catches up with the first commit.)
        forget_before = self.state.first_kept_after(batch.events)
        wall = self._wall()
        expired_before = 0.0
        if wall - self._pruned_at >= 10.0:
            expired_before = wall - self.settings.request_ttl
        forget, self._forgotten_requests = self._forgotten_requests, []
        try:
            if self.replica is not None:
                await self.replica.commit(batch, forget_before, expired_before, forget)
            else:
                await self.store.commit(
                    stored_events(batch),
                    stored_requests(batch),
                    forget_events_before=forget_before,
                    forget_requests_before=expired_before,
                    forget_requests=forget,
                )
        except BaseException:
            self.forget_requests(forget)  # for the next commit
            raise
        if expired_before:
            self._pruned_at = wall
            self.state.forget_requests_before(expired_before)

    def _apply_committed(self, batch: Batch) -> None:
        state = self.state
        state.install(batch.events)
        for owner, request_id, record in batch.new_requests:
            state.remember(owner, request_id, record)
        self.forget_requests(state.trim_requests())
        if self.replica is not None:
            self.replica.committed(batch)
        else:
            self._grant_leases(batch.events)
        self.publish(batch.events)

    def forget_requests(self, keys: builtins.list[tuple[str, str]]) -> None:
        """Idempotency records dropped from memory, for the store to drop in the next
        commit (bounded: beyond the bound they stay in the store until a restart trims
        them again — they are only a retry cache)."""
        room = _FORGET_LIMIT - len(self._forgotten_requests)
        if room > 0:
            self._forgotten_requests += keys[:room]

    def _grant_leases(self, events: builtins.list[Event]) -> None:
        now = self._clock()
        for event in events:
            agent = event.agent
            if event.type == DELETE:
                self.leases.release(agent.name)
            elif event.prev is None or event.prev.epoch != agent.epoch:
                self.leases.grant(agent.name, agent.epoch, duration_seconds(agent.ttl), now)
            elif event.prev.ttl != agent.ttl:
                self.leases.set_ttl(agent.name, duration_seconds(agent.ttl), now)

    def publish(self, events: builtins.list[Event]) -> None:
        """Hand installed events to the watches."""
        if events:
            self.hub.publish(events)
            self.stats.batch_sizes.observe(len(events))
