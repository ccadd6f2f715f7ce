"""How Helix's command line prints messages: one JSON convention for every command.

Every message is printed in the proto3 JSON mapping with its defaults: lowerCamelCase
field names (`nextPageToken`), enum values by name, 64-bit integers as strings, and
every field shown, zero values included. It is what `buf curl` and `grpcurl` print
(grpcurl with reflection too, now that reflection serves protoc's json names), so output
can be compared across tools. Input (`helix call -d`) takes either spelling.
"""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.message import Message


def message_json(message: Message, indent: int | None = None) -> str:
    """`message` as JSON in the convention above (one line unless `indent` is given)."""
    text: str = json_format.MessageToJson(
        message, indent=indent, always_print_fields_with_no_presence=True
    )
    return text
