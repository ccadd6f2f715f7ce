"""JSON logs: one object per line per call, with method, principal, request id, status, time."""

from __future__ import annotations

import io
import json
import re

import grpc
import pytest

from helix.common import logs

from echo_service import EchoServicer, String, binding, stubs
from waiting import eventually


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    logs.configure("DEBUG", stream=stream)
    yield stream
    logs.shutdown()


async def lines_of(stream: io.StringIO, count: int) -> list[dict]:
    await eventually(lambda: stream.getvalue().count("\n") >= count, what=f"{count} log lines")
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_each_call_logs_one_json_line(start_server, channel_to, log_stream):
    server = await start_server([binding(EchoServicer())])
    echo = stubs(channel_to(server))
    await echo["Echo"](String(value="x"), metadata=(("x-request-id", "req-42"),), timeout=5)
    records = [r for r in await lines_of(log_stream, 1) if r["message"] == "rpc finished"]
    assert len(records) == 1
    record = records[0]
    assert record["method"] == "/helix.test.EchoService/Echo"
    assert record["request_id"] == "req-42"
    assert record["status"] == "OK"
    assert record["principal"] == "anonymous"
    assert record["grpc_type"] == "UNARY"
    assert record["duration_ms"] >= 0
    assert record["level"] == "DEBUG"


async def test_malformed_request_id_is_replaced(start_server, channel_to, log_stream):
    server = await start_server([binding(EchoServicer())])
    echo = stubs(channel_to(server))
    await echo["Echo"](
        String(value="x"), metadata=(("x-request-id", "bad id with junk and {braces} " + "x" * 80),)
    )
    record = next(r for r in await lines_of(log_stream, 1) if r["message"] == "rpc finished")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", record["request_id"])
    assert "junk" not in record["request_id"]


async def test_internal_error_is_logged_with_traceback_and_request_id(
    start_server, channel_to, log_stream
):
    server = await start_server([binding(EchoServicer())])
    echo = stubs(channel_to(server))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo["Fail"](String(value="crash"), metadata=(("x-request-id", "req-7"),))
    assert "req-7" in str(caught.value.details())
    records = await lines_of(log_stream, 2)
    failure = next(r for r in records if r["message"].startswith("unexpected error"))
    assert failure["request_id"] == "req-7"
    assert "secret-internal-detail" in failure["exception"]
    finished = next(r for r in records if r["message"] == "rpc finished")
    assert finished["status"] == "INTERNAL"
    assert finished["level"] == "WARNING"


def test_full_buffer_drops_instead_of_blocking():
    stream = io.StringIO()
    sink = logs.LineSink(stream, capacity=2, flush_interval=60)
    for i in range(5):
        sink.put(f"line {i}")
    assert sink.dropped == 3
    sink.close()
    assert stream.getvalue() == "line 0\nline 1\n"


def test_records_outside_calls_are_json_too(log_stream):
    import logging

    logging.getLogger("helix.test").warning("disk %s is slow", "sda", extra={"ms": 12})
    logs.shutdown()
    (record,) = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert record["message"] == "disk sda is slow"
    assert record["ms"] == 12
    assert record["level"] == "WARNING"
    assert "request_id" not in record


async def test_cancelled_stream_is_logged_as_cancelled(start_server, channel_to, log_stream):
    server = await start_server([binding(EchoServicer())])
    call = stubs(channel_to(server))["Count"](String(value="1000000"), timeout=5)
    await call.read()
    call.cancel()

    def finished() -> list[dict]:
        records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
        return [r for r in records if r["message"] == "rpc finished"]

    (line,) = await eventually(finished, what="the access line of the cancelled call")
    assert line["status"] == "CANCELLED"
    assert line["peer"].startswith("ipv4:127.0.0.1:")


def test_closed_sink_counts_late_lines_and_flushed_the_rest():
    stream = io.StringIO()
    sink = logs.LineSink(stream, flush_interval=60)
    sink.put("before")
    sink.close()
    sink.put("after")
    assert stream.getvalue() == "before\n"
    assert sink.dropped == 1


async def test_at_info_only_failed_calls_are_logged(start_server, channel_to):
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    try:
        server = await start_server([binding(EchoServicer())])
        echo = stubs(channel_to(server))
        await echo["Echo"](String(value="fine"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await echo["Fail"](String(value="not_found"), timeout=5)
        records = await lines_of(stream, 1)
    finally:
        logs.shutdown()
    finished = [r for r in records if r["message"] == "rpc finished"]
    assert [(r["method"].rpartition("/")[2], r["status"], r["level"]) for r in finished] == [
        ("Fail", "NOT_FOUND", "INFO")
    ]
