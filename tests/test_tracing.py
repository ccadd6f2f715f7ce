"""OpenTelemetry tracing (helix.common.tracing): one generation's calls form one trace,
propagated in gRPC metadata between real servers, from the client's CreateRun down to the
generator's Generate and the oracle's VerifyStream; nothing at all when tracing is off."""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import json
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
from helix.common import tracing
from helix.common.channel import create_channel
from helix.common.config import ConfigError, Duration, ServerConfig
from helix.common.server import create_server
from helix.oracle import remote
from helix.oracle.serving import oracle_service
from helix.oracle.settings import OracleSettings
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint

from echo_service import SERVICE, EchoServicer, String, binding
from orchestrator_support import RUN_SCOPES, run_request, start_run_suite, watch_to_end
from waiting import eventually

CREATE_RUN = "helix.v1.OrchestratorService/CreateRun"
GENERATE = "helix.v1.GeneratorService/Generate"
VERIFY_STREAM = "helix.v1.OracleService/VerifyStream"
GENERATION = "helix.generation"
SPHERE_DNA = dna_pb2.Dna(
    name="dnas/sphere-3d",
    genes=[dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=-5, high=5, size=3))],
)
TESTS = Path(__file__).resolve().parent
RASTRIGIN = TESTS.parent / "examples" / "dna" / "rastrigin.yaml"
# OTLP's span kinds (what the collector receives).
INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def spans(no_otel_env: None) -> Iterator[InMemorySpanExporter]:
    """Tracing on with a test TracerProvider whose spans are kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.reset()
        provider.shutdown()


@pytest.fixture
def off(no_otel_env: None) -> Iterator[None]:
    tracing.reset()
    yield
    tracing.reset()


def _named(found: Any, name: str, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in found if s.name == name and s.kind == kind]


def _children(found: Any, parent: ReadableSpan, name: str, kind: SpanKind) -> list[ReadableSpan]:
    assert parent.context is not None
    return [
        s
        for s in _named(found, name, kind)
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


def _served_for(found: Any, client: ReadableSpan) -> ReadableSpan:
    """The SERVER span whose parent is `client`, through the metadata (a remote parent)."""
    (server,) = _children(found, client, client.name, SpanKind.SERVER)
    assert server.parent is not None
    assert server.parent.is_remote
    assert server.context is not None
    assert client.context is not None
    assert server.context.trace_id == client.context.trace_id
    return server


def _check_rpc(span: ReadableSpan, code: grpc.StatusCode = grpc.StatusCode.OK) -> None:
    service, method = span.name.split("/")
    assert span.attributes is not None
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.service"] == service
    assert span.attributes["rpc.method"] == method
    assert span.attributes["rpc.grpc.status_code"] == code.value[0]


@pytest.fixture
async def traced_suite(spans: InMemorySpanExporter, tmp_path: Path) -> AsyncIterator[Any]:
    suite = await start_run_suite(tmp_path / "suite")
    try:
        yield suite
    finally:
        await suite.close()


async def test_one_generation_is_one_trace_across_the_services(
    traced_suite: Any, spans: InMemorySpanExporter
) -> None:
    token = mint(traced_suite.server.security.signer, "alice", RUN_SCOPES, 3600)
    channel = create_channel(
        traced_suite.server.address, interceptors=bearer_interceptors(StaticTokenSource(token))
    )
    traced_suite.channels.append(channel)
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    created = await stub.CreateRun(run_request(evaluations=300), timeout=30)
    name = created.run.name
    await watch_to_end(stub, name)

    def settled() -> list[ReadableSpan] | None:
        found = list(spans.get_finished_spans())
        # The VerifyStream spans end once the run has closed its streams.
        ended = _named(found, VERIFY_STREAM, SpanKind.SERVER)
        return found if ended else None

    found = await eventually(settled, 20, what="the spans of the run")

    # The client's CreateRun is the parent of the orchestrator's, through the metadata.
    (client_create,) = _named(found, CREATE_RUN, SpanKind.CLIENT)
    server_create = _served_for(found, client_create)
    _check_rpc(client_create)
    _check_rpc(server_create)
    assert client_create.context is not None
    trace_id = client_create.context.trace_id

    # One span per generation, children of the orchestrator's CreateRun (its task).
    generations = _children(found, server_create, GENERATION, SpanKind.INTERNAL)
    numbers = sorted(int(g.attributes["helix.generation"]) for g in generations)  # type: ignore[index,arg-type]
    assert len(numbers) >= 3
    assert numbers == list(range(len(numbers)))
    assert all(g.attributes["helix.run"] == name for g in generations)  # type: ignore[index]
    by_number = {g.attributes["helix.generation"]: g for g in generations}  # type: ignore[index]

    # Generation 0: its Generate and VerifyStream calls, client and server side, one trace.
    first = by_number[0]
    generate_calls = _children(found, first, GENERATE, SpanKind.CLIENT)
    verify_calls = _children(found, first, VERIFY_STREAM, SpanKind.CLIENT)
    assert generate_calls
    assert verify_calls
    for client in generate_calls:
        server = _served_for(found, client)
        _check_rpc(client)
        _check_rpc(server)
        assert server.context is not None
        assert server.context.trace_id == trace_id
    for client in verify_calls:
        # Kept open from generation to generation, then cancelled when the run ends: the
        # client's span says so, but a stream its caller closes is no error. A cancel
        # reaches the server first as the end of the request stream (grpc does not yet
        # report the call cancelled then): an oracle holding no batch ends the stream
        # at once, OK, unless grpc cancels its task first (CANCELLED).
        server = _served_for(found, client)
        _check_rpc(client, grpc.StatusCode.CANCELLED)
        assert server.attributes is not None
        ended = server.attributes["rpc.grpc.status_code"]
        assert ended in (grpc.StatusCode.OK.value[0], grpc.StatusCode.CANCELLED.value[0])
        _check_rpc(server, grpc.StatusCode.OK if ended == 0 else grpc.StatusCode.CANCELLED)
        assert server.status.status_code != StatusCode.ERROR
        assert client.status.status_code != StatusCode.ERROR
        assert server.context is not None
        assert server.context.trace_id == trace_id
    # Later generations breed in their own spans (the VerifyStreams are kept across them).
    for number in (1, 2):
        later = _children(found, by_number[number], GENERATE, SpanKind.CLIENT)
        assert later
        for client in later:
            _served_for(found, client)

    # Health and reflection are not traced.
    assert not [s for s in found if s.name.startswith("grpc.")]


@pytest.fixture
async def echo(spans: InMemorySpanExporter) -> AsyncIterator[grpc.aio.Channel]:
    """The echo service on a traced server, and a traced channel to it."""
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=None)
    server, port = create_server(config, [binding(EchoServicer())], security=None)
    await server.start()
    channel = create_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.shutdown(0)


def _echo_method(channel: grpc.aio.Channel, kind: str, method: str) -> Any:
    make = getattr(channel, kind)
    return make(
        f"/{SERVICE}/{method}",
        request_serializer=String.SerializeToString,
        response_deserializer=String.FromString,
    )


async def test_every_call_type_is_traced_with_its_status(
    echo: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    assert (await _echo_method(echo, "unary_unary", "Echo")(String(value="hi"))).value == "hi"
    counted = [
        r.value async for r in _echo_method(echo, "unary_stream", "Count")(String(value="3"))
    ]
    assert counted == ["0", "1", "2"]
    summed = await _echo_method(echo, "stream_unary", "Sum")(iter([String(value="2")] * 3))
    assert summed.value == "6"
    chat = _echo_method(echo, "stream_stream", "Chat")(iter([String(value="a"), String(value="b")]))
    assert [r.value async for r in chat] == ["A", "B"]
    failures = {"not_found": grpc.StatusCode.NOT_FOUND, "boom": grpc.StatusCode.INTERNAL}
    for kind, code in failures.items():
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _echo_method(echo, "unary_unary", "Fail")(String(value=kind))
        assert failed.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as stream_failed:
        async for _ in _echo_method(echo, "unary_stream", "CountThenFail")(String()):
            pass
    assert stream_failed.value.code() == grpc.StatusCode.OUT_OF_RANGE

    expected = [
        ("Echo", grpc.StatusCode.OK),
        ("Count", grpc.StatusCode.OK),
        ("Sum", grpc.StatusCode.OK),
        ("Chat", grpc.StatusCode.OK),
        ("Fail", grpc.StatusCode.NOT_FOUND),
        ("Fail", grpc.StatusCode.INTERNAL),
        ("CountThenFail", grpc.StatusCode.OUT_OF_RANGE),
    ]

    def all_ended() -> list[ReadableSpan] | None:
        found = list(spans.get_finished_spans())
        return found if len(found) >= 2 * len(expected) else None

    found = await eventually(all_ended, 10, what="a client and a server span per call")
    clients = sorted(_named_kind(found, SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert [c.name for c in clients] == [f"{SERVICE}/{m}" for m, _ in expected]
    for client, (_, code) in zip(clients, expected, strict=True):
        server = _served_for(found, client)
        _check_rpc(client, code)
        _check_rpc(server, code)
        # Every non-OK code is an error to the client; to the server only its own faults.
        assert (client.status.status_code == StatusCode.ERROR) is (code != grpc.StatusCode.OK)
        server_fault = code == grpc.StatusCode.INTERNAL
        assert (server.status.status_code == StatusCode.ERROR) is server_fault
    assert len(found) == 2 * len(expected)  # health and reflection are not traced


def _named_kind(found: Any, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in found if s.kind == kind]


def test_tracing_off_adds_no_stage_or_interceptor(off: None) -> None:
    assert tracing.current() is None
    assert tracing.server_stages() == []
    assert tracing.client_interceptors() == []
    with tracing.generation_span("runs/x", 0) as span:
        assert span is None


# A process that builds a server and a channel and makes a call, tracing off (or asked
# for while the extra is missing), and reports what it imported and installed.
_OFF_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    if sys.argv[1] == "absent":
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
    if sys.argv[1] == "no_exporter":  # the SDK installed, not the OTLP/gRPC exporter
        sys.modules["opentelemetry.exporter.otlp.proto.grpc.trace_exporter"] = None
    sys.path.insert(0, sys.argv[2])
    from helix.common import tracing
    from helix.common.channel import create_channel
    from helix.common.config import ServerConfig
    from helix.common.server import create_server
    from echo_service import EchoServicer, String, binding

    async def main():
        config = ServerConfig(host="127.0.0.1", port=0, metrics_port=None)
        server, port = create_server(config, [binding(EchoServicer())], security=None)
        await server.start()
        channel = create_channel(f"127.0.0.1:{port}")
        echo = channel.unary_unary(
            "/helix.test.EchoService/Echo",
            request_serializer=String.SerializeToString,
            response_deserializer=String.FromString,
        )
        answer = await echo(String(value="hi"))
        interceptors = len(channel._unary_unary_interceptors)
        await channel.close()
        await server.shutdown(0)
        print(json.dumps({
            "answer": answer.value,
            "otel_imported": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
            "tracing": tracing.current() is not None,
            "unary_interceptors": interceptors,
        }))

    asyncio.run(main())
    """
)


