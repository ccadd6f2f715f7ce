"""The DNA library on a real directory: listing, caching, single flight and bad files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiofiles
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common import errors
from helix.common.status import status_code_for, to_rpc_status
from helix.generator import dnas
from helix.generator import library as library_module
from helix.generator.library import DnaInvalid, DnaLibrary
from helix.genome.documents import parse_dna_text

from waiting import eventually

SPHERE = "name: dnas/sphere\ngenes:\n  - {name: x, real: {low: -5.12, high: 5.12, size: 10}}\n"
ONEMAX = '{"genes": [{"name": "bits", "bits": {"size": 100}}]}'
BROKEN = "genes:\n  - {name: x, real: {low: 2, high: 1}}\n"


def write(directory: Path, filename: str, text: str | bytes) -> Path:
    path = directory / filename
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def summary(documents: list[generator_pb2.DnaDocument]) -> list[tuple[str, bool, str]]:
    return [(doc.name, doc.valid, doc.source) for doc in documents]


def rules(document: generator_pb2.DnaDocument) -> list[tuple[str, str, str, int]]:
    return [(v.file, v.field_path, v.rule, v.line) for v in document.violations]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "dnas"
    path.mkdir()
    write(path, "sphere.yaml", SPHERE)
    write(path, "onemax.json", ONEMAX)
    write(path, "broken.yml", BROKEN)
    return path


@pytest.fixture
async def library(directory: Path):
    dnas = DnaLibrary(directory)
    yield dnas
    await dnas.aclose()


async def test_lists_valid_and_invalid_documents_in_name_order(library, directory) -> None:
    for ignored in ("Upper.yaml", ".hidden.yaml", "notes.txt", "x.tar.yaml"):
        write(directory, ignored, SPHERE)
    (directory / "subdir.yaml").mkdir()
    documents = await library.list()
    assert summary(documents) == [
        ("dnas/broken", False, "broken.yml"),
        ("dnas/onemax", True, "onemax.json"),
        ("dnas/sphere", True, "sphere.yaml"),
    ]
    broken, onemax, sphere = documents
    assert rules(broken) == [("broken.yml", "genes[0].real.low", "low_le_high", 2)]
    assert (broken.fingerprint, broken.dna.genes[0].real.low) == ("", 2)
    assert onemax.dna.name == "dnas/onemax"  # a library DNA is named after its file
    assert onemax.dna.strategy.alpha.population_size == 64  # normalised
    assert len(sphere.fingerprint) == 64
    assert not sphere.violations
    mtime_ns = (directory / "sphere.yaml").stat().st_mtime_ns
    assert sphere.update_time == Timestamp(seconds=mtime_ns // 10**9, nanos=mtime_ns % 10**9)


async def test_get_and_valid(library) -> None:
    sphere = await library.get("dnas/sphere")
    assert (sphere.name, sphere.valid, sphere.source) == ("dnas/sphere", True, "sphere.yaml")
    found = await library.valid("dnas/sphere")
    assert found.document == sphere
    assert found.dna == sphere.dna
    assert found.dna.genes[0].real.size == 10
    found.dna.genes[0].name = "mutated"  # callers get copies: the cache is not touched
    assert (await library.get("dnas/sphere")).dna.genes[0].name == "x"


async def test_valid_refuses_an_invalid_dna_with_its_violations(library) -> None:
    assert not (await library.get("dnas/broken")).valid
    with pytest.raises(DnaInvalid) as caught:
        await library.valid("dnas/broken")
    error = caught.value
    assert isinstance(error, errors.InvalidArgument)
    assert error.reason == "DNA_INVALID"
    assert error.message == (
        "dnas/broken is invalid: broken.yml:2: genes[0].real.low: must be <= high [low_le_high]"
    )
    assert [(v.field, v.description, v.reason, v.where) for v in error.violations] == [
        ("genes[0].real.low", "must be <= high", "low_le_high", "broken.yml:2")
    ]
    status = to_rpc_status(error)
    assert status_code_for(error).name == "INVALID_ARGUMENT"
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    assert [(v.field, v.description, v.reason) for v in bad_request.field_violations] == [
        ("genes[0].real.low", "broken.yml:2: must be <= high", "low_le_high")
    ]


@pytest.mark.parametrize(
    "name", ["dnas/missing", "dnas/Sphere", "dnas/../dnas/sphere", "agents/sphere", "sphere", ""]
)
async def test_get_of_a_name_no_file_has_is_not_found(library, name) -> None:
    with pytest.raises(errors.NotFound):
        await library.get(name)
    with pytest.raises(errors.NotFound):
        await library.valid(name)


async def test_an_unchanged_file_is_read_once_and_a_changed_one_again(library, directory):
    path = directory / "sphere.yaml"
    first = await library.get("dnas/sphere")
    await library.get("dnas/sphere")
    await library.list()
    assert library.stats.reads == 3  # sphere once, then onemax and broken
    assert library.stats.hits == 2
    # Same size, new mtime: read again.
    before = path.stat()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert (await library.get("dnas/sphere")).update_time != first.update_time
    assert library.stats.reads == 4
    # New content and size, the old mtime put back: read again, and the change shows.
    path.write_text(SPHERE.replace("size: 10", "size: 100"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    changed = await library.get("dnas/sphere")
    assert library.stats.reads == 5
    assert changed.dna.genes[0].real.size == 100
    assert changed.fingerprint != first.fingerprint
    await library.get("dnas/sphere")
    assert library.stats.reads == 5


async def test_the_cache_is_bounded_least_recently_used_first(directory) -> None:
    write(directory, "fourth.yaml", SPHERE.replace("dnas/sphere", "dnas/fourth"))
    library = DnaLibrary(directory, max_entries=2)
    for name in ("broken", "onemax", "sphere"):
        await library.get(f"dnas/{name}")
    assert (library.stats.reads, library.stats.evictions) == (3, 1)
    await library.get("dnas/sphere")  # cached
    await library.get("dnas/onemax")  # cached, and now the most recently used
    assert library.stats.reads == 3
    await library.get("dnas/fourth")  # evicts sphere
    await library.get("dnas/onemax")
    assert library.stats.reads == 4
    await library.get("dnas/sphere")
    assert (library.stats.reads, library.stats.evictions) == (5, 3)
    assert len(await library.list()) == 4  # the listing does not depend on the cache


async def test_a_deleted_file_disappears(library, directory) -> None:
    assert len(await library.list()) == 3
    (directory / "sphere.yaml").unlink()
    assert [doc.name for doc in await library.list()] == ["dnas/broken", "dnas/onemax"]
    with pytest.raises(errors.NotFound):
        await library.get("dnas/sphere")


async def test_two_files_of_one_name_make_one_invalid_document(library, directory) -> None:
    write(directory, "sphere.json", ONEMAX)
    documents = {doc.name: doc for doc in await library.list()}
    sphere = documents["dnas/sphere"]
    assert (sphere.valid, sphere.source, sphere.fingerprint) == (False, "sphere.json", "")
    assert [(v.file, v.rule) for v in sphere.violations] == [
        ("sphere.json", "duplicate_name"),
        ("sphere.yaml", "duplicate_name"),
    ]
    assert "defined by more than one file (sphere.json, sphere.yaml)" in (
        sphere.violations[0].description
    )
    assert await library.get("dnas/sphere") == sphere
    with pytest.raises(DnaInvalid):
        await library.valid("dnas/sphere")
    assert library.stats.reads == 2  # onemax and broken; neither sphere file


async def test_unusable_files_are_invalid_documents_and_stop_nothing(directory, monkeypatch):
    write(directory, "big.yaml", SPHERE + "#" * 200)
    write(directory, "latin.yaml", b"genes:\n  - name: caf\xe9\n")
    write(directory, "locked.yaml", ONEMAX)
    write(directory, "empty.yaml", "")
    real_open = aiofiles.open

    def guarded_open(path, *args, **kwargs):
        if str(path).endswith("locked.yaml"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(aiofiles, "open", guarded_open)
    library = DnaLibrary(directory, max_file_bytes=len(SPHERE) + 100)
    documents = {doc.name: doc for doc in await library.list()}
    assert sorted(documents) == [
        "dnas/big",
        "dnas/broken",
        "dnas/empty",
        "dnas/latin",
        "dnas/locked",
        "dnas/onemax",
        "dnas/sphere",
    ]
    assert rules(documents["dnas/big"]) == [("big.yaml", "", "file_too_large", 0)]
    assert rules(documents["dnas/latin"]) == [("latin.yaml", "", "encoding", 2)]
    assert rules(documents["dnas/locked"]) == [("locked.yaml", "", "unreadable", 0)]
    assert documents["dnas/locked"].violations[0].description == (
        "the file cannot be read: Permission denied"
    )
    assert rules(documents["dnas/empty"]) == [("empty.yaml", "", "empty", 1)]
    assert documents["dnas/sphere"].valid
    assert documents["dnas/onemax"].valid
    # An unreadable file is tried again on each use: the cause may be fixed meanwhile.
    monkeypatch.setattr(aiofiles, "open", real_open)
    assert (await library.get("dnas/locked")).valid


async def test_a_file_removed_between_listing_and_reading(directory, monkeypatch) -> None:
    library = DnaLibrary(directory)
    real_stat = library._stat_all

    def stat_then_remove(chosen):
        files = real_stat(chosen)
        (directory / "sphere.yaml").unlink(missing_ok=True)
        return files

    monkeypatch.setattr(library, "_stat_all", stat_then_remove)
    documents = {doc.name: doc for doc in await library.list()}
    assert rules(documents["dnas/sphere"]) == [("sphere.yaml", "", "unreadable", 0)]
    assert "removed while being read" in documents["dnas/sphere"].violations[0].description
    assert documents["dnas/onemax"].valid


async def test_a_missing_directory_is_an_empty_library(tmp_path) -> None:
    library = DnaLibrary(tmp_path / "nowhere")
    assert await library.list() == []
    with pytest.raises(errors.NotFound):
        await library.get("dnas/sphere")


class GatedLibrary(DnaLibrary):
    """A library whose file reads wait for `gate`, counting how many start."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.gate = asyncio.Event()
        self.started = 0

    async def _read(self, file):
        self.started += 1
        await self.gate.wait()
        return await super()._read(file)


