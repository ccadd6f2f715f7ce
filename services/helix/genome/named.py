"""The named JSON form of genomes: one key per gene, for humans and command oracles.

Pure and synchronous (no grpc, no I/O). `to_named_rows` / `to_named` turn rows of a
`Population` (see layout.py) into dicts ready for `json.dumps`; `from_named` checks a
named form against the DNA and builds its `helix.v1.Genome`, raising `InvalidArgument`
naming every problem. The form is that of the Genome comment in candidate.proto.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
from helix.common import rules
from helix.common.errors import FieldViolation, InvalidArgument
from helix.common.validation import format_number, index, join, key, matches, show
from helix.genome.genome_checks import MAX_VIOLATIONS, decode_genomes, first_repeat
from helix.genome.layout import GeneSlot, Kind, Layout, Population, normalise

_GENE_NAME = "[a-z_][a-z0-9_]{0,62}"


def _sequence_texts(layout: Layout, pop: Population, gene: GeneSlot) -> list[object]:
    """A sequence gene's strings, row for row."""
    block = pop.sequences[gene.start]
    alphabet = layout.sequences[gene.start].alphabet
    raw = block.symbols.tobytes()  # one translation maps the whole block, padding included
    if alphabet.isascii():
        text = raw.translate(alphabet.encode().ljust(256, b"\0")).decode("ascii")
    else:
        text = raw.decode("latin-1").translate(dict(enumerate(alphabet)))
    width = gene.size
    return [text[i * width : i * width + n] for i, n in enumerate(block.lengths.tolist())]


def _named_column(layout: Layout, pop: Population, gene: GeneSlot) -> list[object]:
    """One gene's named JSON values, row for row."""
    columns = slice(gene.start, gene.stop) if gene.size > 1 else gene.start
    array: npt.NDArray[Any]
    if gene.kind == "real":
        array = pop.reals[:, columns] + 0.0
    elif gene.kind == "integer":
        array = pop.integers[:, columns]
    elif gene.kind == "choice":
        array = np.array(gene.spec.choice.options, dtype=object)[pop.choices[:, columns]]
    elif gene.kind == "bits":
        array = pop.bits[:, gene.start : gene.stop].astype(np.uint8)
    elif gene.kind == "permutation":
        array = pop.permutations[gene.start]
    else:
        return _sequence_texts(layout, pop, gene)
    values: list[object] = array.tolist()
    return values


def to_named_rows(layout: Layout, pop: Population) -> list[dict[str, object]]:
    """Every row's named JSON form (candidate.proto), as dicts ready for `json.dumps`.

    One key per gene, in gene order: a real or integer gene of size 1 is a number, else an
    array; a choice gene its option string (an array when size > 1); a bits gene an array
    of 0/1; a permutation gene an array of integers; a sequence gene a string. Reals are
    finite floats (-0.0 shown as 0.0), integers ints.
    """
    names = [gene.name for gene in layout.genes]
    columns = [_named_column(layout, pop, gene) for gene in layout.genes]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def named_genomes(
    dna: dna_pb2.Dna, genomes: Sequence[candidate_pb2.Genome]
) -> list[dict[str, object]]:
    """Genomes of a (valid) DNA in named JSON form (candidate.proto), one dict each. Raises
    `InvalidArgument` naming the first genome that does not fit the DNA."""
    layout = Layout(normalise(dna))
    population = decode_genomes(layout, list(genomes), lambda i: f"candidates[{i}].genome")
    return to_named_rows(layout, population)


def to_named(layout: Layout, pop: Population, row: int) -> dict[str, object]:
    """One row's named JSON form (see `to_named_rows`)."""
    return to_named_rows(layout, pop.take([row]))[0]


