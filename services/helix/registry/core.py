"""The registry's domain core: the rules of every mutation, and `Batch`, which applies them.

Pure and synchronous (no grpc, no I/O, no clock of its own). The writer feeds mutations
through `Batch`, which applies them on top of the committed state (`state.RegistryState`)
and yields one `Event` per change with consecutive revisions; the batch is installed with
`RegistryState.install` only once the store has made it durable, so readers only ever see
committed state. The owner, etag and epoch rules are functions here, used by the batch and
by the heartbeat's fast path alike.
"""

from __future__ import annotations

import hashlib
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors, reasons, rules
from helix.common.validation import mask_paths
from helix.registry.state import (
    DELETE,
    DEREGISTERED,
    EXPIRED,
    PUT,
    SERVING,
    Agent,
    Event,
    RegistryState,
    RequestRecord,
)
from helix.registry.validation import UPDATABLE_PATHS, RegistryLimits, granted_ttl_seconds
from helix.security.principal import Principal, may_act_on

# The details oneof of an Agent, by the kind of agent each is for.
_DETAILS_KIND = {
    "generator": registry_pb2.AGENT_KIND_GENERATOR,
    "oracle": registry_pb2.AGENT_KIND_ORACLE,
}


def fingerprint(message: registry_pb2.RegisterAgentRequest) -> bytes:
    """A digest of a request, to tell a retry from a different request with the same id."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()[:16]


def _etag(revision: int) -> str:
    return f"r{revision}"


def _timestamp(wall: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(wall * 1e9))
    return stamp


def _duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


class Batch:
    """Mutations applied on top of committed state, one revision each, not yet durable."""

    def __init__(self, state: RegistryState, limits: RegistryLimits, wall: float) -> None:
        self._state = state
        self._limits = limits
        self._wall = wall
        self._pending: dict[str, Agent | None] = {}
        self._requests: dict[tuple[str, str], RequestRecord] = {}
        self.events: list[Event] = []
        self._net_added = 0  # agents this batch adds minus those it removes
        self._owner_added: dict[str, int] = {}  # the same, per owner
        self.new_requests: list[tuple[str, str, RequestRecord]] = []
        # What a shared store attaches to this batch's commit (the leases of new
        # registrations, by agent name); opaque here.
        self.leases: dict[str, Any] = {}

    @property
    def revision(self) -> int:
        return self._state.revision + len(self.events)

    def get(self, name: str) -> Agent | None:
        if name in self._pending:
            return self._pending[name]
        return self._state.agents.get(name)

    def _emit(self, type_: int, agent: Agent, prev: Agent | None, reason: int = 0) -> Event:
        event = Event(self.revision + 1, type_, agent, prev, reason)
        self.events.append(event)
        self._pending[agent.name] = agent if type_ == PUT else None
        return event

    # --- register -------------------------------------------------------------------

    def register(
        self,
        principal: Principal,
        request: registry_pb2.RegisterAgentRequest,
        agent_id: str,
        digest: bytes,
    ) -> registry_pb2.RegisterAgentResponse:
        """Register (or replace the caller's own registration of) an agent.

        A retry of an earlier request (same owner, request_id and `digest`) gets the first
        response and changes nothing; the same request_id with another request is refused.
        """
        key = (principal.subject, request.request_id)
        record = self._requests.get(key) or self._state.requests.get(key)
        if record is not None:
            if record.fingerprint != digest:
                raise errors.InvalidArgument(
                    "request_id was already used for a different RegisterAgent request",
                    [
                        errors.FieldViolation(
                            "request_id", "reused with a different request", rules.REUSED
                        )
                    ],
                    reason=reasons.REQUEST_ID_REUSED,
                )
            return record.response
        name = f"agents/{agent_id}"
        existing = self.get(name)
        if existing is not None and not may_act_on(principal, existing.owner):
            raise errors.AlreadyExists(
                f"{name} is registered by another principal", metadata={"name": name}
            )
        if existing is None:
            self._check_room(principal.subject)
        revision = self.revision + 1
        agent = Agent()
        agent.CopyFrom(request.agent)
        agent.name = name
        agent.owner = existing.owner if existing is not None else principal.subject
        agent.health = agent.health or SERVING
        agent.ttl.CopyFrom(
            _duration(
                granted_ttl_seconds(
                    request.agent.ttl if request.agent.HasField("ttl") else None, self._limits
                )
            )
        )
        agent.epoch = revision
        agent.create_revision = revision
        agent.update_revision = revision
        agent.create_time.CopyFrom(_timestamp(self._wall))
        agent.update_time.CopyFrom(_timestamp(self._wall))
        agent.etag = _etag(revision)
        self._check_size(agent)
        if existing is None:
            self._added(principal.subject, 1)
        self._emit(PUT, agent, existing)
        response = registry_pb2.RegisterAgentResponse(agent=agent, revision=revision)
        record = RequestRecord(digest, revision, response, self._wall)
        self._requests[key] = record
        self.new_requests.append((principal.subject, request.request_id, record))
        return response

    def _check_room(self, owner: str) -> None:
        """Refuse a new agent of `owner` when the registry, or `owner`'s quota, is full
        (counting what this batch added and removed so far)."""
        limits = self._limits
        if len(self._state.agents) + self._net_added >= limits.max_agents:
            raise errors.ResourceExhausted(
                f"the registry holds its maximum of {limits.max_agents} agents",
                retry_after=5.0,
                quota_subject="registry/agents",
                reason=reasons.TOO_MANY_AGENTS,
            )
        held = self._state.agents_per_owner.get(owner, 0) + self._owner_added.get(owner, 0)
        if held >= limits.max_agents_per_principal:
            raise errors.ResourceExhausted(
                f"{owner} holds its maximum of {limits.max_agents_per_principal} agents: "
                "deregister one first, or ask the operator for a larger quota",
                retry_after=5.0,
                quota_subject=f"principal:{owner}/agents",
                reason=reasons.TOO_MANY_AGENTS_FOR_PRINCIPAL,
                metadata={"limit": str(limits.max_agents_per_principal)},
            )

    def _check_size(self, agent: Agent) -> None:
        """Refuse an agent (as it would be stored) over `max_agent_bytes`: every page and
        watch response must be able to carry it."""
        size = agent.ByteSize()
        limit = self._limits.max_agent_bytes
        if size > limit:
            raise errors.InvalidArgument(
                f"{agent.name} would take {size} bytes, over the registry's limit of {limit} "
                "bytes per agent: advertise less (fewer DNA names, oracles or labels)",
                [
                    errors.FieldViolation(
                        "agent",
                        f"serializes to {size} bytes, over the limit of {limit} bytes",
                        rules.TOO_LARGE,
                    )
                ],
                reason=reasons.AGENT_TOO_LARGE,
                metadata={"limit": str(limit)},
            )

    def _added(self, owner: str, count: int) -> None:
        self._net_added += count
        self._owner_added[owner] = self._owner_added.get(owner, 0) + count

    # --- changes to an existing agent ------------------------------------------------------

    def _changed(self, before: Agent, after: Agent, *, limit_size: bool = False) -> Event | None:
        """The PUT of `after` if it differs from `before`. With `limit_size`, an `after`
        over the size limit is refused (heartbeats are not: health and load add a few
        dozen bytes at most, and a lease must never be lost to them)."""
        if after == before:
            return None
        revision = self.revision + 1
        after.update_revision = revision
        after.update_time.CopyFrom(_timestamp(self._wall))
        after.etag = _etag(revision)
        if limit_size:
            self._check_size(after)
        return self._emit(PUT, after, before)

    def heartbeat_change(
        self, principal: Principal, request: registry_pb2.HeartbeatRequest
    ) -> Event | None:
        """Apply the health and load a heartbeat reports; None if they change nothing.

        The rules are checked again here (not only before submitting) because the agent
        may have been deregistered or registered again while the change was queued.
        """
        agent = check_heartbeat(self.get(request.name), principal, request.name, request.epoch)
        after = Agent()
        after.CopyFrom(agent)
        if request.health:
            after.health = request.health
        if request.HasField("load"):
            after.load.CopyFrom(request.load)
        return self._changed(agent, after)

    def update(
        self, principal: Principal, request: registry_pb2.UpdateAgentRequest
    ) -> tuple[Agent, Event | None]:
        """UpdateAgent: the masked fields, conditional on the etag if one is given."""
        name = request.agent.name
        agent = check_owner(self.get(name), principal, name, request.agent.etag)
        paths = mask_paths(request.update_mask, UPDATABLE_PATHS)
        source: Any = request.agent  # field names come from the mask
        for detail, kind in _DETAILS_KIND.items():
            if detail in paths and agent.kind != kind and source.HasField(detail):
                raise errors.InvalidArgument.from_violations(
                    [
                        errors.FieldViolation(
                            f"agent.{detail}", f"is only for {detail} agents", rules.WRONG_KIND
                        )
                    ]
                )
        after = Agent()
        after.CopyFrom(agent)
        for path in paths:
            self._apply_path(after, source, path)
        event = self._changed(agent, after, limit_size=True)
        return (event.agent if event else agent), event

    def _apply_path(self, after: Agent, source: Any, path: str) -> None:
        """Copy one masked field of an UpdateAgent's agent onto `after` (details only for an
        agent of their kind; a TTL clamped as on registration)."""
        if path == "labels":
            after.labels.clear()
            after.labels.update(source.labels)
        elif path == "ttl":
            ttl = source.ttl if source.HasField("ttl") else None
            after.ttl.CopyFrom(_duration(granted_ttl_seconds(ttl, self._limits)))
        elif path in _DETAILS_KIND:
            if after.kind == _DETAILS_KIND[path]:
                after.ClearField(path)  # type: ignore[arg-type]
                if source.HasField(path):
                    getattr(after, path).CopyFrom(getattr(source, path))
        elif path == "load":
            after.load.CopyFrom(source.load)
        else:
            setattr(after, path, getattr(source, path))

    def deregister(self, principal: Principal, name: str, etag: str) -> Event:
        """DeregisterAgent: a DELETE of reason DEREGISTERED, conditional on the etag."""
        agent = check_owner(self.get(name), principal, name, etag)
        self._added(agent.owner, -1)
        return self._emit(DELETE, agent, agent, DEREGISTERED)

    def expire(self, name: str, epoch: int) -> Event | None:
        """The sweeper's expiry of a lapsed lease; None if the agent moved on meanwhile."""
        agent = self.get(name)
        if agent is None or agent.epoch != epoch:
            return None
        self._added(agent.owner, -1)
        return self._emit(DELETE, agent, agent, EXPIRED)