async def test_concurrent_requests_for_one_file_share_one_read(directory) -> None:
    library = GatedLibrary(directory)
    calls: list[asyncio.Task[Any]] = [
        asyncio.create_task(library.get("dnas/sphere")) for _ in range(8)
    ]
    calls.append(asyncio.create_task(library.valid("dnas/sphere")))
    calls.append(asyncio.create_task(library.list()))
    # sphere, onemax and broken are read once each; the 9 other requests for sphere (8 gets,
    # valid, and list's) wait on its read.
    await eventually(
        lambda: library.started == 3 and library.stats.shared == 9, what="every caller to wait"
    )
    library.gate.set()
    results = await asyncio.gather(*calls)
    assert library.started == 3
    assert (library.stats.reads, library.stats.hits, library.stats.shared) == (3, 0, 9)
    assert all(doc == results[0] for doc in results[:8])
    assert results[8].document == results[0]


async def test_a_cancelled_caller_does_not_cancel_the_shared_read(directory) -> None:
    library = GatedLibrary(directory)
    leaving = asyncio.create_task(library.get("dnas/sphere"))
    staying = asyncio.create_task(library.get("dnas/sphere"))
    await eventually(
        lambda: library.started == 1 and library.stats.shared == 1, what="both callers to wait"
    )
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    library.gate.set()
    assert (await staying).valid
    assert library.stats.reads == 1


