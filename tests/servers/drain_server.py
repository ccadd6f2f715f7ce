"""A real Helix server process for drain tests: the echo service plus the standard chain.

Prints `listening PORT` when ready and serves until SIGTERM, then drains with the grace
period given as the first argument.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helix.common.config import Duration, ServerConfig
from helix.common.server import create_server

from echo_service import EchoServicer, binding


async def main(grace: float) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, grace_period=Duration(grace))
    server, port = create_server(config, [binding(EchoServicer())], security=None)
    await server.serve(on_ready=lambda _: print(f"listening {port}", flush=True))
    print("drained", flush=True)


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
