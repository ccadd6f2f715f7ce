"""OpenTelemetry tracing, an optional extra (`pip install 'helix[otel]'`; docs/tracing.md).

Tracing is on only when the standard OTEL_* variables ask for it (OTEL_TRACES_EXPORTER,
OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set, OTEL_SDK_DISABLED
not true) and the extra is installed, or when a test or an embedding program `install`s
its own TracerProvider. Then:

- every server call gets a SERVER span (a stage at the head of the call chain, see
  `helix.common.interceptors`), a child of the caller's span when the call's metadata
  carries W3C `traceparent`/`tracestate`; it is current while the servicer runs, so the
  calls the servicer makes, and the tasks it starts, are its children;
- every call through `helix.common.channel.create_channel` gets a CLIENT span whose
  context goes out in the call's metadata;
- `generation_span` wraps one run generation in the orchestrator.

Spans are named `helix.v1.Service/Method` and carry rpc.system, rpc.service, rpc.method
and rpc.grpc.status_code. Health and reflection calls are not traced (probes would drown
the traces).

Off, nothing is paid: `server_stages()` and `client_interceptors()` are empty (no stage or
interceptor runs per call), `generation_span` is a shared null context, and opentelemetry
is never imported. The decision is taken once per process, on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc

from helix.common.config import ConfigError
from helix.common.interceptors import EXEMPT_FROM_LIMITS, Call, MethodInfo, Stage

if TYPE_CHECKING:
    from opentelemetry.context import Context as OtelContext
    from opentelemetry.propagators.textmap import Getter, TextMapPropagator
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("helix.tracing")

INSTRUMENTATION = "helix"
DEFAULT_SERVICE_NAME = "helix"
# Any of these asks for tracing (OTEL_TRACES_EXPORTER=none turns it off explicitly).
_ENABLING = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
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


@dataclass(frozen=True)
class Tracing:
    """What tracing runs with once it is on."""

    tracer: Tracer
    propagator: TextMapPropagator
    provider: TracerProvider | None = None  # the one set up from the environment, if any


class _Decision:
    """The process's decision, taken once: tracing on (a `Tracing`) or off (None)."""

    taken = False
    tracing: Tracing | None = None


_decision = _Decision()


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables in `environ` ask for tracing."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return any(environ.get(name, "").strip() for name in _ENABLING)


def exporters_from_env(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The span exporters OTEL_TRACES_EXPORTER names (default `otlp`): `otlp` over gRPC
    (or HTTP when OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL says so and its exporter is
    installed; the endpoint and headers are read by the exporter itself) and `console`."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    exporters: list[SpanExporter] = []
    for name in filter(None, names):
        if name == "otlp":
            exporters.append(_otlp_exporter(environ))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported by Helix: "
                "use otlp, console or none"
            )
    return exporters


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as OTLPHttpSpanExporter,
            )
        except ImportError:
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf needs the package "
                "opentelemetry-exporter-otlp-proto-http (helix[otel] brings the gRPC one)"
            ) from None
        exporter: SpanExporter = OTLPHttpSpanExporter()
        return exporter
    raise ConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use grpc or http/protobuf"
    )


def from_environment(environ: Mapping[str, str]) -> Tracing | None:
    """Tracing as the OTEL_* variables in `environ` configure it: None when they do not ask
    for it, or when the otel extra is not installed (said once in the log); otherwise an
    SDK TracerProvider with a BatchSpanProcessor per exporter (flushed at exit)."""
    if not wanted(environ):
        return None
    try:
        from opentelemetry import propagate
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_* variables ask for tracing but the otel extra is not installed "
            "(pip install 'helix[otel]'): tracing is off"
        )
        return None
    exporters = exporters_from_env(environ)
    if not exporters:
        return None
    attributes = {}
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES itself.
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer(INSTRUMENTATION)
    return Tracing(tracer, propagate.get_global_textmap(), provider)


def install(provider: Any, propagator: TextMapPropagator | None = None) -> Tracing:
    """Turn tracing on with `provider` (any OpenTelemetry TracerProvider; a test's, with an
    in-memory exporter), for the servers and channels built from now on."""
    from opentelemetry import propagate

    tracing = Tracing(
        provider.get_tracer(INSTRUMENTATION), propagator or propagate.get_global_textmap()
    )
    _decision.taken, _decision.tracing = True, tracing
    return tracing


def reset() -> None:
    """Forget the decision (tests): the next use decides again from the environment."""
    _decision.taken, _decision.tracing = False, None


def current() -> Tracing | None:
    """Tracing as it is on in this process, or None; decided from os.environ on first use."""
    if not _decision.taken:
        _decision.tracing = from_environment(os.environ)
        _decision.taken = True
        if _decision.tracing is not None:
            log.info("tracing on", extra={"exporters": os.environ.get("OTEL_TRACES_EXPORTER")})
    return _decision.tracing


def server_stages() -> list[Stage]:
    """The tracing stage for a server's call chain (to run first), or none when off."""
    tracing = current()
    return [] if tracing is None else [ServerSpans(tracing)]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The tracing interceptors for a channel (one per call type), or none when off."""
    tracing = current()
    if tracing is None:
        return []
    spans = _ClientSpans(tracing)
    return [
        _UnaryUnary(spans),
        _UnaryStream(spans),
        _StreamUnary(spans),
        _StreamStream(spans),
    ]


_NO_SPAN = contextlib.nullcontext()


def generation_span(run: str, generation: int) -> contextlib.AbstractContextManager[Any]:
    """A span for one generation of `run`, current inside (the calls that breed and verify
    it are its children); a shared null context when tracing is off."""
    tracing = current()
    if tracing is None:
        return _NO_SPAN
    return tracing.tracer.start_as_current_span(
        "helix.generation", attributes={"helix.run": run, "helix.generation": generation}
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
            call.cancel()
            _finish(span, grpc.StatusCode.CANCELLED, _client_error)
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
        except asyncio.CancelledError:
            _finish(span, grpc.StatusCode.CANCELLED, _client_error)
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
