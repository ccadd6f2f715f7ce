"""The client channel factory: default deadlines, retries for idempotent methods only."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from helix.common.channel import (
    ChannelConfig,
    create_channel,
    idempotent_methods,
    is_long_lived,
    service_config,
)
from helix.common.config import ConfigError, Duration

from echo_service import EchoServicer, String, binding, echo_service_descriptor, stubs


async def test_calls_without_a_deadline_get_the_default(start_server):
    server = await start_server([binding(EchoServicer())])
    config = ChannelConfig(default_timeout=Duration(0.3))
    async with create_channel(server.address, config, services=[]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs(channel)["Sleep"](String(value="5"))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_an_explicit_deadline_wins(start_server):
    server = await start_server([binding(EchoServicer())])
    config = ChannelConfig(default_timeout=Duration(0.1))
    async with create_channel(server.address, config, services=[]) as channel:
        answer = await stubs(channel)["Sleep"](String(value="0.3"), timeout=5)
    assert answer.value == "slept"


async def test_idempotent_method_is_retried_on_unavailable(start_server):
    servicer = EchoServicer()
    servicer.fail_first = 2
    server = await start_server([binding(servicer)])
    services = [echo_service_descriptor()]
    async with create_channel(server.address, services=services) as channel:
        answer = await stubs(channel)["Echo"](String(value="again"), timeout=5)
    assert answer.value == "again"
    assert servicer.calls == 3


async def test_method_not_declared_idempotent_is_not_retried(start_server):
    servicer = EchoServicer()
    servicer.fail_first = 1
    server = await start_server([binding(servicer)])
    # Other methods of the service are retryable; Echo is not declared idempotent here.
    services = [echo_service_descriptor(idempotent=("Sleep", "Fail"))]
    assert service_config(ChannelConfig(), services)["methodConfig"]
    async with create_channel(server.address, services=services) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs(channel)["Echo"](String(value="once"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 1


def test_tiny_backoffs_still_make_a_valid_service_config():
    config = ChannelConfig(
        retry_initial_backoff=Duration(0.0015), retry_max_backoff=Duration(0.002)
    )
    policy = service_config(config, [echo_service_descriptor()])["methodConfig"][0]["retryPolicy"]
    assert policy["initialBackoff"] == "0.001500000s"


def test_retry_config_lists_only_declared_methods():
    descriptor = echo_service_descriptor()
    assert idempotent_methods([descriptor]) == [("helix.test.EchoService", "Echo")]
    config = service_config(ChannelConfig(), [descriptor])
    json.dumps(config)
    (policy,) = config["methodConfig"]
    assert policy["name"] == [{"service": "helix.test.EchoService", "method": "Echo"}]
    assert policy["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert config["retryThrottling"]["maxTokens"] > 0


def test_long_lived_streams_have_no_default_deadline():
    assert is_long_lived("/helix.v1.RegistryService/WatchAgents")
    assert is_long_lived("/helix.v1.OracleService/VerifyStream")
    assert is_long_lived(b"/grpc.health.v1.Health/Watch")
    assert not is_long_lived("/helix.v1.RegistryService/Heartbeat")


@pytest.mark.parametrize(
    "settings",
    [
        {"default_timeout": Duration(0)},
        {"keepalive_time": Duration(5)},
        {"retry_max_attempts": 9},
        {"retry_initial_backoff": Duration(3), "retry_max_backoff": Duration(1)},
    ],
)
def test_bad_channel_config_is_rejected(settings):
    with pytest.raises(ConfigError):
        ChannelConfig(**settings)


async def test_streams_without_a_deadline_get_the_default_too(start_server):
    server = await start_server([binding(EchoServicer())])
    config = ChannelConfig(default_timeout=Duration(0.3))

    async def silent():
        await asyncio.sleep(30)  # a client stream that sends nothing: the deadline must end it
        yield String(value="never")

    async def read_slowly(call):
        async for _ in call:
            await asyncio.sleep(0.01)  # a slow reader: the stream outlives the deadline

    async with create_channel(server.address, config, services=[]) as channel:
        echo = stubs(channel)
        with pytest.raises(grpc.aio.AioRpcError) as bidi:
            await read_slowly(echo["Chat"](silent()))
        with pytest.raises(grpc.aio.AioRpcError) as client_stream:
            await echo["Sum"](silent())
        with pytest.raises(grpc.aio.AioRpcError) as server_stream:
            await read_slowly(echo["Count"](String(value="1000000000")))
    for caught in (bidi, client_stream, server_stream):
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
