"""The DNA library: the DNA documents of one directory, read, checked and cached.

Every `<dna>.yaml`, `<dna>.yml` or `<dna>.json` file directly in the directory whose
`<dna>` matches `[a-z][a-z0-9-]{0,62}` is the document "dnas/<dna>"; other files are not
served. Two files with the same `<dna>` (say `a.yaml` and `a.json`) make "dnas/a" an
invalid document, rule "duplicate_name", naming both: serving either one silently could
run a different DNA than its author edited, so the library refuses to choose.

The directory is listed and stat'ed on each call (in a worker thread), so added, changed
and deleted files show at once. A file's parsed document is cached in a bounded LRU,
valid for the file's (size, mtime_ns, inode) at the time it was read: an unchanged file is
not read again, a changed one is read on its next use. Concurrent requests for the same
uncached file share one read (single flight). A file that cannot be used (unreadable, too
large, not UTF-8, gone between listing and reading) is an invalid document with a
violation saying why; it never stops the other documents. Read failures are not cached,
so fixing a file's permissions takes effect at once.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import stat
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiofiles
from google.protobuf.timestamp_pb2 import Timestamp

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common import errors, reasons
from helix.common.errors import FieldViolation
from helix.common.rules import DUPLICATE_NAME, FILE_TOO_LARGE, UNREADABLE
from helix.genome.documents import (
    DNA_EXTENSIONS,
    DnaCheck,
    check_dna_bytes,
    dna_name_for,
    dna_violation,
    file_problem,
    from_dna_violation,
    is_dna_id,
)

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_FILE_BYTES = 1 << 20
DEFAULT_MAX_PARALLEL_READS = 8

_NAME_PREFIX = "dnas/"

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
    (single flight) instead of starting their own."""

    reads: int = 0
    hits: int = 0
    evictions: int = 0
    shared: int = 0


@dataclass(frozen=True, slots=True)
class _File:
    source: str  # the file's path relative to the library directory
    path: str
    stamp: Stamp

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


def _regular_file(directory: Path, filename: str) -> _File | None:
    """The file `filename` of `directory` if it is (a link to) a regular file."""
    path = os.path.join(directory, filename)
    try:
        info = os.stat(path)
    except OSError:  # gone, a dangling link, or not ours to see: not served
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return _File(filename, path, (info.st_size, info.st_mtime_ns, info.st_ino))


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
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._loading: dict[tuple[str, Stamp], asyncio.Task[_Entry]] = {}
        self._reads = asyncio.Semaphore(max_parallel_reads)

    # --- public API -----------------------------------------------------------------------

    async def list(self) -> builtins.list[generator_pb2.DnaDocument]:
        """Every document of the library, in name order, invalid ones included."""
        files = await asyncio.to_thread(self._scan)
        by_name: dict[str, builtins.list[_File]] = {}
        for file in files:
            by_name.setdefault(dna_name_for(file.source), []).append(file)
        listed = {file.path for file in files}
        for path in [p for p in self._cache if p not in listed]:
            del self._cache[path]  # deleted files leave the cache too
        names = sorted(by_name)
        entries = await asyncio.gather(*(self._document(n, by_name[n]) for n in names))
        return [_copy(entry.document) for entry in entries]

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

    def _scan(self) -> builtins.list[_File]:
        """The served files of the directory (runs in a worker thread)."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []  # a library whose directory is not there (yet) is empty
        except OSError as exc:
            raise errors.Unavailable(
                f"the DNA library directory cannot be read ({type(exc).__name__})"
            ) from None
        found = []
        for filename in names:
            if not filename.endswith(DNA_EXTENSIONS) or not dna_name_for(filename):
                continue
            file = _regular_file(self.directory, filename)
            if file is not None:
                found.append(file)
        return found

    def _find(self, name: str) -> builtins.list[_File]:
        """The files that define `name` (runs in a worker thread)."""
        dna_id = name.removeprefix(_NAME_PREFIX)
        if not name.startswith(_NAME_PREFIX) or not is_dna_id(dna_id):
            return []
        files = (_regular_file(self.directory, dna_id + ext) for ext in DNA_EXTENSIONS)
        return [file for file in files if file is not None]

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
        entry = self._cache.get(file.path)
        if entry is not None and entry.stamp == file.stamp:
            self._cache.move_to_end(file.path)
            self.stats.hits += 1
            return entry
        key = (file.path, file.stamp)
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

    def _remember(self, path: str, entry: _Entry) -> None:
        self._cache[path] = entry
        self._cache.move_to_end(path)
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
        self._remember(file.path, entry)
        return entry

    async def _read(self, file: _File) -> bytes | DnaCheck:
        """The file's content (up to one byte over the limit), or why it cannot be read."""
        limit = self.max_file_bytes
        if file.stamp[0] > limit:  # no need to read it
            return file_problem(file.source, FILE_TOO_LARGE, f"the file is over {limit} bytes")
        try:
            async with aiofiles.open(file.path, "rb") as handle:
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
