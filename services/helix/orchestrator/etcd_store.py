"""The run store on etcd (`--store etcd://…`): runs shared by orchestrator replicas.

Keys under `<prefix>/runs/`:

- `ver/<name>`: the run's version, decimal: every commit compares it (the compare-and-set
  of `RunStore.commit`) and sets it, in the commit's final transaction.
- `run/<name>`: the record: a small JSON head (owner, state, times, version, and the
  manifest: which blobs hold the checkpoint, the populations, the pinned DNA and the spec)
  and the Run message.
- `blob/<name>/<version, 12 digits>/<kind>[/<generation>]/<chunk, 4 digits>`: the large
  values (checkpoint, populations, pinned DNA, spec) in chunks of 256 KiB, written under
  the version that introduced them *before* the final transaction and made current by it
  (the manifest in `run/<name>`): etcd takes at most 1.5 MiB and 128 operations per
  transaction, a population can be larger. A commit that loses the compare deletes what it
  wrote; the old blobs a commit replaces go in its final transaction.
- `event/<name>/<sequence, 20 digits>`: the run's events, trimmed by `keep_events`.
- `cand/<name>/<candidate id>`: retained candidates (upserted in transactions of their own
  before the final one, since a generation may add a thousand; they are deterministic, so
  a candidate seen a moment before its generation's commit is the one the run will have);
  the rows `keep_best` drops go after it.
- `req/<sha256(owner, request_id)>`: CreateRun idempotency records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from helix.common import errors
from helix.etcd import EtcdClient, ops, prefix_end
from helix.orchestrator.store import (
    CandidatePage,
    RequestExists,
    RunCommit,
    RunConflict,
    RunExists,
    StoreCorrupt,
    StoredCandidate,
    StoredEvent,
    StoredRun,
    StoredRunRequest,
    StoreError,
)

CHUNK = 256 * 1024
TXN_OPS = 100  # of etcd's 128
TXN_BYTES = 1024 * 1024  # of etcd's 1.5 MiB
_UNFINISHED = (1, 2)  # RUN_STATE_PENDING, RUN_STATE_RUNNING
_CANDIDATE_HEAD = struct.Struct(">dibb")  # key, status, best, failed
_INDEXES = 64  # runs whose candidate index a store keeps (the runs it drives)
PRUNE_BATCH = 20


@dataclass
class _Record:
    run: StoredRun
    # The blobs current for this version: each a blob id ("<version>-<token>", unique to
    # the commit that wrote it; "" none).
    checkpoint: str = ""
    populations: dict[int, str] = field(default_factory=dict)  # generation -> blob id
    pinned: str = ""
    spec: str = ""
    request: str = ""  # the key of its idempotency record
    digests: dict[str, str] = field(default_factory=dict)  # of the pinned DNA and the spec

    def encode(self) -> bytes:
        run = self.run
        head = {
            "owner": run.owner,
            "state": run.state,
            "create": run.create_time_ns,
            "version": run.version,
            "end": run.end_time_ns,
            "checkpoint": self.checkpoint,
            "populations": sorted(self.populations.items()),
            "pinned": self.pinned,
            "spec": self.spec,
            "request": self.request,
            "digests": self.digests,
        }
        encoded = json.dumps(head, separators=(",", ":")).encode()
        return struct.pack(">I", len(encoded)) + encoded + run.run


@dataclass
class _Index:
    """The retained candidates of a run this store commits: id -> (key, status, best,
    failed), as of `version`."""

    version: int
    rows: dict[str, tuple[float, int, bool, bool]] = field(default_factory=dict)


class EtcdRunStore:
    """`RunStore` on etcd (see the module's docstring)."""

    def __init__(self, client: EtcdClient, prefix: str = "/helix", *, owns_client: bool = False):
        root = prefix.rstrip("/").encode() + b"/runs/"
        self.client = client
        self.root = root
        self.source = f"etcd {','.join(client.endpoints)} {root.decode()}"
        self._owns_client = owns_client
        self._indexes: OrderedDict[str, _Index] = OrderedDict()
        self._written: OrderedDict[str, _Record] = OrderedDict()
        self._closed = False

    # --- keys ------------------------------------------------------------------------------

    def _key(self, kind: str, name: str, *rest: str) -> bytes:
        return b"/".join([self.root + kind.encode(), name.encode(), *(r.encode() for r in rest)])

    def _blob(self, name: str, blob_id: str, kind: str) -> bytes:
        return self._key("blob", name, blob_id, kind) + b"/"

    def _event(self, name: str, sequence: int) -> bytes:
        return self._key("event", name, f"{sequence:020d}")

    def _request(self, owner: str, request_id: str) -> bytes:
        digest = hashlib.sha256(f"{owner}\0{request_id}".encode()).hexdigest()[:40]
        return self.root + b"req/" + digest.encode()

    # --- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Check that etcd answers (StoreError naming it when it does not)."""
        try:
            await self.client.get(self.root + b"ver")
        except errors.HelixError as exc:
            raise StoreError(f"{self.source}: cannot reach the run store: {exc.message}") from None

    async def close(self) -> None:
        self._closed = True
        if self._owns_client:
            await self.client.close()

    async def _call(self, what: str, coroutine: Any) -> Any:
        """Await an etcd call: etcd unreachable is UNAVAILABLE (the caller retries, a
        run is resumed later), anything else a StoreError."""
        if self._closed:
            coroutine.close()
            raise StoreError(f"{self.source}: the run store is closed")
        try:
            return await coroutine
        except errors.Unavailable as exc:
            raise errors.Unavailable(
                f"{self.source}: {what} failed: {exc.message}", retry_after=1.0
            ) from None
        except errors.HelixError as exc:
            raise StoreError(f"{self.source}: {what} failed: {exc.message}") from None

    # --- records ---------------------------------------------------------------------------

    def _decode(self, key: bytes, value: bytes) -> _Record:
        try:
            (size,) = struct.unpack_from(">I", value)
            head = json.loads(value[4 : 4 + size])
            run = StoredRun(
                key[len(self.root) + 4 :].decode(),
                str(head["owner"]),
                int(head["state"]),
                int(head["create"]),
                int(head["version"]),
                value[4 + size :],
                b"",
                b"",
                int(head["end"]),
            )
            return _Record(
                run,
                str(head["checkpoint"]),
                {int(g): str(v) for g, v in head["populations"]},
                str(head["pinned"]),
                str(head["spec"]),
                str(head["request"]),
                {str(k): str(v) for k, v in head["digests"].items()},
            )
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise StoreCorrupt(
                f"{self.source}: corrupt run record {key!r} ({exc}); delete it to drop the run"
            ) from None

    async def _record(self, name: str) -> _Record | None:
        kv = await self._call(f"reading {name}", self.client.get(self._key("run", name)))
        return self._decode(kv.key, kv.value) if kv is not None else None

    async def _read_blob(self, base: bytes) -> bytes:
        parts = []
        async for page in self.client.scan_prefix(base):
            parts += [kv.value for kv in page.kvs]
        return b"".join(parts)

    async def _with_blobs(self, record: _Record) -> StoredRun:
        name, run = record.run.name, record.run
        pinned = spec = b""
        if record.pinned:
            pinned = await self._read_blob(self._blob(name, record.pinned, "pinned"))
        if record.spec:
            spec = await self._read_blob(self._blob(name, record.spec, "spec"))
        return StoredRun(
            run.name,
            run.owner,
            run.state,
            run.create_time_ns,
            run.version,
            run.run,
            pinned,
            spec,
            run.end_time_ns,
        )

    # --- writes ----------------------------------------------------------------------------

    async def create(
        self, run: StoredRun, event: StoredEvent, request: StoredRunRequest | None
    ) -> None:
        record = _Record(run)
        writes = []
        blob_id = _blob_id(run.version)
        for kind, value in (("pinned", run.pinned), ("spec", run.spec)):
            if value:
                setattr(record, kind, blob_id)
                record.digests[kind] = _digest(value)
                writes += _chunks(self._blob(run.name, blob_id, kind), value)
        compare = [ops.absent(self._key("run", run.name))]
        success = [
            ops.put(self._key("ver", run.name), str(run.version).encode()),
            ops.put(self._event(run.name, event.sequence), event.event),
            *(ops.put(k, v) for k, v in writes),
        ]
        if request is not None:
            key = self._request(request.owner, request.request_id)
            record.request = key.decode()
            compare.append(ops.absent(key))
            success.append(ops.put(key, _encode_request(request)))
        success.append(ops.put(self._key("run", run.name), record.encode()))
        reply = await self._call(f"creating {run.name}", self.client.txn(compare, success))
        if reply.succeeded:
            self._remember(record)
            return
        if request is not None and await self.find_request(request.owner, request.request_id):
            raise RequestExists(request.request_id)
        raise RunExists(run.name)

    async def forget_requests(self, before: float) -> None:
        stale = []
        async for page in self.client.scan_prefix(self.root + b"req/"):
            for kv in page.kvs:
                with contextlib.suppress(ValueError, KeyError):
                    if _decode_request(kv.value).created_at < before:
                        stale.append(ops.delete(kv.key))
        await self._in_batches("forgetting requests", stale)

    async def _in_batches(
        self,
        what: str,
        operations: Sequence[ops.RequestOp],
        compare: Sequence[ops.Compare] = (),
        name: str = "",
    ) -> None:
        """Operations in transactions within etcd's limits, each conditional on `compare`
        (RunConflict for run `name` when one fails)."""
        batch: list[ops.RequestOp] = []
        size = 0

        async def send() -> None:
            reply = await self._call(what, self.client.txn(compare, batch))
            if not reply.succeeded:
                raise RunConflict(name)

        for op in operations:
            op_size = op.ByteSize()
            if batch and (len(batch) >= TXN_OPS or size + op_size > TXN_BYTES):
                await send()
                batch, size = [], 0
            batch.append(op)
            size += op_size
        if batch:
            await send()

    async def commit(self, change: RunCommit) -> None:
        """One transaction when the commit fits in one (a generation of a population in
        the hundreds); else its large values and candidates first, in as many as they
        need — each conditional on the run's version and owner too — then the final
        compare-and-set (module docstring)."""
        run = change.run
        name, version = run.name, run.version
        record = self._written.get(name)
        if (
            record is None
            or record.run.version != change.expected_version
            or record.run.create_time_ns != run.create_time_ns
        ):
            record = await self._record(name)
        if record is None or record.run.version != change.expected_version:
            raise RunConflict(name)
        new = _Record(
            run,
            record.checkpoint,
            dict(record.populations),
            record.pinned,
            record.spec,
            record.request,
            dict(record.digests),
        )
        blob_id = _blob_id(version)
        blobs, dropped = self._blob_changes(record, new, change, blob_id)
        # The candidate index comes out while the commit is in flight: it goes back, at
        # the new version, only if the commit succeeds.
        index = self._indexes.pop(name, None)
        index, candidates = await self._candidate_ops(name, change, index)
        before = [ops.put(k, v) for k, v in blobs] + list(candidates.values())
        events = list(change.events)
        start = self._key("event", name) + b"/"
        final = [
            ops.put(self._key("ver", name), str(version).encode()),
            ops.put(self._key("run", name), new.encode()),
            *(ops.delete_range(base, prefix_end(base)) for base in dropped),
        ]
        if change.keep_events and events and events[-1].sequence > change.keep_events:
            first_kept = events[-1].sequence - change.keep_events + 1
            final.append(ops.delete_range(start, self._event(name, first_kept)))
            events = [e for e in events if e.sequence >= first_kept]  # one op per key
        final += [ops.put(self._event(name, e.sequence), e.event) for e in events]
        compare = [ops.value(self._key("ver", name), str(change.expected_version).encode())]
        if change.fence is not None:
            compare.append(ops.value(*change.fence))
        try:
            if _fits([*before, *final]):
                final, before = [*before, *final], []
            else:
                await self._in_batches(f"writing {name}", before, compare, name)
            reply = await self._call(f"committing {name}", self.client.txn(compare, final))
            if not reply.succeeded:
                raise RunConflict(name)
        except BaseException:
            self._written.pop(name, None)
            if blobs:  # this commit's own blobs (their base is unique to it)
                base = self._key("blob", name, blob_id) + b"/"
                with contextlib.suppress(StoreError, errors.HelixError):
                    await self._call(
                        "dropping a lost commit", self.client.delete(base, prefix=True)
                    )
            raise
        if index is not None:
            index.version = version
            self._keep_index(name, index)
        self._remember(new)

    def _remember(self, record: _Record) -> None:
        """Keep the record this store last wrote of a run (its next commit need not read
        it back); bounded like the candidate indexes."""
        self._written[record.run.name] = record
        self._written.move_to_end(record.run.name)
        while len(self._written) > _INDEXES:
            self._written.popitem(last=False)

    def _blob_changes(
        self, record: _Record, new: _Record, change: RunCommit, blob_id: str
    ) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        """The blobs a commit writes before its final transaction (key, chunk), under
        `blob_id`, and the bases of those it replaces; `new`'s manifest follows."""
        name = change.run.name
        early: list[tuple[bytes, bytes]] = []  # blobs written before the final transaction
        dropped: list[bytes] = []  # blob bases the commit replaces
        if change.checkpoint is not None:
            early += _chunks(self._blob(name, blob_id, "checkpoint"), change.checkpoint)
            if record.checkpoint:
                dropped.append(self._blob(name, record.checkpoint, "checkpoint"))
            new.checkpoint = blob_id
        if change.population is not None:
            generation, population = change.population
            early += _chunks(self._population(name, generation, blob_id), population)
            if generation in new.populations:
                dropped.append(self._population(name, generation, new.populations[generation]))
            new.populations[generation] = blob_id
            if change.keep_generations:
                for old in [
                    g for g in new.populations if g <= generation - change.keep_generations
                ]:
                    dropped.append(self._population(name, old, new.populations.pop(old)))
        self._fixed_blobs(record, new, change.run, blob_id, early, dropped)
        return early, dropped

    def _fixed_blobs(
        self,
        record: _Record,
        new: _Record,
        run: StoredRun,
        blob_id: str,
        early: list[tuple[bytes, bytes]],
        dropped: list[bytes],
    ) -> None:
        """The pinned DNA and the spec, fixed once a run starts: written when they change."""
        for kind, value in (("pinned", run.pinned), ("spec", run.spec)):
            old_id = getattr(record, kind)
            digest = _digest(value) if value else ""
            if digest != record.digests.get(kind, ""):
                if value:
                    early.extend(_chunks(self._blob(run.name, blob_id, kind), value))
                if old_id:
                    dropped.append(self._blob(run.name, old_id, kind))
                setattr(new, kind, blob_id if value else "")
                new.digests[kind] = digest

    def _population(self, name: str, generation: int, blob_id: str) -> bytes:
        return self._blob(name, blob_id, f"population/{generation:012d}")

    async def _candidate_ops(
        self, name: str, change: RunCommit, index: _Index | None
    ) -> tuple[_Index | None, dict[bytes, ops.RequestOp]]:
        """The writes of the commit's candidates — upserts, then what `keep_best` drops
        (one operation per key: etcd refuses two on one key in a transaction) — and the
        index as it will be once they are applied (None: not loaded, nothing to write)."""
        if index is not None and index.version != change.expected_version:
            index = None  # another writer changed the run since: read it again
        if not change.candidates:
            return index, {}
        if index is None:
            index = await self._load_index(name, change.expected_version)
        written: dict[str, StoredCandidate] = {}
        for c in change.candidates:
            old = index.rows.get(c.candidate_id)
            best = c.best or (old is not None and old[2])
            failed = c.failed or (old is not None and old[3])
            if old is not None and old == (c.key, c.status, best, failed):
                continue
            row = StoredCandidate(c.candidate_id, c.key, c.status, best, failed, c.scored)
            if old is not None:  # keep the stored row's content, as SQLite's upsert does
                row = StoredCandidate(c.candidate_id, old[0], old[1], best, failed, c.scored)
            index.rows[c.candidate_id] = (row.key, row.status, best, failed)
            written[c.candidate_id] = row
        result = {
            self._key("cand", name, cid): ops.put(
                self._key("cand", name, cid), _encode_candidate(r)
            )
            for cid, r in written.items()
        }
        if change.keep_best:
            await self._keep_best(name, change.keep_best, index, written, result)
        return index, result

    async def _keep_best(
        self,
        name: str,
        keep: int,
        index: _Index,
        written: dict[str, StoredCandidate],
        result: dict[bytes, ops.RequestOp],
    ) -> None:
        """Into `result`: the rows beyond the best `keep` lose `best` (deleted unless
        failed)."""
        ranked = sorted((row[0], cid) for cid, row in index.rows.items() if row[2])
        for _, cid in ranked[keep:]:
            key, status, _, failed = index.rows[cid]
            row_key = self._key("cand", name, cid)
            if not failed:
                del index.rows[cid]
                result[row_key] = ops.delete(row_key)
                continue
            index.rows[cid] = (key, status, False, True)
            stored = written.get(cid)
            if stored is None:
                kv = await self._call("reading a candidate", self.client.get(row_key))
                stored = _decode_candidate(cid, kv.value) if kv is not None else None
            if stored is not None:
                unmarked = StoredCandidate(
                    cid, stored.key, stored.status, False, True, stored.scored
                )
                result[row_key] = ops.put(row_key, _encode_candidate(unmarked))

    async def _load_index(self, name: str, version: int) -> _Index:
        index = _Index(version)
        async for page in self.client.scan_prefix(self._key("cand", name) + b"/"):
            for kv in page.kvs:
                cid = kv.key.rsplit(b"/", 1)[1].decode()
                row = _decode_candidate(cid, kv.value)
                index.rows[cid] = (row.key, row.status, row.best, row.failed)
        return index

    def _keep_index(self, name: str, index: _Index) -> None:
        self._indexes[name] = index
        self._indexes.move_to_end(name)
        while len(self._indexes) > _INDEXES:
            self._indexes.popitem(last=False)

    async def prune(self, *, owner: str | None, keep: int, ended_before_ns: int) -> list[str]:
        finished = [r for r in await self._records() if r.run.state not in _UNFINISHED]
        names: list[str] = []
        if owner is not None:
            mine = sorted(
                (r for r in finished if r.run.owner == owner),
                key=lambda r: (-r.run.create_time_ns, r.run.name),
            )
            names += [r.run.name for r in mine[max(keep, 0) :]][:PRUNE_BATCH]
        if ended_before_ns > 0 and len(names) < PRUNE_BATCH:
            names += [
                r.run.name
                for r in finished
                if 0 < r.run.end_time_ns < ended_before_ns and r.run.name not in names
            ][: PRUNE_BATCH - len(names)]
        by_name = {r.run.name: r for r in finished}
        deleted = []
        for name in sorted(set(names)):
            record = by_name[name]
            success = [
                ops.delete_range(
                    self._key(kind, name) + b"/", prefix_end(self._key(kind, name) + b"/")
                )
                for kind in ("event", "blob", "cand")
            ]
            success += [ops.delete(self._key("run", name)), ops.delete(self._key("ver", name))]
            if record.request:
                success.append(ops.delete(record.request.encode()))
            compare = [ops.value(self._key("ver", name), str(record.run.version).encode())]
            reply = await self._call(f"deleting {name}", self.client.txn(compare, success))
            if reply.succeeded:
                deleted.append(name)
                self._indexes.pop(name, None)
                self._written.pop(name, None)
        return deleted

    # --- reads -----------------------------------------------------------------------------

    async def _records(self) -> list[_Record]:
        records = []
        async for page in self.client.scan_prefix(self.root + b"run/"):
            records += [self._decode(kv.key, kv.value) for kv in page.kvs]
        return records

    async def find_request(self, owner: str, request_id: str) -> StoredRunRequest | None:
        kv = await self._call(
            "reading a request", self.client.get(self._request(owner, request_id))
        )
        if kv is None:
            return None
        try:
            return _decode_request(kv.value)
        except (ValueError, KeyError) as exc:
            raise StoreCorrupt(f"{self.source}: corrupt request record {kv.key!r}: {exc}") from None

    async def get(self, name: str) -> StoredRun | None:
        record = await self._record(name)
        return await self._with_blobs(record) if record is not None else None

    async def list_runs(
        self,
        *,
        owner: str | None,
        state: int,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[StoredRun]:
        runs = [
            r.run
            for r in await self._call("listing runs", self._records())
            if (owner is None or r.run.owner == owner) and (not state or r.run.state == state)
        ]
        runs.sort(key=lambda r: (-r.create_time_ns, r.name))
        if after is not None:
            runs = [r for r in runs if (-r.create_time_ns, r.name) > (-after[0], after[1])]
        return [await self.get(r.name) or r for r in runs[:limit]]

    async def unfinished(self) -> list[StoredRun]:
        records = [
            r
            for r in await self._call("listing runs", self._records())
            if r.run.state in _UNFINISHED
        ]
        records.sort(key=lambda r: (r.run.create_time_ns, r.run.name))
        return [await self._with_blobs(r) for r in records]

    async def events(self, name: str, after: int, limit: int) -> list[StoredEvent]:
        base = self._key("event", name) + b"/"
        page = await self._call(
            f"reading the events of {name}",
            self.client.range_prefix(
                base, limit=limit, after=self._event(name, after) if after > 0 else b""
            ),
        )
        return [StoredEvent(int(kv.key[len(base) :]), kv.value) for kv in page.kvs]

    async def first_sequence(self, name: str) -> int:
        base = self._key("event", name) + b"/"
        page = await self._call("reading events", self.client.range_prefix(base, limit=1))
        return int(page.kvs[0].key[len(base) :]) if page.kvs else 0

    async def last_sequence(self, name: str) -> int:
        base = self._key("event", name) + b"/"
        kv = await self._call("reading events", self.client.last_in_prefix(base))
        return int(kv.key[len(base) :]) if kv is not None else 0

    async def checkpoint(self, name: str) -> tuple[bytes, list[tuple[int, bytes]]] | None:
        record = await self._record(name)
        if record is None or not record.checkpoint:
            return None
        checkpoint = await self._read_blob(self._blob(name, record.checkpoint, "checkpoint"))
        populations = [
            (g, await self._read_blob(self._population(name, g, v)))
            for g, v in sorted(record.populations.items())
        ]
        return checkpoint, populations

    async def candidates(
        self, name: str, *, status: int, after: tuple[float, str] | None, limit: int
    ) -> CandidatePage:
        rows = []
        async for page in self.client.scan_prefix(self._key("cand", name) + b"/"):
            for kv in page.kvs:
                cid = kv.key.rsplit(b"/", 1)[1].decode()
                row = _decode_candidate(cid, kv.value)
                if status and row.status != status:
                    continue
                if after is not None and (row.key, cid) <= after:
                    continue
                rows.append(row)
        rows.sort(key=lambda c: (c.key, c.candidate_id))
        return CandidatePage(rows[:limit], len(rows) > limit)


def _fits(operations: Sequence[ops.RequestOp]) -> bool:
    """Whether the operations fit in one etcd transaction (with room to spare)."""
    return len(operations) <= TXN_OPS and sum(op.ByteSize() for op in operations) <= TXN_BYTES


def _chunks(base: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (base + b"%04d" % (i // CHUNK), value[i : i + CHUNK])
        for i in range(0, max(len(value), 1), CHUNK)
    ]


def _encode_candidate(c: StoredCandidate) -> bytes:
    return _CANDIDATE_HEAD.pack(c.key, c.status, c.best, c.failed) + c.scored


def _decode_candidate(candidate_id: str, value: bytes) -> StoredCandidate:
    key, status, best, failed = _CANDIDATE_HEAD.unpack_from(value)
    return StoredCandidate(
        candidate_id, key, status, bool(best), bool(failed), value[_CANDIDATE_HEAD.size :]
    )


def _encode_request(r: StoredRunRequest) -> bytes:
    return json.dumps(
        {
            "owner": r.owner,
            "request_id": r.request_id,
            "fingerprint": r.fingerprint.hex(),
            "name": r.name,
            "created_at": r.created_at,
        }
    ).encode()


def _decode_request(value: bytes) -> StoredRunRequest:
    d = json.loads(value)
    return StoredRunRequest(
        d["owner"], d["request_id"], bytes.fromhex(d["fingerprint"]), d["name"], d["created_at"]
    )


def _digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:32]


def _blob_id(version: int) -> str:
    """A blob id unique to one commit attempt: two writers of one version (a successor,
    and a predecessor that has not noticed yet) never write, or delete, each other's."""
    return f"{version:012d}-{secrets.token_hex(4)}"
