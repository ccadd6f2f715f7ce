"""The server interceptor chain, declared once: metrics → logging → errors (→ auth → limits).

Each interceptor wraps the behaviour of the handler that the rest of the chain returns,
for all four call types. Wrapping happens in the same task and context as the servicer,
so context variables set here (request id, principal) are visible to the servicer, and
cancellation passes through every layer untouched.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from helix.common import errors, logs
from helix.common.metrics import RpcMetrics
from helix.common.status import internal_status, to_grpc_status, to_rpc_status

log = logging.getLogger("helix.rpc")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
# grpc's type stubs describe synchronous handlers; aio behaviours are typed loosely here.
UnaryBehavior: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior: TypeAlias = Callable[[Any, Context], AsyncIterator[Any]]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """What the chain knows about a method from its path and handler."""

    path: str
    service: str
    method: str
    grpc_type: str
    request_streaming: bool
    response_streaming: bool


_TYPES = {
    (False, False): "UNARY",
    (False, True): "SERVER_STREAM",
    (True, False): "CLIENT_STREAM",
    (True, True): "BIDI_STREAM",
}


def method_info(path: str, handler: Handler) -> MethodInfo:
    """Describe the call to `path` (`/package.Service/Method`) served by `handler`."""
    service, _, method = path.lstrip("/").rpartition("/")
    streams = (bool(handler.request_streaming), bool(handler.response_streaming))
    return MethodInfo(path, service or "unknown", method, _TYPES[streams], *streams)


class _Undecodable:
    """Stands in for a request message whose bytes could not be parsed."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a deserializer so bad bytes become `_Undecodable` instead of an INTERNAL error."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError, RuntimeError) as exc:
            return _Undecodable(type(exc).__name__)

    return deserialize


