"""Graceful shutdown: SIGTERM → NOT_SERVING, new calls refused, in-flight calls finish."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from echo_service import EchoServicer, String, binding, stubs
from harness import Processes, RunningProcess

DRAIN_SERVER = Path(__file__).parent / "servers" / "drain_server.py"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SLEEP_STARTED = "^sleep started$"


async def start_drain_server(processes: Processes, grace: float) -> RunningProcess:
    return await processes.start([sys.executable, str(DRAIN_SERVER), str(grace)])


async def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(processes):
    server = await start_drain_server(processes, grace=10)
    async with grpc.aio.insecure_channel(server.address) as channel:
        echo = stubs(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING

        # A call that takes 1.5 s on the server: what the drain has to wait for.
        in_flight = asyncio.ensure_future(echo["Sleep"](String(value="1.5"), timeout=10))
        await server.wait_for_line(SLEEP_STARTED)  # the call is now running on the server
        server.send_signal(signal.SIGTERM)

        # Health flips to NOT_SERVING while the in-flight call is still draining.
        assert (await asyncio.wait_for(watch.read(), timeout=5)).status == NOT_SERVING
        assert not in_flight.done()

        async with grpc.aio.insecure_channel(server.address) as fresh:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs(fresh)["Echo"](String(value="late"), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        assert (await in_flight).value == "slept"
        watch.cancel()
    await server.wait_for_line("^drained$")
    assert await server.wait() == 0


async def test_grace_period_bounds_the_drain(processes):
    server = await start_drain_server(processes, grace=0.5)
    async with grpc.aio.insecure_channel(server.address) as channel:
        # A 30 s call: far longer than the grace period, so the drain cuts it off.
        slow = asyncio.ensure_future(stubs(channel)["Sleep"](String(value="30"), timeout=60))
        await server.wait_for_line(SLEEP_STARTED)
        server.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await asyncio.wait_for(slow, timeout=10)
        assert cut.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert await server.wait(10) == 0


async def test_stop_kills_a_process_that_outlives_its_deadline(processes):
    # The harness's own promise: a process still draining when stop()'s deadline passes
    # is killed (with its process group), so a test never leaves one behind.
    server = await start_drain_server(processes, grace=30)
    async with grpc.aio.insecure_channel(server.address) as channel:
        slow = asyncio.ensure_future(stubs(channel)["Sleep"](String(value="30"), timeout=60))
        await server.wait_for_line(SLEEP_STARTED)
        assert await server.stop(grace=0.5) == -signal.SIGKILL
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(slow, timeout=10)
    assert not server.running


async def test_shutdown_twice_is_safe(start_server, channel_to):
    servicer = EchoServicer()
    server = await start_server([binding(servicer)])
    await stubs(channel_to(server))["Echo"](String(value="x"), timeout=5)
    first = server.shutdown(0.1)
    second = server.shutdown(0.1)
    assert first is second
    await first
    await server.shutdown()
    await server.wait_for_termination()


async def test_an_open_health_watch_does_not_hold_the_drain(processes):
    # A 3 s grace period; an idle server drains in milliseconds unless something holds it.
    server = await start_drain_server(processes, grace=3)
    async with grpc.aio.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert (await watch.read()).status == SERVING
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert (await asyncio.wait_for(watch.read(), timeout=5)).status == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(watch.read(), timeout=5)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in str(ended.value.details())  # ended by the drain, not cut
        assert await server.wait() == 0
    # Well within the grace period (a generous bound on a busy machine).
    assert time.monotonic() - signalled < 2.0
    assert "drained" in server.lines
