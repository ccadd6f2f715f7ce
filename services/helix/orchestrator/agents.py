"""The orchestrator's view of the agents: an `AgentInformer` over the registry and one pooled
channel per live agent.

- Lookup by name is O(1) (the informer's map); generators are chosen by the DNA they
  advertise (and the generator major version, which fixes what a seed breeds), oracle
  agents by the oracle they host — the config_hash is checked by the VerifyStream itself
  (`VerifyStreamOpen.config_hash`), so an agent whose configuration changed is refused
  rather than trusted.
- An agent takes work while SERVING or DEGRADED ("accepting work but impaired; balancers
  prefer others", registry.proto): the agents of a kind offered for new work are the
  SERVING ones, or the DEGRADED ones when none is SERVING. (An oracle agent is DEGRADED
  when any of its oracles fails, e.g. an unreachable `remote` one; its other oracles work.)
- A channel is opened on first use and closed when its agent leaves the registry, stops
  accepting work (NOT_SERVING), or re-registers at another endpoint; calls on it then
  fail and their work is re-sent elsewhere (`dispatch`).
- `changed` is set on every change, so waiting loops wake when an agent arrives or goes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

import grpc

import helix.v1.registry_pb2 as registry_pb2
from helix.agents.informer import AgentInformer
from helix.common import versions
from helix.common.aio import cancel_and_wait
from helix.security import scopes

log = logging.getLogger("helix.orchestrator")

Agent = registry_pb2.Agent
GENERATOR = registry_pb2.AGENT_KIND_GENERATOR
ORACLE = registry_pb2.AGENT_KIND_ORACLE
DEGRADED = registry_pb2.AGENT_HEALTH_DEGRADED
_ACCEPTING = (registry_pb2.AGENT_HEALTH_SERVING, registry_pb2.AGENT_HEALTH_UNSPECIFIED, DEGRADED)
# Generators of another major version breed other children from the same seed.
GENERATOR_MAJOR_LABEL = versions.GENERATOR_MAJOR_LABEL
# The generator major this orchestrator's runs use (the one of the generator it ships with).
GENERATOR_MAJOR = str(versions.GENERATOR_MAJOR)
# What the orchestrator's own calls need: the registry (watching agents) and the agents.
ORCHESTRATOR_SCOPES = (
    scopes.AGENTS_READ,
    scopes.DNA_READ,
    scopes.GENERATE,
    scopes.ORACLES_READ,
    scopes.VERIFY,
)


def accepting(agent: Agent) -> bool:
    """Whether the agent takes work (SERVING or DEGRADED)."""
    return agent.health in _ACCEPTING


def preferred(agents: list[Agent]) -> list[Agent]:
    """The SERVING ones of `agents` (all accepting work), or the DEGRADED ones if none is."""
    healthy = [agent for agent in agents if agent.health != DEGRADED]
    return healthy or agents


class AgentPool:
    """Live agents and their channels (module docstring)."""

    def __init__(
        self,
        registry: Callable[[], grpc.aio.Channel],
        connect: Callable[[str], grpc.aio.Channel],
        *,
        generator_major: str | None = None,
    ) -> None:
        self._registry_connect = registry
        self._registry: grpc.aio.Channel | None = None
        self._informer: AgentInformer | None = None
        self._connect = connect
        self._channels: dict[str, tuple[str, int, grpc.aio.Channel]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._generator_major = generator_major
        self.outstanding: dict[str, int] = {}
        self.version = 0  # moves on at every change of the agents
        self._changed = asyncio.Event()  # set (and replaced) at every change
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def informer(self) -> AgentInformer:
        if self._informer is None:
            raise RuntimeError("the agent pool is not started")
        return self._informer

    async def start(self) -> None:
        """Open the registry channel (the address may be known only now) and start
        listing and watching it."""
        self._registry = self._registry_connect()
        self._informer = AgentInformer(self._registry)
        self._unsubscribe = self._informer.on_change(self._on_change)
        await self._informer.start()

    def _agents(self) -> list[Agent]:
        return self._informer.agents() if self._informer is not None else []

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._informer is not None:
            await self._informer.stop()
        if self._registry is not None:
            await self._registry.close()
            self._registry = None
        channels = [channel for _, _, channel in self._channels.values()]
        self._channels.clear()
        await asyncio.gather(*(channel.close() for channel in channels), return_exceptions=True)
        await cancel_and_wait(list(self._closing))

    def _on_change(self, type_: int, agent: Agent, reason: int) -> None:
        held = self._channels.get(agent.name)
        if held is not None and (
            type_ == registry_pb2.AGENT_EVENT_TYPE_DELETE
            or not accepting(agent)
            or (held[0], held[1]) != (agent.endpoint, agent.epoch)
        ):
            del self._channels[agent.name]
            task = asyncio.get_running_loop().create_task(held[2].close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            log.info(
                "closed the channel to %s (%s)", agent.name, "gone" if type_ == 2 else "changed"
            )
        if type_ == registry_pb2.AGENT_EVENT_TYPE_DELETE:
            self.outstanding.pop(agent.name, None)
        self.version += 1
        self._changed.set()  # wakes every waiter; later ones wait for the next change
        self._changed = asyncio.Event()

    async def wait_changed(self, seconds: float, since: int | None = None) -> None:
        """Wait until the agents change after `version` was `since` (default: from now),
        or `seconds` pass. Read `version` before looking at the agents and pass it here,
        so a change in between is not missed."""
        if since is not None and since != self.version:
            return
        changed = self._changed
        try:
            async with asyncio.timeout(seconds):
                await changed.wait()
        except TimeoutError:
            pass

    # --- lookups ------------------------------------------------------------------------

    def get(self, name: str) -> Agent | None:
        return self._informer.get(name) if self._informer is not None else None

    def live(self, name: str) -> bool:
        agent = self.get(name)
        return agent is not None and accepting(agent)

    def generators(self, dna_name: str = "") -> list[Agent]:
        """Generators for new work (of this orchestrator's generator major version), those
        advertising `dna_name` when given; SERVING ones preferred."""
        found = []
        for agent in self._agents():
            if agent.kind != GENERATOR or not accepting(agent):
                continue
            if (
                self._generator_major is not None
                and agent.labels.get(GENERATOR_MAJOR_LABEL, self._generator_major)
                != self._generator_major
            ):
                continue
            if dna_name and dna_name not in agent.generator.dnas:
                continue
            found.append(agent)
        return preferred(found)

    def oracles(self, oracle: str) -> list[Agent]:
        """Oracle agents for new work that host `oracle` ("oracles/{id}"); SERVING ones
        preferred. (A stream already open to an agent that turned DEGRADED is kept:
        `live`.)"""
        return preferred(
            [
                agent
                for agent in self._agents()
                if agent.kind == ORACLE and accepting(agent) and oracle in agent.oracle.oracles
            ]
        )

    def any_of_kind(self, kind: int) -> bool:
        return any(agent.kind == kind and accepting(agent) for agent in self._agents())

    def channel(self, agent: Agent) -> grpc.aio.Channel:
        """The pooled channel to `agent` (opened now if it has none)."""
        held = self._channels.get(agent.name)
        if held is not None and (held[0], held[1]) == (agent.endpoint, agent.epoch):
            return held[2]
        if held is not None:
            task = asyncio.get_running_loop().create_task(held[2].close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        channel = self._connect(agent.endpoint)
        self._channels[agent.name] = (agent.endpoint, agent.epoch, channel)
        return channel

    @property
    def channels(self) -> int:
        return len(self._channels)

    def pick(self, agents: Sequence[Agent], rng: random.Random) -> Agent:
        """Power of two choices on outstanding work (relative to capacity)."""
        if len(agents) == 1:
            return agents[0]
        a, b = rng.sample(list(agents), 2)

        def load(agent: Agent) -> float:
            return self.outstanding.get(agent.name, 0) / max(agent.capacity, 1)

        return a if load(a) <= load(b) else b

    def add_outstanding(self, name: str, n: int) -> None:
        self.outstanding[name] = max(0, self.outstanding.get(name, 0) + n)


def cancelled_by_channel() -> bool:
    """In an `except asyncio.CancelledError`: whether the call was cut by its channel
    closing (the agent left: the pool closes its channel; grpc.aio raises CancelledError
    in the caller) rather than by this task being cancelled — the former is a failure of
    that agent, to fail over from; the latter must be re-raised."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0
