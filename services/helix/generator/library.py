"""The DNA library: the DNA documents of one directory, read, checked and cached.

Every `<dna>.yaml`, `<dna>.yml` or `<dna>.json` file directly in the directory whose
`<dna>` matches `[a-z][a-z0-9-]{0,62}` is the document "dnas/<dna>" (the naming rules are
documents.py's, which `helix dna validate` applies too). Every other entry is skipped, and
listed as such with why (`SkippedFile`): another name ("file_name"), a directory, a
dangling link ("unreadable"); hidden entries (".git", an editor's ".a.yaml.swp") are
neither served nor listed. Two files with the same `<dna>` (say `a.yaml` and `a.json`)
make "dnas/a" an invalid document, rule "duplicate_name", naming both: serving either one
silently could run a different DNA than its author edited, so the library refuses to choose.

A file may be a symbolic link, but only to a file inside the library directory (by real
path): one that leads out of it (to the server's keys, say) is an invalid document, rule
"outside_library", and is never opened. The check is against links an operator or a DNA
author makes, not against someone racing the server inside the directory: what is opened
is the real path checked, and its inode must be the one checked.

The directory is listed on each call (in a worker thread, a listing of names), so added,
changed and deleted files show at once, but only the files a call needs are stat'ed and
read: a page of ListDnas reads the documents of that page, however large the library. A
file's parsed document is cached in a bounded LRU, valid for the file's (size, mtime_ns,
inode) at the time it was read: an unchanged file is not read again, a changed one is read
on its next use. Concurrent requests for the same uncached file share one read (single
flight). A file that cannot be used (unreadable, too large, not UTF-8, gone between
listing and reading) is an invalid document with a violation saying why; it never stops
the other documents. Read failures are not cached, so fixing a file's permissions takes
effect at once.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiofiles
from google.protobuf.timestamp_pb2 import Timestamp

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common import errors, reasons
from helix.common.errors import FieldViolation
from helix.common.rules import (
    DUPLICATE_NAME,
    FILE_NAME,
    FILE_TOO_LARGE,
    OUTSIDE_LIBRARY,
    UNREADABLE,
)
from helix.genome.documents import (
    DNA_EXTENSIONS,
    DnaCheck,
    check_dna_bytes,
    dna_name_for,
    dna_violation,
    file_problem,
    from_dna_violation,
    is_dna_id,
    why_not_served,
)

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_FILE_BYTES = 1 << 20
DEFAULT_MAX_PARALLEL_READS = 8
# Documents a pass over the whole library (`valid_names`) reads at a time.
_BATCH = 64

_NAME_PREFIX = "dnas/"
log = logging.getLogger("helix.generator.library")

Stamp = tuple[int, int, int]  # (size, mtime_ns, inode): a cached read is valid for these


class DnaInvalid(errors.InvalidArgument):
    """A DNA of the library (or inline) is invalid: one violation per broken rule."""

    default_reason = reasons.DNA_INVALID


@dataclass(frozen=True, slots=True)
class ValidDna:
    """A valid library DNA: its document and its normalised Dna (name filled in)."""

    document: generator_pb2.DnaDocument
    dna: dna_pb2.Dna


@dataclass(slots=True)
class LibraryStats:
    """Counters that show what the cache saves: `reads` counts files read from disk, `hits`
    requests the cache answered, `shared` requests that joined a read already under way
    (single flight) instead of starting their own. `skipped` is a gauge: the entries of
    the directory that the last listing did not serve; `outside` counts links refused
    because they lead out of the library directory."""

    reads: int = 0
    hits: int = 0
    evictions: int = 0
    shared: int = 0
    skipped: int = 0
    outside: int = 0


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """An entry of the library directory that is not served, and why: `rule` is
    "file_name" (not `{dna}.yaml|yml|json`) or "unreadable" (not a regular file)."""

    file: str
    rule: str
    description: str


@dataclass(frozen=True, slots=True)
class LibraryPage:
    """Documents of the library in name order, after some name: `last` is the last name
    the page covers (its files may have gone meanwhile), `more` whether names follow it;
    `skipped` the directory's skipped entries, in file name order."""

    documents: builtins.list[generator_pb2.DnaDocument]
    last: str = ""
    more: bool = False
    skipped: tuple[SkippedFile, ...] = ()


@dataclass(frozen=True, slots=True)
class _Listing:
    """One listing of the directory: the files of each served name, the names sorted,
    and the skipped entries."""

    files: dict[str, builtins.list[str]]
    names: builtins.list[str]
    skipped: tuple[SkippedFile, ...]


