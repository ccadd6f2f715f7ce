"""Genomes from the wire: checking that Genome messages fit a DNA, and decoding them.

Pure and synchronous (no grpc, no I/O). `decode_genomes` serialises a batch of
`helix.v1.Genome` messages (cheap, in C), finds every row's fields in one buffer
(`GenomeScan`) and reads all fields of all rows with NumPy; the checks then work on whole
columns, and every problem becomes one violation at a path such as `genomes[2].reals[3]`
(at most MAX_VIOLATIONS per batch). `decode_scan` does the same for genomes already lying
in a buffer (batches.py finds them in a whole message's bytes). The formats are those of
the Genome comment in candidate.proto; the encoding side is codec.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TypeVar

import numpy as np
import numpy.typing as npt

import helix.v1.candidate_pb2 as candidate_pb2
from helix.common import rules
from helix.common.errors import FieldViolation, InvalidArgument
from helix.common.validation import format_number, index, join
from helix.genome.codec import (
    BITS,
    CHOICES,
    INTEGERS,
    PERMUTATIONS,
    REALS,
    SEQUENCE_LENGTHS,
    SEQUENCES,
    U64Array,
)
from helix.genome.layout import (
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

_T = TypeVar("_T", bound=np.generic)

MAX_VIOLATIONS = 100
"""At most this many violations are reported for one batch or one named genome."""

PADDING = 16
"""Bytes a scanned buffer holds past its last row (varints are read ahead)."""

# Genome field names: field number f is _FIELDS[f - 1].
_FIELDS = ("reals", "integers", "choices", "bits", "permutations", "sequence_lengths", "sequences")


# --- reading the wire ---------------------------------------------------------------------


def _ranges(starts: IntArray, lengths: IntArray) -> IntArray:
    """The indices starts[i] .. starts[i] + lengths[i] - 1 of every i, concatenated."""
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def read_sizes(buf: ByteArray, pos: IntArray) -> tuple[IntArray, IntArray]:
    """The varint at each position (clamped to 2^40) and how many bytes it takes (at most
    10; the buffer must hold 10 bytes past each position)."""
    first = buf[pos]
    if not (first & 0x80).any():  # sizes below 128, the common case
        return first.astype(np.int64), np.ones(pos.shape, dtype=np.int64)
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


def gather(buf: ByteArray, starts: IntArray, width: int) -> ByteArray:
    """The `width` bytes at each start of a contiguous buffer, as an (n, width) array
    (possibly a view of the buffer): a strided view when the starts are evenly spaced
    (rows of one size one after another), else one fancy index."""
    n = len(starts)
    if n == 0 or width == 0:
        return np.zeros((n, width), dtype=np.uint8)
    step = int(starts[1] - starts[0]) if n > 1 else width
    if step >= width and (n <= 2 or (starts[2:] - starts[1:-1] == step).all()):
        rows: ByteArray = np.ndarray((n, width), np.uint8, buf, int(starts[0]), (step, 1))
    else:
        rows = buf[starts[:, None] + np.arange(width)]
    return rows


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` (clamped to 2^40) and the position after it: `read_sizes` for
    one position, in Python (`data` must hold 10 bytes past `pos`)."""
    value = shift = 0
    for end in range(pos, pos + 10):
        byte = data[end]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return min(value, 1 << 40), end + 1
        shift += 7
    return min(value, 1 << 40), pos + 10


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


# --- decoding -----------------------------------------------------------------------------


class _Report:
    """Violations found in a batch, ordered by row then field, at most MAX_VIOLATIONS."""

    def __init__(self, path_of: Callable[[int], str]) -> None:
        self._path_of = path_of
        self._found: list[tuple[int, int, FieldViolation]] = []

    def add(self, row: int, field: int, suffix: str, description: str, rule: str) -> None:
        """A violation of row `row` at `path_of(row).suffix`; `field` orders it in the row."""
        path = self._path_of(int(row))
        violation = FieldViolation(join(path, suffix) if suffix else path, description, rule)
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


