"""Keep a service's own agent registered for as long as it serves.

`AgentPresence` runs an `AgentRegistration` in a background task: it registers as soon as
the registry answers (retrying with backoff while it does not: in the embedded suite the
registry is the same server, which accepts calls only after the services' start hooks),
heartbeats, and deregisters when stopped. Services call `start` from their server's
`on_start` hook and `stop` from `on_shutdown`, so an agent leaves the registry before it
stops answering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

import helix.v1.registry_pb2 as registry_pb2
from helix.agents.registration import AgentRegistration
from helix.agents.support import Backoff
from helix.common.aio import cancel_and_wait

log = logging.getLogger("helix.agents.presence")
_STEADY = 60.0  # seconds registered after which a failure counts as a first one


class AgentPresence:
    """Registers `agent` through channels from `connect`, in the background, until stopped.

    `agent_id` is the id to register under (empty: the registry picks one, kept for
    re-registrations); `ttl` the lease asked for in seconds (None: the registry's default).
    """

    def __init__(
        self,
        connect: Callable[[], grpc.aio.Channel],
        agent: registry_pb2.Agent,
        *,
        agent_id: str = "",
        ttl: float | None = None,
        backoff: tuple[float, float] = (0.05, 5.0),
    ) -> None:
        self._connect = connect
        self.agent = agent  # may be completed (endpoint, details) until `start`
        self._agent_id = agent_id
        self._ttl = ttl
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None
        self.registration: AgentRegistration | None = None
        self.registered = asyncio.Event()

    async def start(self) -> None:
        """Begin registering in the background (idempotent); returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="agent presence")

    @property
    def running(self) -> bool:
        """Whether it is still registered or trying to be (False once stopped, or after
        another process took over its agent id)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Deregister (if registered) and stop heartbeating."""
        task, self._task = self._task, None
        await cancel_and_wait([task])

    async def _run(self) -> None:
        backoff = Backoff(*self._backoff)
        while True:
            try:
                async with self._connect() as channel:
                    registration = AgentRegistration(
                        channel, self.agent, agent_id=self._agent_id, ttl=self._ttl
                    )
                    async with registration:
                        self.registration = registration
                        self._agent_id = registration.name.removeprefix("agents/")
                        self.registered.set()
                        since = time.monotonic()
                        try:
                            await registration.wait_stopped()
                        finally:
                            # A registration that held a while starts the backoff over;
                            # one whose heartbeats keep failing at once does not.
                            if time.monotonic() - since >= _STEADY:
                                backoff.reset()
                    if registration.superseded:
                        # Another process registered under this id: fighting over it would
                        # flap the agent, so this one stops registering, loudly.
                        log.error(
                            "agents/%s was registered again by another process; this agent "
                            "stops registering (give each agent its own --agent-id)",
                            self._agent_id,
                        )
                        return
                    delay = backoff.next()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as error:
                # Not transient (AgentRegistration retries those itself): a misconfigured
                # token or a refused agent. Keep trying, loudly, rather than give up.
                delay = backoff.next(error)
                log.error(
                    "could not register this agent (%s: %s); retrying in %.1fs",
                    error.code().name,
                    error.details(),
                    delay,
                )
            except Exception:
                delay = backoff.next()
                log.exception("registering this agent failed; retrying in %.1fs", delay)
            finally:
                self.registered.clear()
                self.registration = None
            await asyncio.sleep(delay)
