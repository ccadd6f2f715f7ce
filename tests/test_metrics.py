"""RPC metrics with the conventional names, counted for all four call types and exported."""

from __future__ import annotations

import asyncio
import platform
import urllib.request

import grpc
import pytest
from prometheus_client import Counter, Histogram

from helix.common.version import version

from echo_service import EchoServicer, String, binding, stubs
from waiting import eventually

SERVICE = "helix.test.EchoService"


def sample(server, name: str, **labels: str) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_every_call_type_is_counted_with_grpc_labels(start_server, channel_to):
    server = await start_server([binding(EchoServicer())])
    echo = stubs(channel_to(server))
    await echo["Echo"](String(value="x"), timeout=5)
    assert [r async for r in echo["Count"](String(value="4"), timeout=5)]

    async def numbers():
        for i in range(3):
            yield String(value=str(i))

    await echo["Sum"](numbers(), timeout=5)
    assert [r async for r in echo["Chat"](numbers(), timeout=5)]
    with pytest.raises(grpc.aio.AioRpcError):
        await echo["Fail"](String(value="invalid"), timeout=5)

    expected = {
        ("UNARY", "Echo", "OK"),
        ("SERVER_STREAM", "Count", "OK"),
        ("CLIENT_STREAM", "Sum", "OK"),
        ("BIDI_STREAM", "Chat", "OK"),
        ("UNARY", "Fail", "INVALID_ARGUMENT"),
    }
    for grpc_type, method, code in expected:
        labels = {"grpc_type": grpc_type, "grpc_service": SERVICE, "grpc_method": method}
        assert sample(server, "grpc_server_started_total", **labels) == 1
        assert sample(server, "grpc_server_handled_total", **labels, grpc_code=code) == 1
        assert sample(server, "grpc_server_handling_seconds_count", **labels) == 1
    count = {"grpc_type": "SERVER_STREAM", "grpc_service": SERVICE, "grpc_method": "Count"}
    assert sample(server, "grpc_server_msg_sent_total", **count) == 4
    total = {"grpc_type": "CLIENT_STREAM", "grpc_service": SERVICE, "grpc_method": "Sum"}
    assert sample(server, "grpc_server_msg_received_total", **total) == 3
    chat = {"grpc_type": "BIDI_STREAM", "grpc_service": SERVICE, "grpc_method": "Chat"}
    assert sample(server, "grpc_server_msg_received_total", **chat) == 3
    assert sample(server, "grpc_server_msg_sent_total", **chat) == 3


async def test_cancelled_stream_is_counted_as_cancelled(start_server, channel_to):
    servicer = EchoServicer()
    server = await start_server([binding(servicer)])
    call = stubs(channel_to(server))["Count"](String(value="1000000"), timeout=5)
    await call.read()
    call.cancel()
    labels = {"grpc_type": "SERVER_STREAM", "grpc_service": SERVICE, "grpc_method": "Count"}
    await eventually(
        lambda: sample(server, "grpc_server_handled_total", **labels, grpc_code="CANCELLED"),
        what="the cancelled call counted",
    )
    assert sample(server, "grpc_server_handled_total", **labels, grpc_code="CANCELLED") == 1


async def test_deadline_exceeded_is_counted(start_server, channel_to):
    server = await start_server([binding(EchoServicer())])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs(channel_to(server))["Sleep"](String(value="5"), timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    labels = {"grpc_type": "UNARY", "grpc_service": SERVICE, "grpc_method": "Sleep"}
    await eventually(
        lambda: sample(
            server, "grpc_server_handled_total", **labels, grpc_code="DEADLINE_EXCEEDED"
        ),
        what="the call past its deadline counted",
    )
    assert sample(server, "grpc_server_handled_total", **labels, grpc_code="DEADLINE_EXCEEDED") == 1


async def test_metrics_are_served_over_http(start_server, channel_to):
    server = await start_server([binding(EchoServicer())], metrics_port=0)
    assert server.metrics_port
    await stubs(channel_to(server))["Echo"](String(value="x"), timeout=5)
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    text = await asyncio.to_thread(fetch)
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Echo",'
        'grpc_service="helix.test.EchoService",grpc_type="UNARY"} 1.0'
    ) in text
    assert "grpc_server_handling_seconds_bucket" in text


def scrape(server, accept: str | None = None) -> str:
    """/metrics of `server` as Prometheus reads it (`accept`: the exposition format)."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/metrics")
    if accept is not None:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


async def test_process_python_and_build_info_series_are_exported(start_server):
    server = await start_server([binding(EchoServicer())], metrics_port=0)
    text = await asyncio.to_thread(scrape, server)
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "python_info{",
        "python_gc_objects_collected_total",
    ):
        assert f"\n{name}" in text, name
    info = {
        "grpc": grpc.__version__,
        "python": platform.python_version(),
        "version": version(),
    }
    labels = ",".join(f'{key}="{value}"' for key, value in sorted(info.items()))
    assert f"\nhelix_build_info{{{labels}}} 1.0\n" in text


@pytest.mark.parametrize("accept", [None, OPENMETRICS], ids=["text", "openmetrics"])
async def test_no_family_has_created_series(start_server, channel_to, accept):
    # One convention for every family: Helix's own collectors (grpc_server_*, helix_*)
    # write no _created series, so none of prometheus_client's own metrics does either.
    server = await start_server([binding(EchoServicer())], metrics_port=0)
    Counter(
        "helix_test_events",
        "A counter made with prometheus_client.",
        registry=server.metrics.registry,
    )
    Histogram("helix_test_seconds", "A histogram too.", registry=server.metrics.registry).observe(1)
    await stubs(channel_to(server))["Echo"](String(value="x"), timeout=5)
    text = await asyncio.to_thread(scrape, server, accept)
    assert "grpc_server_handled_total" in text
    assert "helix_test_events_total" in text
    assert [line for line in text.splitlines() if "_created" in line] == []


async def test_call_limits_and_stream_deadlines_are_served_over_http(start_server, channel_to):
    server = await start_server([binding(EchoServicer())], metrics_port=0, max_concurrent_rpcs=7)
    await stubs(channel_to(server))["Echo"](String(value="x"), timeout=5)
    text = await asyncio.to_thread(scrape, server)
    for line in (
        'helix_calls_in_flight{pool="unary"} 0.0',
        'helix_calls_in_flight{pool="stream"} 0.0',
        'helix_call_limit{pool="unary"} 7.0',
        'helix_calls_refused_total{pool="stream",reason="TOO_MANY_CONCURRENT_CALLS"} 0.0',
        'helix_calls_refused_total{pool="unary",reason="TOO_MANY_CALLS_FROM_PRINCIPAL"} 0.0',
        "helix_server_saturated 0.0",
        "helix_streams_first_message_timeouts_total 0.0",
        "helix_streams_stalled_total 0.0",
    ):
        assert line in text