async def test_a_read_whose_callers_all_left_still_fills_the_cache(directory) -> None:
    library = GatedLibrary(directory)
    caller = asyncio.create_task(library.get("dnas/sphere"))
    await eventually(lambda: library.started == 1, what="the read to start")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    library.gate.set()
    await eventually(lambda: library.loading == 0, what="the read to finish")
    assert (await library.get("dnas/sphere")).valid
    assert (library.stats.reads, library.stats.hits) == (1, 1)


async def test_aclose_cancels_reads_nobody_waits_for(directory) -> None:
    library = GatedLibrary(directory)
    caller = asyncio.create_task(library.get("dnas/sphere"))
    await eventually(lambda: library.started == 1, what="the read to start")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await library.aclose()
    assert library.loading == 0
    assert library.stats.reads == 0


def test_limits_must_be_positive(tmp_path) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        DnaLibrary(tmp_path, max_entries=0)


def test_an_inline_dna_error_puts_the_fields_under_a_prefix() -> None:
    violation = generator_pb2.DnaViolation(
        field_path="genes[0].real.low", rule="low_le_high", description="must be <= high"
    )
    error = library_module.invalid_dna_error("", "", [violation], field_prefix="dna")
    assert error.message == "the DNA is invalid: genes[0].real.low: must be <= high [low_le_high]"
    assert [(v.field, v.description, v.reason) for v in error.violations] == [
        ("dna.genes[0].real.low", "must be <= high", "low_le_high")
    ]