@dataclass(frozen=True, slots=True)
class _File:
    source: str  # the file's name in the library directory
    path: str  # what is opened: its real path (a link resolved), inside the directory
    stamp: Stamp
    device: int = 0
    outside: bool = False  # a link that leads out of the directory: never opened

    @property
    def mtime_ns(self) -> int:
        return self.stamp[1]


@dataclass(frozen=True, slots=True)
class _Entry:
    stamp: Stamp
    document: generator_pb2.DnaDocument
    normalised: dna_pb2.Dna | None


def _timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _copy(document: generator_pb2.DnaDocument) -> generator_pb2.DnaDocument:
    copy = generator_pb2.DnaDocument()
    copy.CopyFrom(document)
    return copy


def _inside(path: str, root: str) -> bool:
    """Whether the real path `path` is within the real directory `root`."""
    return path != root and os.path.commonpath([path, root]) == root


def leads_outside(path: str | os.PathLike[str], directory: str | os.PathLike[str]) -> bool:
    """Whether the file `path` of the library `directory` is, by its real path, outside
    it (a link out of the directory, which a library refuses). Blocking."""
    return not _inside(os.path.realpath(path), os.path.realpath(directory))


OUTSIDE_TEXT = (
    "the file is a symbolic link to a file outside the library directory: it is not read "
    "(copy the DNA into the directory, or link within it)"
)


def _stat_file(directory: Path, root: str, filename: str) -> _File | None:
    """The file `filename` of `directory` (real path `root`) if it is a regular file or a
    link to one (an outside one is returned, marked); None if it is not (any more)."""
    path = os.path.join(directory, filename)
    try:
        real = os.path.realpath(path)
        if not _inside(real, root):
            link = os.lstat(path)
            return _File(filename, path, (link.st_size, link.st_mtime_ns, link.st_ino), 0, True)
        info = os.stat(real)
    except OSError:  # gone, a dangling link, or not ours to see: not served
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return _File(filename, real, (info.st_size, info.st_mtime_ns, info.st_ino), info.st_dev)


def _not_a_file(entry: os.DirEntry[str]) -> str:
    """Why a directory entry with a DNA file's name is not served."""
    try:
        if entry.is_dir():
            return "a directory, not a file"
        if entry.is_symlink() and not os.path.exists(entry.path):
            return "a symbolic link to nothing"
    except OSError as exc:
        return f"cannot be examined: {exc.strerror or type(exc).__name__}"
    return "not a regular file"


