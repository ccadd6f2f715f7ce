"""The `helix.v1` services: their descriptors, and placeholders for those not yet served.

A placeholder validates each request with the service's pure `check_*` functions (so bad
input is INVALID_ARGUMENT with every violation listed), then answers UNIMPLEMENTED with an
`ErrorInfo` and a message naming the method, for all four call types, so clients and
operators see the whole API surface through reflection before each service is built.
A placeholder is not registered in health: it is not served, so it is never SERVING.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory

# `import helix.v1.x as x`, not `from helix.v1 import x`: mypy resolves the namespace
# package split over generated/ and services/ only in this form.
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors, reasons
from helix.common.server import ServiceBinding

REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
GENERATOR = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"]
ORACLE = oracle_pb2.DESCRIPTOR.services_by_name["OracleService"]
ORCHESTRATOR = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]

SERVICE_DESCRIPTORS: tuple[descriptor.ServiceDescriptor, ...] = (
    REGISTRY,
    GENERATOR,
    ORACLE,
    ORCHESTRATOR,
)


Check = Callable[[Any], list[errors.FieldViolation]]


def validate(check: Check | None, request: Any) -> None:
    """Raise INVALID_ARGUMENT listing every violation `check` finds in `request`."""
    if check is not None:
        violations = check(request)
        if violations:
            raise errors.InvalidArgument.from_violations(violations)


def _method_handler(
    method: descriptor.MethodDescriptor, reason: str, check: Check | None
) -> grpc.RpcMethodHandler[Any, Any]:
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    text = f"{path} is not implemented yet in this server ({reason})"

    def fail() -> errors.Unimplemented:
        return errors.Unimplemented(
            text, reason=reasons.NOT_IMPLEMENTED_YET, metadata={"method": path}
        )

    async def first_request(request: Any) -> Any:
        if not method.client_streaming:
            return request
        async for first in request:
            return first
        return request_class()

    async def unary(request: Any, context: Any) -> Any:
        validate(check, await first_request(request))
        raise fail()

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        validate(check, await first_request(request))
        raise fail()
        yield  # pragma: no cover - makes this an async generator

    deserialize = request_class.FromString
    serialize = response_class.SerializeToString
    kind = (method.client_streaming, method.server_streaming)
    if kind == (False, False):
        return grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
    if kind == (True, False):
        return grpc.stream_unary_rpc_method_handler(unary, deserialize, serialize)
    if kind == (False, True):
        return grpc.unary_stream_rpc_method_handler(stream, deserialize, serialize)
    return grpc.stream_stream_rpc_method_handler(stream, deserialize, serialize)


def placeholder(
    service: descriptor.ServiceDescriptor, reason: str, checks: Mapping[str, Check] | None = None
) -> ServiceBinding:
    """A binding that serves every method of `service` as UNIMPLEMENTED, saying `reason`.

    Requests are validated first with `checks` (method name → check of its request, the
    first message for request streams), so bad input is INVALID_ARGUMENT already.
    """
    checks = checks or {}
    handlers = {m.name: _method_handler(m, reason, checks.get(m.name)) for m in service.methods}
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)

    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((generic,))

    return ServiceBinding(service.full_name, add, placeholder=True)
