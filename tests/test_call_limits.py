"""Concurrency limits a caller cannot monopolise (issue 10, item 2).

Streams are counted apart from unary calls, each principal gets at most a share of each
pool, a request stream must send its first message in time, and health says NOT_SERVING
while a pool is full. Every test opens more calls than a small limit allows.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

import helix.v1.oracle_pb2 as oracle_pb2
from helix.common.config import ConfigError, Duration, ServerConfig
from helix.common.interceptors import Call, MethodInfo
from helix.common.limits import CallPools
from helix.common.services import ORACLE, placeholder

from auth_support import KeyRing, make_keyring
from echo_service import EchoServicer, String, binding, stubs
from waiting import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
VERIFY_STREAM = "/helix.v1.OracleService/VerifyStream"


@pytest.fixture
def keyring(tmp_path) -> KeyRing:
    return make_keyring(tmp_path)


def sample(server: Any, name: str, **labels: str) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def started(server: Any, service: str, method: str, grpc_type: str) -> float:
    labels = {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": method}
    return sample(server, "grpc_server_started_total", **labels)


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status in {error}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def silent() -> AsyncIterator[Any]:
    """A request stream that never sends anything."""
    await asyncio.Event().wait()
    yield String(value="never")  # pragma: no cover


def chat_once(address: str, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    """One bidi Chat with the synchronous client (grpc.aio's client can report INTERNAL
    for a request stream the server ends early: grpc/grpc#36066)."""
    with grpc.insecure_channel(address) as channel:
        chat: Any = stubs(channel)["Chat"]  # type: ignore[arg-type]
        return ",".join(r.value for r in chat(iter([String(value="a")]), metadata=metadata))


async def test_streams_that_never_send_are_ended_at_the_first_message_deadline(
    start_server, channel_to
):
    # The attack of the issue in small: VerifyStream calls (the placeholder reads the first
    # request) and echo streams that never send, more of them than the server's limits.
    server = await start_server(
        [binding(EchoServicer()), placeholder(ORACLE, "tests")],
        max_concurrent_rpcs=4,
        max_concurrent_streams=4,
        # Long enough for the checks below to run while the silent streams sit.
        stream_first_message_timeout=Duration(2),
    )
    channel = channel_to(server)
    echo = stubs(channel)
    verify_stream = channel.stream_stream(
        VERIFY_STREAM,
        oracle_pb2.VerifyStreamRequest.SerializeToString,
        oracle_pb2.VerifyStreamResponse.FromString,
    )
    silent_calls = [verify_stream(silent(), timeout=30) for _ in range(3)]
    silent_calls.append(echo["Sum"](silent(), timeout=30))
    await eventually(
        lambda: (
            started(server, "helix.v1.OracleService", "VerifyStream", "BIDI_STREAM") == 3
            and started(server, "helix.test.EchoService", "Sum", "CLIENT_STREAM") == 1
        ),
        what="the silent streams to hold their slots",
    )
    # Streams are counted apart: unary calls are still served while the streams sit.
    assert (await echo["Echo"](String(value="x"), timeout=5)).value == "x"
    # A fifth stream finds the stream pool full.
    with pytest.raises(grpc.RpcError) as caught:
        await asyncio.to_thread(chat_once, server.address)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "TOO_MANY_CONCURRENT_CALLS"
    assert error_info(caught.value).metadata["pool"] == "stream"
    # The deadline ends the silent streams and frees their slots: streams are served again.
    for call in silent_calls:
        # (grpc.aio's client may say INTERNAL for a request stream: grpc/grpc#36066.)
        assert await call.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)
    assert await asyncio.to_thread(chat_once, server.address) == "A"
    assert sample(server, "helix_streams_first_message_timeouts_total") == 4
    assert sample(server, "helix_calls_in_flight", pool="stream") == 0
    timed_out = {
        "grpc_type": "BIDI_STREAM",
        "grpc_service": "helix.v1.OracleService",
        "grpc_method": "VerifyStream",
        "grpc_code": "DEADLINE_EXCEEDED",
    }
    assert sample(server, "grpc_server_handled_total", **timed_out) == 3


async def test_the_first_message_deadline_answers_with_its_reason(start_server):
    server = await start_server(
        [binding(EchoServicer())], stream_first_message_timeout=Duration(0.2)
    )
    release = threading.Event()

    def nothing() -> Iterator[String]:
        release.wait(10)
        yield from ()

    def silent_chat() -> None:
        with grpc.insecure_channel(server.address) as channel:
            chat: Any = stubs(channel)["Chat"]  # type: ignore[arg-type]
            list(chat(nothing(), timeout=10))

    try:
        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.to_thread(silent_chat)
    finally:
        release.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info = error_info(caught.value)
    assert info.reason == "FIRST_MESSAGE_TIMEOUT"
    assert info.metadata["timeout_seconds"] == "0.2"


