"""A minimal reflection client (what grpcurl and buf curl do first)."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


async def list_services(channel: grpc.aio.Channel) -> list[str]:
    """The service names the server lists through reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests(), timeout=10):
        return sorted(s.name for s in response.list_services_response.service)
    raise AssertionError("no reflection response")


async def file_for_symbol(channel: grpc.aio.Channel, symbol: str) -> list[bytes]:
    """Serialized FileDescriptorProtos the server returns for `symbol`."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)

    async for response in stub.ServerReflectionInfo(requests(), timeout=10):
        if response.HasField("error_response"):
            raise AssertionError(response.error_response.error_message)
        return list(response.file_descriptor_response.file_descriptor_proto)
    raise AssertionError("no reflection response")
