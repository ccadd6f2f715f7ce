"""Echo server for benchmarks. Modes:

- `bare`: plain grpc.aio with the echo service, nothing else;
- `chain`: Helix `create_server` without security (metrics, access log, limits, errors);
- `chain-logged`: the same with an INFO access-log line per call, as `helix up` writes;
- `secured`: the full chain: auth with cached token verification, per-principal rate
  limits (a generous quota), and request validation in the servicer.

Runs on uvloop by default, as `helix up` does (`--loop asyncio` for asyncio's own loop):
a baseline measured on another event loop than the server it is compared with would
credit or charge the server with the loop's difference.

Prints `echo server listening on HOST:PORT` when ready, then `token TOKEN` (a valid bearer
token for `secured`, `-` otherwise) and `event loop uvloop|asyncio` (the loop it runs on:
uvloop may be missing); runs until terminated.

    python benchmarks/servers/echo_server.py MODE [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import grpc

from helix.common import logs
from helix.common.config import ServerConfig, run_loop
from helix.common.server import create_server
from helix.security.setup import security_from_config
from helix.security.tokens import mint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from auth_support import ECHO_SCOPES
from echo_service import EchoServicer, binding

MODES = ("bare", "chain", "chain-logged", "secured")
LOOPS = ("uvloop", "asyncio")


def announce(port: int, token: str) -> None:
    loop = (
        "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    )
    print(f"echo server listening on 127.0.0.1:{port}", flush=True)
    print(f"token {token}", flush=True)
    print(f"event loop {loop}", flush=True)


async def main(mode: str) -> None:
    service = binding(EchoServicer(validate=mode == "secured"))
    if mode == "bare":
        server = grpc.aio.server()
        service.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        announce(port, "-")
        await server.wait_for_termination()
        return
    if mode == "chain-logged":
        logs.configure("INFO")
    config = ServerConfig(port=0, rate_read=1e6, rate_write=1e6, rate_data=1e6)
    security, token = None, "-"
    if mode == "secured":
        keys = Path(tempfile.mkdtemp(prefix="helix-bench-keys-"))
        security = security_from_config(config, embedded_key_dir=keys, extra_scopes=ECHO_SCOPES)
        assert security.signer is not None
        token = mint(security.signer, "bench", ["agents.read"], 3600)
    helix_server, port = create_server(config, [service], security=security)
    await helix_server.serve(on_ready=lambda _: announce(port, token))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--loop", choices=LOOPS, default="uvloop", help="event loop to run on")
    args = parser.parse_args()
    run_loop(main(args.mode), args.loop)
