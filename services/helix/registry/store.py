"""What the registry needs from durable storage, independent of the backend.

The registry core keeps the whole committed state in memory and hands the store one
ordered batch of changes per group commit. A backend (SQLite here; etcd later) persists
each batch atomically and gives everything back on open. Nothing above this protocol
may assume SQLite: values are opaque bytes (serialized protobuf messages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

# AgentEventType values (helix.v1), repeated here so backends need not import protobuf.
EVENT_PUT = 1
EVENT_DELETE = 2


class StoreError(OSError):
    """The store cannot be used; the message names the file or endpoint and the problem.

    An OSError (a failure of the environment, like a port in use), so a `helix` command
    that cannot open its store stops with that one line (exit status 1), no traceback.
    """


class StoreCorrupt(StoreError):
    """The stored data is damaged, or lost changes it had acknowledged; the message names
    the file (and the table and key of a bad record) and what the operator can do. Nothing
    was changed."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One committed change: `agent` is the new state (PUT) or the last state (DELETE)."""

    revision: int
    type: int
    name: str
    agent: bytes
    prev: bytes | None
    reason: int


class StoreConflict(Exception):
    """A shared store's revision is not the one a commit was based on: another registry
    replica committed first. Nothing was written; `revision` is the store's, `events` the
    first of those the committer had not seen (as many as one read returned)."""

    def __init__(
        self, revision: int, events: list[StoredEvent] | None = None, etcd_revision: int = 0
    ) -> None:
        super().__init__(f"the registry is at revision {revision} in the store")
        self.revision = revision
        self.events = events or []
        # A store revision to follow up to before trying again (an idempotency record
        # another replica stored first), 0 when none.
        self.etcd_revision = etcd_revision


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """An idempotency record: a RegisterAgent retried with `request_id` gets `response`."""

    owner: str
    request_id: str
    fingerprint: bytes
    revision: int
    response: bytes
    created_at: float


@dataclass
class Snapshot:
    """Everything a backend holds, as read on open."""

    revision: int = 0
    agents: dict[str, bytes] = field(default_factory=dict)
    events: list[StoredEvent] = field(default_factory=list)
    requests: list[StoredRequest] = field(default_factory=list)  # the oldest first
    source: str = ""  # where it was read from (a file, an endpoint), for error messages


class RegistryStore(Protocol):
    """Durable storage of the registry: agents, the event history, idempotency records."""

    async def open(self, *, accept_loss: bool = False) -> Snapshot:
        """Check integrity, create the schema if new, and return what is stored.

        Raises `StoreCorrupt` (changing nothing) when the stored data is damaged, or when
        it lost changes the store knows were acknowledged (a database missing, empty or
        older than the revision it had reached). With `accept_loss`, such a store starts
        from what it has, its revision taken forward to the last one reached (so revisions
        never go backwards) and its event history dropped.
        """
        ...

    async def commit(
        self,
        events: Sequence[StoredEvent],
        requests: Sequence[StoredRequest],
        *,
        forget_events_before: int = 0,
        forget_requests_before: float = 0.0,
        forget_requests: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Persist one batch atomically: apply `events` (consecutive revisions, in order) to
        the stored agents, append them to the history, record `requests`; drop history
        events with revision < `forget_events_before`, requests created before
        `forget_requests_before` and the requests keyed (owner, request_id) in
        `forget_requests`. When this returns, the batch survives a crash."""
        ...

    async def close(self) -> None:
        """Release the store; safe to call twice."""
        ...
