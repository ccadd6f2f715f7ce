"""`helix` as a user runs it: a real subprocess on a free port, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness import HELIX, ProcessError, run_command
from harness import run_helix as run
from reflection_client import list_services


async def test_up_prints_its_address_serves_and_stops_on_sigterm(helix_env, tmp_path, processes):
    data_dir = tmp_path / "suite"
    suite = await processes.start(
        [HELIX, "up", "--port", "0", "--data-dir", str(data_dir)], helix_env
    )
    assert suite.match is not None
    assert suite.match["role"] == "helix"
    assert suite.address.startswith("127.0.0.1:")
    assert suite.port > 0
    assert data_dir.is_dir()
    assert (data_dir.stat().st_mode & 0o777) == 0o700
    async with grpc.aio.insecure_channel(suite.address) as channel:
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
    assert await suite.stop() == 0
    assert '"message":"stopped"' in suite.stderr_text()


async def test_registry_serve_serves_the_registry_alone(helix_env, tmp_path, processes):
    data_dir = tmp_path / "registry"
    registry = await processes.start(
        [HELIX, "registry", "serve", "--port", "0", "--data-dir", str(data_dir)], helix_env
    )
    assert registry.match is not None
    assert registry.match["role"] == "helix registry"
    assert (data_dir.stat().st_mode & 0o777) == 0o700
    assert (data_dir / "registry.sqlite3").is_file()
    assert [p.suffix for p in (data_dir / "keys").iterdir()] == [".hs256"]
    async with grpc.aio.insecure_channel(registry.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "helix.v1.RegistryService"):
            request = health_pb2.HealthCheckRequest(service=service)
            answer = await health.Check(request, timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        services = await list_services(channel)
    assert "helix.v1.RegistryService" in services
    assert "helix.v1.GeneratorService" not in services
    # Tokens minted from its data dir are accepted: the CLI finds the key as for `helix up`.
    code, out, err = await run(
        "agents", "list", "--address", registry.address, "--data-dir", str(data_dir), env=helix_env
    )
    assert (code, out) == (0, ""), err
    assert "no agents" in err
    assert await registry.stop() == 0
    assert '"message":"stopped"' in registry.stderr_text()


async def test_a_server_that_dies_before_it_is_ready_is_a_clear_error(helix_env, processes):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ProcessError) as failed:
            await processes.start([HELIX, "registry", "serve", "--port", str(port)], helix_env)
    message = str(failed.value)
    assert "ended its output before its ready line" in message
    assert "exit status 1" in message
    assert f"cannot listen on 127.0.0.1:{port}" in message  # its stderr, shown


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


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
BUF = Path(__file__).resolve().parent.parent / "node_modules" / ".bin" / "buf"


@pytest.fixture
async def running_suite(clusters):
    """`helix up` as a subprocess on a free port (its generator not registered)."""
    return await clusters("embedded", generators=0)


async def buf_curl(address: str, method: str, body: str, *headers: str) -> tuple[int, str]:
    assert BUF.exists(), f"{BUF} is missing: `make test` installs it with npm ci"
    args = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", body]
    for header in headers:
        args += ["-H", header]
    code, out, err = await run_command([*args, f"http://{address}/{method}"])
    return code, out + err


async def test_minted_token_works_with_grpcurl_style_metadata(running_suite, helix_env):
    code, token, err = await run(
        "token",
        "mint",
        "--sub",
        "ops",
        "--scope",
        "agents.read",
        "--ttl",
        "10m",
        "--data-dir",
        str(running_suite.data_dir),
        env=helix_env,
    )
    assert code == 0, err
    token = token.strip()
    method = "helix.v1.RegistryService/GetAgent"
    body = '{"name": "agents/a1"}'
    _, anonymous = await buf_curl(running_suite.address_of("registry"), method, body)
    assert "unauthenticated" in anonymous
    _, authorised = await buf_curl(
        running_suite.address_of("registry"), method, body, f"authorization: Bearer {token}"
    )
    # Past authentication and the scope check, into the registry: no such agent.
    assert "not_found" in authorised, authorised
    _, wrong_scope = await buf_curl(
        running_suite.address_of("registry"),
        "helix.v1.RegistryService/DeregisterAgent",
        body,
        f"authorization: Bearer {token}",
    )
    assert "permission_denied" in wrong_scope


async def test_helix_call_mints_from_the_local_suite_key(running_suite, helix_env):
    library = Path(running_suite.data_dir) / "dnas"  # the embedded suite's default library
    shutil.copy(EXAMPLES / "sphere.yaml", library / "sphere.yaml")
    code, out, err = await run(
        "call",
        "helix.v1.GeneratorService/GetDna",
        "-d",
        '{"name": "dnas/sphere"}',
        "--address",
        running_suite.address_of("generator"),
        "--data-dir",
        str(running_suite.data_dir),
        env=helix_env,
    )
    assert code == 0, err
    document = json.loads(out)["dna"]
    assert document["name"] == "dnas/sphere"
    assert document["valid"] is True
    code, _, err = await run(
        "call",
        "helix.v1.GeneratorService/GetDna",
        "-d",
        '{"name": "Not A Name"}',
        "--address",
        running_suite.address_of("generator"),
        "--data-dir",
        str(running_suite.data_dir),
        env=helix_env,
    )
    assert code == 1
    assert "error: INVALID_ARGUMENT" in err
    assert "BadRequest" in err


async def test_helix_call_with_a_token_lacking_the_scope(running_suite, helix_env):
    _, token, _ = await run(
        "token",
        "mint",
        "--sub",
        "reader",
        "--scope",
        "dna.read",
        "--data-dir",
        str(running_suite.data_dir),
        env=helix_env,
    )
    env = dict(helix_env, HELIX_TOKEN=token.strip())
    code, _, err = await run(
        "call",
        "helix.v1.RegistryService/ListAgents",
        "--address",
        running_suite.address_of("registry"),
        env=env,
    )
    assert code == 1
    assert "error: PERMISSION_DENIED" in err
    assert "SCOPE_MISSING" in err
    assert token.strip() not in err


async def test_helix_call_without_credentials_says_how_to_get_them(helix_env, tmp_path):
    env = {k: v for k, v in helix_env.items() if k != "HELIX_DATA_DIR"}
    code, _, err = await run("call", "helix.v1.RegistryService/ListAgents", env=env)
    assert code == 2
    assert "no credentials: pass --token" in err
    env = dict(helix_env, HELIX_DATA_DIR=str(tmp_path / "empty"))
    code, _, err = await run("call", "helix.v1.RegistryService/ListAgents", env=env)
    assert code == 2
    assert "no signing key in" in err


async def test_helix_call_never_mints_for_a_remote_server(running_suite, helix_env):
    code, _, err = await run(
        "call",
        "helix.v1.RegistryService/ListAgents",
        "--address",
        "helix.example.com:443",
        "--data-dir",
        str(running_suite.data_dir),
        env=helix_env,
    )
    assert code == 2
    assert "no credentials" in err


async def test_helix_call_mints_only_the_scope_it_needs(running_suite, helix_env):
    code, out, err = await run(
        "call",
        "helix.v1.RegistryService/ListAgents",
        "--address",
        running_suite.address_of("registry"),
        "--data-dir",
        str(running_suite.data_dir),
        env=helix_env,
    )
    assert code == 0, err
    assert json.loads(out)["revision"] is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call", "helix.v1.Nope/Get"], "unknown service 'helix.v1.Nope'"),
        (["call", "helix.v1.RegistryService/Nope"], "has no method 'Nope'"),
        (["call", "helix.v1.RegistryService/GetAgent", "-d", "{bad"], "-d is not a valid"),
        (["call", "helix.v1.RegistryService/GetAgent", "-d", '{"nam": 1}'], "-d is not a valid"),
    ],
)
async def test_helix_call_bad_input(helix_env, args, message):
    code, _, err = await run(*args, "--token", "t", env=helix_env)
    assert code == 2
    assert message in err


async def test_token_mint_bad_input(helix_env, tmp_path):
    code, _, err = await run("token", "mint", "--sub", "x", "--scope", "everything", env=helix_env)
    assert code == 2
    assert "invalid choice: 'everything'" in err
    code, _, err = await run(
        "token",
        "mint",
        "--sub",
        "x",
        "--scope",
        "admin",
        "--ttl",
        "forever",
        "--data-dir",
        str(tmp_path),
        env=helix_env,
    )
    assert code == 2
    assert "--ttl: 'forever' is not a duration" in err
    code, _, err = await run(
        "token",
        "mint",
        "--sub",
        "x",
        "--scope",
        "admin",
        "--data-dir",
        str(tmp_path),
        env=helix_env,
    )
    assert code == 2
    assert "no signing key in" in err


async def test_token_inspect(helix_env, running_suite):
    _, token, _ = await run(
        "token",
        "mint",
        "--sub",
        "ops",
        "--scope",
        "runs.read",
        "--scope",
        "runs.write",
        "--data-dir",
        str(running_suite.data_dir),
        env=helix_env,
    )
    code, out, _ = await run("token", "inspect", token.strip(), env=helix_env)
    assert code == 0
    shown = json.loads(out)
    assert shown["claims"]["sub"] == "ops"
    assert shown["claims"]["scope"] == "runs.read runs.write"
    assert shown["verified"] is False
    code, _, err = await run("token", "inspect", "garbage", env=helix_env)
    assert code == 2
    assert "not a well-formed JWT" in err
