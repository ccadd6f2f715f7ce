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
    """The id of each serialised Candidate: read from its first bytes when it starts with
    a 32-character ASCII id (how every generator serialises one: field 1 first), else
    parsed (DecodeError if it is not a Candidate)."""
    head = _ID_HEAD
    return [
        record[2:34].decode("ascii")
        if record[:2] == head and len(record) >= 34 and record[2:34].isascii()
        else candidate_pb2.Candidate.FromString(record).id
        for record in records
    ]


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
