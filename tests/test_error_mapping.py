"""The error table as a client sees it: codes and google.rpc.Status details on the wire."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from helix.common.interceptors import Stage

from echo_service import EchoServicer, String, binding, stubs


def details_of(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """Decode the rich status of a failed call into {detail type name: message}."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    assert status.code == error.code().value[0]
    found: dict[str, Any] = {}
    for detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                assert kind.__name__ not in found, f"two {kind.__name__} details"
                found[kind.__name__] = message
    return found


async def call_fail(start_server, channel_to, kind: str) -> grpc.aio.AioRpcError:
    server = await start_server([binding(EchoServicer())])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs(channel_to(server))["Fail"](String(value=kind), timeout=5)
    return caught.value


async def test_invalid_argument_lists_every_field_violation(start_server, channel_to):
    error = await call_fail(start_server, channel_to, "invalid")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "agent.name" in str(error.details())
    found = details_of(error)
    info = found["ErrorInfo"]
    assert info.domain == "helix"
    assert info.reason == "INVALID_ARGUMENT"
    violations = [(v.field, v.description) for v in found["BadRequest"].field_violations]
    assert violations == [
        ("agent.name", "must not be empty"),
        ("agent.ttl", "must be within 5s..1h"),
    ]


async def test_resource_exhausted_says_when_to_retry(start_server, channel_to):
    error = await call_fail(start_server, channel_to, "exhausted")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details_of(error)
    delay = found["RetryInfo"].retry_delay
    assert (delay.seconds, delay.nanos) == (1, 500_000_000)
    assert found["QuotaFailure"].violations[0].subject == "principal:alice"
    assert found["ErrorInfo"].reason == "RESOURCE_EXHAUSTED"


async def test_not_found_carries_error_info_metadata(start_server, channel_to):
    error = await call_fail(start_server, channel_to, "not_found")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = details_of(error)["ErrorInfo"]
    assert dict(info.metadata) == {"name": "agents/x"}


async def test_unexpected_exception_is_internal_without_trace(start_server, channel_to, caplog):
    error = await call_fail(start_server, channel_to, "crash")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "secret-internal-detail" not in str(error.details())
    assert "Traceback" not in str(error.details())
    assert "RuntimeError" not in str(error.details())
    assert "request id" in str(error.details())
    assert details_of(error)["ErrorInfo"].reason == "INTERNAL"
    trailers = str(error.trailing_metadata())
    assert "secret-internal-detail" not in trailers


async def test_direct_abort_passes_through(start_server, channel_to):
    error = await call_fail(start_server, channel_to, "abort")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "aborted directly"


async def test_error_after_stream_messages_keeps_messages_and_details(start_server, channel_to):
    server = await start_server([binding(EchoServicer())])
    call = stubs(channel_to(server))["CountThenFail"](String(value=""), timeout=5)
    assert (await call.read()).value == "0"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    info = details_of(caught.value)["ErrorInfo"]
    assert info.metadata["compact_revision"] == "7"


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x08"])
async def test_undecodable_request_is_invalid_argument(start_server, channel_to, payload):
    server = await start_server([binding(EchoServicer())])
    raw = channel_to(server).unary_unary("/helix.test.EchoService/Echo")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(payload, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details_of(caught.value)
    assert found["ErrorInfo"].reason == "UNDECODABLE_REQUEST"
    assert found["BadRequest"].field_violations[0].field == "<request>"


async def test_undecodable_message_in_client_stream_is_invalid_argument(start_server, channel_to):
    server = await start_server([binding(EchoServicer())])
    raw = channel_to(server).stream_unary("/helix.test.EchoService/Sum")

    async def requests():
        yield String(value="1").SerializeToString()
        yield b"\xff\xff"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(requests(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_method_is_unimplemented(start_server, channel_to):
    server = await start_server([binding(EchoServicer())])
    raw = channel_to(server).unary_unary("/helix.test.EchoService/Nope")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_all_four_call_types_succeed_through_the_chain(start_server, channel_to):
    server = await start_server([binding(EchoServicer())])
    echo = stubs(channel_to(server))
    assert (await echo["Echo"](String(value="hi"), timeout=5)).value == "hi"
    assert [r.value async for r in echo["Count"](String(value="3"), timeout=5)] == ["0", "1", "2"]

    async def numbers():
        for i in (1, 2, 3):
            yield String(value=str(i))

    assert (await echo["Sum"](numbers(), timeout=5)).value == "6"

    async def words():
        for word in ("a", "b"):
            yield String(value=word)

    assert [r.value async for r in echo["Chat"](words(), timeout=5)] == ["A", "B"]


async def test_calls_over_the_concurrency_limit_are_refused_with_retry_info(
    start_server, channel_to
):
    servicer = EchoServicer()
    server = await start_server([binding(servicer)], max_concurrent_rpcs=2)
    echo = stubs(channel_to(server))
    slow = [asyncio.ensure_future(echo["Sleep"](String(value="0.5"), timeout=5)) for _ in range(2)]
    for _ in range(2):
        await servicer.sleep_starts.get()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo["Echo"](String(value="one too many"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details_of(caught.value)
    assert found["ErrorInfo"].reason == "TOO_MANY_CONCURRENT_CALLS"
    assert found["ErrorInfo"].metadata["limit"] == "2"
    assert "RetryInfo" in found
    assert [r.value for r in await asyncio.gather(*slow)] == ["slept", "slept"]
    assert (await echo["Echo"](String(value="room again"), timeout=5)).value == "room again"


async def test_health_is_exempt_from_the_concurrency_limit(start_server, channel_to):
    servicer = EchoServicer()
    server = await start_server([binding(servicer)], max_concurrent_rpcs=1)
    channel = channel_to(server)
    slow = asyncio.ensure_future(stubs(channel)["Sleep"](String(value="0.5"), timeout=5))
    await servicer.sleep_starts.get()
    health = health_pb2_grpc.HealthStub(channel)
    # The probe answers though the unary pool is full (the overall status "" then says
    # NOT_SERVING: tests/test_call_limits.py); the service's own status is untouched.
    request = health_pb2.HealthCheckRequest(service="helix.test.EchoService")
    for _ in range(3):
        answer = await health.Check(request, timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert (await slow).value == "slept"


@pytest.mark.parametrize("kind", ["odd_metadata", "nan_retry", "returns_dict"])
async def test_servicer_mistakes_never_leak_exception_text(start_server, channel_to, kind):
    error = await call_fail(start_server, channel_to, kind)
    assert "Unexpected" not in str(error.details())
    assert "<class" not in str(error.details())
    assert error.code() in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
    )
    assert details_of(error)["ErrorInfo"].domain == "helix"


async def test_a_huge_bad_request_is_capped_to_fit_the_trailers(start_server, channel_to):
    error = await call_fail(start_server, channel_to, "many_violations")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details_of(error)
    shown = len(found["BadRequest"].field_violations)
    assert 1 <= shown <= 50
    assert found["ErrorInfo"].metadata["violations_total"] == "2000"
    assert found["ErrorInfo"].metadata["violations_shown"] == str(shown)
    assert len(rpc_status.from_call(error).SerializeToString()) < 4096


class _ExplodingStage(Stage):
    def after(self, call, code):
        raise RuntimeError("after-secret")


async def test_a_failing_after_hook_does_not_leak_a_concurrency_slot(start_server, channel_to):
    server = await start_server(
        [binding(EchoServicer())], max_concurrent_rpcs=1, extra_stages=[_ExplodingStage()]
    )
    echo = stubs(channel_to(server))
    for _ in range(3):
        assert (await echo["Echo"](String(value="x"), timeout=5)).value == "x"
