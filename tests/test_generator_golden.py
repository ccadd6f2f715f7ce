"""Golden outputs: the determinism contract pinned down.

Generate's output is a pure function of its request for a given major version of the
generator. These hashes fix that function for a few requests; if one changes, the change
alters which candidates every existing run would breed (a new major version), and the
new values must be written here on purpose. Real genes are only sampled here: their
bred values use exp/log/pow, which are reproducible on one CPU class (see generator.proto),
not across the machines CI may run on.
"""

from __future__ import annotations

import hashlib

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.generator import breeding, strategies
from helix.generator.breeding import chunk_records
from helix.genome.layout import Layout, normalise

GENES = [
    dna_pb2.Gene(name="opt", choice=dna_pb2.ChoiceGene(options=["adam", "sgd", "rmsprop"], size=2)),
    dna_pb2.Gene(name="mask", bits=dna_pb2.BitsGene(size=37)),
    dna_pb2.Gene(name="route", permutation=dna_pb2.PermutationGene(size=19)),
    dna_pb2.Gene(
        name="primer",
        sequence=dna_pb2.SequenceGene(alphabet="ACGT", min_length=3, max_length=12),
    ),
]


def output(dna: dna_pb2.Dna, count: int, seed: int, generation: int, parents=()) -> str:
    """The digest of the candidates the servicer's core breeds for this request, in the
    order it streams them (through `breeding.breed`, as GeneratorService.Generate does)."""
    request = generator_pb2.GenerateRequest(
        dna=dna,
        parents=parents,
        objective=common_pb2.OBJECTIVE_MINIMIZE,
        count=count,
        seed=seed,
        generation=generation,
    )
    layout = breeding.layout_for(normalise(dna))
    ranked = breeding.rank_parents(layout, request)
    digest = hashlib.sha256()
    sent = 0
    for responses in breeding.breed(layout, request, ranked):
        for response in responses:
            for candidate in response.candidates:
                digest.update(candidate.SerializeToString(deterministic=True))
            sent += len(response.candidates)
            assert response.remaining == count - sent
            assert response.generation == generation
    assert sent == count
    return digest.hexdigest()[:16]


def sampled(dna: dna_pb2.Dna, count: int, seed: int) -> list[candidate_pb2.Candidate]:
    layout = Layout(normalise(dna))
    chunk = next(strategies.generate(layout, None, count, seed, 0))
    return [candidate_pb2.Candidate.FromString(r) for r in chunk_records(layout, chunk, None, 0)]


def test_sampled_generation_zero_is_pinned():
    reals = dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=-5.12, high=5.12, size=3))
    dna = dna_pb2.Dna(genes=[reals, *GENES])
    assert output(dna, 2500, seed=42, generation=0) == GOLDEN["sampled"]


def test_bred_generation_is_pinned_for_each_permutation_operator():
    # Major 2: ERX by default, half the children mutated by default, and the first five
    # parents given twice (repeats count as copies in tournaments).
    cases = {
        "SWAP": ("SWAP", "ORDER"),
        "INVERSION": ("INVERSION", "UNSPECIFIED"),
        "PMX": ("INVERSION", "PARTIALLY_MAPPED"),
    }
    for name, (mutation, crossover) in cases.items():
        alpha = dna_pb2.AlphaStrategy(
            population_size=40,
            elitism=3,
            permutation=dna_pb2.PermutationOperators(
                mutation=dna_pb2.PermutationMutation.Value(f"PERMUTATION_MUTATION_{mutation}"),
                crossover=dna_pb2.PermutationCrossover.Value(f"PERMUTATION_CROSSOVER_{crossover}"),
            ),
            sequence=dna_pb2.SequenceOperators(insertion_rate=0.3, deletion_rate=0.3),
        )
        dna = dna_pb2.Dna(genes=GENES, strategy=dna_pb2.Strategy(alpha=alpha))
        parents = [
            candidate_pb2.ScoredCandidate(
                candidate=c,
                verdict=candidate_pb2.Verdict(
                    status=candidate_pb2.VERDICT_STATUS_PASSED,
                    score=float(sum(c.genome.permutations[:5])),
                ),
            )
            for c in sampled(dna, 40, seed=7)
        ]
        parents += parents[:5]
        assert output(dna, 1500, seed=9, generation=3, parents=parents) == GOLDEN[name], name


def test_the_golden_hashes_belong_to_this_major_version():
    # Changing a hash above means a new major version: bump GENERATOR_MAJOR with it.
    assert strategies.GENERATOR_MAJOR == GOLDEN_MAJOR


GOLDEN_MAJOR = 2
GOLDEN = {
    "sampled": "f9b556786bc847e4",
    "SWAP": "796672f2952c5dd5",
    "INVERSION": "4a16468f35fb9b42",
    "PMX": "151344586e0cf594",
}
