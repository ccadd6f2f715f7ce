"""The parents of a Generate request read from its wire bytes, all rows at once.

Reading 1,000 parents through their Python wrappers (`parent.candidate.id`,
`parent.verdict.score`, ...) builds an object per field per parent, and decoding their
genomes serialises each one again. `ParentRecords.of` serialises the request once (in C)
and finds every parent's fields with NumPy, the way `helix.genome.batches` reads a batch
of candidates: the ScoredCandidate records of field 3, in each its candidate (1) and
verdict (2), in the candidate its id (1), genome (2), generation (3) and parent ids (4),
in the verdict its candidate_id (1), status (2) and score (3).

It relies on what protobuf's serialisation of a message guarantees: known fields in
field-number order, a repeated field's records together, unknown fields last. A row it
cannot read completely (unknown fields in the parent or its candidate, more than two
parent ids, a record cut short) is not `regular`: callers read that parent as a message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from google.protobuf import message

import helix.v1.generator_pb2 as generator_pb2
from helix.genome.batches import field_records
from helix.genome.codec import ID_LENGTH
from helix.genome.genome_checks import PADDING, GenomeScan, gather, read_sizes
from helix.genome.layout import BoolArray, ByteArray, FloatArray, IntArray
from helix.genome.validation import VERDICT_STATUSES

PARENTS_FIELD = generator_pb2.GenerateRequest.DESCRIPTOR.fields_by_name["parents"].number

_VARINT, _I64, _LENGTH_DELIMITED = 0, 1, 2
_CANDIDATE_TAG = 1 << 3 | _LENGTH_DELIMITED  # ScoredCandidate.candidate
_VERDICT_TAG = 2 << 3 | _LENGTH_DELIMITED  # ScoredCandidate.verdict
_ID_TAG = 1 << 3 | _LENGTH_DELIMITED  # Candidate.id
_GENOME_TAG = 2 << 3 | _LENGTH_DELIMITED  # Candidate.genome
_GENERATION_TAG = 3 << 3 | _VARINT  # Candidate.generation
_PARENT_TAG = 4 << 3 | _LENGTH_DELIMITED  # Candidate.parent_ids
_MAX_PARENT_IDS = 2  # a candidate with more is not regular (and not clean)
_VERDICT_ID_TAG = 1 << 3 | _LENGTH_DELIMITED  # Verdict.candidate_id
_STATUS_TAG = 2 << 3 | _VARINT  # Verdict.status
_SCORE_TAG = 3 << 3 | _I64  # Verdict.score

# Byte by byte: 0 for what may appear in a well-formed candidate id (CANDIDATE_ID_PATTERN:
# ASCII lowercase hex digits), 1 otherwise (a table for bytes.translate).
_NOT_HEX = bytes(0 if chr(b) in "0123456789abcdef" else 1 for b in range(256))
# Statuses a one-byte varint may hold that are VerdictStatus values.
_STATUS_OK = np.zeros(128, dtype=np.bool_)
_STATUS_OK[[s for s in VERDICT_STATUSES if 0 <= s < 128]] = True


def read_parents(request: generator_pb2.GenerateRequest) -> ParentRecords | None:
    """`ParentRecords.of(request)`, or None should its bytes not read as expected (not
    seen: a serialisation is what the scan reads; callers then read the messages)."""
    try:
        return ParentRecords.of(request)
    except (ValueError, message.Error):
        return None


@dataclass(slots=True)
class _Field:
    """One length-delimited field per row: whether it is there, where its body lies."""

    there: BoolArray
    start: IntArray
    end: IntArray


def _field(buf: ByteArray, pos: IntArray, ends: IntArray, tag: int) -> _Field:
    """The field with `tag` at each row's `pos` (rows whose body would pass `ends` or
    whose pos is at `ends` have none); `pos` moves past the fields found."""
    there = (pos < ends) & (buf[pos] == tag)
    size, width = read_sizes(buf, pos + 1)
    body = pos + 1 + width
    there &= body + size <= ends
    field = _Field(there, np.where(there, body, 0), np.where(there, body + size, 0))
    np.copyto(pos, field.end, where=there)
    return field


@dataclass(frozen=True, slots=True)
class ParentRecords:
    """Where the fields of each parent lie in the request's serialisation."""

    padded: bytes  # the request's serialisation and PADDING zero bytes
    buf: ByteArray  # the same, as NumPy
    regular: BoolArray  # rows read completely (the others: read the message)
    clean: BoolArray  # regular rows that pass every per-parent check of validation.py
    has_candidate: BoolArray
    own_id: _Field  # candidate.id
    genome: _Field  # candidate.genome
    has_verdict: BoolArray
    claimed_id: _Field  # verdict.candidate_id
    statuses: IntArray  # verdict.status (0 where absent or not read)
    scores: FloatArray  # verdict.score (0.0 where absent)

    @classmethod
    def of(cls, request: generator_pb2.GenerateRequest) -> ParentRecords:
        """The parents of `request` (ValueError should its bytes not read as expected)."""
        data = request.SerializeToString()
        padded = data + bytes(PADDING)
        buf = np.frombuffer(padded, dtype=np.uint8)
        starts, ends = field_records(padded, len(data), buf, PARENTS_FIELD)
        if len(starts) != len(request.parents):
            raise ValueError("the parents' records are not where they were expected")
        pos = starts.copy()
        candidate = _field(buf, pos, ends, _CANDIDATE_TAG)
        verdict = _field(buf, pos, ends, _VERDICT_TAG)
        regular = pos == ends  # nothing else in the ScoredCandidate

        pos = candidate.start.copy()  # rows without a candidate: start = end = 0
        end = candidate.end
        own_id = _field(buf, pos, end, _ID_TAG)
        genome = _field(buf, pos, end, _GENOME_TAG)
        there = (pos < end) & (buf[pos] == _GENERATION_TAG)
        if there.any():
            np.copyto(pos, pos + 1 + read_sizes(buf, pos + 1)[1], where=there)
        lineage = [_field(buf, pos, end, _PARENT_TAG) for _ in range(_MAX_PARENT_IDS)]
        regular &= pos == end

        pos = verdict.start.copy()
        end = verdict.end
        claimed_id = _field(buf, pos, end, _VERDICT_ID_TAG)
        there = (pos < end) & (buf[pos] == _STATUS_TAG)
        status, width = read_sizes(buf, pos + 1)
        status_ok = ~there | ((width == 1) & (status < 128))
        status_ok[status_ok] = _STATUS_OK[np.where(there, status, 0)[status_ok]]
        statuses = np.where(there & (width == 1), status, 0)
        np.copyto(pos, pos + 1 + width, where=there)
        there = (pos < end) & (buf[pos] == _SCORE_TAG)
        score_ok = ~there | (pos + 9 <= end)
        rows = np.flatnonzero(there & score_ok)
        scores = np.zeros(len(starts), dtype=np.float64)
        scores[rows] = gather(buf, pos[rows] + 1, 8).copy().view("<f8").reshape(-1)
        # (whatever follows in the verdict, metrics to unknown fields, is not checked here)

        well_formed, same = _id_checks(buf, [own_id, *lineage, claimed_id])
        lineage_ok = np.logical_and.reduce(
            [~field.there | ok for field, ok in zip(lineage, well_formed[1:-1], strict=True)]
        )
        own_size = own_id.end - own_id.start
        own_ok = (own_size == 0) | well_formed[0]
        claimed_size = claimed_id.end - claimed_id.start
        claimed_ok = (claimed_size == 0) | np.where(own_size > 0, same, well_formed[-1])
        verdict_ok = claimed_ok & status_ok & score_ok & np.isfinite(scores)
        clean = regular & candidate.there & genome.there & own_ok & lineage_ok
        clean &= ~verdict.there | verdict_ok
        return cls(
            padded,
            buf,
            regular,
            clean,
            candidate.there,
            own_id,
            genome,
            verdict.there,
            claimed_id,
            statuses,
            scores,
        )

    def __len__(self) -> int:
        return len(self.regular)

    def own_ids(self) -> list[str]:
        """Each parent's candidate.id ("" where it has none)."""
        return self._texts(self.own_id)

    def claimed_ids(self) -> list[str]:
        """Each parent's verdict.candidate_id ("" where it has none)."""
        return self._texts(self.claimed_id)

    def genomes(self) -> GenomeScan:
        """The genomes' encodings where they lie (missing genomes read as empty)."""
        return GenomeScan.of_ranges(self.buf, self.genome.start, self.genome.end)

    def _texts(self, field: _Field) -> list[str]:
        n = len(self)
        if n and len(self.buf) >= ID_LENGTH and (field.end - field.start == ID_LENGTH).all():
            windows = np.lib.stride_tricks.sliding_window_view(self.buf, ID_LENGTH)
            try:  # every one ID_LENGTH ASCII characters (ids, usually): one decode
                text = windows[field.start].tobytes().decode("ascii")
            except UnicodeDecodeError:
                pass
            else:
                return [text[k : k + ID_LENGTH] for k in range(0, n * ID_LENGTH, ID_LENGTH)]
        padded = self.padded
        starts, ends = field.start.tolist(), field.end.tolist()
        return [padded[a:b].decode() for a, b in zip(starts, ends, strict=True)]


