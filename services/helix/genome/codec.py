"""Genomes on the wire: canonical encodings, candidate ids and Candidate messages.

Pure and synchronous (no grpc, no I/O). Every function takes a `Layout` and works on a
`Population` (see layout.py) or on a batch of `helix.v1.Genome` messages; the formats
are those of the Genome comment in candidate.proto:

- `encode_genomes` builds each row's canonical encoding with NumPy (one buffer for the
  whole batch, sliced per row); `candidate_ids` hashes encodings into candidate ids.
- `to_candidates` / `assemble_candidates` build `Candidate` messages by parsing bytes
  assembled around those encodings (`encode_candidates`), the fastest way to fill
  messages from Python.
- `encode_children` builds a bred population's Candidate messages in bulk (one NumPy
  matrix, hashing the only per-row work): what Generate streams.
- `varint` and `wire_tag` let a service frame serialised candidates in its own response
  message (generator.codec does for GenerateResponse).

Encoding assumes the population holds valid genomes of the layout (what the operators
produce). Checking genomes and decoding them into a `Population` is genome_checks.py;
the named JSON form is named.py.
"""

from __future__ import annotations

import hashlib
from binascii import hexlify
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor
from google.protobuf.unknown_fields import UnknownFieldSet

import helix.v1.candidate_pb2 as candidate_pb2
from helix.genome.layout import BoolArray, ByteArray, IntArray, Layout, Population

U64Array = npt.NDArray[np.uint64]

# Genome field numbers, in wire order; every field is length-delimited (wire type 2).
REALS, INTEGERS, CHOICES, BITS, PERMUTATIONS, SEQUENCE_LENGTHS, SEQUENCES = range(1, 8)
# Candidate field numbers (id and parent_ids are strings, genome a message, generation a
# uint32), checked against the descriptor at import below.
CANDIDATE_ID, GENOME, GENERATION, PARENT_IDS = range(1, 5)
ID_LENGTH = 32  # hex digits of a candidate id
_NEGATIVE_ZERO = np.array(-0.0, dtype="<f8").tobytes()

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


def _join(pieces: Sequence[_Piece]) -> _Piece:
    """Each row's pieces side by side: one (n, width) matrix and which bytes are present."""
    matrix = np.concatenate([data for data, _ in pieces], axis=1)
    if all(mask is None for _, mask in pieces):
        return matrix, None
    mask = np.concatenate(
        [np.ones(data.shape, np.bool_) if m is None else m for data, m in pieces], axis=1
    )
    return matrix, mask


def _split(joined: _Piece) -> list[bytes]:
    """Each row's present bytes: one bytes object per row."""
    matrix, mask = joined
    n, width = matrix.shape
    if n == 0:
        return []
    if mask is None:
        whole = matrix.tobytes()
        return [whole[i : i + width] for i in range(0, n * width, width)]
    whole = matrix[mask].tobytes()
    ends = np.cumsum(np.count_nonzero(mask, axis=1)).tolist()
    return [whole[a:b] for a, b in pairwise([0, *ends])]


def _rows(pieces: Sequence[_Piece], n: int) -> list[bytes]:
    """Each row's pieces, concatenated: one bytes object per row."""
    return _split(_join(pieces)) if n else []


# --- encoding and ids ---------------------------------------------------------------------


def encode_genomes(layout: Layout, pop: Population) -> list[bytes]:
    """The canonical encoding of each row's Genome (see candidate.proto), row for row.

    Byte-identical to `Genome(...).SerializeToString(deterministic=True)` of the row with
    -0.0 replaced by 0.0. `pop` must hold valid genomes of `layout`.
    """
    return _rows(_genome_pieces(layout, pop), len(pop))


def _genome_pieces(layout: Layout, pop: Population) -> list[_Piece]:
    """The fields of each row's canonical Genome encoding, in wire order."""
    pieces: list[_Piece] = []
    if layout.n_reals:
        reals = np.ascontiguousarray(pop.reals + 0.0, dtype="<f8")  # -0.0 + 0.0 is 0.0
        pieces += _field(REALS, (reals.view(np.uint8), None))
    if layout.n_integers:
        values = pop.integers
        pieces += _field(INTEGERS, _varints(((values << 1) ^ (values >> 63)).view(np.uint64)))
    if layout.n_choices:
        pieces += _field(CHOICES, _varints(pop.choices.astype(np.uint64)))
    if layout.n_bits:
        pieces += _field(BITS, (np.packbits(pop.bits, axis=1, bitorder="little"), None))
    if pop.permutations:
        elements = np.concatenate(pop.permutations, axis=1).astype(np.uint64)
        pieces += _field(PERMUTATIONS, _varints(elements))
    if pop.sequences:
        lengths = np.stack([block.lengths for block in pop.sequences], axis=1)
        pieces += _field(SEQUENCE_LENGTHS, _varints(lengths.astype(np.uint64)))
        symbols = np.concatenate([block.symbols for block in pop.sequences], axis=1)
        present = np.concatenate(
            [np.arange(b.symbols.shape[1]) < b.lengths[:, None] for b in pop.sequences], axis=1
        )
        pieces += _field(SEQUENCES, (symbols, present))
    if not pieces:  # a layout has genes, but keep the matrices well-formed regardless
        pieces.append((np.zeros((len(pop), 0), dtype=np.uint8), None))
    return pieces


