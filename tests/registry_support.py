"""Registry test support: a real embedded suite with stubs per principal, a fake clock,
and waiting for a state with a deadline instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration as PbDuration
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.common.config import Duration
from helix.common.server import create_server
from helix.registry.engine import Registry
from helix.registry.stores import registry_store
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint
from helix.suite import EmbeddedConfig, create_embedded, embedded_services, prepare_embedded

FAST = {
    "registry_min_ttl": Duration(0.2),
    "registry_default_ttl": Duration(1.0),
    "registry_sweep_interval": Duration(0.05),
    "rate_read": 1e6,
    "rate_write": 1e6,
    # Like the rates: tests drive thousands of concurrent calls as one principal.
    "concurrent_share_per_principal": 1.0,
    # Registry tests count agents and revisions; generator tests turn this back on.
    "generator_self_register": False,
    # ... and watch the registry's streams: the suite's orchestrator would hold one more.
    "orchestrator_embedded": False,
}


@dataclass
class Suite:
    """A started suite and the channels opened to it."""

    server: Any
    config: EmbeddedConfig
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def stub(
        self, subject: str = "alice", scopes: tuple[str, ...] = ("agents.read", "agents.write")
    ) -> registry_pb2_grpc.RegistryServiceAsyncStub:
        token = mint(self.server.security.signer, subject, scopes, 3600)
        channel = grpc.aio.insecure_channel(
            self.server.address, interceptors=bearer_interceptors(StaticTokenSource(token))
        )
        self.channels.append(channel)
        stub: registry_pb2_grpc.RegistryServiceAsyncStub = registry_pb2_grpc.RegistryServiceStub(
            channel
        )
        return stub

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.server.shutdown(0)


async def start_suite(
    data_dir: Path, *, clock: Callable[[], float] | None = None, **overrides: Any
) -> Suite:
    """The embedded suite on `data_dir` with FAST settings plus `overrides`; with `clock`,
    its registry measures leases on that clock instead of time.monotonic."""
    settings: dict[str, Any] = {"port": 0, "data_dir": data_dir, "grace_period": Duration(1)}
    settings.update(FAST)
    settings.update(overrides)
    config = EmbeddedConfig(**settings)
    if clock is None:
        server, _ = create_embedded(config)
    else:
        store = registry_store(config, config.registry_path)
        registry = Registry(store, config.engine_settings(), clock=clock)
        services = embedded_services(config, registry)
        server, _ = create_server(config, services, security=prepare_embedded(config))
    await server.start()
    return Suite(server, config)


def agent_spec(
    kind: registry_pb2.AgentKind.ValueType = registry_pb2.AGENT_KIND_ORACLE,
    endpoint: str = "127.0.0.1:7000",
    capacity: int = 8,
    ttl: float | None = None,
    **labels: str,
) -> registry_pb2.Agent:
    agent = registry_pb2.Agent(kind=kind, endpoint=endpoint, capacity=capacity, labels=labels)
    if ttl is not None:
        agent.ttl.CopyFrom(PbDuration(seconds=int(ttl), nanos=int((ttl % 1) * 1e9)))
    return agent


def big_agent(dnas: int, labels: int = 64) -> registry_pb2.Agent:
    """A generator agent advertising `dnas` DNA names of the longest valid form (70 bytes
    each on the wire) and `labels` labels of the longest valid keys and values:
    10,000 names and 64 labels make the 713 KB agent of issue 10."""
    agent = agent_spec(kind=registry_pb2.AGENT_KIND_GENERATOR)
    agent.generator.dnas.extend(f"dnas/d{i:062d}" for i in range(dnas))
    agent.labels.update({f"k{i:062d}": f"v{i:062d}" for i in range(labels)})
    return agent


def register_request(
    agent_id: str, request_id: str | None = None, **spec: Any
) -> registry_pb2.RegisterAgentRequest:
    return registry_pb2.RegisterAgentRequest(
        agent_id=agent_id, agent=agent_spec(**spec), request_id=request_id or f"req-{agent_id}"
    )


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    assert status is not None
    assert status.details[0].Unpack(info)
    return info


def quota_failure(error: grpc.aio.AioRpcError) -> list[error_details_pb2.QuotaFailure.Violation]:
    """The QuotaFailure violations of an error (empty if it has none)."""
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        found = error_details_pb2.QuotaFailure()
        if detail.Unpack(found):
            return list(found.violations)
    return []


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay of an error in seconds (0 if it has none)."""
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        found = error_details_pb2.RetryInfo()
        if detail.Unpack(found):
            return float(found.retry_delay.ToNanoseconds()) / 1e9
    return 0.0


def bad_request(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        found = error_details_pb2.BadRequest()
        if detail.Unpack(found):
            return [(v.field, v.description) for v in found.field_violations]
    return []


@dataclass
class FakeClock:
    """A clock that moves only when a test moves it (for `clock=` and `wall=`)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