def _reject_undecodable(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument(
            "the request message could not be decoded as the method's request type",
            [errors.FieldViolation("<request>", f"not a valid protobuf message ({request.error})")],
            reason="UNDECODABLE_REQUEST",
        )


async def _checked_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        _reject_undecodable(request)
        yield request


async def iterate_responses(behavior: Any, request: Any, context: Context) -> AsyncIterator[Any]:
    """Run a response-streaming behaviour, whether an async generator or a coroutine.

    A servicer may stream by yielding or by `await context.write(...)`; in the second case
    the behaviour is a coroutine and its messages have already gone out when it returns.
    """
    result = behavior(request, context)
    if inspect.isawaitable(result):
        await result
        return
    async for response in result:
        yield response


def rewrap(
    handler: Handler,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    stream: Callable[[StreamBehavior], StreamBehavior],
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """A copy of `handler` whose behaviour is wrapped by `unary` or `stream` (by response kind)."""
    deserializer = request_deserializer or handler.request_deserializer
    serializer = handler.response_serializer
    loose: Any = handler  # the stubs type behaviours as synchronous; these are async
    if (behavior := loose.unary_unary) is not None:
        return grpc.unary_unary_rpc_method_handler(unary(behavior), deserializer, serializer)
    if (behavior := loose.stream_unary) is not None:
        return grpc.stream_unary_rpc_method_handler(unary(behavior), deserializer, serializer)
    if (behavior := loose.unary_stream) is not None:
        return grpc.unary_stream_rpc_method_handler(stream(behavior), deserializer, serializer)
    if (behavior := loose.stream_stream) is not None:
        return grpc.stream_stream_rpc_method_handler(stream(behavior), deserializer, serializer)
    raise TypeError(f"handler {handler!r} has no behaviour")


def final_code(context: Context) -> grpc.StatusCode:
    """The status a finished call ended with: what the servicer set or aborted with, else OK."""
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate
    return grpc.StatusCode.UNKNOWN


def _cancelled_code(context: Context) -> grpc.StatusCode:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class _Observer:
    """Shared shape of interceptors that do something at the start and end of every call."""

    def start(self, info: MethodInfo, context: Context) -> Any:
        raise NotImplementedError

    def finish(self, info: MethodInfo, state: Any, code: grpc.StatusCode) -> None:
        raise NotImplementedError

    def on_message_sent(self, info: MethodInfo) -> None:
        """Called for every message a response stream sends (no-op unless overridden)."""

    def observe(self, info: MethodInfo, handler: Handler) -> Handler:
        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def observed(request: Any, context: Context) -> Any:
                state = self.start(info, context)
                code = grpc.StatusCode.UNKNOWN
                try:
                    response = await behavior(request, context)
                    code = final_code(context)
                    return response
                except asyncio.CancelledError:
                    code = _cancelled_code(context)
                    raise
                except grpc.aio.AbortError:
                    code = final_code(context)
                    raise
                finally:
                    self.finish(info, state, code)

            return observed

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
                state = self.start(info, context)
                code = grpc.StatusCode.UNKNOWN
                try:
                    async for response in iterate_responses(behavior, request, context):
                        self.on_message_sent(info)
                        yield response
                    code = final_code(context)
                except (asyncio.CancelledError, GeneratorExit):
                    code = _cancelled_code(context)
                    raise
                except grpc.aio.AbortError:
                    code = final_code(context)
                    raise
                finally:
                    self.finish(info, state, code)

            return observed

        return rewrap(handler, unary, stream)


class _MethodCache:
    """Describes each served method once; only methods that have a handler are remembered."""

    def __init__(self) -> None:
        self._infos: dict[str, MethodInfo] = {}

    def info(self, path: str, handler: Handler) -> MethodInfo:
        found = self._infos.get(path)
        if found is None:
            found = self._infos[path] = method_info(path, handler)
        return found


class MetricsInterceptor(grpc.aio.ServerInterceptor, _Observer):
    """Counts and times every call with the conventional `grpc_server_*` metrics."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics
        self._methods = _MethodCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        info = self._methods.info(handler_call_details.method, handler)
        wrapped = self.observe(info, handler)
        if info.request_streaming:
            wrapped = self._count_received(info, wrapped)
        return wrapped

    def _count_received(self, info: MethodInfo, handler: Handler) -> Handler:
        counter = self._metrics.msg_received.labels(info.grpc_type, info.service, info.method)

        async def counted(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                counter.inc()
                yield request

        # grpc.aio treats a plain function as a synchronous handler: these must be async.
        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def call(requests: Any, context: Context) -> Any:
                return await behavior(counted(requests), context)

            return call

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def call(requests: Any, context: Context) -> AsyncIterator[Any]:
                async for response in iterate_responses(behavior, counted(requests), context):
                    yield response

            return call

        return rewrap(handler, unary, stream)

    def start(self, info: MethodInfo, context: Context) -> float:
        self._metrics.started.labels(info.grpc_type, info.service, info.method).inc()
        return time.perf_counter()

    def on_message_sent(self, info: MethodInfo) -> None:
        self._metrics.msg_sent.labels(info.grpc_type, info.service, info.method).inc()

    def finish(self, info: MethodInfo, state: float, code: grpc.StatusCode) -> None:
        elapsed = time.perf_counter() - state
        labels = (info.grpc_type, info.service, info.method)
        self._metrics.handled.labels(*labels, code.name).inc()
        self._metrics.handling_seconds.labels(*labels).observe(elapsed)


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
REQUEST_ID_HEADER = "x-request-id"


def request_id_from(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's `x-request-id` if it is well formed, else a fresh random id."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


class LoggingInterceptor(grpc.aio.ServerInterceptor, _Observer):
    """Gives each call a request id and logs one JSON line when it ends."""

    def __init__(self) -> None:
        self._methods = _MethodCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        info = self._methods.info(handler_call_details.method, handler)
        return self.observe(info, handler)

    def start(self, info: MethodInfo, context: Context) -> tuple[float, str, str]:
        request_id = request_id_from(context.invocation_metadata())  # type: ignore[arg-type]
        logs.request_id_var.set(request_id)
        return time.perf_counter(), request_id, context.peer()

    def finish(
        self, info: MethodInfo, state: tuple[float, str, str], code: grpc.StatusCode
    ) -> None:
        started, request_id, peer = state
        level = logging.WARNING if code in _SERVER_FAULTS else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "rpc finished",
                extra={
                    "method": info.path,
                    "grpc_type": info.grpc_type,
                    "principal": logs.principal_var.get(),
                    "request_id": request_id,
                    "peer": peer,
                    "status": code.name,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )


_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors into rich statuses through the one error table.

    `HelixError` → its code with `ErrorInfo` (and `BadRequest`, `RetryInfo`, …); undecodable
    request bytes → INVALID_ARGUMENT; any other exception → INTERNAL with a generic message
    naming the request id, the traceback logged here and never sent.
    """

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        path = handler_call_details.method
        streaming_requests = bool(handler.request_streaming)

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def mapped(request: Any, context: Context) -> Any:
                try:
                    if streaming_requests:
                        request = _checked_requests(request)
                    else:
                        _reject_undecodable(request)
                    return await behavior(request, context)
                except Exception as exc:  # CancelledError is a BaseException and passes
                    await _abort_for(exc, path, context)

            return mapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def mapped(request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    if streaming_requests:
                        request = _checked_requests(request)
                    else:
                        _reject_undecodable(request)
                    async for response in iterate_responses(behavior, request, context):
                        yield response
                except Exception as exc:
                    await _abort_for(exc, path, context)

            return mapped

        return rewrap(
            handler,
            unary,
            stream,
            request_deserializer=_tolerant(handler.request_deserializer),
        )


async def _abort_for(exc: Exception, path: str, context: Context) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, errors.HelixError):
        await context.abort_with_status(to_grpc_status(to_rpc_status(exc)))
    request_id = logs.request_id_var.get()
    log.error("unexpected error in %s", path, exc_info=exc, extra={"method": path})
    message = f"internal error (request id {request_id or 'unknown'}); see the server log"
    await context.abort_with_status(to_grpc_status(internal_status(message)))


def default_chain(metrics: RpcMetrics) -> list[grpc.aio.ServerInterceptor]:
    """The declared interceptor chain, outermost first."""
    return [MetricsInterceptor(metrics), LoggingInterceptor(), ErrorInterceptor()]
