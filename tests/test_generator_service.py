"""GeneratorService on a real embedded suite: every RPC, streaming, bad input, registration."""

from __future__ import annotations

import random
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
from helix.genome.codec import genome_id
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint

from registry_support import Suite, bad_request, error_info, start_suite
from waiting import eventually

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
SCOPES = ("dna.read", "generate")
MINIMIZE = common_pb2.OBJECTIVE_MINIMIZE
PASSED = candidate_pb2.VERDICT_STATUS_PASSED

BROKEN = """\
genes:
  - name: x
    real: {low: 2, high: 1}
  - name: x
    bits: {size: 0}
"""


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    library = tmp_path / "dnas"
    shutil.copytree(EXAMPLES, library)
    (library / "broken.yaml").write_text(BROKEN)
    started = await start_suite(
        tmp_path / "data",
        generator_dna_dir=library,
        rate_data=1e6,
        rate_read=1e6,
        generator_self_register=True,
    )
    yield started
    await started.close()


def generator(suite: Suite, scopes: tuple[str, ...] = SCOPES) -> Any:
    token = mint(suite.server.security.signer, "carol", scopes, 3600)
    channel = grpc.aio.insecure_channel(
        suite.server.address, interceptors=bearer_interceptors(StaticTokenSource(token))
    )
    suite.channels.append(channel)
    return generator_pb2_grpc.GeneratorServiceStub(channel)


async def generate(stub: Any, **request: Any) -> list[generator_pb2.GenerateResponse]:
    return [r async for r in stub.Generate(generator_pb2.GenerateRequest(**request), timeout=30)]


def flatten(responses: list[generator_pb2.GenerateResponse]) -> list[candidate_pb2.Candidate]:
    return [c for r in responses for c in r.candidates]


def sphere_score(candidate: candidate_pb2.Candidate) -> float:
    return sum(value * value for value in candidate.genome.reals)


def scored(
    candidates: list[candidate_pb2.Candidate],
    score: Callable[[candidate_pb2.Candidate], float] = sphere_score,
) -> list[candidate_pb2.ScoredCandidate]:
    return [
        candidate_pb2.ScoredCandidate(
            candidate=c,
            verdict=candidate_pb2.Verdict(candidate_id=c.id, status=PASSED, score=score(c)),
        )
        for c in candidates
    ]


def sample(suite: Suite, name: str, **labels: str) -> float:
    """A metric of the suite's server, as /metrics would show it (0 when absent)."""
    return suite.server.metrics.registry.get_sample_value(name, labels) or 0.0


def cancelled_streams(suite: Suite) -> float:
    """Generate streams that ended CANCELLED. Counted once the servicer's generator has
    closed (its `finally` ran), so by then its slot is free and it queues no more chunks."""
    labels = {
        "grpc_type": "SERVER_STREAM",
        "grpc_service": "helix.v1.GeneratorService",
        "grpc_method": "Generate",
        "grpc_code": "CANCELLED",
    }
    return sample(suite, "grpc_server_handled_total", **labels)


def violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        found = error_details_pb2.BadRequest()
        if detail.Unpack(found):
            return [(v.field, v.reason, v.description) for v in found.field_violations]
    return []


# --- the library ----------------------------------------------------------------------------


async def test_list_dnas_serves_every_example_and_reports_the_broken_file(suite):
    response = await generator(suite).ListDnas(generator_pb2.ListDnasRequest(), timeout=10)
    names = [d.name for d in response.dnas]
    expected = sorted(f"dnas/{p.stem}" for p in EXAMPLES.glob("*.yaml"))
    assert names == sorted([*expected, "dnas/broken"])
    by_name = {d.name: d for d in response.dnas}
    assert all(by_name[name].valid for name in expected)
    broken = by_name["dnas/broken"]
    assert not broken.valid
    assert broken.source == "broken.yaml"
    found = {(v.field_path, v.rule) for v in broken.violations}
    assert ("genes[0].real.low", "low_le_high") in found
    assert ("genes[1].name", "unique_gene_name") in found
    assert all(v.file == "broken.yaml" and v.line > 0 for v in broken.violations)
    assert len(by_name["dnas/sphere"].fingerprint) == 64
    assert not response.next_page_token


