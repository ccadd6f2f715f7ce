"""The generator against a hostile or careless library (issue 10): a merge-key bomb, a slow
library at start, thousands of files, links out of the directory, files it does not serve."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
from helix.agents.presence import AgentPresence
from helix.generator import dnas
from helix.generator.library import DnaLibrary, _File
from helix.generator.service import TRUNCATED_LABEL, register_library
from helix.generator.stats import GeneratorStats
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint

from registry_support import Suite, start_suite
from waiting import eventually

SPHERE = "genes:\n  - {name: x, real: {low: -5.12, high: 5.12, size: 10}}\n"
SCOPES = ("dna.read", "generate")


def merge_bomb(keys: int = 1000, aliases: int = 20_000) -> str:
    """The issue's bomb: one mapping of `keys` keys merged `aliases` times."""
    base = "{" + ", ".join(f"k{i}: {i}" for i in range(keys)) + "}"
    return f"a: &a {base}\ngenes: []\nstrategy:\n  <<: [{', '.join(['*a'] * aliases)}]\n"


def generator(suite: Suite) -> Any:
    token = mint(suite.server.security.signer, "carol", SCOPES, 3600)
    channel = grpc.aio.insecure_channel(
        suite.server.address, interceptors=bearer_interceptors(StaticTokenSource(token))
    )
    suite.channels.append(channel)
    return generator_pb2_grpc.GeneratorServiceStub(channel)


def sample(suite: Suite, name: str) -> float:
    return suite.server.metrics.registry.get_sample_value(name, {}) or 0.0


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[list[Suite]]:
    """Suites a test starts, closed after it."""
    suites: list[Suite] = []
    yield suites
    for suite in suites:
        await suite.close()


async def start(started: list[Suite], tmp_path: Path, **overrides: Any) -> Suite:
    library = tmp_path / "dnas"
    library.mkdir(exist_ok=True)
    async with asyncio.timeout(20):  # a start that waited for the library would hang here
        suite = await start_suite(tmp_path / "data", generator_dna_dir=library, **overrides)
    started.append(suite)
    return suite


# --- item 1: merge-key bombs, and a library that takes long to read --------------------------


async def test_a_merge_bomb_is_refused_at_once_by_validate_and_the_library(started, tmp_path):
    library = tmp_path / "dnas"
    library.mkdir()
    (library / "bomb.yaml").write_text(merge_bomb(1000, 200_000))  # 800 kB
    suite = await start(started, tmp_path, generator_self_register=True)
    stub = generator(suite)
    async with asyncio.timeout(10):  # it took 1.4 GB and 9 s at a tenth of this size
        checked = await stub.ValidateDna(generator_pb2.ValidateDnaRequest(text=merge_bomb()))
        document = (await stub.GetDna(generator_pb2.GetDnaRequest(name="dnas/bomb"))).dna
    assert not checked.valid
    assert {v.rule for v in checked.violations} == {"unknown_field"}
    assert not document.valid


async def test_a_slow_library_neither_delays_listening_nor_fails_requests(
    started, tmp_path, monkeypatch
):
    (tmp_path / "dnas").mkdir()
    (tmp_path / "dnas" / "sphere.yaml").write_text(SPHERE)
    gate = asyncio.Event()
    real_read = DnaLibrary._read

    async def slow_read(self: DnaLibrary, file: _File) -> Any:
        await gate.wait()
        return await real_read(self, file)

    monkeypatch.setattr(DnaLibrary, "_read", slow_read)
    suite = await start(started, tmp_path, generator_self_register=True)  # listening
    registry = suite.stub("dave", ("agents.read",))
    request = registry_pb2.ListAgentsRequest(kind=registry_pb2.AGENT_KIND_GENERATOR)

    # A request for a DNA still being read waits for that read (it shares it).
    async def get_sphere() -> generator_pb2.GetDnaResponse:
        request = generator_pb2.GetDnaRequest(name="dnas/sphere")
        response: generator_pb2.GetDnaResponse = await generator(suite).GetDna(request)
        return response

    call = asyncio.create_task(get_sphere())
    await eventually(
        lambda: sample(suite, "helix_generator_library_shared_reads_total") >= 1,
        what="GetDna to join the read under way",
    )
    assert not (await registry.ListAgents(request)).agents  # registers once it is read
    gate.set()
    assert (await call).dna.valid

    async def registered() -> list[str] | None:
        agents = (await registry.ListAgents(request)).agents
        return list(agents[0].generator.dnas) if agents else None

    assert await eventually(registered, what="the generator to register") == ["dnas/sphere"]


# --- item 7: listing cost follows the page; the advertisement is bounded ---------------------