class GenomeScan:
    """Where each genome's fields lie in one buffer holding all their encodings.

    Row i's encoding is ``buf[starts[i]:ends[i]]``; the buffer holds at least PADDING bytes
    after the last end (varints are read a few bytes ahead). Rows of one length whose tags
    and sizes match the first row's (fixed-size genes: reals, bits, permutations) are
    placed from the first row in one comparison; others are walked field by field, all
    rows at once.
    """

    def __init__(self, buf: ByteArray, starts: IntArray, ends: IntArray) -> None:
        n = len(starts)
        self.buf = buf
        self.start: IntArray = np.zeros((n, 8), dtype=np.int64)  # column = field number
        self.size: IntArray = np.zeros((n, 8), dtype=np.int64)
        # Serialisation writes known fields first, in field order: a row whose bytes are not
        # exactly such a run of fields 1..7 has unknown fields.
        self.foreign: BoolArray = np.zeros(n, dtype=np.bool_)
        if n and not self._place_alike(starts, ends):
            self._walk(starts, ends)

    @classmethod
    def of_genomes(cls, genomes: Sequence[candidate_pb2.Genome]) -> GenomeScan:
        """The scan of Genome messages, serialised one by one into one buffer."""
        blobs = [genome.SerializeToString(deterministic=True) for genome in genomes]
        sizes = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        ends = np.cumsum(sizes)
        buf = np.frombuffer(b"".join(blobs) + bytes(PADDING), dtype=np.uint8)
        return cls(buf, ends - sizes, ends)

    @classmethod
    def of_ranges(cls, buf: ByteArray, starts: IntArray, ends: IntArray) -> GenomeScan:
        """The scan of genome encodings lying at ``buf[starts[i]:ends[i]]`` (a message's
        serialisation holding them, say); a buffer without PADDING bytes after the last
        end is copied with them."""
        if len(starts) and len(buf) < int(ends.max()) + PADDING:
            buf = np.concatenate((buf, np.zeros(PADDING, dtype=np.uint8)))
        buf = np.ascontiguousarray(buf)
        return cls(buf, starts.astype(np.int64), ends.astype(np.int64))

    def _walk(self, starts: IntArray, ends: IntArray) -> None:
        pos = starts.copy()
        last = np.zeros(len(starts), dtype=np.int64)
        for _ in _FIELDS:
            active = pos < ends
            if not active.any():
                break
            tag = self.buf[pos]
            if active.all() and self._step_alike(int(tag[0]), tag, pos, ends, last):
                continue
            tag = tag.astype(np.int64)
            field = tag >> 3
            size, width = read_sizes(self.buf, pos + 1)
            body = pos + 1 + width
            ok = active & (tag & 7 == 2) & (field > last) & (field <= 7) & (body + size <= ends)
            self.foreign |= active & ~ok
            rows = np.flatnonzero(ok)
            self.start[rows, field[rows]] = body[rows]
            self.size[rows, field[rows]] = size[rows]
            last[rows] = field[rows]
            pos[:] = np.where(ok, body + size, ends)
        self.foreign |= pos < ends

    def _step_alike(
        self, first: int, tag: ByteArray, pos: IntArray, ends: IntArray, last: IntArray
    ) -> bool:
        """One step of the walk when every row is at a field with the first row's tag and
        that field fits (what rows that differ only in some sizes are at): the same as the
        general step in fewer operations; False (nothing done) otherwise."""
        field = first >> 3
        if first & 7 != 2 or not 0 < field <= 7 or not (tag == first).all():
            return False
        if not (last < field).all():
            return False
        size, width = read_sizes(self.buf, pos + 1)
        body = pos + 1 + width
        if not (body + size <= ends).all():
            return False
        self.start[:, field] = body
        self.size[:, field] = size
        last[:] = field
        pos[:] = body + size
        return True

    def _place_alike(self, starts: IntArray, ends: IntArray) -> bool:
        """Place every row's fields from the first row's when all rows have its length and
        its tag and size bytes at the same offsets (then the walk would find the same
        fields in each); False (nothing placed) otherwise."""
        length = int(ends[0] - starts[0])
        if not (ends - starts == length).all():
            return False
        first = self.buf[int(starts[0]) : int(starts[0]) + length + PADDING].tobytes()
        fields = _fields_of(first, length)
        if fields is None:
            return False
        heads = [np.arange(at, body) for _, at, body, _ in fields]
        offsets = np.concatenate(heads) if heads else np.zeros(0, dtype=np.int64)
        if len(starts) > 1 and offsets.size:
            got = self.buf[starts[1:, None] + offsets]
            if not (got == self.buf[starts[0] + offsets]).all():
                return False
        for field, _, body, size in fields:
            self.start[:, field] = starts + body
            self.size[:, field] = size
        return True

    def payload(self, field: int, rows: IntArray) -> ByteArray:
        """The given rows' bytes of one field, concatenated (possibly a read-only view of
        the buffer)."""
        sizes = self.size[rows, field]
        starts = self.start[rows, field]
        if len(rows) and sizes[0] == sizes[-1] and (sizes == sizes[0]).all():
            return gather(self.buf, starts, int(sizes[0])).reshape(-1)
        return self.buf[_ranges(starts, sizes)]

    def varints(self, field: int) -> tuple[U64Array, IntArray]:
        """All rows' values of a packed varint field, concatenated, and the count per row."""
        sizes = self.size[:, field]
        values, ends = _read_varints(self.payload(field, np.arange(len(sizes))))
        if ends is None:
            return values, sizes
        done = np.searchsorted(ends, np.cumsum(sizes))  # varints ending before each row's end
        return values, np.diff(done, prepend=0)


