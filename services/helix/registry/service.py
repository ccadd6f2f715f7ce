"""RegistryService: validate, call the engine, reply. Thin by design.

Every rule lives in the engine and its pure cores (`core`, `leases`, `watch`); the caller's
identity comes from the auth stage (`current_principal`), and domain errors become status
codes in the server's one error table, so each RPC here is two lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TypeAlias

import grpc

import helix.v1.registry_pb2 as pb
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.common.server import ServiceBinding
from helix.common.services import validate
from helix.common.streams import current_stream
from helix.registry import validation as checks
from helix.registry.engine import Registry
from helix.registry.metrics import register_metrics
from helix.security.principal import current_principal

Context: TypeAlias = grpc.aio.ServicerContext


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """The gRPC face of a `Registry` engine."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def RegisterAgent(
        self,
        request: pb.RegisterAgentRequest,
        context: Context[pb.RegisterAgentRequest, pb.RegisterAgentResponse],
    ) -> pb.RegisterAgentResponse:
        validate(checks.check_register_agent_request, request)
        return await self._registry.register(current_principal(), request)

    async def Heartbeat(
        self,
        request: pb.HeartbeatRequest,
        context: Context[pb.HeartbeatRequest, pb.HeartbeatResponse],
    ) -> pb.HeartbeatResponse:
        validate(checks.check_heartbeat_request, request)
        return await self._registry.heartbeat(current_principal(), request)

    async def UpdateAgent(
        self,
        request: pb.UpdateAgentRequest,
        context: Context[pb.UpdateAgentRequest, pb.UpdateAgentResponse],
    ) -> pb.UpdateAgentResponse:
        validate(checks.check_update_agent_request, request)
        return await self._registry.update(current_principal(), request)

    async def DeregisterAgent(
        self,
        request: pb.DeregisterAgentRequest,
        context: Context[pb.DeregisterAgentRequest, pb.DeregisterAgentResponse],
    ) -> pb.DeregisterAgentResponse:
        validate(checks.check_deregister_agent_request, request)
        return await self._registry.deregister(current_principal(), request)

    async def GetAgent(
        self,
        request: pb.GetAgentRequest,
        context: Context[pb.GetAgentRequest, pb.GetAgentResponse],
    ) -> pb.GetAgentResponse:
        validate(checks.check_get_agent_request, request)
        await self._registry.sync()
        return self._registry.get(request.name)

    async def ListAgents(
        self,
        request: pb.ListAgentsRequest,
        context: Context[pb.ListAgentsRequest, pb.ListAgentsResponse],
    ) -> pb.ListAgentsResponse:
        validate(checks.check_list_agents_request, request)
        await self._registry.sync()
        return self._registry.list(request)

    async def WatchAgents(
        self,
        request: pb.WatchAgentsRequest,
        context: Context[pb.WatchAgentsRequest, pb.WatchAgentsResponse],
    ) -> AsyncIterator[pb.WatchAgentsResponse]:
        validate(checks.check_watch_agents_request, request)
        await self._registry.sync()
        # A watch cut off as too slow (or drained) ends the call at once through the chain,
        # even while a write waits for a client that reads nothing: its slot is freed.
        stream = current_stream()
        on_close = stream.end if stream is not None else None
        # aclosing: the watch leaves the hub as soon as the call ends, cancelled included.
        async with aclosing(self._registry.watch(request, on_close)) as responses:
            async for response in responses:
                yield response


def registry_binding(registry: Registry) -> ServiceBinding:
    """RegistryService on a server, with its engine started and stopped alongside.

    Watches end when the drain begins (`end_watches`), so the server need not wait out
    its grace period for streams that would never finish on their own; the engine stops
    (store closed) once no call is in flight.
    """
    servicer = RegistryServicer(registry)

    def add(server: grpc.aio.Server) -> None:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

    return ServiceBinding(
        pb.DESCRIPTOR.services_by_name["RegistryService"].full_name,
        add,
        on_start=(registry.start,),
        on_shutdown=(registry.end_watches,),
        on_stopped=(registry.stop,),
        add_metrics=lambda metrics: register_metrics(registry, metrics),
        health_source=registry.report_health_to,
    )