# --- the rules of a change to an existing agent (one implementation for every path) ----


def check_owner(agent: Agent | None, principal: Principal, name: str, etag: str = "") -> Agent:
    """The agent `name` that `principal` may change: it exists, the caller registered it
    (or is an admin), and `etag`, when given, is its current one.

    Permission is checked before the etag, so a stranger learns nothing from a stale one.
    """
    if agent is None:
        raise errors.NotFound(
            f"{name} not found (never registered, deregistered, or its lease expired)",
            metadata={"name": name},
        )
    if not may_act_on(principal, agent.owner):
        raise errors.PermissionDenied(
            f"{name} was registered by another principal", reason=reasons.NOT_OWNER
        )
    if etag and etag != agent.etag:
        raise errors.Aborted(
            f"{name} changed since etag {etag!r} (now {agent.etag!r}); read it again",
            reason=reasons.STALE_ETAG,
            metadata={"etag": agent.etag},
        )
    return agent


def check_heartbeat(agent: Agent | None, principal: Principal, name: str, epoch: int) -> Agent:
    """The agent a heartbeat of (`name`, `epoch`) by `principal` renews: `check_owner`,
    and the registration the caller holds must still be the current one.

    An older epoch was superseded (FAILED_PRECONDITION, EPOCH_MISMATCH: the caller must
    not take the name back). A greater one was never issued by this registry (a client
    bug, or a registry restored from an older copy): NOT_FOUND, so the caller registers
    again, as after a lost lease.
    """
    agent = check_owner(agent, principal, name)
    if epoch > agent.epoch:
        raise errors.NotFound(
            f"epoch {epoch} was never issued for {name} (its current epoch is "
            f"{agent.epoch}): register again",
            metadata={"name": name, "epoch": str(agent.epoch)},
        )
    if agent.epoch != epoch:
        raise errors.FailedPrecondition(
            f"{name} was registered again (epoch {agent.epoch}) since epoch {epoch}: this "
            "registration was superseded",
            reason=reasons.EPOCH_MISMATCH,
            metadata={"epoch": str(agent.epoch)},
        )
    return agent


def heartbeat_changes(agent: Agent, request: registry_pb2.HeartbeatRequest) -> bool:
    """Whether a heartbeat reports a health or load other than the stored ones (only then
    does it need the writer; otherwise it renews the lease and advances nothing)."""
    return bool(request.health and request.health != agent.health) or (
        request.HasField("load") and request.load != agent.load
    )
