"""Hypothesis strategies for protobuf messages, driven by their descriptors.

Random ints over each type's whole range, floats with NaN and infinities, unicode and huge
strings, repeated fields and maps, nested messages to a bounded depth, unknown enum values.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

CANDIDATE_ID = "00e8b319e29f65b5b4dd2afee149c8ac"

FD = descriptor.FieldDescriptor
_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
_HUGE = "a" * ((1 << 20) + 1)
_WIDE = "é" * (1 << 19)
_INTERESTING = [
    "",
    "a",
    "*",
    "agents/a",
    "dnas/rastrigin-10d",
    "oracles/sphere",
    "runs/r-1",
    "localhost:50051",
    "[::1]:1",
    "team=a,!b,c!=d",
    "0" * 32,
    CANDIDATE_ID,
    "ACGT",
    "🧬\u200b\u0000\n",
    "x" * 300,
    _HUGE,
    _WIDE,
]
STRINGS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(_INTERESTING),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(1, 3000)),
)
DOUBLES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, -0.0, 0.5, 2.0**53]),
)
ENUMS = st.one_of(st.integers(-3, 12), st.sampled_from([2**31 - 1, -(2**31)]))
MAX_DEPTH = 3


def _scalars(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1]))
    if field.type == FD.TYPE_ENUM:
        return ENUMS
    if field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return DOUBLES
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_STRING:
        return STRINGS
    return st.binary(max_size=64)


@st.composite
def messages(draw: st.DrawFn, desc: descriptor.Descriptor, depth: int = 0) -> Message:
    """A message of type `desc` with random field values, nested up to MAX_DEPTH deep."""
    message = message_factory.GetMessageClass(desc)()
    chosen = {o.name: draw(st.sampled_from([None, *o.fields])) for o in desc.oneofs}
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen[oneof.name] is not field:
            continue
        if oneof is None and not draw(st.booleans()):
            continue
        is_message = field.type == FD.TYPE_MESSAGE
        sub: Any = field.message_type  # set for every message-typed field
        if is_message and sub.GetOptions().map_entry:
            entry = sub.fields_by_name
            values = draw(
                st.dictionaries(_scalars(entry["key"]), _scalars(entry["value"]), max_size=70)
            )
            getattr(message, field.name).update(values)
        elif is_message and depth >= MAX_DEPTH:
            continue
        elif is_message and field.is_repeated:
            for item in draw(st.lists(messages(sub, depth + 1), max_size=6)):
                getattr(message, field.name).add().CopyFrom(item)
        elif is_message:
            getattr(message, field.name).CopyFrom(draw(messages(sub, depth + 1)))
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalars(field), max_size=50)))
        else:
            setattr(message, field.name, draw(_scalars(field)))
    return message