async def test_a_stream_that_sends_in_time_is_not_cut(start_server, channel_to):
    server = await start_server(
        [binding(EchoServicer())], stream_first_message_timeout=Duration(0.3)
    )

    async def slow_words():
        for word in ("a", "b"):
            yield String(value=word)
            await asyncio.sleep(0.5)  # later messages may take their time

    replies = stubs(channel_to(server))["Chat"](slow_words(), timeout=10)
    assert [r.value async for r in replies] == ["A", "B"]


async def test_each_principal_gets_at_most_its_share_of_the_streams(
    start_server, channel_to, keyring
):
    server = await start_server(
        [binding(EchoServicer())],
        security=keyring.security(),
        max_concurrent_streams=4,
        concurrent_share_per_principal=0.5,
    )
    echo = stubs(channel_to(server))

    def as_(subject: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {keyring.token(sub=subject)}"),)

    # alice holds two streams (half of four) that wait for her next message.
    waiting = asyncio.Event()

    async def one_then_wait():
        yield String(value="hold")
        await waiting.wait()

    held = [echo["Chat"](one_then_wait(), metadata=as_("alice"), timeout=30) for _ in range(2)]
    for call in held:
        assert (await call.read()).value == "HOLD"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo["Count"](String(value="1"), metadata=as_("alice"), timeout=5).read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "TOO_MANY_CALLS_FROM_PRINCIPAL"
    assert info.metadata == {"limit": "2", "pool": "stream"}
    # Others are served, and alice's unary calls come from another pool.
    replies = echo["Count"](String(value="2"), metadata=as_("bob"), timeout=5)
    assert [r.value async for r in replies] == ["0", "1"]
    assert (await echo["Echo"](String(value="x"), metadata=as_("alice"), timeout=5)).value == "x"
    assert (
        sample(
            server,
            "helix_calls_refused_total",
            pool="stream",
            reason="TOO_MANY_CALLS_FROM_PRINCIPAL",
        )
        == 1
    )
    # When alice's streams end, her share is free again.
    waiting.set()
    for call in held:
        assert await call.code() == grpc.StatusCode.OK
    replies = echo["Count"](String(value="1"), metadata=as_("alice"), timeout=5)
    assert [r.value async for r in replies] == ["0"]


async def test_unauthenticated_streams_share_one_bounded_share(start_server, channel_to, keyring):
    # Health Watch needs no token: every such stream counts against "anonymous".
    server = await start_server(
        [binding(EchoServicer())],
        security=keyring.security(),
        max_concurrent_streams=4,
        concurrent_share_per_principal=0.5,
    )
    health = health_pb2_grpc.HealthStub(channel_to(server))
    watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
    for watch in watches:
        assert (await watch.read()).status == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Watch(health_pb2.HealthCheckRequest(), timeout=5).read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "TOO_MANY_CALLS_FROM_PRINCIPAL"
    # Probes (unary Check) are never refused.
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == SERVING
    for watch in watches:
        watch.cancel()


async def test_a_valid_token_gives_open_streams_their_own_share(start_server, channel_to, keyring):
    # Callers without a token fill the anonymous share (here with idle reflection
    # streams): a health Watch that sends a valid token counts in its own share.
    server = await start_server(
        [binding(EchoServicer())],
        security=keyring.security(),
        max_concurrent_streams=4,
        concurrent_share_per_principal=0.5,
    )
    channel = channel_to(server)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    idle = []
    for _ in range(2):
        call = reflection.ServerReflectionInfo(timeout=30)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.read()  # one answer, then neither sending nor reading
        idle.append(call)
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Watch(health_pb2.HealthCheckRequest(), timeout=5).read()
    assert error_info(caught.value).reason == "TOO_MANY_CALLS_FROM_PRINCIPAL"
    token = (("authorization", f"Bearer {keyring.token('probe')}"),)
    watch = health.Watch(health_pb2.HealthCheckRequest(), metadata=token, timeout=5)
    assert (await watch.read()).status == SERVING
    # A token that does not verify is not refused on an open method: it is anonymous.
    bad = (("authorization", "Bearer not-a-token"),)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Watch(health_pb2.HealthCheckRequest(), metadata=bad, timeout=5).read()
    assert error_info(caught.value).reason == "TOO_MANY_CALLS_FROM_PRINCIPAL"
    for call in (*idle, watch):
        call.cancel()


async def test_refusals_are_counted_by_pool(start_server, channel_to):
    servicer = EchoServicer()
    server = await start_server([binding(servicer)], max_concurrent_rpcs=1)
    echo = stubs(channel_to(server))
    slow = asyncio.ensure_future(echo["Sleep"](String(value="0.5"), timeout=5))
    await servicer.sleep_starts.get()
    assert sample(server, "helix_calls_in_flight", pool="unary") == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo["Echo"](String(value="x"), timeout=5)
    assert error_info(caught.value).metadata == {"limit": "1", "pool": "unary"}
    assert (await slow).value == "slept"
    refused = {"pool": "unary", "reason": "TOO_MANY_CONCURRENT_CALLS"}
    assert sample(server, "helix_calls_refused_total", **refused) == 1
    assert (
        sample(
            server,
            "helix_calls_refused_total",
            pool="stream",
            reason="TOO_MANY_CONCURRENT_CALLS",
        )
        == 0
    )
    assert sample(server, "helix_call_limit", pool="unary") == 1
    assert sample(server, "helix_call_limit", pool="stream") == 1024


async def test_health_is_not_serving_while_a_pool_is_full(start_server, channel_to):
    server = await start_server(
        [binding(EchoServicer())],
        max_concurrent_streams=2,
        stream_first_message_timeout=Duration(60),
    )
    channel = channel_to(server)
    health = health_pb2_grpc.HealthStub(channel)

    async def status(service: str = "") -> int:
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return answer.status

    def status_is(expected: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await status() == expected

        return check

    assert await status() == SERVING
    held = [stubs(channel)["Sum"](silent(), timeout=30) for _ in range(2)]
    await eventually(lambda: sample(server, "helix_server_saturated") == 1, what="saturation")
    await eventually(status_is(NOT_SERVING), what="health NOT_SERVING")
    # The statuses of the services themselves are left alone.
    assert await status("helix.test.EchoService") == SERVING
    for call in held:
        call.cancel()
    await eventually(lambda: sample(server, "helix_calls_in_flight", pool="stream") == 0)
    await eventually(lambda: sample(server, "helix_server_saturated") == 0, what="room again")
    await eventually(status_is(SERVING), what="health SERVING again")


async def test_a_stream_pool_with_room_is_not_reported_full():
    # Long-lived streams keep the stream pool nearly full: the server is not saturated as
    # long as it can take another stream (the quarter drain applies to unary calls only).
    pools = CallPools(unary=8, streams=8, stream_hold=0.2)
    changes: list[bool] = []
    pools.on_saturation = changes.append
    info = MethodInfo("/t.S/W", "t.S", "W", "SERVER_STREAM", False, True)
    pools.bind(info)
    calls = [Call(info, None) for _ in range(8)]  # type: ignore[arg-type]
    for call in calls:
        pools.before(call)
    assert changes == [True]
    pools.after(calls[0], grpc.StatusCode.OK)  # 7 of 8, within the hold: still full
    assert changes == [True]
    await eventually(lambda: changes == [True, False], what="room reported after the hold")
    pools.before(calls[0])
    assert changes == [True, False, True]


def test_saturation_is_reported_with_hysteresis():
    pools = CallPools(unary=8, streams=8)
    changes: list[bool] = []
    pools.on_saturation = changes.append
    info = MethodInfo("/t.S/M", "t.S", "M", "UNARY", False, False)
    pools.bind(info)
    calls = [Call(info, None) for _ in range(8)]  # type: ignore[arg-type]
    for call in calls:
        pools.before(call)
    assert changes == [True]
    # Calls ending and starting at the limit do not flap the status.
    for _ in range(3):
        pools.after(calls[0], grpc.StatusCode.OK)
        pools.before(calls[0])
    assert changes == [True]
    pools.after(calls[1], grpc.StatusCode.OK)
    assert changes == [True]  # 7 of 8
    pools.after(calls[2], grpc.StatusCode.OK)
    assert changes == [True, False]  # 6 of 8: drained by a quarter
    assert pools.saturated is False


@pytest.mark.parametrize(
    "settings",
    [
        {"max_concurrent_streams": 0},
        {"concurrent_share_per_principal": 0.0},
        {"concurrent_share_per_principal": 1.5},
        {"stream_first_message_timeout": Duration(0)},
        {"stream_write_timeout": Duration(7200)},
    ],
)
def test_bad_limit_settings_are_refused(settings):
    with pytest.raises(ConfigError):
        ServerConfig(**settings)
