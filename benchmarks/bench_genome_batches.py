"""Reading a batch of 1,000 candidates: from the parsed message vs from its wire bytes.

What an oracle does with each VerifyStream batch before it evaluates anything, for the
example DNAs sphere (10 reals), tsp (a permutation of 52) and hyperparameters (reals,
integers, a choice and bits: records of varying length), in this one process:

- **message path** (the oracle service of issue 12 before read_candidates):
  `check_no_unknown_fields` of the VerifyStreamRequest (a deep copy of the batch), the
  candidate count, each candidate's id form and genome presence (service.py
  `_check_candidates`), `[c.genome for c in candidates]` and `decode_genomes` (one
  serialisation per genome), `[c.id for c in candidates]`;
- **wire path**: the count, `batch.SerializeToString()` and `read_candidates` (the same
  checks, ids and population, from the bytes).

Batches are sampled candidates with their ids, either ids and genomes only (what the
oracle benchmark client sends) or as bred (generation and two parent ids). Rounds
alternate the two paths; each figure is the median over the rounds of the process CPU
time per batch, in µs per 1,000 candidates, and wire/message is their ratio. Both paths
are checked to give the same ids and genomes first.

    python benchmarks/bench_genome_batches.py [--rounds 9] [--repeat 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.oracle_pb2 as oracle_pb2
from helix.common.errors import InvalidArgument
from helix.common.validation import (
    Violations,
    check_no_unknown_fields,
    check_repeated_len,
    index,
)
from helix.generator import strategies
from helix.genome import codec
from helix.genome.batches import read_candidates
from helix.genome.documents import parse_dna_text
from helix.genome.genome_checks import decode_genomes
from helix.genome.layout import Layout, Population
from helix.genome.validation import check_candidate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
DNAS = {"sphere-10D": "sphere", "tsp-52": "tsp", "hyperparameters": "hyperparameters"}
BATCH = 1000
MAX_CANDIDATES = 10_000
PATH = "batch.candidates"


def load_layout(stem: str) -> Layout:
    check = parse_dna_text((EXAMPLES / f"{stem}.yaml").read_text(), f"{stem}.yaml")
    if check.normalised is None:
        raise ValueError(f"{stem}.yaml is not a valid DNA: {check.violations}")
    return Layout(check.normalised)


def make_request(layout: Layout, bred: bool, seed: int) -> oracle_pb2.VerifyStreamRequest:
    """A VerifyStreamRequest holding a batch of BATCH sampled candidates with their ids."""
    chunks = strategies.generate(layout, None, BATCH, seed, 0)
    pop = Population.concat([chunk.children for chunk in chunks])
    encodings = codec.encode_genomes(layout, pop)
    ids = codec.candidate_ids(encodings)
    lineage = [[ids[(i + 1) % BATCH], ids[(i + 2) % BATCH]] if bred else [] for i in range(BATCH)]
    candidates = codec.assemble_candidates(
        encodings, ids, generation=7 if bred else 0, parent_ids=lineage
    )
    return oracle_pb2.VerifyStreamRequest(
        batch=oracle_pb2.VerifyBatch(batch_id=1, candidates=candidates)
    )


def check_candidates(candidates: Sequence[candidate_pb2.Candidate], path: str) -> Violations:
    """service.py's `_check_candidates` (issue 12, before read_candidates)."""
    found = check_repeated_len(candidates, path, MAX_CANDIDATES, 1)
    if found:
        return found
    for i, candidate in enumerate(candidates):
        if candidate.id and len(candidate.id) == 32 and candidate.HasField("genome"):
            continue
        found += check_candidate(candidate, index(path, i), genome=False)
    return found


def message_path(
    request: oracle_pb2.VerifyStreamRequest, layout: Layout
) -> tuple[list[str], Population]:
    found = check_no_unknown_fields(request)
    candidates = request.batch.candidates
    found += check_candidates(candidates, PATH)
    if found:
        raise InvalidArgument.from_violations(found)
    genomes = [c.genome for c in candidates]
    population = decode_genomes(layout, genomes, lambda i: f"{index(PATH, i)}.genome")
    return [c.id for c in candidates], population


def wire_path(
    request: oracle_pb2.VerifyStreamRequest, layout: Layout
) -> tuple[list[str], Population]:
    batch = request.batch
    found = check_repeated_len(batch.candidates, PATH, MAX_CANDIDATES, 1)
    if found:
        raise InvalidArgument.from_violations(found)
    return read_candidates(batch.SerializeToString(), 2, layout, PATH)


Path_ = Callable[[oracle_pb2.VerifyStreamRequest, Layout], tuple[list[str], Population]]


def cpu_per_batch(
    path: Path_, request: oracle_pb2.VerifyStreamRequest, layout: Layout, repeat: int
) -> float:
    started = time.process_time()
    for _ in range(repeat):
        path(request, layout)
    return (time.process_time() - started) / repeat


def same(a: tuple[list[str], Population], b: tuple[list[str], Population], layout: Layout) -> None:
    if a[0] != b[0] or codec.encode_genomes(layout, a[1]) != codec.encode_genomes(layout, b[1]):
        raise AssertionError("the two paths read different candidates")
    if not np.array_equal(a[1].reals, b[1].reals):
        raise AssertionError("the two paths read different reals")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeat", type=int, default=40, help="batches per round and path")
    args = parser.parse_args()
    print(
        f"reading a batch of {BATCH:,} candidates, median of {args.rounds} rounds "
        "(process CPU time, µs per batch)"
    )
    print(f"  {'DNA':16s} {'candidates':10s} {'message':>9s} {'wire':>9s} {'wire/message':>13s}")
    for label, stem in DNAS.items():
        layout = load_layout(stem)
        for bred in (False, True):
            request = make_request(layout, bred, seed=len(label))
            same(message_path(request, layout), wire_path(request, layout), layout)
            times: dict[str, list[float]] = {"message": [], "wire": []}
            for _ in range(args.rounds):
                times["message"].append(cpu_per_batch(message_path, request, layout, args.repeat))
                times["wire"].append(cpu_per_batch(wire_path, request, layout, args.repeat))
            old, new = (statistics.median(times[k]) * 1e6 for k in ("message", "wire"))
            kind = "as bred" if bred else "ids+genomes"
            print(f"  {label:16s} {kind:10s} {old:9.0f} {new:9.0f} {new / old:12.2f}x")


if __name__ == "__main__":
    main()