def candidate_ids(encodings: Iterable[bytes]) -> list[str]:
    """The candidate id of each canonical encoding: 32 hex digits of its SHA-256."""
    return split_ids(candidate_id_text(encodings))


def candidate_id_text(encodings: Iterable[bytes]) -> str:
    """The candidate ids of the encodings, concatenated (``"".join(candidate_ids(...))``):
    the digests joined and turned into hex digits at once, not one `hexdigest` each."""
    sha256 = hashlib.sha256
    return _id_text(b"".join([sha256(encoding).digest() for encoding in encodings]))


def _id_text(digests: bytes) -> str:
    """The ids of SHA-256 digests (32 bytes each, concatenated): their first ID_LENGTH hex
    digits each, concatenated."""
    rows = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 32)
    return rows[:, : ID_LENGTH // 2].tobytes().hex()


def split_ids(text: str) -> list[str]:
    """Concatenated ids of ID_LENGTH characters with no NUL among them (candidate ids,
    `candidate_id_text`), as a list: one NumPy view, not a slice each."""
    if not text:
        return []
    ids: list[str] = np.array(text).reshape(1).view(f"U{ID_LENGTH}").tolist()
    return ids


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
    by one (`assemble_candidates`), a servicer may frame them as a response's repeated
    message field (`generator.codec.encode_generate_response`) and parse the whole
    response once, which is faster still.
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


def encode_children(
    layout: Layout,
    pop: Population,
    *,
    generation: int,
    lineage: IntArray | None,
    pool: Sequence[str],
) -> list[bytes]:
    """Serialised Candidate messages of a population's rows, in bulk: each row's id,
    genome, `generation`, and as parent ids ``pool[j]`` for each j >= 0 of its `lineage`
    row, in column order (None: no parents).

    Equal to ``encode_candidates(encodings, candidate_ids(encodings), ...)`` of
    ``encode_genomes(layout, pop)`` with those parent ids, but the messages are assembled
    in one NumPy matrix rather than row by row in Python, which leaves hashing as the only
    per-row work: what keeps a generation of a hundred children cheap. The matrix needs
    parent ids of ID_LENGTH ASCII characters (candidate ids); others take the row by row
    path.
    """
    n = len(pop)
    if n == 0:
        return []
    genome = _join(_genome_pieces(layout, pop))
    encodings = _split(genome)
    sha256 = hashlib.sha256
    digests = b"".join([sha256(encoding).digest() for encoding in encodings])
    ids = np.frombuffer(hexlify(digests), dtype=np.uint8).reshape(n, 64)[:, :ID_LENGTH]
    parents = _parent_ids(lineage, pool, n)
    if parents is None:  # ids of another shape: the general path
        assert lineage is not None
        return encode_candidates(
            encodings,
            [row.tobytes().decode() for row in ids],
            generation=generation,
            parent_ids=[[pool[j] for j in row if j >= 0] for row in lineage.tolist()],
        )
    parent_ids, counts = parents
    text = 2 + ID_LENGTH  # a string field of ID_LENGTH characters: tag, size, text
    tail = parent_ids.shape[1] * text
    generation_field = bytes([GENERATION << 3]) + varint(generation) if generation else b""
    data, mask = genome
    if mask is not None:  # genomes of several lengths: assembled with a mask
        sizes = np.count_nonzero(mask, axis=1).astype(np.uint64)
        head: list[_Piece] = [
            (_text_fields(CANDIDATE_ID, ids), None),
            (np.full((n, 1), GENOME << 3 | 2, dtype=np.uint8), None),
            _varints(sizes[:, None]),
            genome,
            (np.tile(np.frombuffer(generation_field, dtype=np.uint8), (n, 1)), None),
            (_text_fields(PARENT_IDS, parent_ids), np.arange(tail) < counts[:, None] * text),
        ]
        return _split(_join(head))
    # One width for every genome: each record is a prefix of its row of one matrix, a
    # template of the constant bytes (tags, sizes, generation) with the rest filled in.
    id_field = bytes([CANDIDATE_ID << 3 | 2, ID_LENGTH])
    parent_field = bytes([PARENT_IDS << 3 | 2, ID_LENGTH])
    genome_head = bytes([GENOME << 3 | 2]) + varint(data.shape[1])
    template = b"".join(
        [
            id_field,
            bytes(ID_LENGTH),
            genome_head,
            bytes(data.shape[1]),
            generation_field,
            (parent_field + bytes(ID_LENGTH)) * parent_ids.shape[1],
        ]
    )
    width = len(template)
    records = np.empty((n, width), dtype=np.uint8)
    records[:] = np.frombuffer(template, dtype=np.uint8)
    records[:, 2:text] = ids
    at = text + len(genome_head)
    records[:, at : at + data.shape[1]] = data
    at += data.shape[1] + len(generation_field)
    for column in range(parent_ids.shape[1]):
        records[:, at + 2 : at + text] = parent_ids[:, column]
        at += text
    whole = records.tobytes()
    starts = range(0, n * width, width)
    ends = (np.arange(width, (n + 1) * width, width) - (tail - counts * text)).tolist()
    return [whole[a:b] for a, b in zip(starts, ends, strict=True)]


def _text_fields(field: int, text: ByteArray) -> ByteArray:
    """String fields of ID_LENGTH characters: (n, ID_LENGTH) rows of text, or (n, k,
    ID_LENGTH) for k fields per row, as (n, k * (2 + ID_LENGTH)) bytes (tag, size, text)."""
    n = text.shape[0]
    blocks = text.reshape(n, -1, ID_LENGTH)
    out = np.empty((n, blocks.shape[1], 2 + ID_LENGTH), dtype=np.uint8)
    out[:, :, 0] = field << 3 | 2
    out[:, :, 1] = ID_LENGTH
    out[:, :, 2:] = blocks
    return out.reshape(n, -1)


def _parent_ids(
    lineage: IntArray | None, pool: Sequence[str], n: int
) -> tuple[ByteArray, IntArray] | None:
    """Each row's parent ids as (n, k, ID_LENGTH) characters, those of a row first (in
    lineage column order), and how many each row has; None if one is not ID_LENGTH ASCII
    characters."""
    if lineage is None or not lineage.shape[1]:
        return np.zeros((n, 0, ID_LENGTH), dtype=np.uint8), np.zeros(n, dtype=np.int64)
    present = lineage >= 0
    counts = present.sum(axis=1)
    k = int(counts.max())
    if lineage.shape[1] > 1 and (present[:, 1:] > present[:, :-1]).any():
        order = np.argsort(~present, axis=1, kind="stable")  # each row's parents first
        lineage = np.take_along_axis(lineage, order, axis=1)
    # Rows with fewer parents read pool[-1] in the rest (masked out by `counts`).
    ids = [pool[j] for j in np.maximum(lineage[:, :k], -1).ravel().tolist()]
    raw = "".join(ids).encode()
    if len(raw) != ID_LENGTH * len(ids) or set(map(len, ids)) != {ID_LENGTH}:
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(n, k, ID_LENGTH), counts


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


# --- messages framed around encoded parts ------------------------------------------------

LENGTH_DELIMITED, VARINT = 2, 0


def wire_tag(message: descriptor.Descriptor, name: str, kind: int, wire_type: int) -> bytes:
    """The tag of `message`'s field `name`, from the descriptor, for encoding a message by
    hand around parts already serialised; refuses (at import, where it is called) a field
    whose type is not the one the hand encoding assumes."""
    field = message.fields_by_name[name]
    if field.type != kind:
        raise TypeError(f"{message.full_name}.{name} changed type: update its hand encoding")
    return varint(field.number << 3 | wire_type)


def _check_candidate_fields() -> None:
    """The hand encodings above assume Candidate's field numbers and types; refuse (at
    import) a candidate.proto that changed them."""
    message, field = candidate_pb2.Candidate.DESCRIPTOR, descriptor.FieldDescriptor
    expected = (
        ("id", CANDIDATE_ID, field.TYPE_STRING, LENGTH_DELIMITED),
        ("genome", GENOME, field.TYPE_MESSAGE, LENGTH_DELIMITED),
        ("generation", GENERATION, field.TYPE_UINT32, VARINT),
        ("parent_ids", PARENT_IDS, field.TYPE_STRING, LENGTH_DELIMITED),
    )
    for name, number, kind, wire_type in expected:
        if wire_tag(message, name, kind, wire_type) != varint(number << 3 | wire_type):
            raise TypeError(f"{message.full_name}.{name} changed number: update its hand encoding")


_check_candidate_fields()