class DnaLibrary:
    """The DNA documents of `directory` (see the module doc). Use from one event loop."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_parallel_reads: int = DEFAULT_MAX_PARALLEL_READS,
    ) -> None:
        if max_entries < 1 or max_file_bytes < 1 or max_parallel_reads < 1:
            raise ValueError("max_entries, max_file_bytes and max_parallel_reads must be >= 1")
        self.directory = Path(directory)
        self.max_entries = max_entries
        self.max_file_bytes = max_file_bytes
        self.stats = LibraryStats()
        self._cache: OrderedDict[str, _Entry] = OrderedDict()  # by file name
        self._loading: dict[tuple[str, Stamp], asyncio.Task[_Entry]] = {}
        self._reads = asyncio.Semaphore(max_parallel_reads)

    # --- public API -----------------------------------------------------------------------

    async def list(self) -> builtins.list[generator_pb2.DnaDocument]:
        """Every document of the library, in name order, invalid ones included. Reads every
        file (those not cached): a listing for people and tests, not for a server's calls."""
        return (await self.page()).documents

    async def page(self, after: str = "", size: int | None = None) -> LibraryPage:
        """The first `size` (None: all) documents whose names sort after `after`, in name
        order; only their files are stat'ed and read."""
        listing = await self._listing()
        start = bisect.bisect_right(listing.names, after)
        end = len(listing.names) if size is None else min(start + size, len(listing.names))
        documents = await self._documents(listing, listing.names[start:end])
        return LibraryPage(
            [_copy(entry.document) for _, entry in documents],
            listing.names[end - 1] if end > start else after,
            end < len(listing.names),
            listing.skipped,
        )

    async def valid_names(self) -> AsyncIterator[str]:
        """The names of the valid documents, in name order: one pass over the whole library,
        reading `_BATCH` documents at a time (only the names are kept, not the documents)."""
        listing = await self._listing()
        for start in range(0, len(listing.names), _BATCH):
            batch = listing.names[start : start + _BATCH]
            for name, entry in await self._documents(listing, batch):
                if entry.normalised is not None:
                    yield name

    async def get(self, name: str) -> generator_pb2.DnaDocument:
        """The document `name` ("dnas/{dna}"), valid or not; NotFound if no file has it."""
        entry = await self._named(name)
        return _copy(entry.document)

    async def valid(self, name: str) -> ValidDna:
        """The valid document `name` and its normalised DNA, for Generate.

        Raises NotFound when no file has that name, DnaInvalid (INVALID_ARGUMENT, with a
        BadRequest violation per DnaViolation) when the document is invalid.
        """
        entry = await self._named(name)
        if entry.normalised is None:
            raise invalid_dna_error(name, entry.document.source, entry.document.violations)
        dna = dna_pb2.Dna()
        dna.CopyFrom(entry.normalised)
        return ValidDna(_copy(entry.document), dna)

    @property
    def loading(self) -> int:
        """How many file reads are under way (each shared by every request for its file)."""
        return len(self._loading)

    async def aclose(self) -> None:
        """Cancel reads still running after their callers went away."""
        pending = builtins.list(self._loading.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # --- files ----------------------------------------------------------------------------

    async def _listing(self) -> _Listing:
        listing = await asyncio.to_thread(self._scan)
        if len(listing.skipped) != self.stats.skipped:
            self.stats.skipped = len(listing.skipped)
            if listing.skipped:
                first = listing.skipped[0]
                log.warning(
                    "%d files of the DNA library are not served (%s: %s); ListDnas and "
                    "`helix dna list` name them all",
                    len(listing.skipped),
                    first.file,
                    first.description,
                )
        served = {filename for filenames in listing.files.values() for filename in filenames}
        for source in [source for source in self._cache if source not in served]:
            del self._cache[source]  # deleted files leave the cache too
        return listing

    async def _documents(
        self, listing: _Listing, names: Sequence[str]
    ) -> builtins.list[tuple[str, _Entry]]:
        """The documents `names` of `listing` (a name whose files went away is left out)."""
        chosen = [(name, listing.files[name]) for name in names]
        found = await asyncio.to_thread(self._stat_all, chosen)
        entries = await asyncio.gather(*(self._document(name, files) for name, files in found))
        return builtins.list(zip((name for name, _ in found), entries, strict=True))

    def _scan(self) -> _Listing:
        """List the directory (runs in a worker thread): names only, plus a stat of each
        link (to tell a link to a file from one to nothing)."""
        files: dict[str, builtins.list[str]] = {}
        skipped: builtins.list[SkippedFile] = []
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue  # hidden: neither served nor listed
                    problem = why_not_served(entry.name)
                    if problem is not None:
                        skipped.append(SkippedFile(entry.name, FILE_NAME, problem))
                        continue
                    try:
                        regular = entry.is_file()  # no system call unless it is a link
                    except OSError:
                        regular = False
                    if not regular:
                        skipped.append(SkippedFile(entry.name, UNREADABLE, _not_a_file(entry)))
                        continue
                    files.setdefault(dna_name_for(entry.name), []).append(entry.name)
        except FileNotFoundError:
            return _Listing({}, [], ())  # a library whose directory is not there (yet) is empty
        except OSError as exc:
            raise errors.Unavailable(
                f"the DNA library directory cannot be read ({type(exc).__name__})"
            ) from None
        skipped.sort(key=lambda file: file.file)
        return _Listing(files, sorted(files), tuple(skipped))

    def _stat_all(
        self, chosen: Sequence[tuple[str, Sequence[str]]]
    ) -> builtins.list[tuple[str, builtins.list[_File]]]:
        """Stat the files of each name (runs in a worker thread)."""
        root = os.path.realpath(self.directory)
        found = []
        for name, filenames in chosen:
            files = [_stat_file(self.directory, root, filename) for filename in sorted(filenames)]
            present = [file for file in files if file is not None]
            if present:
                found.append((name, present))
        return found

    def _find(self, name: str) -> builtins.list[_File]:
        """The files that define `name` (runs in a worker thread)."""
        dna_id = name.removeprefix(_NAME_PREFIX)
        if not name.startswith(_NAME_PREFIX) or not is_dna_id(dna_id):
            return []
        filenames = [dna_id + extension for extension in DNA_EXTENSIONS]
        found = self._stat_all([(name, filenames)])
        return found[0][1] if found else []

    async def _named(self, name: str) -> _Entry:
        files = await asyncio.to_thread(self._find, name)
        if not files:
            raise errors.NotFound(f"{name} not found", metadata={"name": name})
        return await self._document(name, files)

    # --- the cache ------------------------------------------------------------------------

    async def _document(self, name: str, files: Sequence[_File]) -> _Entry:
        if len(files) > 1:
            return _duplicate(name, files)
        file = files[0]
        if file.outside:
            self.stats.outside += 1
            return _entry(name, file, file_problem(file.source, OUTSIDE_LIBRARY, OUTSIDE_TEXT))
        entry = self._cache.get(file.source)
        if entry is not None and entry.stamp == file.stamp:
            self._cache.move_to_end(file.source)
            self.stats.hits += 1
            return entry
        key = (file.source, file.stamp)
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(name, file), name=f"load {file.source}")
            self._loading[key] = task
            task.add_done_callback(lambda done: self._loaded(key, done))
        else:
            self.stats.shared += 1
        # shield: a caller that gives up cancels its wait, not the read others share.
        return await asyncio.shield(task)

    def _loaded(self, key: tuple[str, Stamp], task: asyncio.Task[_Entry]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every caller went away

    def _remember(self, source: str, entry: _Entry) -> None:
        self._cache[source] = entry
        self._cache.move_to_end(source)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
            self.stats.evictions += 1

    async def _load(self, name: str, file: _File) -> _Entry:
        async with self._reads:
            data = await self._read(file)
            if isinstance(data, DnaCheck):
                return _entry(name, file, data)  # not cached: the cause may go away
            check = await asyncio.to_thread(
                check_dna_bytes, data, file.source, max_bytes=self.max_file_bytes
            )
        entry = _entry(name, file, check)
        self._remember(file.source, entry)
        return entry

    async def _read(self, file: _File) -> bytes | DnaCheck:
        """The file's content (up to one byte over the limit), or why it cannot be read."""
        limit = self.max_file_bytes
        if file.stamp[0] > limit:  # no need to read it
            return file_problem(file.source, FILE_TOO_LARGE, f"the file is over {limit} bytes")
        try:
            async with aiofiles.open(file.path, "rb") as handle:
                opened = os.fstat(handle.fileno())
                if (opened.st_dev, opened.st_ino) != (file.device, file.stamp[2]):
                    # Replaced since it was stat'ed (and checked to be inside the library):
                    # read what the next call finds instead.
                    text = "the file was replaced while being read: try again"
                    return file_problem(file.source, UNREADABLE, text)
                data = await handle.read(limit + 1)
        except FileNotFoundError:
            return file_problem(file.source, UNREADABLE, "the file was removed while being read")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            return file_problem(file.source, UNREADABLE, f"the file cannot be read: {reason}")
        self.stats.reads += 1
        return data


def _entry(name: str, file: _File, outcome: DnaCheck) -> _Entry:
    document = generator_pb2.DnaDocument(
        name=name, source=file.source, update_time=_timestamp(file.mtime_ns)
    )
    document.violations.extend(outcome.violation_protos())
    if outcome.normalised is None:
        document.dna.CopyFrom(outcome.dna)
        return _Entry(file.stamp, document, None)
    normalised = dna_pb2.Dna()
    normalised.CopyFrom(outcome.normalised)
    normalised.name = normalised.name or name  # a library DNA is named after its file
    document.dna.CopyFrom(normalised)
    document.valid = True
    document.fingerprint = outcome.fingerprint
    return _Entry(file.stamp, document, normalised)


def _duplicate(name: str, files: Sequence[_File]) -> _Entry:
    """The invalid document of a name that more than one file defines (not cached)."""
    files = sorted(files, key=lambda file: file.source)
    sources = ", ".join(file.source for file in files)
    text = f"{name} is defined by more than one file ({sources}): keep one"
    document = generator_pb2.DnaDocument(
        name=name,
        source=files[0].source,
        update_time=_timestamp(max(file.mtime_ns for file in files)),
        violations=[
            dna_violation(FieldViolation("", text, DUPLICATE_NAME, file.source)) for file in files
        ],
    )
    return _Entry(files[0].stamp, document, None)


def invalid_dna_error(
    name: str,
    source: str,
    violations: Sequence[generator_pb2.DnaViolation],
    *,
    field_prefix: str = "",
) -> DnaInvalid:
    """The INVALID_ARGUMENT error for an invalid DNA: a BadRequest violation per rule.

    `name` is the library DNA's name ("" for an inline one); each violation's field path is
    put under `field_prefix` (e.g. "dna" for GenerateRequest.dna).
    """
    found = [from_dna_violation(v) for v in violations]
    first = str(found[0]) if found else "invalid"
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return DnaInvalid(
        f"{name or 'the DNA'} is invalid: {first}{more}",
        [v.under(field_prefix) for v in found],
        metadata={"name": name, "source": source} if name else {"source": source},
    )
