"""grpc.health.v1.Health as Helix serves it: Check, Watch and List over the services that
are served (placeholders are not), watches that end when the drain begins, and no method
of any service the server exposes that answers INTERNAL to a plain request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from helix.common import errors
from helix.common.config import Duration
from helix.common.health import HealthService
from helix.common.services import SERVICE_DESCRIPTORS
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint
from helix.suite import EmbeddedConfig, create_embedded

from echo_service import EchoServicer, binding
from reflection_client import list_services
from test_validation import VALID

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVED = [
    "helix.v1.GeneratorService",
    "helix.v1.OracleService",
    "helix.v1.OrchestratorService",
    "helix.v1.RegistryService",
]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}


@pytest.fixture
async def suite(tmp_path) -> AsyncIterator[tuple[Any, grpc.aio.Channel]]:
    """The embedded suite in-process, and an admin's channel to it."""
    config = EmbeddedConfig(
        port=0, data_dir=tmp_path / "data", grace_period=Duration(1), generator_self_register=False
    )
    server, _ = create_embedded(config)
    await server.start()
    assert server.security is not None
    assert server.security.signer is not None
    admin = StaticTokenSource(mint(server.security.signer, "tester", ["admin"], 600))
    async with grpc.aio.insecure_channel(
        server.address, interceptors=bearer_interceptors(admin)
    ) as channel:
        yield server, channel
    await server.shutdown(0)


# --- item 10: List ---------------------------------------------------------------------------


async def test_list_answers_every_served_service(suite):
    _, channel = suite
    listed = await health_pb2_grpc.HealthStub(channel).List(
        health_pb2.HealthListRequest(), timeout=5
    )
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": SERVING,
        **dict.fromkeys(SERVED, SERVING),
    }


async def test_list_shows_not_serving_once_the_drain_began(start_server, channel_to):
    server = await start_server([binding(EchoServicer())])
    health = health_pb2_grpc.HealthStub(channel_to(server))
    await server.health.enter_graceful_shutdown()
    listed = await health.List(health_pb2.HealthListRequest(), timeout=5)
    assert {s.status for s in listed.statuses.values()} == {NOT_SERVING}
    assert set(listed.statuses) == {"", "helix.test.EchoService"}


# --- item 18: an open Watch does not hold the drain --------------------------------------------


async def test_an_open_health_watch_ends_when_the_drain_begins(start_server, channel_to):
    server = await start_server([binding(EchoServicer())], grace_period=Duration(3))
    health = health_pb2_grpc.HealthStub(channel_to(server))
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert (await watch.read()).status == SERVING
    started = time.monotonic()
    drain = server.shutdown()  # the configured grace: 3 s
    assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(watch.read(), 5)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in str(ended.value.details())
    assert not drain.done() or time.monotonic() - started < 1.5  # the watch ended first
    await drain
    # Nothing else held the server: the drain did not wait out its grace period.
    assert time.monotonic() - started < 1.5


async def test_a_watch_whose_write_is_pending_when_the_drain_begins_still_sends_not_serving():
    # The drain began while the watch's generator was suspended at its yield (its write in
    # flight): it must send NOT_SERVING before it ends, not end on the drain flag alone.
    health = HealthService()
    await health.set("", SERVING)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), None)
    assert (await anext(watch)).status == SERVING
    await health.enter_graceful_shutdown()
    assert (await anext(watch)).status == NOT_SERVING
    with pytest.raises(errors.Unavailable):
        await anext(watch)
    await health.set("", SERVING)  # ignored: the drain is for good
    assert (await health.Check(health_pb2.HealthCheckRequest(service=""), None)).status == (
        NOT_SERVING
    )


async def test_a_watch_opened_during_the_drain_ends_at_once(start_server, channel_to):
    server = await start_server([binding(EchoServicer())])
    health = health_pb2_grpc.HealthStub(channel_to(server))
    await server.health.enter_graceful_shutdown()
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert (await watch.read()).status == NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await watch.read()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE


# --- item 10: the audit ------------------------------------------------------------------------


def _valid_request(service: str, method: Any) -> Message:
    if service == HEALTH.full_name:
        if method.name == "List":
            return health_pb2.HealthListRequest()
        return health_pb2.HealthCheckRequest(service="")
    if service == REFLECTION.full_name:
        return reflection_pb2.ServerReflectionRequest(list_services="")
    return VALID[method.name][1]


def _audited() -> list[tuple[str, Any]]:
    services = [*SERVICE_DESCRIPTORS, HEALTH, REFLECTION]
    return [(s.full_name, m) for s in services for m in s.methods]


async def _call(channel: grpc.aio.Channel, service: str, method: Any, payload: bytes) -> None:
    path = f"/{service}/{method.name}"
    raw: Any = channel
    kind = (method.client_streaming, method.server_streaming)
    # Streams may rightly wait for events that never come: a short deadline ends them.
    if kind == (False, False):
        await raw.unary_unary(path)(payload, timeout=5)
    elif kind == (False, True):
        async for _ in raw.unary_stream(path)(payload, timeout=0.5):
            pass
    elif kind == (True, False):
        await raw.stream_unary(path)(iter([payload]), timeout=5)
    else:

        async def one() -> AsyncIterator[bytes]:
            yield payload

        async for _ in raw.stream_stream(path)(one(), timeout=0.5):
            pass


async def test_every_method_of_every_exposed_service_answers_without_a_fault(suite):
    _, channel = suite
    audited = _audited()
    # The audit covers everything reflection lists: nothing exposed escapes it.
    assert {s for s, _ in audited} == set(await list_services(channel))
    faults = []
    for service, method in audited:
        empty = message_factory.GetMessageClass(method.input_type)()
        for request in (empty, _valid_request(service, method)):
            try:
                await _call(channel, service, method, request.SerializeToString())
            except grpc.aio.AioRpcError as error:
                if error.code() in SERVER_FAULTS:
                    faults.append((f"{service}/{method.name}", error.code(), error.details()))
                    continue
                if error.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED,):
                    _assert_has_error_info(error, f"{service}/{method.name}")
    assert not faults


def _assert_has_error_info(error: grpc.aio.AioRpcError, where: str) -> None:
    status = rpc_status.from_call(error)
    assert status is not None, (where, error.code(), error.details())
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details), where
    assert info.domain == "helix", where
