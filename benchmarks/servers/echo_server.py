"""Echo server for benchmarks. Modes:

- `bare`: plain grpc.aio with the echo service, nothing else;
- `chain`: Helix `create_server` without security (metrics, access log, limits, errors);
- `chain-logged`: the same with an INFO access-log line per call, as `helix up` writes;
- `secured`: the full chain: auth with cached token verification, per-principal rate
  limits (a generous quota), and request validation in the servicer.

Prints `listening PORT TOKEN` when ready (TOKEN is a valid bearer token for `secured`, `-`
otherwise); runs until terminated.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import grpc

from helix.common import logs
from helix.common.config import ServerConfig
from helix.common.server import create_server
from helix.security.setup import security_from_config
from helix.security.tokens import mint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from auth_support import ECHO_SCOPES
from echo_service import EchoServicer, binding


async def main(mode: str) -> None:
    service = binding(EchoServicer(validate=mode == "secured"))
    if mode == "bare":
        server = grpc.aio.server()
        service.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"listening {port} -", flush=True)
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
    await helix_server.serve(on_ready=lambda _: print(f"listening {port} {token}", flush=True))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
