"""The embedded registry store: one SQLite file in WAL mode, group commits, integrity check.

All database work happens on one dedicated thread (sqlite3 connections belong to their
thread), so the event loop never waits on disk. `commit` writes a whole batch in one
transaction: many concurrent mutations cost one fsync (group commit).

The file shrinks back when its content does: it uses incremental auto-vacuum, and after a
commit that left more than a quarter of its pages free (and at least `VACUUM_MIN_PAGES`),
those pages are given back to the file system. The write-ahead log is checkpointed every
1000 pages (SQLite's default) and truncated back to `WAL_SIZE_LIMIT` after each reset.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

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
        self._synchronous = synchronous.upper()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError(f"{self.path}: the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def open(self) -> Snapshot:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="registry-sqlite"
        )
        try:
            return await self._run(self._open)
        except BaseException:
            await self.close()
            raise

    def _open(self) -> Snapshot:
        existed = self.path.exists()
        if existed and self.path.stat().st_size > 0:
            self._check_integrity()
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
            return self._read_all(db)
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self.path}: {exc}") from None

    def _check_integrity(self) -> None:
        """Read-only check of an existing file; refuse (changing nothing) if it is damaged."""
        uri = f"file:{self.path}?mode=ro"
        try:
            probe = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as exc:
            raise StoreCorrupt(f"{self.path}: cannot open the registry database ({exc})") from None
        try:
            rows = probe.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(
                f"{self.path}: not a usable registry database ({exc}); it was left as it is"
            ) from None
        finally:
            probe.close()
        if rows != [("ok",)]:
            problems = "; ".join(str(r[0]) for r in rows[:3])
            raise StoreCorrupt(
                f"{self.path}: integrity check failed ({problems}); it was left as it is"
            )

    @staticmethod
    def _read_all(db: sqlite3.Connection) -> Snapshot:
        revision = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]
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
                "FROM requests"
            )
        ]
        return Snapshot(revision, agents, events, requests)

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
