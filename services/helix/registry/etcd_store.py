"""The registry's state in etcd: one source of truth that several registry replicas share.

Keys, under `<prefix>/registry/`:

- `revision`: the registry's revision counter, decimal. Every commit compares it with the
  revision the committing replica's state is at and sets it to the batch's last revision,
  in the same transaction as the batch's changes: registry revisions stay one counter
  that grows by exactly one per change (registry.proto), whatever else the cluster stores
  (etcd's own revision grows with every write to any key, runs included, and by one per
  transaction, not per change). A replica whose state is behind loses the compare
  (`StoreConflict`), catches up and applies its batch again.
- `agents/<id>`: each registered agent (the Agent message; its name is `agents/<id>`).
- `events/<revision, 20 digits>`: the retained history, one event per revision (what a
  watch replays and what other replicas install); trimmed in the commits, like SQLite's.
- `requests/<digest>`: RegisterAgent idempotency records (owner and request_id inside).
- `leases/<name>`: `<epoch> <ttl ms>`, attached to the agent's etcd lease: when etcd
  expires the lease it deletes this key, and a replica that sees the deletion commits the
  agent's EXPIRED event (the first to commit wins; the others find it done).

Replicas follow the prefix with one etcd watch from the revision they read on open, so
each installs every other replica's events in revision order (`follow`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import struct
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field

from helix.common import errors
from helix.etcd import EtcdClient, Renewer, Watch, ops, prefix_end
from helix.registry.store import (
    EVENT_PUT,
    Snapshot,
    StoreConflict,
    StoreCorrupt,
    StoredEvent,
    StoredRequest,
    StoreError,
)

# etcd refuses transactions of more than 128 operations (--max-txn-ops) or 1.5 MiB
# (--max-request-bytes) by default; a batch stays within these, with room to spare.
MAX_TXN_OPS = 120
MAX_TXN_BYTES = 1024 * 1024
OPS_PER_EVENT = 4  # the agent, the event, an idempotency record, a lease key
_CATCH_UP_READ = 256  # events a losing commit reads back at most
_EVENT_HEAD = struct.Struct(">BBBHI")  # type, reason, has prev, name and agent lengths
_REQUEST_HEAD = struct.Struct(">qdHHB")  # revision, created_at, owner, request_id, digest lengths


@dataclass(frozen=True, slots=True)
class LeaseKey:
    """The etcd lease that holds an agent's registration `epoch` alive, of `ttl` seconds."""

    lease_id: int
    epoch: int
    ttl: float


@dataclass
class RemoteChange:
    """What one etcd revision changed under the registry's prefix, as a replica installs
    it: events (consecutive registry revisions), idempotency records added and dropped,
    lease keys set (a LeaseKey) or deleted (None, with the last LeaseKey in `lapsed`)."""

    etcd_revision: int
    events: list[StoredEvent] = field(default_factory=list)
    requests: list[StoredRequest] = field(default_factory=list)
    forgotten: list[tuple[str, str]] = field(default_factory=list)
    leases: dict[str, LeaseKey] = field(default_factory=dict)
    lapsed: dict[str, LeaseKey] = field(default_factory=dict)


def encode_event(event: StoredEvent) -> bytes:
    prev, name = event.prev, event.name.encode()
    head = _EVENT_HEAD.pack(event.type, event.reason, prev is not None, len(name), len(event.agent))
    return head + name + event.agent + (prev or b"")


def decode_event(revision: int, value: bytes) -> StoredEvent:
    try:
        type_, reason, has_prev, name_size, size = _EVENT_HEAD.unpack_from(value)
    except struct.error:
        raise ValueError("too short for an event") from None
    at = _EVENT_HEAD.size
    name = value[at : at + name_size].decode()
    at += name_size
    agent = value[at : at + size]
    if len(agent) != size:
        raise ValueError("truncated")
    prev = value[at + size :] if has_prev else None
    return StoredEvent(revision, type_, name, agent, prev, reason)


def encode_request(request: StoredRequest) -> bytes:
    owner, request_id = request.owner.encode(), request.request_id.encode()
    head = _REQUEST_HEAD.pack(
        request.revision, request.created_at, len(owner), len(request_id), len(request.fingerprint)
    )
    return head + owner + request_id + request.fingerprint + request.response


