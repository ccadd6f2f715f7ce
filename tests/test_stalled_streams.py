"""Streams whose client stops reading (issue 10, items 2 and 3).

A write that the client does not take within `stream_write_timeout` cancels the stream and
frees its slot (Generate capacity, a concurrency slot, a registry watch); a handler that
fails while a write waits ends the call at once; and a client's cancellation of a blocked
stream is never logged as a server error.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.common import errors, logs
from helix.common.config import Duration
from helix.common.server import ServiceBinding
from helix.common.streams import StreamControl, current_stream
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint

from echo_service import EchoServicer, binding, stubs
from registry_support import Suite, register_request, start_suite
from waiting import eventually

String = wrappers_pb2.StringValue
# What grpc.aio raises when the core fails a batch (not in grpc's type stubs).
ExecuteBatchError: Any = importlib.import_module("grpc._cython.cygrpc").ExecuteBatchError
SERVICE = "helix.test.FloodService"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
MiB = 1024 * 1024
# More than any HTTP/2 window a client grants without reading: this write must wait.
HUGE = 32 * MiB
UNLIMITED = [("grpc.max_receive_message_length", -1)]


class FloodServicer:
    """Streams that send more than a client that never reads can take."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.fail = asyncio.Event()
        self.stream: StreamControl | None = None

    async def flood(self, request: String, context: Any) -> AsyncIterator[String]:
        """Messages of `request.value` bytes, forever."""
        message = String(value="x" * int(request.value))
        while True:
            yield message

    async def flood_chat(
        self, requests: AsyncIterator[String], context: Any
    ) -> AsyncIterator[String]:
        """The bidi form: after the first request, messages of its size, forever."""
        async for request in requests:
            message = String(value="x" * int(request.value))
            while True:
                yield message

    async def huge_then_fail(self, request: String, context: Any) -> AsyncIterator[String]:
        """One message too large to be taken unread, then, when told, a failure."""
        yield String(value="x" * HUGE)
        self.waiting.set()
        await self.fail.wait()
        raise errors.ResourceExhausted("cut off, as a registry cuts off a slow watcher")

    async def huge_then_hold(self, request: String, context: Any) -> AsyncIterator[String]:
        """One message too large to be taken unread, one more (which the chain holds while
        the first waits), then nothing: the test ends the stream from outside."""
        self.stream = current_stream()
        yield String(value="x" * HUGE)
        self.waiting.set()
        yield String(value="held")
        await asyncio.Event().wait()

    async def one_then_end(self, request: String, context: Any) -> AsyncIterator[String]:
        """One message, then the servicer ends its own stream and returns at once."""
        yield String(value="first")
        stream = current_stream()
        assert stream is not None
        stream.end(errors.Unavailable("ended by the servicer itself", retry_after=1.0))


def flood_binding(servicer: FloodServicer) -> ServiceBinding:
    des, ser = String.FromString, String.SerializeToString
    handlers = {
        "Flood": grpc.unary_stream_rpc_method_handler(servicer.flood, des, ser),
        "FloodChat": grpc.stream_stream_rpc_method_handler(servicer.flood_chat, des, ser),
        "HugeThenFail": grpc.unary_stream_rpc_method_handler(servicer.huge_then_fail, des, ser),
        "HugeThenHold": grpc.unary_stream_rpc_method_handler(servicer.huge_then_hold, des, ser),
        "OneThenEnd": grpc.unary_stream_rpc_method_handler(servicer.one_then_end, des, ser),
    }
    generic = grpc.method_handlers_generic_handler(SERVICE, handlers)

    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((generic,))

    return ServiceBinding(SERVICE, add)


def flood_stubs(channel: grpc.aio.Channel) -> dict[str, Any]:
    des, ser = String.FromString, String.SerializeToString
    path = f"/{SERVICE}/"
    return {
        "Flood": channel.unary_stream(path + "Flood", ser, des),
        "FloodChat": channel.stream_stream(path + "FloodChat", ser, des),
        "HugeThenFail": channel.unary_stream(path + "HugeThenFail", ser, des),
        "HugeThenHold": channel.unary_stream(path + "HugeThenHold", ser, des),
        "OneThenEnd": channel.unary_stream(path + "OneThenEnd", ser, des),
    }


