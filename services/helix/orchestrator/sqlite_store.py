"""The embedded run store: one SQLite file (WAL) under the data dir, all work on one thread.

Each `commit` is one transaction: the run record (compare-and-set on its version), its new
events, its checkpoint and newest population, its retained candidates and the retention
limits — so after a crash a run is exactly as its last acknowledged commit left it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

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

T = TypeVar("T")
SCHEMA_VERSION = 2  # 2: runs.end_time_ns (1 is migrated on open)
WAL_SIZE_LIMIT = 4 * 1024 * 1024
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state INTEGER NOT NULL,
    create_time_ns INTEGER NOT NULL,
    version INTEGER NOT NULL,
    run BLOB NOT NULL,
    pinned BLOB NOT NULL,
    spec BLOB NOT NULL,
    checkpoint BLOB,
    end_time_ns INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_newest ON runs (create_time_ns DESC, name);
CREATE INDEX IF NOT EXISTS runs_by_owner ON runs (owner, create_time_ns DESC, name);
CREATE TABLE IF NOT EXISTS events (
    run TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (run, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS populations (
    run TEXT NOT NULL,
    generation INTEGER NOT NULL,
    population BLOB NOT NULL,
    PRIMARY KEY (run, generation)
);
CREATE TABLE IF NOT EXISTS candidates (
    run TEXT NOT NULL,
    candidate_id TEXT NOT NULL,
    key REAL NOT NULL,
    status INTEGER NOT NULL,
    best INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    scored BLOB NOT NULL,
    PRIMARY KEY (run, candidate_id)
);
CREATE INDEX IF NOT EXISTS candidates_ranked ON candidates (run, key, candidate_id);
CREATE TABLE IF NOT EXISTS requests (
    owner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (owner, request_id)
);
CREATE INDEX IF NOT EXISTS requests_by_age ON requests (created_at);
CREATE INDEX IF NOT EXISTS requests_by_run ON requests (name);
"""
_RUN_COLUMNS = "name, owner, state, create_time_ns, version, run, pinned, spec, end_time_ns"
_UNFINISHED = (1, 2)  # RUN_STATE_PENDING, RUN_STATE_RUNNING
PRUNE_BATCH = 20  # runs deleted per prune call, one short transaction (commits queue behind it)


def _run(row: tuple[object, ...]) -> StoredRun:
    name, owner, state, create_time_ns, version, run, pinned, spec, end_time_ns = row
    return StoredRun(
        str(name),
        str(owner),
        int(state),  # type: ignore[call-overload]
        int(create_time_ns),  # type: ignore[call-overload]
        int(version),  # type: ignore[call-overload]
        bytes(run),  # type: ignore[call-overload]
        bytes(pinned),  # type: ignore[call-overload]
        bytes(spec),  # type: ignore[call-overload]
        int(end_time_ns),  # type: ignore[call-overload]
    )


