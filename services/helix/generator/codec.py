"""Genomes on the wire, ids, and the named JSON form, for whole batches at once.

Pure and synchronous (no grpc, no I/O). Every function takes a `Layout` and works on a
`Population` (see layout.py) or on a batch of `helix.v1.Genome` messages; the formats
are those of the Genome comment in candidate.proto:

- `encode_genomes` builds each row's canonical encoding with NumPy (one buffer for the
  whole batch, sliced per row); `candidate_ids` hashes encodings into candidate ids.
- `to_candidates` / `assemble_candidates` build `Candidate` messages by parsing bytes
  assembled around those encodings (`encode_candidates`), the fastest way to fill
  messages from Python.
- `decode_genomes` checks that genomes fit the DNA and turns them into a `Population`: it
  serialises them (cheap, in C) and reads all fields of all rows with NumPy.
- `to_named_rows` / `to_named` / `from_named` convert to and from the named JSON form.

Encoding assumes the population holds valid genomes of the layout (what the operators
produce); decoding and `from_named` check everything and raise `InvalidArgument`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from google.protobuf.unknown_fields import UnknownFieldSet

import helix.v1.candidate_pb2 as candidate_pb2
from helix.common.errors import FieldViolation, InvalidArgument
from helix.common.validation import format_number, index, join, key, matches, show
from helix.generator.layout import (
    BoolArray,
    ByteArray,
    FloatArray,
    GeneSlot,
    IntArray,
    Kind,
    Layout,
    Population,
    SequenceBlock,
)

U64Array = npt.NDArray[np.uint64]
_T = TypeVar("_T", bound=np.generic)

MAX_VIOLATIONS = 100
"""At most this many violations are reported for one batch or one named genome."""

# Genome field numbers, in wire order; every field is length-delimited (wire type 2).
_FIELDS = ("reals", "integers", "choices", "bits", "permutations", "sequence_lengths", "sequences")
_REALS, _INTEGERS, _CHOICES, _BITS, _PERMUTATIONS, _SEQUENCE_LENGTHS, _SEQUENCES = range(1, 8)
_NEGATIVE_ZERO = np.array(-0.0, dtype="<f8").tobytes()
_GENE_NAME = "[a-z_][a-z0-9_]{0,62}"

# A batch of rows of padded bytes and which of them are present (None: all of them).
_Piece = tuple[ByteArray, BoolArray | None]


# --- wire primitives ----------------------------------------------------------------------


def varint(value: int) -> bytes:
    """One non-negative integer as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varints(values: U64Array) -> _Piece:
    """Each row of an (n, k) array as its k varints, concatenated (padded, with a mask)."""
    n, k = values.shape
    top = int(values.max(initial=0))
    groups = max(1, (top.bit_length() + 6) // 7)
    if groups == 1:
        return values.astype(np.uint8), None
    narrow = top < 1 << 32  # uint32 arithmetic is faster
    rest: npt.NDArray[np.unsignedinteger[Any]] = values.astype(np.uint32 if narrow else np.uint64)
    data = np.empty((n, k, groups), dtype=np.uint8)
    present = np.empty((n, k, groups), dtype=np.bool_)
    present[:, :, 0] = True
    for j in range(groups):
        data[:, :, j] = rest & 0x7F
        if j + 1 < groups:
            rest >>= 7
            np.not_equal(rest, 0, out=present[:, :, j + 1])
            data[:, :, j] |= present[:, :, j + 1].view(np.uint8) << 7  # continuation bit
    return data.reshape(n, k * groups), present.reshape(n, k * groups)


def _field(field: int, payload: _Piece) -> list[_Piece]:
    """A length-delimited field (tag, size, payload), omitted in rows whose payload is empty."""
    data, mask = payload
    n, width = data.shape
    if mask is None:
        head = np.frombuffer(bytes([field << 3 | 2]) + varint(width), dtype=np.uint8)
        return [(np.broadcast_to(head, (n, head.size)), None), payload]
    sizes = np.count_nonzero(mask, axis=1).astype(np.uint64)
    nonempty = (sizes > 0)[:, None]
    size_data, size_mask = _varints(sizes[:, None])
    tag = np.full((n, 1), field << 3 | 2, dtype=np.uint8)
    size_present = nonempty if size_mask is None else size_mask & nonempty
    return [(tag, nonempty), (size_data, size_present), payload]


def _rows(pieces: Sequence[_Piece], n: int) -> list[bytes]:
    """Each row's pieces, concatenated: one bytes object per row."""
    if n == 0:
        return []
    matrix = np.concatenate([data for data, _ in pieces], axis=1)
    if all(mask is None for _, mask in pieces):
        width = matrix.shape[1]
        whole = matrix.tobytes()
        return [whole[i : i + width] for i in range(0, n * width, width)]
    mask = np.concatenate(
        [np.ones(data.shape, np.bool_) if m is None else m for data, m in pieces], axis=1
    )
    whole = matrix[mask].tobytes()
    ends = np.cumsum(np.count_nonzero(mask, axis=1)).tolist()
    return [whole[a:b] for a, b in pairwise([0, *ends])]


def _ranges(starts: IntArray, lengths: IntArray) -> IntArray:
    """The indices starts[i] .. starts[i] + lengths[i] - 1 of every i, concatenated."""
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _read_sizes(buf: ByteArray, pos: IntArray) -> tuple[IntArray, IntArray]:
    """The varint at each position (clamped to 2^40) and how many bytes it takes."""
    value = np.zeros(pos.shape, dtype=np.uint64)
    width = np.zeros(pos.shape, dtype=np.int64)
    more = np.ones(pos.shape, dtype=np.bool_)
    for k in range(10):
        byte = buf[pos + k]
        value |= np.where(more, (byte & 0x7F).astype(np.uint64) << np.uint64(7 * k), 0)
        width += more
        more &= byte >= 0x80
        if not more.any():
            break
    return np.minimum(value, 1 << 40).astype(np.int64), width


def _read_varints(payload: ByteArray) -> tuple[U64Array, IntArray | None]:
    """All the (complete) varints in a byte string, in order, and where each one ends (the
    position of its last byte; None when every varint is one byte long)."""
    last = payload < 0x80
    if last.all():
        return payload.astype(np.uint64), None
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    width = ends - starts + 1
    values = (payload[starts] & 0x7F).astype(np.uint64)
    for j in range(1, int(width.max())):
        sel = np.flatnonzero(width > j)
        values[sel] |= (payload[starts[sel] + j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
    return values, ends


# --- encoding and ids ---------------------------------------------------------------------


def encode_genomes(layout: Layout, pop: Population) -> list[bytes]:
    """The canonical encoding of each row's Genome (see candidate.proto), row for row.

    Byte-identical to `Genome(...).SerializeToString(deterministic=True)` of the row with
    -0.0 replaced by 0.0. `pop` must hold valid genomes of `layout`.
    """
    pieces: list[_Piece] = []
    if layout.n_reals:
        reals = np.ascontiguousarray(pop.reals + 0.0, dtype="<f8")  # -0.0 + 0.0 is 0.0
        pieces += _field(_REALS, (reals.view(np.uint8), None))
    if layout.n_integers:
        values = pop.integers
        pieces += _field(_INTEGERS, _varints(((values << 1) ^ (values >> 63)).view(np.uint64)))
    if layout.n_choices:
        pieces += _field(_CHOICES, _varints(pop.choices.astype(np.uint64)))
    if layout.n_bits:
        pieces += _field(_BITS, (np.packbits(pop.bits, axis=1, bitorder="little"), None))
    if pop.permutations:
        elements = np.concatenate(pop.permutations, axis=1).astype(np.uint64)
        pieces += _field(_PERMUTATIONS, _varints(elements))
    if pop.sequences:
        lengths = np.stack([block.lengths for block in pop.sequences], axis=1)
        pieces += _field(_SEQUENCE_LENGTHS, _varints(lengths.astype(np.uint64)))
        symbols = np.concatenate([block.symbols for block in pop.sequences], axis=1)
        present = np.concatenate(
            [np.arange(b.symbols.shape[1]) < b.lengths[:, None] for b in pop.sequences], axis=1
        )
        pieces += _field(_SEQUENCES, (symbols, present))
    return _rows(pieces, len(pop))


def candidate_ids(encodings: Iterable[bytes]) -> list[str]:
    """The candidate id of each canonical encoding: 32 hex digits of its SHA-256."""
    sha256 = hashlib.sha256
    return [sha256(encoding).hexdigest()[:32] for encoding in encodings]


def canonical_encoding(genome: candidate_pb2.Genome) -> bytes:
    """One Genome message's canonical encoding: -0.0 read as 0.0, unknown fields dropped."""
    encoding = genome.SerializeToString(deterministic=True)
    # A -0.0 shows as these 8 bytes; finding them elsewhere only costs a needless copy.
    if _NEGATIVE_ZERO in encoding or len(UnknownFieldSet(genome)):
        clean = candidate_pb2.Genome()
        clean.CopyFrom(genome)
        clean.DiscardUnknownFields()
        clean.reals[:] = [value + 0.0 for value in clean.reals]
        encoding = clean.SerializeToString(deterministic=True)
    return encoding


def genome_id(genome: candidate_pb2.Genome) -> str:
    """The candidate id of one Genome message (equal to the batch path's for the same genome)."""
    return hashlib.sha256(canonical_encoding(genome)).hexdigest()[:32]


def _text_field(tag: bytes, text: str) -> bytes:
    """A string field: its tag, size and UTF-8 bytes."""
    raw = text.encode()
    return tag + varint(len(raw)) + raw


def encode_candidates(
    encodings: Sequence[bytes],
    ids: Sequence[str],
    *,
    generation: int,
    parent_ids: Sequence[Sequence[str]],
) -> list[bytes]:
    """Serialised Candidate messages from canonical encodings and ids (row for row).

    The bytes equal the messages' deterministic serialisation. Besides parsing them one
    by one (`assemble_candidates`), a servicer may frame them as a repeated message field
    of its response (for GenerateResponse.candidates, field 1: b"\\x0a", the varint size,
    the bytes) and parse the whole response once, which is faster still.
    """
    if not len(encodings) == len(ids) == len(parent_ids):
        raise ValueError("encodings, ids and parent_ids must have one entry per candidate")
    generation_field = b"\x18" + varint(generation) if generation else b""
    genome_heads: dict[int, bytes] = {}  # genome size -> field 2's tag and size
    parent_fields: dict[str, bytes] = {}
    out: list[bytes] = []
    for encoding, candidate_id, lineage in zip(encodings, ids, parent_ids, strict=True):
        head = genome_heads.get(len(encoding))
        if head is None:
            head = genome_heads[len(encoding)] = b"\x12" + varint(len(encoding))
        lineage_fields = b""
        for parent in lineage:
            field = parent_fields.get(parent)
            if field is None:
                field = parent_fields[parent] = _text_field(b"\x22", parent)
            lineage_fields += field
        id_field = _text_field(b"\x0a", candidate_id) if candidate_id else b""
        out.append(id_field + head + encoding + generation_field + lineage_fields)
    return out


def assemble_candidates(
    encodings: Sequence[bytes],
    ids: Sequence[str],
    *,
    generation: int,
    parent_ids: Sequence[Sequence[str]],
) -> list[candidate_pb2.Candidate]:
    """Candidate messages from canonical encodings and ids (row for row).

    Parsing bytes built by `encode_candidates` is faster than setting fields from Python.
    """
    parse = candidate_pb2.Candidate.FromString
    candidates = encode_candidates(encodings, ids, generation=generation, parent_ids=parent_ids)
    return [parse(candidate) for candidate in candidates]


def to_candidates(
    layout: Layout, pop: Population, *, generation: int, parent_ids: Sequence[Sequence[str]]
) -> list[candidate_pb2.Candidate]:
    """One Candidate per row: id, genome, `generation`, and that row's `parent_ids`.

    Callers that also need the encodings or ids (to drop duplicates before building
    messages, say) call `encode_genomes` and `candidate_ids`, then `assemble_candidates`,
    so nothing is encoded or hashed twice; the ids are also each message's `id`.
    """
    encodings = encode_genomes(layout, pop)
    return assemble_candidates(
        encodings, candidate_ids(encodings), generation=generation, parent_ids=parent_ids
    )


# --- decoding -----------------------------------------------------------------------------


class _Report:
    """Violations found in a batch, ordered by row then field, at most MAX_VIOLATIONS."""

    def __init__(self, path_of: Callable[[int], str]) -> None:
        self._path_of = path_of
        self._found: list[tuple[int, int, FieldViolation]] = []

    def add(self, row: int, field: int, suffix: str, description: str) -> None:
        """A violation of row `row` at `path_of(row).suffix`; `field` orders it in the row."""
        path = self._path_of(int(row))
        violation = FieldViolation(join(path, suffix) if suffix else path, description)
        self._found.append((int(row), field, violation))

    def raise_any(self) -> None:
        """Raise InvalidArgument with the first MAX_VIOLATIONS violations, if any."""
        if self._found:
            self._found.sort(key=lambda found: found[:2])
            raise InvalidArgument.from_violations(v for _, _, v in self._found[:MAX_VIOLATIONS])


def _offenders(bad: npt.ArrayLike) -> list[int]:
    """The first MAX_VIOLATIONS rows marked bad (each check names at most that many)."""
    return np.flatnonzero(bad)[:MAX_VIOLATIONS].tolist()  # type: ignore[no-any-return]


def _first_cells(bad: BoolArray) -> list[tuple[int, int, str]]:
    """Per offending row of an (m, k) mask: the row, its first bad column, "(and n more)"."""
    out: list[tuple[int, int, str]] = []
    for row in _offenders(bad.any(axis=1)):
        line = bad[row]
        count = int(np.count_nonzero(line))
        out.append((row, int(line.argmax()), f" (and {count - 1} more)" if count > 1 else ""))
    return out


class _Scan:
    """Where each genome's fields lie in one buffer holding all their encodings."""

    def __init__(self, genomes: Sequence[candidate_pb2.Genome]) -> None:
        blobs = [genome.SerializeToString(deterministic=True) for genome in genomes]
        n = len(blobs)
        sizes = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
        self.buf: ByteArray = np.frombuffer(b"".join(blobs) + bytes(16), dtype=np.uint8)
        self.start: IntArray = np.zeros((n, 8), dtype=np.int64)  # column = field number
        self.size: IntArray = np.zeros((n, 8), dtype=np.int64)
        # Serialisation writes known fields first, in field order: a row whose bytes are not
        # exactly such a run of fields 1..7 has unknown fields.
        self.foreign: BoolArray = np.zeros(n, dtype=np.bool_)
        ends = np.cumsum(sizes)
        pos = ends - sizes
        last = np.zeros(n, dtype=np.int64)
        for _ in _FIELDS:
            active = pos < ends
            tag = self.buf[pos].astype(np.int64)
            field = tag >> 3
            size, width = _read_sizes(self.buf, pos + 1)
            body = pos + 1 + width
            ok = active & (tag & 7 == 2) & (field > last) & (field <= 7) & (body + size <= ends)
            self.foreign |= active & ~ok
            rows = np.flatnonzero(ok)
            self.start[rows, field[rows]] = body[rows]
            self.size[rows, field[rows]] = size[rows]
            last[rows] = field[rows]
            pos = np.where(ok, body + size, ends)
        self.foreign |= pos < ends

    def payload(self, field: int, rows: IntArray) -> ByteArray:
        """The given rows' bytes of one field, concatenated."""
        return self.buf[_ranges(self.start[rows, field], self.size[rows, field])]

    def varints(self, field: int) -> tuple[U64Array, IntArray]:
        """All rows' values of a packed varint field, concatenated, and the count per row."""
        sizes = self.size[:, field]
        values, ends = _read_varints(self.payload(field, np.arange(len(sizes))))
        if ends is None:
            return values, sizes
        done = np.searchsorted(ends, np.cumsum(sizes))  # varints ending before each row's end
        return values, np.diff(done, prepend=0)


def _take(values: npt.NDArray[_T], counts: IntArray, rows: IntArray) -> npt.NDArray[_T]:
    """The given rows' values, out of all rows' values concatenated (with their counts)."""
    if len(rows) == len(counts):
        return values
    return values[_ranges(np.cumsum(counts)[rows] - counts[rows], counts[rows])]


@dataclass(frozen=True, slots=True)
class _Structure:
    """The rows whose field sizes fit the DNA, and their packed varint fields' values."""

    rows: IntArray
    values: dict[int, U64Array]


def _expected_counts(layout: Layout) -> dict[int, int]:
    """How many values (bytes for `bits`) each field but `sequences` holds under a DNA."""
    return {
        _REALS: layout.n_reals,
        _INTEGERS: layout.n_integers,
        _CHOICES: layout.n_choices,
        _BITS: (layout.n_bits + 7) // 8,
        _PERMUTATIONS: sum(layout.permutation_sizes),
        _SEQUENCE_LENGTHS: len(layout.sequences),
    }


def _check_structure(layout: Layout, scan: _Scan, report: _Report) -> _Structure:
    """Unknown fields, value counts and sequence lengths: whatever decides a row's shape."""
    for row in _offenders(scan.foreign):
        report.add(row, 0, "", "has fields that helix.v1.Genome does not define")
    counts = {_REALS: scan.size[:, _REALS] // 8, _BITS: scan.size[:, _BITS]}
    values: dict[int, U64Array] = {}
    for field in (_INTEGERS, _CHOICES, _PERMUTATIONS, _SEQUENCE_LENGTHS):
        values[field], counts[field] = scan.varints(field)
    bad = scan.foreign.copy()
    for field, want in _expected_counts(layout).items():
        got = counts[field]
        wrong = got != want
        unit = "bytes" if field == _BITS else "values"
        for row in _offenders(wrong):
            text = f"must hold {want} {unit} for this DNA, got {got[row]}"
            report.add(row, field, _FIELDS[field - 1], text)
        bad |= wrong
    lengths, length_counts = values[_SEQUENCE_LENGTHS].astype(np.int64), counts[_SEQUENCE_LENGTHS]
    sums = np.concatenate((np.zeros(1, np.int64), np.cumsum(lengths)))
    stops = np.cumsum(length_counts)
    total = sums[stops] - sums[stops - length_counts]
    wrong = total != scan.size[:, _SEQUENCES]
    for row in _offenders(wrong):
        text = f"must hold sum(sequence_lengths) = {total[row]} bytes, got "
        report.add(row, _SEQUENCES, "sequences", text + str(scan.size[row, _SEQUENCES]))
    bad |= wrong
    if layout.sequences:
        rows = np.flatnonzero(~bad)
        table = _take(lengths, length_counts, rows).reshape(len(rows), len(layout.sequences))
        low = [s.min_length for s in layout.sequences]
        high = [s.max_length for s in layout.sequences]
        outside = (table < low) | (table > high)
        genes = layout.genes_of("sequence")
        for local, j, more in _first_cells(outside):
            text = f"must be within {low[j]}..{high[j]} (gene {genes[j].name}){more}"
            report.add(rows[local], _SEQUENCE_LENGTHS, index("sequence_lengths", j), text)
        bad[rows[outside.any(axis=1)]] = True
    good = np.flatnonzero(~bad)
    return _Structure(good, {f: _take(v, counts[f], good) for f, v in values.items()})


def _gene_at(layout: Layout, kind: Kind, column: int) -> GeneSlot:
    """The real, integer or choice gene that owns a column."""
    return next(g for g in layout.genes_of(kind) if g.start <= column < g.stop)


def _check_bounds(
    layout: Layout,
    kind: Kind,
    values: FloatArray | IntArray,
    rows: IntArray,
    report: _Report,
) -> None:
    """Real or integer values within their columns' [low, high] (NaN fails)."""
    low, high = (
        (layout.real_low, layout.real_high)
        if kind == "real"
        else (layout.integer_low, layout.integer_high)
    )
    field = _REALS if kind == "real" else _INTEGERS
    for local, j, more in _first_cells(~((values >= low) & (values <= high))):
        value = float(values[local, j])
        rule = f"must be within {format_number(low[j])}..{format_number(high[j])}"
        if not math.isfinite(value):
            rule = "must be finite"
        text = f"{rule} (gene {_gene_at(layout, kind, j).name}){more}"
        report.add(rows[local], field, index(_FIELDS[field - 1], j), text)


def _first_repeat(values: list[int]) -> tuple[int, int]:
    """The position and value of the first element equal to an earlier one."""
    earlier: set[int] = set()
    for j, value in enumerate(values):
        if value in earlier:
            return j, value
        earlier.add(value)
    raise ValueError("no repeated value")


def _check_permutations(
    layout: Layout, elements: IntArray, rows: IntArray, report: _Report
) -> None:
    """Each permutation gene's elements a permutation of 0..size-1."""
    at = 0
    for gene in layout.genes_of("permutation"):
        size = gene.size
        block = elements[:, at : at + size]
        outside = block >= size
        what = f"(gene {gene.name} is a permutation of 0..{size - 1})"
        for local, j, more in _first_cells(outside):
            text = f"must be below {size} {what}{more}"
            report.add(rows[local], _PERMUTATIONS, index("permutations", at + j), text)
        seen = np.zeros(block.shape, dtype=np.bool_)
        seen[np.arange(len(block))[:, None], np.where(outside, 0, block)] = True
        for local in _offenders(~seen.all(axis=1) & ~outside.any(axis=1)):
            j, value = _first_repeat(block[local].tolist())
            path = index("permutations", at + j)
            report.add(rows[local], _PERMUTATIONS, path, f"repeats {value} {what}")
        at += size


def _check_choices(layout: Layout, choices: IntArray, rows: IntArray, report: _Report) -> None:
    """Option indices below their genes' option counts."""
    for local, j, more in _first_cells(choices >= layout.choice_counts):
        text = f"must be an option index below {layout.choice_counts[j]}"
        text += f" (gene {_gene_at(layout, 'choice', j).name}){more}"
        report.add(rows[local], _CHOICES, index("choices", j), text)


def _check_padding(layout: Layout, packed: ByteArray, rows: IntArray, report: _Report) -> None:
    """The unused high bits of the last bits byte all 0."""
    if layout.n_bits % 8:
        for local in _offenders(packed[:, -1] >> (layout.n_bits % 8) != 0):
            text = f"must have the unused high bits of its last byte 0 ({layout.n_bits} bits)"
            report.add(rows[local], _BITS, "bits", text)


def _check_symbols(
    layout: Layout,
    lengths: IntArray,
    symbols: ByteArray,
    gene_of: IntArray,
    rows: IntArray,
    report: _Report,
) -> None:
    """Each sequence gene's symbol indices below its alphabet's size.

    `gene_of` names the sequence gene of each symbol.
    """
    if not layout.sequences:
        return
    sizes = np.array([len(spec.alphabet) for spec in layout.sequences])
    positions = np.flatnonzero(symbols >= sizes[gene_of])
    if not positions.size:
        return
    totals = lengths.sum(axis=1)
    row_starts = np.cumsum(totals) - totals
    row_of = np.repeat(np.arange(len(lengths)), totals)[positions]
    offenders, first, per_row = (
        found[:MAX_VIOLATIONS].tolist()
        for found in np.unique(row_of, return_index=True, return_counts=True)
    )
    genes = layout.genes_of("sequence")
    for local, at, bad in zip(offenders, first, per_row, strict=True):
        position = int(positions[at])
        gene = int(gene_of[position])
        more = f" (and {bad - 1} more)" if bad > 1 else ""
        text = f"must be a symbol index below {sizes[gene]} (gene {genes[gene].name}){more}"
        j = position - int(row_starts[local])
        report.add(rows[local], _SEQUENCES, index("sequences", j), text)


def _sequence_blocks(
    layout: Layout, lengths: IntArray, symbols: ByteArray, gene_of: IntArray
) -> tuple[SequenceBlock, ...]:
    """Checked sequence fields as one padded SequenceBlock per sequence gene."""
    n = len(lengths)
    blocks: list[SequenceBlock] = []
    for g, spec in enumerate(layout.sequences):
        grid = np.zeros((n, spec.max_length), dtype=np.uint8)
        grid[np.arange(spec.max_length) < lengths[:, g, None]] = symbols[gene_of == g]
        blocks.append(SequenceBlock(grid, lengths[:, g].copy()))
    return tuple(blocks)


def decode_genomes(
    layout: Layout, genomes: Sequence[candidate_pb2.Genome], path_of: Callable[[int], str]
) -> Population:
    """The population of the given genomes, after checking that each one fits the DNA.

    Checks value counts per field (bits: ceil(B/8) bytes with unused high bits 0), reals
    finite and in bounds, integers in bounds, option indices, permutations, sequence
    lengths and symbols, and the absence of unknown fields. Raises `InvalidArgument` with
    one violation per problem (the first problem per row and field, at most
    MAX_VIOLATIONS in all), at paths such as `path_of(i).reals[3]`. -0.0 reads as 0.0.
    """
    scan = _Scan(genomes)
    report = _Report(path_of)
    structure = _check_structure(layout, scan, report)
    rows, values = structure.rows, structure.values
    m = len(rows)
    reals = scan.payload(_REALS, rows).view("<f8").reshape(m, layout.n_reals) + 0.0
    _check_bounds(layout, "real", reals, rows, report)
    zigzag = values[_INTEGERS]
    integers = (zigzag >> 1).view(np.int64) ^ -(zigzag & 1).view(np.int64)
    integers = integers.reshape(m, layout.n_integers)
    _check_bounds(layout, "integer", integers, rows, report)
    choices = values[_CHOICES].astype(np.int64).reshape(m, layout.n_choices)
    _check_choices(layout, choices, rows, report)
    packed = scan.payload(_BITS, rows).reshape(m, (layout.n_bits + 7) // 8)
    _check_padding(layout, packed, rows, report)
    at = np.cumsum((0, *layout.permutation_sizes)).tolist()
    elements = values[_PERMUTATIONS].astype(np.int64).reshape(m, at[-1])
    _check_permutations(layout, elements, rows, report)
    lengths = values[_SEQUENCE_LENGTHS].astype(np.int64).reshape(m, len(layout.sequences))
    symbols = scan.payload(_SEQUENCES, rows)
    gene_of = np.repeat(np.tile(np.arange(len(layout.sequences)), m), lengths.ravel())
    _check_symbols(layout, lengths, symbols, gene_of, rows, report)
    report.raise_any()
    return Population(
        reals=reals,
        integers=integers,
        choices=choices,
        bits=np.unpackbits(packed, axis=1, count=layout.n_bits, bitorder="little").view(np.bool_),
        permutations=tuple(elements[:, a:b].copy() for a, b in pairwise(at)),
        sequences=_sequence_blocks(layout, lengths, symbols, gene_of),
    )


# --- named JSON form ----------------------------------------------------------------------


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


def _read_values(
    value: object,
    path: str,
    size: int,
    noun: str,
    parse: Callable[[object], _V | str],
    found: list[FieldViolation],
    *,
    scalar: bool,
) -> list[_V]:
    """A gene's values: one (`scalar`) or an array of `size` `noun`, each parsed.

    On a problem, reports it in `found` (the first bad element, counting the others) and
    returns no values.
    """
    if scalar:
        items: list[object] = [value]
    elif isinstance(value, list) and len(value) == size:
        items = value
    else:
        got = f", got {len(value)}" if isinstance(value, list) else ""
        found.append(FieldViolation(path, f"must be an array of {size} {noun}{got}"))
        return []
    out: list[_V] = []
    broken: list[tuple[int, str]] = []
    for j, item in enumerate(items):
        parsed = parse(item)
        if isinstance(parsed, str):
            broken.append((j, parsed))
        else:
            out.append(parsed)
    if not broken:
        return out
    j, rule = broken[0]
    more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
    found.append(FieldViolation(path if scalar else index(path, j), rule + more))
    return []


def _real_parser(low: float, high: float) -> Callable[[object], float | str]:
    """A JSON number (not a bool) within [low, high], as a float with -0.0 read as 0.0."""
    bounds = f"must be within {format_number(low)}..{format_number(high)}"

    def parse(item: object) -> float | str:
        if isinstance(item, bool) or not isinstance(item, int | float):
            return "must be a number"
        try:
            value = float(item)
        except OverflowError:
            return bounds
        if not math.isfinite(value):
            return "must be finite"
        return value + 0.0 if low <= value <= high else bounds

    return parse


def _integer_parser(low: int, high: int) -> Callable[[object], int | str]:
    """An int (or integral float: JSON does not tell them apart; not a bool) in [low, high]."""

    def parse(item: object) -> int | str:
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int):
            return "must be an integer"
        return item if low <= item <= high else f"must be within {low}..{high}"

    return parse


def _option_parser(options: Sequence[str]) -> Callable[[object], int | str]:
    """One of the option strings, as its index."""
    indices = {option: i for i, option in enumerate(options)}
    rule = f"must be one of the options {show(list(options))}"
    return lambda item: indices.get(item, rule) if isinstance(item, str) else rule


def _read_gene(gene: GeneSlot, value: object, path: str, parts: _Parts) -> list[FieldViolation]:
    """One gene's named value, appended to `parts`; the problems found."""
    found: list[FieldViolation] = []
    spec, scalar = gene.spec, gene.size == 1 and gene.kind != "bits"
    if gene.kind == "real":
        parse = _real_parser(spec.real.low, spec.real.high)
        parts.reals += _read_values(value, path, gene.size, "numbers", parse, found, scalar=scalar)
        return found
    if gene.kind == "sequence":
        return _read_sequence(gene, value, path, parts)
    noun, parse_int = {
        "integer": ("integers", _integer_parser(spec.integer.low, spec.integer.high)),
        "choice": ("option strings", _option_parser(spec.choice.options)),
        "bits": ("bits (0 or 1)", _integer_parser(0, 1)),
        "permutation": ("integers", _integer_parser(0, gene.size - 1)),
    }[gene.kind]
    values = _read_values(value, path, gene.size, noun, parse_int, found, scalar=scalar)
    if gene.kind == "permutation" and values and len(set(values)) != gene.size:
        j, repeated = _first_repeat(values)
        text = f"repeats {repeated}: must be a permutation of 0..{gene.size - 1}"
        found.append(FieldViolation(index(path, j), text))
    parts.ints[gene.kind] += values
    return found


def _read_sequence(gene: GeneSlot, value: object, path: str, parts: _Parts) -> list[FieldViolation]:
    """A sequence gene's string: its length and symbols checked, appended to `parts`."""
    spec = gene.spec.sequence
    if not isinstance(value, str):
        return [FieldViolation(path, f"must be a string of symbols from {show(spec.alphabet)}")]
    found: list[FieldViolation] = []
    if not spec.min_length <= len(value) <= spec.max_length:
        text = f"must be {spec.min_length}..{spec.max_length} symbols long, got {len(value)}"
        found.append(FieldViolation(path, text))
    lookup = {symbol: i for i, symbol in enumerate(spec.alphabet)}
    unknown = [j for j, symbol in enumerate(value) if symbol not in lookup]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        text = (
            f"must be a symbol of the alphabet {show(spec.alphabet)}, got {show(value[unknown[0]])}"
        )
        found.append(FieldViolation(index(path, unknown[0]), text + more))
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
        rule = "must be an object with one key per gene"
        raise InvalidArgument.from_violations([FieldViolation(path, rule)])
    parts = _Parts()
    found: list[FieldViolation] = []
    for gene in layout.genes:
        gene_path = join(path, gene.name)
        if gene.name in obj:
            found += _read_gene(gene, obj[gene.name], gene_path, parts)
        else:
            found.append(FieldViolation(gene_path, "is required: a gene of the DNA"))
    names = {gene.name for gene in layout.genes}
    for name in obj:
        if name not in names:
            plain = isinstance(name, str) and matches(_GENE_NAME, name)
            key_path = join(path, name) if plain else key(path, name)
            found.append(FieldViolation(key_path, "is not a gene of the DNA"))
    if found:
        raise InvalidArgument.from_violations(found[:MAX_VIOLATIONS])
    return parts.genome()
