"""The embedded registry store: one SQLite file in WAL mode, group commits, integrity check.

All database work happens on one dedicated thread (sqlite3 connections belong to their
thread), so the event loop never waits on disk. `commit` writes a whole batch in one
transaction: many concurrent mutations cost one fsync (group commit).

The file shrinks back when its content does: it uses incremental auto-vacuum, and after a
commit that left more than a quarter of its pages free (and at least `VACUUM_MIN_PAGES`),
those pages are given back to the file system. The write-ahead log is checkpointed every
1000 pages (SQLite's default) and truncated back to `WAL_SIZE_LIMIT` after each reset.

A revision marker beside the file (`marker.py`) records the last revision reached:
a database found missing, empty or older than that is refused, changing nothing, unless
the caller accepts the loss (then revisions continue after the marker's).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from helix.registry.marker import MarkerWriter, check_reached, loss_message, read_marker
from helix.registry.marker import marker_path as marker_path_of
from helix.registry.store import (
    EVENT_DELETE,
    Snapshot,
    StoreCorrupt,
    StoredEvent,
    StoredRequest,
    StoreError,
)

log = logging.getLogger("helix.registry")
T = TypeVar("T")
SCHEMA_VERSION = 1
INCREMENTAL = 2  # PRAGMA auto_vacuum
VACUUM_MIN_PAGES = 256
WAL_SIZE_LIMIT = 4 * 1024 * 1024
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS agents (name TEXT PRIMARY KEY, agent BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY,
    type INTEGER NOT NULL,
    name TEXT NOT NULL,
    agent BLOB NOT NULL,
    prev BLOB,
    reason INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    owner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    revision INTEGER NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (owner, request_id)
);
CREATE INDEX IF NOT EXISTS requests_by_age ON requests (created_at);
"""