def decode_request(value: bytes) -> StoredRequest:
    try:
        revision, created_at, owner_len, id_len, digest_len = _REQUEST_HEAD.unpack_from(value)
    except struct.error:
        raise ValueError("too short for an idempotency record") from None
    at = _REQUEST_HEAD.size
    owner = value[at : at + owner_len].decode()
    at += owner_len
    request_id = value[at : at + id_len].decode()
    at += id_len
    digest = value[at : at + digest_len]
    at += digest_len
    return StoredRequest(owner, request_id, digest, revision, value[at:], created_at)


def _request_key(owner: str, request_id: str) -> bytes:
    return hashlib.sha256(f"{owner}\0{request_id}".encode()).hexdigest()[:40].encode()


def encode_lease(epoch: int, ttl: float) -> bytes:
    return f"{epoch} {round(ttl * 1000)}".encode()


def decode_lease(lease_id: int, value: bytes) -> LeaseKey:
    epoch, ttl_ms = value.split()
    return LeaseKey(lease_id, int(epoch), int(ttl_ms) / 1000)


class EtcdRegistryStore:
    """The registry's `RegistryStore` on etcd, shared by every replica on the same prefix.

    Beyond the protocol it offers what replicas need: commits conditional on the revision
    (`StoreConflict`), the changes other replicas make (`follow`), a linearizable read of
    the revision (`current`), and agent leases (`grant`, `renew`, `revoke`).
    """

    shared = True

    def __init__(self, client: EtcdClient, prefix: str = "/helix", *, owns_client: bool = False):
        root = prefix.rstrip("/").encode() + b"/registry/"
        self.client = client
        self.root = root
        self._revision_key = root + b"revision"
        self._agents = root + b"agents/"
        self._events = root + b"events/"
        self._requests = root + b"requests/"
        self._leases = root + b"leases/"
        self._owns_client = owns_client
        self._renewer = Renewer(client)
        self.source = f"etcd {','.join(client.endpoints)} {root.decode()}"
        # Set by open: the etcd revision the snapshot was read at, and the agents' leases.
        self.opened_at = 0
        self.last_commit = 0  # the etcd revision of the last commit
        self.leases: dict[str, LeaseKey] = {}

    def _event_key(self, revision: int) -> bytes:
        return self._events + b"%020d" % revision

    # --- open -------------------------------------------------------------------------------

    async def open(self, *, accept_loss: bool = False) -> Snapshot:
        """Everything under the prefix, read at one etcd revision (`opened_at`)."""
        del accept_loss  # etcd keeps what it acknowledged on a quorum; nothing to accept
        snapshot = Snapshot(source=self.source)
        leases: dict[str, LeaseKey] = {}
        try:
            async for page in self.client.scan_prefix(self.root):
                self.opened_at = page.revision
                for kv in page.kvs:
                    self._load(kv, snapshot, leases)
        except errors.HelixError as exc:
            raise StoreError(f"{self.source}: cannot read the registry: {exc.message}") from None
        snapshot.events.sort(key=lambda e: e.revision)
        snapshot.requests.sort(key=lambda r: r.created_at)
        self.leases = leases
        return snapshot

    def _load(self, kv: ops.KeyValue, snapshot: Snapshot, leases: dict[str, LeaseKey]) -> None:
        key = kv.key
        try:
            if key == self._revision_key:
                snapshot.revision = int(kv.value)
            elif key.startswith(self._agents):
                snapshot.agents[key[len(self.root) :].decode()] = kv.value
            elif key.startswith(self._events):
                revision = int(key[len(self._events) :])
                snapshot.events.append(decode_event(revision, kv.value))
            elif key.startswith(self._requests):
                snapshot.requests.append(decode_request(kv.value))
            elif key.startswith(self._leases):
                leases[key[len(self._leases) :].decode()] = decode_lease(kv.lease, kv.value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreCorrupt(
                f"{self.source}: corrupt record {key!r}: {exc}. The registry did not start "
                "and changed nothing; restore etcd from a snapshot, or delete that key"
            ) from None

    # --- commit -----------------------------------------------------------------------------

    async def commit(  # noqa: PLR0913 - the protocol's arguments and the shared ones
        self,
        events: Sequence[StoredEvent],
        requests: Sequence[StoredRequest],
        *,
        forget_events_before: int = 0,
        forget_requests_before: float = 0.0,
        forget_requests: Sequence[tuple[str, str]] = (),
        base_revision: int = 0,
        leases: Mapping[str, LeaseKey] | None = None,
    ) -> None:
        """Write one batch in one transaction if the registry is still at `base_revision`
        (`StoreConflict` otherwise, nothing written); `last_commit` is then the etcd
        revision of the write. Idempotency records to forget go in transactions of their
        own afterwards (they are a retry cache; one left behind is forgotten again later)."""
        del forget_requests_before  # the engine names the records it forgets
        success, request_keys = self._writes(
            events, requests, leases or {}, forget_events_before, base_revision
        )
        compare = [
            ops.value(self._revision_key, str(base_revision).encode())
            if base_revision
            else ops.absent(self._revision_key)
        ]
        # A request_id another replica answered first (this one has not seen its record
        # yet): the retry must get that answer, not register again.
        compare += [ops.absent(key) for key in request_keys]
        # When another replica committed first: the revision, and the events this one
        # missed (so it catches up at once instead of waiting for its watch).
        missed = ops.get(
            self._event_key(base_revision + 1), prefix_end(self._events), limit=_CATCH_UP_READ
        )
        try:
            reply = await self.client.txn(
                compare,
                success,
                [ops.get(self._revision_key), missed, *(ops.get(k) for k in request_keys)],
            )
        except errors.HelixError as exc:
            raise StoreError(f"{self.source}: commit failed: {exc.message}") from None
        if not reply.succeeded:
            kvs = reply.responses[0].response_range.kvs
            try:
                events = [
                    decode_event(int(kv.key[len(self._events) :]), kv.value)
                    for kv in reply.responses[1].response_range.kvs
                ]
            except ValueError:
                events = []  # the follower will say what is wrong
            answered = [kv.mod_revision for r in reply.responses[2:] for kv in r.response_range.kvs]
            raise StoreConflict(int(kvs[0].value) if kvs else 0, events, max(answered, default=0))
        self.last_commit = reply.header.revision
        if forget_requests:
            await self._forget(forget_requests)

    async def _forget(self, keys: Sequence[tuple[str, str]]) -> None:
        deletes = [ops.delete(self._requests + _request_key(o, r)) for o, r in keys]
        try:
            for start in range(0, len(deletes), MAX_TXN_OPS):
                await self.client.txn([], deletes[start : start + MAX_TXN_OPS])
        except errors.HelixError:
            pass  # forgotten again by a later commit (the records are bounded in memory)

    async def attach(self, name: str, lease: LeaseKey, *, replacing: int | None) -> bool:
        """Attach agent `name`'s lease key to `lease` (outside the registry's revisions: a
        lease is not registry state): only if the key is still on lease `replacing`, or
        absent when that is None (else nothing is written and this returns False)."""
        key = self._leases + name.encode()
        compare = [ops.absent(key) if replacing is None else ops.lease(key, replacing)]
        put = ops.put(key, encode_lease(lease.epoch, lease.ttl), lease=lease.lease_id)
        try:
            reply = await self.client.txn(compare, [put])
        except errors.HelixError as exc:
            raise errors.Unavailable(
                f"the registry cannot reach etcd: {exc.message}", retry_after=1.0
            ) from None
        return reply.succeeded

    def _writes(
        self,
        events: Sequence[StoredEvent],
        requests: Sequence[StoredRequest],
        leases: Mapping[str, LeaseKey],
        forget_events_before: int,
        base_revision: int,
    ) -> tuple[list[ops.RequestOp], list[bytes]]:
        """A commit's operations, and the keys of the idempotency records it stores."""
        success: list[ops.RequestOp] = []
        final: dict[str, StoredEvent] = {}  # etcd refuses two ops on one key in a txn
        for event in events:
            final[event.name] = event
            success.append(ops.put(self._event_key(event.revision), encode_event(event)))
        for name, event in final.items():
            key = self.root + name.encode()
            put = event.type == EVENT_PUT
            success.append(ops.put(key, event.agent) if put else ops.delete(key))
        request_keys = []
        for request in requests:
            key = self._requests + _request_key(request.owner, request.request_id)
            request_keys.append(key)
            success.append(ops.put(key, encode_request(request)))
        for agent_name, lease in leases.items():
            lease_key = self._leases + agent_name.encode()
            value = encode_lease(lease.epoch, lease.ttl)
            success.append(ops.put(lease_key, value, lease=lease.lease_id))
        last = events[-1].revision if events else base_revision
        success.append(ops.put(self._revision_key, str(last).encode()))
        if events:  # never a key this transaction writes (etcd refuses that)
            forget_events_before = min(forget_events_before, events[0].revision)
        if forget_events_before > 1:
            success.append(ops.delete_range(self._events, self._event_key(forget_events_before)))
        return success, request_keys

    async def current(self) -> tuple[int, int]:
        """The registry's revision as etcd's quorum knows it now (a linearizable read),
        and the etcd revision of the commit that set it."""
        try:
            kv = await self.client.get(self._revision_key)
        except errors.HelixError as exc:
            raise errors.Unavailable(
                f"the registry cannot reach etcd: {exc.message}", retry_after=1.0
            ) from None
        return (int(kv.value), kv.mod_revision) if kv is not None else (0, 0)

    # --- following other replicas -------------------------------------------------------------

    async def follow(self, after: int) -> AsyncGenerator[RemoteChange, None]:
        """Every change under the prefix after etcd revision `after`, one etcd revision at
        a time. Raises `Compacted` when etcd no longer has them (reopen, then follow from
        `opened_at`), `Unavailable` when etcd stays unreachable (`reconnect_within`)."""
        watch = Watch(
            self.client,
            self.root,
            prefix_end(self.root),
            start_revision=after + 1,
            reconnect_within=2.0,
        )
        change: RemoteChange | None = None
        try:
            while True:
                event = await anext(watch)
                revision = event.kv.mod_revision
                if change is None:
                    change = RemoteChange(revision)
                elif change.etcd_revision != revision:
                    yield change
                    change = RemoteChange(revision)
                self._take(event, change)
                if not watch.pending:  # the whole etcd revision has arrived
                    yield change
                    change = None
        finally:
            await watch.close()

    def _take(self, event: ops.Event, change: RemoteChange) -> None:
        kv, key = event.kv, event.kv.key
        deleted = event.type == ops.DELETE
        try:
            if key.startswith(self._events) and not deleted:
                revision = int(key[len(self._events) :])
                change.events.append(decode_event(revision, kv.value))
            elif key.startswith(self._requests):
                if deleted:
                    if event.prev_kv.value:
                        old = decode_request(event.prev_kv.value)
                        change.forgotten.append((old.owner, old.request_id))
                else:
                    change.requests.append(decode_request(kv.value))
            elif key.startswith(self._leases):
                name = key[len(self._leases) :].decode()
                if deleted:
                    if event.prev_kv.value:
                        change.lapsed[name] = decode_lease(event.prev_kv.lease, event.prev_kv.value)
                else:
                    change.leases[name] = decode_lease(kv.lease, kv.value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.Internal(f"{self.source}: unreadable record {key!r}: {exc}") from None

    # --- leases -------------------------------------------------------------------------------

    async def grant(self, ttl: float) -> tuple[int, float]:
        """A new etcd lease of `ttl` seconds: its id and the TTL etcd granted (whole
        seconds, rounded up, and at least etcd's minimum)."""
        lease = await self.client.grant(max(1, math.ceil(ttl)))
        return lease.id, float(lease.ttl)

    async def renew(self, lease_id: int) -> int:
        """Renew a lease now; its TTL, or 0 when etcd has expired it."""
        return await self._renewer.renew(lease_id)

    async def revoke(self, lease_id: int) -> None:
        """End a lease that holds nothing any more (best effort: it lapses anyway)."""
        with contextlib.suppress(errors.HelixError):
            await self.client.revoke(lease_id)

    async def close(self) -> None:
        await self._renewer.close()
        if self._owns_client:
            await self.client.close()