async def test_list_dnas_pages_through_the_library_in_name_order(suite):
    stub = generator(suite)
    seen, token = [], ""
    while True:
        page = await stub.ListDnas(
            generator_pb2.ListDnasRequest(page_size=3, page_token=token), timeout=10
        )
        assert len(page.dnas) <= 3
        seen += [d.name for d in page.dnas]
        token = page.next_page_token
        if not token:
            break
    everything = await stub.ListDnas(generator_pb2.ListDnasRequest(), timeout=10)
    assert seen == [d.name for d in everything.dnas]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [({"page_size": -1}, "page_size"), ({"page_token": "not-ours"}, "page_token")],
)
async def test_list_dnas_rejects_bad_paging(suite, request_fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator(suite).ListDnas(generator_pb2.ListDnasRequest(**request_fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in bad_request(caught.value)]


async def test_get_dna_returns_the_normalised_document(suite):
    response = await generator(suite).GetDna(generator_pb2.GetDnaRequest(name="dnas/tsp"))
    document = response.dna
    assert document.valid
    assert document.source == "tsp.yaml"
    assert document.dna.genes[0].permutation.size == 52
    assert document.dna.strategy.alpha.population_size > 0  # defaults filled in
    assert document.update_time.seconds > 0


async def test_the_library_cache_is_measured(suite):
    stub = generator(suite)
    # The library is read in the background at start (to register its DNAs): let it end.
    await eventually(
        lambda: sample(suite, "helix_generator_advertised_dnas"), what="the library read"
    )
    reads = sample(suite, "helix_generator_library_reads_total")
    hits = sample(suite, "helix_generator_library_hits_total")
    for _ in range(3):
        await stub.GetDna(generator_pb2.GetDnaRequest(name="dnas/onemax"))
    # Read at most once (the read at start has read it already), then cached.
    assert sample(suite, "helix_generator_library_reads_total") - reads <= 1
    assert sample(suite, "helix_generator_library_hits_total") - hits >= 2
    assert sample(suite, "helix_generator_library_evictions_total") == 0


async def test_get_dna_missing_and_malformed_names(suite):
    stub = generator(suite)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetDna(generator_pb2.GetDnaRequest(name="dnas/nowhere"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetDna(generator_pb2.GetDnaRequest(name="dnas/Bad_Name"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_library_picks_up_a_changed_file(suite):
    stub = generator(suite)
    library = suite.config.generator_dna_dir
    before = await stub.GetDna(generator_pb2.GetDnaRequest(name="dnas/broken"))
    assert not before.dna.valid
    (library / "broken.yaml").write_text("genes: [{name: x, bits: {size: 12}}]\n")
    after = await stub.GetDna(generator_pb2.GetDnaRequest(name="dnas/broken"))
    assert after.dna.valid
    assert after.dna.dna.genes[0].bits.size == 12


# --- ValidateDna ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
async def test_validate_dna_accepts_every_example(suite, path):
    response = await generator(suite).ValidateDna(
        generator_pb2.ValidateDnaRequest(text=path.read_text(), filename=path.name)
    )
    assert response.valid, [str(v) for v in response.violations]
    assert len(response.fingerprint) == 64
    assert response.dna.genes


async def test_validate_dna_reports_path_rule_and_line_of_a_broken_file(suite):
    response = await generator(suite).ValidateDna(
        generator_pb2.ValidateDnaRequest(text=BROKEN, filename="broken.yaml")
    )
    assert not response.valid
    assert not response.fingerprint
    found = {(v.file, v.field_path, v.rule, v.line) for v in response.violations}
    assert ("broken.yaml", "genes[0].real.low", "low_le_high", 3) in found
    assert ("broken.yaml", "genes[1].name", "unique_gene_name", 4) in found
    assert any(v.field_path == "genes[1].bits.size" for v in response.violations)


async def test_validate_dna_checks_a_message_too(suite):
    dna = dna_pb2.Dna(genes=[dna_pb2.Gene(name="s", sequence=dna_pb2.SequenceGene(alphabet="AA"))])
    response = await generator(suite).ValidateDna(generator_pb2.ValidateDnaRequest(dna=dna))
    assert not response.valid
    rules = {(v.field_path, v.rule) for v in response.violations}
    assert ("genes[0].sequence.alphabet", "unique_symbol") in rules


async def test_validate_dna_without_a_source_is_invalid_argument(suite):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator(suite).ValidateDna(generator_pb2.ValidateDnaRequest(filename="x.yaml"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request(caught.value)] == ["source"]


# --- Generate -------------------------------------------------------------------------------


async def test_generate_streams_count_candidates_in_batches(suite):
    responses = await generate(
        generator(suite), dna_name="dnas/rastrigin", count=1000, seed=7, batch_size=300
    )
    assert [len(r.candidates) for r in responses] == [300, 300, 300, 100]
    assert [r.remaining for r in responses] == [700, 400, 100, 0]
    candidates = flatten(responses)
    for candidate in candidates[:50]:
        assert candidate.id == genome_id(candidate.genome)
        assert candidate.generation == 0
        assert not candidate.parent_ids
        assert len(candidate.genome.reals) == 10
        assert all(-5.12 <= v <= 5.12 for v in candidate.genome.reals)


async def test_generate_is_deterministic_whatever_the_batch_size(suite):
    stub = generator(suite)
    first = flatten(await generate(stub, dna_name="dnas/hyperparameters", count=700, seed=3))
    again = flatten(
        await generate(stub, dna_name="dnas/hyperparameters", count=700, seed=3, batch_size=7)
    )
    other = flatten(await generate(stub, dna_name="dnas/hyperparameters", count=700, seed=4))
    assert [c.SerializeToString() for c in first] == [c.SerializeToString() for c in again]
    assert [c.id for c in first] != [c.id for c in other]


async def test_generate_breeds_from_parents_independently_of_their_order(suite):
    stub = generator(suite)
    population = flatten(await generate(stub, dna_name="dnas/rastrigin", count=100, seed=1))
    parents = scored(population)
    request = {"dna_name": "dnas/rastrigin", "count": 100, "seed": 9, "generation": 1}
    children = flatten(await generate(stub, parents=parents, objective=MINIMIZE, **request))
    # Copies: the elites compared below are the parents as first sent, with their ids.
    shuffled = [candidate_pb2.ScoredCandidate.FromString(p.SerializeToString()) for p in parents]
    random.Random(5).shuffle(shuffled)
    for p in shuffled[::2]:
        p.candidate.id = ""  # ids are recomputed when empty
    again = flatten(await generate(stub, parents=shuffled, objective=MINIMIZE, **request))
    assert [c.SerializeToString() for c in children] == [c.SerializeToString() for c in again]
    # Elites (rastrigin.yaml: elitism 2) come first, unchanged: the two best parents.
    best = sorted(parents, key=lambda p: (p.verdict.score, p.candidate.id))[:2]
    assert [c.SerializeToString() for c in children[:2]] == [
        p.candidate.SerializeToString() for p in best
    ]
    ids = {c.id for c in population}
    for child in children[2:]:
        assert child.generation == 1
        assert 1 <= len(child.parent_ids) <= 2
        assert set(child.parent_ids) <= ids


async def test_repeated_parents_and_ties_do_not_depend_on_order(suite):
    stub = generator(suite)
    a, b, c = flatten(await generate(stub, dna_name="dnas/rastrigin", count=3, seed=2))

    def parent(candidate, status=PASSED, score=1.0, generation=None):
        copy = candidate_pb2.Candidate()
        copy.CopyFrom(candidate)
        if generation is not None:
            copy.generation = generation
        verdict = candidate_pb2.Verdict(status=status, score=score)
        return candidate_pb2.ScoredCandidate(candidate=copy, verdict=verdict)

    failed = candidate_pb2.VERDICT_STATUS_FAILED
    # The same multiset of (candidate, verdict) in three orders, then one more copy of b:
    # repeats count as copies (generator.proto), so only the last output differs.
    orders = [
        [parent(a), parent(a, failed), parent(a), parent(b, score=2.0, generation=7), parent(c)],
        [parent(c), parent(a), parent(a), parent(b, score=2.0), parent(a, failed)],
        [parent(b, score=2.0, generation=7), parent(a, failed), parent(c), parent(a), parent(a)],
        [parent(b, score=2.0), parent(a, failed), parent(c), parent(a), parent(a), parent(b)],
    ]
    outputs = []
    for parents in orders:
        request = {"dna_name": "dnas/rastrigin", "count": 50, "seed": 3, "generation": 1}
        out = flatten(await generate(stub, parents=parents, objective=MINIMIZE, **request))
        outputs.append([x.SerializeToString() for x in out])
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[3] != outputs[0]


async def test_an_elite_sent_as_two_messages_is_copied_canonically(suite):
    stub = generator(suite)
    best, *rest = flatten(await generate(stub, dna_name="dnas/rastrigin", count=6, seed=8))

    def parent(candidate, score, generation):
        copy = candidate_pb2.Candidate()
        copy.CopyFrom(candidate)
        copy.generation = generation
        verdict = candidate_pb2.Verdict(status=PASSED, score=score)
        return candidate_pb2.ScoredCandidate(candidate=copy, verdict=verdict)

    others = [parent(c, 10.0 + i, 0) for i, c in enumerate(rest)]
    request = {"dna_name": "dnas/rastrigin", "count": 5, "seed": 1, "generation": 9}
    first = flatten(
        await generate(
            stub,
            parents=[parent(best, 0.0, 3), parent(best, 0.0, 5), *others],
            objective=MINIMIZE,
            **request,
        )
    )
    second = flatten(
        await generate(
            stub,
            parents=[*others, parent(best, 0.0, 5), parent(best, 0.0, 3)],
            objective=MINIMIZE,
            **request,
        )
    )
    assert first[0].id == best.id
    assert first[0].SerializeToString() == second[0].SerializeToString()


async def test_only_scored_parents_become_elites(suite):
    stub = generator(suite)
    population = flatten(await generate(stub, dna_name="dnas/rastrigin", count=10, seed=4))
    parents = scored(population)
    error = candidate_pb2.VERDICT_STATUS_ERROR
    for p in parents[1:]:
        p.verdict.status = error  # only parents[0] has a score; rastrigin.yaml: elitism 2
    children = flatten(
        await generate(
            stub,
            dna_name="dnas/rastrigin",
            count=10,
            seed=5,
            generation=1,
            parents=parents,
            objective=MINIMIZE,
        )
    )
    assert children[0].SerializeToString() == parents[0].candidate.SerializeToString()
    assert children[1].generation == 1  # bred, not a second (unscored) elite
    assert len(children[1].parent_ids) >= 1


async def test_generate_maximize_ranks_the_other_way(suite):
    stub = generator(suite)
    population = flatten(await generate(stub, dna_name="dnas/onemax", count=50, seed=1))
    parents = scored(
        population, score=lambda c: float(sum(bin(b).count("1") for b in c.genome.bits))
    )
    children = flatten(
        await generate(
            stub,
            dna_name="dnas/onemax",
            count=10,
            seed=2,
            generation=1,
            parents=parents,
            objective=common_pb2.OBJECTIVE_MAXIMIZE,
        )
    )
    best = max(parents, key=lambda p: (p.verdict.score, [-ord(ch) for ch in p.candidate.id]))
    assert children[0].id == best.candidate.id


async def test_generate_with_an_inline_dna_and_the_random_strategy(suite):
    dna = dna_pb2.Dna(
        genes=[
            dna_pb2.Gene(name="route", permutation=dna_pb2.PermutationGene(size=9)),
            dna_pb2.Gene(
                name="primer",
                sequence=dna_pb2.SequenceGene(alphabet="ACGT", min_length=3, max_length=6),
            ),
        ],
        strategy=dna_pb2.Strategy(random=dna_pb2.RandomStrategy()),
    )
    stub = generator(suite)
    population = flatten(await generate(stub, dna=dna, count=40, seed=1))
    for candidate in population:
        assert sorted(candidate.genome.permutations) == list(range(9))
        assert 3 <= candidate.genome.sequence_lengths[0] <= 6
    # random ignores parents: generation 1 is sampled like generation 0.
    children = flatten(
        await generate(
            stub,
            dna=dna,
            count=40,
            seed=1,
            generation=1,
            parents=scored(population),
            objective=MINIMIZE,
        )
    )
    assert all(not c.parent_ids and c.generation == 1 for c in children)


async def test_generate_keeps_every_response_under_4_mib(suite):
    # 100,000 reals: about 800 kB per candidate. The server may send 16 MiB, but the proto
    # promises responses a default client (4 MiB) can read, whatever batch_size asks.
    dna = dna_pb2.Dna(
        genes=[dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=0, high=1, size=100_000))]
    )
    assert int(suite.config.max_send_message_bytes) > 4 * 1024 * 1024
    responses = await generate(generator(suite), dna=dna, count=30, seed=1, batch_size=30)
    assert sum(len(r.candidates) for r in responses) == 30
    assert len(responses) >= 6
    assert all(r.ByteSize() <= 4 * 1024 * 1024 for r in responses)


async def test_generate_rejects_bad_requests_with_precise_errors(suite):
    stub = generator(suite)
    population = flatten(await generate(stub, dna_name="dnas/sphere", count=4, seed=1))
    cases: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
        ({"dna_name": "dnas/nowhere", "count": 1}, grpc.StatusCode.NOT_FOUND, ""),
        ({"dna_name": "dnas/broken", "count": 1}, grpc.StatusCode.INVALID_ARGUMENT, "genes[0]"),
        ({"dna_name": "dnas/sphere", "count": 0}, grpc.StatusCode.INVALID_ARGUMENT, "count"),
        (
            {"dna_name": "dnas/sphere", "count": 2, "parents": scored(population)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "objective",
        ),
        (
            {"dna": dna_pb2.Dna(genes=[dna_pb2.Gene(name="x")]), "count": 1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "dna.genes[0]",
        ),
    ]
    misfit = scored(population)
    del misfit[1].candidate.genome.reals[-1]
    misfit[1].candidate.id = ""
    cases.append(
        (
            {"dna_name": "dnas/sphere", "count": 2, "parents": misfit, "objective": MINIMIZE},
            grpc.StatusCode.INVALID_ARGUMENT,
            "parents[1].candidate.genome",
        )
    )
    forged = scored(population)
    forged[2].candidate.id = "0" * 32
    forged[2].verdict.candidate_id = "0" * 32
    cases.append(
        (
            {"dna_name": "dnas/sphere", "count": 2, "parents": forged, "objective": MINIMIZE},
            grpc.StatusCode.INVALID_ARGUMENT,
            "parents[2].candidate.id",
        )
    )
    lineage = scored(population)
    lineage[0].candidate.parent_ids[:] = [population[1].id] * 3
    cases.append(
        (
            {"dna_name": "dnas/sphere", "count": 2, "parents": lineage, "objective": MINIMIZE},
            grpc.StatusCode.INVALID_ARGUMENT,
            "parents[0].candidate.parent_ids",
        )
    )
    verdict_id = scored(population)
    verdict_id[3].candidate.id = ""
    verdict_id[3].verdict.candidate_id = population[0].id
    cases.append(
        (
            {"dna_name": "dnas/sphere", "count": 2, "parents": verdict_id, "objective": MINIMIZE},
            grpc.StatusCode.INVALID_ARGUMENT,
            "parents[3].verdict.candidate_id",
        )
    )
    for request, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(stub, **request)
        assert caught.value.code() == code, request
        if field:
            fields = [f for f, _, _ in violations(caught.value)]
            assert any(f.startswith(field) for f in fields), (field, fields)
        assert error_info(caught.value).domain == "helix"


async def test_generate_needs_the_generate_scope(suite):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(generator(suite, ("dna.read",)), dna_name="dnas/sphere", count=1)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_cancelling_generate_stops_the_breeding_promptly(suite):
    # Long permutations with inversion: a few rows per chunk, each chunk milliseconds of
    # work in a breeding thread; a full stream would breed for many minutes.
    dna = dna_pb2.Dna(
        genes=[dna_pb2.Gene(name="tour", permutation=dna_pb2.PermutationGene(size=20_000))]
    )
    population = flatten(await generate(generator(suite), dna=dna, count=8, seed=1))
    stub = generator(suite)
    call = stub.Generate(
        generator_pb2.GenerateRequest(
            dna=dna,
            count=1_000_000,
            seed=1,
            generation=1,
            parents=scored(population, score=lambda c: float(c.genome.permutations[0])),
            objective=MINIMIZE,
        ),
        timeout=60,
    )
    first = await call.read()
    assert first.remaining == 1_000_000 - len(first.candidates)
    call.cancel()
    await eventually(lambda: cancelled_streams(suite) == 1, what="the stream to end")
    # The chunk in progress when the stream ended may still finish in its thread (a slow
    # machine can take a while); a chunk not started yet is dropped, and none is queued
    # after the end. Once none is pending, the count is final.
    await eventually(
        lambda: sample(suite, "helix_generator_chunks_pending") == 0, what="the chunk in progress"
    )
    bred = sample(suite, "helix_generator_chunks_total")
    assert bred < 200  # of the ~500,000 chunks a full stream would breed
    # Another whole stream later, the cancelled one has still bred nothing more.
    assert len(flatten(await generate(stub, dna=dna, count=1, seed=1))) == 1
    assert sample(suite, "helix_generator_chunks_total") == bred + 1
    assert sample(suite, "helix_generator_chunks_pending") == 0


async def test_generate_beyond_capacity_is_resource_exhausted_until_a_slot_frees(suite):
    capacity = suite.config.advertised_capacity
    stub = generator(suite)
    request = generator_pb2.GenerateRequest(dna_name="dnas/tsp", count=1_000_000, seed=1)
    calls = [stub.Generate(request, timeout=60) for _ in range(capacity)]
    for call in calls:
        await call.read()  # every stream is being served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(stub, dna_name="dnas/sphere", count=1)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "GENERATOR_BUSY"
    calls[0].cancel()
    await eventually(lambda: cancelled_streams(suite) == 1, what="the cancelled stream to end")
    served = await generate(stub, dna_name="dnas/sphere", count=1)  # its slot is free again
    assert len(flatten(served)) == 1
    for call in calls[1:]:
        call.cancel()


# --- registration ---------------------------------------------------------------------------


async def test_the_embedded_generator_registers_itself(suite):
    registry = suite.stub("dave", ("agents.read",))
    request = registry_pb2.ListAgentsRequest(kind=registry_pb2.AGENT_KIND_GENERATOR)
    listed = registry_pb2.ListAgentsResponse()

    async def registered() -> bool:
        listed.CopyFrom(await registry.ListAgents(request, timeout=5))
        return bool(listed.agents)

    await eventually(registered, what="the generator to register")
    (agent,) = listed.agents
    assert agent.name == "agents/embedded-generator"
    assert agent.endpoint == suite.server.address
    assert list(agent.generator.strategies) == ["alpha", "random"]
    expected = sorted(f"dnas/{p.stem}" for p in EXAMPLES.glob("*.yaml"))
    assert list(agent.generator.dnas) == expected  # valid DNAs only
    # The endpoint it advertises serves GeneratorService.
    token = mint(suite.server.security.signer, "erin", SCOPES, 3600)
    async with grpc.aio.insecure_channel(
        agent.endpoint, interceptors=bearer_interceptors(StaticTokenSource(token))
    ) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        assert (await stub.GetDna(generator_pb2.GetDnaRequest(name="dnas/sphere"))).dna.valid
