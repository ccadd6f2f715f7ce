"""The server call chain, declared once: metrics → access log → concurrency pools → (auth →
rate limit → per-principal share) → servicer.

gRPC's interceptor API runs a coroutine pipeline and rebuilds a handler per call per
interceptor; on a 2-core machine three such layers cost a fifth of unary throughput. Helix
instead wraps each method handler once, when a service is added to the server
(`ChainedServer`), with a `CallChain` that runs a declared list of *stages* around each
call inside a single wrapper:

- each stage's `before(call)` runs in order (a stage rejects a call by raising a
  `HelixError`), then the servicer;
- each stage's `after(call, code)` runs in reverse order with the final status code, for
  every call whose `before` it completed, whether the call then succeeded, failed, was
  rejected by a later stage or cancelled;
- the wrapper itself is the error table's one caller: `HelixError` → status with details,
  undecodable request bytes → INVALID_ARGUMENT, anything else → INTERNAL without a trace
  on the wire (logged here with the request id).

Everything runs in the servicer's own task and context, so context variables set by a
stage (request id, principal) are visible to the servicer, and cancellation passes
through untouched. Streams are driven by `helix.common.streams`: the chain writes each
response itself, with a deadline on writes the client does not take and on the first
message of a request stream.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import DecodeError, Message

from helix.common import errors, logs, reasons, rules
from helix.common.metrics import MethodStats, RpcMetrics
from helix.common.status import internal_status, status_code_for, to_grpc_status, to_rpc_status
from helix.common.streams import (
    StreamControl,
    StreamSettings,
    TransportEnded,
    abort_behind_writes,
    first_message,
    send_responses,
    serving,
)

log = logging.getLogger("helix.rpc")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
# grpc's type stubs describe synchronous handlers; aio behaviours are typed loosely here.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


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


class Call:
    """One call as the stages see it: its method, context, and what stages attach."""

    __slots__ = (
        "_metadata",
        "code",
        "context",
        "info",
        "peer",
        "principal",
        "request_id",
        "started",
    )

    def __init__(self, info: MethodInfo, context: Context) -> None:
        self.info = info
        self.context = context
        self.started = time.perf_counter()
        self.request_id = ""
        self.peer = ""
        self.principal = ""  # set by the per-principal share stage
        self.code: grpc.StatusCode | None = None
        self._metadata: Sequence[tuple[str, str | bytes]] | None = None

    def metadata(self) -> Sequence[tuple[str, str | bytes]]:
        """The call's invocation metadata (read once, then cached for later stages)."""
        if self._metadata is None:
            found: Any = self.context.invocation_metadata()
            self._metadata = tuple(found or ())
        return self._metadata

    def header(self, key: str) -> str | bytes | None:
        """The first value of metadata `key` (lower case), or None."""
        for name, value in self.metadata():
            if name == key:
                return value
        return None


class Stage:
    """A step of the chain. Override what you need; stages must not block the loop."""

    def bind(self, info: MethodInfo) -> None:
        """Called once per served method before its first call (precompute per-method state)."""

    def before(self, call: Call) -> None:
        """Runs before the servicer, in chain order; raise a `HelixError` to reject the call."""

    def on_request(self, info: MethodInfo) -> None:
        """Called for every message a request stream delivers."""

    def on_response(self, info: MethodInfo) -> None:
        """Called for every message a response stream sends."""

    def after(self, call: Call, code: grpc.StatusCode) -> None:
        """Runs after the call ended with `code`, in reverse chain order."""


