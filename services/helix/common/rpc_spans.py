"""The spans of gRPC calls, once tracing is on (`helix.common.tracing` decides; nothing
here is used, nor opentelemetry imported, when it is off).

- `ServerSpans`, a stage of the server call chain: a SERVER span per call, the caller's
  span (W3C `traceparent`/`tracestate` in the call's metadata) its parent, current while
  the servicer runs so that the calls it makes and the tasks it starts are its children.
- `client_interceptors`: a CLIENT span per call, its context sent in the call's metadata.

Spans are named `helix.v1.Service/Method` with rpc.system, rpc.service, rpc.method and
rpc.grpc.status_code. Health and reflection calls are not traced.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc

from helix.common.interceptors import EXEMPT_FROM_LIMITS, Call, MethodInfo, Stage

if TYPE_CHECKING:
    from opentelemetry.context import Context as OtelContext
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Span

    from helix.common.tracing import Tracing

_NOT_TRACED = EXEMPT_FROM_LIMITS  # health and reflection
# The server-side codes OpenTelemetry's RPC conventions count as errors (the others are
# the caller's business: NOT_FOUND, INVALID_ARGUMENT, ...); on the client every non-OK is.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _rpc_attributes(path: str) -> dict[str, str]:
    service, _, method = path.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def _finish(span: Span, code: grpc.StatusCode, errors: Callable[[grpc.StatusCode], bool]) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if errors(code):
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class _MetadataGetter:
    """Reads propagation headers from gRPC invocation metadata (pairs, keys lower case)."""

    def get(self, carrier: Sequence[tuple[str, str | bytes]], key: str) -> list[str] | None:
        found = [v for k, v in carrier if k == key and isinstance(v, str)]
        return found or None

    def keys(self, carrier: Sequence[tuple[str, str | bytes]]) -> list[str]:
        return [k for k, _ in carrier]


# Duck-typed: subclassing opentelemetry's Getter would import it with this module.
_GETTER = cast("Getter[Sequence[tuple[str, str | bytes]]]", _MetadataGetter())
# The span of the call being served and the token that made it current (before → after;
# both run in the call's own task and context).
_serving: contextvars.ContextVar[tuple[Span, object] | None] = contextvars.ContextVar(
    "helix_server_span", default=None
)


def forget_serving() -> None:
    """Clear the served call's span in this context (a task detached from the call: only
    the call's own task may end it)."""
    _serving.set(None)


class ServerSpans(Stage):
    """A SERVER span per call, the caller's span (from the metadata) its parent."""

    def __init__(self, tracing: Tracing) -> None:
        from opentelemetry import context, trace

        self._tracing = tracing
        self._context = context
        self._trace = trace
        self._attributes: dict[str, dict[str, str] | None] = {}

    def bind(self, info: MethodInfo) -> None:
        traced = info.service not in _NOT_TRACED
        self._attributes[info.path] = _rpc_attributes(info.path) if traced else None

    def before(self, call: Call) -> None:
        attributes = self._attributes[call.info.path]
        if attributes is None:
            return
        parent: OtelContext = self._tracing.propagator.extract(call.metadata(), getter=_GETTER)
        span = self._tracing.tracer.start_span(
            call.info.path[1:],
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes=attributes,
        )
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        _serving.set((span, token))

    def after(self, call: Call, code: grpc.StatusCode) -> None:
        held = _serving.get()
        if held is None:
            return
        _serving.set(None)
        span, token = held
        self._context.detach(token)  # type: ignore[arg-type]
        _finish(span, code, _SERVER_ERRORS.__contains__)


_MAX_METHODS = 1024  # cached attributes per channel's tracer (the API has far fewer)


def client_interceptors(tracing: Tracing) -> list[grpc.aio.ClientInterceptor]:
    """CLIENT spans for a channel: one interceptor per call type (grpc.aio files each
    under the first type it implements)."""
    spans = _ClientSpans(tracing)
    return [_UnaryUnary(spans), _UnaryStream(spans), _StreamUnary(spans), _StreamStream(spans)]


def _client_error(code: grpc.StatusCode) -> bool:
    return code is not grpc.StatusCode.OK


