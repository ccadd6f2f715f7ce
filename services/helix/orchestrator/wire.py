"""Candidates and verdicts as bytes: the orchestrator's side of the wire, without a Python
object per candidate.

The orchestrator never looks inside a candidate: it forwards the generator's candidates
to oracle agents, pairs them with their verdicts, ranks by score and id, stores the
population and sends it back as the next generation's parents. Reading every candidate
into a protobuf wrapper, copying it into a VerifyBatch, a population message and the next
GenerateRequest cost about 30 µs per candidate, most of a generation's time
(docs/decisions.md, "Speed of the run path").

So its calls use *raw* message types: each is a copy of a helix.v1 message whose
message-typed fields are `bytes` (repeated ones `repeated bytes`) and whose enum fields are
`int32`, with the same names and numbers. The wire form of a message field and of a bytes
field is the same (a length-delimited record), and so is an enum's and an int32's, so a
raw message parses what the real one serialises and serialises what the real one parses:
the agents on the other side see the contract's messages. Protobuf's parser (C) hands
each candidate over as one `bytes` object; the few fields the orchestrator reads (an id,
a verdict's status and score) are read once per candidate.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
from helix.genome import codec

_FieldProto = descriptor_pb2.FieldDescriptorProto
_POOL = descriptor_pool.DescriptorPool()
_PACKAGE = "helix.orchestrator.raw"


def raw_type(real: descriptor.Descriptor) -> type[Message]:
    """The raw copy of message type `real` (module docstring)."""
    proto = descriptor_pb2.DescriptorProto()
    real.CopyToProto(proto)
    proto.ClearField("nested_type")  # map entries: their fields become bytes records
    proto.ClearField("enum_type")
    for field in proto.field:
        if field.type in (_FieldProto.TYPE_MESSAGE, _FieldProto.TYPE_GROUP):
            field.type = _FieldProto.TYPE_BYTES
            field.ClearField("type_name")
        elif field.type == _FieldProto.TYPE_ENUM:
            field.type = _FieldProto.TYPE_INT32
            field.ClearField("type_name")
    file = descriptor_pb2.FileDescriptorProto(
        name=f"helix/orchestrator/raw/{real.full_name}.proto", package=_PACKAGE, syntax="proto3"
    )
    file.message_type.add().CopyFrom(proto)
    _POOL.Add(file)
    found = _POOL.FindMessageTypeByName(f"{_PACKAGE}.{proto.name}")
    return message_factory.GetMessageClass(found)


# The runtime types have no stubs: typed as Any where used.
RawGenerateRequest: Any = raw_type(generator_pb2.GenerateRequest.DESCRIPTOR)
RawGenerateResponse: Any = raw_type(generator_pb2.GenerateResponse.DESCRIPTOR)
RawVerifyStreamRequest: Any = raw_type(oracle_pb2.VerifyStreamRequest.DESCRIPTOR)
RawVerifyBatch: Any = raw_type(oracle_pb2.VerifyBatch.DESCRIPTOR)
RawVerifyStreamResponse: Any = raw_type(oracle_pb2.VerifyStreamResponse.DESCRIPTOR)
RawVerdictBatch: Any = raw_type(oracle_pb2.VerdictBatch.DESCRIPTOR)
RawPopulation: Any = raw_type(orchestrator_pb2.ListRunCandidatesResponse.DESCRIPTOR)

ID_LENGTH = 32
_ID_HEAD = bytes([1 << 3 | 2, ID_LENGTH])  # Candidate.id (field 1) of 32 characters
_CANDIDATE_TAG = b"\x0a"  # ScoredCandidate.candidate: field 1
_VERDICT_TAG = b"\x12"  # ScoredCandidate.verdict: field 2


# Record sizes repeat: their varints are cached.
varint = functools.lru_cache(maxsize=4096)(codec.varint)


def serialize(message: Message | bytes) -> bytes:
    """A call's request serializer that also takes bytes already serialised."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def candidate_ids(records: list[bytes]) -> list[str]:
    """The id of each serialised Candidate, parsed (DecodeError if one is not a
    Candidate): a parse checks the whole record, which a read of its first bytes would
    not, for about 0.4 µs a candidate."""
    parse = candidate_pb2.Candidate.FromString
    return [parse(record).id for record in records]


