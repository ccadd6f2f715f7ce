"""Verdicts on the wire: a batch's repeated Verdict field encoded at once.

Pure and synchronous. Building a Verdict message per candidate in Python costs about a
microsecond each, as much as scoring it; a builtin's batch is columnar (ids, scores, one
status and one duration for all), so `encode_passed` writes every row's bytes with NumPy
into one buffer, which the service parses into its response message in one call (in C).
Rows that need a message, metrics or another status are serialised one by one and
spliced in at their place (`encode_rows`).

The bytes equal what protobuf writes for the same messages, in field order; a score of
0.0 is written explicitly (proto3 parsers accept it, and its value reads back the same).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

import helix.v1.candidate_pb2 as candidate_pb2
from helix.genome.codec import varint
from helix.genome.layout import FloatArray

PASSED = candidate_pb2.VERDICT_STATUS_PASSED
_ID_CHARS = 32


def duration_bytes(seconds: float) -> bytes:
    """Field 6 (google.protobuf.Duration) of a Verdict, or nothing for a zero duration."""
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    body = (b"\x08" + varint(whole) if whole else b"") + (b"\x10" + varint(nanos) if nanos else b"")
    return b"\x32" + varint(len(body)) + body if body else b""


def encode_passed(
    field_tag: bytes, ids: Sequence[str], scores: FloatArray, duration: bytes, cached: bool
) -> bytes:
    """Repeated-field bytes (`field_tag` is the field's tag, e.g. b"\\x12") of PASSED
    verdicts: row i is (ids[i], scores[i]) with the same duration and cached flag."""
    n = len(ids)
    suffix = duration + (b"\x38\x01" if cached else b"")
    body_len = 2 + _ID_CHARS + 2 + 9 + len(suffix)
    head = field_tag + varint(body_len) + b"\x0a\x20"
    width = len(head) + _ID_CHARS + 2 + 9 + len(suffix)
    out = np.empty((n, width), dtype=np.uint8)
    at = 0
    out[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    at = len(head)
    joined = "".join(ids).encode("ascii")
    if len(joined) != n * _ID_CHARS:
        raise ValueError("every candidate id must be 32 characters")
    out[:, at : at + _ID_CHARS] = np.frombuffer(joined, dtype=np.uint8).reshape(n, _ID_CHARS)
    at += _ID_CHARS
    out[:, at : at + 3] = np.frombuffer(bytes((0x10, PASSED, 0x19)), dtype=np.uint8)
    at += 3
    out[:, at : at + 8] = np.ascontiguousarray(scores, dtype="<f8").view(np.uint8).reshape(n, 8)
    at += 8
    if suffix:
        out[:, at:] = np.frombuffer(suffix, dtype=np.uint8)
    return out.tobytes()


def encode_rows(
    field_tag: bytes,
    ids: Sequence[str],
    scores: FloatArray,
    special: Mapping[int, candidate_pb2.Verdict],
    duration: bytes,
    cached: bool,
) -> bytes:
    """As `encode_passed`, but row i is `special[i]` serialised where given."""
    if not special:
        return encode_passed(field_tag, ids, scores, duration, cached)
    parts: list[bytes] = []
    start = 0
    for row in sorted(special):
        if row > start:
            parts.append(
                encode_passed(field_tag, ids[start:row], scores[start:row], duration, cached)
            )
        blob = special[row].SerializeToString()
        parts.append(field_tag + varint(len(blob)) + blob)
        start = row + 1
    if start < len(ids):
        parts.append(encode_passed(field_tag, ids[start:], scores[start:], duration, cached))
    return b"".join(parts)


def encode_messages(field_tag: bytes, verdicts: Sequence[candidate_pb2.Verdict]) -> bytes:
    """Repeated-field bytes of whole Verdict messages."""
    parts = []
    for verdict in verdicts:
        blob = verdict.SerializeToString()
        parts.append(field_tag + varint(len(blob)) + blob)
    return b"".join(parts)
