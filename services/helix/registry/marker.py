"""The revision marker: a small file next to the registry database recording the last
revision the registry reached, so a database that went missing, empty or back to an older
copy is noticed instead of silently starting an empty registry at revision 0.

The database stays the truth when it is there and at least as far as the marker. The
marker is written atomically (temporary file, fsync, rename) when the store opens, then
updated in place after every commit (one `pwrite` of a fixed-width number, no fsync: a
commit already paid for its fsync, and the marker must only survive the process, not the
machine) and fsynced when the store closes. It never runs ahead of the database: it is
written after the commit it records.

Pure file I/O, no SQLite: a store of another kind could keep one the same way.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from helix.registry.store import StoreCorrupt, StoreError

SUFFIX = ".revision"
_WIDTH = 20  # digits: any int64 revision, so an update always overwrites the whole number


def marker_path(database: Path) -> Path:
    """Where the marker of `database` lives: `registry.sqlite3.revision` beside it."""
    return database.with_name(database.name + SUFFIX)


@dataclass(frozen=True, slots=True)
class Reading:
    """What the marker says: nothing (`exists` False), a revision, or that it is damaged
    (`revision` None while `exists`)."""

    exists: bool
    revision: int | None = None


def read_marker(path: Path) -> Reading:
    """Read the marker at `path`."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return Reading(exists=False)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the registry's revision marker ({exc})") from None
    value = text.strip()
    if value.isdigit() and len(value) <= _WIDTH:
        return Reading(exists=True, revision=int(value))
    return Reading(exists=True)


def _accept_hint(reached: int) -> str:
    return (
        "to start from what is there on purpose, pass --registry-accept-loss once "
        f"(revisions continue after {reached}, the event history is dropped, and agents "
        "that were lost register again)"
    )


def check_reached(database: Path, marker: Reading, stored: int, state: str) -> int | None:
    """The revision to continue after if the database (`state`: "missing", "empty", or
    "" when present, at revision `stored`) lost changes the marker records; None if it
    lost nothing. Raises `StoreCorrupt` when it cannot be told what was reached."""
    where = f"{database} is {state}" if state else f"{database} is at revision {stored}"
    path = marker_path(database)
    if marker.exists and marker.revision is None and state:
        raise StoreCorrupt(
            f"{where}, and its revision marker {path} is unreadable, so this data dir held a "
            "registry whose last revision is unknown. Nothing was changed: restore the "
            "database (with its -wal file) from a backup, or delete the marker to start an "
            "empty registry at revision 1 on purpose"
        )
    if marker.revision is None or marker.revision <= stored:
        return None
    return marker.revision


def loss_message(database: Path, stored: int, state: str, reached: int) -> str:
    """Why a database that lost changes is refused, and what the operator can do."""
    path = marker_path(database)
    if state:
        return (
            f"{database} is {state}, but {path} records that this registry reached revision "
            f"{reached}: starting empty would take revisions back to 1 and forget every agent. "
            "Nothing was changed. Restore the database (with its -wal file) from a backup, "
            f"or {_accept_hint(reached)}"
        )
    return (
        f"{database} is at revision {stored}, but {path} records that this registry reached "
        f"revision {reached}: {reached - stored} acknowledged changes are missing (an older "
        "copy restored, a lost -wal file, or a power failure with --registry-sync normal). "
        f"Nothing was changed. Restore the latest database, or {_accept_hint(reached)}"
    )


class MarkerWriter:
    """Keeps the marker of one open store up to date (on the store's own thread)."""

    def __init__(self, database: Path) -> None:
        self.path = marker_path(database)
        self._fd: int | None = None
        self._failed = False

    def start(self, revision: int) -> None:
        """Write `revision` atomically and keep the file open for in-place updates."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, _encoded(revision))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            _fsync_directory(self.path.parent)
            self._fd = os.open(self.path, os.O_WRONLY)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write the revision marker ({exc})") from None

    def update(self, revision: int) -> bool:
        """Record `revision` (after its commit); False if that failed (the caller logs it
        once: the commit itself stands)."""
        if self._fd is None or self._failed:
            return True
        try:
            os.pwrite(self._fd, _encoded(revision), 0)
        except OSError:
            self._failed = True
            return False
        return True

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)


def _encoded(revision: int) -> bytes:
    return f"{revision:0{_WIDTH}d}\n".encode("ascii")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
