"""The embedded registry store (`SqliteRegistryStore`) on a real file under tmp_path."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from pathlib import Path

import pytest

from helix.registry.sqlite_store import SCHEMA, SqliteRegistryStore
from helix.registry.store import (
    EVENT_DELETE,
    EVENT_PUT,
    Snapshot,
    StoreCorrupt,
    StoredEvent,
    StoredRequest,
    StoreError,
)


def put(revision: int, name: str, body: bytes = b"v1", prev: bytes | None = None) -> StoredEvent:
    return StoredEvent(revision, EVENT_PUT, name, body, prev, 0)


def delete(revision: int, name: str, body: bytes = b"v1") -> StoredEvent:
    return StoredEvent(revision, EVENT_DELETE, name, body, body, 1)


def request(request_id: str, revision: int, created_at: float) -> StoredRequest:
    return StoredRequest("alice", request_id, b"digest", revision, b"response", created_at)


async def reopened(path: Path) -> Snapshot:
    """What a store on `path` reads when opened again."""
    store = SqliteRegistryStore(path)
    try:
        return await store.open()
    finally:
        await store.close()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "data" / "registry.sqlite3"


async def test_a_new_store_is_empty_and_private(path):
    store = SqliteRegistryStore(path)
    snapshot = await store.open()
    await store.close()
    assert (snapshot.revision, snapshot.agents, snapshot.events, snapshot.requests) == (
        0,
        {},
        [],
        [],
    )
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_what_was_committed_is_there_after_reopening(path):
    store = SqliteRegistryStore(path)
    await store.open()
    await store.commit([put(1, "agents/a"), put(2, "agents/b")], [request("r1", 1, 100.0)])
    await store.commit([put(3, "agents/a", b"v2", b"v1"), delete(4, "agents/b")], [])
    await store.close()
    await store.close()  # twice is fine

    snapshot = await reopened(path)
    assert snapshot.revision == 4
    assert snapshot.agents == {"agents/a": b"v2"}
    assert [(e.revision, e.type, e.name) for e in snapshot.events] == [
        (1, EVENT_PUT, "agents/a"),
        (2, EVENT_PUT, "agents/b"),
        (3, EVENT_PUT, "agents/a"),
        (4, EVENT_DELETE, "agents/b"),
    ]
    assert snapshot.events[2].prev == b"v1"
    assert snapshot.requests == [request("r1", 1, 100.0)]


async def test_commit_forgets_old_events_and_requests(path):
    store = SqliteRegistryStore(path)
    await store.open()
    await store.commit(
        [put(i, f"agents/a{i}") for i in range(1, 6)],
        [request("old", 1, 10.0), request("new", 2, 20.0)],
    )
    await store.commit(
        [put(6, "agents/a6")], [], forget_events_before=4, forget_requests_before=15.0
    )
    await store.close()
    snapshot = await reopened(path)
    assert [e.revision for e in snapshot.events] == [4, 5, 6]
    assert len(snapshot.agents) == 6  # forgetting history keeps the agents
    assert [r.request_id for r in snapshot.requests] == ["new"]


async def test_commit_forgets_requests_by_key(path):
    store = SqliteRegistryStore(path)
    await store.open()
    await store.commit([], [request("a", 1, 10.0), request("b", 1, 10.0), request("c", 1, 10.0)])
    await store.commit([], [], forget_requests=[("alice", "a"), ("alice", "c"), ("bob", "b")])
    await store.close()
    assert [r.request_id for r in (await reopened(path)).requests] == ["b"]


async def test_the_file_gives_free_pages_back(path):
    store = SqliteRegistryStore(path, synchronous="normal")
    await store.open()
    await store.commit([put(i, f"agents/a{i}", b"x" * 20_000) for i in range(1, 201)], [])
    await store.commit([delete(i + 200, f"agents/a{i}") for i in range(1, 201)], [])
    await store.commit([put(401, "agents/z")], [], forget_events_before=401)
    await store.close()  # (closing checkpoints the log into the file)
    assert path.stat().st_size < 1024 * 1024  # it had held 4 MB, twice


async def test_a_file_of_the_previous_version_is_rewritten_once_to_shrink(path):
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:  # what version 1 created: no auto-vacuum
        db.executescript(SCHEMA)
        db.execute("INSERT INTO meta VALUES ('schema_version', 1), ('revision', 1)")
        db.execute("INSERT INTO agents VALUES ('agents/a', x'7631')")
        db.execute("INSERT INTO events VALUES (1, 1, 'agents/a', x'7631', NULL, 0)")
    db.close()
    snapshot = await reopened(path)
    assert (snapshot.revision, snapshot.agents) == (1, {"agents/a": b"v1"})
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
    db.close()


async def test_a_failed_commit_stores_nothing_of_its_batch(path):
    store = SqliteRegistryStore(path)
    await store.open()
    await store.commit([put(1, "agents/a")], [])
    with pytest.raises(StoreError, match="commit failed"):
        # revision 1 again: the events insert fails after the agents were written
        await store.commit([put(2, "agents/b"), put(1, "agents/c")], [request("r", 2, 1.0)])
    await store.commit([put(2, "agents/d")], [])  # and the store is still usable
    await store.close()
    snapshot = await reopened(path)
    assert snapshot.revision == 2
    assert sorted(snapshot.agents) == ["agents/a", "agents/d"]
    assert snapshot.requests == []


async def test_a_store_that_is_not_open_refuses_commits(path):
    store = SqliteRegistryStore(path)
    with pytest.raises(StoreError, match="not open"):
        await store.commit([put(1, "agents/a")], [])
    await store.open()
    await store.close()
    with pytest.raises(StoreError, match=r"registry\.sqlite3"):
        await store.commit([put(1, "agents/a")], [])


async def test_a_damaged_file_is_refused_and_left_as_it_is(path):
    store = SqliteRegistryStore(path)
    await store.open()
    await store.commit([put(i, f"agents/a{i}", b"x" * 500) for i in range(1, 40)], [])
    await store.close()
    raw = bytearray(path.read_bytes())
    for offset in range(4096, len(raw), 997):  # scribble over the data pages
        raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreCorrupt, match=r"registry\.sqlite3"):
        await SqliteRegistryStore(path).open()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


async def test_a_file_that_is_not_a_database_is_refused(path):
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreCorrupt, match="not a usable registry database"):
        await SqliteRegistryStore(path).open()
    assert path.read_bytes() == b"this is not sqlite" * 100


async def test_another_schema_version_is_refused(path):
    store = SqliteRegistryStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value=99 WHERE key='schema_version'")
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        await SqliteRegistryStore(path).open()


def test_only_full_or_normal_synchronous_modes(path):
    SqliteRegistryStore(path, synchronous="normal")
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        SqliteRegistryStore(path, synchronous="off")


# --- issue 10 item 11: a data dir that held a registry never silently becomes an empty one ---


async def committed(path: Path, revisions: int) -> None:
    """A store on `path` with `revisions` registrations committed, closed again."""
    store = SqliteRegistryStore(path)
    await store.open()
    for revision in range(1, revisions + 1):
        await store.commit([put(revision, f"agents/a{revision}")], [])
    await store.close()


def remove_database(path: Path) -> None:
    for extra in ("", "-wal", "-shm"):
        path.with_name(path.name + extra).unlink(missing_ok=True)


def marker_of(path: Path) -> Path:
    return path.with_name(path.name + ".revision")


async def test_a_deleted_database_is_refused_when_the_registry_had_changes(path):
    await committed(path, 3)
    remove_database(path)
    with pytest.raises(StoreCorrupt) as caught:
        await SqliteRegistryStore(path).open()
    message = str(caught.value)
    assert str(path) in message
    assert "is missing" in message
    assert "reached revision 3" in message
    assert "--registry-accept-loss" in message
    assert "\n" not in message
    assert not path.exists()  # nothing was created in its place


async def test_an_emptied_database_is_refused_and_left_as_it_is(path):
    await committed(path, 3)
    remove_database(path)
    path.write_bytes(b"")
    with pytest.raises(StoreCorrupt, match=r"is empty.*reached revision 3"):
        await SqliteRegistryStore(path).open()
    assert path.read_bytes() == b""


async def test_an_older_copy_of_the_database_is_refused(path, tmp_path):
    await committed(path, 2)
    backup = tmp_path / "backup.sqlite3"
    backup.write_bytes(path.read_bytes())  # closed cleanly: the file alone is the database
    store = SqliteRegistryStore(path)
    await store.open()
    await store.commit([put(3, "agents/a3")], [])
    await store.commit([put(4, "agents/a4")], [])
    await store.close()
    remove_database(path)
    path.write_bytes(backup.read_bytes())
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreCorrupt, match=r"at revision 2.*reached revision 4.*2 acknowledged"):
        await SqliteRegistryStore(path).open()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


async def test_accepting_the_loss_continues_the_revisions_after_the_last_one_reached(path):
    await committed(path, 3)
    remove_database(path)
    store = SqliteRegistryStore(path)
    snapshot = await store.open(accept_loss=True)
    assert (snapshot.revision, snapshot.agents, snapshot.events) == (3, {}, [])
    await store.commit([put(4, "agents/new")], [])
    await store.close()
    again = await reopened(path)  # accepted once: the next start is a normal one
    assert again.revision == 4
    assert [e.revision for e in again.events] == [4]


async def test_accepting_the_loss_of_an_older_copy_drops_its_history(path, tmp_path):
    await committed(path, 2)
    backup = tmp_path / "backup.sqlite3"
    backup.write_bytes(path.read_bytes())
    store = SqliteRegistryStore(path)
    await store.open()
    await store.commit([put(3, "agents/a3")], [])
    await store.close()
    remove_database(path)
    path.write_bytes(backup.read_bytes())
    store = SqliteRegistryStore(path)
    snapshot = await store.open(accept_loss=True)
    await store.close()
    # The agents it had are kept; a history with a hole in it would be a silent gap.
    assert (snapshot.revision, sorted(snapshot.agents), snapshot.events) == (
        3,
        ["agents/a1", "agents/a2"],
        [],
    )


async def test_the_marker_is_kept_next_to_the_database(path):
    await committed(path, 2)
    assert int(marker_of(path).read_text()) == 2
    marker_of(path).unlink()  # a database of the previous version has none: it is written
    assert (await reopened(path)).revision == 2
    assert int(marker_of(path).read_text()) == 2
    marker_of(path).write_text("garbage")  # damaged, but the database is there: rewritten
    assert (await reopened(path)).revision == 2
    assert int(marker_of(path).read_text()) == 2
    marker_of(path).write_text("garbage")
    remove_database(path)  # damaged and no database: something was there
    with pytest.raises(StoreCorrupt, match=r"revision.*unreadable"):
        await SqliteRegistryStore(path).open()


async def test_a_new_registry_starts_empty_and_a_deleted_empty_one_too(path):
    assert (await reopened(path)).revision == 0
    remove_database(path)  # it never held a change: nothing is lost
    assert (await reopened(path)).revision == 0


async def test_a_bad_revision_in_the_database_is_corrupt(path):
    await committed(path, 2)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='two' WHERE key='revision'")
    db.close()
    with pytest.raises(StoreCorrupt, match="table meta, key 'revision'"):
        await SqliteRegistryStore(path).open()
