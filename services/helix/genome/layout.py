"""How a DNA lays out its candidates: defaults, the per-kind column layout, and batches.

Pure and synchronous (no grpc, no I/O). Everything downstream — the wire codec, the
genetic operators, the named JSON form — works from one `Layout` built from a *valid*,
*normalised* DNA, and on `Population`s: a batch of N genomes held as NumPy arrays, one
array per gene kind, columns in gene order, exactly like the Genome wire layout in
candidate.proto:

- ``reals``     float64 ``(N, R)``: all real genes' values, natural (not log) space.
- ``integers``  int64   ``(N, I)``: all integer genes' values.
- ``choices``   int64   ``(N, C)``: all choice genes' option indices.
- ``bits``      bool    ``(N, B)``: all bits genes' bits (unpacked).
- ``permutations`` one int64 ``(N, size)`` array per permutation gene.
- ``sequences`` one `SequenceBlock` per sequence gene: uint8 symbol indices
  ``(N, max_length)`` with every position at or past the row's length set to 0, and the
  lengths int64 ``(N,)``.

Gene g of a kind owns the columns ``gene.start:gene.stop`` of its kind's array
(for permutation and sequence genes, ``gene.start`` is the index into the tuple).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

import helix.v1.dna_pb2 as dna_pb2

Kind = Literal["real", "integer", "choice", "bits", "permutation", "sequence"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
ByteArray = npt.NDArray[np.uint8]

DEFAULT_POPULATION_SIZE = 64
DEFAULT_ELITISM = 1
DEFAULT_TOURNAMENT_SIZE = 3
DEFAULT_CROSSOVER_RATE = 0.9
DEFAULT_MUTATION_RATE = 0.1
DEFAULT_CHILD_MUTATION_RATE = 0.5
DEFAULT_BLEND_ALPHA = 0.5
DEFAULT_SBX_ETA = 15.0
DEFAULT_GAUSSIAN_SIGMA = 0.1
DEFAULT_POLYNOMIAL_ETA = 20.0
DEFAULT_INSERTION_RATE = 0.05
DEFAULT_DELETION_RATE = 0.05
DEFAULT_PERMUTATION_CROSSOVER = dna_pb2.PERMUTATION_CROSSOVER_EDGE_RECOMBINATION


# --- normalisation ------------------------------------------------------------------------


def _defaults(message: Message, **defaults: float) -> None:
    """Set each optional field of `message` that is unset to its default."""
    for name, value in defaults.items():
        if not message.HasField(name):
            setattr(message, name, value)


def _normalise_numeric(ops: dna_pb2.RealOperators | dna_pb2.IntegerOperators) -> None:
    if ops.crossover == dna_pb2.NUMERIC_CROSSOVER_UNSPECIFIED:
        ops.crossover = dna_pb2.NUMERIC_CROSSOVER_SIMULATED_BINARY
    if ops.mutation == dna_pb2.NUMERIC_MUTATION_UNSPECIFIED:
        ops.mutation = dna_pb2.NUMERIC_MUTATION_POLYNOMIAL
    if ops.bounds == dna_pb2.BOUND_HANDLING_UNSPECIFIED:
        ops.bounds = dna_pb2.BOUND_HANDLING_REFLECT
    _defaults(
        ops,
        blend_alpha=DEFAULT_BLEND_ALPHA,
        sbx_eta=DEFAULT_SBX_ETA,
        gaussian_sigma=DEFAULT_GAUSSIAN_SIGMA,
        polynomial_eta=DEFAULT_POLYNOMIAL_ETA,
    )


def _normalise_alpha(alpha: dna_pb2.AlphaStrategy) -> None:
    if alpha.population_size == 0:
        alpha.population_size = DEFAULT_POPULATION_SIZE
    _defaults(alpha, elitism=min(DEFAULT_ELITISM, alpha.population_size - 1))
    if alpha.tournament_size == 0:
        # "0 means 3", capped by the rule 1..population_size for a population of 2 (the
        # written-out DNA must stay valid): such a DNA gets tournaments of 2.
        alpha.tournament_size = min(DEFAULT_TOURNAMENT_SIZE, alpha.population_size)
    _defaults(
        alpha,
        crossover_rate=DEFAULT_CROSSOVER_RATE,
        mutation_rate=DEFAULT_MUTATION_RATE,
        child_mutation_rate=DEFAULT_CHILD_MUTATION_RATE,
    )
    _normalise_numeric(alpha.real)
    _normalise_numeric(alpha.integer)
    _defaults(alpha.choice, gene_mutation_rate=alpha.mutation_rate)
    alpha.bits.SetInParent()  # flip_rate stays unset: its default is per gene (1/size)
    if alpha.permutation.mutation == dna_pb2.PERMUTATION_MUTATION_UNSPECIFIED:
        alpha.permutation.mutation = dna_pb2.PERMUTATION_MUTATION_INVERSION
    if alpha.permutation.crossover == dna_pb2.PERMUTATION_CROSSOVER_UNSPECIFIED:
        alpha.permutation.crossover = DEFAULT_PERMUTATION_CROSSOVER
    _defaults(
        alpha.sequence,
        substitution_rate=alpha.mutation_rate,
        insertion_rate=DEFAULT_INSERTION_RATE,
        deletion_rate=DEFAULT_DELETION_RATE,
    )


def _positive_zeros(message: Message) -> None:
    """Replace -0.0 by 0.0 in every double field: equal meaning, equal fingerprint."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if field.is_repeated else (value,):
                _positive_zeros(item)
        elif field.type == FieldDescriptor.TYPE_DOUBLE and not field.is_repeated and value == 0:
            setattr(message, field.name, 0.0)


