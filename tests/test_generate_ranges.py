"""GenerateRequest.offset/limit: a range of a generation is exactly those positions of the
whole stream (so the orchestrator can split a generation across generators), it breeds
only the chunks it touches, and a range outside count is INVALID_ARGUMENT naming the
field."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from test_generator_breeding import ROUTE, layout_of, records_of, scored
from test_generator_service import EXAMPLES, flatten, generate, generator, violations

import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.generator import breeding, strategies
from helix.generator.stats import GeneratorStats
from helix.generator.validation import check_generate_request
from helix.genome.layout import Layout

from registry_support import start_suite

REALS = dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=-5, high=5, size=10))


def ranged(
    layout: Layout, request: generator_pb2.GenerateRequest, offset: int, limit: int
) -> tuple[list[bytes], list[generator_pb2.GenerateResponse], GeneratorStats]:
    part = generator_pb2.GenerateRequest()
    part.CopyFrom(request)
    part.offset, part.limit = offset, limit
    stats = GeneratorStats()
    parents = breeding.rank_parents(layout, part)
    responses = [r for chunk in breeding.breed(layout, part, parents, stats=stats) for r in chunk]
    records = [c.SerializeToString(deterministic=True) for r in responses for c in r.candidates]
    return records, responses, stats


@pytest.mark.parametrize("gene", [REALS, ROUTE], ids=["reals", "permutation"])
@pytest.mark.parametrize("with_parents", [False, True], ids=["sampled", "bred"])
def test_ranges_of_a_generation_join_into_the_whole_stream(
    gene: dna_pb2.Gene, with_parents: bool
) -> None:
    layout = layout_of(gene)
    size = strategies.chunk_size(layout)
    count = 2 * size + size // 2 + 3
    request = generator_pb2.GenerateRequest(count=count, seed=5, generation=0, batch_size=97)
    if with_parents:
        request.generation = 3
        request.parents.extend(scored(layout, 40))
        request.objective = common_pb2.OBJECTIVE_MINIMIZE
    whole = records_of(layout, request)
    assert len(whole) == count
    # Aligned, unaligned, inside one chunk, the tail (limit 0), a single position.
    cuts = [(0, size), (size, 0), (7, size + 11), (size + 3, 5), (count - 1, 0), (0, 1)]
    for offset, limit in cuts:
        stop = offset + limit if limit else count
        records, responses, stats = ranged(layout, request, offset, limit)
        assert records == whole[offset:stop], (offset, limit)
        assert [r.remaining for r in responses][-1] == 0
        assert sum(len(r.candidates) for r in responses) == stop - offset
        assert all(r.chunk_size == size for r in responses)
        touched = -(-stop // size) - offset // size
        assert stats.chunks == touched  # only the chunks the range touches are bred
    # Aligned halves join without overlap: what a split generation does.
    first, _, _ = ranged(layout, request, 0, size)
    rest, _, _ = ranged(layout, request, size, 0)
    assert first + rest == whole


def test_the_range_is_checked_against_count() -> None:
    def request(offset: int, limit: int) -> generator_pb2.GenerateRequest:
        return generator_pb2.GenerateRequest(
            dna_name="dnas/rastrigin", count=100, offset=offset, limit=limit
        )

    for offset, limit, field in ((100, 0, "offset"), (101, 1, "offset"), (90, 11, "limit")):
        found = check_generate_request(request(offset, limit))
        assert [v.field for v in found] == [field], (offset, limit)
    assert [v.field for v in check_generate_request(request(0, 101))] == ["limit"]
    for offset, limit in ((99, 0), (90, 10), (0, 100)):
        assert check_generate_request(request(offset, limit)) == []


async def test_generate_serves_a_range_over_grpc(tmp_path: Path) -> None:
    suite = await start_suite(tmp_path, generator_dna_dir=EXAMPLES, rate_data=1e6, rate_read=1e6)
    try:
        stub = generator(suite)
        request = {"dna_name": "dnas/rastrigin", "count": 3000, "seed": 9, "generation": 0}
        whole = flatten(await generate(stub, **request))
        part = await generate(stub, **request, offset=1500, limit=1000)
        assert [c.id for c in flatten(part)] == [c.id for c in whole[1500:2500]]
        assert part[0].chunk_size > 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(stub, **request, offset=2500, limit=600)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v[0] for v in violations(caught.value)] == ["limit"]
    finally:
        await suite.close()
