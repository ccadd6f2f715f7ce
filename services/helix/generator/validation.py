"""Request validation for GeneratorService, and the structural checks of DNAs and candidates.

`check_dna`, `check_candidate` and `check_scored_candidate` only look at the message in
hand (counts, bounds, patterns, finiteness) — never at a file or at another message — so
the oracle and orchestrator validators reuse them for DNAs and candidates inside their
requests. Whether a genome fits its DNA is checked later, by the code that decodes it.

When a repeated field holds more entries than its cap, only the first `cap` entries are
inspected: the request fails on the count anyway, and the work stays bounded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common.errors import FieldViolation
from helix.common.validation import (
    Violations,
    check_enum,
    check_finite,
    check_no_unknown_fields,
    check_page,
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
MAX_FILENAME_LEN = 1024

_GENE_KINDS = "real, integer, choice, bits, permutation, sequence"

# Rule codes (FieldViolation.reason, DnaViolation.rule) of the DNA checks: stable across
# versions. The generic ones first, then the DNA's own rules named in dna.proto.
REQUIRED = "required"  # empty or unset, but required
TOO_LONG = "too_long"  # a string over its length cap
PATTERN = "pattern"  # a string or name not matching its pattern
RANGE = "range"  # a number outside its bounds
FINITE = "finite"  # NaN or an infinity where a finite double is needed
ENUM = "enum"  # an enum number the schema does not know
TOO_MANY = "too_many"  # a repeated field over its cap
UNKNOWN_FIELD = "unknown_field"  # a field this server's schema does not know
LOW_LE_HIGH = "low_le_high"
LOG_SCALE_POSITIVE = "log_scale_positive"
UNIQUE_GENE_NAME = "unique_gene_name"
UNIQUE_OPTION = "unique_option"
UNIQUE_SYMBOL = "unique_symbol"
MIN_LE_MAX_LENGTH = "min_le_max_length"
GENOME_TOO_LARGE = "genome_too_large"
_VERDICT_STATUS = candidate_pb2.VerdictStatus.DESCRIPTOR
_VERDICT_STATUSES = frozenset(_VERDICT_STATUS.values_by_number)


@dataclass(frozen=True, slots=True)
class GeneratorLimits:
    """Caps on GeneratorService requests that a deployment may lower (defaults: the proto's)."""

    max_parents: int = 100_000
    max_count: int = 1_000_000
    max_batch_size: int = 10_000
    max_text_bytes: int = 1 << 20
    default_page_size: int = 100
    max_page_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_parents", "max_count", "max_batch_size", "max_text_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise ValueError("default_page_size must be within 1..max_page_size")


DEFAULT_LIMITS = GeneratorLimits()


# --- DNA ----------------------------------------------------------------------------------


def _ruled(found: Violations, rule: str) -> Violations:
    """`found` with `rule` as the reason of each violation that has none yet."""
    return [v if v.reason else replace(v, reason=rule) for v in found]


def _string(
    value: str, path: str, *, required: bool, max_len: int, pattern: str | None = None
) -> Violations:
    """check_string, with its rule: "required", "too_long" or "pattern"."""
    found = check_string(value, path, required=required, max_len=max_len, pattern=pattern)
    if not found:
        return found
    return _ruled(found, REQUIRED if not value else TOO_LONG if len(value) > max_len else PATTERN)


def _range(
    value: float,
    path: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_exclusive: bool = False,
) -> Violations:
    """check_range, with the rule "range"."""
    return _ruled(check_range(value, path, low, high, low_exclusive=low_exclusive), RANGE)


def _finite(value: float, path: str) -> Violations:
    return _ruled(check_finite(value, path), FINITE)


def _enum(value: int, enum_type: EnumDescriptor, path: str) -> Violations:
    return _ruled(check_enum(value, enum_type, path), ENUM)


def _count(values: Sized, path: str, max_len: int, min_len: int = 0) -> Violations:
    """check_repeated_len, with its rule: "required" (empty) or "too_many"."""
    found = check_repeated_len(values, path, max_len, min_len)
    return _ruled(found, TOO_MANY if len(values) > max_len else REQUIRED)


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
    return _range(size, join(path, "size"), high=MAX_GENE_SIZE)


def _check_real(gene: dna_pb2.RealGene, path: str) -> Violations:
    found = _finite(gene.low, join(path, "low")) + _finite(gene.high, join(path, "high"))
    if math.isfinite(gene.low) and math.isfinite(gene.high):
        if gene.low > gene.high:
            found.append(FieldViolation(join(path, "low"), "must be <= high", LOW_LE_HIGH))
        elif not math.isfinite(gene.high - gene.low):
            found.append(FieldViolation(join(path, "high"), "high - low must be finite", FINITE))
    if gene.log_scale and not gene.low > 0:
        text = "must be > 0 when log_scale is set"
        found.append(FieldViolation(join(path, "low"), text, LOG_SCALE_POSITIVE))
    return found + _check_gene_size(gene.size, path)


def _check_integer(gene: dna_pb2.IntegerGene, path: str) -> Violations:
    bound = MAX_INTEGER_MAGNITUDE
    found = _range(gene.low, join(path, "low"), -bound, bound)
    found += _range(gene.high, join(path, "high"), -bound, bound)
    if gene.low > gene.high:
        found.append(FieldViolation(join(path, "low"), "must be <= high", LOW_LE_HIGH))
    return found + _check_gene_size(gene.size, path)


def _check_choice(gene: dna_pb2.ChoiceGene, path: str) -> Violations:
    options_path = join(path, "options")
    found = _count(gene.options, options_path, MAX_CHOICE_OPTIONS, 1)
    first_seen: dict[str, int] = {}
    for i, option in enumerate(gene.options[:MAX_CHOICE_OPTIONS]):
        option_path = index(options_path, i)
        found += _string(option, option_path, required=True, max_len=MAX_OPTION_LEN)
        if option in first_seen:
            found.append(
                FieldViolation(
                    option_path,
                    f"must be unique (same as options[{first_seen[option]}])",
                    UNIQUE_OPTION,
                )
            )
        else:
            first_seen[option] = i
    return found + _check_gene_size(gene.size, path)


def _check_sequence(gene: dna_pb2.SequenceGene, path: str) -> Violations:
    alphabet_path = join(path, "alphabet")
    found = _string(gene.alphabet, alphabet_path, required=True, max_len=MAX_ALPHABET)
    if len(gene.alphabet) <= MAX_ALPHABET and len(set(gene.alphabet)) != len(gene.alphabet):
        repeated = sorted({c for c in gene.alphabet if gene.alphabet.count(c) > 1})
        symbols = ", ".join(show(c) for c in repeated)
        text = f"must not repeat symbols ({symbols})"
        found.append(FieldViolation(alphabet_path, text, UNIQUE_SYMBOL))
    found += _range(gene.max_length, join(path, "max_length"), 1, MAX_SEQUENCE_LENGTH)
    if gene.min_length > gene.max_length:
        text = "must be <= max_length"
        found.append(FieldViolation(join(path, "min_length"), text, MIN_LE_MAX_LENGTH))
    return found


def _check_gene(gene: dna_pb2.Gene, path: str) -> Violations:
    found = _string(
        gene.name, join(path, "name"), required=True, max_len=63, pattern=GENE_NAME_PATTERN
    )
    kind = gene.WhichOneof("kind")
    if kind is None:
        return [*found, FieldViolation(path, f"must set a kind: one of {_GENE_KINDS}", REQUIRED)]
    kind_path = join(path, kind)
    if kind == "real":
        found += _check_real(gene.real, kind_path)
    elif kind == "integer":
        found += _check_integer(gene.integer, kind_path)
    elif kind == "choice":
        found += _check_choice(gene.choice, kind_path)
    elif kind == "bits":
        found += _range(gene.bits.size, join(kind_path, "size"), 1, MAX_BITS)
    elif kind == "permutation":
        size = gene.permutation.size
        found += _range(size, join(kind_path, "size"), MIN_PERMUTATION_SIZE, MAX_PERMUTATION_SIZE)
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
    return _range(value, join(path, field), low, high, low_exclusive=low_exclusive)


def _check_population_size(size: int, path: str) -> Violations:
    if size == 0 or 2 <= size <= MAX_POPULATION_SIZE:
        return []
    text = f"must be 0 (meaning {DEFAULT_POPULATION_SIZE}) or within 2..{MAX_POPULATION_SIZE}"
    return [FieldViolation(path, text, RANGE)]


def _check_numeric_operators(
    ops: dna_pb2.RealOperators | dna_pb2.IntegerOperators, path: str
) -> Violations:
    found = _enum(ops.crossover, dna_pb2.NumericCrossover.DESCRIPTOR, join(path, "crossover"))
    found += _enum(ops.mutation, dna_pb2.NumericMutation.DESCRIPTOR, join(path, "mutation"))
    found += _enum(ops.bounds, dna_pb2.BoundHandling.DESCRIPTOR, join(path, "bounds"))
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
        found.append(FieldViolation(join(path, "elitism"), text, RANGE))
    if alpha.tournament_size > population:
        text = f"must be 0 (meaning 3) or within 1..population_size ({population})"
        found.append(FieldViolation(join(path, "tournament_size"), text, RANGE))
    found += _check_optional_range(alpha, "crossover_rate", path, 0, 1)
    found += _check_optional_range(alpha, "mutation_rate", path, 0, 1)
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
        mutation = alpha.permutation.mutation
        found += _enum(
            mutation, dna_pb2.PermutationMutation.DESCRIPTOR, join(path, "permutation.mutation")
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
    found = _ruled(
        check_resource_name(dna.name, "dnas", join(path, "name"), required=False), PATTERN
    )
    found += _string(
        dna.description, join(path, "description"), required=False, max_len=MAX_DESCRIPTION_LEN
    )
    genes_path = join(path, "genes")
    found += _count(dna.genes, genes_path, MAX_GENES, 1)
    first_seen: dict[str, int] = {}
    for i, gene in enumerate(dna.genes[:MAX_GENES]):
        gene_path = index(genes_path, i)
        found += _check_gene(gene, gene_path)
        if gene.name and gene.name in first_seen:
            text = f"must be unique within the DNA (same as genes[{first_seen[gene.name]}].name)"
            found.append(FieldViolation(join(gene_path, "name"), text, UNIQUE_GENE_NAME))
        else:
            first_seen.setdefault(gene.name, i)
    budget = genome_budget(dna)
    if budget > MAX_GENOME_BYTES:
        text = (
            f"worst-case genome size must be at most {MAX_GENOME_BYTES} bytes (1 MiB), got {budget}"
        )
        found.append(FieldViolation(genes_path, text, GENOME_TOO_LARGE))
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
    values: Sequence[Any], path: str, ok: Callable[[Any], bool], rule: str
) -> Violations:
    """One violation for the first element failing `ok` (with a count of the others)."""
    first, count = _first_bad(values, ok)
    if count == 0:
        return []
    more = f" ({count} values break this rule)" if count > 1 else ""
    return [FieldViolation(index(path, first), rule + more)]


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
        found.append(FieldViolation(path, text))
    # Each test below is a cheap whole-field scan; paths are built only for a failure.
    if not all(map(math.isfinite, genome.reals)):
        found += _check_elements(genome.reals, join(path, "reals"), math.isfinite, "must be finite")
    bound = MAX_INTEGER_MAGNITUDE
    if genome.integers and not -bound <= min(genome.integers) <= max(genome.integers) <= bound:
        found += _check_elements(
            genome.integers,
            join(path, "integers"),
            lambda v: -bound <= v <= bound,
            f"must be within -{bound}..{bound}",
        )
    if genome.choices and max(genome.choices) >= MAX_CHOICE_OPTIONS:
        found += _check_elements(
            genome.choices,
            join(path, "choices"),
            lambda v: v < MAX_CHOICE_OPTIONS,
            f"must be an option index below {MAX_CHOICE_OPTIONS}",
        )
    if genome.permutations and max(genome.permutations) >= MAX_PERMUTATION_SIZE:
        found += _check_elements(
            genome.permutations,
            join(path, "permutations"),
            lambda v: v < MAX_PERMUTATION_SIZE,
            f"must be below {MAX_PERMUTATION_SIZE}",
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
            )
    total = sum(lengths)
    if total != len(genome.sequences):
        text = f"must hold sum(sequence_lengths) = {total} bytes, got {len(genome.sequences)}"
        found.append(FieldViolation(join(path, "sequences"), text))
    return found


def check_candidate_id(value: str, path: str) -> Violations:
    """An optional candidate id: empty, or 32 lowercase hex characters."""
    if not value or (len(value) == 32 and matches(CANDIDATE_ID_PATTERN, value)):
        return []
    return [FieldViolation(path, "must be 32 lowercase hex characters")]


def check_candidate(
    candidate: candidate_pb2.Candidate, path: str, *, genome: bool = True
) -> Violations:
    """A candidate sent to a server: id empty or well-formed, genome set and (unless
    `genome` is False, for callers that decode it against its DNA anyway) sane.

    generation and parent_ids are output only and ignored.
    """
    found = check_candidate_id(candidate.id, join(path, "id"))
    if not candidate.HasField("genome"):
        return [*found, FieldViolation(join(path, "genome"), "must be set")]
    if not genome:
        return found
    return found + check_genome(candidate.genome, join(path, "genome"))


def check_scored_candidate(
    scored: candidate_pb2.ScoredCandidate, path: str, *, genome: bool = True
) -> Violations:
    """A candidate with its optional verdict, as given to Generate: ranking needs sane values."""
    candidate_path = join(path, "candidate")
    if not scored.HasField("candidate"):
        found = [FieldViolation(candidate_path, "must be set")]
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
            found.append(FieldViolation(id_path, "must equal candidate.id"))
    if verdict.status not in _VERDICT_STATUSES:
        found += check_enum(verdict.status, _VERDICT_STATUS, join(verdict_path, "status"))
    if not math.isfinite(verdict.score):
        found += check_finite(verdict.score, join(verdict_path, "score"))
    return found


# --- GeneratorService requests ------------------------------------------------------------


def check_list_dnas_request(
    request: generator_pb2.ListDnasRequest, limits: GeneratorLimits = DEFAULT_LIMITS
) -> Violations:
    """page_size not negative; page_token at most 1024 characters."""
    return check_no_unknown_fields(request) + check_page(request.page_size, request.page_token)


def check_get_dna_request(
    request: generator_pb2.GetDnaRequest, limits: GeneratorLimits = DEFAULT_LIMITS
) -> Violations:
    """name: a required "dnas/{dna}"."""
    return check_no_unknown_fields(request) + check_resource_name(request.name, "dnas", "name")


def _utf8_len_over(text: str, limit: int) -> bool:
    """Whether `text` takes more than `limit` bytes in UTF-8 (cheap for short texts)."""
    if len(text) * 4 <= limit:
        return False
    if len(text) > limit:
        return True
    return len(text.encode("utf-8", "surrogatepass")) > limit


def check_validate_dna_request(
    request: generator_pb2.ValidateDnaRequest, limits: GeneratorLimits = DEFAULT_LIMITS
) -> Violations:
    """source (dna or text) set; text 1 byte..1 MiB; filename at most 1024 characters.

    The DNA itself is not checked here (nor its unknown fields): a broken DNA is a
    successful ValidateDna call that reports it, not an INVALID_ARGUMENT.
    """
    found = check_no_unknown_fields(request, skip=("dna",))
    source = request.WhichOneof("source")
    if source is None:
        found.append(FieldViolation("source", "must set one of dna, text"))
    elif source == "text":
        if not request.text:
            found.append(FieldViolation("text", "must not be empty"))
        elif _utf8_len_over(request.text, limits.max_text_bytes):
            text = f"must be at most {limits.max_text_bytes} bytes of UTF-8"
            found.append(FieldViolation("text", text))
    found += check_string(request.filename, "filename", required=False, max_len=MAX_FILENAME_LEN)
    return found


def _check_lineage(candidate: candidate_pb2.Candidate, path: str) -> Violations:
    """A parent's parent_ids, which Generate copies into the output when it is an elite:
    at most 2, each a well-formed candidate id."""
    ids_path = join(path, "candidate.parent_ids")
    found = check_repeated_len(candidate.parent_ids, ids_path, 2)
    for j, parent_id in enumerate(candidate.parent_ids[:2]):
        if not parent_id:
            found.append(FieldViolation(index(ids_path, j), "must not be empty", "required"))
        else:
            found += check_candidate_id(parent_id, index(ids_path, j))
    return found


_CANDIDATE_ID = re.compile(CANDIDATE_ID_PATTERN)


def _well_formed_id(value: str) -> bool:
    return len(value) == 32 and _CANDIDATE_ID.fullmatch(value) is not None


def parent_is_clean(parent: candidate_pb2.ScoredCandidate) -> bool:
    """A fast accept of a parent that passes every per-parent check of
    `check_generate_request` (without building field paths); any other parent gets the full
    checks, which name each problem. It must never accept what they would refuse
    (tests/test_validation.py checks that on random messages)."""
    if not parent.HasField("candidate"):
        return False
    candidate = parent.candidate
    own_id = candidate.id
    if (own_id and not _well_formed_id(own_id)) or not candidate.HasField("genome"):
        return False
    lineage = candidate.parent_ids
    if len(lineage) > 2 or not all(map(_well_formed_id, lineage)):
        return False
    if not parent.HasField("verdict"):
        return True
    verdict = parent.verdict
    verdict_id = verdict.candidate_id
    if verdict_id and (verdict_id != own_id if own_id else not _well_formed_id(verdict_id)):
        return False
    return verdict.status in _VERDICT_STATUSES and math.isfinite(verdict.score)


def parent_violations(parent: candidate_pb2.ScoredCandidate, path: str) -> Violations:
    """The full per-parent checks of `check_generate_request`, with field paths.

    Genomes are decoded against the DNA before any use, which checks every value
    (vectorised, and stricter than check_genome); checking them here too would double the
    per-parent cost of a Generate call.
    """
    return check_scored_candidate(parent, path, genome=False) + _check_lineage(
        parent.candidate, path
    )


def check_generate_request(
    request: generator_pb2.GenerateRequest, limits: GeneratorLimits = DEFAULT_LIMITS
) -> Violations:
    """DNA (by name or inline, structurally sound); parents capped and sane (their
    parent_ids included: elites are copied); objective required with parents; count
    1..1000000; batch_size at most 10000."""
    found = check_no_unknown_fields(request)
    source = request.WhichOneof("dna_source")
    if source is None:
        found.append(FieldViolation("dna_source", "must set one of dna_name, dna"))
    elif source == "dna_name":
        found += check_resource_name(request.dna_name, "dnas", "dna_name")
    else:
        found += check_dna(request.dna, "dna")
    found += check_repeated_len(request.parents, "parents", limits.max_parents)
    for i, parent in enumerate(request.parents[: limits.max_parents]):
        if not parent_is_clean(parent):
            found += parent_violations(parent, index("parents", i))
    if request.parents:
        objective_type = common_pb2.Objective.DESCRIPTOR
        found += check_enum(request.objective, objective_type, "objective", required=True)
    found += check_range(request.count, "count", 1, limits.max_count)
    found += check_range(request.batch_size, "batch_size", high=limits.max_batch_size)
    return found


CHECKS: dict[str, Callable[[Any], list[FieldViolation]]] = {
    "ListDnas": check_list_dnas_request,
    "GetDna": check_get_dna_request,
    "ValidateDna": check_validate_dna_request,
    "Generate": check_generate_request,
}
