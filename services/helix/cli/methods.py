"""The methods `helix call` knows: every helix.v1 service, health and reflection.

`resolve_method` finds one from what a person types — `Service/Method` (the full or the
short service name), grpcurl's `Service.Method`, or a bare method name searched in every
service — and otherwise says what is close. `describe` prints a method's kind, scope,
request and response with the documentation of the .proto files, which it reads from
generated/helix.protoset (`helix.common.protoset`) since compiled modules carry none.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from google.protobuf import descriptor, descriptor_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from helix.common.config import ConfigError
from helix.common.protoset import comments, protoset_files
from helix.common.services import SERVICE_DESCRIPTORS
from helix.security.scopes import METHOD_SCOPES, is_open

LIST_HINT = "`helix call --list` lists every method"


def known_services() -> tuple[descriptor.ServiceDescriptor, ...]:
    """Every service a Helix server may answer: helix.v1, health and reflection."""
    return (
        *SERVICE_DESCRIPTORS,
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    )


def method_path(method: descriptor.MethodDescriptor) -> str:
    """`package.Service/Method`, the form grpcurl and buf curl take."""
    return f"{method.containing_service.full_name}/{method.name}"


def all_methods(
    services: Sequence[descriptor.ServiceDescriptor] | None = None,
) -> list[descriptor.MethodDescriptor]:
    """Every method of `services` (default: `known_services()`), by path."""
    found = [m for s in services or known_services() for m in s.methods]
    return sorted(found, key=method_path)


def _close(word: str, choices: Sequence[str]) -> list[str]:
    """Up to three of `choices` that look like `word`, closest first."""
    return difflib.get_close_matches(word, choices, n=3, cutoff=0.75)


def _did_you_mean(paths: Sequence[str]) -> str:
    if not paths:
        return ""
    listed = paths[0] if len(paths) == 1 else f"{', '.join(paths[:-1])} or {paths[-1]}"
    return f"; did you mean {listed}?"


def resolve_method(
    name: str, services: Sequence[descriptor.ServiceDescriptor] | None = None
) -> descriptor.MethodDescriptor:
    """The method `name` stands for; ConfigError naming close matches when there is none
    or several."""
    services = services or known_services()
    text = name.strip().strip("/")
    if "/" in text:
        service_name, _, method_name = text.rpartition("/")
    elif "." in text:  # grpcurl also takes package.Service.Method
        service_name, _, method_name = text.rpartition(".")
    else:
        return _resolve_bare(text, services)
    service = _resolve_service(service_name, services)
    method = service.methods_by_name.get(method_name)
    if method is None:
        names = [m.name for m in service.methods]
        close = [f"{service.full_name}/{m}" for m in _close(method_name, names)]
        raise ConfigError(
            f"{service.full_name} has no method {method_name!r} (it has {', '.join(names)})"
            f"{_did_you_mean(close)}; {LIST_HINT}"
        )
    return method


def _resolve_service(
    name: str, services: Sequence[descriptor.ServiceDescriptor]
) -> descriptor.ServiceDescriptor:
    for service in services:
        if name in (service.full_name, service.name):
            return service
    close = _close(name, [s.full_name for s in services]) or [
        s.full_name for s in services if s.name in _close(name, [s.name for s in services])
    ]
    raise ConfigError(f"unknown service {name!r}{_did_you_mean(close)}; {LIST_HINT}")


def _resolve_bare(
    name: str, services: Sequence[descriptor.ServiceDescriptor]
) -> descriptor.MethodDescriptor:
    methods = all_methods(services)
    if not name:
        raise ConfigError(f"give a method as Service/Method or a method name; {LIST_HINT}")
    matches = [m for m in methods if m.name == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        paths = ", ".join(method_path(m) for m in matches)
        raise ConfigError(f"{name!r} is a method of several services: {paths}; name one")
    close_names = _close(name, sorted({m.name for m in methods}))
    close = [method_path(m) for found in close_names for m in methods if m.name == found]
    raise ConfigError(f"unknown method {name!r}{_did_you_mean(close)}; {LIST_HINT}")


# --- describe ----------------------------------------------------------------------------------

_KINDS = {
    (False, False): "unary",
    (False, True): "server stream",
    (True, False): "client stream",
    (True, True): "bidi stream",
}


def access(path: str) -> str:
    """Who may call the method at `path` (`/Service/Method`), from the scope table."""
    if is_open(path):
        return "open"
    scope = METHOD_SCOPES.get(path)
    return f"scope {scope}" if scope else "denied to everyone: not in the scope table"


def _type_name(field: descriptor.FieldDescriptor) -> str:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key, value = message.fields_by_name["key"], message.fields_by_name["value"]
        return f"map<{_type_name(key)}, {_type_name(value)}>"
    if message is not None:
        base = message.full_name
    elif field.enum_type is not None:
        base = field.enum_type.full_name
    else:
        type_name = descriptor_pb2.FieldDescriptorProto.Type.Name(field.type)  # type: ignore[arg-type]
        base = type_name.removeprefix("TYPE_").lower()
    return f"repeated {base}" if field.is_repeated else base


def _indented(text: str, by: int) -> list[str]:
    return [(" " * by + line).rstrip() for line in text.splitlines()]


def _message_lines(what: str, message: descriptor.Descriptor, docs: Mapping[str, str]) -> list[str]:
    lines = [f"{what} {message.full_name}"]
    for field in message.fields:
        oneof = field.containing_oneof
        in_oneof = (
            f" (one of {oneof.name})" if oneof is not None and oneof.fields != [field] else ""
        )
        lines.append(f"  {field.name} {_type_name(field)}{in_oneof}")
        lines += _indented(docs.get(field.full_name, ""), 4)
    return lines


def method_docs() -> tuple[Mapping[str, str], str]:
    """The documentation of every symbol, and a note when there is none to show."""
    try:
        files = protoset_files()
    except (OSError, DecodeError) as exc:
        return {}, f"(no documentation: cannot read generated/helix.protoset: {exc})"
    if not files:
        return {}, "(no documentation: generated/helix.protoset is not installed with Helix)"
    return comments(files), ""


def describe(method: descriptor.MethodDescriptor) -> str:
    """The method for a person: path, kind and access; its documentation; its request and
    response messages, field by field, each with its documentation."""
    docs, note = method_docs()
    path = method_path(method)
    kind = _KINDS[(method.client_streaming, method.server_streaming)]
    lines = [f"{path} ({kind}, {access('/' + path)})"]
    lines += _indented(docs.get(method.full_name, ""), 2) + ([note] if note else [])
    lines += _message_lines("request", method.input_type, docs)
    lines += _message_lines("response", method.output_type, docs)
    return "\n".join(lines)
