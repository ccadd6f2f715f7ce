"""Graceful shutdown: SIGTERM → NOT_SERVING, new calls refused, in-flight calls finish."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from echo_service import EchoServicer, String, binding, stubs

DRAIN_SERVER = Path(__file__).parent / "servers" / "drain_server.py"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def start_drain_server(grace: float) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DRAIN_SERVER),
        str(grace),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
    assert line.startswith(b"listening "), line
    return process, int(line.split()[1])


async def test_sigterm_drains_in_flight_calls_and_refuses_new_ones():
    process, port = await start_drain_server(grace=10)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = stubs(channel)
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == SERVING

            in_flight = asyncio.ensure_future(echo["Sleep"](String(value="1.5"), timeout=10))
            await asyncio.sleep(0.3)  # the call is now running on the server
            process.send_signal(signal.SIGTERM)

            # Health flips to NOT_SERVING while the in-flight call is still draining.
            assert (await asyncio.wait_for(watch.read(), timeout=5)).status == NOT_SERVING
            assert not in_flight.done()

            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as fresh:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stubs(fresh)["Echo"](String(value="late"), timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            assert (await in_flight).value == "slept"
            watch.cancel()
        assert process.stdout is not None
        rest = await asyncio.wait_for(process.stdout.read(), timeout=20)
        assert b"drained" in rest
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_grace_period_bounds_the_drain():
    process, port = await start_drain_server(grace=0.5)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            slow = asyncio.ensure_future(stubs(channel)["Sleep"](String(value="30"), timeout=60))
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await asyncio.wait_for(slow, timeout=10)
            assert cut.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


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
