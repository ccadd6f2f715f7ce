"""Between the core and the store: committed events and idempotency records as the opaque
bytes a `RegistryStore` keeps, and the committed state rebuilt from what it gives back.

Backends never see protobuf; the core never sees bytes. This is the one place that knows
both.
"""

from __future__ import annotations

import helix.v1.registry_pb2 as registry_pb2
from helix.registry.core import Batch
from helix.registry.state import Event, RegistryState, RequestRecord
from helix.registry.store import Snapshot, StoredEvent, StoredRequest


def stored_events(batch: Batch) -> list[StoredEvent]:
    """The changes of `batch`, in revision order, as the store keeps them."""
    return [
        StoredEvent(
            e.revision,
            e.type,
            e.name,
            e.agent.SerializeToString(),
            e.prev.SerializeToString() if e.prev is not None else None,
            e.reason,
        )
        for e in batch.events
    ]


def stored_requests(batch: Batch) -> list[StoredRequest]:
    """The RegisterAgent answers `batch` must remember, as the store keeps them."""
    return [
        StoredRequest(
            owner,
            request_id,
            r.fingerprint,
            r.revision,
            r.response.SerializeToString(),
            r.created_at,
        )
        for owner, request_id, r in batch.new_requests
    ]


def load_state(state: RegistryState, snapshot: Snapshot) -> None:
    """Fill an empty `state` with what a store returned on open.

    Equal stored agents become one object, as they were before the restart: an event's
    previous state is the agent of the event before it, and the last event of an agent is
    its current state, so the history costs about what it did in memory, not twice that.
    """
    parsed: dict[bytes, registry_pb2.Agent] = {}

    def agent_of(raw: bytes) -> registry_pb2.Agent:
        agent = parsed.get(raw)
        if agent is None:
            agent = parsed[raw] = registry_pb2.Agent.FromString(raw)
        return agent

    for stored in snapshot.events:
        prev = agent_of(stored.prev) if stored.prev is not None else None
        event = Event(stored.revision, stored.type, agent_of(stored.agent), prev, stored.reason)
        state.history.append(event)
        state.history_size += event.size
    state.trim_history()
    state.load_agents({name: agent_of(raw) for name, raw in snapshot.agents.items()})
    parsed.clear()
    state.revision = snapshot.revision
    for request in snapshot.requests:
        response = registry_pb2.RegisterAgentResponse.FromString(request.response)
        record = RequestRecord(request.fingerprint, request.revision, response, request.created_at)
        state.remember(request.owner, request.request_id, record)
