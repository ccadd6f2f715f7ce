"""SqliteRunStore through the RunStore protocol (helix.orchestrator.store): a real SQLite
file under tmp_path, opened, written, closed, reopened and damaged.

Every test talks to the store as `RunStore`, so an etcd backend can be checked by the same
tests by adding its factory to STORES.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from helix.etcd import EtcdClient
from helix.orchestrator.etcd_store import EtcdRunStore
from helix.orchestrator.sqlite_store import SqliteRunStore
from helix.orchestrator.store import (
    RunCommit,
    RunConflict,
    RunExists,
    RunStore,
    StoreCorrupt,
    StoredCandidate,
    StoredEvent,
    StoredRun,
    StoredRunRequest,
    StoreError,
)

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = 1, 2, 3, 4, 5
PASSED, FAILED_VERDICT = 1, 2
NS = 1_000_000_000

STORES: dict[str, Callable[[Path], RunStore]] = {
    "sqlite": lambda folder: SqliteRunStore(folder / "runs.sqlite3"),
    "sqlite-full-sync": lambda folder: SqliteRunStore(folder / "runs.sqlite3", synchronous="FULL"),
}


@pytest.fixture(params=[*sorted(STORES), "etcd"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], RunStore]:
    if request.param == "etcd":
        etcd = request.getfixturevalue("session_etcd")
        prefix = f"/test-{uuid.uuid4().hex}"

        def on_etcd() -> RunStore:
            client = EtcdClient([etcd.endpoint])
            return EtcdRunStore(client, prefix, owns_client=True)

        return on_etcd
    factory = STORES[request.param]
    return lambda: factory(tmp_path)


@pytest.fixture
async def store(make_store: Callable[[], RunStore]) -> AsyncIterator[RunStore]:
    opened = make_store()
    await opened.open()
    yield opened
    await opened.close()


def stored_run(
    name: str = "runs/a",
    owner: str = "alice",
    created: int = 1,
    *,
    version: int = 1,
    state: int = PENDING,
    payload: bytes = b"",
) -> StoredRun:
    return StoredRun(
        name,
        owner,
        state,
        created * NS,
        version,
        payload or f"{name}@{version}".encode(),
        b"pinned" if version > 1 else b"",
        b'{"window": 4}',
    )


def event(sequence: int) -> StoredEvent:
    return StoredEvent(sequence, f"event {sequence}".encode())


def request_record(
    name: str = "runs/a", owner: str = "alice", request_id: str = "req-1", at: float = 1000.0
) -> StoredRunRequest:
    return StoredRunRequest(owner, request_id, b"fingerprint-" + name.encode(), name, at)


def candidate(
    cid: str, key: float, *, best: bool = True, failed: bool = False, status: int = PASSED
) -> StoredCandidate:
    return StoredCandidate(cid, key, status, best, failed, f"scored {cid} {key}".encode())


async def create(store: RunStore, run: StoredRun, request: StoredRunRequest | None = None) -> None:
    await store.create(run, event(1), request)


async def advance(
    store: RunStore, run: StoredRun, *, state: int | None = None, **change: object
) -> StoredRun:
    """Commit the next version of `run` (with `change`'s parts); the new record."""
    new = stored_run(
        run.name,
        run.owner,
        run.create_time_ns // NS,
        version=run.version + 1,
        state=run.state if state is None else state,
    )
    await store.commit(RunCommit(new, run.version, **change))  # type: ignore[arg-type]
    return new


async def all_events(store: RunStore, name: str) -> list[int]:
    return [e.sequence for e in await store.events(name, 0, 10_000)]


# --- runs ---------------------------------------------------------------------------------


async def test_a_created_run_reads_back_with_its_first_event(store: RunStore) -> None:
    run = stored_run()
    await create(store, run)
    assert await store.get("runs/a") == run
    assert await store.get("runs/b") is None
    assert await store.events("runs/a", 0, 10) == [event(1)]
    assert await store.first_sequence("runs/a") == 1
    assert await store.first_sequence("runs/b") == 0
    assert await store.checkpoint("runs/a") is None


async def test_creating_a_taken_name_is_run_exists_and_stores_nothing(store: RunStore) -> None:
    first = stored_run(owner="alice")
    await create(store, first, request_record(request_id="first"))
    second = stored_run(owner="bob", payload=b"other")
    with pytest.raises(RunExists):
        await store.create(second, StoredEvent(1, b"other"), request_record(owner="bob"))
    assert await store.get("runs/a") == first
    assert await store.events("runs/a", 0, 10) == [event(1)]
    assert await store.find_request("bob", "req-1") is None  # rolled back with the run


async def test_a_commit_replaces_the_record_and_appends_events_atomically(
    store: RunStore,
) -> None:
    run = stored_run()
    await create(store, run)
    running = await advance(store, run, state=RUNNING, events=[event(2), event(3)])
    assert await store.get("runs/a") == running
    assert running.version == 2
    assert await all_events(store, "runs/a") == [1, 2, 3]


async def test_a_commit_on_a_stale_version_is_a_conflict_and_changes_nothing(
    store: RunStore,
) -> None:
    run = stored_run()
    await create(store, run)
    current = await advance(store, run, events=[event(2)], checkpoint=b"state-2")
    stale = stored_run(version=2, state=CANCELLED, payload=b"a stale writer")
    with pytest.raises(RunConflict):
        await store.commit(
            RunCommit(
                stale,
                1,  # the version it read
                [event(3)],
                checkpoint=b"stale state",
                population=(0, b"stale population"),
                candidates=[candidate("c1", 1.0)],
                keep_best=1,
                keep_events=1,
            )
        )
    assert await store.get("runs/a") == current
    assert await all_events(store, "runs/a") == [1, 2]
    found = await store.checkpoint("runs/a")
    assert found == (b"state-2", [])
    assert (await store.candidates("runs/a", status=0, after=None, limit=10)).candidates == []
    # Nor on a run that does not exist.
    with pytest.raises(RunConflict):
        await store.commit(RunCommit(stored_run("runs/ghost", version=2), 1))
    assert await store.get("runs/ghost") is None


async def test_unfinished_lists_pending_and_running_runs_oldest_first(store: RunStore) -> None:
    runs = {}
    for i, name in enumerate(["runs/c", "runs/a", "runs/b", "runs/d"]):
        runs[name] = stored_run(name, created=10 + i)
        await create(store, runs[name])
    await create(store, stored_run("runs/e", created=10))  # same create time as runs/c
    runs["runs/a"] = await advance(store, runs["runs/a"], state=RUNNING)
    await advance(store, runs["runs/b"], state=SUCCEEDED)
    await advance(store, runs["runs/d"], state=CANCELLED)
    unfinished = await store.unfinished()
    assert [(r.name, r.state) for r in unfinished] == [
        ("runs/c", PENDING),
        ("runs/e", PENDING),
        ("runs/a", RUNNING),
    ]
    await advance(store, runs["runs/a"], state=FAILED)
    assert [r.name for r in await store.unfinished()] == ["runs/c", "runs/e"]


async def test_list_runs_newest_first_filtered_by_owner_and_state_and_paged(
    store: RunStore,
) -> None:
    specs = [
        ("runs/a", "alice", 1),
        ("runs/b", "bob", 2),
        ("runs/c", "alice", 3),
        ("runs/d", "alice", 3),  # the same create time: by name
        ("runs/e", "bob", 4),
        ("runs/f", "alice", 5),
    ]
    for name, owner, created in specs:
        await create(store, stored_run(name, owner, created))
    done = await store.get("runs/c")
    assert done is not None
    await advance(store, done, state=SUCCEEDED)

    async def names(**query: object) -> list[str]:
        query = {"owner": None, "state": 0, "after": None, "limit": 100, **query}
        return [r.name for r in await store.list_runs(**query)]  # type: ignore[arg-type]

    assert await names() == ["runs/f", "runs/e", "runs/c", "runs/d", "runs/b", "runs/a"]
    assert await names(owner="alice") == ["runs/f", "runs/c", "runs/d", "runs/a"]
    assert await names(owner="carol") == []
    assert await names(state=SUCCEEDED) == ["runs/c"]
    assert await names(owner="bob", state=SUCCEEDED) == []
    # Paging by (create_time_ns, name): every run once, in order, whatever the page size.
    for size in (1, 2, 4):
        paged: list[str] = []
        after = None
        while True:
            page = await store.list_runs(owner="alice", state=0, after=after, limit=size)
            paged += [r.name for r in page]
            if len(page) < size:
                break
            after = (page[-1].create_time_ns, page[-1].name)
        assert paged == ["runs/f", "runs/c", "runs/d", "runs/a"], size
    assert await names(after=(3 * NS, "runs/c")) == ["runs/d", "runs/b", "runs/a"]
    assert await names(after=(0, "")) == []


# --- idempotency records ------------------------------------------------------------------


async def test_request_records_are_found_per_owner_and_forgotten_by_age(
    store: RunStore,
) -> None:
    await create(store, stored_run("runs/a"), request_record("runs/a", at=1000.0))
    await create(store, stored_run("runs/b"), request_record("runs/b", "bob", at=2000.0))
    await create(store, stored_run("runs/c"), None)
    found = await store.find_request("alice", "req-1")
    assert found == request_record("runs/a", at=1000.0)
    assert await store.find_request("alice", "req-2") is None
    bobs = await store.find_request("bob", "req-1")
    assert bobs is not None
    assert bobs.name == "runs/b"
    await store.forget_requests(1000.0)  # strictly before
    assert await store.find_request("alice", "req-1") is not None
    await store.forget_requests(1500.0)
    assert await store.find_request("alice", "req-1") is None
    assert await store.find_request("bob", "req-1") is not None
    assert await store.get("runs/a") is not None  # the run stays


# --- events -------------------------------------------------------------------------------


async def test_events_come_in_sequence_order_from_after_with_a_limit(store: RunStore) -> None:
    run = stored_run()
    await create(store, run)
    run = await advance(store, run, events=[event(2), event(3), event(4)])
    run = await advance(store, run, events=[event(5)])
    await create(store, stored_run("runs/b"))
    assert await all_events(store, "runs/a") == [1, 2, 3, 4, 5]
    assert [e.sequence for e in await store.events("runs/a", 2, 2)] == [3, 4]
    assert await store.events("runs/a", 5, 10) == []
    assert await store.events("runs/a", 99, 10) == []
    assert (await store.events("runs/a", 3, 1))[0] == event(4)
    assert await all_events(store, "runs/b") == [1]


async def test_events_are_trimmed_to_keep_events_and_first_sequence_follows(
    store: RunStore,
) -> None:
    run = stored_run()
    await create(store, run)
    await create(store, stored_run("runs/b"))
    sequence = 1
    for batch in (3, 1, 4, 2):
        events = [event(sequence + i + 1) for i in range(batch)]
        sequence += batch
        run = await advance(store, run, events=events, keep_events=4)
        assert await all_events(store, "runs/a") == list(range(max(1, sequence - 3), sequence + 1))
        assert await store.first_sequence("runs/a") == max(1, sequence - 3)
    assert sequence == 11
    assert await store.first_sequence("runs/a") == 8
    assert [e.sequence for e in await store.events("runs/a", 0, 2)] == [8, 9]
    assert await all_events(store, "runs/b") == [1]  # another run's are its own


# --- checkpoints --------------------------------------------------------------------------


async def test_checkpoint_and_the_last_populations_round_trip(store: RunStore) -> None:
    run = stored_run()
    await create(store, run)
    for generation in range(5):
        run = await advance(
            store,
            run,
            checkpoint=f"state {generation}".encode(),
            population=(generation, f"population {generation}".encode()),
            keep_generations=3,
        )
    found = await store.checkpoint("runs/a")
    assert found == (
        b"state 4",
        [(2, b"population 2"), (3, b"population 3"), (4, b"population 4")],
    )
    # A commit without a checkpoint (a state change) keeps the last one.
    run = await advance(store, run, state=CANCELLED, events=[event(2)])
    assert await store.checkpoint("runs/a") == found
    # The same generation again (a resumed run redoing it) replaces its population.
    await create(store, stored_run("runs/b"))
    other = await store.get("runs/b")
    assert other is not None
    other = await advance(store, other, checkpoint=b"s", population=(0, b"first"))
    other = await advance(store, other, checkpoint=b"s2", population=(0, b"again"))
    assert await store.checkpoint("runs/b") == (b"s2", [(0, b"again")])
    assert await store.checkpoint("runs/ghost") is None


# --- candidates ---------------------------------------------------------------------------


async def test_the_best_n_are_kept_and_the_failed_ones_stay(store: RunStore) -> None:
    run = stored_run()
    await create(store, run)
    first = [candidate(f"c{i}", float(10 - i)) for i in range(5)]  # keys 10..6
    first.append(candidate("f1", 50.0, best=False, failed=True, status=FAILED_VERDICT))
    run = await advance(store, run, candidates=first, keep_best=3)
    page = await store.candidates("runs/a", status=0, after=None, limit=100)
    assert [(c.candidate_id, c.best, c.failed) for c in page.candidates] == [
        ("c4", True, False),
        ("c3", True, False),
        ("c2", True, False),
        ("f1", False, True),
    ]
    assert not page.more
    # Better ones arrive: the worse best ones go, the failed one stays.
    better = [
        candidate("d1", 0.5),
        candidate("d2", 6.5),
        candidate("f2", 1.0, best=True, failed=True, status=FAILED_VERDICT),
    ]
    run = await advance(store, run, candidates=better, keep_best=3)
    page = await store.candidates("runs/a", status=0, after=None, limit=100)
    assert [c.candidate_id for c in page.candidates] == ["d1", "f2", "c4", "f1"]
    assert [c.best for c in page.candidates] == [True, True, True, False]
    failed = await store.candidates("runs/a", status=FAILED_VERDICT, after=None, limit=100)
    assert [c.candidate_id for c in failed.candidates] == ["f2", "f1"]
    assert [c.scored for c in failed.candidates] == [b"scored f2 1.0", b"scored f1 50.0"]


async def test_a_candidate_stored_again_keeps_both_of_its_marks(store: RunStore) -> None:
    run = stored_run()
    await create(store, run)
    run = await advance(store, run, candidates=[candidate("x", 3.0, best=True)], keep_best=5)
    again = candidate("x", 3.0, best=False, failed=True, status=FAILED_VERDICT)
    run = await advance(store, run, candidates=[again], keep_best=5)
    page = await store.candidates("runs/a", status=0, after=None, limit=10)
    assert [(c.candidate_id, c.best, c.failed) for c in page.candidates] == [("x", True, True)]


async def test_candidates_page_by_key_then_id(store: RunStore) -> None:
    run = stored_run()
    await create(store, run)
    await create(store, stored_run("runs/b"))
    many = [candidate(f"id{i:02d}", float(i // 3)) for i in range(12)]  # ties by three
    run = await advance(store, run, candidates=many, keep_best=100)
    expected = [c.candidate_id for c in sorted(many, key=lambda c: (c.key, c.candidate_id))]
    for size in (1, 5, 12, 20):
        paged: list[str] = []
        after = None
        while True:
            page = await store.candidates("runs/a", status=0, after=after, limit=size)
            paged += [c.candidate_id for c in page.candidates]
            if not page.more:
                break
            last = page.candidates[-1]
            after = (last.key, last.candidate_id)
        assert paged == expected, size
    page = await store.candidates("runs/a", status=0, after=(1.0, "id04"), limit=2)
    assert [c.candidate_id for c in page.candidates] == ["id05", "id06"]
    assert page.more
    assert (await store.candidates("runs/b", status=0, after=None, limit=5)).candidates == []


# --- durability ---------------------------------------------------------------------------


async def test_everything_survives_close_and_reopen(make_store: Callable[[], RunStore]) -> None:
    store = make_store()
    await store.open()
    run = stored_run()
    await create(store, run, request_record())
    run = await advance(
        store,
        run,
        state=RUNNING,
        events=[event(2), event(3)],
        checkpoint=b"state",
        population=(0, b"population"),
        candidates=[candidate("c", 1.5), candidate("f", 9.0, best=False, failed=True)],
        keep_best=10,
    )
    await create(store, stored_run("runs/b", "bob", 7))
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StoreError):
        await store.get("runs/a")

    reopened = make_store()
    await reopened.open()
    try:
        assert await reopened.get("runs/a") == run
        assert await all_events(reopened, "runs/a") == [1, 2, 3]
        assert await reopened.checkpoint("runs/a") == (b"state", [(0, b"population")])
        page = await reopened.candidates("runs/a", status=0, after=None, limit=10)
        assert [c.candidate_id for c in page.candidates] == ["c", "f"]
        assert await reopened.find_request("alice", "req-1") == request_record()
        assert [r.name for r in await reopened.unfinished()] == ["runs/a", "runs/b"]
        # And it goes on from where it was: the next version commits, a stale one does not.
        with pytest.raises(RunConflict):
            await reopened.commit(RunCommit(stored_run(version=2), 1))
        await advance(reopened, run, state=SUCCEEDED, events=[event(4)])
        assert await all_events(reopened, "runs/a") == [1, 2, 3, 4]
    finally:
        await reopened.close()


def _damage(path: Path) -> None:
    """Overwrite the middle of the file (its b-tree pages, not the header) with junk."""
    data = bytearray(path.read_bytes())
    assert len(data) > 8192, len(data)
    for i in range(4096, len(data) - 100, 97):
        data[i] = (data[i] + 0x5A) % 256
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["garbage", "damaged pages"])
async def test_a_corrupt_file_is_store_corrupt_naming_the_file(tmp_path: Path, how: str) -> None:
    path = tmp_path / "runs.sqlite3"
    if how == "garbage":
        path.write_bytes(b"this is not a SQLite database at all " * 200)
    else:
        store = SqliteRunStore(path)
        await store.open()
        for i in range(40):
            run = stored_run(f"runs/r{i}", payload=b"x" * 500)
            await create(store, run)
            await advance(
                store,
                run,
                events=[StoredEvent(2, b"e" * 300)],
                candidates=[candidate(f"c{j}", j) for j in range(10)],
                keep_best=100,
            )
        await store.close()
        with sqlite3.connect(path) as db:  # fold the WAL in, so the file holds it all
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _damage(path)
    before = path.read_bytes()
    damaged = SqliteRunStore(path)
    with pytest.raises(StoreCorrupt) as caught:
        await damaged.open()
    message = str(caught.value)
    assert str(path) in message
    assert "move it aside" in message
    assert isinstance(caught.value, OSError)  # `helix` stops with that one line
    assert path.read_bytes() == before  # left as it was, for whoever investigates
    with pytest.raises(StoreError):
        await damaged.get("runs/a")


async def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    store = SqliteRunStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value=99 WHERE key='schema_version'")
    again = SqliteRunStore(path)
    with pytest.raises(StoreError, match="schema version 99"):
        await again.open()


async def test_an_empty_file_becomes_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "runs.sqlite3"
    store = SqliteRunStore(path)
    await store.open()
    try:
        assert await store.unfinished() == []
        assert path.exists()
    finally:
        await store.close()


async def test_a_commit_larger_than_one_etcd_transaction_reads_back_whole(
    store: RunStore,
) -> None:
    """A population and a checkpoint of several MiB and hundreds of candidates (etcd takes
    1.5 MiB and 128 operations per transaction): all or nothing, and read back whole."""
    run = stored_run()
    await create(store, run)
    population = bytes(range(256)) * (3 * 4096)  # 3 MiB
    checkpoint = b"c" * (2 * 1024 * 1024 + 7)
    found = [candidate(f"c{i:04d}", float(i)) for i in range(300)]
    run = await advance(
        store,
        run,
        state=RUNNING,
        events=[event(2)],
        checkpoint=checkpoint,
        population=(0, population),
        keep_generations=2,
        candidates=found,
        keep_best=250,
    )
    assert await store.checkpoint("runs/a") == (checkpoint, [(0, population)])
    page = await store.candidates("runs/a", status=0, after=None, limit=1000)
    assert [c.candidate_id for c in page.candidates] == [f"c{i:04d}" for i in range(250)]
    # A stale writer's large commit changes nothing.
    with pytest.raises(RunConflict):
        await store.commit(
            RunCommit(
                stored_run(version=3),
                1,
                [event(3)],
                checkpoint=b"x" * 3_000_000,
                population=(1, b"y"),
            )
        )
    assert await store.checkpoint("runs/a") == (checkpoint, [(0, population)])
    assert await all_events(store, "runs/a") == [1, 2]
    assert (await store.get("runs/a")) == run