class SqliteRegistryStore:
    """`RegistryStore` on a SQLite file."""

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = path
        self.marker_path = marker_path_of(path)
        self._synchronous = synchronous.upper()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._marker = MarkerWriter(path)

    async def _run(self, work: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError(f"{self.path}: the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def open(self, *, accept_loss: bool = False) -> Snapshot:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="registry-sqlite"
        )
        try:
            return await self._run(lambda: self._open(accept_loss))
        except BaseException:
            await self.close()
            raise

    def _open(self, accept_loss: bool) -> Snapshot:
        continue_after = self._check_nothing_lost(accept_loss)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        self._db = db
        try:
            # First, so a new file is created with it (an older one needs a VACUUM, below).
            db.execute(f"PRAGMA auto_vacuum={INCREMENTAL}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            db.executescript(SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                db.execute("INSERT INTO meta VALUES ('revision', 0)")
            elif version[0] != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version[0]}, "
                    f"this registry reads {SCHEMA_VERSION}"
                )
            if db.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
                log.warning("%s: rewriting the file once so it can shrink (VACUUM)", self.path)
                db.execute("VACUUM")
            if continue_after is not None:
                self._continue_after(db, continue_after)
            snapshot = self._read_all(db)
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self.path}: {exc}") from None
        self._marker.start(snapshot.revision)
        return snapshot

    def _check_nothing_lost(self, accept_loss: bool) -> int | None:
        """Check the file (read-only) and that it holds every revision the marker says was
        reached. Returns the revision to continue after when a loss is accepted, else
        None; raises `StoreCorrupt` (changing nothing) for a damaged file or a loss."""
        size = self.path.stat().st_size if self.path.exists() else None
        state = "missing" if size is None else "empty" if size == 0 else ""
        stored = self._check_integrity() if not state else 0
        reached = check_reached(self.path, read_marker(self.marker_path), stored, state)
        if reached is None:
            return None
        if not accept_loss:
            raise StoreCorrupt(loss_message(self.path, stored, state, reached))
        log.warning(
            "%s: %s, but the registry had reached revision %d: starting from what is there "
            "as --registry-accept-loss asks; revisions continue after %d",
            self.path,
            f"the database is {state}" if state else f"the database is at revision {stored}",
            reached,
            reached,
        )
        return reached

    @staticmethod
    def _continue_after(db: sqlite3.Connection, revision: int) -> None:
        """Take the revision forward to `revision` and drop the history, which would
        otherwise have a hole where the lost changes were."""
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE meta SET value=? WHERE key='revision'", (revision,))
        db.execute("DELETE FROM events")
        db.execute("COMMIT")

    def _check_integrity(self) -> int:
        """Read-only check of an existing file; refuse (changing nothing) if it is damaged.
        Returns the revision it holds (0 for a file without the registry's tables)."""
        uri = f"file:{self.path}?mode=ro"
        try:
            probe = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as exc:
            raise StoreCorrupt(f"{self.path}: cannot open the registry database ({exc})") from None
        try:
            rows = probe.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                problems = "; ".join(str(r[0]) for r in rows[:3])
                raise StoreCorrupt(
                    f"{self.path}: integrity check failed ({problems}); it was left as it is"
                )
            try:
                found = probe.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
            except sqlite3.OperationalError:  # no meta table: not (yet) a registry's file
                return 0
            return self._revision_of(found)
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(
                f"{self.path}: not a usable registry database ({exc}); it was left as it is"
            ) from None
        finally:
            probe.close()

    def _revision_of(self, row: tuple[object, ...] | None) -> int:
        """The stored revision (meta, key 'revision'): a non-negative integer, or corrupt."""
        if row is None:
            return 0
        value = row[0]
        if isinstance(value, int) and value >= 0:
            return value
        raise StoreCorrupt(
            f"{self.path}: corrupt record in table meta, key 'revision': {value!r} is not a "
            "revision; it was left as it is"
        )

    def _read_all(self, db: sqlite3.Connection) -> Snapshot:
        """Everything stored, as it is (the records are decoded and checked by the caller,
        which names this file, the table and the key of a bad one)."""
        revision = self._revision_of(
            db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        )
        agents = dict(db.execute("SELECT name, agent FROM agents"))
        events = [
            StoredEvent(*row)
            for row in db.execute(
                "SELECT revision, type, name, agent, prev, reason FROM events ORDER BY revision"
            )
        ]
        requests = [
            StoredRequest(*row)
            for row in db.execute(
                "SELECT owner, request_id, fingerprint, revision, response, created_at "
                "FROM requests ORDER BY created_at, rowid"  # the oldest first
            )
        ]
        return Snapshot(revision, agents, events, requests, source=str(self.path))

    async def commit(
        self,
        events: Sequence[StoredEvent],
        requests: Sequence[StoredRequest],
        *,
        forget_events_before: int = 0,
        forget_requests_before: float = 0.0,
        forget_requests: Sequence[tuple[str, str]] = (),
    ) -> None:
        batch = list(events)
        records = list(requests)
        forgotten = list(forget_requests)

        def write() -> None:
            db = self._db
            if db is None:
                raise StoreError(f"{self.path}: the store is closed")
            try:
                db.execute("BEGIN IMMEDIATE")
                _write_batch(db, batch, records)
                _forget(db, forget_events_before, forget_requests_before)
                db.executemany("DELETE FROM requests WHERE owner=? AND request_id=?", forgotten)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if batch and not self._marker.update(batch[-1].revision):
                log.warning("%s: cannot update the revision marker", self.marker_path)
            self._shrink(db)

        try:
            await self._run(write)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: commit failed ({exc})") from None

    def _shrink(self, db: sqlite3.Connection) -> None:
        """Give free pages back to the file system when they are many (after a commit that
        forgot much, or removed big agents). The batch is committed already: a failure
        here is only logged."""
        try:
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            if free < VACUUM_MIN_PAGES or free * 4 < db.execute("PRAGMA page_count").fetchone()[0]:
                return
            # (executescript steps the pragma to its end; execute would free one page.)
            db.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error as exc:
            log.warning(
                "%s: giving free pages back failed (%s); the file stays larger", self.path, exc
            )

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def close_db() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._marker.close()

        await asyncio.get_running_loop().run_in_executor(executor, close_db)
        executor.shutdown(wait=True)


def _write_batch(
    db: sqlite3.Connection, batch: Sequence[StoredEvent], records: Sequence[StoredRequest]
) -> None:
    """Apply a batch's events to the agents, append them to the history, record requests
    and the new revision (inside the caller's transaction)."""
    for event in batch:
        if event.type == EVENT_DELETE:
            db.execute("DELETE FROM agents WHERE name=?", (event.name,))
        else:
            db.execute("INSERT OR REPLACE INTO agents VALUES (?, ?)", (event.name, event.agent))
    db.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
        [(e.revision, e.type, e.name, e.agent, e.prev, e.reason) for e in batch],
    )
    db.executemany(
        "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?)",
        [
            (r.owner, r.request_id, r.fingerprint, r.revision, r.response, r.created_at)
            for r in records
        ],
    )
    if batch:
        db.execute("UPDATE meta SET value=? WHERE key='revision'", (batch[-1].revision,))


def _forget(db: sqlite3.Connection, events_before: int, requests_before: float) -> None:
    """Drop history events and idempotency records past their retention (0: keep all)."""
    if events_before:
        db.execute("DELETE FROM events WHERE revision < ?", (events_before,))
    if requests_before:
        db.execute("DELETE FROM requests WHERE created_at < ?", (requests_before,))