def normalise(dna: dna_pb2.Dna) -> dna_pb2.Dna:
    """A copy of a valid DNA with every default written out.

    Gene sizes of 0 become 1; -0.0 becomes 0.0; an unset strategy becomes `alpha`; every
    unset strategy parameter takes the default dna.proto names, except
    BitsOperators.flip_rate, whose default (1/size) differs per gene and so stays unset.
    Normalising twice changes nothing, and two DNAs that mean the same normalise to equal
    messages.
    """
    out = dna_pb2.Dna()
    out.CopyFrom(dna)
    for gene in out.genes:
        kind = gene.WhichOneof("kind")
        if kind in ("real", "integer", "choice"):
            spec = getattr(gene, kind)
            if spec.size == 0:
                spec.size = 1
    _positive_zeros(out)
    if out.strategy.WhichOneof("kind") == "random":
        if out.strategy.random.population_size == 0:
            out.strategy.random.population_size = DEFAULT_POPULATION_SIZE
    else:
        _normalise_alpha(out.strategy.alpha)
    return out


def fingerprint(normalised: dna_pb2.Dna) -> str:
    """DnaDocument.fingerprint: SHA-256 of the normalised DNA without name and description."""
    copy = dna_pb2.Dna()
    copy.CopyFrom(normalised)
    copy.ClearField("name")
    copy.ClearField("description")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def population_size(normalised: dna_pb2.Dna) -> int:
    """Candidates per generation of a normalised DNA's strategy."""
    strategy = normalised.strategy
    if strategy.WhichOneof("kind") == "random":
        return strategy.random.population_size
    return strategy.alpha.population_size


# --- layout -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GeneSlot:
    """One gene's place in the layout.

    For real, integer, choice and bits genes, `start:stop` are its columns in the kind's
    array; for permutation and sequence genes, `start` is its index in the kind's tuple
    (and stop = start + 1). `size` is the number of values (bits, elements; for a
    sequence, max_length).
    """

    name: str
    kind: Kind
    index: int
    start: int
    stop: int
    size: int
    spec: dna_pb2.Gene


@dataclass(frozen=True, slots=True)
class SequenceSpec:
    """One sequence gene's shape."""

    alphabet: str
    min_length: int
    max_length: int


class _Columns:
    """The per-kind columns of a layout, filled gene by gene in gene order."""

    def __init__(self) -> None:
        self.real_low: list[float] = []
        self.real_high: list[float] = []
        self.real_log: list[bool] = []
        self.int_low: list[int] = []
        self.int_high: list[int] = []
        self.choice_counts: list[int] = []
        self.choice_options: list[tuple[str, ...]] = []
        self.n_bits = 0
        self.perm_sizes: list[int] = []
        self.sequences: list[SequenceSpec] = []

    def add(self, i: int, gene: dna_pb2.Gene) -> GeneSlot:
        """Lay out gene `i` after the genes before it; its slot."""
        kind: Kind = gene.WhichOneof("kind")  # type: ignore[assignment]
        if kind == "real":
            n, start = gene.real.size or 1, len(self.real_low)
            self.real_low += [gene.real.low] * n
            self.real_high += [gene.real.high] * n
            self.real_log += [gene.real.log_scale] * n
            return GeneSlot(gene.name, kind, i, start, start + n, n, gene)
        if kind == "integer":
            n, start = gene.integer.size or 1, len(self.int_low)
            self.int_low += [gene.integer.low] * n
            self.int_high += [gene.integer.high] * n
            return GeneSlot(gene.name, kind, i, start, start + n, n, gene)
        if kind == "choice":
            n, start = gene.choice.size or 1, len(self.choice_counts)
            self.choice_counts += [len(gene.choice.options)] * n
            self.choice_options += [tuple(gene.choice.options)] * n
            return GeneSlot(gene.name, kind, i, start, start + n, n, gene)
        if kind == "bits":
            n, start = gene.bits.size, self.n_bits
            self.n_bits += n
            return GeneSlot(gene.name, kind, i, start, start + n, n, gene)
        if kind == "permutation":
            n, start = gene.permutation.size, len(self.perm_sizes)
            self.perm_sizes.append(n)
            return GeneSlot(gene.name, kind, i, start, start + 1, n, gene)
        seq, start = gene.sequence, len(self.sequences)
        self.sequences.append(SequenceSpec(seq.alphabet, seq.min_length, seq.max_length))
        return GeneSlot(gene.name, kind, i, start, start + 1, seq.max_length, gene)