class _Parts:
    """A Genome's fields, filled gene by gene from a named JSON form."""

    def __init__(self) -> None:
        self.reals: list[float] = []
        self.ints: dict[Kind, list[int]] = {
            "integer": [],
            "choice": [],
            "bits": [],
            "permutation": [],
        }
        self.sequence_lengths: list[int] = []
        self.sequences = bytearray()

    def genome(self) -> candidate_pb2.Genome:
        bits = np.array(self.ints["bits"], dtype=np.uint8)
        return candidate_pb2.Genome(
            reals=self.reals,
            integers=self.ints["integer"],
            choices=self.ints["choice"],
            bits=np.packbits(bits, bitorder="little").tobytes(),
            permutations=self.ints["permutation"],
            sequence_lengths=self.sequence_lengths,
            sequences=bytes(self.sequences),
        )


_V = TypeVar("_V", int, float)


@dataclass(frozen=True, slots=True)
class _Bad:
    """Why one element could not be read: a description and its rule code."""

    text: str
    rule: str


_NOT_A_NUMBER = _Bad("must be a number", rules.TYPE)
_NOT_AN_INTEGER = _Bad("must be an integer", rules.TYPE)
_NOT_FINITE = _Bad("must be finite", rules.FINITE)


def _read_values(
    gene: GeneSlot,
    value: object,
    path: str,
    noun: str,
    parse: Callable[[object], _V | _Bad],
    found: list[FieldViolation],
) -> list[_V]:
    """A gene's values: one (a gene of size 1, bits aside) or an array of its size `noun`,
    each parsed.

    On a problem, reports it in `found` (the first bad element, counting the others) and
    returns no values.
    """
    size, scalar = gene.size, gene.size == 1 and gene.kind != "bits"
    if scalar:
        items: list[object] = [value]
    elif isinstance(value, list) and len(value) == size:
        items = value
    else:
        got = f", got {len(value)}" if isinstance(value, list) else ""
        text = f"must be an array of {size} {noun}{got}"
        found.append(FieldViolation(path, text, rules.GENOME_SHAPE))
        return []
    out: list[_V] = []
    broken: list[tuple[int, _Bad]] = []
    for j, item in enumerate(items):
        parsed = parse(item)
        if isinstance(parsed, _Bad):
            broken.append((j, parsed))
        else:
            out.append(parsed)
    if not broken:
        return out
    j, bad = broken[0]
    more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
    found.append(FieldViolation(path if scalar else index(path, j), bad.text + more, bad.rule))
    return []


def _real_parser(low: float, high: float) -> Callable[[object], float | _Bad]:
    """A JSON number (not a bool) within [low, high], as a float with -0.0 read as 0.0."""
    bounds = _Bad(f"must be within {format_number(low)}..{format_number(high)}", rules.RANGE)

    def parse(item: object) -> float | _Bad:
        if isinstance(item, bool) or not isinstance(item, int | float):
            return _NOT_A_NUMBER
        try:
            value = float(item)
        except OverflowError:
            return bounds
        if not math.isfinite(value):
            return _NOT_FINITE
        return value + 0.0 if low <= value <= high else bounds

    return parse


def _integer_parser(low: int, high: int) -> Callable[[object], int | _Bad]:
    """An int (or integral float: JSON does not tell them apart; not a bool) in [low, high]."""
    bounds = _Bad(f"must be within {low}..{high}", rules.RANGE)

    def parse(item: object) -> int | _Bad:
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int):
            return _NOT_AN_INTEGER
        return item if low <= item <= high else bounds

    return parse


def _option_parser(options: Sequence[str]) -> Callable[[object], int | _Bad]:
    """One of the option strings, as its index."""
    indices = {option: i for i, option in enumerate(options)}
    bad = _Bad(f"must be one of the options {show(list(options))}", rules.ENUM)
    return lambda item: indices.get(item, bad) if isinstance(item, str) else bad


