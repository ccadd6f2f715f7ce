"""`helix` as a user runs it: a real subprocess on a free port, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reflection_client import list_services

HELIX = str(Path(sys.executable).parent / "helix")
LISTENING = re.compile(rb"^helix listening on (127\.0\.0\.1:(\d+))$")


async def run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        HELIX, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_up_prints_its_address_serves_and_stops_on_sigterm(helix_env, tmp_path):
    data_dir = tmp_path / "suite"
    process = await asyncio.create_subprocess_exec(
        HELIX,
        "up",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        env=helix_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        match = LISTENING.match(line.strip())
        assert match, line
        address = match.group(1).decode()
        assert int(match.group(2)) > 0
        assert data_dir.is_dir()
        assert (data_dir.stat().st_mode & 0o777) == 0o700
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            services = await list_services(channel)
        for name in (
            "helix.v1.RegistryService",
            "helix.v1.GeneratorService",
            "helix.v1.OracleService",
            "helix.v1.OrchestratorService",
            "grpc.health.v1.Health",
        ):
            assert name in services
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
        assert '"message":"stopped"' in log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_version(helix_env):
    code, out, _ = await run("version", env=helix_env)
    assert code == 0
    assert re.match(r"^helix \d+\.\d+\.\d+", out)


async def test_bad_configuration_is_refused_with_the_setting_named(helix_env):
    env = dict(helix_env, HELIX_GRACE_PERIOD="forever")
    code, out, err = await run("up", "--port", "0", env=env)
    assert out == ""
    assert code == 2
    assert "configuration error: HELIX_GRACE_PERIOD: 'forever' is not a duration" in err
    assert "Traceback" not in err


async def test_bad_flag_is_refused(helix_env):
    code, _, err = await run("up", "--port", "eighty", env=helix_env)
    assert code == 2
    assert "--port: 'eighty' is not an integer" in err


async def test_port_in_use_is_a_clear_error(helix_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run("up", "--port", str(port), env=helix_env)
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


async def test_unknown_command_shows_usage(helix_env):
    code, _, err = await run("fly", env=helix_env)
    assert code == 2
    assert "usage: helix" in err


def test_helix_script_is_installed():
    assert os.access(HELIX, os.X_OK)


async def test_busy_metrics_port_is_a_clear_error(helix_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run("up", "--port", "0", "--metrics-port", str(port), env=helix_env)
    assert code == 1
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in err
    assert "Traceback" not in err
    assert "helix listening" not in out
