"""Server reflection (grpc.reflection.v1alpha) that serves protoc's descriptors.

grpcio-reflection answers from the process's descriptor pool, whose files were compiled
into the `_pb2` modules without comments or json names. `ProtosetReflection` answers
from the descriptor set `make generate` writes (`helix.common.protoset`) instead, so
grpcurl's `describe` shows each field's documentation, and tools reading descriptors
from reflection render the same lowerCamelCase JSON names as tools given the protoset.
Symbols the set lacks (a test's own service, say) are answered from the process's pool,
as before.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection_pb2

from helix.common.protoset import find_protoset, load_protoset

log = logging.getLogger("helix.server")

Lookup = Callable[[descriptor_pool.DescriptorPool], descriptor.FileDescriptor]


class ProtosetReflection:
    """The ServerReflection servicer: lists `service_names`; describes files from `files`
    first, then from the default descriptor pool."""

    def __init__(
        self,
        service_names: Iterable[str],
        files: Sequence[descriptor_pb2.FileDescriptorProto] = (),
    ) -> None:
        self._services = sorted(service_names)
        self._pool = descriptor_pool.DescriptorPool()
        self._serialized: dict[str, bytes] = {}
        for proto in files:
            self._pool.Add(proto)
            self._serialized[proto.name] = proto.SerializeToString()
        self._fallback = descriptor_pool.Default()

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterator[reflection_pb2.ServerReflectionRequest], context: Any
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for request in request_iterator:
            response = self.answer(request)
            response.original_request.CopyFrom(request)
            yield response

    def answer(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        """The response to one reflection request (without `original_request`)."""
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            services = [reflection_pb2.ServiceResponse(name=name) for name in self._services]
            return reflection_pb2.ServerReflectionResponse(
                list_services_response=reflection_pb2.ListServiceResponse(service=services)
            )
        if kind == "file_by_filename":
            return self._files(lambda pool: pool.FindFileByName(request.file_by_filename))
        if kind == "file_containing_symbol":
            symbol = request.file_containing_symbol
            return self._files(lambda pool: _symbol_file(pool, symbol))
        if kind == "file_containing_extension":
            wanted = request.file_containing_extension
            return self._files(
                lambda pool: _extension_file(pool, wanted.containing_type, wanted.extension_number)
            )
        if kind == "all_extension_numbers_of_type":
            return self._extension_numbers(request.all_extension_numbers_of_type)
        return _error(grpc.StatusCode.INVALID_ARGUMENT, "no request kind set")

    def _files(self, lookup: Lookup) -> reflection_pb2.ServerReflectionResponse:
        """The file `lookup` finds and every file it imports, transitively."""
        for pool in (self._pool, self._fallback):
            try:
                found = lookup(pool)
            except KeyError:
                continue
            return reflection_pb2.ServerReflectionResponse(
                file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                    file_descriptor_proto=[self._serialize(f) for f in _with_imports(found)]
                )
            )
        return _error(grpc.StatusCode.NOT_FOUND, "not found")

    def _serialize(self, file: descriptor.FileDescriptor) -> bytes:
        if file.pool is self._pool:
            return self._serialized[file.name]
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        return proto.SerializeToString()

    def _extension_numbers(self, type_name: str) -> reflection_pb2.ServerReflectionResponse:
        for pool in (self._pool, self._fallback):
            try:
                message = pool.FindMessageTypeByName(type_name)
            except KeyError:
                continue
            numbers = sorted(e.number for e in pool.FindAllExtensions(message))
            return reflection_pb2.ServerReflectionResponse(
                all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                    base_type_name=message.full_name, extension_number=numbers
                )
            )
        return _error(grpc.StatusCode.NOT_FOUND, "not found")


def _symbol_file(pool: descriptor_pool.DescriptorPool, symbol: str) -> descriptor.FileDescriptor:
    """The file defining `symbol`: a message, enum, service, field, value or extension (what
    the pool finds itself) or a method (`pkg.Service.Method`, which it does not: grpcurl
    `describe` asks for methods by name)."""
    try:
        return pool.FindFileContainingSymbol(symbol)
    except KeyError:
        service, _, method = symbol.rpartition(".")
        if not service or method not in pool.FindServiceByName(service).methods_by_name:
            raise
        return pool.FindServiceByName(service).file


def _extension_file(
    pool: descriptor_pool.DescriptorPool, type_name: str, number: int
) -> descriptor.FileDescriptor:
    extension = pool.FindExtensionByNumber(pool.FindMessageTypeByName(type_name), number)
    return pool.FindFileContainingSymbol(extension.full_name)


def _with_imports(file: descriptor.FileDescriptor) -> list[descriptor.FileDescriptor]:
    """`file` first, then the files it imports, transitively, each once."""
    found: dict[str, descriptor.FileDescriptor] = {}
    pending = [file]
    while pending:
        current = pending.pop()
        if current.name not in found:
            found[current.name] = current
            pending.extend(current.dependencies)
    return list(found.values())


def _error(code: grpc.StatusCode, message: str) -> reflection_pb2.ServerReflectionResponse:
    return reflection_pb2.ServerReflectionResponse(
        error_response=reflection_pb2.ErrorResponse(error_code=code.value[0], error_message=message)
    )


def reflection_servicer(service_names: Iterable[str]) -> ProtosetReflection:
    """Reflection for a server of `service_names`: from generated/helix.protoset when it
    is found and readable (comments and json names included), else from the descriptor
    pool alone (a wheel that does not ship the set)."""
    path = find_protoset()
    files: Sequence[descriptor_pb2.FileDescriptorProto] = ()
    if path is None:
        log.info("no %s beside the generated code: reflection serves no comments", "helix.protoset")
    else:
        try:
            files = load_protoset(path)
        except (OSError, DecodeError) as exc:
            log.warning("cannot read %s (%s): reflection serves no comments", path, exc)
    return ProtosetReflection(service_names, files)