class MetricsStage(Stage):
    """The conventional `grpc_server_*` metrics, with each method's counters bound once."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics
        self._bound: dict[str, MethodStats] = {}

    def bind(self, info: MethodInfo) -> None:
        self._bound[info.path] = self._metrics.method(info.grpc_type, info.service, info.method)

    def before(self, call: Call) -> None:
        self._bound[call.info.path].started += 1

    def on_request(self, info: MethodInfo) -> None:
        self._bound[info.path].received += 1

    def on_response(self, info: MethodInfo) -> None:
        self._bound[info.path].sent += 1

    def after(self, call: Call, code: grpc.StatusCode) -> None:
        self._bound[call.info.path].finished(code, time.perf_counter() - call.started)


# Health and reflection: open to every caller (security), and their unary methods are
# never refused by the concurrency pools (helix.common.limits).
EXEMPT_FROM_LIMITS = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def request_id_from(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's `x-request-id` if it is well formed, else a fresh process-unique id."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)


class AccessLogStage(Stage):
    """Gives each call a request id (the caller's `x-request-id` or a new one) and logs one
    JSON line when it ends: method, type, principal, request id, peer, status, duration.

    Failed calls are logged at INFO (server faults at WARNING); successful ones at DEBUG,
    so a fleet of agents heartbeating every few seconds does not flood the log (and the
    per-call formatting is skipped) unless the operator asks for it with DEBUG.
    """

    def before(self, call: Call) -> None:
        call.request_id = request_id_from(call.metadata())
        logs.request_id_var.set(call.request_id)
        # Read the peer now: the context must not be touched once the call has ended.
        if log.isEnabledFor(logging.INFO):
            call.peer = call.context.peer()

    def after(self, call: Call, code: grpc.StatusCode) -> None:
        if code is grpc.StatusCode.OK:
            level = logging.DEBUG
        elif code in _SERVER_FAULTS:
            level = logging.WARNING
        else:
            level = logging.INFO
        if not log.isEnabledFor(level):  # the common case: OK calls with DEBUG off
            return
        logs.access(
            level,
            log,
            "rpc finished",
            {
                "method": call.info.path,
                "grpc_type": call.info.grpc_type,
                "principal": logs.principal_var.get(),
                "request_id": call.request_id,
                "peer": call.peer,
                "status": code.name,
                "duration_ms": round((time.perf_counter() - call.started) * 1000, 3),
            },
        )


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
            [
                errors.FieldViolation(
                    "<request>",
                    f"not a valid protobuf message ({request.error})",
                    rules.UNDECODABLE,
                )
            ],
            reason=reasons.UNDECODABLE_REQUEST,
        )


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


async def _fail(exc: Exception, call: Call, *, behind_writes: bool = False) -> NoReturn:
    """Abort `call` for `exc` through the error table, recording the code in `call.code`.

    Domain errors abort with their status; anything else is logged with its traceback
    and answered INTERNAL naming only the request id. Building the status cannot let an
    exception escape: gRPC would answer it with UNKNOWN and the exception's text.
    `behind_writes`: a write may still wait for the client (response streams), so the
    status is queued behind it rather than waited for (`streams.abort_behind_writes`).
    """
    context = call.context
    if isinstance(exc, grpc.aio.AbortError):
        call.code = final_code(context)
        raise exc
    status = None
    if isinstance(exc, errors.HelixError):
        try:
            status = to_grpc_status(to_rpc_status(exc))
            call.code = status_code_for(exc)
        except Exception:
            log.exception("could not build the status for %r", type(exc).__name__)
    if status is None:
        call.code = grpc.StatusCode.INTERNAL
        if not isinstance(exc, errors.HelixError):
            log.error(
                "unexpected error in %s",
                call.info.path,
                exc_info=exc,
                extra={"method": call.info.path, "request_id": call.request_id},
            )
        message = f"internal error (request id {call.request_id or 'unknown'}); see the server log"
        status = to_grpc_status(internal_status(message))
    if behind_writes:
        await abort_behind_writes(context, status)
    await context.abort_with_status(status)
    raise AssertionError("abort_with_status returned")  # pragma: no cover


class Encoded:
    """A response a servicer has already serialised (`data` is the message's wire form): a
    handler registered with `passthrough` as its response serializer sends it as it is,
    instead of parsing it into a message that gRPC would serialise again."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def passthrough(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A response serializer that sends `Encoded` responses as they are."""

    def serializer(response: Any) -> bytes:
        return response.data if isinstance(response, Encoded) else serialize(response)

    return serializer


def add_encoding_servicer(
    service: descriptor.ServiceDescriptor, servicer: Any, server: grpc.aio.Server
) -> None:
    """Register `servicer`'s methods of `service` as the generated
    `add_<Service>Servicer_to_server` does, but with `passthrough` response serializers:
    its handlers may return or yield `Encoded` responses (bytes they assembled
    themselves), sent as they are."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        make: Any = kinds[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request.FromString,
            passthrough(response.SerializeToString),
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def _check_response(response: Any, info: MethodInfo) -> Any:
    """A servicer bug that returns a non-message must become INTERNAL, not gRPC's UNKNOWN."""
    if not isinstance(response, Message | Encoded):
        raise TypeError(f"{info.path} returned {type(response).__name__}, not a message")
    return response


def _log_stalled(call: Call, write_timeout: float) -> None:
    """A client that stopped reading is the client's business: INFO, never ERROR."""
    log.info(
        "stream stalled: the client read nothing for %gs; cancelling the call",
        write_timeout,
        extra={
            "method": call.info.path,
            "peer": call.peer or call.context.peer(),
            "request_id": call.request_id,
        },
    )


def _run_after(stages: Sequence[Stage], call: Call, code: grpc.StatusCode) -> None:
    """Run every `after` even if one raises (a skipped one could leak a concurrency slot)."""
    for stage in stages:
        try:
            stage.after(call, code)
        except Exception:
            log.exception("stage %s failed after %s", type(stage).__name__, call.info.path)


class CallChain:
    """Runs the declared stages and the error table around every call (see module doc).

    The chain wraps method handlers when services are added to the server (through
    `ChainedServer`), once per method, so no per-call interceptor machinery runs at all.
    """

    def __init__(self, stages: Sequence[Stage], streams: StreamSettings | None = None) -> None:
        self._stages = tuple(stages)
        self._streams = streams or StreamSettings()
        self._reversed = tuple(reversed(self._stages))
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def wrap(self, path: str, handler: Handler) -> Handler:
        """The chained form of `handler` serving `path` (`/package.Service/Method`)."""
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        # Only served methods get here, so the cache is bounded by the API, not by clients.
        wrapped = self._wrap(method_info(path, handler), handler)
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _wrap(self, info: MethodInfo, handler: Handler) -> Handler:
        for stage in self._stages:
            stage.bind(info)
        deserializer = _tolerant(handler.request_deserializer)
        serializer = handler.response_serializer
        loose: Any = handler  # the stubs type behaviours as synchronous; these are async
        if (behavior := loose.unary_unary) is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(info, behavior), deserializer, serializer
            )
        if (behavior := loose.stream_unary) is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(info, behavior), deserializer, serializer
            )
        if (behavior := loose.unary_stream) is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(info, behavior), deserializer, serializer
            )
        if (behavior := loose.stream_stream) is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(info, behavior), deserializer, serializer
            )
        raise TypeError(f"handler for {info.path} has no behaviour")

    def _requests(self, info: MethodInfo, request: Any) -> Any:
        if not info.request_streaming:
            _reject_undecodable(request)
            return request
        return self._inbound(info, request)

    async def _inbound(self, info: MethodInfo, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        stages = self._stages
        settings = self._streams
        iterator = aiter(requests)
        # A stream that never sends must not hold its slot (and its servicer) for good.
        arrived, request = await first_message(
            iterator, settings.first_message_timeout, settings.stats
        )
        if not arrived:
            return
        while True:
            _reject_undecodable(request)
            for stage in stages:
                stage.on_request(info)
            yield request
            try:
                request = await anext(iterator)
            except StopAsyncIteration:
                return

    def _unary(self, info: MethodInfo, behavior: Any) -> Any:
        stages, reversed_stages = self._stages, self._reversed

        async def call_unary(request: Any, context: Context) -> Any:
            call = Call(info, context)
            reached = 0
            code = grpc.StatusCode.UNKNOWN
            try:
                for stage in stages:
                    stage.before(call)
                    reached += 1
                response = await behavior(self._requests(info, request), context)
                code = final_code(context)
                return response if response is None else _check_response(response, info)
            except asyncio.CancelledError:
                code = _cancelled_code(context)
                raise
            except Exception as exc:
                await _fail(exc, call)
            finally:
                _run_after(reversed_stages[len(stages) - reached :], call, call.code or code)

        return call_unary

    def _stream(self, info: MethodInfo, behavior: Any) -> Any:
        stages, reversed_stages = self._stages, self._reversed

        def prepare(response: Any) -> Any:
            for stage in stages:
                stage.on_response(info)
            return _check_response(response, info)

        async def call_stream(request: Any, context: Context) -> None:
            call = Call(info, context)
            reached = 0
            code = grpc.StatusCode.UNKNOWN
            try:
                for stage in stages:
                    stage.before(call)
                    reached += 1
                await self._drive(call, behavior(self._requests(info, request), context), prepare)
                code = final_code(context)
            except asyncio.CancelledError:
                code = _cancelled_code(context)
                raise
            except TransportEnded:
                # The client cancelled or left while a write waited: not a server error.
                code = grpc.StatusCode.CANCELLED
                raise asyncio.CancelledError from None
            except Exception as exc:
                await _fail(exc, call, behind_writes=True)
            finally:
                _run_after(reversed_stages[len(stages) - reached :], call, call.code or code)

        return call_stream

    async def _drive(self, call: Call, result: Any, prepare: Callable[[Any], Any]) -> None:
        """Serve a response stream; a stream ended by `StreamControl.end` (a stalled
        client, a servicer's request) raises the error it was ended with."""
        settings = self._streams
        control = StreamControl(settings.write_timeout)
        serving(control)
        try:
            # A servicer may stream by yielding or by `await context.write(...)`; in the
            # second case its messages have gone out when the coroutine returns.
            if inspect.isawaitable(result):
                await result
                return
            # Close the servicer's generator as soon as the call ends (cancelled included),
            # so its `finally` runs now rather than whenever the loop's finaliser gets to it.
            async with aclosing(result) as responses:
                await send_responses(responses, call.context, control, prepare)
            if control.error is not None:
                # Ended by the servicer's own task (end(), then it returned at once): the
                # cancel that end() requested is still pending; take it here, so the call
                # ends with that error rather than OK.
                await asyncio.sleep(0)
                raise control.error
        except asyncio.CancelledError:
            ended = control.close()
            task = asyncio.current_task()
            # Cancelled by the client or the server's stop as well: a cancelled call.
            if ended is None or task is None or task.uncancel() > 0:
                raise
            if control.stalled:
                settings.stats.stalled += 1
                _log_stalled(call, settings.write_timeout)
            raise ended from None
        finally:
            control.close()


class _ChainedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come out wrapped by a `CallChain`."""

    def __init__(self, inner: grpc.GenericRpcHandler, chain: CallChain) -> None:
        self._inner = inner
        self._chain = chain

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._chain.wrap(handler_call_details.method, handler)


class ChainedServer:
    """What `add_*_to_server` functions are given: a server that chains every handler added.

    Generated code (and the health and reflection packages) add handlers through
    `add_generic_rpc_handlers` and `add_registered_method_handlers`; both are wrapped here,
    and everything else is the real server's.
    """

    def __init__(self, server: grpc.aio.Server, chain: CallChain) -> None:
        self._server = server
        self._chain = chain

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            [_ChainedGenericHandler(handler, self._chain) for handler in handlers]
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        chained = {m: self._chain.wrap(f"/{service}/{m}", h) for m, h in handlers.items()}
        self._server.add_registered_method_handlers(service, chained)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def default_stages(metrics: RpcMetrics, limit: Stage) -> list[Stage]:
    """The declared chain, outermost first: metrics, access log, then `limit` (the
    concurrency pools of `helix.common.limits`); security appends auth, rate limits and the
    per-principal share."""
    return [MetricsStage(metrics), AccessLogStage(), limit]
