"""The registry's committed state: agents, the event history, idempotency records, filters.

Pure and synchronous (no grpc, no I/O, no clock of its own). `RegistryState` is what
readers see: it changes only by `install` of a batch the store has made durable (see
`core.Batch`, which computes batches). Lists read a snapshot revision by undoing the
history after it; watches replay the history from a revision.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors, reasons, rules
from helix.registry.labels import LabelRequirement, parse_label_selector

Agent = registry_pb2.Agent
PUT = registry_pb2.AGENT_EVENT_TYPE_PUT
DELETE = registry_pb2.AGENT_EVENT_TYPE_DELETE
DEREGISTERED = registry_pb2.AGENT_DELETE_REASON_DEREGISTERED
EXPIRED = registry_pb2.AGENT_DELETE_REASON_EXPIRED
FILTERED_OUT = registry_pb2.AGENT_DELETE_REASON_FILTERED_OUT
SERVING = registry_pb2.AGENT_HEALTH_SERVING

# A ListAgents page or a WatchAgents response stays within this many bytes, the largest
# message every gRPC client accepts by default (as GenerateResponse does); one agent larger
# than that on its own still goes out, alone.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# Room for a response's own fields (a page token is at most 1024 characters) around its
# agents or events, and for the tag and length prefix of each of them.
RESPONSE_OVERHEAD = 2048
ENTRY_OVERHEAD = 6


# The default bounds of the history: events, and bytes of their serialized agents.
HISTORY_LIMIT = 10_000
HISTORY_BYTE_LIMIT = 64 * 1024 * 1024
# The default bounds of the idempotency records (RegisterAgent answers kept for retries).
REQUEST_LIMIT = 100_000
REQUEST_BYTE_LIMIT = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change. `agent` is the new state (PUT) or the last state (DELETE).

    `size` is what the history pays for it: its agent and previous state serialized, as
    the store keeps them.
    """

    revision: int
    type: int
    agent: Agent
    prev: Agent | None
    reason: int = 0
    size: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        prev = self.prev.ByteSize() if self.prev is not None else 0
        object.__setattr__(self, "size", self.agent.ByteSize() + prev)

    @property
    def name(self) -> str:
        return self.agent.name


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What a RegisterAgent with this (owner, request_id) answered; `size` is what keeping
    it costs (its response serialized, as the store keeps it)."""

    fingerprint: bytes
    revision: int
    response: registry_pb2.RegisterAgentResponse
    created_at: float
    size: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", self.response.ByteSize() + len(self.fingerprint))


@dataclass(frozen=True, slots=True)
class Selector:
    """A watch or list filter: kind, label requirements, and (lists only) health."""

    kind: int = 0
    labels: tuple[LabelRequirement, ...] = ()
    health: int = 0

    @classmethod
    def parse(cls, kind: int, label_selector: str, health: int = 0) -> Selector:
        requirements, problems = parse_label_selector(label_selector)
        if problems:  # validated before; kept as a guard for direct callers
            raise errors.InvalidArgument.from_violations(
                [errors.FieldViolation("label_selector", problems[0], rules.SELECTOR)]
            )
        return cls(kind, tuple(requirements), health)

    def matches(self, agent: Agent) -> bool:
        if self.kind and agent.kind != self.kind:
            return False
        if self.health and agent.health != self.health:
            return False
        return all(r.matches(agent.labels) for r in self.labels)


@dataclass
class RegistryState:
    """The committed registry: agents by name (and in name order), revision, history.

    The history keeps the latest events within both `history_limit` events and
    `history_byte_limit` bytes (`Event.size`); the oldest are forgotten first. The
    idempotency records are bounded the same way (`request_limit`, `request_byte_limit`)
    when `trim_requests` is called.
    """

    history_limit: int = HISTORY_LIMIT
    history_byte_limit: int = HISTORY_BYTE_LIMIT
    agents: dict[str, Agent] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    revision: int = 0
    history: deque[Event] = field(default_factory=deque)
    history_size: int = 0  # sum of the history's Event.size
    request_limit: int = REQUEST_LIMIT
    request_byte_limit: int = REQUEST_BYTE_LIMIT
    # In the order they were committed (oldest first), so the oldest is forgotten first.
    requests: dict[tuple[str, str], RequestRecord] = field(default_factory=dict)
    requests_size: int = 0  # sum of the records' RequestRecord.size
    # How many agents each principal (Agent.owner) holds: the per-principal quota.
    agents_per_owner: dict[str, int] = field(default_factory=dict)

    @property
    def first_available(self) -> int:
        """The oldest revision still in the history (revision + 1 when it is empty)."""
        return self.history[0].revision if self.history else self.revision + 1

    def install(self, events: Sequence[Event]) -> int:
        """Make a durable batch visible; returns the first revision now forgotten, or 0."""
        for event in events:
            if event.revision != self.revision + 1:
                raise errors.Internal(f"revision {event.revision} after {self.revision}")
            name = event.name
            if event.type == DELETE:
                gone = self.agents.pop(name, None)
                if gone is not None:
                    del self.names[bisect.bisect_left(self.names, name)]
                    self._count_owner(gone.owner, -1)
            else:
                if name not in self.agents:
                    bisect.insort(self.names, name)
                    self._count_owner(event.agent.owner, 1)
                self.agents[name] = event.agent
            self.history.append(event)
            self.history_size += event.size
            self.revision = event.revision
        return self.trim_history()

    def _over_bounds(self, count: int, size: int) -> bool:
        return count > self.history_limit or size > self.history_byte_limit

    def trim_history(self) -> int:
        """Forget the oldest events beyond the bounds; returns the first revision now kept
        if any was forgotten, else 0."""
        forgotten = 0
        history = self.history
        while history and self._over_bounds(len(history), self.history_size):
            oldest = history.popleft()
            self.history_size -= oldest.size
            forgotten = oldest.revision + 1
        return forgotten

    def first_kept_after(self, events: Sequence[Event]) -> int:
        """The oldest revision the history will keep once `events` (the next ones) are
        installed: what `install` will forget, known before, so the store can forget the
        same in the commit that makes `events` durable."""
        count = len(self.history) + len(events)
        size = self.history_size + sum(e.size for e in events)
        for event in itertools.chain(self.history, events):
            if not self._over_bounds(count, size):
                return event.revision
            count -= 1
            size -= event.size
        return (events[-1].revision if events else self.revision) + 1

    def _count_owner(self, owner: str, delta: int) -> None:
        held = self.agents_per_owner.get(owner, 0) + delta
        if held > 0:
            self.agents_per_owner[owner] = held
        else:
            self.agents_per_owner.pop(owner, None)

    def load_agents(self, agents: dict[str, Agent]) -> None:
        """Take `agents` (an empty state's first fill, from the store) with their indexes."""
        self.agents = agents
        self.names = sorted(agents)
        self.agents_per_owner = {}
        for agent in agents.values():
            self._count_owner(agent.owner, 1)

    def remember(self, owner: str, request_id: str, record: RequestRecord) -> None:
        old = self.requests.pop((owner, request_id), None)
        if old is not None:
            self.requests_size -= old.size
        self.requests[(owner, request_id)] = record
        self.requests_size += record.size

    def trim_requests(self) -> list[tuple[str, str]]:
        """Forget the oldest idempotency records beyond the bounds; returns their keys
        (owner, request_id), for the store to forget too."""
        requests = self.requests
        forgotten: list[tuple[str, str]] = []
        while requests and (
            len(requests) > self.request_limit or self.requests_size > self.request_byte_limit
        ):
            oldest = next(iter(requests))
            self.requests_size -= requests.pop(oldest).size
            forgotten.append(oldest)
        return forgotten

    def answered(
        self, owner: str, request_id: str, digest: bytes
    ) -> registry_pb2.RegisterAgentResponse | None:
        """The committed response to this very RegisterAgent (a retry), if there is one.

        Lets a retry be answered without queueing behind the writer; a request_id reused
        for another request is left to `Batch.register`, which refuses it.
        """
        record = self.requests.get((owner, request_id))
        if record is not None and record.fingerprint == digest:
            return record.response
        return None

    def forget_request(self, owner: str, request_id: str) -> None:
        old = self.requests.pop((owner, request_id), None)
        if old is not None:
            self.requests_size -= old.size

    def forget_requests_before(self, created_at: float) -> None:
        stale = [k for k, r in self.requests.items() if r.created_at < created_at]
        for key in stale:
            self.requests_size -= self.requests.pop(key).size

    def events_since(self, revision: int) -> Iterator[Event]:
        """History events with revision >= `revision` (which must be available)."""
        if not self.history:
            return iter(())
        start = max(0, revision - self.history[0].revision)
        return (self.history[i] for i in range(start, len(self.history)))

    def page(
        self,
        snapshot: int,
        selector: Selector,
        after: str,
        limit: int,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> tuple[list[Agent], str | None]:
        """Up to `limit` matching agents named after `after`, as of revision `snapshot`, in
        a response of at most `max_bytes` (at least one agent, however large).

        Returns the page and the name to continue after (None at the end). The state at an
        older snapshot is the current state with the later history events undone.
        """
        if snapshot < self.first_available - 1:
            raise _compacted(self.first_available)
        overlay: dict[str, Agent | None] = {}
        for event in reversed(list(self.events_since(snapshot + 1))):
            overlay[event.name] = event.prev if event.type == PUT else event.agent
        names = self.names
        extra = sorted(n for n, a in overlay.items() if a is not None and n not in self.agents)
        found: list[Agent] = []
        size = RESPONSE_OVERHEAD
        for name in _merged(names, extra, after):
            agent = overlay[name] if name in overlay else self.agents.get(name)
            if agent is None or not selector.matches(agent):
                continue
            size += agent.ByteSize() + ENTRY_OVERHEAD
            if len(found) == limit or (found and size > max_bytes):
                return found, found[-1].name
            found.append(agent)
        return found, None


def _merged(names: list[str], extra: list[str], after: str) -> Iterator[str]:
    """The sorted union of two sorted name lists, starting after `after`."""
    i = bisect.bisect_right(names, after) if after else 0
    j = bisect.bisect_right(extra, after) if after else 0
    while i < len(names) or j < len(extra):
        if j >= len(extra) or (i < len(names) and names[i] < extra[j]):
            yield names[i]
            i += 1
        elif i >= len(names) or extra[j] < names[i]:
            yield extra[j]
            j += 1
        else:
            yield names[i]
            i += 1
            j += 1


def _compacted(first_available: int) -> errors.OutOfRange:
    return errors.OutOfRange(
        f"revision {first_available - 1} and older have been compacted; "
        f"the oldest available is {first_available}: list again, then watch from its revision",
        reason=reasons.REVISION_COMPACTED,
        metadata={"compact_revision": str(first_available)},
    )


def check_watchable(state: RegistryState, start: int) -> None:
    """Raise OUT_OF_RANGE if a watch from `start` (> 0) would miss compacted events."""
    if 0 < start < state.first_available:
        raise _compacted(state.first_available)


def selector_from(request: object) -> Selector:
    """The filter of a ListAgentsRequest or WatchAgentsRequest."""
    kind = getattr(request, "kind", 0)
    label_selector = getattr(request, "label_selector", "")
    health = getattr(request, "health", 0)
    return Selector.parse(kind, label_selector, health)
