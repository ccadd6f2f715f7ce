"""A small real gRPC service for exercising the shared runtime (all four call types).

Requests and responses are `google.protobuf.StringValue`. It is the workload on the far
side of the code under test (interceptors, error table, drain), served by a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2

from helix.common import errors, validation
from helix.common.server import ServiceBinding

SERVICE = "helix.test.EchoService"
String = wrappers_pb2.StringValue


def check_echo_request(request: String) -> list[errors.FieldViolation]:
    """The echo request's rules, with the same primitives the real services use."""
    return [
        *validation.check_no_unknown_fields(request),
        *validation.check_string(request.value, "value", required=True, max_len=1024),
    ]


class EchoServicer:
    """Echo answers; `Fail` raises the error its request names; `Sleep` waits.

    With `validate`, `Echo` validates its request like a real servicer does.
    """

    def __init__(self, validate: bool = False) -> None:
        self.validate = validate
        self.calls = 0
        self.sleeping = 0
        self.started = asyncio.Event()
        self.sleep_starts: asyncio.Queue[None] = asyncio.Queue()
        self.fail_first = 0

    async def Echo(self, request: String, context: Any) -> String:
        self.calls += 1
        if self.validate:
            violations = check_echo_request(request)
            if violations:
                raise errors.InvalidArgument.from_violations(violations)
        if self.fail_first > 0:
            self.fail_first -= 1
            raise errors.Unavailable("try again", retry_after=0.01)
        return String(value=request.value)

    async def Sleep(self, request: String, context: Any) -> String:
        self.sleeping += 1
        self.started.set()
        self.sleep_starts.put_nowait(None)
        try:
            await asyncio.sleep(float(request.value))
        finally:
            self.sleeping -= 1
        return String(value="slept")

    async def Fail(self, request: String, context: Any) -> String:
        kind = request.value
        if kind == "invalid":
            raise errors.InvalidArgument.from_violations(
                [
                    errors.FieldViolation("agent.name", "must not be empty", "required"),
                    errors.FieldViolation("agent.ttl", "must be within 5s..1h", "range"),
                ]
            )
        if kind == "exhausted":
            raise errors.ResourceExhausted(
                "rate limit exceeded", retry_after=1.5, quota_subject="principal:alice"
            )
        if kind == "not_found":
            raise errors.NotFound("agents/x not found", metadata={"name": "agents/x"})
        if kind == "abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "aborted directly")
        if kind == "odd_metadata":
            raise errors.NotFound("agents/x not found", metadata={"revision": 7})  # type: ignore[dict-item]
        if kind == "nan_retry":
            raise errors.Unavailable("try later", retry_after=float("nan"))
        if kind == "many_violations":
            raise errors.InvalidArgument.from_violations(
                errors.FieldViolation(
                    f"candidates[{i}].id", "must be 32 hex characters " * 8, "pattern"
                )
                for i in range(2000)
            )
        if kind == "returns_dict":
            return {"value": "not a message"}  # type: ignore[return-value]
        raise RuntimeError("secret-internal-detail")

    async def Count(self, request: String, context: Any) -> AsyncIterator[String]:
        for i in range(int(request.value)):
            yield String(value=str(i))

    async def CountThenFail(self, request: String, context: Any) -> AsyncIterator[String]:
        yield String(value="0")
        raise errors.OutOfRange("revision 3 is compacted", metadata={"compact_revision": "7"})

    async def Sum(self, requests: AsyncIterator[String], context: Any) -> String:
        total = 0
        async for request in requests:
            total += int(request.value)
        return String(value=str(total))

    async def Chat(self, requests: AsyncIterator[String], context: Any) -> AsyncIterator[String]:
        async for request in requests:
            yield String(value=request.value.upper())


def binding(servicer: EchoServicer) -> ServiceBinding:
    """The echo service as a binding for `create_server`."""
    des, ser = String.FromString, String.SerializeToString
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(servicer.Echo, des, ser),
        "Sleep": grpc.unary_unary_rpc_method_handler(servicer.Sleep, des, ser),
        "Fail": grpc.unary_unary_rpc_method_handler(servicer.Fail, des, ser),
        "Count": grpc.unary_stream_rpc_method_handler(servicer.Count, des, ser),
        "CountThenFail": grpc.unary_stream_rpc_method_handler(servicer.CountThenFail, des, ser),
        "Sum": grpc.stream_unary_rpc_method_handler(servicer.Sum, des, ser),
        "Chat": grpc.stream_stream_rpc_method_handler(servicer.Chat, des, ser),
    }
    generic = grpc.method_handlers_generic_handler(SERVICE, handlers)

    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((generic,))

    return ServiceBinding(SERVICE, add)


def stubs(channel: grpc.aio.Channel) -> dict[str, Any]:
    """Callables for every echo method on `channel`."""
    des, ser = String.FromString, String.SerializeToString
    path = f"/{SERVICE}/"
    return {
        "Echo": channel.unary_unary(path + "Echo", ser, des),
        "Sleep": channel.unary_unary(path + "Sleep", ser, des),
        "Fail": channel.unary_unary(path + "Fail", ser, des),
        "Count": channel.unary_stream(path + "Count", ser, des),
        "CountThenFail": channel.unary_stream(path + "CountThenFail", ser, des),
        "Sum": channel.stream_unary(path + "Sum", ser, des),
        "Chat": channel.stream_stream(path + "Chat", ser, des),
    }


def echo_service_descriptor(idempotent: tuple[str, ...] = ("Echo",)) -> Any:
    """A descriptor of the echo service declaring `idempotent` methods IDEMPOTENT."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="helix/test/echo.proto",
        package="helix.test",
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    service = proto.service.add(name="EchoService")
    for name in ("Echo", "Sleep", "Fail"):
        method = service.method.add(
            name=name,
            input_type=".google.protobuf.StringValue",
            output_type=".google.protobuf.StringValue",
        )
        if name in idempotent:
            method.options.idempotency_level = descriptor_pb2.MethodOptions.IDEMPOTENT
    pool.Add(proto)
    return pool.FindServiceByName(SERVICE)
