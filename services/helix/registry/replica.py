"""A registry process sharing its state with other registry processes through etcd.

Each replica runs the same engine as the embedded registry — committed state in memory,
one writer applying batches of mutations with the pure rules of `core` — and differs in
three places, all here:

- **Commits are conditional.** A batch is written in one etcd transaction that compares
  the registry's revision counter with the revision this replica's state is at. If another
  replica committed first, the compare fails, nothing is written, the replica catches up
  (its follower installs the other's events) and applies the same mutations again on the
  newer state: every rule (ownership, etags, epochs, quotas) is checked against the state
  the change really follows. Revisions stay consecutive across replicas.
- **The replica follows the others.** One etcd watch on the registry's prefix delivers
  every committed batch (theirs and its own, skipped) in order; their events are installed
  and published to this replica's watches exactly as its own are.
- **Leases are etcd leases.** Registration grants an etcd lease of the agent's TTL and
  attaches the agent's lease key to it in the commit; a heartbeat, at any replica, renews
  it (one shared LeaseKeepAlive stream); when etcd expires it, etcd deletes the key and the
  replicas that see the deletion commit the agent's EXPIRED event (one wins, the others
  find the agent gone). An UpdateAgent that lengthens the TTL moves the agent to a new
  lease at once; one that shortens it does so at the next heartbeat, so no agent expires
  sooner than the TTL in force when it last renewed.

Reads (Get, List, the start of a Watch) first read the revision counter from etcd's quorum
and wait until this replica has installed it (`sync`): a read never misses a change any
replica acknowledged, and when etcd cannot be reached the read fails UNAVAILABLE instead
of answering from a state that may be stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors
from helix.common.validation import duration_seconds
from helix.etcd import Compacted
from helix.registry.core import Batch
from helix.registry.etcd_store import (
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    OPS_PER_EVENT,
    EtcdRegistryStore,
    LeaseKey,
    RemoteChange,
)
from helix.registry.records import load_state, read_events, read_request, stored_events
from helix.registry.records import stored_requests as stored_requests_of
from helix.registry.state import DELETE, Event, RegistryState
from helix.registry.store import Snapshot, StoreConflict, StoredEvent
from helix.registry.validation import granted_ttl_seconds
from helix.security.principal import Principal

if TYPE_CHECKING:
    from helix.registry.engine import Registry

log = logging.getLogger("helix.registry")

# Lease renewals sent at once when a replica starts (promise 9: every lease gets a full TTL).
_START_RENEWALS = 64
_RETRY_MIN, _RETRY_MAX = 0.2, 2.0
# Replicas take turns (`Replica._take_turns`) for this long after another one wrote, each
# waiting at most _TURN_WAIT for its own last commit to come back through the watch.
_CONTENDED_FOR = 1.0
_TURN_WAIT = 0.5


class Replica:
    """The shared-store half of a `Registry` engine (see the module's docstring)."""

    def __init__(self, registry: Registry, store: EtcdRegistryStore) -> None:
        self.registry = registry
        self.store = store
        self.leases: dict[str, LeaseKey] = {}  # the lease of each agent, by name
        self._connected = False  # whether the follower is in touch with etcd (health)
        self._report_health: Callable[[bool], None] | None = None
        self._advanced = asyncio.Event()  # set (and replaced) whenever the state advances
        self._follower: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiring: set[str] = set()
        # Held by the writer from its commit to the install of its batch, and by the
        # follower while it installs: one installs at a time, in revision order, and the
        # writer installs its own batch (and its leases) before the watch echoes it.
        self.lock = asyncio.Lock()
        # Fairness between replicas writing at once: the etcd revision of this replica's
        # last commit, the last one its follower delivered, and when it last delivered
        # another replica's events (see `_take_turns`).
        self._own_etcd = 0
        self._seen_etcd = 0
        self._others_wrote_at = -1e9

    @property
    def state(self) -> RegistryState:
        return self.registry.state

    @property
    def connected(self) -> bool:
        return self._connected

    @connected.setter
    def connected(self, value: bool) -> None:
        changed, self._connected = value != self._connected, value
        if changed and self._report_health is not None:
            self._report_health(value)

    def report_health_to(self, report: Callable[[bool], None]) -> None:
        """Report to `report` whether this replica is in touch with etcd, now and on
        every change (the service's health: NOT_SERVING while etcd is unreachable)."""
        self._report_health = report
        report(self._connected)

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """After the engine loaded the store: give every agent a full TTL from now (promise
        9), attaching a new lease to any whose lease lapsed while no replica ran, then
        follow the other replicas from the revision the store was read at."""
        self.leases = dict(self.store.leases)
        limit = asyncio.Semaphore(_START_RENEWALS)

        async def refresh(agent: registry_pb2.Agent) -> None:
            async with limit:
                lease = self.leases.get(agent.name)
                if (
                    lease is not None
                    and lease.epoch == agent.epoch
                    and await self.store.renew(lease.lease_id) > 0
                ):
                    return
                stale = lease if lease is not None and lease.epoch != agent.epoch else None
                await self._attach(agent, duration_seconds(agent.ttl), stale)

        try:
            async with asyncio.TaskGroup() as group:
                for agent in list(self.state.agents.values()):
                    group.create_task(refresh(agent))
        except* errors.HelixError as failed:
            raise errors.Unavailable(
                f"{self.store.source}: cannot renew the agents' leases: {failed.exceptions[0]}"
            ) from None
        self.connected = True
        self._follower = asyncio.create_task(self._follow(), name="registry-follower")

    async def stop(self) -> None:
        """Stop following and expiring (leases stay in etcd: the agents keep them)."""
        tasks = [t for t in (self._follower, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._follower = None

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- reads ----------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Wait until this replica has every change etcd's quorum holds now."""
        revision, _ = await self.store.current()
        await self.caught_up(revision)

    async def sync_all(self) -> None:
        """`sync`, and the follower past the last commit's etcd revision too: every
        idempotency record and lease key committed so far is known here."""
        revision, etcd_revision = await self.store.current()
        await self.caught_up(revision)
        await self.followed_to(etcd_revision)

    async def followed_to(self, etcd_revision: int) -> None:
        """Wait (at most the etcd timeout) until the follower delivered `etcd_revision`."""
        try:
            async with asyncio.timeout(self.store.client.timeout):
                while self._seen_etcd < etcd_revision:
                    await self._advanced.wait()
        except TimeoutError:
            raise errors.Unavailable(
                "this registry replica is not following etcd (is etcd reachable?); try again",
                retry_after=1.0,
            ) from None

    async def caught_up_after(self, conflict: StoreConflict) -> None:
        """After losing a commit: install what the losing transaction read back, then wait
        for the rest (the revision it found; the records of a request_id another replica
        answered first)."""
        self.install_missed(conflict.events)
        await self.caught_up(conflict.revision)
        if conflict.etcd_revision:
            await self.followed_to(conflict.etcd_revision)

    async def caught_up(self, revision: int) -> None:
        """Wait (at most the etcd timeout) until the state is at `revision` or later."""
        if self.state.revision >= revision:
            return
        try:
            async with asyncio.timeout(self.store.client.timeout):
                while self.state.revision < revision:
                    await self._advanced.wait()
        except TimeoutError:
            raise errors.Unavailable(
                f"this registry replica is at revision {self.state.revision}, behind etcd's "
                f"{revision}, and not catching up (is etcd reachable?); try again",
                retry_after=1.0,
            ) from None

    def _advance(self) -> None:
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    # --- writes ---------------------------------------------------------------------------------

    def room(self, batch: Batch) -> Callable[[], bool]:
        """Whether `batch` has room for one more job within one etcd transaction (a job
        makes at most one change; the first always fits)."""
        max_agent = self.registry.settings.limits.max_agent_bytes
        fixed_ops = 3  # the revision counter, the history trim, spare

        def fits() -> bool:
            if not batch.events:
                return True
            ops = (len(batch.events) + 1) * OPS_PER_EVENT + fixed_ops
            size = sum(e.size + e.agent.ByteSize() for e in batch.events)
            size += sum(r.size for _, _, r in batch.new_requests)
            return ops <= MAX_TXN_OPS and size + 4 * max_agent <= MAX_TXN_BYTES

        return fits

    async def commit(
        self,
        batch: Batch,
        forget_before: int,
        expired_before: float,
        forget: list[tuple[str, str]],
    ) -> None:
        """Write `batch` if the registry is still at the revision the batch was applied on
        (`StoreConflict` otherwise). The writer holds `lock`."""
        base = batch.events[0].revision - 1 if batch.events else self.state.revision
        if base != self.state.revision:  # the follower installed others' changes meanwhile
            raise StoreConflict(self.state.revision)
        if expired_before:
            forget += [k for k, r in self.state.requests.items() if r.created_at < expired_before]
        await self.store.commit(
            stored_events(batch),
            stored_requests_of(batch),
            forget_events_before=forget_before,
            forget_requests=forget,
            base_revision=base,
            leases=batch.leases,
        )
        self._own_etcd = self.store.last_commit

    async def take_turns(self) -> None:
        """While another replica writes too, commit only once the follower delivered this
        replica's own last commit. The replica that just won a commit would otherwise
        always try again first (its state is current at once; the loser's only when the
        watch delivers), and a loser could lose every time while the winner has work;
        now both start each round from the watch. A replica writing alone never waits."""
        if time.monotonic() - self._others_wrote_at > _CONTENDED_FOR:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_TURN_WAIT):
                while self._seen_etcd < self._own_etcd:
                    await self._advanced.wait()

    def committed(self, batch: Batch) -> None:
        """After the writer installed its own batch: the leases it attached and released."""
        self._leases_after(batch.events, batch.leases, revoke=True)
        self._advance()

    def _leases_after(
        self, events: Sequence[Event], attached: dict[str, LeaseKey], *, revoke: bool
    ) -> None:
        """Track the agents' leases through installed `events`: the ones `attached`, and
        none for a deleted agent (`revoke`: end the leases this replica's own commits
        released, so no key lingers until its TTL)."""
        for event in events:
            name = event.name
            if event.type == DELETE:
                old = self.leases.pop(name, None)
                if revoke and old is not None:
                    self._revoke(old.lease_id)
                continue
            new = attached.get(name)
            if new is None or new.epoch != event.agent.epoch:
                continue
            old = self.leases.get(name)
            self.leases[name] = new
            if revoke and old is not None and old.lease_id != new.lease_id:
                self._revoke(old.lease_id)

    def _revoke(self, lease_id: int) -> None:
        self._spawn(self.store.revoke(lease_id), f"registry-revoke-{lease_id:x}")

    async def register(
        self,
        principal: Principal,
        request: registry_pb2.RegisterAgentRequest,
        agent_id: str,
        digest: bytes,
    ) -> registry_pb2.RegisterAgentResponse:
        """RegisterAgent with a new etcd lease, attached in the same commit (and revoked
        if the registration does not use it: refused, or answered from a retry)."""
        ttl = granted_ttl_seconds(
            request.agent.ttl if request.agent.HasField("ttl") else None,
            self.registry.settings.limits,
        )
        lease_id, granted = await self.store.grant(ttl)
        if granted != ttl:
            # etcd grants whole seconds, and no less than its minimum (1.5 x its election
            # timeout): the agent is told the TTL it really holds.
            request = _with_ttl(request, granted)
            ttl = granted
        name = f"agents/{agent_id}"

        def apply(batch: Batch) -> registry_pb2.RegisterAgentResponse:
            response = batch.register(principal, request, agent_id, digest)
            last = batch.events[-1] if batch.events else None
            if last is not None and last.revision == response.revision and last.name == name:
                batch.leases[name] = lease_key(lease_id, response.agent.epoch, ttl)
            return response

        try:
            response = await self.registry.submit(apply)
        except asyncio.CancelledError:
            # The batch may still commit it: the lease is left to lapse if it did not.
            raise
        except BaseException:
            self._revoke_unless_held(name, lease_id)
            raise
        self._revoke_unless_held(name, lease_id)
        return response

    def _revoke_unless_held(self, name: str, lease_id: int) -> None:
        """Revoke a lease granted for a registration that did not take it (refused, or a
        retry answered with the first registration)."""
        current = self.leases.get(name)
        if current is None or current.lease_id != lease_id:
            self._revoke(lease_id)

    async def renew(self, agent: registry_pb2.Agent) -> None:
        """A heartbeat's renewal of `agent`'s lease (NOT_FOUND when it has lapsed)."""
        name = agent.name
        lease = self.leases.get(name)
        if (
            lease is None
            or lease.epoch != agent.epoch
            or await self.store.renew(lease.lease_id) <= 0
        ):
            raise errors.NotFound(
                f"{name}'s lease expired: register again", metadata={"name": name}
            )
        ttl = duration_seconds(agent.ttl)
        if _ttl_differs(lease.ttl, ttl):  # an UpdateAgent shortened it: from this renewal
            await self._attach(agent, ttl, lease)

    async def ttl_changed(self, prev: registry_pb2.Agent, agent: registry_pb2.Agent) -> None:
        """After an UpdateAgent: a longer TTL applies from now (a new lease); a shorter one
        from the next heartbeat (`renew`)."""
        lease = self.leases.get(agent.name)
        ttl = duration_seconds(agent.ttl)
        if lease is not None and prev.ttl != agent.ttl and ttl > lease.ttl:
            # Best effort: the update is durable already; the next heartbeat moves the
            # lease if this cannot.
            with contextlib.suppress(errors.HelixError):
                await self._attach(agent, ttl, lease)

    async def _attach(self, agent: registry_pb2.Agent, ttl: float, old: LeaseKey | None) -> None:
        """Hold `agent`'s registration on a new lease of `ttl` (replacing `old`, or where
        it has none; unless the key changed meanwhile: then nothing changes and the new
        lease is revoked)."""
        lease_id, _ = await self.store.grant(ttl)
        new = lease_key(lease_id, agent.epoch, ttl)
        if await self.store.attach(agent.name, new, replacing=old.lease_id if old else None):
            self.leases[agent.name] = new
            if old is not None:
                self._revoke(old.lease_id)
        else:
            self._revoke(lease_id)

    # --- following the other replicas -------------------------------------------------------------

    async def _follow(self) -> None:
        after = self.store.opened_at
        delay = _RETRY_MIN
        while True:
            try:
                if not self.connected:
                    await self.store.current()  # etcd answers again: serving
                    self.connected = True
                    delay = _RETRY_MIN
                async with contextlib.aclosing(self.store.follow(after)) as changes:
                    async for change in changes:
                        async with self.lock:
                            self._install(change)
                        after = change.etcd_revision
            except Compacted as exc:
                log.warning("the registry's etcd watch was compacted (%s); reading it again", exc)
                after = await self._resync()
            except errors.Unavailable as exc:
                if self.connected:
                    log.warning("the registry lost etcd: %s", exc.message)
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
            except Exception:  # a record it cannot read, a bug: never stop following
                log.exception("the registry could not install a change from etcd; reading again")
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                after = await self._resync()

    async def _resync(self) -> int:
        """Read the whole registry from etcd again; install what this replica missed.
        Returns the etcd revision to follow from."""
        while True:
            try:
                snapshot = await self.store.open()
                break
            except OSError as exc:
                self.connected = False
                log.warning("the registry cannot read etcd: %s", exc)
                await asyncio.sleep(_RETRY_MAX)
        async with self.lock:
            self._catch_up_with(snapshot)
        self._advance()
        return self.store.opened_at

    def _catch_up_with(self, snapshot: Snapshot) -> None:
        state = self.state
        missed = [e for e in snapshot.events if e.revision > state.revision]
        if snapshot.revision > state.revision and (
            not missed or missed[0].revision != state.revision + 1
        ):
            # The history this replica missed is gone: start again from the agents.
            log.error(
                "registry replica at revision %d, etcd at %d without the history between: "
                "reloading; its watches end (UNAVAILABLE) and resume from the history kept",
                state.revision,
                snapshot.revision,
            )
            fresh = RegistryState(
                history_limit=state.history_limit,
                history_byte_limit=state.history_byte_limit,
                request_limit=state.request_limit,
                request_byte_limit=state.request_byte_limit,
            )
            load_state(fresh, snapshot)
            vars(state).update(vars(fresh))
            self.registry.hub.end_all(
                errors.Unavailable("the registry reloaded its state; watch again", retry_after=1.0)
            )
        elif missed:
            self._install_events(missed)
        self.leases = dict(self.store.leases)
        self._seen_etcd = max(self._seen_etcd, self.store.opened_at)
        # Lease keys deleted while the watch was away: those leases lapsed.
        for agent in list(state.agents.values()):
            lease = self.leases.get(agent.name)
            if lease is None or lease.epoch != agent.epoch:
                self._expire(agent.name, agent.epoch)

    def _install(self, change: RemoteChange) -> None:
        theirs = [e for e in change.events if e.revision > self.state.revision]
        if theirs:
            self._others_wrote_at = time.monotonic()
        self._install_events(theirs)
        self._seen_etcd = change.etcd_revision
        state = self.state
        for stored in change.requests:
            record = read_request(stored, self.store.source)
            if record is not None:
                state.remember(stored.owner, stored.request_id, record)
        for owner, request_id in change.forgotten:
            state.forget_request(owner, request_id)
        self.registry.forget_requests(state.trim_requests())
        for name, lease in change.leases.items():
            agent = state.agents.get(name)
            if agent is not None and agent.epoch == lease.epoch:
                self.leases[name] = lease
        for name, lease in change.lapsed.items():
            current = self.leases.get(name)
            if current is None or current.lease_id != lease.lease_id:
                continue  # an old lease the agent no longer holds (moved, re-registered)
            del self.leases[name]
            agent = state.agents.get(name)
            if agent is not None and agent.epoch == lease.epoch:
                self._expire(name, lease.epoch)
        self._advance()

    def install_missed(self, stored: list[StoredEvent]) -> None:
        """After losing a commit: install the other replicas' events it read back, if
        they follow this replica's state (the follower brings their idempotency records
        and leases, and whatever a limited read left out)."""
        new = [e for e in stored if e.revision > self.state.revision]
        if new and new[0].revision == self.state.revision + 1:
            self._others_wrote_at = time.monotonic()
            self._install_events(new)
            self._advance()

    def _install_events(self, stored: list[StoredEvent]) -> None:
        if not stored:
            return
        state = self.state
        if stored[0].revision != state.revision + 1:
            raise errors.Internal(
                f"etcd delivered registry revision {stored[0].revision} after {state.revision}"
            )
        events = read_events(
            stored, self.store.source, state.history[-1] if state.history else None
        )
        state.install(events)
        self._leases_after(events, {}, revoke=False)
        self.registry.publish(events)

    # --- expiry ---------------------------------------------------------------------------------

    def _expire(self, name: str, epoch: int) -> None:
        """etcd expired the lease of (`name`, `epoch`): commit its EXPIRED event."""
        if name not in self._expiring:
            self._expiring.add(name)
            self._spawn(self._expire_now(name, epoch), f"registry-expire-{name}")

    async def _expire_now(self, name: str, epoch: int) -> None:
        delay = _RETRY_MIN
        try:
            while True:
                agent = self.state.agents.get(name)
                if agent is None or agent.epoch != epoch:
                    return
                try:
                    event = await self.registry.submit(lambda batch: batch.expire(name, epoch))
                except errors.HelixError as exc:
                    log.warning("expiring %s failed, retrying: %s", name, exc.message)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                if event is not None:
                    self.registry.stats.expired += 1
                    log.info("agent expired", extra={"agent": name, "revision": event.revision})
                return
        finally:
            self._expiring.discard(name)


def _with_ttl(
    request: registry_pb2.RegisterAgentRequest, ttl: float
) -> registry_pb2.RegisterAgentRequest:
    copy = registry_pb2.RegisterAgentRequest()
    copy.CopyFrom(request)
    copy.agent.ttl.FromNanoseconds(round(ttl * 1e9))
    return copy


def lease_key(lease_id: int, epoch: int, ttl: float) -> LeaseKey:
    """A LeaseKey as etcd keeps it (the TTL in whole milliseconds)."""
    return LeaseKey(lease_id, epoch, round(ttl, 3))


def _ttl_differs(held: float, wanted: float) -> bool:
    return abs(held - wanted) > 0.002