# --- pages (issue 10) ---------------------------------------------------------------------


def many(directory: Path, count: int) -> list[str]:
    """`count` valid DNA files dna-0000.yaml…; their names, in order."""
    for i in range(count):
        write(directory, f"dna-{i:04d}.yaml", SPHERE.replace("dnas/sphere", f"dnas/dna-{i:04d}"))
    return [f"dnas/dna-{i:04d}" for i in range(count)]


async def test_a_page_reads_only_its_own_documents(tmp_path) -> None:
    names = many(tmp_path, 300)
    library = DnaLibrary(tmp_path)
    first = await library.page("", 10)
    assert [d.name for d in first.documents] == names[:10]
    assert (first.last, first.more) == (names[9], True)
    assert library.stats.reads == 10  # not 300
    second = await library.page(first.last, 10)
    assert [d.name for d in second.documents] == names[10:20]
    assert library.stats.reads == 20
    last = await library.page(names[-3], 10)
    assert ([d.name for d in last.documents], last.more) == (names[-2:], False)
    assert (await library.page(names[-1], 10)).documents == []


async def test_a_page_of_names_whose_files_went_away_still_moves_on(directory) -> None:
    library = DnaLibrary(directory)
    real_stat = library._stat_all

    def gone(chosen):
        return [(name, files) for name, files in real_stat(chosen) if name != "dnas/broken"]

    library._stat_all = gone  # type: ignore[method-assign]
    page = await library.page("", 1)
    assert (page.documents, page.last, page.more) == ([], "dnas/broken", True)


async def test_valid_names_reads_the_whole_library_in_batches(tmp_path) -> None:
    names = many(tmp_path, 150)
    write(tmp_path, "broken.yaml", BROKEN)
    library = DnaLibrary(tmp_path, max_entries=16)
    assert [name async for name in library.valid_names()] == names
    assert library.stats.reads == 151
    assert len(library._cache) == 16  # the cache stays bounded


# --- links out of the library (issue 10) ----------------------------------------------------