def _fields_of(encoding: bytes, end: int) -> list[tuple[int, int, int, int]] | None:
    """The fields of the genome encoded in ``encoding[:end]`` as (field, tag offset, body
    offset, size), when it is a run of length-delimited fields 1..7 in increasing order
    (None otherwise): what `GenomeScan._walk` finds in a row, for one row, in Python."""
    fields: list[tuple[int, int, int, int]] = []
    pos, last = 0, 0
    while pos < end:
        tag = encoding[pos]
        size, body = read_varint(encoding, pos + 1)
        if tag & 7 != 2 or not last < tag >> 3 <= 7 or body + size > end:
            return None
        fields.append((tag >> 3, pos, body, size))
        last, pos = tag >> 3, body + size
    return fields


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
        REALS: layout.n_reals,
        INTEGERS: layout.n_integers,
        CHOICES: layout.n_choices,
        BITS: (layout.n_bits + 7) // 8,
        PERMUTATIONS: sum(layout.permutation_sizes),
        SEQUENCE_LENGTHS: len(layout.sequences),
    }


def _check_symbol_counts(
    lengths: IntArray, length_counts: IntArray, sizes: IntArray, report: _Report
) -> BoolArray:
    """The rows whose `sequences` size is not the sum of their sequence lengths."""
    sums = np.concatenate((np.zeros(1, np.int64), np.cumsum(lengths)))
    stops = np.cumsum(length_counts)
    total = sums[stops] - sums[stops - length_counts]
    wrong: BoolArray = total != sizes
    for row in _offenders(wrong):
        text = f"must hold sum(sequence_lengths) = {total[row]} bytes, got {sizes[row]}"
        report.add(row, SEQUENCES, "sequences", text, rules.GENOME_SHAPE)
    return wrong