async def _probe(mode: str, env: dict[str, str]) -> dict[str, Any]:
    from harness import run_command

    code, out, err = await run_command([sys.executable, "-c", _OFF_PROBE, mode, str(TESTS)], env)
    assert code == 0, err
    return dict(json.loads(out.splitlines()[-1])) | {"stderr": err}


def _env_without_otel() -> dict[str, str]:
    from harness import clean_env

    return {k: v for k, v in clean_env().items() if not k.startswith("OTEL_")}


async def test_off_imports_nothing_and_installs_nothing() -> None:
    report = await _probe("installed", _env_without_otel())
    assert report["answer"] == "hi"
    assert report["otel_imported"] == []
    assert report["tracing"] is False
    assert report["unary_interceptors"] == 1  # the deadline interceptor alone


async def test_on_without_the_extra_says_so_and_stays_off() -> None:
    env = _env_without_otel() | {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    report = await _probe("absent", env)
    assert report["answer"] == "hi"
    assert report["tracing"] is False
    assert report["unary_interceptors"] == 1
    assert "the otel extra is not installed" in report["stderr"]


async def test_on_without_the_otlp_exporter_says_so_once_and_stays_off() -> None:
    """The SDK is there but not the exporter OTEL_EXPORTER_OTLP_ENDPOINT asks for: the
    decision is taken (off) once, so the server and the channel are built and work."""
    env = _env_without_otel() | {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    report = await _probe("no_exporter", env)
    assert report["answer"] == "hi"
    assert report["tracing"] is False
    assert report["unary_interceptors"] == 1
    assert report["stderr"].count("opentelemetry-exporter-otlp-proto-grpc is missing") == 1


def test_an_unsupported_setting_is_refused_at_every_use(
    off: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    for _ in range(2):
        with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER='zipkin'"):
            tracing.server_stages()
    # Decided once: the environment is not read again on every server or channel built.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    with pytest.raises(ConfigError, match="zipkin"):
        tracing.client_interceptors()
    tracing.reset()
    assert tracing.current() is None


def _exporter_types(environ: dict[str, str]) -> list[type[Any]]:
    return [type(e) for e in tracing.exporters_from_env(environ)]


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "helix-a"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        (
            {"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
            True,
        ),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, True),
    ],
)
def test_which_variables_turn_tracing_on(
    no_otel_env: None, environ: dict[str, str], on: bool
) -> None:
    assert tracing.wanted(environ) is on
    configured = tracing.from_environment(environ)
    assert (configured is not None) is on
    if configured is not None:
        assert configured.provider is not None
        configured.provider.shutdown()


def test_the_exporter_is_picked_from_the_environment(no_otel_env: None) -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert _exporter_types(endpoint) == [OTLPSpanExporter]
    assert _exporter_types({"OTEL_TRACES_EXPORTER": "otlp"}) == [OTLPSpanExporter]
    assert _exporter_types({"OTEL_TRACES_EXPORTER": "console"}) == [ConsoleSpanExporter]
    assert _exporter_types({"OTEL_TRACES_EXPORTER": "otlp,console"}) == [
        OTLPSpanExporter,
        ConsoleSpanExporter,
    ]
    with pytest.raises(ConfigError, match=r"OTEL_TRACES_EXPORTER='zipkin' is not supported"):
        tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL='carrier-pigeon'"):
        tracing.exporters_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})
    http = {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-http"):
            tracing.exporters_from_env(http)
    else:  # pragma: no cover - not part of helix[otel]
        assert [t.__module__ for t in _exporter_types(http)] == [
            "opentelemetry.exporter.otlp.proto.http.trace_exporter"
        ]


def test_the_service_name_defaults_to_helix(
    no_otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {"OTEL_TRACES_EXPORTER": "console"}
    configured = tracing.from_environment(environ)
    assert configured is not None
    assert configured.provider is not None
    assert configured.provider.resource.attributes["service.name"] == "helix"
    configured.provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "helix-orchestrator")
    configured = tracing.from_environment(environ | {"OTEL_SERVICE_NAME": "helix-orchestrator"})
    assert configured is not None
    assert configured.provider is not None
    assert configured.provider.resource.attributes["service.name"] == "helix-orchestrator"
    configured.provider.shutdown()


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector: what the processes under test export, by service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((attributes["service.name"], s) for s in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, service: str, name: str, kind: int) -> list[Any]:
        return [
            s for owner, s in self.spans if owner == service and s.name == name and s.kind == kind
        ]


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    received = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield received, port
    finally:
        await server.stop(0)


async def test_helix_run_and_the_suite_export_one_trace_over_otlp(
    collector: tuple[Collector, int], processes: Any, tmp_path: Path
) -> None:
    from harness import HELIX, clean_env, run_command

    received, port = collector
    data_dir = tmp_path / "suite"
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    base = {k: v for k, v in clean_env({"data_dir": data_dir}).items() if not k.startswith("OTEL_")}
    suite = await processes.start(
        [HELIX, "up", "--port", "0"], base | otel | {"OTEL_SERVICE_NAME": "helix-up"}
    )
    code, _, err = await run_command(
        [
            HELIX,
            "run",
            str(RASTRIGIN),
            "--oracle",
            "rastrigin",
            "--budget",
            "300",
            "--json",
            "--address",
            suite.address,
            "--out",
            str(tmp_path / "out"),
        ],
        base | otel | {"OTEL_SERVICE_NAME": "helix-cli"},
        within=120,
    )
    assert code == 0, err
    assert await suite.stop() == 0  # the suite flushes its spans as it stops

    # The CLI's CreateRun (another process) is the parent of the suite's.
    (client,) = await eventually(
        lambda: received.named("helix-cli", CREATE_RUN, CLIENT), 10, what="the CLI's spans"
    )
    (server,) = received.named("helix-up", CREATE_RUN, SERVER)
    assert server.trace_id == client.trace_id
    assert server.parent_span_id == client.span_id
    generations = [
        s for s in received.named("helix-up", GENERATION, INTERNAL) if s.trace_id == client.trace_id
    ]
    assert len(generations) >= 3
    assert all(g.parent_span_id == server.span_id for g in generations)
    first = next(g for g in generations if _attribute(g, "helix.generation") == 0)
    (generate,) = [
        s for s in received.named("helix-up", GENERATE, CLIENT) if s.parent_span_id == first.span_id
    ]
    (served,) = [
        s
        for s in received.named("helix-up", GENERATE, SERVER)
        if s.parent_span_id == generate.span_id
    ]
    assert served.trace_id == client.trace_id
    assert _attribute(served, "rpc.grpc.status_code") == 0


def _attribute(span: Any, key: str) -> Any:
    for attribute in span.attributes:
        if attribute.key == key:
            value = attribute.value
            return getattr(value, value.WhichOneof("value"))
    raise KeyError(key)


# --- shared work started from inside a call ---------------------------------------------------


async def test_a_shared_remote_stream_is_not_traced_under_the_call_that_opened_it(
    spans: InMemorySpanExporter, start_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The near oracle forwards every caller's rows on one VerifyStream, opened by the
    first Verify: that stream is a trace of its own, not a child of the first caller's
    (long ended) SERVER span with the other callers' rows under it."""
    monkeypatch.setattr(remote, "IDLE_CLOSE", 0.2)  # the stream (and its span) ends soon

    async def start_oracle(name: str, text: str) -> Any:
        config = tmp_path / name / "oracles.yaml"
        config.parent.mkdir()
        config.write_text(text)
        service = oracle_service(
            OracleSettings(oracle_config=config, oracle_config_poll=Duration(0.1))
        )
        return await start_server([service.binding]), service

    far, _ = await start_oracle("far", "oracles:\n  sphere:\n    kind: builtin\n")
    near, near_service = await start_oracle(
        "near",
        f"oracles:\n  proxied:\n    kind: remote\n    address: {far.address}\n    oracle: sphere\n",
    )
    channel = create_channel(near.address)
    try:
        stub = oracle_pb2_grpc.OracleServiceStub(channel)
        batches = [
            [
                candidate_pb2.Candidate(genome=candidate_pb2.Genome(reals=[i / 10 + k, 1, 2]))
                for i in range(5)
            ]
            for k in range(3)
        ]
        first = stub.Verify(
            oracle_pb2.VerifyRequest(
                oracle="oracles/proxied", dna=SPHERE_DNA, candidates=batches[0]
            ),
            timeout=30,
        )
        await first
        # Two more callers while the first caller's stream is still open.
        await asyncio.gather(
            *(
                stub.Verify(
                    oracle_pb2.VerifyRequest(
                        oracle="oracles/proxied", dna=SPHERE_DNA, candidates=batch
                    ),
                    timeout=30,
                )
                for batch in batches[1:]
            )
        )
        assert len(near_service.host.oracles["proxied"].oracle.streams) == 1

        def stream_ended() -> list[ReadableSpan] | None:
            found = list(spans.get_finished_spans())
            return found if _named(found, VERIFY_STREAM, SpanKind.CLIENT) else None

        found = await eventually(stream_ended, 10, what="the idle remote stream to end")
    finally:
        await channel.close()
    verify = "helix.v1.OracleService/Verify"
    callers = _named(found, verify, SpanKind.SERVER)
    assert len(callers) == 3
    (stream,) = _named(found, VERIFY_STREAM, SpanKind.CLIENT)
    assert stream.parent is None  # a root: no caller's span is current in the shared task
    assert stream.context is not None
    for caller in callers:
        assert caller.context is not None
        assert caller.context.trace_id != stream.context.trace_id
    # The far side's span is the stream's child, in the stream's own trace.
    _served_for(found, stream)


async def test_spawn_detached_drops_the_span_and_keeps_the_rest_of_the_context(
    spans: InMemorySpanExporter,
) -> None:
    from opentelemetry import trace

    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="")
    seen: dict[str, Any] = {}

    async def work(key: str) -> None:
        seen[key] = (trace.get_current_span().get_span_context().is_valid, marker.get())

    current = tracing.current()
    assert current is not None
    marker.set("kept")
    with current.tracer.start_as_current_span("a call"):
        await tracing.spawn_detached(work("detached"), name="shared")
        await asyncio.create_task(work("attached"))
        assert trace.get_current_span().get_span_context().is_valid  # the caller's is intact
    assert seen == {"detached": (False, "kept"), "attached": (True, "kept")}


def test_spawn_detached_is_create_task_while_tracing_is_off(off: None) -> None:
    async def main() -> str:
        task = tracing.spawn_detached(asyncio.sleep(0, "done"), name="shared")
        assert task.get_name() == "shared"
        return await task

    assert asyncio.run(main()) == "done"
    assert tracing.current() is None


# --- statuses of calls cut short ----------------------------------------------------------------


async def test_a_unary_call_the_caller_cancels_is_cancelled_not_an_error(
    echo: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    sleep = asyncio.ensure_future(_echo_method(echo, "unary_unary", "Sleep")(String(value="30")))
    await asyncio.sleep(0.3)  # the call is open, the servicer sleeping
    sleep.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleep

    def both() -> list[ReadableSpan] | None:
        found = _named(spans.get_finished_spans(), f"{SERVICE}/Sleep", SpanKind.CLIENT)
        servers = _named(spans.get_finished_spans(), f"{SERVICE}/Sleep", SpanKind.SERVER)
        return [*found, *servers] if found and servers else None

    client, server = await eventually(both, 10, what="both spans of the cancelled call")
    for span in (client, server):
        _check_rpc(span, grpc.StatusCode.CANCELLED)
        assert span.status.status_code != StatusCode.ERROR, span.kind


async def test_a_call_cancelled_while_it_opens_is_cancelled_not_an_error(
    spans: InMemorySpanExporter,
) -> None:
    """Cancelled before grpc.aio has the call to return (the opening awaited): CANCELLED,
    the caller's own doing; a call that cannot open for another reason is UNKNOWN."""
    from helix.common import rpc_spans

    current = tracing.current()
    assert current is not None
    client = rpc_spans._ClientSpans(current)
    path = f"/{SERVICE}/Count"
    details = grpc.aio.ClientCallDetails(path, None, None, None, None)
    span, _ = client.start(details)
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    opening = asyncio.ensure_future(client.opened(span, never))
    await asyncio.sleep(0)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    span, _ = client.start(details)
    broken: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    broken.set_exception(RuntimeError("the channel is closed"))
    with pytest.raises(RuntimeError):
        await client.opened(span, broken)
    cancelled, failed = _named(spans.get_finished_spans(), path[1:], SpanKind.CLIENT)
    _check_rpc(cancelled, grpc.StatusCode.CANCELLED)
    assert cancelled.status.status_code != StatusCode.ERROR
    _check_rpc(failed, grpc.StatusCode.UNKNOWN)
    assert failed.status.status_code == StatusCode.ERROR


async def test_a_stream_the_client_stops_reading_or_leaves_is_no_server_error(
    spans: InMemorySpanExporter, start_server: Any
) -> None:
    from test_stalled_streams import UNLIMITED, FloodServicer, MiB, flood_binding

    server = await start_server(
        [binding(EchoServicer()), flood_binding(FloodServicer())],
        stream_write_timeout=Duration(0.3),
    )
    channel = grpc.aio.insecure_channel(
        server.address, options=UNLIMITED, interceptors=tracing.client_interceptors()
    )
    flood_path = "helix.test.FloodService/Flood"
    try:
        flood = channel.unary_stream(
            f"/{flood_path}",
            request_serializer=String.SerializeToString,
            response_deserializer=String.FromString,
        )

        def ended_spans(count: int) -> list[ReadableSpan] | None:
            found = _named(spans.get_finished_spans(), flood_path, SpanKind.SERVER)
            return sorted(found, key=lambda s: s.start_time or 0) if len(found) == count else None

        # Never read: the server's write waits, then it gives up on the client (whose
        # status waits behind the unread data).
        stalled = flood(String(value=str(MiB)), timeout=60)
        await eventually(lambda: ended_spans(1), 20, what="the stalled stream's server span")
        stalled.cancel()
        # Leaves after one response (cancels its stream).
        left = flood(String(value=str(MiB)), timeout=60)
        await left.read()
        left.cancel()
        stalled_span, left_span = await eventually(
            lambda: ended_spans(2), 10, what="both server spans"
        )
    finally:
        await channel.close()
    _check_rpc(stalled_span, grpc.StatusCode.RESOURCE_EXHAUSTED)
    _check_rpc(left_span, grpc.StatusCode.CANCELLED)
    for span in (stalled_span, left_span):
        assert span.status.status_code != StatusCode.ERROR