async def test_a_link_out_of_the_library_is_refused_unread(tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    secret = "3f" * 32
    (keys / "signing.hs256").write_text(secret + "\n")
    directory = tmp_path / "dnas"
    directory.mkdir()
    write(directory, "sphere.yaml", SPHERE)
    (directory / "leak.yaml").symlink_to(keys / "signing.hs256")
    (directory / "up.yaml").symlink_to("../keys/signing.hs256")
    write(directory, "onemax.json", ONEMAX)
    (directory / "alias.json").symlink_to("onemax.json")  # within the library: fine
    library = DnaLibrary(directory)
    documents = {doc.name: doc for doc in await library.list()}
    for name in ("dnas/leak", "dnas/up"):
        document = documents[name]
        assert rules(document) == [(document.source, "", "outside_library", 0)]
        assert "outside the library directory" in document.violations[0].description
        assert secret[:8] not in str(document)
    assert documents["dnas/alias"].valid
    assert documents["dnas/sphere"].valid
    assert library.stats.reads == 3  # sphere, onemax and alias; never a key
    assert library.stats.outside == 2
    assert secret[:8] not in str(await library.get("dnas/leak"))
    with pytest.raises(DnaInvalid, match="outside_library"):
        await library.valid("dnas/leak")


async def test_a_library_reached_through_a_link_serves_its_own_links(tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    write(real, "onemax.json", ONEMAX)
    (real / "alias.json").symlink_to(real / "onemax.json")
    (tmp_path / "linked").symlink_to(real)
    library = DnaLibrary(tmp_path / "linked")
    assert [(d.name, d.valid) for d in await library.list()] == [
        ("dnas/alias", True),
        ("dnas/onemax", True),
    ]


async def test_a_file_replaced_after_its_check_is_not_read(directory, monkeypatch) -> None:
    library = DnaLibrary(directory)
    real_stat = library._stat_all

    def stat_then_replace(chosen):
        files = real_stat(chosen)
        os.replace(write(directory, "new.tmp", SPHERE), directory / "sphere.yaml")
        return files

    monkeypatch.setattr(library, "_stat_all", stat_then_replace)
    document = await library.get("dnas/sphere")
    assert rules(document) == [("sphere.yaml", "", "unreadable", 0)]
    assert "replaced while being read" in document.violations[0].description


# --- files that are not served (issue 10) ---------------------------------------------------


async def test_files_that_are_not_served_are_listed_with_why(library, directory) -> None:
    for ignored in ("Upper.yaml", "sphere.txt", "x.tar.yaml", ".hidden.yaml"):
        write(directory, ignored, SPHERE)
    (directory / "subdir.yaml").mkdir()
    (directory / "dangling.yaml").symlink_to(directory / "nowhere.yaml")
    page = await library.page()
    assert [d.name for d in page.documents] == ["dnas/broken", "dnas/onemax", "dnas/sphere"]
    assert [(f.file, f.rule) for f in page.skipped] == [
        ("Upper.yaml", "file_name"),
        ("dangling.yaml", "unreadable"),
        ("sphere.txt", "file_name"),
        ("subdir.yaml", "unreadable"),
        ("x.tar.yaml", "file_name"),
    ]
    why = {f.file: f.description for f in page.skipped}
    assert '"Upper", is not a DNA id' in why["Upper.yaml"]
    assert "does not end in .yaml, .yml or .json" in why["sphere.txt"]
    assert why["subdir.yaml"] == "a directory, not a file"
    assert why["dangling.yaml"] == "a symbolic link to nothing"
    assert library.stats.skipped == 5
    (directory / "sphere.txt").unlink()
    await library.page()
    assert library.stats.skipped == 4


def test_inline_dnas_are_remembered_by_their_bytes_within_bounds() -> None:
    """A run sends its pinned DNA with every Generate: the second check is a lookup, a
    changed DNA is checked again, an invalid one is never remembered, and the cache keeps
    at most `entries` DNAs of at most `max_bytes` each."""
    file = Path(__file__).resolve().parent.parent / "examples" / "dna" / "rastrigin.yaml"
    dna = parse_dna_text(file.read_text(), file.name).dna
    kept = dnas.InlineDnas(entries=2, max_bytes=1 << 20)
    key, found = kept.cached(dna)
    assert found is None
    checked = kept.check(key, dna)
    assert kept.cached(dna) == (key, checked)
    assert kept.cached(dna)[1] is not kept.cached(dna)[1]  # a fresh message each time
    other = dna_pb2.Dna()
    other.CopyFrom(dna)
    other.name = "dnas/other"
    assert kept.cached(other)[1] is None
    broken = dna_pb2.Dna()
    broken.CopyFrom(dna)
    broken.ClearField("genes")
    with pytest.raises(errors.InvalidArgument):
        kept.check(kept.cached(broken)[0], broken)
    assert kept.cached(broken)[1] is None
    for name in ("dnas/a", "dnas/b"):  # two newer ones push the first out
        newer = dna_pb2.Dna()
        newer.CopyFrom(dna)
        newer.name = name
        kept.check(kept.cached(newer)[0], newer)
    assert kept.cached(dna)[1] is None
    small = dnas.InlineDnas(max_bytes=8)  # too big to keep: checked every time
    small.check(small.cached(dna)[0], dna)
    assert small.cached(dna)[1] is None