class Layout:
    """The column layout and per-column bounds of a valid, normalised DNA."""

    __slots__ = (
        "choice_counts",
        "choice_options",
        "dna",
        "genes",
        "integer_high",
        "integer_low",
        "n_bits",
        "n_choices",
        "n_integers",
        "n_reals",
        "permutation_sizes",
        "real_high",
        "real_log",
        "real_low",
        "sequences",
    )

    def __init__(self, normalised: dna_pb2.Dna) -> None:
        self.dna = normalised
        columns = _Columns()
        self.genes: tuple[GeneSlot, ...] = tuple(
            columns.add(i, gene) for i, gene in enumerate(normalised.genes)
        )
        self.real_low: FloatArray = np.asarray(columns.real_low, dtype=np.float64)
        self.real_high: FloatArray = np.asarray(columns.real_high, dtype=np.float64)
        self.real_log: BoolArray = np.asarray(columns.real_log, dtype=np.bool_)
        self.integer_low: IntArray = np.asarray(columns.int_low, dtype=np.int64)
        self.integer_high: IntArray = np.asarray(columns.int_high, dtype=np.int64)
        self.choice_counts: IntArray = np.asarray(columns.choice_counts, dtype=np.int64)
        self.choice_options: tuple[tuple[str, ...], ...] = tuple(columns.choice_options)
        self.n_reals = len(columns.real_low)
        self.n_integers = len(columns.int_low)
        self.n_choices = len(columns.choice_counts)
        self.n_bits = columns.n_bits
        self.permutation_sizes: tuple[int, ...] = tuple(columns.perm_sizes)
        self.sequences: tuple[SequenceSpec, ...] = tuple(columns.sequences)

    def genes_of(self, kind: Kind) -> tuple[GeneSlot, ...]:
        """The genes of one kind, in gene order."""
        return tuple(g for g in self.genes if g.kind == kind)

    def empty(self, n: int) -> Population:
        """A population of n all-zero rows (not valid genomes: a buffer to fill)."""
        return Population(
            reals=np.zeros((n, self.n_reals), dtype=np.float64),
            integers=np.zeros((n, self.n_integers), dtype=np.int64),
            choices=np.zeros((n, self.n_choices), dtype=np.int64),
            bits=np.zeros((n, self.n_bits), dtype=np.bool_),
            permutations=tuple(np.zeros((n, s), dtype=np.int64) for s in self.permutation_sizes),
            sequences=tuple(
                SequenceBlock(
                    np.zeros((n, s.max_length), dtype=np.uint8), np.zeros(n, dtype=np.int64)
                )
                for s in self.sequences
            ),
        )


@dataclass(frozen=True, slots=True)
class SequenceBlock:
    """One sequence gene over a batch: padded symbol indices and lengths."""

    symbols: ByteArray
    lengths: IntArray

    def take(self, rows: npt.NDArray[np.intp]) -> SequenceBlock:
        """The given rows, in the given order (a copy)."""
        return SequenceBlock(self.symbols.take(rows, axis=0), self.lengths.take(rows))


@dataclass(frozen=True, slots=True)
class Population:
    """A batch of genomes as NumPy arrays (see the module docstring for the layout)."""

    reals: FloatArray
    integers: IntArray
    choices: IntArray
    bits: BoolArray
    permutations: tuple[IntArray, ...]
    sequences: tuple[SequenceBlock, ...]

    def __len__(self) -> int:
        return int(self.reals.shape[0])

    def take(self, rows: npt.ArrayLike) -> Population:
        """The given rows, in the given order (a copy); rows may repeat.

        `ndarray.take` along axis 0 rather than fancy indexing: the same rows at a third
        of the fixed cost, which counts when breeding a hundred children.
        """
        index = np.asarray(rows, dtype=np.intp)
        return Population(
            reals=self.reals.take(index, axis=0),
            integers=self.integers.take(index, axis=0),
            choices=self.choices.take(index, axis=0),
            bits=self.bits.take(index, axis=0),
            permutations=tuple(p.take(index, axis=0) for p in self.permutations),
            sequences=tuple(s.take(index) for s in self.sequences),
        )

    @staticmethod
    def concat(parts: Sequence[Population]) -> Population:
        """The rows of several populations of one layout, in order."""
        first = parts[0]
        return Population(
            reals=np.concatenate([p.reals for p in parts]),
            integers=np.concatenate([p.integers for p in parts]),
            choices=np.concatenate([p.choices for p in parts]),
            bits=np.concatenate([p.bits for p in parts]),
            permutations=tuple(
                np.concatenate([p.permutations[k] for p in parts])
                for k in range(len(first.permutations))
            ),
            sequences=tuple(
                SequenceBlock(
                    np.concatenate([p.sequences[k].symbols for p in parts]),
                    np.concatenate([p.sequences[k].lengths for p in parts]),
                )
                for k in range(len(first.sequences))
            ),
        )
