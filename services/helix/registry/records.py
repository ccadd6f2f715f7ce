"""Between the core and the store: committed events and idempotency records as the opaque
bytes a `RegistryStore` keeps, and the committed state rebuilt from what it gives back.

Backends never see protobuf; the core never sees bytes. This is the one place that knows
both.
"""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError

import helix.v1.registry_pb2 as registry_pb2
from helix.registry.core import Batch
from helix.registry.state import Event, RegistryState, RequestRecord
from helix.registry.store import (
    EVENT_DELETE,
    EVENT_PUT,
    Snapshot,
    StoreCorrupt,
    StoredEvent,
    StoredRequest,
)

log = logging.getLogger("helix.registry")


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


def load_state(state: RegistryState, snapshot: Snapshot) -> list[tuple[str, str]]:
    """Fill an empty `state` with what a store returned on open. Returns the keys of the
    idempotency records that could not be read: they are dropped (a warning is logged for
    each; they are only a retry cache), and the store should forget them too.

    Any other record that cannot be read or breaks the store's invariants raises
    `StoreCorrupt` naming the store, the table and the key: a registry must not start on
    part of its state.

    Equal stored agents become one object, as they were before the restart: an event's
    previous state is the agent of the event before it, and the last event of an agent is
    its current state, so the history costs about what it did in memory, not twice that.
    """
    reader = _Reader(snapshot.source)
    for stored in snapshot.events:
        event = reader.event(stored, state.history[-1].revision if state.history else None)
        state.history.append(event)
        state.history_size += event.size
    if state.history and state.history[-1].revision != snapshot.revision:
        raise reader.corrupt(
            "events",
            state.history[-1].revision,
            f"the history ends at revision {state.history[-1].revision}, the registry's "
            f"revision is {snapshot.revision}",
        )
    state.trim_history()
    state.load_agents(
        {name: reader.agent("agents", name, raw, name) for name, raw in snapshot.agents.items()}
    )
    state.revision = snapshot.revision
    dropped = []
    for request in snapshot.requests:
        record = reader.request(request)
        if record is None:
            dropped.append((request.owner, request.request_id))
        else:
            state.remember(request.owner, request.request_id, record)
    return dropped


def read_events(stored: list[StoredEvent], source: str, last: Event | None) -> list[Event]:
    """Events another registry replica committed, as this one installs them (after `last`,
    the newest in its history). An event that cannot be read raises `StoreCorrupt`."""
    reader = _Reader(source)
    events = []
    previous = last.revision if last is not None else None
    for item in stored:
        event = reader.event(item, previous)
        events.append(event)
        previous = event.revision
    return events


def read_request(stored: StoredRequest, source: str) -> RequestRecord | None:
    """An idempotency record another replica stored (None, logged, if unreadable)."""
    return _Reader(source).request(stored)


class _Reader:
    """Decodes and checks stored records, sharing equal agents, and words what is wrong
    with one: the store, the table, the key."""

    def __init__(self, source: str) -> None:
        self._source = source or "the registry's store"
        self._parsed: dict[bytes, registry_pb2.Agent] = {}

    def corrupt(self, table: str, key: object, problem: str) -> StoreCorrupt:
        return StoreCorrupt(
            f"{self._source}: corrupt record in table {table}, key {key!r}: {problem}. The "
            "registry did not start and changed nothing in it; restore it from a backup, or "
            f"remove that record ({_REMEDY[table].format(key=key)}) to start without it"
        )

    def agent(self, table: str, key: object, raw: object, name: str | None) -> registry_pb2.Agent:
        """The Agent stored as `raw` (named `name` when that is known)."""
        if not isinstance(raw, bytes):
            raise self.corrupt(table, key, f"a {type(raw).__name__} where an Agent belongs")
        agent = self._parsed.get(raw)
        if agent is None:
            try:
                agent = registry_pb2.Agent.FromString(raw)
            except DecodeError:
                raise self.corrupt(table, key, "not a valid Agent message") from None
            self._parsed[raw] = agent
        if name is not None and agent.name != name:
            raise self.corrupt(table, key, f"it holds the agent {agent.name!r}")
        return agent

    def event(self, stored: StoredEvent, last: int | None) -> Event:
        key = stored.revision
        if not isinstance(key, int) or (last is not None and key != last + 1):
            raise self.corrupt("events", key, f"not the revision after {last}")
        if stored.type not in (EVENT_PUT, EVENT_DELETE) or not isinstance(stored.reason, int):
            raise self.corrupt("events", key, f"event type {stored.type!r} is not PUT or DELETE")
        if not isinstance(stored.name, str):
            raise self.corrupt("events", key, "its name is not text")
        agent = self.agent("events", key, stored.agent, stored.name)
        prev = None
        if stored.prev is not None:
            prev = self.agent("events", key, stored.prev, stored.name)
        return Event(key, stored.type, agent, prev, stored.reason)

    def request(self, stored: StoredRequest) -> RequestRecord | None:
        """The record, or None (logged) if it cannot be read."""
        problem = None
        if not isinstance(stored.fingerprint, bytes) or not isinstance(stored.revision, int):
            problem = "its fingerprint or revision has the wrong type"
        elif not isinstance(stored.created_at, int | float) or not isinstance(
            stored.response, bytes
        ):
            problem = "its creation time or response has the wrong type"
        else:
            try:
                response = registry_pb2.RegisterAgentResponse.FromString(stored.response)
            except DecodeError:
                problem = "its response is not a valid RegisterAgentResponse message"
            else:
                return RequestRecord(
                    stored.fingerprint, stored.revision, response, float(stored.created_at)
                )
        log.warning(
            "%s: bad record in table requests, key (%r, %r): %s; dropped (it is only a retry "
            "cache: a retry of that RegisterAgent registers again)",
            self._source,
            stored.owner,
            stored.request_id,
            problem,
        )
        return None


# How an operator removes one bad record of each table (sqlite3 on the file).
_REMEDY = {
    "agents": "DELETE FROM agents WHERE name = '{key}'; the agent registers again",
    "events": "DELETE FROM events WHERE revision <= {key}; older history goes with it",
}
