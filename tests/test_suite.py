"""The embedded suite in-process: health, reflection, and placeholders for unbuilt services."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from helix.common.config import Duration
from helix.common.services import SERVICE_DESCRIPTORS
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint
from helix.suite import EmbeddedConfig, create_embedded, embedded_services

from reflection_client import file_for_symbol, list_services
from test_validation import VALID

HELIX_SERVICES = [
    "helix.v1.GeneratorService",
    "helix.v1.OracleService",
    "helix.v1.OrchestratorService",
    "helix.v1.RegistryService",
]


@pytest.fixture
async def suite(tmp_path):
    config = EmbeddedConfig(port=0, data_dir=tmp_path / "data", grace_period=Duration(1))
    server, port = create_embedded(config)
    assert port == server.port > 0
    await server.start()
    assert server.security is not None
    assert server.security.signer is not None
    admin = StaticTokenSource(mint(server.security.signer, "tester", ["admin"], 60))
    async with grpc.aio.insecure_channel(
        server.address, interceptors=bearer_interceptors(admin)
    ) as channel:
        yield channel
    await server.shutdown(0)


def test_suite_serves_all_four_services(tmp_path):
    config = EmbeddedConfig(port=0, data_dir=tmp_path)
    assert sorted(s.name for s in embedded_services(config)) == HELIX_SERVICES
    assert sorted(s.full_name for s in SERVICE_DESCRIPTORS) == HELIX_SERVICES


@pytest.mark.parametrize("service", ["", "helix.v1.GeneratorService", "helix.v1.RegistryService"])
async def test_health_is_serving_for_each_served_service(suite, service):
    # The placeholders are not in health at all (tests/test_health.py).
    health = health_pb2_grpc.HealthStub(suite)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_of_unknown_service_is_not_found(suite):
    health = health_pb2_grpc.HealthStub(suite)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="nope.Service"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_every_service(suite):
    assert await list_services(suite) == sorted(
        [*HELIX_SERVICES, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]
    )


async def test_reflection_describes_helix_files_with_their_methods(suite):
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in await file_for_symbol(suite, "helix.v1.RegistryService")
    ]
    registry = next(f for f in files if f.name == "helix/v1/registry.proto")
    methods = {m.name for m in registry.service[0].method}
    assert {"RegisterAgent", "Heartbeat", "WatchAgents"} <= methods


BUILT = {
    "helix.v1.RegistryService",
    "helix.v1.GeneratorService",
    "helix.v1.OracleService",
    "helix.v1.OrchestratorService",
}


def _stub_calls(channel, include_built=False):
    calls = []
    for service in SERVICE_DESCRIPTORS:
        if service.full_name in BUILT and not include_built:
            continue
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            kind = (method.client_streaming, method.server_streaming)
            calls.append((path, kind, VALID[method.name][1].SerializeToString()))
    return calls


async def _call(channel, path, kind, payload=b""):
    if kind == (False, False):
        return await channel.unary_unary(path)(payload, timeout=5)
    if kind == (False, True):
        return [m async for m in channel.unary_stream(path)(payload, timeout=5)]
    if kind == (True, False):
        return await channel.stream_unary(path)(iter([payload]), timeout=5)

    async def one():
        yield payload

    return [m async for m in channel.stream_stream(path)(one(), timeout=5)]


async def test_bad_requests_are_invalid_argument_before_unimplemented(suite):
    calls = _stub_calls(suite, include_built=True)
    for path, kind, _ in calls:
        if path.endswith(("/ListDnas", "/ListOracles", "/ListRuns", "/ListAgents", "/WatchAgents")):
            continue  # an empty request is a valid listing
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(suite, path, kind, b"")
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, path
        status = rpc_status.from_call(error)
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details), path
        assert bad.field_violations, path