def sample(server: Any, name: str, **labels: str) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("kind", ["server_stream", "bidi"])
async def test_a_stream_nobody_reads_is_cancelled_after_the_write_timeout(
    start_server, caplog, kind
):
    caplog.set_level(logging.INFO)
    server = await start_server(
        [binding(EchoServicer()), flood_binding(FloodServicer())],
        max_concurrent_rpcs=1,
        max_concurrent_streams=1,
        stream_write_timeout=Duration(0.3),
    )
    # Its own channel: the stalled stream's data stays queued on that connection.
    stalled_channel = grpc.aio.insecure_channel(server.address, options=UNLIMITED)
    flood = flood_stubs(stalled_channel)
    if kind == "server_stream":
        stalled = flood["Flood"](String(value=str(MiB)), timeout=60)
    else:

        async def one_request():
            yield String(value=str(MiB))
            await asyncio.Event().wait()

        stalled = flood["FloodChat"](one_request(), timeout=60)
    method = "Flood" if kind == "server_stream" else "FloodChat"
    grpc_type = "SERVER_STREAM" if kind == "server_stream" else "BIDI_STREAM"
    await eventually(
        lambda: (
            sample(
                server,
                "grpc_server_started_total",
                grpc_type=grpc_type,
                grpc_service=SERVICE,
                grpc_method=method,
            )
            == 1
        ),
        what="the flood to hold the only stream slot",
    )
    # Nobody reads `stalled`. Once its write has waited 0.3 s, its slot serves others.
    async with grpc.aio.insecure_channel(server.address) as channel:
        count = stubs(channel)["Count"]

        async def served() -> bool:
            replies = count(String(value="2"), timeout=5)
            return [r.value async for r in replies] == ["0", "1"]

        await eventually(served, what="the stalled stream's slot", ignore=(grpc.aio.AioRpcError,))
    assert sample(server, "helix_streams_stalled_total") == 1
    stalled.cancel()
    await stalled_channel.close()
    (line,) = [r for r in caplog.records if r.getMessage().startswith("stream stalled")]
    assert line.levelno == logging.INFO
    assert line.method == f"/{SERVICE}/{method}"
    assert line.peer.startswith("ipv4:127.0.0.1:")
    assert not errors_logged(caplog)


async def test_a_client_that_reads_slowly_but_steadily_is_not_cancelled(start_server):
    server = await start_server([flood_binding(FloodServicer())], stream_write_timeout=Duration(2))
    async with grpc.aio.insecure_channel(server.address, options=UNLIMITED) as channel:
        call = flood_stubs(channel)["Flood"](String(value=str(MiB)), timeout=30)
        # Slower than the server writes (its writes wait), each read making room for the
        # next write well within the timeout (with room for a loaded machine).
        for _ in range(40):
            await call.read()
            await asyncio.sleep(0.05)
        call.cancel()
    assert sample(server, "helix_streams_stalled_total") == 0


async def test_a_handler_failing_while_its_write_waits_ends_the_call_at_once(start_server):
    servicer = FloodServicer()
    server = await start_server(
        [flood_binding(servicer)],
        max_send_message_bytes=64 * MiB,
        stream_write_timeout=Duration(60),
    )
    async with grpc.aio.insecure_channel(server.address, options=UNLIMITED) as channel:
        call = flood_stubs(channel)["HugeThenFail"](String(value="0"), timeout=60)
        # The chain fetches the next response while the huge one waits for the client.
        await eventually(servicer.waiting.is_set, what="the handler to be asked for more")
        assert sample(server, "helix_calls_in_flight", pool="stream") == 1
        servicer.fail.set()
        # The call ends now, not when the 60 s write timeout would end it.
        await eventually(
            lambda: sample(server, "helix_calls_in_flight", pool="stream") == 0,
            within=5,
            what="the failed stream to free its slot",
        )
        handled = {
            "grpc_type": "SERVER_STREAM",
            "grpc_service": SERVICE,
            "grpc_method": "HugeThenFail",
            "grpc_code": "RESOURCE_EXHAUSTED",
        }
        assert sample(server, "grpc_server_handled_total", **handled) == 1
        # A client that reads on gets the data, then the status.
        assert len((await call.read()).value) == HUGE
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_stream_ended_from_outside_ends_at_once_even_while_its_write_waits(
    start_server,
):
    # What a registry cutting off a slow watcher needs: end the stream now, whatever the
    # chain is doing (here: holding the next response while a write waits for the client).
    servicer = FloodServicer()
    server = await start_server(
        [flood_binding(servicer)],
        max_send_message_bytes=64 * MiB,
        stream_write_timeout=Duration(60),
    )
    async with grpc.aio.insecure_channel(server.address, options=UNLIMITED) as channel:
        call = flood_stubs(channel)["HugeThenHold"](String(value="0"), timeout=60)
        await eventually(servicer.waiting.is_set, what="the chain to hold the next response")
        assert servicer.stream is not None
        servicer.stream.end(errors.ResourceExhausted("cut off from outside", retry_after=1))
        servicer.stream.end(errors.Unavailable("a second end changes nothing"))
        await eventually(
            lambda: sample(server, "helix_calls_in_flight", pool="stream") == 0,
            within=5,
            what="the ended stream to free its slot",
        )
        # A client that reads on gets what was written, then the status `end` was given.
        assert len((await call.read()).value) == HUGE
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "cut off from outside" in (caught.value.details() or "")
    assert sample(server, "helix_streams_stalled_total") == 0


