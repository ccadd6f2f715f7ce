"""`helix call` finding methods, open methods without credentials, JSON names; `| head`;
`helix up --help` defaults; `agents watch --timeout`. Real subprocesses, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from helix.cli.methods import resolve_method
from helix.common.config import ConfigError

from harness import HELIX
from harness import run_helix as run


@pytest.fixture
async def suite(clusters):
    """`helix up` as a subprocess (its generator not registered)."""
    return await clusters("embedded", generators=0)


def no_credentials(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("HELIX_DATA_DIR", "HELIX_TOKEN")}


# --- | head -------------------------------------------------------------------------------


async def run_into_closed_pipe(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `helix ARGS` with stdout a pipe nobody reads (as `| head` leaves it once head
    has exited): (exit status, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = await asyncio.create_subprocess_exec(
            HELIX,
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.mark.parametrize("unbuffered", [True, False])
@pytest.mark.parametrize("args", [["version"], ["call", "--list"], ["up", "--help"]])
async def test_a_closed_stdout_ends_the_command_quietly(helix_env, args, unbuffered):
    env = dict(helix_env)
    if not unbuffered:
        env.pop("PYTHONUNBUFFERED", None)
    code, err = await run_into_closed_pipe(*args, env=env)
    assert (code, err) == (0, "")


# --- helix call: finding methods ------------------------------------------------------------


async def test_call_list_shows_every_method(helix_env):
    code, out, err = await run("call", "--list", env=no_credentials(helix_env))
    assert code == 0, err
    methods = out.splitlines()
    for expected in (
        "helix.v1.RegistryService/ListAgents",
        "helix.v1.GeneratorService/Generate",
        "helix.v1.OrchestratorService/CreateRun",
        "grpc.health.v1.Health/Check",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ):
        assert expected in methods
    assert methods == sorted(methods)


async def test_call_describe_shows_types_scope_and_documentation(helix_env):
    code, out, err = await run("call", "--describe", "ListAgents", env=no_credentials(helix_env))
    assert code == 0, err
    assert out.startswith("helix.v1.RegistryService/ListAgents (unary, scope agents.read)\n")
    assert "request helix.v1.ListAgentsRequest" in out
    assert "response helix.v1.ListAgentsResponse" in out
    assert re.search(r"^  page_size int32\n    \S", out, re.MULTILINE), out  # documented
    code, out, _ = await run("call", "--describe", "grpc.health.v1.Health/Watch", env=helix_env)
    assert code == 0
    assert out.startswith("grpc.health.v1.Health/Watch (server stream, open)\n")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (
            "ListAgnts",
            "unknown method 'ListAgnts'; did you mean helix.v1.RegistryService/ListAgents?",
        ),
        ("helix.v1.RegistryService/Nope", "helix.v1.RegistryService has no method 'Nope'"),
        ("helix.v1.Registry/ListAgents", "unknown service 'helix.v1.Registry'; did you mean"),
        ("Zzzzz", "unknown method 'Zzzzz'"),
    ],
)
async def test_call_refuses_an_unknown_method_with_suggestions(helix_env, method, message):
    code, out, err = await run("call", method, "--token", "t", env=helix_env)
    assert (code, out) == (2, "")
    assert message in err
    assert "helix call --list" in err
    assert "Traceback" not in err


async def test_call_without_a_method_says_what_to_give(helix_env):
    code, _, err = await run("call", env=helix_env)
    assert code == 2
    assert "give a method (Service/Method or a method name), --list or --describe" in err


def test_a_bare_method_name_resolves_when_unique_and_lists_the_candidates_otherwise():
    assert resolve_method("ListAgents").full_name == "helix.v1.RegistryService.ListAgents"
    assert (
        resolve_method("RegistryService/GetAgent").full_name == "helix.v1.RegistryService.GetAgent"
    )
    assert resolve_method("helix.v1.GeneratorService.GetDna").name == "GetDna"  # grpcurl's form
    assert resolve_method("/grpc.health.v1.Health/Check").name == "Check"
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3")
    proto.message_type.add(name="M")
    for service in ("A", "B"):
        proto.service.add(name=service).method.add(
            name="Get", input_type=".t.M", output_type=".t.M"
        )
    pool.Add(proto)
    services = [pool.FindServiceByName("t.A"), pool.FindServiceByName("t.B")]
    with pytest.raises(
        ConfigError, match=r"'Get' is a method of several services: t.A/Get, t.B/Get"
    ):
        resolve_method("Get", services)


# --- helix call: open methods, JSON names ----------------------------------------------------


async def test_health_needs_no_credentials(suite, helix_env):
    env = no_credentials(helix_env)
    address = ["--address", suite.address_of("registry")]
    code, out, err = await run("call", "grpc.health.v1.Health/Check", *address, env=env)
    assert (code, json.loads(out)) == (0, {"status": "SERVING"}), err
    request = '{"service": "helix.v1.RegistryService"}'
    code, out, err = await run("call", "Check", "-d", request, *address, env=env)
    assert (code, json.loads(out)) == (0, {"status": "SERVING"}), err


async def test_helix_output_uses_lower_camel_case_json_names(suite, helix_env):
    flags = ["--address", suite.address_of("registry"), "--data-dir", str(suite.data_dir)]
    code, out, err = await run(
        "call", "ListAgents", "-d", '{"page_size": 5}', *flags, env=helix_env
    )
    assert code == 0, err
    answer = json.loads(out)
    assert "nextPageToken" in answer  # every field is shown, by its proto3 JSON name
    assert "next_page_token" not in answer
    # Input takes either spelling (proto3 JSON parsers accept both).
    code, _, err = await run("call", "ListAgents", "-d", '{"pageSize": 5}', *flags, env=helix_env)
    assert code == 0, err
    # Error details are rendered the same way.
    code, _, err = await run("call", "ListAgents", "-d", '{"page_size": -1}', *flags, env=helix_env)
    assert code == 1
    assert '"fieldViolations"' in err


# --- helix up --help ---------------------------------------------------------------------------


async def test_up_help_shows_defaults_as_they_are_written(helix_env):
    code, out, _ = await run("up", "--help", env=helix_env)
    assert code == 0
    text = " ".join(out.split())  # argparse wraps help lines
    assert "HELIX_GRACE_PERIOD; default 10s]" in text
    assert "HELIX_MAX_RECEIVE_MESSAGE_BYTES; default 16MiB]" in text
    assert "HELIX_KEEPALIVE_TIME; default 1m]" in text
    assert "default 10.0" not in text
    assert "16777216" not in text


# --- agents watch --timeout ------------------------------------------------------------------


async def test_agents_watch_timeout_ends_the_watch(suite, helix_env):
    flags = ["--address", suite.address_of("registry"), "--data-dir", str(suite.data_dir)]
    started = time.monotonic()
    code, out, err = await run(
        "agents", "watch", "--timeout", "1s", *flags, env=helix_env, within=30
    )
    assert code == 0, err
    assert out == ""
    assert "helix agents watch: stopped after --timeout 1s" in err
    assert time.monotonic() - started < 20
