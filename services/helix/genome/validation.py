"""The structural checks of DNAs, genomes and candidates, shared by every service.

`check_dna`, `check_candidate` and `check_scored_candidate` only look at the message in
hand (counts, bounds, patterns, finiteness) — never at a file or at another message — so
the generator, oracle and orchestrator validators use them for the DNAs and candidates
inside their requests. Whether a genome fits its DNA is checked later, by the code that
decodes it (`helix.genome.genome_checks`).

When a repeated field holds more entries than its cap, only the first `cap` entries are
inspected: the request fails on the count anyway, and the work stays bounded. Every
violation carries its rule code from `helix.common.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from google.protobuf.message import Message

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
from helix.common import rules
from helix.common.errors import FieldViolation
from helix.common.validation import (
    Violations,
    check_enum,
    check_finite,
    check_range,
    check_repeated_len,
    check_resource_name,
    check_string,
    index,
    join,
    matches,
    show,
)

GENE_NAME_PATTERN = "[a-z_][a-z0-9_]{0,62}"
CANDIDATE_ID_PATTERN = "[0-9a-f]{32}"
MAX_DESCRIPTION_LEN = 4096
MAX_GENES = 256
MAX_GENE_SIZE = 100_000
MAX_CHOICE_OPTIONS = 1024
MAX_OPTION_LEN = 128
MAX_BITS = 1_000_000
MIN_PERMUTATION_SIZE = 2
MAX_PERMUTATION_SIZE = 100_000
MAX_ALPHABET = 256
MAX_SEQUENCE_LENGTH = 100_000
MAX_INTEGER_MAGNITUDE = 2**53
MAX_GENOME_BYTES = 1 << 20
MAX_POPULATION_SIZE = 100_000
DEFAULT_POPULATION_SIZE = 64

_GENE_KINDS = "real, integer, choice, bits, permutation, sequence"
VERDICT_STATUS = candidate_pb2.VerdictStatus.DESCRIPTOR
VERDICT_STATUSES = frozenset(VERDICT_STATUS.values_by_number)


# --- DNA ----------------------------------------------------------------------------------


def _values(size: int) -> int:
    """How many values a gene of `size` holds: 0 reads as 1."""
    return size or 1


def genome_budget(dna: dna_pb2.Dna) -> int:
    """The DNA's worst-case genome size in bytes, as dna.proto defines it."""
    budget = 0
    for gene in dna.genes:
        kind = gene.WhichOneof("kind")
        if kind == "real":
            budget += 8 * _values(gene.real.size)
        elif kind == "integer":
            budget += 8 * _values(gene.integer.size)
        elif kind == "choice":
            budget += 8 * _values(gene.choice.size)
        elif kind == "permutation":
            budget += 8 * gene.permutation.size
        elif kind == "bits":
            budget += (gene.bits.size + 7) // 8
        elif kind == "sequence":
            budget += gene.sequence.max_length
    return budget


def _check_gene_size(size: int, path: str) -> Violations:
    return check_range(size, join(path, "size"), high=MAX_GENE_SIZE)


def _check_real(gene: dna_pb2.RealGene, path: str) -> Violations:
    found = check_finite(gene.low, join(path, "low")) + check_finite(gene.high, join(path, "high"))
    if math.isfinite(gene.low) and math.isfinite(gene.high):
        if gene.low > gene.high:
            found.append(FieldViolation(join(path, "low"), "must be <= high", rules.LOW_LE_HIGH))
        elif not math.isfinite(gene.high - gene.low):
            found.append(
                FieldViolation(join(path, "high"), "high - low must be finite", rules.FINITE)
            )
    if gene.log_scale and not gene.low > 0:
        text = "must be > 0 when log_scale is set"
        found.append(FieldViolation(join(path, "low"), text, rules.LOG_SCALE_POSITIVE))
    return found + _check_gene_size(gene.size, path)


def _check_integer(gene: dna_pb2.IntegerGene, path: str) -> Violations:
    bound = MAX_INTEGER_MAGNITUDE
    found = check_range(gene.low, join(path, "low"), -bound, bound)
    found += check_range(gene.high, join(path, "high"), -bound, bound)
    if gene.low > gene.high:
        found.append(FieldViolation(join(path, "low"), "must be <= high", rules.LOW_LE_HIGH))
    return found + _check_gene_size(gene.size, path)


def _check_choice(gene: dna_pb2.ChoiceGene, path: str) -> Violations:
    options_path = join(path, "options")
    found = check_repeated_len(gene.options, options_path, MAX_CHOICE_OPTIONS, 1)
    first_seen: dict[str, int] = {}
    for i, option in enumerate(gene.options[:MAX_CHOICE_OPTIONS]):
        option_path = index(options_path, i)
        found += check_string(option, option_path, required=True, max_len=MAX_OPTION_LEN)
        if option in first_seen:
            found.append(
                FieldViolation(
                    option_path,
                    f"must be unique (same as options[{first_seen[option]}])",
                    rules.UNIQUE_OPTION,
                )
            )
        else:
            first_seen[option] = i
    return found + _check_gene_size(gene.size, path)


