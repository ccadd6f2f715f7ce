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

Work shared across callers but started from inside one call (a stream forwarding every
caller's rows, a pool started by the first request) is started with `spawn_detached`, so
that it is not traced under whichever call happened to start it (that call's span ends
long before the work does, and the other callers' work would be its children).

Off, nothing is paid: `server_stages()` and `client_interceptors()` are empty (no stage or
interceptor runs per call), `generation_span` is a shared null context, `spawn_detached`
is `asyncio.create_task`, and opentelemetry is never imported. The decision is taken once
per process, on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from helix.common import rpc_spans
from helix.common.config import ConfigError
from helix.common.interceptors import Stage

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

log = logging.getLogger("helix.tracing")
T = TypeVar("T")

INSTRUMENTATION = "helix"
DEFAULT_SERVICE_NAME = "helix"
# Any of these asks for tracing (OTEL_TRACES_EXPORTER=none turns it off explicitly).
_ENABLING = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
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
    error: ConfigError | None = None  # the environment's tracing settings are wrong


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

    names = [n.strip().lower() for n in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")]
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
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise _MissingExtra("opentelemetry-exporter-otlp-proto-grpc") from None
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


class _MissingExtra(ImportError):
    """A package of the otel extra (the exporter `package`) is not installed."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.package = name


def from_environment(environ: Mapping[str, str]) -> Tracing | None:
    """Tracing as the OTEL_* variables in `environ` configure it: None when they do not ask
    for it, or when the otel extra (the SDK, or its OTLP/gRPC exporter when otlp is asked
    for) is not installed (said in the log); otherwise an SDK TracerProvider with a
    BatchSpanProcessor per exporter (flushed at exit). Settings Helix does not support
    raise ConfigError."""
    if not wanted(environ):
        return None
    try:
        from opentelemetry import propagate
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        _warn_missing("the otel extra is not installed")
        return None
    try:
        exporters = exporters_from_env(environ)
    except _MissingExtra as missing:
        _warn_missing(f"the otel extra is incomplete ({missing.package} is missing)")
        return None
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


def _warn_missing(what: str) -> None:
    log.warning(
        "OTEL_* variables ask for tracing but %s (pip install 'helix[otel]'): tracing is off",
        what,
    )


def install(provider: Any, propagator: TextMapPropagator | None = None) -> Tracing:
    """Turn tracing on with `provider` (any OpenTelemetry TracerProvider; a test's, with an
    in-memory exporter), for the servers and channels built from now on."""
    from opentelemetry import propagate

    tracing = Tracing(
        provider.get_tracer(INSTRUMENTATION), propagator or propagate.get_global_textmap()
    )
    _decision.taken, _decision.tracing, _decision.error = True, tracing, None
    return tracing


def reset() -> None:
    """Forget the decision (tests): the next use decides again from the environment."""
    _decision.taken, _decision.tracing, _decision.error = False, None, None


def current() -> Tracing | None:
    """Tracing as it is on in this process, or None; decided from os.environ on first use.

    Settings Helix does not support raise ConfigError, on first use and every use after
    (the decision is taken once either way: nothing is retried per call)."""
    if not _decision.taken:
        try:
            _decision.tracing = from_environment(os.environ)
        except ConfigError as error:
            _decision.error = error
        finally:
            _decision.taken = True
        if _decision.tracing is not None:
            log.info("tracing on", extra={"exporters": os.environ.get("OTEL_TRACES_EXPORTER")})
    if _decision.error is not None:
        raise _decision.error.with_traceback(None)  # not a traceback growing per use
    return _decision.tracing


def server_stages() -> list[Stage]:
    """The tracing stage for a server's call chain (to run first), or none when off."""
    tracing = current()
    return [] if tracing is None else [rpc_spans.ServerSpans(tracing)]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The tracing interceptors for a channel (one per call type), or none when off."""
    tracing = current()
    return [] if tracing is None else rpc_spans.client_interceptors(tracing)


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


def spawn_detached(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """`asyncio.create_task(coro)`, but with no span current in the task: for work shared
    by many callers that one call happens to start (its spans are roots of their own
    traces, not children of that call's span, which ends long before). Only the tracing
    context is dropped: the task sees every other context variable as the caller's.
    Exactly `asyncio.create_task` while tracing is off."""
    if _decision.tracing is None:
        return asyncio.create_task(coro, name=name)
    context = contextvars.copy_context()
    context.run(_no_current_span)
    return asyncio.create_task(coro, name=name, context=context)


def _no_current_span() -> None:
    from opentelemetry import context

    context.attach(context.Context())  # in a copied context, which nothing detaches
    rpc_spans.forget_serving()
