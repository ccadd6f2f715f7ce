"""`helix probe`, the container health check: exit 0 only when a real server's health
service answers SERVING for the service asked about."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket

from helix.cli.main import main
from helix.common.health import NOT_SERVING

from echo_service import EchoServicer, binding
from harness import clean_env, run_helix

ECHO = "helix.test.EchoService"


async def probe(*args: str) -> tuple[int, str, str]:
    """`helix probe ARGS` in-process, off the event loop the server runs on."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(["probe", *args])

    status = await asyncio.to_thread(run)
    return status, out.getvalue(), err.getvalue()


async def test_serving_server_and_service_exit_0(start_server):
    server = await start_server([binding(EchoServicer())])
    status, out, _ = await probe("--address", server.address)
    assert (status, out.strip()) == (0, f"{server.address} the server: SERVING")
    status, out, _ = await probe("--address", server.address, "--service", ECHO)
    assert (status, out.strip()) == (0, f"{server.address} {ECHO}: SERVING")


async def test_not_serving_unknown_service_and_no_server_exit_1(start_server):
    server = await start_server([binding(EchoServicer())])
    status, out, _ = await probe("--address", server.address, "--service", "helix.v1.Nope")
    assert status == 1
    assert "NOT_FOUND" in out
    await server.health.set(ECHO, NOT_SERVING)
    status, out, _ = await probe("--address", server.address, "--service", ECHO)
    assert (status, out.strip()) == (1, f"{server.address} {ECHO}: NOT_SERVING")
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    status, out, _ = await probe("--address", address, "--timeout", "1s")
    assert status == 1
    assert "UNAVAILABLE" in out


async def test_bad_flags_exit_2_naming_the_flag():
    status, _, err = await probe("--address", "no-port")
    assert status == 2
    assert "--address" in err
    status, _, err = await probe("--timeout", "forever")
    assert status == 2
    assert "--timeout" in err
    status, _, err = await probe("--timeout", "2m")
    assert status == 2
    assert "within" in err


async def test_the_console_script_as_a_healthcheck_runs_it(start_server):
    server = await start_server([binding(EchoServicer())])
    status, out, err = await run_helix("probe", "--address", server.address, env=clean_env())
    assert status == 0, err
    assert out.strip().endswith("SERVING")
    await server.shutdown(0)
    status, _, _ = await run_helix("probe", "--address", server.address, env=clean_env())
    assert status == 1