def _check_sequence(gene: dna_pb2.SequenceGene, path: str) -> Violations:
    alphabet_path = join(path, "alphabet")
    found = check_string(gene.alphabet, alphabet_path, required=True, max_len=MAX_ALPHABET)
    if len(gene.alphabet) <= MAX_ALPHABET and len(set(gene.alphabet)) != len(gene.alphabet):
        repeated = sorted({c for c in gene.alphabet if gene.alphabet.count(c) > 1})
        symbols = ", ".join(show(c) for c in repeated)
        text = f"must not repeat symbols ({symbols})"
        found.append(FieldViolation(alphabet_path, text, rules.UNIQUE_SYMBOL))
    found += check_range(gene.max_length, join(path, "max_length"), 1, MAX_SEQUENCE_LENGTH)
    if gene.min_length > gene.max_length:
        text = "must be <= max_length"
        found.append(FieldViolation(join(path, "min_length"), text, rules.MIN_LE_MAX_LENGTH))
    return found


def _check_gene(gene: dna_pb2.Gene, path: str) -> Violations:
    found = check_string(
        gene.name, join(path, "name"), required=True, max_len=63, pattern=GENE_NAME_PATTERN
    )
    kind = gene.WhichOneof("kind")
    if kind is None:
        return [
            *found,
            FieldViolation(path, f"must set a kind: one of {_GENE_KINDS}", rules.REQUIRED),
        ]
    kind_path = join(path, kind)
    if kind == "real":
        found += _check_real(gene.real, kind_path)
    elif kind == "integer":
        found += _check_integer(gene.integer, kind_path)
    elif kind == "choice":
        found += _check_choice(gene.choice, kind_path)
    elif kind == "bits":
        found += check_range(gene.bits.size, join(kind_path, "size"), 1, MAX_BITS)
    elif kind == "permutation":
        size = gene.permutation.size
        found += check_range(
            size, join(kind_path, "size"), MIN_PERMUTATION_SIZE, MAX_PERMUTATION_SIZE
        )
    else:
        found += _check_sequence(gene.sequence, kind_path)
    return found


def _check_optional_range(
    message: Message, field: str, path: str, low: float, high: float, *, low_exclusive: bool = False
) -> Violations:
    """An optional double: when present, within [low, high] (NaN fails)."""
    if not message.HasField(field):
        return []
    value: float = getattr(message, field)
    return check_range(value, join(path, field), low, high, low_exclusive=low_exclusive)


def _check_population_size(size: int, path: str) -> Violations:
    if size == 0 or 2 <= size <= MAX_POPULATION_SIZE:
        return []
    text = f"must be 0 (meaning {DEFAULT_POPULATION_SIZE}) or within 2..{MAX_POPULATION_SIZE}"
    return [FieldViolation(path, text, rules.RANGE)]


def _check_numeric_operators(
    ops: dna_pb2.RealOperators | dna_pb2.IntegerOperators, path: str
) -> Violations:
    found = check_enum(ops.crossover, dna_pb2.NumericCrossover.DESCRIPTOR, join(path, "crossover"))
    found += check_enum(ops.mutation, dna_pb2.NumericMutation.DESCRIPTOR, join(path, "mutation"))
    found += check_enum(ops.bounds, dna_pb2.BoundHandling.DESCRIPTOR, join(path, "bounds"))
    found += _check_optional_range(ops, "blend_alpha", path, 0, 10)
    found += _check_optional_range(ops, "sbx_eta", path, 0, 1000)
    found += _check_optional_range(ops, "gaussian_sigma", path, 0, 10, low_exclusive=True)
    found += _check_optional_range(ops, "polynomial_eta", path, 0, 1000)
    return found