def _id_checks(buf: ByteArray, fields: list[_Field]) -> tuple[BoolArray, BoolArray]:
    """Per field (rows: axis 1), where it holds ID_LENGTH lowercase hex digits; and per
    row, where the first and last fields hold the same ID_LENGTH bytes. The ids of every
    field are copied at once (rows of a window view: no index per byte) and checked with
    one bytes.translate."""
    n = len(fields[0].there)
    sized = np.stack([f.there & (f.end - f.start == ID_LENGTH) for f in fields])
    at = np.flatnonzero(sized)  # (field, row) pairs, flattened
    if not at.size:  # (nor a buffer that a window of ID_LENGTH bytes would fit in)
        return sized, sized[0]
    windows = np.lib.stride_tricks.sliding_window_view(buf, ID_LENGTH)
    raw = windows[np.concatenate([f.start for f in fields])[at]]  # a copy, C-contiguous
    not_hex = np.frombuffer(raw.tobytes().translate(_NOT_HEX), dtype="<u8")
    well_formed = sized.copy()
    well_formed.flat[at] = ~not_hex.reshape(-1, ID_LENGTH // 8).any(axis=1)
    words = np.zeros((len(fields) * n, ID_LENGTH // 8), dtype="<u8")
    words[at] = raw.view("<u8")
    by_field = words.reshape(len(fields), n, ID_LENGTH // 8)
    same = sized[0] & sized[-1] & (by_field[0] == by_field[-1]).all(axis=1)
    return well_formed, same