async def test_a_stream_the_servicer_ends_itself_ends_with_its_error(start_server):
    # end() from the servicer's own task, then the generator returns without awaiting:
    # the call must end with that error, not OK on a stream cut short.
    server = await start_server([flood_binding(FloodServicer())])
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = flood_stubs(channel)["OneThenEnd"](String(value="0"), timeout=10)
        assert (await call.read()).value == "first"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "ended by the servicer itself" in (caught.value.details() or "")
    handled = {"grpc_type": "SERVER_STREAM", "grpc_service": SERVICE, "grpc_method": "OneThenEnd"}
    await eventually(
        lambda: (
            sample(server, "grpc_server_handled_total", grpc_code="UNAVAILABLE", **handled) == 1
        ),
        what="the call counted with the servicer's error",
    )
    assert sample(server, "grpc_server_handled_total", grpc_code="OK", **handled) == 0
    assert sample(server, "helix_calls_in_flight", pool="stream") == 0


# --- Generate (item 3) ---------------------------------------------------------------------


@pytest.fixture
async def generator_suite(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Suite]]]:
    """Start the embedded suite serving the example DNAs with a capacity of 8 streams."""
    started: list[Suite] = []

    async def start(write_timeout: float) -> Suite:
        library = tmp_path / "dnas"
        shutil.copytree(EXAMPLES, library)
        suite = await start_suite(
            tmp_path / "data",
            generator_dna_dir=library,
            generator_capacity=8,
            rate_data=1e6,
            stream_write_timeout=Duration(write_timeout),
        )
        started.append(suite)
        return suite

    yield start
    for suite in started:
        await suite.close()


def generator_stub(suite: Suite, channel_options: list[tuple[str, Any]] | None = None) -> Any:
    token = mint(suite.server.security.signer, "mallory", ("generate",), 3600)
    channel = grpc.aio.insecure_channel(
        suite.server.address,
        options=channel_options or [],
        interceptors=bearer_interceptors(StaticTokenSource(token)),
    )
    suite.channels.append(channel)
    return generator_pb2_grpc.GeneratorServiceStub(channel)


GENERATE = {"grpc_type": "SERVER_STREAM", "grpc_service": "helix.v1.GeneratorService"}


async def test_unread_generate_streams_give_their_capacity_back(generator_suite):
    suite = await generator_suite(write_timeout=0.5)
    # The attack: as many never-read Generate streams of a million as the capacity.
    request = generator_pb2.GenerateRequest(dna_name="dnas/tsp", count=1_000_000, seed=1)
    hogs = [generator_stub(suite).Generate(request, timeout=120) for _ in range(8)]
    await eventually(
        lambda: (
            sample(suite.server, "grpc_server_started_total", **GENERATE, grpc_method="Generate")
            == 8
        ),
        what="every stream to start",
    )
    # Once their writes have waited the write timeout, the generator serves others again.
    honest = generator_stub(suite)

    async def served() -> bool:
        small = generator_pb2.GenerateRequest(dna_name="dnas/sphere", count=1, seed=1)
        responses = [r async for r in honest.Generate(small, timeout=10)]
        return sum(len(r.candidates) for r in responses) == 1

    await eventually(served, within=30, what="a free stream", ignore=(grpc.aio.AioRpcError,))
    await eventually(
        lambda: sample(suite.server, "helix_streams_stalled_total") == 8,
        within=30,
        what="every hog cancelled",
    )
    for hog in hogs:
        hog.cancel()


async def test_cancelling_a_blocked_generate_stream_is_not_a_server_error(generator_suite, caplog):
    caplog.set_level(logging.DEBUG, logger="grpc")
    # A write timeout far away: the clients cancel while the writes wait.
    suite = await generator_suite(write_timeout=600)
    request = generator_pb2.GenerateRequest(dna_name="dnas/tsp", count=1_000_000, seed=1)
    calls = [generator_stub(suite).Generate(request, timeout=120) for _ in range(4)]
    last = -1.0

    def stopped_sending() -> bool:
        nonlocal last
        sent = sample(
            suite.server, "grpc_server_msg_sent_total", **GENERATE, grpc_method="Generate"
        )
        unchanged, last = sent == last and sent > 0, sent
        return unchanged

    await eventually(stopped_sending, interval=0.1, what="the writes to wait for the clients")
    for call in calls:
        call.cancel()
    handled = {**GENERATE, "grpc_method": "Generate", "grpc_code": "CANCELLED"}
    await eventually(
        lambda: sample(suite.server, "grpc_server_handled_total", **handled) == 4,
        what="four cancelled streams",
    )
    assert not errors_logged(caplog)


