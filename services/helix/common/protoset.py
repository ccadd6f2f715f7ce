"""generated/helix.protoset: the descriptor set `make generate` writes with protoc.

It holds every file a Helix server answers with — helix.v1, health, reflection and the
google.rpc error details — as protoc wrote them: with comments (the API's documentation)
and json names. The compiled `_pb2` modules carry neither, so reflection
(`helix.common.reflection`) and `helix call --describe` read this file when it is there.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

PROTOSET_NAME = "helix.protoset"

# Field numbers of the descriptor.proto messages, for SourceCodeInfo paths.
_FILE_MESSAGES, _FILE_ENUMS, _FILE_SERVICES = 4, 5, 6
_MESSAGE_FIELDS, _MESSAGE_NESTED, _MESSAGE_ENUMS = 2, 3, 4
_SERVICE_METHODS, _ENUM_VALUES = 2, 2


def find_protoset() -> Path | None:
    """Where the descriptor set is: next to the generated package (`helix/v1/`, where a
    wheel may ship it) or at the root of `generated/` (a source tree or an editable
    install, where `make generate` writes it); None when neither exists."""
    import helix.v1.common_pb2 as anchor  # generated/helix/v1/common_pb2.py

    package = Path(anchor.__file__).resolve().parent
    for candidate in (package / PROTOSET_NAME, package.parent.parent / PROTOSET_NAME):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def load_protoset(path: Path) -> tuple[descriptor_pb2.FileDescriptorProto, ...]:
    """The files of a descriptor set (read once per path). OSError if it cannot be read;
    google.protobuf.message.DecodeError if it is not a FileDescriptorSet."""
    found = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    return tuple(found.file)


def protoset_files() -> tuple[descriptor_pb2.FileDescriptorProto, ...]:
    """The files of the descriptor set `find_protoset` finds; empty when there is none."""
    path = find_protoset()
    return load_protoset(path) if path is not None else ()


Symbols = Iterator[tuple[str, tuple[int, ...]]]  # (full name, SourceCodeInfo path)


def _enum_symbols(
    e: descriptor_pb2.EnumDescriptorProto, name: str, path: tuple[int, ...]
) -> Symbols:
    yield name, path
    scope = name.rpartition(".")[0]  # enum values are named in their enum's scope
    for i, value in enumerate(e.value):
        yield f"{scope}.{value.name}", (*path, _ENUM_VALUES, i)


def _message_symbols(
    m: descriptor_pb2.DescriptorProto, name: str, path: tuple[int, ...]
) -> Symbols:
    yield name, path
    for i, field in enumerate(m.field):
        yield f"{name}.{field.name}", (*path, _MESSAGE_FIELDS, i)
    for i, nested in enumerate(m.nested_type):
        yield from _message_symbols(nested, f"{name}.{nested.name}", (*path, _MESSAGE_NESTED, i))
    for i, e in enumerate(m.enum_type):
        yield from _enum_symbols(e, f"{name}.{e.name}", (*path, _MESSAGE_ENUMS, i))


def _symbols(proto: descriptor_pb2.FileDescriptorProto) -> Symbols:
    """Every service, method, message, field, enum and enum value declared in `proto`."""
    prefix = f"{proto.package}." if proto.package else ""
    for i, m in enumerate(proto.message_type):
        yield from _message_symbols(m, prefix + m.name, (_FILE_MESSAGES, i))
    for i, e in enumerate(proto.enum_type):
        yield from _enum_symbols(e, prefix + e.name, (_FILE_ENUMS, i))
    for i, service in enumerate(proto.service):
        name = prefix + service.name
        yield name, (_FILE_SERVICES, i)
        for j, method in enumerate(service.method):
            yield f"{name}.{method.name}", (_FILE_SERVICES, i, _SERVICE_METHODS, j)


def comments(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> Mapping[str, str]:
    """The leading comment of every documented symbol of `files`, by full name
    (`helix.v1.RegistryService.ListAgents`, `helix.v1.ListAgentsRequest.page_size`), each
    line without its leading space."""
    found: dict[str, str] = {}
    for proto in files:
        by_path = {
            tuple(location.path): location.leading_comments
            for location in proto.source_code_info.location
            if location.leading_comments
        }
        for name, path in _symbols(proto):
            text = by_path.get(path)
            if text:
                found[name] = _dedent(text.splitlines())
    return found


def _dedent(lines: Sequence[str]) -> str:
    return "\n".join(line.removeprefix(" ") for line in lines).strip("\n")