def _check_alpha(alpha: dna_pb2.AlphaStrategy, path: str) -> Violations:
    found = _check_population_size(alpha.population_size, join(path, "population_size"))
    population = alpha.population_size or DEFAULT_POPULATION_SIZE
    if alpha.HasField("elitism") and alpha.elitism > population - 1:
        text = f"must be at most population_size - 1 ({population - 1})"
        found.append(FieldViolation(join(path, "elitism"), text, rules.RANGE))
    if alpha.tournament_size > population:
        text = f"must be 0 (meaning 3) or within 1..population_size ({population})"
        found.append(FieldViolation(join(path, "tournament_size"), text, rules.RANGE))
    found += _check_optional_range(alpha, "crossover_rate", path, 0, 1)
    found += _check_optional_range(alpha, "mutation_rate", path, 0, 1)
    found += _check_optional_range(alpha, "child_mutation_rate", path, 0, 1)
    if alpha.HasField("real"):
        found += _check_numeric_operators(alpha.real, join(path, "real"))
    if alpha.HasField("integer"):
        found += _check_numeric_operators(alpha.integer, join(path, "integer"))
    if alpha.HasField("choice"):
        found += _check_optional_range(
            alpha.choice, "gene_mutation_rate", join(path, "choice"), 0, 1
        )
    if alpha.HasField("bits"):
        found += _check_optional_range(alpha.bits, "flip_rate", join(path, "bits"), 0, 1)
    if alpha.HasField("permutation"):
        mutation, crossover = alpha.permutation.mutation, alpha.permutation.crossover
        found += check_enum(
            mutation, dna_pb2.PermutationMutation.DESCRIPTOR, join(path, "permutation.mutation")
        )
        found += check_enum(
            crossover,
            dna_pb2.PermutationCrossover.DESCRIPTOR,
            join(path, "permutation.crossover"),
        )
    if alpha.HasField("sequence"):
        sequence_path = join(path, "sequence")
        for rate in ("substitution_rate", "insertion_rate", "deletion_rate"):
            found += _check_optional_range(alpha.sequence, rate, sequence_path, 0, 1)
    return found


def check_strategy(strategy: dna_pb2.Strategy, path: str) -> Violations:
    """A DNA's strategy: population sizes, rates in [0, 1], operator parameters, enums."""
    kind = strategy.WhichOneof("kind")
    if kind == "alpha":
        return _check_alpha(strategy.alpha, join(path, "alpha"))
    if kind == "random":
        size_path = join(path, "random.population_size")
        return _check_population_size(strategy.random.population_size, size_path)
    return []


def check_dna(dna: dna_pb2.Dna, path: str) -> Violations:
    """Structural checks of a DNA message: everything dna.proto states about one message.

    Name pattern if set, description length, 1 to 256 genes with unique names matching
    `[a-z_][a-z0-9_]{0,62}`, a kind per gene with finite ordered bounds and sizes within
    their caps, distinct choice options and alphabet symbols, the 1 MiB genome budget, and
    the strategy's parameters. (Rules that need a file, such as "name_matches_file", are
    the library loader's.)
    """
    found = check_resource_name(dna.name, "dnas", join(path, "name"), required=False)
    found += check_string(
        dna.description, join(path, "description"), required=False, max_len=MAX_DESCRIPTION_LEN
    )
    genes_path = join(path, "genes")
    found += check_repeated_len(dna.genes, genes_path, MAX_GENES, 1)
    first_seen: dict[str, int] = {}
    for i, gene in enumerate(dna.genes[:MAX_GENES]):
        gene_path = index(genes_path, i)
        found += _check_gene(gene, gene_path)
        if gene.name and gene.name in first_seen:
            text = f"must be unique within the DNA (same as genes[{first_seen[gene.name]}].name)"
            found.append(FieldViolation(join(gene_path, "name"), text, rules.UNIQUE_GENE_NAME))
        else:
            first_seen.setdefault(gene.name, i)
    budget = genome_budget(dna)
    if budget > MAX_GENOME_BYTES:
        text = (
            f"worst-case genome size must be at most {MAX_GENOME_BYTES} bytes (1 MiB), got {budget}"
        )
        found.append(FieldViolation(genes_path, text, rules.GENOME_TOO_LARGE))
    if dna.HasField("strategy"):
        found += check_strategy(dna.strategy, join(path, "strategy"))
    return found


# --- genomes and candidates ---------------------------------------------------------------


def _first_bad(values: Iterable[Any], ok: Callable[[Any], bool]) -> tuple[int, int]:
    """Index of the first value failing `ok`, and how many fail."""
    first, count = -1, 0
    for i, value in enumerate(values):
        if not ok(value):
            count += 1
            if first < 0:
                first = i
    return first, count


def _check_elements(
    values: Sequence[Any], path: str, ok: Callable[[Any], bool], text: str, rule: str
) -> Violations:
    """One violation for the first element failing `ok` (with a count of the others)."""
    first, count = _first_bad(values, ok)
    if count == 0:
        return []
    more = f" ({count} values break this rule)" if count > 1 else ""
    return [FieldViolation(index(path, first), text + more, rule)]


def genome_bytes(genome: candidate_pb2.Genome) -> int:
    """A genome's size by the DNA budget's measure (8 bytes per number, 1 per byte)."""
    numbers = len(genome.reals) + len(genome.integers) + len(genome.choices)
    numbers += len(genome.permutations)
    return 8 * numbers + len(genome.bits) + len(genome.sequences)