class SqliteRunStore:
    """`RunStore` on a SQLite file."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = path
        self._synchronous = synchronous.upper()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._db is None:
            raise StoreError(f"{self.path}: the run store is not open")
        db = self._db

        def call() -> T:
            return work(db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="run-sqlite"
        )
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._connect
            )
        except BaseException:
            await self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the run store: {exc}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise StoreCorrupt(
                    f"{self.path}: the run store is damaged ({ok}); move it aside to start "
                    "with no runs"
                )
            db.executescript(SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif version[0] == 1:
                with _Transaction(db):
                    db.execute("ALTER TABLE runs ADD COLUMN end_time_ns INTEGER NOT NULL DEFAULT 0")
                    # Runs that ended before: their creation time, for the age rule.
                    db.execute(
                        "UPDATE runs SET end_time_ns=create_time_ns WHERE state NOT IN (?, ?)",
                        _UNFINISHED,
                    )
                    db.execute(
                        "UPDATE meta SET value=? WHERE key='schema_version'", (SCHEMA_VERSION,)
                    )
            elif version[0] != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version[0]}, this orchestrator reads "
                    f"{SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreCorrupt(
                f"{self.path}: not a usable run store ({exc}); move it aside to start with no runs"
            ) from None
        except BaseException:
            db.close()
            raise
        return db

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        db, self._db = self._db, None
        if executor is None:
            return
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=False)

    # --- writes -------------------------------------------------------------------------

    async def create(
        self, run: StoredRun, event: StoredEvent, request: StoredRunRequest | None
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            with _Transaction(db):
                # The request first: an overlapping retry of one CreateRun finds it taken
                # (RequestExists) before it could take a chosen run name.
                if request is not None:
                    try:
                        db.execute(
                            "INSERT INTO requests VALUES (?, ?, ?, ?, ?)",
                            (
                                request.owner,
                                request.request_id,
                                request.fingerprint,
                                request.name,
                                request.created_at,
                            ),
                        )
                    except sqlite3.IntegrityError:
                        raise RequestExists(request.request_id) from None
                try:
                    db.execute(
                        f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            run.name,
                            run.owner,
                            run.state,
                            run.create_time_ns,
                            run.version,
                            run.run,
                            run.pinned,
                            run.spec,
                            run.end_time_ns,
                        ),
                    )
                except sqlite3.IntegrityError:
                    raise RunExists(run.name) from None
                db.execute(
                    "INSERT INTO events VALUES (?, ?, ?)", (run.name, event.sequence, event.event)
                )

        await self._run(work)

    async def forget_requests(self, before: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM requests WHERE created_at < ?", (before,))

        await self._run(work)

    async def commit(self, change: RunCommit) -> None:
        run = change.run

        def work(db: sqlite3.Connection) -> None:
            with _Transaction(db):
                cursor = db.execute(
                    "UPDATE runs SET state=?, version=?, run=?, pinned=?, spec=?, "
                    "checkpoint=coalesce(?, checkpoint), end_time_ns=? "
                    "WHERE name=? AND version=?",
                    (
                        run.state,
                        run.version,
                        run.run,
                        run.pinned,
                        run.spec,
                        change.checkpoint,
                        run.end_time_ns,
                        run.name,
                        change.expected_version,
                    ),
                )
                if cursor.rowcount != 1:
                    raise RunConflict(run.name)
                db.executemany(
                    "INSERT INTO events VALUES (?, ?, ?)",
                    [(run.name, e.sequence, e.event) for e in change.events],
                )
                if change.keep_events and change.events:
                    last = change.events[-1].sequence
                    db.execute(
                        "DELETE FROM events WHERE run=? AND sequence<=?",
                        (run.name, last - change.keep_events),
                    )
                if change.population is not None:
                    generation, population = change.population
                    db.execute(
                        "INSERT OR REPLACE INTO populations VALUES (?, ?, ?)",
                        (run.name, generation, population),
                    )
                    if change.keep_generations:
                        db.execute(
                            "DELETE FROM populations WHERE run=? AND generation<=?",
                            (run.name, generation - change.keep_generations),
                        )
                if change.candidates:
                    _add_candidates(db, run.name, change.candidates)
                    if change.keep_best:
                        _keep_best(db, run.name, change.keep_best)

        await self._run(work)

    async def prune(self, *, owner: str | None, keep: int, ended_before_ns: int) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            names: list[str] = []
            if owner is not None:
                names += [
                    str(row[0])
                    for row in db.execute(
                        "SELECT name FROM runs WHERE owner=? AND state NOT IN (?, ?) "
                        "ORDER BY create_time_ns DESC, name LIMIT ? OFFSET ?",
                        (owner, *_UNFINISHED, PRUNE_BATCH, max(keep, 0)),
                    )
                ]
            if ended_before_ns > 0 and len(names) < PRUNE_BATCH:
                names += [
                    str(row[0])
                    for row in db.execute(
                        "SELECT name FROM runs WHERE state NOT IN (?, ?) "
                        "AND end_time_ns > 0 AND end_time_ns < ? LIMIT ?",
                        (*_UNFINISHED, ended_before_ns, PRUNE_BATCH - len(names)),
                    )
                ]
            names = sorted(set(names))
            if not names:
                return names
            rows = [(name,) for name in names]
            with _Transaction(db):
                for table, column in (
                    ("events", "run"),
                    ("populations", "run"),
                    ("candidates", "run"),
                    ("requests", "name"),
                ):
                    db.executemany(f"DELETE FROM {table} WHERE {column}=?", rows)
                db.executemany(
                    f"DELETE FROM runs WHERE name=? AND state NOT IN {_UNFINISHED}", rows
                )
            return names

        return await self._run(work)

    # --- reads --------------------------------------------------------------------------

    async def find_request(self, owner: str, request_id: str) -> StoredRunRequest | None:
        def work(db: sqlite3.Connection) -> StoredRunRequest | None:
            row = db.execute(
                "SELECT owner, request_id, fingerprint, name, created_at FROM requests "
                "WHERE owner=? AND request_id=?",
                (owner, request_id),
            ).fetchone()
            if row is None:
                return None
            return StoredRunRequest(row[0], row[1], bytes(row[2]), row[3], float(row[4]))

        return await self._run(work)

    async def get(self, name: str) -> StoredRun | None:
        def work(db: sqlite3.Connection) -> StoredRun | None:
            row = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE name=?", (name,)).fetchone()
            return _run(row) if row is not None else None

        return await self._run(work)

    async def list_runs(
        self,
        *,
        owner: str | None,
        state: int,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[StoredRun]:
        where: list[str] = []
        args: list[object] = []
        if owner is not None:
            where.append("owner=?")
            args.append(owner)
        if state:
            where.append("state=?")
            args.append(state)
        if after is not None:
            where.append("(create_time_ns < ? OR (create_time_ns = ? AND name > ?))")
            args += [after[0], after[0], after[1]]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs {clause} ORDER BY create_time_ns DESC, name LIMIT ?"

        def work(db: sqlite3.Connection) -> list[StoredRun]:
            return [_run(row) for row in db.execute(sql, (*args, limit))]

        return await self._run(work)

    async def unfinished(self) -> list[StoredRun]:
        def work(db: sqlite3.Connection) -> list[StoredRun]:
            rows = db.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN (?, ?) "
                "ORDER BY create_time_ns, name",
                _UNFINISHED,
            )
            return [_run(row) for row in rows]

        return await self._run(work)

    async def events(self, name: str, after: int, limit: int) -> list[StoredEvent]:
        def work(db: sqlite3.Connection) -> list[StoredEvent]:
            rows = db.execute(
                "SELECT sequence, event FROM events WHERE run=? AND sequence>? "
                "ORDER BY sequence LIMIT ?",
                (name, after, limit),
            )
            return [StoredEvent(int(s), bytes(e)) for s, e in rows]

        return await self._run(work)

    async def first_sequence(self, name: str) -> int:
        def work(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT min(sequence) FROM events WHERE run=?", (name,)).fetchone()
            return int(row[0] or 0)

        return await self._run(work)

    async def last_sequence(self, name: str) -> int:
        def work(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT max(sequence) FROM events WHERE run=?", (name,)).fetchone()
            return int(row[0] or 0)

        return await self._run(work)

    async def checkpoint(self, name: str) -> tuple[bytes, list[tuple[int, bytes]]] | None:
        def work(db: sqlite3.Connection) -> tuple[bytes, list[tuple[int, bytes]]] | None:
            row = db.execute("SELECT checkpoint FROM runs WHERE name=?", (name,)).fetchone()
            if row is None or row[0] is None:
                return None
            populations = [
                (int(g), bytes(p))
                for g, p in db.execute(
                    "SELECT generation, population FROM populations WHERE run=? "
                    "ORDER BY generation",
                    (name,),
                )
            ]
            return bytes(row[0]), populations

        return await self._run(work)

    async def candidates(
        self, name: str, *, status: int, after: tuple[float, str] | None, limit: int
    ) -> CandidatePage:
        where = ["run=?"]
        args: list[object] = [name]
        if status:
            where.append("status=?")
            args.append(status)
        if after is not None:
            where.append("(key > ? OR (key = ? AND candidate_id > ?))")
            args += [after[0], after[0], after[1]]
        sql = (
            "SELECT candidate_id, key, status, best, failed, scored FROM candidates "
            f"WHERE {' AND '.join(where)} ORDER BY key, candidate_id LIMIT ?"
        )

        def work(db: sqlite3.Connection) -> CandidatePage:
            rows = db.execute(sql, (*args, limit + 1)).fetchall()
            page = CandidatePage(
                [
                    StoredCandidate(str(c), float(k), int(s), bool(b), bool(f), bytes(p))
                    for c, k, s, b, f, p in rows[:limit]
                ],
                len(rows) > limit,
            )
            return page

        return await self._run(work)


def _add_candidates(db: sqlite3.Connection, run: str, found: Sequence[StoredCandidate]) -> None:
    db.executemany(
        "INSERT INTO candidates VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (run, candidate_id) DO UPDATE SET "
        "best=max(best, excluded.best), failed=max(failed, excluded.failed)",
        [
            (run, c.candidate_id, c.key, c.status, int(c.best), int(c.failed), c.scored)
            for c in found
        ],
    )


def _keep_best(db: sqlite3.Connection, run: str, keep: int) -> None:
    last = db.execute(
        "SELECT key, candidate_id FROM candidates WHERE run=? AND best=1 "
        "ORDER BY key, candidate_id LIMIT 1 OFFSET ?",
        (run, keep - 1),
    ).fetchone()
    if last is None:
        return
    db.execute(
        "UPDATE candidates SET best=0 WHERE run=? AND best=1 "
        "AND (key > ? OR (key = ? AND candidate_id > ?))",
        (run, last[0], last[0], last[1]),
    )
    db.execute("DELETE FROM candidates WHERE run=? AND best=0 AND failed=0", (run,))


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
