"""`AgentRegistration`: an agent's own registration, kept alive while the agent runs.

    async with AgentRegistration(channel, agent, agent_id="gen-1") as registration:
        registration.health = registry_pb2.AGENT_HEALTH_DEGRADED  # reported promptly
        registration.load = registry_pb2.AgentLoad(in_flight=3)  # on the next heartbeat
        ...

Entering registers (RegisterAgent with a fresh request_id, retried with the same id
while the registry is unreachable — the caller bounds that with `asyncio.timeout`) and
starts heartbeating at about ttl/3 of the granted TTL, with jitter. A heartbeat answered
NOT_FOUND (lease expired, or the agent was removed by someone else) registers again,
which gives a new, greater epoch, and calls `on_lost`; one answered FAILED_PRECONDITION
EPOCH_MISMATCH means a newer registration of the same name replaced this one: heartbeats
stop, `on_superseded` is called and nothing is registered again. Transient errors are
retried with jittered backoff, never slower than the heartbeat interval so a short blip
does not cost the lease. Leaving deregisters, conditionally on this registration still
being the current one (it never removes a newer registration of the name).

Callbacks receive the registration and may be plain functions or coroutines; they run on
the heartbeat task, so they should be quick. Their exceptions are logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeAlias

import grpc

import helix.v1.registry_pb2 as registry_pb2
from helix.agents.support import (
    TRANSIENT_CODES,
    Backoff,
    RegistryStub,
    as_stub,
    describe,
    error_reason,
    guarded,
    notify,
    seconds,
)
from helix.common import reasons
from helix.common.aio import cancel_and_wait

log = logging.getLogger("helix.agents")

RegistrationCallback = Callable[["AgentRegistration"], Any]
Health: TypeAlias = registry_pb2.AgentHealth.ValueType

# A heartbeat call may take this share of the TTL before it is abandoned and retried.
_HEARTBEAT_TIMEOUT_SHARE = 0.5
_MIN_CALL_TIMEOUT = 0.1


class AgentRegistration:
    """Registers `agent` on enter, heartbeats while inside, deregisters on exit."""

    def __init__(  # noqa: PLR0913 - keyword-only options, each with its default
        self,
        channel_or_stub: grpc.aio.Channel | RegistryStub,
        agent: registry_pb2.Agent,
        *,
        agent_id: str = "",
        ttl: float | None = None,
        jitter: float = 0.1,
        on_lost: RegistrationCallback | None = None,
        on_superseded: RegistrationCallback | None = None,
        on_registered: RegistrationCallback | None = None,
        backoff: tuple[float, float] = (0.1, 5.0),
        call_timeout: float = 10.0,
    ) -> None:
        """`agent`: kind, endpoint, capacity and the rest as RegisterAgent takes them.
        `agent_id`: a stable id to register under (empty: the registry picks one, which is
        then kept for re-registrations). `ttl`: the lease asked for, in seconds (None: the
        registry's default; it clamps the value into its bounds). `jitter`: the fraction by
        which each heartbeat interval varies. `on_registered` runs after every successful
        (re-)registration, `on_lost` when the lease was found lost, `on_superseded` when a
        newer registration replaced this one. `backoff`: (first, longest) retry delay.
        `call_timeout`: the deadline of register and deregister calls.
        """
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be within [0, 1)")
        if ttl is not None and not ttl > 0:
            raise ValueError("ttl must be positive")
        if not call_timeout > 0:
            raise ValueError("call_timeout must be positive")
        self._stub = as_stub(channel_or_stub)
        self._spec = registry_pb2.Agent()
        self._spec.CopyFrom(agent)
        if ttl is not None:
            self._spec.ttl.FromNanoseconds(round(ttl * 1e9))
        self._agent_id = agent_id
        self._jitter = jitter
        self._on_lost = on_lost
        self._on_superseded = on_superseded
        self._on_registered = on_registered
        self._backoff = backoff
        self._call_timeout = call_timeout
        self._health: Health = agent.health or registry_pb2.AGENT_HEALTH_SERVING
        self._load = registry_pb2.AgentLoad()
        self._load.CopyFrom(agent.load)
        self._reported_health = self._health
        self._reported_load = registry_pb2.AgentLoad()
        self._agent: registry_pb2.Agent | None = None
        self._ttl = 0.0
        self._lease_until = 0.0  # monotonic; the lease lasts at least until then
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.registrations = 0
        self.heartbeats = 0
        self.superseded = False
        self.registered = False

    # --- what the owner reads and sets ---------------------------------------------------

    @property
    def agent(self) -> registry_pb2.Agent:
        """The agent as last registered, with the health and load reported since, and the
        etag the last heartbeat returned (a registry older than HeartbeatResponse.etag
        returns none: the registration's stays). Treat it as read-only."""
        if self._agent is None:
            raise RuntimeError("not registered yet: enter the context first")
        return self._agent

    @property
    def name(self) -> str:
        return self.agent.name

    @property
    def epoch(self) -> int:
        return self.agent.epoch

    @property
    def ttl(self) -> float:
        """The lease TTL the registry granted, in seconds."""
        return self._ttl

    @property
    def health(self) -> Health:
        return self._health

    @health.setter
    def health(self, value: Health) -> None:
        """Report a new health; a change is sent at once rather than on the next beat."""
        if value == registry_pb2.AGENT_HEALTH_UNSPECIFIED:
            raise ValueError("health must be SERVING, DEGRADED or NOT_SERVING")
        self._health = value
        if value != self._reported_health:
            self._wake.set()

    @property
    def load(self) -> registry_pb2.AgentLoad:
        """The load to report; changing it (in place or by assignment) is sent with the next
        heartbeat, and only when it differs from what was last reported."""
        return self._load

    @load.setter
    def load(self, value: registry_pb2.AgentLoad) -> None:
        self._load = registry_pb2.AgentLoad()
        self._load.CopyFrom(value)

    # --- life cycle ------------------------------------------------------------------------

    async def __aenter__(self) -> AgentRegistration:
        if self._task is not None:
            raise RuntimeError("this registration is already active")
        await self._register()
        self._task = asyncio.create_task(self._heartbeat_task(), name=f"heartbeat {self.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_stopped(self) -> None:
        """Wait until heartbeats stop on their own: superseded by a newer registration
        (returns; see `superseded`) or failed (raises what stopped them). Returns at once
        when not active. Cancelling the wait leaves the heartbeats running."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        """Stop heartbeating and deregister (unless superseded). Safe to call twice.

        Deregistration failures are logged, not raised: the lease then simply expires.
        """
        task, self._task = self._task, None
        await cancel_and_wait([task])
        if self._agent is not None and self.registered and not self.superseded:
            self.registered = False
            await self._deregister()

    # --- registering --------------------------------------------------------------------------

    def _request_agent(self) -> registry_pb2.Agent:
        agent = registry_pb2.Agent()
        agent.CopyFrom(self._spec)
        agent.health = self._health
        agent.load.CopyFrom(self._load)
        return agent

    async def _register(self) -> None:
        """One registration attempt (a fresh request_id), retried with that same id while
        the failure is transient; anything else is raised."""
        agent = self._request_agent()
        request = registry_pb2.RegisterAgentRequest(
            agent_id=self._agent_id, agent=agent, request_id=uuid.uuid4().hex
        )
        backoff = Backoff(*self._backoff)
        while True:
            try:
                response = await guarded(
                    self._stub.RegisterAgent(request, timeout=self._call_timeout)
                )
                break
            except grpc.aio.AioRpcError as error:
                if error.code() not in TRANSIENT_CODES:
                    raise
                delay = backoff.next(error)
                log.warning("registering failed, retrying in %.2fs: %s", delay, describe(error))
                await asyncio.sleep(delay)
        registered = response.agent
        self._agent = registered
        self._agent_id = registered.name.removeprefix("agents/")
        self._ttl = seconds(registered.ttl)
        self._lease_until = time.monotonic() + self._ttl
        self._reported_health = agent.health
        self._reported_load.CopyFrom(agent.load)
        self.registrations += 1
        self.registered = True
        log.info("registered", extra={"agent": registered.name, "epoch": registered.epoch})
        await notify(self._on_registered, self)

    async def _register_again(self) -> None:
        """After the lease was lost: register until it works (a new epoch)."""
        backoff = Backoff(*self._backoff)
        while True:
            try:
                await self._register()
                return
            except grpc.aio.AioRpcError as error:
                # E.g. ALREADY_EXISTS while another principal holds the name, or a token
                # being rotated: keep trying, loudly.
                delay = backoff.maximum
                log.error("registering again failed, retrying in %.2fs: %s", delay, describe(error))
                await asyncio.sleep(delay)

    # --- heartbeating -------------------------------------------------------------------------

    def _interval(self) -> float:
        spread = 1 + self._jitter * (2 * random.random() - 1)
        return self._ttl / 3 * spread

    async def _pause(self, delay: float) -> None:
        """Sleep `delay`, or less if the health changed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _heartbeat_task(self) -> None:
        try:
            await self._heartbeat_loop()
        except Exception:  # a bug, or a channel closed under it: heartbeats are over
            self.registered = False
            log.exception("heartbeats of %s stopped", self.name)
            raise

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff(*self._backoff)
        delay = self._interval()
        while True:
            await self._pause(delay)
            try:
                await self._heartbeat()
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == grpc.StatusCode.NOT_FOUND:
                    await self._lost(error)
                    backoff.reset()
                    delay = self._interval()
                    continue
                if code == grpc.StatusCode.FAILED_PRECONDITION and (
                    error_reason(error) == reasons.EPOCH_MISMATCH
                ):
                    await self._superseded(error)
                    return
                # Transient, or unexpected (e.g. a token being rotated): try again soon,
                # never later than a regular beat would.
                delay = min(backoff.next(error), self._interval())
                lapsed = time.monotonic() > self._lease_until
                log.log(
                    logging.ERROR if lapsed else logging.WARNING,
                    "heartbeat of %s failed%s, retrying in %.2fs: %s",
                    self.name,
                    " (the lease has probably lapsed)" if lapsed else "",
                    delay,
                    describe(error),
                )
                continue
            backoff.reset()
            delay = self._interval()

    async def _heartbeat(self) -> None:
        self._wake.clear()
        health, load = self._health, registry_pb2.AgentLoad()
        load.CopyFrom(self._load)
        request = registry_pb2.HeartbeatRequest(name=self.name, epoch=self.epoch)
        if health != self._reported_health:
            request.health = health
        if load != self._reported_load:
            request.load.CopyFrom(load)
        timeout = max(
            _MIN_CALL_TIMEOUT, min(self._call_timeout, self._ttl * _HEARTBEAT_TIMEOUT_SHARE)
        )
        sent = time.monotonic()
        response = await guarded(self._stub.Heartbeat(request, timeout=timeout))
        self.heartbeats += 1
        self._ttl = seconds(response.ttl) or self._ttl
        self._lease_until = sent + self._ttl
        self._reported_health = health
        self._reported_load.CopyFrom(load)
        if self._agent is not None:
            self._agent.health = health
            self._agent.load.CopyFrom(load)
            # Registries older than HeartbeatResponse.etag send none. A new etag means
            # this heartbeat changed the agent, at the response's revision.
            if response.etag and response.etag != self._agent.etag:
                self._agent.etag = response.etag
                self._agent.update_revision = response.revision

    async def _lost(self, error: grpc.aio.AioRpcError) -> None:
        self.registered = False
        log.warning("%s lost its registration, registering again: %s", self.name, describe(error))
        await notify(self._on_lost, self)
        await self._register_again()

    async def _superseded(self, error: grpc.aio.AioRpcError) -> None:
        self.superseded = True
        self.registered = False
        log.warning("%s was superseded; heartbeats stop: %s", self.name, describe(error))
        await notify(self._on_superseded, self)

    # --- deregistering ------------------------------------------------------------------------

    async def _deregister(self) -> None:
        agent = self.agent
        try:
            await self._deregister_call(agent.etag)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.ABORTED:
                await self._deregister_if_current()
            else:
                log.warning("deregistering %s failed: %s", agent.name, describe(error))

    async def _deregister_call(self, etag: str) -> None:
        request = registry_pb2.DeregisterAgentRequest(name=self.name, etag=etag)
        try:
            await guarded(self._stub.DeregisterAgent(request, timeout=self._call_timeout))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # already gone: fine
                raise

    async def _deregister_if_current(self) -> None:
        """The known etag is stale (heartbeats changed health or load, or someone updated
        the agent): remove the agent only if it is still this registration (same epoch)."""
        for _ in range(3):
            try:
                found = await guarded(
                    self._stub.GetAgent(
                        registry_pb2.GetAgentRequest(name=self.name), timeout=self._call_timeout
                    )
                )
                if found.agent.epoch != self.epoch:
                    return  # a newer registration of the name: not ours to remove
                await self._deregister_call(found.agent.etag)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return
                if error.code() != grpc.StatusCode.ABORTED:  # changed again meanwhile: retry
                    log.warning(
                        "cannot confirm %s is still this registration; leaving its lease to "
                        "expire: %s",
                        self.name,
                        describe(error),
                    )
                    return
        log.warning("%s kept changing; leaving its lease to expire", self.name)
