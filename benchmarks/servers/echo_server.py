"""Echo server for benchmarks: `bare` (plain grpc.aio), `chain` (Helix create_server) or
`chain-logged` (the same with an INFO access-log line per call, as `helix up` writes).

Prints `listening PORT` when ready; runs until terminated.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

from helix.common import logs
from helix.common.config import ServerConfig
from helix.common.server import create_server

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from echo_service import EchoServicer, binding


async def main(mode: str) -> None:
    service = binding(EchoServicer())
    if mode == "bare":
        server = grpc.aio.server()
        service.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"listening {port}", flush=True)
        await server.wait_for_termination()
        return
    if mode == "chain-logged":
        logs.configure("INFO")
    helix_server, port = create_server(ServerConfig(port=0), [service])
    await helix_server.serve(on_ready=lambda _: print(f"listening {port}", flush=True))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
