"""Reflection serves the descriptors protoc wrote (generated/helix.protoset): with their
comments, which are the API's documentation, and with json_name, so tools that read
descriptors from reflection render the same JSON names as tools given the protoset."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from helix.common.protoset import find_protoset
from helix.common.reflection import reflection_servicer

from echo_service import EchoServicer, binding
from reflection_client import file_for_symbol, list_services
from registry_support import start_suite


@pytest.fixture
async def suite(tmp_path):
    started = await start_suite(tmp_path / "data")
    yield started.server  # reflection is open: a plain channel to its address will do
    await started.close()


async def files_for(channel, symbol: str) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    found = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in await file_for_symbol(channel, symbol)
    ]
    return {f.name: f for f in found}


def leading_comments(proto: descriptor_pb2.FileDescriptorProto) -> str:
    return "\n".join(location.leading_comments for location in proto.source_code_info.location)


async def test_reflection_serves_the_comments(suite, channel_to):
    channel = channel_to(suite)
    registry = (await files_for(channel, "helix.v1.RegistryService"))["helix/v1/registry.proto"]
    assert " The registry of agents.\n" in leading_comments(registry)
    # The files a file imports come with it, documented too.
    files = await files_for(channel, "helix.v1.GeneratorService")
    assert leading_comments(files["helix/v1/generator.proto"])
    assert leading_comments(files["helix/v1/dna.proto"])


async def test_reflection_serves_json_names_like_the_protoset(suite, channel_to):
    files = await files_for(channel_to(suite), "helix.v1.ListAgentsRequest")
    request = next(
        m for m in files["helix/v1/registry.proto"].message_type if m.name == "ListAgentsRequest"
    )
    assert {f.name: f.json_name for f in request.field}["page_size"] == "pageSize"


@pytest.mark.parametrize(
    ("symbol", "file"),
    [
        ("grpc.health.v1.Health", "grpc/health/v1/health.proto"),
        ("grpc.reflection.v1alpha.ServerReflection", "grpc/reflection/v1alpha/reflection.proto"),
        # What grpcurl asks for to render the details of an error.
        ("google.rpc.BadRequest", "google/rpc/error_details.proto"),
        # A method: what `grpcurl describe helix.v1.OracleService.GetOracle` asks for.
        ("helix.v1.OracleService.GetOracle", "helix/v1/oracle.proto"),
        ("grpc.health.v1.Health.Watch", "grpc/health/v1/health.proto"),
    ],
)
async def test_reflection_describes_health_reflection_and_error_details(
    suite, channel_to, symbol, file
):
    files = await files_for(channel_to(suite), symbol)
    assert leading_comments(files[file]), file


async def test_services_outside_the_protoset_are_still_described(start_server, channel_to):
    server = await start_server([binding(EchoServicer())])
    channel = channel_to(server)
    assert "helix.test.EchoService" in await list_services(channel)
    files = await files_for(channel, "helix.v1.RegistryService")
    assert leading_comments(files["helix/v1/registry.proto"])
    # A symbol only the process's own descriptor pool knows.
    assert await files_for(channel, "google.protobuf.StringValue")


def test_the_protoset_is_found_next_to_the_generated_code():
    path = find_protoset()
    assert path is not None
    assert path.name == "helix.protoset"


def test_an_unknown_symbol_is_not_found():
    servicer = reflection_servicer(["helix.v1.RegistryService"])
    for request in (
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="helix.v1.Nope"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="helix.v1.Nope.Get"),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="helix.v1.RegistryService.Nope"
        ),
        reflection_pb2.ServerReflectionRequest(file_by_filename="nope.proto"),
        reflection_pb2.ServerReflectionRequest(all_extension_numbers_of_type="helix.v1.Nope"),
    ):
        assert servicer.answer(request).error_response.error_code == 5  # NOT_FOUND
    empty = reflection_pb2.ServerReflectionRequest()
    assert servicer.answer(empty).error_response.error_code == 3  # INVALID_ARGUMENT
    numbers = reflection_pb2.ServerReflectionRequest(all_extension_numbers_of_type="helix.v1.Agent")
    answer = servicer.answer(numbers).all_extension_numbers_response
    assert answer.base_type_name == "helix.v1.Agent"
    assert list(answer.extension_number) == []