def _check_structure(layout: Layout, scan: GenomeScan, report: _Report) -> _Structure:
    """Unknown fields, value counts and sequence lengths: whatever decides a row's shape."""
    for row in _offenders(scan.foreign):
        report.add(
            row, 0, "", "has fields that helix.v1.Genome does not define", rules.UNKNOWN_FIELD
        )
    present = scan.size.max(axis=0, initial=0) > 0  # by field number: any row has it
    counts = {REALS: scan.size[:, REALS] // 8, BITS: scan.size[:, BITS]}
    values: dict[int, U64Array] = {}
    for field in (INTEGERS, CHOICES, PERMUTATIONS, SEQUENCE_LENGTHS):
        if present[field]:
            values[field], counts[field] = scan.varints(field)
        else:  # (most DNAs use two or three of the seven fields)
            values[field], counts[field] = np.zeros(0, np.uint64), scan.size[:, field]
    bad = scan.foreign.copy()
    for field, want in _expected_counts(layout).items():
        if want == 0 and not present[field]:
            continue
        got = counts[field]
        wrong = got != want
        unit = "bytes" if field == BITS else "values"
        for row in _offenders(wrong):
            text = f"must hold {want} {unit} for this DNA, got {got[row]}"
            report.add(row, field, _FIELDS[field - 1], text, rules.GENOME_SHAPE)
        bad |= wrong
    lengths, length_counts = values[SEQUENCE_LENGTHS].astype(np.int64), counts[SEQUENCE_LENGTHS]
    if present[SEQUENCE_LENGTHS] or present[SEQUENCES]:
        bad |= _check_symbol_counts(lengths, length_counts, scan.size[:, SEQUENCES], report)
    if layout.sequences:
        rows = np.flatnonzero(~bad)
        table = _take(lengths, length_counts, rows).reshape(len(rows), len(layout.sequences))
        low = [s.min_length for s in layout.sequences]
        high = [s.max_length for s in layout.sequences]
        outside = (table < low) | (table > high)
        genes = layout.genes_of("sequence")
        for local, j, more in _first_cells(outside):
            text = f"must be within {low[j]}..{high[j]} (gene {genes[j].name}){more}"
            path = index("sequence_lengths", j)
            report.add(rows[local], SEQUENCE_LENGTHS, path, text, rules.RANGE)
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
    field = REALS if kind == "real" else INTEGERS
    for local, j, more in _first_cells(~((values >= low) & (values <= high))):
        value = float(values[local, j])
        bound = f"must be within {format_number(low[j])}..{format_number(high[j])}"
        finite = math.isfinite(value)
        text = f"{bound if finite else 'must be finite'} (gene {_gene_at(layout, kind, j).name})"
        rule = rules.RANGE if finite else rules.FINITE
        report.add(rows[local], field, index(_FIELDS[field - 1], j), text + more, rule)


def first_repeat(values: list[int]) -> tuple[int, int]:
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
            path = index("permutations", at + j)
            report.add(rows[local], PERMUTATIONS, path, text, rules.NOT_A_PERMUTATION)
        seen = np.zeros(block.shape, dtype=np.bool_)
        seen[np.arange(len(block))[:, None], np.where(outside, 0, block)] = True
        for local in _offenders(~seen.all(axis=1) & ~outside.any(axis=1)):
            j, value = first_repeat(block[local].tolist())
            path = index("permutations", at + j)
            text = f"repeats {value} {what}"
            report.add(rows[local], PERMUTATIONS, path, text, rules.NOT_A_PERMUTATION)
        at += size


def _check_choices(layout: Layout, choices: IntArray, rows: IntArray, report: _Report) -> None:
    """Option indices below their genes' option counts."""
    for local, j, more in _first_cells(choices >= layout.choice_counts):
        text = f"must be an option index below {layout.choice_counts[j]}"
        text += f" (gene {_gene_at(layout, 'choice', j).name}){more}"
        report.add(rows[local], CHOICES, index("choices", j), text, rules.RANGE)


def _check_padding(layout: Layout, packed: ByteArray, rows: IntArray, report: _Report) -> None:
    """The unused high bits of the last bits byte all 0."""
    if layout.n_bits % 8:
        for local in _offenders(packed[:, -1] >> (layout.n_bits % 8) != 0):
            text = f"must have the unused high bits of its last byte 0 ({layout.n_bits} bits)"
            report.add(rows[local], BITS, "bits", text, rules.PADDING)


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
        report.add(rows[local], SEQUENCES, index("sequences", j), text, rules.SYMBOL)


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
    return decode_scan(layout, GenomeScan.of_genomes(genomes), path_of)


def decode_scan(layout: Layout, scan: GenomeScan, path_of: Callable[[int], str]) -> Population:
    """`decode_genomes` of the genomes a scan found (the rows of a message's bytes, say)."""
    report = _Report(path_of)
    structure = _check_structure(layout, scan, report)
    rows, values = structure.rows, structure.values
    m = len(rows)
    reals = scan.payload(REALS, rows).view("<f8").reshape(m, layout.n_reals) + 0.0
    if layout.n_reals:  # (each check skipped here would find nothing: no columns)
        _check_bounds(layout, "real", reals, rows, report)
    zigzag = values[INTEGERS]
    integers = (zigzag >> 1).view(np.int64) ^ -(zigzag & 1).view(np.int64)
    integers = integers.reshape(m, layout.n_integers)
    if layout.n_integers:
        _check_bounds(layout, "integer", integers, rows, report)
    choices = values[CHOICES].astype(np.int64).reshape(m, layout.n_choices)
    if layout.n_choices:
        _check_choices(layout, choices, rows, report)
    packed = scan.payload(BITS, rows).reshape(m, (layout.n_bits + 7) // 8)
    _check_padding(layout, packed, rows, report)
    at = np.cumsum((0, *layout.permutation_sizes)).tolist()
    elements = values[PERMUTATIONS].astype(np.int64).reshape(m, at[-1])
    _check_permutations(layout, elements, rows, report)
    lengths = values[SEQUENCE_LENGTHS].astype(np.int64).reshape(m, len(layout.sequences))
    symbols = scan.payload(SEQUENCES, rows)
    gene_of = np.zeros(0, dtype=np.int64)
    if layout.sequences:
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
