"""OrchestratorService over gRPC: validation, identity, pages; the engine is `runs.Orchestrator`."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
from helix.agents.presence import AgentPresence
from helix.common import pages
from helix.common.server import ServiceBinding
from helix.common.services import validate
from helix.orchestrator import validation as checks
from helix.orchestrator.metrics import register_metrics
from helix.orchestrator.runs import Orchestrator
from helix.security.principal import current_principal

ServicerContext = grpc.aio.ServicerContext


def _position(token: str, filters: str) -> str | None:
    if not token:
        return None
    return pages.decode_page_token(token, filters).after


INT64 = 1 << 63


def _pair(token: str, filters: str) -> tuple[object, str] | None:
    """The (number, text) position a page token holds; INVALID_PAGE_TOKEN for anything
    else (tokens are not signed: a client can forge one for its own listing)."""
    after = _position(token, filters)
    if after is None:
        return None
    try:
        found = json.loads(after)
    except ValueError:  # also a number too long to parse
        found = None
    if (
        not isinstance(found, list)
        or len(found) != 2
        or not isinstance(found[0], int | float)
        or isinstance(found[0], bool)
        or not isinstance(found[1], str)
    ):
        raise pages.invalid_page_token("is not a next_page_token of this listing")
    return found[0], found[1]


def _runs_after(token: str, filters: str) -> tuple[int, str] | None:
    found = _pair(token, filters)
    if found is None:
        return None
    create_ns, name = found
    if not isinstance(create_ns, int) or not 0 <= create_ns < INT64:
        raise pages.invalid_page_token("is not a next_page_token of this listing")
    return create_ns, name


def _candidates_after(token: str, filters: str) -> tuple[float, str] | None:
    found = _pair(token, filters)
    if found is None:
        return None
    key, candidate_id = found
    try:
        key = float(key)  # type: ignore[arg-type]
    except OverflowError:
        key = math.inf if key > 0 else -math.inf  # type: ignore[operator]
    if math.isnan(key):  # (inf is the key of the unscored: they list after the scored)
        raise pages.invalid_page_token("is not a next_page_token of this listing")
    return key, candidate_id


def _encode(position: list[object]) -> str:
    """A position as compact JSON (page tokens hold printable ASCII without spaces;
    Infinity, the key of unscored candidates, is written as JSON's extension)."""
    return json.dumps(position, separators=(",", ":"))


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, engine: Orchestrator, limits: checks.OrchestratorLimits) -> None:
        self.engine = engine
        self.limits = limits

    def _check(self, check: Callable[..., Any], request: Any) -> None:
        validate(lambda r: check(r, self.limits), request)

    async def CreateRun(
        self, request: orchestrator_pb2.CreateRunRequest, context: ServicerContext[Any, Any]
    ) -> orchestrator_pb2.CreateRunResponse:
        self._check(checks.check_create_run_request, request)
        run = await self.engine.create(current_principal(), request)
        return orchestrator_pb2.CreateRunResponse(run=run)

    async def GetRun(
        self, request: orchestrator_pb2.GetRunRequest, context: ServicerContext[Any, Any]
    ) -> orchestrator_pb2.GetRunResponse:
        self._check(checks.check_get_run_request, request)
        return orchestrator_pb2.GetRunResponse(
            run=await self.engine.get(current_principal(), request.name)
        )

    async def ListRuns(
        self, request: orchestrator_pb2.ListRunsRequest, context: ServicerContext[Any, Any]
    ) -> orchestrator_pb2.ListRunsResponse:
        self._check(checks.check_list_runs_request, request)
        principal = current_principal()
        filters = pages.filters_digest("runs", principal.subject, request.state)
        after = _runs_after(request.page_token, filters)
        size = self.limits.page_size(request.page_size)
        runs, last = await self.engine.list_runs(principal, request.state, after, size)
        response = orchestrator_pb2.ListRunsResponse(runs=runs)
        if last is not None:
            response.next_page_token = pages.encode_page_token(
                pages.PagePosition(_encode(list(last))), filters
            )
        return response

    async def CancelRun(
        self, request: orchestrator_pb2.CancelRunRequest, context: ServicerContext[Any, Any]
    ) -> orchestrator_pb2.CancelRunResponse:
        self._check(checks.check_cancel_run_request, request)
        run = await self.engine.cancel(current_principal(), request.name, request.etag)
        return orchestrator_pb2.CancelRunResponse(run=run)

    async def WatchRun(
        self, request: orchestrator_pb2.WatchRunRequest, context: ServicerContext[Any, Any]
    ) -> AsyncIterator[orchestrator_pb2.WatchRunResponse]:
        self._check(checks.check_watch_run_request, request)
        events = self.engine.watch(current_principal(), request.name, request.after_sequence)
        async for event in events:
            yield orchestrator_pb2.WatchRunResponse(event=event)

    async def ListRunCandidates(
        self,
        request: orchestrator_pb2.ListRunCandidatesRequest,
        context: ServicerContext[Any, Any],
    ) -> orchestrator_pb2.ListRunCandidatesResponse:
        self._check(checks.check_list_run_candidates_request, request)
        filters = pages.filters_digest("candidates", request.name, request.status)
        after = _candidates_after(request.page_token, filters)
        size = self.limits.page_size(request.page_size)
        found, last = await self.engine.candidates(
            current_principal(), request.name, request.status, after, size
        )
        response = orchestrator_pb2.ListRunCandidatesResponse(candidates=found)
        if last is not None:
            response.next_page_token = pages.encode_page_token(
                pages.PagePosition(_encode([last[0], last[1]])), filters
            )
        return response


def orchestrator_binding(
    engine: Orchestrator,
    limits: checks.OrchestratorLimits = checks.DEFAULT_LIMITS,
    *,
    presence: AgentPresence | None = None,
) -> ServiceBinding:
    """OrchestratorService on a server: the engine starts (resuming unfinished runs) before
    the server accepts calls and stops when the drain begins (runs stay RUNNING in the
    store, resumed by the next start). With `presence`, it registers itself as an agent
    of kind ORCHESTRATOR."""
    servicer = OrchestratorServicer(engine, limits)

    def add(server: grpc.aio.Server) -> None:
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)

    async def start() -> None:
        await engine.start()
        if presence is not None:
            await presence.start()

    async def stop() -> None:
        if presence is not None:
            await presence.stop()
        await engine.stop()

    return ServiceBinding(
        orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name,
        add,
        on_start=(start,),
        on_shutdown=(stop,),
        on_stopped=(stop,),
        add_metrics=lambda metrics: register_metrics(engine, metrics),
    )
