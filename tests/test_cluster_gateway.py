"""The cluster's gateway on its own: real servers on loopback behind it, every call type
forwarded as bytes, metadata and deadlines carried, a cancelled client cancels upstream,
no process for a service is UNAVAILABLE (and its health NOT_SERVING), round-robin."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_oracle_service import SPHERE_DNA, dna, sphere_batch

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
from helix.cluster.gateway import Routes, gateway_bindings
from helix.common.config import Duration
from helix.common.server import HelixServer
from helix.oracle.serving import oracle_service
from helix.oracle.settings import OracleSettings
from helix.security.setup import security_from_config

from auth_support import make_keyring

ORACLE_SERVICE = "helix.v1.OracleService"


def _dna() -> dna_pb2.Dna:
    return dna(SPHERE_DNA)


async def _oracle(start_server: Callable[..., Any], tmp_path: Path, name: str) -> HelixServer:
    settings = OracleSettings(port=0, oracle_reports_dir=tmp_path / name)
    return await start_server([oracle_service(settings).binding], grace_period=Duration(2))


async def _gateway(
    start_server: Callable[..., Any], backends: Sequence[HelixServer]
) -> tuple[HelixServer, Routes]:
    routes = Routes()
    routes.set(ORACLE_SERVICE, [b.address for b in backends])
    server = await start_server(gateway_bindings(routes))
    return server, routes


async def test_unary_and_bidi_stream_calls_go_through(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    backend = await _oracle(start_server, tmp_path, "a")
    gateway, routes = await _gateway(start_server, [backend])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = oracle_pb2_grpc.OracleServiceStub(channel)
        # Unary, with the caller's request id carried to the process (it echoes it back
        # in errors) and a deadline.
        listed = await stub.ListOracles(oracle_pb2.ListOraclesRequest(), timeout=10)
        assert "oracles/sphere" in {o.name for o in listed.oracles}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetOracle(
                oracle_pb2.GetOracleRequest(name="oracles/nope"),
                metadata=(("x-request-id", "gateway-test-1"),),
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # Bidirectional stream with the credit protocol, answered batch by batch.
        call: Any = stub.VerifyStream(timeout=30)
        await call.write(
            oracle_pb2.VerifyStreamRequest(
                open=oracle_pb2.VerifyStreamOpen(oracle="oracles/sphere", dna=_dna())
            )
        )
        first = await call.read()
        assert first.WhichOneof("kind") == "credit"
        batches = {i: sphere_batch(20, i) for i in range(1, 4)}
        for batch_id, (batch, _) in batches.items():
            await call.write(
                oracle_pb2.VerifyStreamRequest(
                    batch=oracle_pb2.VerifyBatch(batch_id=batch_id, candidates=batch)
                )
            )
        answered: dict[int, list[float]] = {}
        while len(answered) < len(batches):
            response = await call.read()
            if response.WhichOneof("kind") == "verdicts":
                answered[response.verdicts.batch_id] = [v.score for v in response.verdicts.verdicts]
        await call.done_writing()
        while await call.read() != grpc.aio.EOF:
            pass
        assert await call.code() == grpc.StatusCode.OK
        for batch_id, (_, expected) in batches.items():
            np.testing.assert_allclose(answered[batch_id], expected, rtol=1e-12)
    await routes.close()


async def test_no_process_is_unavailable_and_not_serving_then_routes_follow(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    first = await _oracle(start_server, tmp_path, "a")
    second = await _oracle(start_server, tmp_path, "b")
    gateway, routes = await _gateway(start_server, [])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = oracle_pb2_grpc.OracleServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=ORACLE_SERVICE)
        assert (await health.Check(request)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListOracles(oracle_pb2.ListOraclesRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ORACLE_SERVICE in (caught.value.details() or "")
        routes.set(ORACLE_SERVICE, [first.address, second.address])
        await asyncio.sleep(0.05)  # the health update is applied on the loop
        assert (await health.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
        for _ in range(4):
            await stub.ListOracles(oracle_pb2.ListOraclesRequest(), timeout=10)
        # Round-robin: both processes answered.
        for backend in (first, second):
            served = backend.metrics.registry.get_sample_value(
                "grpc_server_handled_total",
                {
                    "grpc_type": "UNARY",
                    "grpc_service": ORACLE_SERVICE,
                    "grpc_method": "ListOracles",
                    "grpc_code": "OK",
                },
            )
            assert served == 2
    await routes.close()


async def test_the_bearer_token_reaches_the_process_that_checks_it(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """The gateway holds no key: the process behind it checks the token the caller sent."""
    keys = make_keyring(tmp_path / "keys")
    settings = OracleSettings(port=0, oracle_reports_dir=tmp_path / "reports")
    backend = await start_server(
        [oracle_service(settings).binding],
        security=security_from_config(keys.config()),
    )
    gateway, routes = await _gateway(start_server, [backend])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = oracle_pb2_grpc.OracleServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListOracles(oracle_pb2.ListOraclesRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = keys.mint("alice", ["oracles.read"])
        listed = await stub.ListOracles(
            oracle_pb2.ListOraclesRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
        assert listed.oracles
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # scopes checked there too
            await stub.Verify(
                oracle_pb2.VerifyRequest(oracle="oracles/sphere"),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await routes.close()


async def test_a_client_that_goes_away_ends_the_call_upstream(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """The stream at the process ends with the caller's: cancelled, or (when the caller's
    end reaches the gateway as the end of its requests first) closed."""
    backend = await _oracle(start_server, tmp_path, "a")
    gateway, routes = await _gateway(start_server, [backend])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = await _open_stream(oracle_pb2_grpc.OracleServiceStub(channel), deadline=60)
        assert not any(_handled(backend, c.name) for c in grpc.StatusCode)
        call.cancel()
    for _ in range(200):
        if any(_handled(backend, c.name) for c in grpc.StatusCode):
            break
        await asyncio.sleep(0.025)
    assert any(_handled(backend, c.name) for c in grpc.StatusCode), "still open upstream"
    await routes.close()


async def _open_stream(stub: oracle_pb2_grpc.OracleServiceAsyncStub, deadline: float) -> Any:
    call: Any = stub.VerifyStream(timeout=deadline)
    await call.write(
        oracle_pb2.VerifyStreamRequest(
            open=oracle_pb2.VerifyStreamOpen(oracle="oracles/sphere", dna=_dna())
        )
    )
    first = await call.read()
    assert first.WhichOneof("kind") == "credit"
    return call


def _handled(server: HelixServer, code: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "BIDI_STREAM",
            "grpc_service": ORACLE_SERVICE,
            "grpc_method": "VerifyStream",
            "grpc_code": code,
        },
    )
    return value or 0.0


async def test_the_callers_deadline_reaches_the_process(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    backend = await _oracle(start_server, tmp_path, "a")
    gateway, routes = await _gateway(start_server, [backend])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = await _open_stream(oracle_pb2_grpc.OracleServiceStub(channel), deadline=1.0)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()  # nothing sent: the deadline ends it
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The call at the process behind ended with the caller's (its deadline, or, on some
    # grpcio releases, the end of the requests reaching it first), not left open: the
    # stream was opened with no deadline of its own and the oracle's idle timeout is 60 s.
    for _ in range(200):
        if any(_handled(backend, c.name) for c in grpc.StatusCode):
            break
        await asyncio.sleep(0.025)
    assert any(_handled(backend, c.name) for c in grpc.StatusCode), "still open upstream"
    await routes.close()


async def test_a_process_that_dies_mid_stream_ends_the_callers_stream(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    backend = await _oracle(start_server, tmp_path, "a")
    gateway, routes = await _gateway(start_server, [backend])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = await _open_stream(oracle_pb2_grpc.OracleServiceStub(channel), deadline=30)
        await backend.grpc_server.stop(0)  # the process goes, the stream with it
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _read_to_the_end(call)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await routes.close()


async def _read_to_the_end(call: Any) -> None:
    async with asyncio.timeout(10):
        while await call.read() != grpc.aio.EOF:
            pass
