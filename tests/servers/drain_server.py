"""A real Helix server process for drain tests: the echo service plus the standard chain.

Prints `drain server listening on HOST:PORT` when ready, `sleep started` each time a
`Sleep` call begins (so a test knows a call is in flight without guessing how long that
takes), and serves until SIGTERM; then drains with the grace period given as the first
argument and prints `drained`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helix.common.aio import cancel_and_wait
from helix.common.config import Duration, ServerConfig
from helix.common.server import HelixServer, create_server

from echo_service import EchoServicer, binding


async def report_sleeps(servicer: EchoServicer) -> None:
    while True:
        await servicer.sleep_starts.get()
        print("sleep started", flush=True)


def ready(server: HelixServer) -> None:
    print(f"drain server listening on {server.address}", flush=True)


async def main(grace: float) -> None:
    servicer = EchoServicer()
    config = ServerConfig(host="127.0.0.1", port=0, grace_period=Duration(grace))
    server, _ = create_server(config, [binding(servicer)], security=None)
    reporter = asyncio.create_task(report_sleeps(servicer))
    try:
        await server.serve(on_ready=ready)
    finally:
        await cancel_and_wait([reporter])
    print("drained", flush=True)


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
