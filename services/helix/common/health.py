"""`grpc.health.v1.Health` for Helix servers: Check, Watch and List, ended by the drain.

grpcio-health-checking's asyncio servicer (1.85) lacks `List` (its base class raises
NotImplementedError, which became INTERNAL), and its `Watch` runs until the server cancels
it, so one open watch held every drain for the whole grace period. This one keeps the
same `set` / `enter_graceful_shutdown` API and:

- Check: the status of a registered service, else NOT_FOUND (with ErrorInfo, as every
  Helix error);
- Watch: the current status at once (SERVICE_UNKNOWN for a name not registered, as the
  protocol asks), then every change; when the drain begins it sends NOT_SERVING and ends
  with UNAVAILABLE, like WatchAgents, so the client reconnects (to another replica);
- List: every registered service and its status.

Only services that are served are registered (`HelixServer.start`): a placeholder that
answers UNIMPLEMENTED is listed by reflection but is not in health.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

from grpc_health.v1 import health_pb2

from helix.common import errors

SERVICE_NAME = "grpc.health.v1.Health"
# HealthCheckResponse.ServingStatus: an enum's number (grpc_health is not typed).
ServingStatus: TypeAlias = int
SERVING: ServingStatus = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: ServingStatus = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: ServingStatus = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService:
    """The health of one server's services; statuses change only on the event loop.

    The overall status `""` starts NOT_SERVING: the server marks it SERVING once it
    accepts calls.
    """

    def __init__(self) -> None:
        self._statuses: dict[str, ServingStatus] = {"": NOT_SERVING}
        self._draining = False
        self._version = 0  # advanced by every change; watches wait for it to move
        self._changed = asyncio.Condition()

    async def set(self, service: str, status: ServingStatus) -> None:
        """Register `service` with `status`, or change its status; ignored once the drain
        has begun (everything stays NOT_SERVING)."""
        await self._set({service: status})

    async def enter_graceful_shutdown(self) -> None:
        """Mark every service NOT_SERVING for good and end every watch (after it has sent
        NOT_SERVING); watches opened later end at once. Safe to call twice."""
        await self._set({}, drain=True)

    async def _set(self, statuses: dict[str, ServingStatus], drain: bool = False) -> None:
        # The drain flag and the statuses change together (no await between), so a watch
        # that reads both at once never ends without sending the final NOT_SERVING.
        async with self._changed:
            if self._draining:
                return
            if drain:
                self._draining = True
                statuses = dict.fromkeys(self._statuses, NOT_SERVING)
            self._statuses.update(statuses)
            self._version += 1
            self._changed.notify_all()

    async def Check(self, request: Any, context: Any) -> Any:
        status = self._statuses.get(request.service)
        if status is None:
            name = request.service[:256]  # the caller's text, echoed back: bounded
            raise errors.NotFound(
                f"no service {name!r} in this server's health", metadata={"name": name}
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        last: ServingStatus | None = None
        while True:
            seen, draining = self._version, self._draining
            status = self._statuses.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if draining:
                raise errors.Unavailable("the server is shutting down; reconnect", retry_after=1.0)
            async with self._changed:
                # Not while yielding: a slow reader must never block `set`.
                await self._changed.wait_for(lambda: self._version != seen)  # noqa: B023

    async def List(self, request: Any, context: Any) -> Any:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )
