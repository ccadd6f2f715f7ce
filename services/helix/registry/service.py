"""RegistryService: validate, authorise, call the engine, translate. Thin by design."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.common import errors, pages
from helix.common.server import ServiceBinding
from helix.common.services import validate
from helix.registry import validation as checks
from helix.registry.core import (
    Batch,
    Event,
    check_watchable,
    fingerprint,
    selector_from,
)
from helix.registry.engine import Registry
from helix.registry.metrics import register_metrics
from helix.registry.watch import Watcher, view
from helix.security.principal import current_principal

MAX_EVENTS_PER_RESPONSE = 1000


def _filters(request: Any) -> str:
    return pages.filters_digest(request.kind, request.label_selector, getattr(request, "health", 0))


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """The gRPC face of a `Registry` engine."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._limits = registry.settings.limits

    async def RegisterAgent(
        self, request: registry_pb2.RegisterAgentRequest, context: Any
    ) -> registry_pb2.RegisterAgentResponse:
        validate(checks.check_register_agent_request, request)
        principal = current_principal()
        digest = fingerprint(request)
        record = self.registry.state.requests.get((principal.subject, request.request_id))
        if record is not None and record.fingerprint == digest:
            return record.response
        agent_id = request.agent_id or f"agent-{secrets.token_hex(6)}"

        def apply(batch: Batch) -> registry_pb2.RegisterAgentResponse:
            response, _ = batch.register(principal, request, agent_id, digest)
            return response

        return await self.registry.submit(apply)

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: Any
    ) -> registry_pb2.HeartbeatResponse:
        validate(checks.check_heartbeat_request, request)
        principal = current_principal()
        ttl, changes = self.registry.heartbeat(principal, request)
        revision = self.registry.state.revision
        if changes:
            load = request.load if request.HasField("load") else None

            def apply(batch: Batch) -> Event | None:
                return batch.heartbeat_change(
                    principal, request.name, request.epoch, request.health, load
                )

            event = await self.registry.submit(apply)
            revision = event.revision if event is not None else self.registry.state.revision
        nanos = int(ttl * 1e9)
        return registry_pb2.HeartbeatResponse(
            revision=revision, ttl=Duration(seconds=nanos // 10**9, nanos=nanos % 10**9)
        )

    async def UpdateAgent(
        self, request: registry_pb2.UpdateAgentRequest, context: Any
    ) -> registry_pb2.UpdateAgentResponse:
        validate(checks.check_update_agent_request, request)
        principal = current_principal()

        def apply(batch: Batch) -> tuple[registry_pb2.Agent, Event | None]:
            return batch.update(principal, request)

        agent, event = await self.registry.submit(apply)
        revision = event.revision if event is not None else self.registry.state.revision
        return registry_pb2.UpdateAgentResponse(agent=agent, revision=revision)

    async def DeregisterAgent(
        self, request: registry_pb2.DeregisterAgentRequest, context: Any
    ) -> registry_pb2.DeregisterAgentResponse:
        validate(checks.check_deregister_agent_request, request)
        principal = current_principal()
        event = await self.registry.submit(
            lambda batch: batch.deregister(principal, request.name, request.etag)
        )
        return registry_pb2.DeregisterAgentResponse(revision=event.revision)

    async def GetAgent(
        self, request: registry_pb2.GetAgentRequest, context: Any
    ) -> registry_pb2.GetAgentResponse:
        validate(checks.check_get_agent_request, request)
        state = self.registry.state
        agent = state.agents.get(request.name)
        if agent is None:
            raise errors.NotFound(f"{request.name} not found", metadata={"name": request.name})
        return registry_pb2.GetAgentResponse(agent=agent, revision=state.revision)

    async def ListAgents(
        self, request: registry_pb2.ListAgentsRequest, context: Any
    ) -> registry_pb2.ListAgentsResponse:
        validate(checks.check_list_agents_request, request)
        state = self.registry.state
        filters = _filters(request)
        if request.page_token:
            position = pages.decode_page_token(request.page_token, filters)
            if not 0 < position.snapshot <= state.revision:
                raise pages.invalid_page_token("is not a next_page_token of this listing")
            snapshot, after = position.snapshot, position.after
        else:
            snapshot, after = state.revision, ""
        limit = pages.page_size(
            request.page_size,
            default=self._limits.default_page_size,
            maximum=self._limits.max_page_size,
        )
        agents, next_after = state.page(snapshot, selector_from(request), after, limit)
        token = ""
        if next_after is not None:
            token = pages.encode_page_token(pages.PagePosition(next_after, snapshot), filters)
        return registry_pb2.ListAgentsResponse(
            agents=agents, next_page_token=token, revision=snapshot
        )

    async def WatchAgents(
        self, request: registry_pb2.WatchAgentsRequest, context: Any
    ) -> AsyncIterator[registry_pb2.WatchAgentsResponse]:
        validate(checks.check_watch_agents_request, request)
        state = self.registry.state
        start = request.start_revision
        check_watchable(state, start)
        backlog = state.events_since(start) if 0 < start <= state.revision else ()
        watcher = self.registry.hub.add(selector_from(request), backlog)
        skip_below = start if start > state.revision else 0
        try:
            async for response in self._stream(watcher, request.progress_notify, skip_below):
                yield response
        finally:
            self.registry.hub.remove(watcher)

    async def _stream(
        self, watcher: Watcher, progress: bool, skip_below: int
    ) -> AsyncIterator[registry_pb2.WatchAgentsResponse]:
        state = self.registry.state
        interval = self.registry.settings.progress_interval
        while True:
            if watcher.closed_reason is not None:
                raise watcher.closed_reason
            try:
                first = (
                    await asyncio.wait_for(watcher.queue.get(), interval)
                    if progress
                    else await watcher.queue.get()
                )
            except TimeoutError:
                # A bookmark promises every event up to `revision` was delivered: never send
                # one while an event is still queued (publishing follows install at once, so
                # an empty queue means nothing up to state.revision is pending).
                if not watcher.queue.empty():
                    continue
                yield registry_pb2.WatchAgentsResponse(
                    revision=state.revision, progress=True, compact_revision=state.first_available
                )
                continue
            if first is None or watcher.closed_reason is not None:
                continue
            batch = [first]
            while len(batch) < MAX_EVENTS_PER_RESPONSE and not watcher.queue.empty():
                item = watcher.queue.get_nowait()
                if item is None:
                    break
                batch.append(item)
            response = registry_pb2.WatchAgentsResponse(
                revision=state.revision, compact_revision=state.first_available
            )
            for event in batch:
                if event.revision < skip_below:
                    continue
                seen = view(watcher.selector, event)
                if seen is None:
                    continue
                response.events.add(
                    type=seen[0], agent=event.agent, revision=event.revision, reason=seen[1]
                )
            if response.events:
                yield response


def registry_binding(registry: Registry) -> ServiceBinding:
    """RegistryService on a server, with its engine started and stopped alongside."""
    servicer = RegistryServicer(registry)

    def add(server: grpc.aio.Server) -> None:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

    async def end_watches() -> None:
        registry.hub.close_all(
            errors.Unavailable("the registry is shutting down; reconnect", retry_after=1.0)
        )

    return ServiceBinding(
        registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
        add,
        on_start=(registry.start,),
        on_shutdown=(end_watches,),
        on_stopped=(registry.stop,),
        add_metrics=lambda metrics: register_metrics(registry, metrics),
    )
