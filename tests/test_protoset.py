"""generated/helix.protoset: everything a client needs without reflection — the helix.v1
services, health, reflection and the google.rpc error details — with their comments."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

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
    # copy under generated/ would clash with them in the descriptor pool.
    generated = {p.relative_to(ROOT / "generated") for p in (ROOT / "generated").rglob("*.py")}
    assert all(p.parts[:2] == ("helix", "v1") for p in generated), generated