class _ClientSpans:
    """Starts CLIENT spans and puts their context in the call's metadata."""

    def __init__(self, tracing: Tracing) -> None:
        from opentelemetry import trace

        self._tracing = tracing
        self._trace = trace
        # Per method path; bounded: a channel calls the methods its code names.
        self._attributes: dict[str, dict[str, str]] = {}
        # Streams end in a done callback, which cannot await the status: a short task does.
        self._finishing: set[asyncio.Task[None]] = set()

    def start(
        self, details: grpc.aio.ClientCallDetails
    ) -> tuple[Span | None, grpc.aio.ClientCallDetails]:
        method = details.method
        path = method.decode() if isinstance(method, bytes) else method
        attributes = self._attributes.get(path)
        if attributes is None:
            attributes = _rpc_attributes(path)
            if len(self._attributes) < _MAX_METHODS:
                self._attributes[path] = attributes
        if attributes["rpc.service"] in _NOT_TRACED:
            return None, details
        span = self._tracing.tracer.start_span(
            path.lstrip("/"), kind=self._trace.SpanKind.CLIENT, attributes=attributes
        )
        headers: dict[str, str] = {}
        self._tracing.propagator.inject(headers, context=self._trace.set_span_in_context(span))
        kept: Iterable[tuple[str, str | bytes]] = (
            (k, v) for k, v in (details.metadata or ()) if k not in headers
        )
        metadata = grpc.aio.Metadata(*kept, *headers.items())
        traced = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return span, traced

    async def opened(self, span: Span | None, opening: Awaitable[Any]) -> Any:
        """The call `opening` starts (its span ended if it cannot start)."""
        try:
            return await opening
        except asyncio.CancelledError:
            if span is not None:  # the caller's own cancellation: no error (see `_end`)
                _finish(span, grpc.StatusCode.CANCELLED, _no_error)
            raise
        except BaseException:
            if span is not None:
                _finish(span, grpc.StatusCode.UNKNOWN, _client_error)
            raise

    async def unary(self, span: Span | None, opening: Awaitable[Any]) -> Any:
        """Wait for a unary response's status (the call is returned, done, to the caller)."""
        call = await self.opened(span, opening)
        if span is None:
            return call
        try:
            code = await call.code()
        except asyncio.CancelledError:
            # The caller cancelled its own call: as for a stream it cancels, no error.
            call.cancel()
            _finish(span, grpc.StatusCode.CANCELLED, _no_error)
            raise
        _finish(span, code, _client_error)
        return call

    async def stream(self, span: Span | None, opening: Awaitable[Any]) -> Any:
        """End the span when the stream ends (its responses are the caller's to read)."""
        call = await self.opened(span, opening)
        if span is not None:
            call.add_done_callback(lambda done: self._end_later(span, done))
        return call

    def _end_later(self, span: Span, call: Any) -> None:
        task = asyncio.ensure_future(self._end(span, call))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _end(self, span: Span, call: Any) -> None:
        try:
            code = await call.code()  # done: the status is there already
        except asyncio.CancelledError:  # the loop is closing under the finished call
            _finish(span, grpc.StatusCode.CANCELLED, _no_error)
            raise
        # A stream the caller itself cancelled is how it ends one (the orchestrator closes
        # a run's VerifyStreams so): the code says CANCELLED, but it is no error.
        _finish(span, code, _no_error if call.cancelled() else _client_error)


def _no_error(code: grpc.StatusCode) -> bool:
    return False


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, spans: _ClientSpans) -> None:
        self._spans = spans

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        span, details = self._spans.start(client_call_details)
        return await self._spans.unary(span, continuation(details, request))


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, spans: _ClientSpans) -> None:
        self._spans = spans

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        span, details = self._spans.start(client_call_details)
        return await self._spans.stream(span, continuation(details, request))


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, spans: _ClientSpans) -> None:
        self._spans = spans

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        span, details = self._spans.start(client_call_details)
        # Not awaited here: the caller may still have requests to write.
        return await self._spans.stream(span, continuation(details, request_iterator))


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, spans: _ClientSpans) -> None:
        self._spans = spans

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        span, details = self._spans.start(client_call_details)
        return await self._spans.stream(span, continuation(details, request_iterator))