def _read_gene(gene: GeneSlot, value: object, path: str, parts: _Parts) -> list[FieldViolation]:
    """One gene's named value, appended to `parts`; the problems found."""
    found: list[FieldViolation] = []
    spec = gene.spec
    if gene.kind == "real":
        parse = _real_parser(spec.real.low, spec.real.high)
        parts.reals += _read_values(gene, value, path, "numbers", parse, found)
        return found
    if gene.kind == "sequence":
        return _read_sequence(gene, value, path, parts)
    noun, parse_int = {
        "integer": ("integers", _integer_parser(spec.integer.low, spec.integer.high)),
        "choice": ("option strings", _option_parser(spec.choice.options)),
        "bits": ("bits (0 or 1)", _integer_parser(0, 1)),
        "permutation": ("integers", _integer_parser(0, gene.size - 1)),
    }[gene.kind]
    values = _read_values(gene, value, path, noun, parse_int, found)
    if gene.kind == "permutation" and values and len(set(values)) != gene.size:
        j, repeated = first_repeat(values)
        text = f"repeats {repeated}: must be a permutation of 0..{gene.size - 1}"
        found.append(FieldViolation(index(path, j), text, rules.NOT_A_PERMUTATION))
    parts.ints[gene.kind] += values
    return found


def _read_sequence(gene: GeneSlot, value: object, path: str, parts: _Parts) -> list[FieldViolation]:
    """A sequence gene's string: its length and symbols checked, appended to `parts`."""
    spec = gene.spec.sequence
    if not isinstance(value, str):
        text = f"must be a string of symbols from {show(spec.alphabet)}"
        return [FieldViolation(path, text, rules.TYPE)]
    found: list[FieldViolation] = []
    if not spec.min_length <= len(value) <= spec.max_length:
        text = f"must be {spec.min_length}..{spec.max_length} symbols long, got {len(value)}"
        found.append(FieldViolation(path, text, rules.RANGE))
    lookup = {symbol: i for i, symbol in enumerate(spec.alphabet)}
    unknown = [j for j, symbol in enumerate(value) if symbol not in lookup]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        text = (
            f"must be a symbol of the alphabet {show(spec.alphabet)}, got {show(value[unknown[0]])}"
        )
        found.append(FieldViolation(index(path, unknown[0]), text + more, rules.SYMBOL))
    if not found:
        parts.sequence_lengths.append(len(value))
        parts.sequences += bytes(lookup[symbol] for symbol in value)
    return found


def from_named(layout: Layout, obj: Mapping[str, object], path: str = "") -> candidate_pb2.Genome:
    """The Genome of a named JSON form (see `to_named_rows`), checked against the DNA.

    Raises `InvalidArgument` naming every problem (at most MAX_VIOLATIONS) by its path under
    `path`: missing and unknown keys (`x`), values of the wrong type (a bool is not a
    number) or length, elements out of bounds (`x[3]`), unknown options or symbols,
    repeated permutation elements. -0.0 reads as 0.0, so the result's canonical encoding is
    its serialisation.
    """
    if not isinstance(obj, Mapping):
        text = "must be an object with one key per gene"
        raise InvalidArgument.from_violations([FieldViolation(path, text, rules.TYPE)])
    parts = _Parts()
    found: list[FieldViolation] = []
    for gene in layout.genes:
        gene_path = join(path, gene.name)
        if gene.name in obj:
            found += _read_gene(gene, obj[gene.name], gene_path, parts)
        else:
            found.append(
                FieldViolation(gene_path, "is required: a gene of the DNA", rules.REQUIRED)
            )
    names = {gene.name for gene in layout.genes}
    for name in obj:
        if name not in names:
            plain = isinstance(name, str) and matches(_GENE_NAME, name)
            key_path = join(path, name) if plain else key(path, name)
            found.append(FieldViolation(key_path, "is not a gene of the DNA", rules.UNKNOWN_GENE))
    if found:
        raise InvalidArgument.from_violations(found[:MAX_VIOLATIONS])
    return parts.genome()
