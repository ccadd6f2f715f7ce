"""Watches: fan-out of committed events to bounded per-watcher queues, and the stream of
responses each watch sends.

Publishing never waits. Each committed event is turned, once per distinct filter, into
what that filter sees of it (`view`), and the `AgentEvent` message for each (event, view)
is built once and shared by every watcher that sees it (a hundred watchers of one burst
cost one message per event, not a hundred). A watcher whose queue cannot take a publish
is cut off: its stream ends with RESOURCE_EXHAUSTED (reason WATCHER_TOO_SLOW), never
silently skipping events. Registering a watcher and queueing its history happen in one
synchronous step, so a watch sees every event exactly once. The history a watch replays
is queued as the history's own events (references, no copies); their messages are built
only for the response being sent, so a thousand watches from an old revision cost a
thousand lists of references, not a thousand copies of the history.

Pure apart from asyncio's futures: no grpc, no clock (the progress interval is the only
timeout, and the decision what to send next, `next_response`, is a plain function).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence

import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors, reasons
from helix.registry.state import (
    DELETE,
    ENTRY_OVERHEAD,
    FILTERED_OUT,
    MAX_RESPONSE_BYTES,
    PUT,
    RESPONSE_OVERHEAD,
    Event,
    RegistryState,
    Selector,
    check_watchable,
)
from helix.registry.stats import RegistryStats

MAX_EVENTS_PER_RESPONSE = 1000
AgentEvent = registry_pb2.AgentEvent


def view(selector: Selector, event: Event) -> tuple[int, int] | None:
    """How a watch with `selector` sees `event`: (type, reason), or None if it does not.

    An update that makes an agent stop matching is a DELETE of reason FILTERED_OUT; one
    that makes it start matching is a PUT.
    """
    before = event.prev is not None and selector.matches(event.prev)
    if event.type == DELETE:
        return (DELETE, event.reason) if before else None
    if selector.matches(event.agent):
        return (PUT, 0)
    if before:
        return (DELETE, FILTERED_OUT)
    return None


def _message(event: Event, type_: int, reason: int) -> AgentEvent:
    message = AgentEvent(agent=event.agent, revision=event.revision)
    message.type = type_  # type: ignore[assignment]
    message.reason = reason  # type: ignore[assignment]
    return message


def _wire_size(message: AgentEvent) -> int:
    """What `message` adds to a WatchAgentsResponse (with its tag and length prefix)."""
    return message.ByteSize() + ENTRY_OVERHEAD


class _Messages:
    """The `AgentEvent` of each (event, view), built (and sized) on first use and then
    shared."""

    __slots__ = ("_built",)

    def __init__(self) -> None:
        self._built: dict[tuple[int, int, int], tuple[AgentEvent, int]] = {}

    def seen_by(self, selector: Selector, events: Iterable[Event]) -> tuple[list[AgentEvent], int]:
        """The messages a watch with `selector` gets for `events`, in order, and their
        size in a response."""
        found: list[AgentEvent] = []
        size = 0
        for event in events:
            seen = view(selector, event)
            if seen is None:
                continue
            type_, reason = seen
            key = (event.revision, type_, reason)
            built = self._built.get(key)
            if built is None:
                message = _message(event, type_, reason)
                built = self._built[key] = (message, _wire_size(message))
            found.append(built[0])
            size += built[1]
        return found, size


class Watcher:
    """One watch: its filter, its first revision, the history it still has to replay, and
    its bounded queue of ready events.

    `backlog` holds history events (shared with the registry's history), sent first; live
    events are queued in `pending` as finished `AgentEvent` messages (their view already
    decided), so the stream only batches them. `closed_reason`, once set, ends the stream
    with that error before anything else still queued is sent.
    """

    __slots__ = (
        "_waiter",
        "backlog",
        "capacity",
        "closed_reason",
        "max_bytes",
        "on_close",
        "pending",
        "pending_bytes",
        "selector",
        "start",
    )

    def __init__(
        self,
        selector: Selector,
        capacity: int,
        start: int = 0,
        max_bytes: int = MAX_RESPONSE_BYTES,
        on_close: Callable[[errors.HelixError], None] | None = None,
    ) -> None:
        self.selector = selector
        # A watch from a revision not yet reached skips the events before it.
        self.start = start
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.backlog: deque[Event] = deque()
        self.pending: deque[AgentEvent] = deque()
        # What `pending` adds to a response (never less: a fast path trusts it).
        self.pending_bytes = 0
        self.closed_reason: errors.HelixError | None = None
        # Told at once when the watch is closed: the stream serving it may be waiting on a
        # client that reads nothing, and would notice `closed_reason` only after that.
        self.on_close = on_close
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, messages: Sequence[AgentEvent], size: int | None = None) -> bool:
        """Queue `messages` (all or none), of `size` bytes in a response if known; False
        when they do not fit."""
        if self.start and messages and messages[0].revision < self.start:
            messages = [m for m in messages if m.revision >= self.start]
            size = None
        if len(self.pending) + len(messages) > self.capacity:
            return False
        if messages:
            self.pending.extend(messages)
            self.pending_bytes += sum(map(_wire_size, messages)) if size is None else size
            self._wake()
        return True

    def close(self, reason: errors.HelixError) -> None:
        """End the stream with `reason` (it is raised before anything still queued)."""
        self.closed_reason = reason
        self._wake()
        if self.on_close is not None:
            self.on_close(reason)

    async def wait(self, idle_limit: float | None = None) -> None:
        """Return once an event is queued or the watch is closed, or after `idle_limit`
        seconds without either (then the stream sends a bookmark)."""
        if self.backlog or self.pending or self.closed_reason is not None:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            if idle_limit is None:
                await waiter
            else:
                await asyncio.wait((waiter,), timeout=idle_limit)
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def next_response(watcher: Watcher, state: RegistryState) -> registry_pb2.WatchAgentsResponse:
    """What `watcher` sends next: up to MAX_EVENTS_PER_RESPONSE queued events in at most
    `watcher.max_bytes` (one event however large), or, only when nothing is queued, a
    progress bookmark.

    A bookmark promises that every matching event up to its `revision` was delivered.
    Events are queued in the same synchronous step that installs them, so an empty queue
    means nothing up to `state.revision` is pending; with anything queued, the events go
    first. Raises the watcher's `closed_reason` if it was closed.
    """
    if watcher.closed_reason is not None:
        raise watcher.closed_reason
    response = registry_pb2.WatchAgentsResponse(
        revision=state.revision, compact_revision=state.first_available
    )
    replayed = _replay(watcher) if watcher.backlog else []
    if replayed:
        response.events.extend(replayed)
    elif watcher.pending:
        pending = watcher.pending
        if (
            len(pending) <= MAX_EVENTS_PER_RESPONSE
            and RESPONSE_OVERHEAD + watcher.pending_bytes <= watcher.max_bytes
        ):
            response.events.extend(pending)  # all of it fits: no per-event work
            pending.clear()
            watcher.pending_bytes = 0
        else:
            response.events.extend(_take(watcher))
    else:
        response.progress = True
    return response


def _replay(watcher: Watcher) -> list[AgentEvent]:
    """The next events of `watcher`'s backlog it sees (at least one, if any is left) that
    fit a response: the messages are built here, for this response only."""
    taken: list[AgentEvent] = []
    size = RESPONSE_OVERHEAD
    backlog = watcher.backlog
    while backlog and len(taken) < MAX_EVENTS_PER_RESPONSE:
        event = backlog[0]
        seen = view(watcher.selector, event)
        if seen is not None:
            message = _message(event, *seen)
            size += message.ByteSize() + ENTRY_OVERHEAD
            if taken and size > watcher.max_bytes:
                break  # (built again for the next response)
            taken.append(message)
        backlog.popleft()
    return taken


def _take(watcher: Watcher) -> list[AgentEvent]:
    """The first queued events (at least one) that fit a response of `max_bytes`."""
    taken: list[AgentEvent] = []
    size = RESPONSE_OVERHEAD
    pending = watcher.pending
    while pending and len(taken) < MAX_EVENTS_PER_RESPONSE:
        item = _wire_size(pending[0])
        if taken and size + item > watcher.max_bytes:
            break
        size += item
        taken.append(pending.popleft())
        watcher.pending_bytes -= item
    if not pending:
        watcher.pending_bytes = 0
    return taken


class WatchHub:
    """The set of live watchers, bounded in number."""

    def __init__(
        self,
        max_watchers: int,
        buffer: int,
        stats: RegistryStats | None = None,
        *,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._watchers: set[Watcher] = set()
        self._max = max_watchers
        self._buffer = buffer
        self._max_response_bytes = max_response_bytes
        self._closed: errors.HelixError | None = None
        self.stats = stats if stats is not None else RegistryStats()

    def __len__(self) -> int:
        return len(self._watchers)

    def add(
        self,
        selector: Selector,
        backlog: Iterable[Event] = (),
        start: int = 0,
        on_close: Callable[[errors.HelixError], None] | None = None,
    ) -> Watcher:
        """A new watcher from revision `start`, primed with `backlog` (the history it must
        replay first, which does not count against its buffer); `on_close` is told when
        the watch is closed (cut off or drained)."""
        if self._closed is not None:
            raise self._closed
        if len(self._watchers) >= self._max:
            raise errors.ResourceExhausted(
                f"the registry serves at most {self._max} watches at once",
                retry_after=1.0,
                reason=reasons.TOO_MANY_WATCHERS,
            )
        watcher = Watcher(selector, self._buffer, start, self._max_response_bytes, on_close)
        watcher.backlog.extend(backlog)
        self._watchers.add(watcher)
        return watcher

    def remove(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def publish(self, events: Sequence[Event]) -> None:
        """Queue committed events for every watcher that sees them; cut off the slow ones.

        The view of the batch is computed once per distinct selector, not per watcher.
        """
        if not self._watchers or not events:
            return
        messages = _Messages()
        by_selector: dict[Selector, tuple[list[AgentEvent], int]] = {}
        for watcher in list(self._watchers):
            seen = by_selector.get(watcher.selector)
            if seen is None:
                seen = by_selector[watcher.selector] = messages.seen_by(watcher.selector, events)
            if seen[0] and not watcher.offer(*seen):
                self._cut_off(watcher)

    def _cut_off(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        self.stats.watchers_cut_off += 1
        watcher.close(
            errors.ResourceExhausted(
                "this watch fell too far behind the registry's events and was cancelled; "
                "resume from the last revision received + 1",
                reason=reasons.WATCHER_TOO_SLOW,
            )
        )

    async def watch(
        self,
        state: RegistryState,
        selector: Selector,
        start: int = 0,
        progress_interval: float | None = None,
        on_close: Callable[[errors.HelixError], None] | None = None,
    ) -> AsyncGenerator[registry_pb2.WatchAgentsResponse, None]:
        """The responses of a watch of `state` from revision `start` (0: from now on),
        until it is closed (raising its reason) or the caller stops iterating.

        Everything from the compaction check to queueing the history runs in one step
        when iteration begins, so no event is missed or sent twice. With
        `progress_interval`, a watch idle that long gets a bookmark (`next_response`).
        `on_close` is told at once when the watch is closed, before its reason is raised
        here (the server ends the call with it even while a write waits for the client).
        """
        check_watchable(state, start)
        backlog = state.events_since(start) if 0 < start <= state.revision else ()
        watcher = self.add(selector, backlog, start, on_close)
        try:
            while True:
                await watcher.wait(progress_interval)
                yield next_response(watcher, state)
        finally:
            self.remove(watcher)

    def end_all(self, reason: errors.HelixError) -> None:
        """End every watch with `reason`; new ones are welcome (the state was reloaded)."""
        for watcher in self._watchers:
            watcher.close(reason)
        self._watchers.clear()

    def close_all(self, reason: errors.HelixError) -> None:
        """End every watch with `reason`, and refuse new ones with it from now on."""
        self._closed = reason
        for watcher in self._watchers:
            watcher.close(reason)
        self._watchers.clear()
