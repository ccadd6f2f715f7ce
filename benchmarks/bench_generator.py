"""Generator throughput: alpha against DEAP's equivalent operators, in this one process.

For each DNA, both sides breed `--batch` children from the same 1,000 scored parents and
encode each child as a helix.v1.Candidate with its content-hash id (the output a
generator must produce):

- 10-D real: DEAP selTournament(3) + cxBlend(0.5) at 0.9 + mutGaussian(indpb 0.1) with
  clipping, against alpha with BLEND crossover, GAUSSIAN mutation and CLIP bounds;
- permutation of 52: DEAP selTournament(3) + cxOrdered at 0.9 + mutShuffleIndexes
  (indpb 0.1), against alpha with order crossover and SWAP mutation.

DEAP's generation is `algorithms.varAnd` on the tournament's picks, then each child is
turned into a Genome, serialised deterministically, hashed, and serialised as a Candidate,
as the generator does in bulk. Both start from their parents already in memory (alpha's
decoded and ranked, DEAP's as individuals with fitness).
Reports, for each batch size (100 children, about a default-sized generation, and 1,000),
the median children/s of several rounds (alpha and DEAP taking turns) and alpha/DEAP.
Then children/s received by a gRPC client streaming Generate from a real `helix up`
(uvloop, the embedded suite), for the same two DNAs, with and without parents.

    python benchmarks/bench_generator.py [--rounds 5] [--batch 100,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from deap import algorithms, base, creator, tools

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
from helix.common.services import validate
from helix.generator import strategies
from helix.generator import validation as checks
from helix.generator.breeding import Parents, chunk_records, rank_parents
from helix.genome.layout import Layout, normalise
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.keys import load_hs256_dir
from helix.security.tokens import mint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import Cluster  # tests/harness.py: the one way to start Helix processes

PARENTS = 1000
# varAnd's probabilities: pairs crossed, children mutated at all, then per element.
CXPB, MUTPB, INDPB, TOURNAMENT = 0.9, 1.0, 0.1, 3


def real_dna() -> dna_pb2.Dna:
    alpha = dna_pb2.AlphaStrategy(
        population_size=PARENTS,
        elitism=0,
        tournament_size=TOURNAMENT,
        crossover_rate=CXPB,
        child_mutation_rate=MUTPB,
        mutation_rate=INDPB,
        real=dna_pb2.RealOperators(
            crossover=dna_pb2.NUMERIC_CROSSOVER_BLEND,
            blend_alpha=0.5,
            mutation=dna_pb2.NUMERIC_MUTATION_GAUSSIAN,
            gaussian_sigma=0.1,
            bounds=dna_pb2.BOUND_HANDLING_CLIP,
        ),
    )
    return dna_pb2.Dna(
        name="dnas/bench-real",
        genes=[dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=-5.12, high=5.12, size=10))],
        strategy=dna_pb2.Strategy(alpha=alpha),
    )


def permutation_dna() -> dna_pb2.Dna:
    alpha = dna_pb2.AlphaStrategy(
        population_size=PARENTS,
        elitism=0,
        tournament_size=TOURNAMENT,
        crossover_rate=CXPB,
        child_mutation_rate=MUTPB,
        mutation_rate=INDPB,
        # DEAP's cxOrdered is OX1: the same operator on both sides (not the default ERX).
        permutation=dna_pb2.PermutationOperators(
            crossover=dna_pb2.PERMUTATION_CROSSOVER_ORDER,
            mutation=dna_pb2.PERMUTATION_MUTATION_SWAP,
        ),
    )
    return dna_pb2.Dna(
        name="dnas/bench-tour",
        genes=[dna_pb2.Gene(name="tour", permutation=dna_pb2.PermutationGene(size=52))],
        strategy=dna_pb2.Strategy(alpha=alpha),
    )


def parents_for(layout: Layout, seed: int) -> list[candidate_pb2.ScoredCandidate]:
    """PARENTS sampled candidates scored by a simple objective (sphere / tour displacement)."""
    chunk = next(strategies.generate(layout, None, PARENTS, seed, 0))
    candidates = [
        candidate_pb2.Candidate.FromString(r) for r in chunk_records(layout, chunk, None, 0)
    ]
    scored = []
    for candidate in candidates:
        genome = candidate.genome
        if genome.reals:
            score = float(sum(v * v for v in genome.reals))
        else:
            score = float(sum(abs(v - i) for i, v in enumerate(genome.permutations)))
        verdict = candidate_pb2.Verdict(
            candidate_id=candidate.id, status=candidate_pb2.VERDICT_STATUS_PASSED, score=score
        )
        scored.append(candidate_pb2.ScoredCandidate(candidate=candidate, verdict=verdict))
    return scored


# --- alpha ----------------------------------------------------------------------------------


def alpha_call(layout: Layout, request: generator_pb2.GenerateRequest) -> list[bytes]:
    """A whole Generate call minus the network: validate the request, decode and rank the
    parents, then breed and encode (the orchestrator's normal call: count = parents)."""
    validate(checks.check_generate_request, request)
    parents = rank_parents(layout, request)
    assert parents is not None
    return alpha_round(layout, parents, request.count, request.seed)


def alpha_round(layout: Layout, parents: Parents, count: int, seed: int) -> list[bytes]:
    """What Generate does per generation once the parents are ranked: breed, encode, hash
    and serialise each child as a Candidate (id, genome, generation, parent_ids)."""
    out: list[bytes] = []
    for chunk in strategies.generate(
        layout, parents.population, count, seed, 1, scored=parents.scored, copies=parents.copies
    ):
        out += chunk_records(layout, chunk, parents, 1)
    return out


# --- DEAP -----------------------------------------------------------------------------------


def deap_toolbox(kind: str) -> base.Toolbox:
    if not hasattr(creator, "BenchFitness"):
        creator.create("BenchFitness", base.Fitness, weights=(-1.0,))
        creator.create("BenchIndividual", list, fitness=creator.BenchFitness)
    toolbox = base.Toolbox()
    toolbox.register("select", tools.selTournament, tournsize=TOURNAMENT)
    if kind == "real":
        toolbox.register("mate", tools.cxBlend, alpha=0.5)
        sigma = 0.1 * 10.24
        toolbox.register("mutate", tools.mutGaussian, mu=0.0, sigma=sigma, indpb=INDPB)

        def clip(func: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                children = func(*args, **kwargs)
                for child in children:
                    for i, value in enumerate(child):
                        child[i] = min(5.12, max(-5.12, value))
                return children

            return wrapper

        toolbox.decorate("mate", clip)
        toolbox.decorate("mutate", clip)
    else:
        toolbox.register("mate", tools.cxOrdered)
        toolbox.register("mutate", tools.mutShuffleIndexes, indpb=INDPB)
    return toolbox


def deap_population(scored: list[candidate_pb2.ScoredCandidate]) -> list[Any]:
    population = []
    for parent in scored:
        genome = parent.candidate.genome
        values = list(genome.reals) if genome.reals else list(genome.permutations)
        individual = creator.BenchIndividual(values)
        individual.fitness.values = (parent.verdict.score,)
        population.append(individual)
    return population


def deap_round(toolbox: base.Toolbox, population: list[Any], count: int, kind: str) -> list[bytes]:
    offspring = algorithms.varAnd(toolbox.select(population, count), toolbox, CXPB, MUTPB)
    out = []
    for child in offspring:
        genome = (
            candidate_pb2.Genome(reals=child)
            if kind == "real"
            else candidate_pb2.Genome(permutations=child)
        )
        encoding = genome.SerializeToString(deterministic=True)
        candidate_id = hashlib.sha256(encoding).hexdigest()[:32]
        out.append(
            candidate_pb2.Candidate(
                id=candidate_id, genome=genome, generation=1
            ).SerializeToString()
        )
    return out


def interleaved_rates(
    works: Mapping[str, Callable[[], list[Any]]], rounds: int, expected: int
) -> dict[str, float]:
    """Median children/s of each work over `rounds` rounds, the works taking turns within
    each round so that a load change on the machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for name, work in works.items():  # warm-up: first-call costs are not the steady state
        assert len(work()) == expected, name
    for _ in range(rounds):
        for name, work in works.items():
            started = time.perf_counter()
            produced = len(work())
            times[name].append(time.perf_counter() - started)
            assert produced == expected, name
    return {name: expected / statistics.median(spent) for name, spent in times.items()}


# --- through gRPC ---------------------------------------------------------------------------


async def start_suite(data_dir: Path, dna_dir: Path) -> tuple[Cluster, str, str]:
    """`helix up` (the embedded suite) with generous rate limits: the cluster, its
    generator's address and a token for it."""
    settings = {"rate_data": 1e6, "rate_read": 1e6, "rate_write": 1e6}
    suite = Cluster("embedded", data_dir, dna_dir=dna_dir, settings=settings)
    await suite.start()
    _, signer = load_hs256_dir(suite.key_dir)
    assert signer is not None
    return (
        suite,
        suite.address_of("generator"),
        mint(signer, "bench", ["generate", "dna.read"], 3600),
    )


async def stream_rate(
    address: str, token: str, request: generator_pb2.GenerateRequest, rounds: int
) -> float:
    rates = []
    channel = grpc.aio.insecure_channel(
        address,
        interceptors=bearer_interceptors(StaticTokenSource(token)),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    async with channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        for _ in range(rounds):
            received = 0
            started = time.perf_counter()
            async for response in stub.Generate(request, timeout=120):
                received += len(response.candidates)
            rates.append(received / (time.perf_counter() - started))
    return statistics.median(rates)


async def grpc_rates(
    dnas: dict[str, tuple[dna_pb2.Dna, list[candidate_pb2.ScoredCandidate]]],
    rounds: int,
    count: int,
) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="helix-bench-generator-"))
    (root / "dnas").mkdir()
    suite, address, token = await start_suite(root / "data", root / "dnas")
    out = {}
    try:
        for kind, (dna, parents) in dnas.items():
            sample = generator_pb2.GenerateRequest(dna=dna, count=count, seed=1, batch_size=1000)
            out[f"{kind}_sampled"] = await stream_rate(address, token, sample, rounds)
            bred = generator_pb2.GenerateRequest(
                dna=dna,
                count=count,
                seed=1,
                generation=1,
                parents=parents,
                objective=common_pb2.OBJECTIVE_MINIMIZE,
                batch_size=1000,
            )
            out[f"{kind}_bred"] = await stream_rate(address, token, bred, rounds)
    finally:
        await suite.close()
        shutil.rmtree(root, ignore_errors=True)
    return out


def batch_sizes(text: str) -> list[int]:
    """`--batch`: comma-separated children per call, e.g. "100,1000"."""
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive integers")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=batch_sizes, default=[100, 1000])
    parser.add_argument("--stream-count", type=int, default=50_000)
    args = parser.parse_args()
    random.seed(1)
    np.random.seed(1)
    report: dict[str, Any] = {}
    dnas = {}
    for kind, dna in (("real", real_dna()), ("permutation", permutation_dna())):
        layout = Layout(normalise(dna))
        dnas[kind] = (dna, parents_for(layout, seed=11))
    for batch in args.batch:
        # Small batches are fast: more rounds, so the median stays steady.
        rounds = max(args.rounds, args.rounds * 1000 // batch)
        print(f"generator: children/s, median of {rounds} rounds, batch {batch}")
        for kind, (dna, parents) in dnas.items():
            report[f"{kind}_{batch}"] = compare(kind, dna, parents, batch, rounds)
    streamed = asyncio.run(grpc_rates(dnas, max(1, args.rounds // 2), args.stream_count))
    report["generate_stream_per_s"] = streamed
    for key, value in streamed.items():
        print(f"  Generate stream ({key}, {args.stream_count} children): {value:9,.0f}/s received")
    print(json.dumps({"bench": "generator", "results": report}))


def compare(
    kind: str,
    dna: dna_pb2.Dna,
    parents: list[candidate_pb2.ScoredCandidate],
    batch: int,
    rounds: int,
) -> dict[str, float]:
    """Alpha against DEAP for `batch` children from `parents`: one report row, printed."""
    layout = Layout(normalise(dna))
    request = generator_pb2.GenerateRequest(
        dna=dna,
        parents=parents,
        objective=common_pb2.OBJECTIVE_MINIMIZE,
        count=batch,
        seed=5,
        generation=1,
    )
    ranked = rank_parents(layout, request)  # as DEAP's population, prepared once
    assert ranked is not None
    toolbox = deap_toolbox(kind)
    population = deap_population(parents)
    works = {
        "alpha": partial(alpha_round, layout, ranked, batch, 5),
        "deap": partial(deap_round, toolbox, population, batch, kind),
        "whole": partial(alpha_call, layout, request),
    }
    rates = interleaved_rates(works, rounds, batch)
    ours, theirs, whole = rates["alpha"], rates["deap"], rates["whole"]
    print(
        f"  {kind:11s}: alpha {ours:9,.0f}/s  DEAP {theirs:9,.0f}/s  = {ours / theirs:5.1f}x"
        f"   (whole call, parents validated and ranked: {whole:9,.0f}/s"
        f" = {whole / theirs:4.1f}x)"
    )
    return {
        "children": batch,
        "alpha_per_s": ours,
        "deap_per_s": theirs,
        "ratio": ours / theirs,
        "alpha_us_per_call": batch / ours * 1e6,
        "deap_us_per_call": batch / theirs * 1e6,
        "alpha_whole_call_per_s": whole,
        "whole_call_ratio": whole / theirs,
    }


if __name__ == "__main__":
    main()