def check_genome(genome: candidate_pb2.Genome, path: str) -> Violations:
    """What holds for any genome of any valid DNA: size, finite reals, value bounds."""
    found: Violations = []
    size = genome_bytes(genome)
    if size > MAX_GENOME_BYTES:
        text = f"must be at most {MAX_GENOME_BYTES} bytes (1 MiB) by the DNA budget, got {size}"
        found.append(FieldViolation(path, text, rules.GENOME_TOO_LARGE))
    # Each test below is a cheap whole-field scan; paths are built only for a failure.
    if not all(map(math.isfinite, genome.reals)):
        found += _check_elements(
            genome.reals, join(path, "reals"), math.isfinite, "must be finite", rules.FINITE
        )
    bound = MAX_INTEGER_MAGNITUDE
    if genome.integers and not -bound <= min(genome.integers) <= max(genome.integers) <= bound:
        found += _check_elements(
            genome.integers,
            join(path, "integers"),
            lambda v: -bound <= v <= bound,
            f"must be within -{bound}..{bound}",
            rules.RANGE,
        )
    if genome.choices and max(genome.choices) >= MAX_CHOICE_OPTIONS:
        found += _check_elements(
            genome.choices,
            join(path, "choices"),
            lambda v: v < MAX_CHOICE_OPTIONS,
            f"must be an option index below {MAX_CHOICE_OPTIONS}",
            rules.RANGE,
        )
    if genome.permutations and max(genome.permutations) >= MAX_PERMUTATION_SIZE:
        found += _check_elements(
            genome.permutations,
            join(path, "permutations"),
            lambda v: v < MAX_PERMUTATION_SIZE,
            f"must be below {MAX_PERMUTATION_SIZE}",
            rules.RANGE,
        )
    lengths = genome.sequence_lengths
    if lengths:
        lengths_path = join(path, "sequence_lengths")
        found += check_repeated_len(lengths, lengths_path, MAX_GENES)
        if max(lengths) > MAX_SEQUENCE_LENGTH:
            found += _check_elements(
                lengths,
                lengths_path,
                lambda v: v <= MAX_SEQUENCE_LENGTH,
                f"must be at most {MAX_SEQUENCE_LENGTH}",
                rules.RANGE,
            )
    total = sum(lengths)
    if total != len(genome.sequences):
        text = f"must hold sum(sequence_lengths) = {total} bytes, got {len(genome.sequences)}"
        found.append(FieldViolation(join(path, "sequences"), text, rules.GENOME_SHAPE))
    return found


def check_candidate_id(value: str, path: str) -> Violations:
    """An optional candidate id: empty, or 32 lowercase hex characters."""
    if not value or (len(value) == 32 and matches(CANDIDATE_ID_PATTERN, value)):
        return []
    return [FieldViolation(path, "must be 32 lowercase hex characters", rules.PATTERN)]


def check_candidate(
    candidate: candidate_pb2.Candidate, path: str, *, genome: bool = True
) -> Violations:
    """A candidate sent to a server: id empty or well-formed, genome set and (unless
    `genome` is False, for callers that decode it against its DNA anyway) sane.

    generation and parent_ids are output only and ignored.
    """
    found = check_candidate_id(candidate.id, join(path, "id"))
    if not candidate.HasField("genome"):
        return [*found, FieldViolation(join(path, "genome"), "must be set", rules.REQUIRED)]
    if not genome:
        return found
    return found + check_genome(candidate.genome, join(path, "genome"))


def check_scored_candidate(
    scored: candidate_pb2.ScoredCandidate, path: str, *, genome: bool = True
) -> Violations:
    """A candidate with its optional verdict, as given to Generate: ranking needs sane values."""
    candidate_path = join(path, "candidate")
    if not scored.HasField("candidate"):
        found = [FieldViolation(candidate_path, "must be set", rules.REQUIRED)]
    else:
        found = check_candidate(scored.candidate, candidate_path, genome=genome)
    if not scored.HasField("verdict"):
        return found
    verdict, verdict_path = scored.verdict, join(path, "verdict")
    verdict_id, own_id = verdict.candidate_id, scored.candidate.id
    if verdict_id:
        id_path = join(verdict_path, "candidate_id")
        found += check_candidate_id(verdict_id, id_path)
        if own_id and verdict_id != own_id:
            found.append(FieldViolation(id_path, "must equal candidate.id", rules.MISMATCH))
    if verdict.status not in VERDICT_STATUSES:
        found += check_enum(verdict.status, VERDICT_STATUS, join(verdict_path, "status"))
    if not math.isfinite(verdict.score):
        found += check_finite(verdict.score, join(verdict_path, "score"))
    return found
