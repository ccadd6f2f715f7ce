"""generated/helix.protoset: everything a client needs without reflection — the helix.v1
services, health, reflection and the google.rpc error details — with their comments."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from harness import run_command

ROOT = Path(__file__).resolve().parent.parent
PROTOSET = ROOT / "generated" / "helix.protoset"


def files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    found = descriptor_pb2.FileDescriptorSet.FromString(PROTOSET.read_bytes())
    return {f.name: f for f in found.file}


def pool() -> descriptor_pool.DescriptorPool:
    loaded = descriptor_pool.DescriptorPool()
    for proto in files().values():
        loaded.Add(proto)
    return loaded


@pytest.mark.parametrize(
    "symbol",
    [
        "helix.v1.RegistryService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ],
)
def test_the_protoset_has_every_service_the_server_answers(symbol):
    assert pool().FindServiceByName(symbol).methods


@pytest.mark.parametrize(
    "symbol",
    [
        "google.rpc.Status",
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
        "google.rpc.QuotaFailure",
    ],
)
def test_the_protoset_has_the_error_details_helix_sends(symbol):
    # grpcurl -protoset decodes grpc-status-details-bin only with these types in the set.
    assert pool().FindMessageTypeByName(symbol).fields


def test_the_protoset_keeps_the_comments():
    for name in (
        "helix/v1/registry.proto",
        "grpc/health/v1/health.proto",
        "google/rpc/error_details.proto",
    ):
        assert files()[name].source_code_info.location, name


def test_the_vendored_protos_are_not_compiled_to_python():
    # googleapis-common-protos and grpcio-health-checking provide those modules; a second
    # copy under generated/ would clash with them in the descriptor pool. etcd's API is the
    # one exception (protos/third_party/README.md): compiled under helix.etcdpb, the etcd
    # client's stubs, and kept out of the protoset.
    generated = {p.relative_to(ROOT / "generated") for p in (ROOT / "generated").rglob("*.py")}
    assert all(p.parts[:2] in {("helix", "v1"), ("helix", "etcdpb")} for p in generated), generated
    assert any(p.parts[:2] == ("helix", "etcdpb") for p in generated)


# --- the README's grpcurl and buf curl commands ------------------------------------------------

README = ROOT / "README.md"
BUF = ROOT / "node_modules" / ".bin" / "buf"
README_ADDRESS = "127.0.0.1:50051"


def readme_commands(tool: str) -> list[list[str]]:
    """The README's shell commands starting with `tool`, continuation lines joined, comments
    dropped, as argv lists."""
    lines: list[str] = []  # the lines of its ```sh blocks, continuations joined
    in_block, joined = False, ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_block = line.strip() == "```sh"
        elif in_block:
            joined += line.rstrip()
            if joined.endswith("\\"):
                joined = joined[:-1]
            else:
                lines.append(joined)
                joined = ""
    return [shlex.split(line, comments=True) for line in lines if line.startswith(tool)]


def grpcurl_parts(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """grpcurl's flags with values, and its positional arguments."""
    flags: dict[str, str] = {}
    positional: list[str] = []
    words = iter(argv[1:])
    for word in words:
        if word == "-plaintext":
            continue
        if word.startswith("-"):
            flags[word] = next(words)
        else:
            positional.append(word)
    return flags, positional


def test_the_readme_grpcurl_commands_name_what_the_protoset_holds():
    # Checked against the descriptors each command would use; grpcurl itself runs every
    # command of docs/grpcurl.md (tests/test_grpcurl_guide.py), the buf curl twins below too.
    commands = readme_commands("grpcurl")
    assert len(commands) >= 4
    loaded = pool()
    for argv in commands:
        flags, positional = grpcurl_parts(argv)
        assert set(flags) <= {"-protoset", "-d", "-H"}, argv
        if "-protoset" in flags:
            assert (ROOT / flags["-protoset"]).resolve() == PROTOSET, argv
        address, action, *rest = positional
        assert address == README_ADDRESS, argv
        if action == "list":
            continue
        if action == "describe":
            assert loaded.FindMessageTypeByName(rest[0]), argv
            continue
        service, _, method = action.rpartition("/")
        found = loaded.FindServiceByName(service).methods_by_name[method]
        request = message_factory.GetMessageClass(found.input_type)()
        json_format.Parse(flags.get("-d", "{}"), request)  # a valid request of that method


@pytest.fixture
async def suite(clusters):
    return await clusters("embedded", generators=0)


async def test_the_readme_buf_curl_commands_work(suite):
    assert BUF.exists(), f"{BUF} is missing: `make test` installs it with npm ci"
    commands = readme_commands("npx buf curl")
    assert len(commands) >= 2
    address = suite.address_of("registry")
    for command in commands:
        # `npx buf` is the buf npm installed; the suite listens on a port of its own.
        argv = [str(BUF)] + [word.replace(README_ADDRESS, address) for word in command[2:]]
        code, out, err = await run_command(argv, cwd=ROOT)
        assert code == 0, (argv, err)
        if "--list-methods" in argv:
            assert "helix.v1.RegistryService/ListAgents" in out.splitlines()
            assert "grpc.health.v1.Health/Check" in out.splitlines()
        else:
            assert json.loads(out) == {"status": "SERVING"}
