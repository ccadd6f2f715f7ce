"""What tracing costs a unary call: the echo service (tests/echo_service.py) on a Helix
server and a `create_channel` client in this one process, so both sides' spans count,
with tracing off and on (an SDK TracerProvider, a BatchSpanProcessor and an exporter that
drops what it is given: the instrumentation's cost, not a collector's).

Sequential calls on loopback, on uvloop by default (as the servers); rounds alternate
off/on; the report gives the median µs per call of each and the ratio on/off. Not part of
`make bench` (docs/tracing.md).

    python benchmarks/tracing_cost.py [--calls 500] [--rounds 3] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from helix.common import tracing  # noqa: E402
from helix.common.channel import create_channel  # noqa: E402
from helix.common.config import ServerConfig, run_loop  # noqa: E402
from helix.common.server import create_server  # noqa: E402

from echo_service import SERVICE, EchoServicer, String, binding  # noqa: E402


class Dropping(SpanExporter):
    """Counts the spans it is given and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def per_call(calls: int) -> float:
    """µs per sequential unary call through a server and channel built now."""
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=None)
    server, port = create_server(config, [binding(EchoServicer())], security=None)
    await server.start()
    channel = create_channel(f"127.0.0.1:{port}")
    try:
        echo: Any = channel.unary_unary(
            f"/{SERVICE}/Echo",
            request_serializer=String.SerializeToString,
            response_deserializer=String.FromString,
        )
        request = String(value="x" * 64)
        for _ in range(50):  # warm up: connection, caches
            await echo(request)
        started = time.perf_counter()
        for _ in range(calls):
            await echo(request)
        return (time.perf_counter() - started) / calls * 1e6
    finally:
        await channel.close()
        await server.shutdown(0)


async def main(calls: int, rounds: int) -> dict[str, Any]:
    exporter = Dropping()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    off: list[float] = []
    on: list[float] = []
    try:
        for _ in range(rounds):
            tracing.reset()
            assert tracing.current() is None, "unset the OTEL_* variables to measure 'off'"
            off.append(await per_call(calls))
            tracing.install(provider)
            on.append(await per_call(calls))
    finally:
        tracing.reset()
        provider.shutdown()
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "off_us_per_call": round(statistics.median(off), 1),
        "on_us_per_call": round(statistics.median(on), 1),
        "ratio_on_off": round(statistics.median(on) / statistics.median(off), 3),
        "spans_exported": exporter.spans,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    report = run_loop(main(args.calls, args.rounds), args.loop) | {"loop": args.loop}
    print(json.dumps(report, indent=2))
