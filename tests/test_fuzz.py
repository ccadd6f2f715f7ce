"""Random requests to every RPC of the embedded suite (the helix.v1 services, health and
reflection) never produce INTERNAL or kill it.

The suite runs for real in a thread of its own; Hypothesis drives a synchronous client
with random field values (huge strings, NaN, unknown enums, deep nesting), oversized
repeated fields, and random bytes sent as the request payload.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helix.common.config import Duration
from helix.common.services import SERVICE_DESCRIPTORS
from helix.security.tokens import mint
from helix.suite import EmbeddedConfig, create_embedded

from proto_strategies import messages

SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
# Every service the suite exposes: helix.v1's, and health and reflection (open to anyone).
EXPOSED = [
    *SERVICE_DESCRIPTORS,
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
METHODS = [(s.full_name, m) for s in EXPOSED for m in s.methods]
IDS = [f"{s.rpartition('.')[2]}.{m.name}" for s, m in METHODS]
FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)


class Suite:
    """An embedded suite served from a background thread's event loop."""

    def __init__(self, config: EmbeddedConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._config = config
        self.server: Any = None
        self._thread = threading.Thread(target=self._run, name="suite", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the suite did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self.server, _ = create_embedded(self._config)
            await self.server.start()
            self._ready.set()
            await self.server.wait_for_termination()

        self._loop.run_until_complete(main())

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self.server.shutdown, 0)
        self._thread.join(timeout=20)
        if not self._thread.is_alive():
            # Closed here, not left to the garbage collector: an unclosed loop's warning
            # would surface in whichever later test happens to collect it.
            self._loop.close()


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Iterator[tuple[grpc.Channel, tuple[tuple[str, str], ...]]]:
    config = EmbeddedConfig(
        port=0,
        data_dir=tmp_path_factory.mktemp("fuzz"),
        grace_period=Duration(1),
        rate_read=1e6,
        rate_write=1e6,
        rate_data=1e6,
        # Its heartbeats would use the `random` module while Hypothesis draws (another thread).
        generator_self_register=False,
    )
    running = Suite(config)
    token = mint(running.server.security.signer, "fuzzer", ["admin"], 3600)
    with grpc.insecure_channel(running.server.address) as channel:
        yield channel, (("authorization", f"Bearer {token}"),)
        # Whatever subset ran: the random calls got past auth into the servicers.
        for name, codes in CODES_SEEN.items():
            assert codes - {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}, (
                name
            )
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    running.stop()


def call_raw(channel: grpc.Channel, service: str, method: Any, payload: bytes, metadata) -> None:
    """Send `payload` as the request bytes; raise the RpcError if the call fails."""
    path = f"/{service}/{method.name}"
    kind = (method.client_streaming, method.server_streaming)
    raw: Any = channel  # raw bytes in and out: no (de)serializers, so untyped callables
    if kind == (False, False):
        raw.unary_unary(path)(payload, metadata=metadata, timeout=10)
    elif kind == (False, True):
        # Streams such as WatchAgents may rightly wait for events that never come: a short
        # deadline ends them (DEADLINE_EXCEEDED is not a fault).
        for _ in raw.unary_stream(path)(payload, metadata=metadata, timeout=0.2):
            pass
    elif kind == (True, False):
        raw.stream_unary(path)(iter([payload]), metadata=metadata, timeout=10)
    else:
        for _ in raw.stream_stream(path)(iter([payload]), metadata=metadata, timeout=2):
            pass


CODES_SEEN: dict[str, set[grpc.StatusCode]] = {}


def assert_no_server_fault(channel, service, method, payload, metadata) -> None:
    code, details = grpc.StatusCode.OK, ""
    try:
        call_raw(channel, service, method, payload, metadata)
    except grpc.RpcError as error:
        code, details = error.code(), str(error.details())
    CODES_SEEN.setdefault(method.full_name, set()).add(code)
    assert code not in SERVER_FAULTS, (method.name, code, details)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=IDS)
@FUZZ
@given(data=st.data())
def test_random_messages_never_fault(suite, service, method, data) -> None:
    channel, metadata = suite
    request = data.draw(messages(method.input_type), label=method.name)
    assert_no_server_fault(channel, service, method, request.SerializeToString(), metadata)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=IDS)
@FUZZ
@given(payload=st.binary(max_size=2048))
def test_random_bytes_never_fault(suite, service, method, payload) -> None:
    channel, metadata = suite
    assert_no_server_fault(channel, service, method, payload, metadata)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=IDS)
def test_oversized_repeated_fields_are_refused_cleanly(suite, service, method) -> None:
    channel, metadata = suite
    request = message_factory.GetMessageClass(method.input_type)()
    repeated = [f for f in method.input_type.fields if f.is_repeated]
    for field in repeated:
        values = getattr(request, field.name)
        if field.type == field.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            for i in range(20_001):
                values[str(i)]
        elif field.type == field.TYPE_MESSAGE:
            for _ in range(20_001):
                values.add()
        else:
            values.extend([field.default_value] * 20_001)
    assert_no_server_fault(channel, service, method, request.SerializeToString(), metadata)
