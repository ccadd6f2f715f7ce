"""The registry engine: the one serialized write path, leases, the sweeper, the watch hub.

Every mutation is submitted to a single writer task as a function of a `Batch`. The
writer takes whatever is queued (up to `max_batch`), applies it in order on top of the
committed state (each change gets the next revision), makes the whole batch durable in
one store commit (group commit), and only then installs it, updates leases, publishes
events to watchers and answers the callers. Reads use the committed in-memory state and
never wait behind writes; heartbeats that change nothing never reach the writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors, reasons
from helix.common.aio import cancel_and_wait
from helix.common.validation import duration_seconds
from helix.registry.core import (
    DELETE,
    Batch,
    Event,
    RegistryState,
    RequestRecord,
    epoch_mismatch,
)
from helix.registry.leases import LeaseTable
from helix.registry.store import RegistryStore, Snapshot, StoredEvent, StoredRequest, StoreError
from helix.registry.validation import RegistryLimits
from helix.registry.watch import WatchHub
from helix.security.principal import Principal

log = logging.getLogger("helix.registry")
T = TypeVar("T")


@dataclass(frozen=True)
class EngineSettings:
    """How the engine behaves; filled from `RegistryConfig`."""

    limits: RegistryLimits = RegistryLimits()
    sweep_interval: float = 0.5
    history_limit: int = 10_000
    watch_buffer: int = 1024
    max_watchers: int = 1000
    progress_interval: float = 10.0
    max_batch: int = 1000
    write_queue: int = 10_000
    request_ttl: float = 600.0
    max_requests: int = 100_000


@dataclass
class _Job:
    apply: Callable[[Batch], Any]
    done: asyncio.Future[Any]


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
        self.state = RegistryState(history_limit=self.settings.history_limit)
        self.leases = LeaseTable()
        self.hub = WatchHub(self.settings.max_watchers, self.settings.watch_buffer)
        self._clock = clock
        self._wall = wall
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=self.settings.write_queue)
        self._tasks: list[asyncio.Task[None]] = []
        self._pruned_at = 0.0
        self.expired = 0
        self.on_batch: Callable[[int], None] | None = None
        self.on_expired: Callable[[int], None] | None = None

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load the store and start the writer and the sweeper."""
        snapshot = await self.store.open()
        self._load(snapshot)
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="registry-writer"),
            asyncio.create_task(self._sweep_loop(), name="registry-sweeper"),
        ]

    def _load(self, snapshot: Snapshot) -> None:
        state = self.state
        for name, raw in snapshot.agents.items():
            state.agents[name] = registry_pb2.Agent.FromString(raw)
        state.names = sorted(state.agents)
        state.revision = snapshot.revision
        for stored in snapshot.events:
            prev = registry_pb2.Agent.FromString(stored.prev) if stored.prev is not None else None
            agent = registry_pb2.Agent.FromString(stored.agent)
            state.history.append(Event(stored.revision, stored.type, agent, prev, stored.reason))
        while len(state.history) > state.history_limit:
            state.history.popleft()
        for request in snapshot.requests:
            response = registry_pb2.RegisterAgentResponse.FromString(request.response)
            record = RequestRecord(
                request.fingerprint, request.revision, response, request.created_at
            )
            state.remember(request.owner, request.request_id, record)
        now = self._clock()
        # Promise 9: after a restart every lease gets one full TTL.
        for agent in state.agents.values():
            self.leases.grant(agent.name, agent.epoch, duration_seconds(agent.ttl), now)
        log.info(
            "registry loaded",
            extra={"revision": state.revision, "agents": len(state.agents)},
        )

    async def stop(self) -> None:
        """Stop sweeping, finish queued writes, end watches, close the store."""
        self.hub.close_all(
            errors.Unavailable("the registry is shutting down; reconnect", retry_after=1.0)
        )
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.done.done():
                job.done.set_exception(errors.Unavailable("the registry is shutting down"))
        await self.store.close()

    # --- the write path -------------------------------------------------------------------

    async def submit(self, apply: Callable[[Batch], T]) -> T:
        """Run `apply` in the writer's next batch; returns its result once durable."""
        job = _Job(apply, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise errors.ResourceExhausted(
                "the registry's write queue is full",
                retry_after=0.1,
                reason=reasons.WRITE_QUEUE_FULL,
            ) from None
        result: T = await job.done
        return result

    async def _write_loop(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.settings.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            await self._run_batch(jobs)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        batch = Batch(self.state, self.settings.limits, self._wall())
        results: list[tuple[_Job, Any]] = []
        for job in jobs:
            if job.done.done():  # the caller went away
                continue
            try:
                results.append((job, job.apply(batch)))
            except Exception as exc:  # a domain error for this job only
                job.done.set_exception(exc)
        if batch.events or batch.new_requests:
            try:
                await self._commit(batch)
            except StoreError as exc:
                log.error("registry commit failed: %s", exc)
                for job, _ in results:
                    if not job.done.done():
                        job.done.set_exception(
                            errors.Unavailable(
                                "the registry could not store the change", retry_after=1.0
                            )
                        )
                return
        self._apply_committed(batch)
        for job, result in results:
            if not job.done.done():
                job.done.set_result(result)

    async def _commit(self, batch: Batch) -> None:
        events = [
            StoredEvent(
                e.revision,
                e.type,
                e.name,
                e.agent.SerializeToString(),
                e.prev.SerializeToString() if e.prev is not None else None,
                e.reason,
            )
            for e in batch.events
        ]
        requests = [
            StoredRequest(
                owner,
                request_id,
                r.fingerprint,
                r.revision,
                r.response.SerializeToString(),
                r.created_at,
            )
            for owner, request_id, r in batch.new_requests
        ]
        # The history keeps the last `history_limit` revisions; the store forgets older ones.
        first_retained = batch.revision - self.state.history_limit + 1
        forget_before = first_retained if first_retained > self.state.first_available else 0
        wall = self._wall()
        forget_requests = 0.0
        if wall - self._pruned_at >= 10.0:
            forget_requests = wall - self.settings.request_ttl
        await self.store.commit(
            events,
            requests,
            forget_events_before=forget_before,
            forget_requests_before=forget_requests,
        )
        if forget_requests:
            self._pruned_at = wall
            self.state.forget_requests_before(forget_requests)

    def _apply_committed(self, batch: Batch) -> None:
        state = self.state
        state.install(batch.events)
        for owner, request_id, record in batch.new_requests:
            state.remember(owner, request_id, record)
        while len(state.requests) > self.settings.max_requests:
            del state.requests[next(iter(state.requests))]
        now = self._clock()
        for event in batch.events:
            agent = event.agent
            if event.type == DELETE:
                self.leases.release(agent.name)
            elif event.prev is None or event.prev.epoch != agent.epoch:
                self.leases.grant(agent.name, agent.epoch, duration_seconds(agent.ttl), now)
            elif event.prev.ttl != agent.ttl:
                self.leases.set_ttl(agent.name, duration_seconds(agent.ttl), now)
        if batch.events:
            self.hub.publish(batch.events)
            if self.on_batch is not None:
                self.on_batch(len(batch.events))

    # --- leases -----------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            lapsed = self.leases.lapsed(self._clock())
            if lapsed:
                await asyncio.gather(*(self._expire(name, epoch) for name, epoch in lapsed))

    async def _expire(self, name: str, epoch: int) -> None:
        def apply(batch: Batch) -> Event | None:
            # A heartbeat may have renewed the lease since the sweep looked.
            deadline = self.leases.deadline(name, epoch)
            if deadline is not None and deadline > self._clock():
                return None
            return batch.expire(name, epoch)

        try:
            event = await self.submit(apply)
        except errors.HelixError as exc:
            log.warning("expiring %s failed: %s", name, exc.message)
            self.leases.recheck(name, self._clock())
            return
        if event is not None:
            self.expired += 1
            if self.on_expired is not None:
                self.on_expired(1)
            log.info("agent expired", extra={"agent": name, "revision": event.revision})

    def heartbeat(
        self, principal: Principal, request: registry_pb2.HeartbeatRequest
    ) -> tuple[float, bool]:
        """Renew a lease in memory. Returns (ttl, whether health or load would change)."""
        agent = self.state.agents.get(request.name)
        if agent is None:
            raise errors.NotFound(
                f"{request.name} is not registered (or its lease expired): register again",
                metadata={"name": request.name},
            )
        if agent.owner != principal.subject and not principal.is_admin:
            raise errors.PermissionDenied(
                f"{request.name} was registered by another principal", reason=reasons.NOT_OWNER
            )
        if agent.epoch != request.epoch:
            raise epoch_mismatch(request.name, request.epoch, agent.epoch)
        ttl = self.leases.renew(request.name, request.epoch, self._clock())
        if ttl is None:
            raise errors.NotFound(f"{request.name}'s lease expired: register again")
        changes = bool(request.health and request.health != agent.health) or (
            request.HasField("load") and request.load != agent.load
        )
        return ttl, changes
