"""GenerateResponse on the wire, assembled around candidates already serialised.

Breeding builds each child's Candidate as bytes (`genome.codec.encode_candidates`); a
response is framed around them here and parsed once, which costs a fraction of building a
message per candidate. The tags come from the descriptor (`genome.codec.wire_tag`), and
tests/test_generator_codec.py proves the result equal to protobuf's own serialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

from google.protobuf import descriptor

import helix.v1.generator_pb2 as generator_pb2
from helix.genome.codec import LENGTH_DELIMITED, VARINT, varint, wire_tag

_FIELD = descriptor.FieldDescriptor
_MAX_UINT32 = (1 << 32) - 1
_RESPONSE = generator_pb2.GenerateResponse.DESCRIPTOR
_CANDIDATES_TAG = wire_tag(_RESPONSE, "candidates", _FIELD.TYPE_MESSAGE, LENGTH_DELIMITED)
_GENERATION_TAG = wire_tag(_RESPONSE, "generation", _FIELD.TYPE_UINT32, VARINT)
_REMAINING_TAG = wire_tag(_RESPONSE, "remaining", _FIELD.TYPE_UINT32, VARINT)
_CHUNK_SIZE_TAG = wire_tag(_RESPONSE, "chunk_size", _FIELD.TYPE_UINT32, VARINT)


def encode_generate_response(
    candidates: Sequence[bytes], generation: int, remaining: int, chunk_size: int = 0
) -> bytes:
    """A GenerateResponse serialised from its candidates' serialisations, `generation`,
    `remaining` and `chunk_size` (each within uint32).

    Equal to the message's deterministic serialisation when each candidate's bytes are its
    own (as `encode_candidates` makes them); the tags come from the descriptor, so a
    renumbered field cannot silently produce another message.
    """
    if not all(0 <= v <= _MAX_UINT32 for v in (generation, remaining, chunk_size)):
        raise ValueError("generation, remaining and chunk_size must be uint32 values")
    # Candidates of a generation mostly share a few lengths: one prefix per length, and
    # the parts interleaved without a Python-level loop.
    sizes = list(map(len, candidates))
    heads = {size: _CANDIDATES_TAG + varint(size) for size in set(sizes)}
    parts = list(chain.from_iterable(zip(map(heads.__getitem__, sizes), candidates, strict=True)))
    if generation:
        parts.append(_GENERATION_TAG + varint(generation))
    if remaining:
        parts.append(_REMAINING_TAG + varint(remaining))
    if chunk_size:
        parts.append(_CHUNK_SIZE_TAG + varint(chunk_size))
    return b"".join(parts)
