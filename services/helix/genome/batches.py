"""Candidates read from a message's wire bytes: ids, checks and genomes, all rows at once.

Pure and synchronous (no grpc, no I/O). A server that receives a batch of Candidate
messages (VerifyBatch.candidates, VerifyRequest.candidates) could read each one through
its Python wrapper (`c.id`, `c.genome`: one object per field per candidate), then
serialise each genome again to decode it. `read_candidates` reads the batch from the
serialisation of the whole message instead (one `SerializeToString()`, in C):

1. it finds the repeated field's records: with NumPy when they all have the length of
   the first one (one comparison of every record's tag and size bytes), else from their
   sizes, which protobuf's parser reads (in C) with a message type that has only that
   field, as `repeated bytes`;
2. it finds each record's fields (1 id, 2 genome, 3 generation, 4 parent_ids), all rows
   at once, the way `genome_checks.GenomeScan` finds a genome's;
3. it decodes the genomes where they lie (`GenomeScan.of_ranges`, `decode_scan`).

It relies on what protobuf's serialisation of a parsed message guarantees: known fields
in field-number order, a repeated field's records together, unknown fields last. Rows
whose bytes hold more than the known fields (unknown fields, or more parent ids than
`_PARENT_ROUNDS`) are parsed by protobuf, one by one, which only problem batches pay.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

import helix.v1.candidate_pb2 as candidate_pb2
from helix.common import rules
from helix.common.errors import FieldViolation, InvalidArgument
from helix.common.validation import Violations, check_no_unknown_fields, index, join
from helix.genome.codec import CANDIDATE_ID, GENERATION, GENOME, ID_LENGTH, PARENT_IDS, varint
from helix.genome.genome_checks import (
    PADDING,
    GenomeScan,
    decode_scan,
    gather,
    read_sizes,
    read_varint,
)
from helix.genome.layout import BoolArray, ByteArray, IntArray, Layout, Population
from helix.genome.validation import check_candidate_id

_VARINT, _I64, _LENGTH_DELIMITED, _I32 = 0, 1, 2, 5
_ID_TAG = CANDIDATE_ID << 3 | _LENGTH_DELIMITED
_GENOME_TAG = GENOME << 3 | _LENGTH_DELIMITED
_GENERATION_TAG = GENERATION << 3 | _VARINT
_PARENT_TAG = PARENT_IDS << 3 | _LENGTH_DELIMITED
_PARENT_ROUNDS = 4  # parent ids read with NumPy per row (two is the most a candidate has)


def read_candidates(
    data: bytes, field: int, layout: Layout, path: str
) -> tuple[list[str], Population]:
    """The ids (empty where none) and the decoded genomes of the candidates in `data`.

    `data` is the serialisation (`SerializeToString()`) of a parsed message whose field
    number `field` is a `repeated helix.v1.Candidate` (VerifyBatch: 2, VerifyRequest: 3);
    its other fields are skipped. `path` is that field's path ("batch.candidates").

    Raises InvalidArgument with what a server reading the candidates as messages reports,
    in its order: first the unknown fields of each candidate and its genome, as
    `check_no_unknown_fields` of the message names them (`path[i].9`,
    `path[i].genome.9`), then per candidate an id that is neither empty nor 32 lowercase
    hex characters (`path[i].id`: checked here only when the id does not have 32
    characters or the genome is missing; a 32-character id's characters are for the
    caller to compare with the genome's content hash) and a missing genome
    (`path[i].genome`). Without such problems, it raises what `decode_genomes` raises for
    the genomes at `path[i].genome`.

    The caller checks the rest: the number of candidates first (none gives an empty list
    and population; more than 10,000 are read like any others), and the message's own
    fields. To report the message's problems and the candidates' in one error, in the
    order of a check of the whole message, use the steps: `CandidateRecords.find`, then
    `unknown_fields` and `candidate_violations` (the first checks), `ids` and `decode`.
    """
    records = CandidateRecords.find(data, field)
    found = records.violations(path)
    if found:
        raise InvalidArgument.from_violations(found)
    return records.ids(), records.decode(layout, path)


@dataclass(frozen=True, slots=True)
class CandidateRecords:
    """Where the fields of each Candidate record lie in a message's bytes."""

    padded: bytes  # the message and PADDING zero bytes
    buf: ByteArray  # the same, as NumPy
    starts: IntArray  # each record's bytes: padded[starts[i]:ends[i]]
    ends: IntArray
    id_start: IntArray
    id_size: IntArray  # 0: no id
    id_text: str | None  # every id, when all are ID_LENGTH ASCII characters, concatenated
    has_genome: BoolArray
    leftover: BoolArray  # rows with bytes beyond the fields read (unknown fields, say)
    genomes: GenomeScan  # missing genomes read as empty

    @classmethod
    def find(cls, data: bytes, field: int) -> CandidateRecords:
        """The records of field number `field` of the message serialised in `data`."""
        padded = data + bytes(PADDING)
        buf = np.frombuffer(padded, dtype=np.uint8)
        starts, ends = field_records(padded, len(data), buf, field)
        fields = _fields_alike(padded, buf, starts, ends) or _fields_of_rows(buf, starts, ends)
        id_start, id_size = fields.starts[_ID_TAG], fields.sizes[_ID_TAG]
        genome_start, genome_size = fields.starts[_GENOME_TAG], fields.sizes[_GENOME_TAG]
        id_text = None
        if len(starts) and (id_size == ID_LENGTH).all():
            raw = gather(buf, id_start, ID_LENGTH)
            if (raw < 0x80).all():
                id_text = raw.tobytes().decode("ascii")
        return cls(
            padded,
            buf,
            starts,
            ends,
            id_start,
            id_size,
            id_text,
            fields.present[_GENOME_TAG],
            fields.leftover,
            GenomeScan.of_ranges(buf, genome_start, genome_start + genome_size),
        )

    def __len__(self) -> int:
        return len(self.starts)

    def violations(self, path: str) -> Violations:
        """Unknown fields in the candidates and their genomes, then ids of the wrong form
        and missing genomes: `read_candidates`' first checks, in its order."""
        return self.unknown_fields(path) + self.candidate_violations(path)

    def unknown_fields(self, path: str) -> Violations:
        """The unknown fields of each candidate and of its genome, as
        `check_no_unknown_fields` of a message holding the candidates at `path` names
        them (only the rows with bytes the scans did not read are parsed to tell)."""
        found: Violations = []
        for i in np.flatnonzero(self.leftover | self.genomes.foreign).tolist():
            record = self.padded[int(self.starts[i]) : int(self.ends[i])]
            candidate = candidate_pb2.Candidate.FromString(record)
            found += check_no_unknown_fields(candidate, index(path, i))
        return found

    def candidate_violations(self, path: str) -> Violations:
        """Per candidate, an id of the wrong form and a missing genome, as the oracle
        service checked candidates sent as messages."""
        found: Violations = []
        # As for messages, an id is checked here unless it has ID_LENGTH characters and
        # the genome is set (its characters are then compared with the genome's hash).
        suspect = ~self.has_genome
        if self.id_text is None:  # some id is not ID_LENGTH bytes of ASCII: look at those
            ascii_sized = self.id_size == ID_LENGTH
            rows = np.flatnonzero(ascii_sized)
            heads = gather(self.buf, self.id_start[rows], ID_LENGTH)
            ascii_sized[rows] = (heads < 0x80).all(axis=1)
            suspect |= ~ascii_sized & (self.id_size != 0)
        for i in np.flatnonzero(suspect).tolist():
            given, at = self._id(i), index(path, i)
            if self.has_genome[i] and len(given) == ID_LENGTH:
                continue
            found += check_candidate_id(given, join(at, "id"))
            if not self.has_genome[i]:
                found.append(FieldViolation(join(at, "genome"), "must be set", rules.REQUIRED))
        return found

    def _id(self, i: int) -> str:
        start = int(self.id_start[i])
        return self.padded[start : start + int(self.id_size[i])].decode()

    def ids(self) -> list[str]:
        """Each record's id, "" where it has none."""
        text = self.id_text
        if text is None:
            return [self._id(i) for i in range(len(self))]
        return [text[k : k + ID_LENGTH] for k in range(0, len(text), ID_LENGTH)]

    def decode(self, layout: Layout, path: str) -> Population:
        """The genomes, decoded and checked as `decode_genomes` does (every record must
        have one: see `violations`)."""
        return decode_scan(layout, self.genomes, lambda i: f"{path}[{i}].genome")


@dataclass(slots=True)
class _Fields:
    """Per row, by tag (id and genome): where the field's body starts, its size (0 where
    absent) and whether it is there; and the rows with bytes beyond the fields read."""

    starts: dict[int, IntArray]
    sizes: dict[int, IntArray]
    present: dict[int, BoolArray]
    leftover: BoolArray


def _fields_of_rows(buf: ByteArray, starts: IntArray, ends: IntArray) -> _Fields:
    """The known fields of every record, walked in field order, all rows at once."""
    fields = _Fields({}, {}, {}, np.zeros(0, dtype=np.bool_))
    pos = starts.copy()
    for tag in (_ID_TAG, _GENOME_TAG):
        there = (pos < ends) & (buf[pos] == tag)
        size, width = read_sizes(buf, pos + 1)
        body = pos + 1 + width
        there &= body + size <= ends
        fields.starts[tag] = np.where(there, body, 0)
        fields.sizes[tag] = np.where(there, size, 0)
        fields.present[tag] = there
        np.copyto(pos, body + size, where=there)
    there = (pos < ends) & (buf[pos] == _GENERATION_TAG)
    if there.any():
        np.copyto(pos, pos + 1 + read_sizes(buf, pos + 1)[1], where=there)
    for _ in range(_PARENT_ROUNDS):
        there = (pos < ends) & (buf[pos] == _PARENT_TAG)
        if not there.any():
            break
        size, width = read_sizes(buf, pos + 1)
        after = pos + 1 + width + size
        np.copyto(pos, after, where=there & (after <= ends))
    fields.leftover = pos != ends
    return fields


def _fields_alike(
    padded: bytes, buf: ByteArray, starts: IntArray, ends: IntArray
) -> _Fields | None:
    """`_fields_of_rows` from the first record alone, when every record has its length
    and its tag and size bytes at the same offsets (the walk would then find the same
    fields in each: the common case of ids, genomes of fixed-size genes and the same
    generation); None otherwise."""
    n = len(starts)
    if not n:
        return None
    length = int(ends[0] - starts[0])
    if not (ends - starts == length).all():
        return None
    first = _fields_of(padded, int(starts[0]), int(ends[0]))
    if first is None:
        return None
    heads = [np.arange(at, body) for _, at, body, _ in first]
    offsets = np.concatenate(heads) if heads else np.zeros(0, dtype=np.int64)
    rows = gather(buf, starts, length)
    if n > 1 and offsets.size and not (rows[1:, offsets] == rows[0, offsets]).all():
        return None
    fields = _Fields({}, {}, {}, np.zeros(n, dtype=np.bool_))
    for tag in (_ID_TAG, _GENOME_TAG):
        found = [(body, size) for t, _, body, size in first if t == tag]
        body, size = found[0] if found else (0, 0)
        fields.starts[tag] = starts + body if found else np.zeros(n, dtype=np.int64)
        fields.sizes[tag] = np.full(n, size, dtype=np.int64)
        fields.present[tag] = np.full(n, bool(found))
    return fields


def _fields_of(padded: bytes, start: int, end: int) -> list[tuple[int, int, int, int]] | None:
    """The known fields of the record ``padded[start:end]`` as (tag, tag offset, body
    offset, size), offsets from `start` (a generation's varint counted in its head), when
    they fill it, as `_fields_of_rows` reads them; None otherwise."""
    found: list[tuple[int, int, int, int]] = []
    pos = start
    for tag in (_ID_TAG, _GENOME_TAG, _GENERATION_TAG, *[_PARENT_TAG] * _PARENT_ROUNDS):
        if pos < end and padded[pos] == tag:
            size, body = read_varint(padded, pos + 1)
            if tag == _GENERATION_TAG:
                size = 0
            found.append((tag, pos - start, body - start, size))
            pos = body + size
    return found if pos == end else None


def field_records(padded: bytes, end: int, buf: ByteArray, field: int) -> tuple[IntArray, IntArray]:
    """The start and end of each record of length-delimited field `field` (its tag and
    size excluded) in the message ``padded[:end]``: with NumPy when the records all have
    the first one's length (every record's tag and size bytes compared with the first's),
    else from their sizes as protobuf reads them."""
    first = _first_record(padded, end, field)
    if first is None:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    tag = varint(field << 3 | _LENGTH_DELIMITED)
    size, body = read_varint(padded, first + len(tag))
    stride = body - first + size
    head = buf[first:body]
    at = first + stride * np.arange((end - first) // stride, dtype=np.int64)
    alike = (gather(buf, at, len(head)) == head).all(axis=1)
    run = len(at) if alike.all() else int(alike.argmin())
    after = first + run * stride
    if not (after < end and padded.startswith(tag, after)):  # the run holds every record
        starts = at[:run] + len(head)
        return starts, starts + size
    sizes = _record_sizes(padded[:end], field)
    heads = len(tag) + np.ones(len(sizes), dtype=np.int64)
    for k in range(1, 10):  # a size's varint takes k + 1 bytes from 2^(7k) on
        heads += sizes >= 1 << (7 * k)
    ends = first + np.cumsum(heads + sizes)
    starts = ends - sizes
    tags = gather(buf, starts - heads, len(tag))
    if ends[-1] > end or not (tags == np.frombuffer(tag, dtype=np.uint8)).all():
        raise ValueError("not a serialised message: its records of the field are not together")
    return starts, ends


@functools.lru_cache(maxsize=16)
def _records_message(field: int) -> type[Message]:
    """A message type whose only field is number `field`, as `repeated bytes`: parsing a
    message's bytes with it gives that field's records (the rest is kept as unknown)."""
    name = f"Records{field}"
    file = descriptor_pb2.FileDescriptorProto(
        name=f"helix_genome_records_{field}.proto", package="helix.genome", syntax="proto3"
    )
    file.message_type.add(name=name).field.add(
        name="records",
        number=field,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"helix.genome.{name}"))


def _record_sizes(data: bytes, field: int) -> IntArray:
    """The size of each record of length-delimited field `field` of the message in
    `data`, read by protobuf's parser (in C: about 50 µs for 1,000 candidates, where a
    Python loop over the sizes takes 150 to 500)."""
    try:
        parsed: Any = _records_message(field).FromString(data)  # a type made at run time
    except DecodeError as error:
        raise ValueError(f"not a serialised message: {error}") from error
    records = parsed.records
    return np.fromiter(map(len, records), dtype=np.int64, count=len(records))


def _first_record(padded: bytes, end: int, field: int) -> int | None:
    """Where the first record of field `field` starts (its tag) in ``padded[:end]``, or
    None.

    Fields come in field-number order and unknown fields last, so the walk stops at a
    field numbered above `field`, at one numbered below the previous one or of another
    wire type than a previous one of its number, and at a group (proto3 has none): past
    those there is no record of `field`. It takes a step per field before `field`.
    """
    pos, last, last_wire = 0, 0, -1
    while pos < end:
        key, body = read_varint(padded, pos)
        number, wire = key >> 3, key & 7
        if number == field and wire == _LENGTH_DELIMITED:
            return pos
        if number > field or number < last or (number == last and wire != last_wire):
            return None
        last, last_wire = number, wire
        if wire == _VARINT:
            pos = read_varint(padded, body)[1]
        elif wire == _LENGTH_DELIMITED:
            size, start = read_varint(padded, body)
            pos = start + size
        elif wire in (_I64, _I32):
            pos = body + (8 if wire == _I64 else 4)
        else:
            return None
    return None