async def test_list_dnas_reads_only_the_documents_of_its_page(started, tmp_path):
    library = tmp_path / "dnas"
    library.mkdir()
    for i in range(200):
        (library / f"dna-{i:03d}.yaml").write_text(SPHERE)
    suite = await start(started, tmp_path)
    stub = generator(suite)
    first = await stub.ListDnas(generator_pb2.ListDnasRequest(page_size=5))
    assert [d.name for d in first.dnas] == [f"dnas/dna-{i:03d}" for i in range(5)]
    assert sample(suite, "helix_generator_library_reads_total") == 5  # not 200
    second = await stub.ListDnas(
        generator_pb2.ListDnasRequest(page_size=5, page_token=first.next_page_token)
    )
    assert [d.name for d in second.dnas] == [f"dnas/dna-{i:03d}" for i in range(5, 10)]
    assert sample(suite, "helix_generator_library_reads_total") == 10


def test_the_advertisement_keeps_the_first_names_that_fit() -> None:
    names = [f"dnas/d{i:05d}" for i in range(10_001)]  # 11 bytes each, 13 on the wire
    everything = dnas.Advertisement(1 << 20)
    for name in names:
        everything.offer(name)
    assert (everything.names, everything.left_out) == (names[:10_000], 1)
    bounded = dnas.Advertisement(1300)
    for name in names:
        bounded.offer(name)
    assert (bounded.names, bounded.left_out) == (names[:100], 9_901)
    details = registry_pb2.GeneratorDetails(dnas=bounded.names)
    assert details.ByteSize() == 1300


class RecordingPresence(AgentPresence):
    """A presence that records that it was started instead of registering."""

    def __init__(self) -> None:
        super().__init__(lambda: None, registry_pb2.Agent())  # type: ignore[arg-type,return-value]
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1


async def test_more_dnas_than_fit_are_left_out_of_the_registration_and_said(
    tmp_path, caplog
) -> None:
    for i in range(100):
        (tmp_path / f"dna-{i:03d}.yaml").write_text(SPHERE)
    (tmp_path / "aaa-broken.yaml").write_text("genes: 1\n")  # invalid: not advertised
    presence, stats = RecordingPresence(), GeneratorStats()
    with caplog.at_level(logging.WARNING, "helix.generator"):
        await register_library(DnaLibrary(tmp_path), presence, stats, 1024)
    advertised = list(presence.agent.generator.dnas)
    assert advertised == [f"dnas/dna-{i:03d}" for i in range(len(advertised))]
    assert presence.agent.generator.ByteSize() <= 1024 < presence.agent.generator.ByteSize() + 16
    assert presence.agent.labels[TRUNCATED_LABEL] == "true"
    assert (stats.advertised, stats.left_out, presence.starts) == (
        len(advertised),
        100 - len(advertised),
        1,
    )
    assert f"{100 - len(advertised)} left out" in caplog.text
    # All of them fit: no label, no warning.
    caplog.clear()
    presence, stats = RecordingPresence(), GeneratorStats()
    await register_library(DnaLibrary(tmp_path), presence, stats, 48 << 10)
    assert len(presence.agent.generator.dnas) == 100
    assert TRUNCATED_LABEL not in presence.agent.labels
    assert "left out" not in caplog.text


# --- item 12: a link to the server's own key ------------------------------------------------


async def test_a_link_to_the_signing_key_is_refused_and_never_quoted(started, tmp_path):
    suite = await start(started, tmp_path)
    (key,) = suite.config.key_dir.glob("*.hs256")
    secret = key.read_text().strip()
    (tmp_path / "dnas" / "key.yaml").symlink_to(key)
    (tmp_path / "dnas" / "sphere.yaml").write_text(SPHERE)
    stub = generator(suite)
    listed = await stub.ListDnas(generator_pb2.ListDnasRequest())
    got = (await stub.GetDna(generator_pb2.GetDnaRequest(name="dnas/key"))).dna
    for text in (str(listed), str(got)):
        assert secret[:12] not in text
    assert [v.rule for v in got.violations] == ["outside_library"]
    assert sample(suite, "helix_generator_library_outside_refused_total") == 2


# --- item 13b: the files the library skips ------------------------------------------------


async def test_list_dnas_names_the_files_it_skips_on_its_first_page(started, tmp_path):
    library = tmp_path / "dnas"
    library.mkdir()
    for name in ("a.yaml", "b.yaml", "Upper.yaml", "sphere.txt", ".hidden.yaml"):
        (library / name).write_text(SPHERE)
    suite = await start(started, tmp_path)
    stub = generator(suite)
    first = await stub.ListDnas(generator_pb2.ListDnasRequest(page_size=1))
    assert [d.name for d in first.dnas] == ["dnas/a"]
    assert [(f.file, f.rule) for f in first.skipped] == [
        ("Upper.yaml", "file_name"),
        ("sphere.txt", "file_name"),
    ]
    assert first.total_skipped == 2
    assert "not a DNA id" in first.skipped[0].description
    second = await stub.ListDnas(
        generator_pb2.ListDnasRequest(page_size=1, page_token=first.next_page_token)
    )
    assert ([d.name for d in second.dnas], list(second.skipped)) == (["dnas/b"], [])
    assert sample(suite, "helix_generator_library_skipped_files") == 2