# --- WatchAgents (item 2: the cut-off watcher) -----------------------------------------------


async def cut_off_watch_frees_its_slot(
    data_dir: Path, *, buffer: int, batch: int, write_timeout: float, within: float
) -> None:
    """A watch nobody reads, then a burst of large registrations it cannot buffer: wait
    (at most `within` seconds) until its stream slot is free again."""
    suite = await start_suite(
        data_dir,
        registry_watch_buffer=buffer,
        registry_max_batch=batch,
        stream_write_timeout=Duration(write_timeout),
        # The burst runs until the cut-off, which may take more agents than one principal's
        # quota when the transport's flow-control window has grown (a busy machine).
        registry_max_agents_per_principal=10_000,
    )
    try:
        writer = suite.stub("alice", ("agents.write",))
        token = mint(suite.server.security.signer, "eve", ("agents.read",), 60)
        reader_channel = grpc.aio.insecure_channel(
            suite.server.address,
            options=UNLIMITED,
            interceptors=bearer_interceptors(StaticTokenSource(token)),
        )
        suite.channels.append(reader_channel)
        reader = registry_pb2_grpc.RegistryServiceStub(reader_channel)
        watch = reader.WatchAgents(registry_pb2.WatchAgentsRequest(), timeout=120)
        await eventually(
            lambda: sample(suite.server, "helix_calls_in_flight", pool="stream") == 1,
            what="the watch to start",
        )
        labels = {f"label{i:02d}": "v" * 60 for i in range(60)}  # about 4 KiB per event
        for start in range(0, 5000, 50):
            await asyncio.gather(
                *(
                    writer.RegisterAgent(register_request(f"agent-{i}", **labels), timeout=10)
                    for i in range(start, start + 50)
                )
            )
            if sample(suite.server, "helix_registry_watchers_cut_off_total"):
                break
        assert sample(suite.server, "helix_registry_watchers_cut_off_total") == 1
        await eventually(
            lambda: sample(suite.server, "helix_calls_in_flight", pool="stream") == 0,
            within=within,
            what="the cut-off watch to free its slot",
        )
        watch.cancel()
    finally:
        await suite.close()


async def test_a_cut_off_watcher_frees_its_slot_within_the_write_timeout(tmp_path):
    # The write timeout ends a stream whose client reads nothing whatever the servicer
    # does; the registry also ends a cut-off watch at once (the test below).
    await cut_off_watch_frees_its_slot(
        tmp_path / "data", buffer=64, batch=4, write_timeout=1, within=10
    )


async def test_any_cut_off_watcher_frees_its_slot_at_once(tmp_path):
    # With a larger buffer the chain may already hold the watch's next response when the
    # cut-off comes: the registry tells the chain (current_stream().end), so a 60 s write
    # timeout never comes into it.
    await cut_off_watch_frees_its_slot(
        tmp_path / "data", buffer=64, batch=4, write_timeout=60, within=10
    )


# --- the log of a call the client ended (item 3) --------------------------------------------


def test_a_batch_failed_by_a_client_leaving_is_logged_as_info_without_traceback():
    # What grpc.aio logs when the core fails a batch of a call whose client has just gone
    # and grpc.aio has not noticed yet (a final status after a client's cancel, say).
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    try:
        core = logging.getLogger("grpc._cython.cygrpc")
        method = "[/helix.v1.GeneratorService/Generate]"
        for failure in ('Failed "execute_batch": (<SendStatusFromServerOperation>,)', None):
            try:
                raise ExecuteBatchError(failure or "Failed grpc_call_start_batch: 8")
            except ExecuteBatchError:
                core.exception("ExecuteBatchError raised in core by servicer method " + method)
    finally:
        logs.shutdown()
    gone, refused = (json.loads(line) for line in stream.getvalue().splitlines())
    assert gone["level"] == "INFO"
    assert gone["message"] == f"call ended by the client while the server answered {method}"
    assert "exception" not in gone
    # A batch the core refused to start is a programming error: it stays an ERROR.
    assert refused["level"] == "ERROR"
    assert "grpc_call_start_batch" in refused["exception"]