# Verdict fields as the oracle agents write a plain verdict: id (1), status (2), score (3),
# then at most a duration (6) and `cached` (7); anything else is parsed.
_STATUS_TAG, _SCORE_TAG, _DURATION_TAG, _CACHED_TAG = 0x10, 0x19, 0x32, 0x38
_PAD = 64


def read_verdicts(raws: list[bytes]) -> tuple[list[str], list[int], list[float], list[bool]]:
    """The id, status, score and `cached` of each serialised Verdict, read from the bytes
    of all rows at once where a row is a plain verdict (the fields above, in field order,
    a 32-hex-digit id, a status of one byte, a duration of under 128 bytes); other rows
    are parsed (DecodeError if one is not a Verdict)."""
    n = len(raws)
    if not n:
        return [], [], [], []
    sizes = np.fromiter(map(len, raws), dtype=np.int64, count=n)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    buf = np.frombuffer(b"".join(raws) + bytes(_PAD), dtype=np.uint8)
    ok = sizes >= 2 + ID_LENGTH + 2
    at = np.where(ok, starts, 0)
    ok &= (buf[at] == _ID_HEAD[0]) & (buf[at + 1] == _ID_HEAD[1])
    text = _rows(buf, at + 2, ID_LENGTH)
    ok &= (((text >= 0x30) & (text <= 0x39)) | ((text >= 0x61) & (text <= 0x66))).all(axis=1)
    at = at + 2 + ID_LENGTH
    ok &= (buf[at] == _STATUS_TAG) & (buf[at + 1] < 0x80)
    statuses = buf[at + 1].astype(np.int64)
    at = at + 2
    scored = (at + 9 <= ends) & (buf[at] == _SCORE_TAG)
    scores = np.where(scored, _rows(buf, at + 1, 8).copy().view("<f8")[:, 0], 0.0)
    at = at + 9 * scored
    after = at + 2 + buf[at + 1].astype(np.int64)  # past a duration of under 128 bytes
    timed = (after <= ends) & (buf[at] == _DURATION_TAG) & (buf[at + 1] < 0x80)
    at = np.where(timed, after, at)
    cached = (at + 2 == ends) & (buf[at] == _CACHED_TAG) & (buf[at + 1] == 1)
    ok &= (at == ends) | cached
    ids = text.tobytes().decode("latin-1")
    id_list = [ids[k : k + ID_LENGTH] for k in range(0, n * ID_LENGTH, ID_LENGTH)]
    status_list, score_list, cached_list = statuses.tolist(), scores.tolist(), cached.tolist()
    if not ok.all():
        for i in np.flatnonzero(~ok).tolist():
            verdict = candidate_pb2.Verdict.FromString(raws[i])
            id_list[i], status_list[i] = verdict.candidate_id, verdict.status
            score_list[i], cached_list[i] = verdict.score, verdict.cached
    return id_list, status_list, score_list, cached_list


def _rows(buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], width: int) -> Any:
    """The `width` bytes at each start (the buffer padded past its end), as rows."""
    return buf[starts[:, None] + np.arange(width)]


def scored_records(candidates: list[bytes], verdicts: list[bytes]) -> list[bytes]:
    """ScoredCandidate records (serialised) from serialised candidates and verdicts."""
    v = varint
    c_tag, v_tag = _CANDIDATE_TAG, _VERDICT_TAG
    return [
        b"".join((c_tag, v(len(c)), c, v_tag, v(len(d)), d))
        for c, d in zip(candidates, verdicts, strict=True)
    ]


def population_bytes(scored: list[bytes]) -> bytes:
    """A population as stored: a ListRunCandidatesResponse holding the ScoredCandidates."""
    return bytes(RawPopulation(candidates=scored).SerializeToString())
