"""Watch fan-out: one bounded queue per watcher; a watcher that falls behind is cut off.

Publishing never waits: an event is put on each matching watcher's queue at once, and a
watcher whose queue is full is marked too slow, removed, and its stream ends with
RESOURCE_EXHAUSTED (reason WATCHER_TOO_SLOW) — never silently skipped. Registration and
history replay happen in one synchronous step, so a watch sees every event exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from helix.common import errors, reasons
from helix.registry.core import DELETE, FILTERED_OUT, PUT, Event, Selector


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


class Watcher:
    """One watch stream's filter and bounded queue of deliveries."""

    def __init__(self, selector: Selector, capacity: int) -> None:
        self.selector = selector
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=capacity)
        self.too_slow = False
        self.closed_reason: errors.HelixError | None = None


class WatchHub:
    """The set of live watchers, bounded in number."""

    def __init__(self, max_watchers: int, buffer: int) -> None:
        self._watchers: set[Watcher] = set()
        self._max = max_watchers
        self._buffer = buffer
        self.cut_off = 0
        self.on_cut_off: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._watchers)

    def add(self, selector: Selector, backlog: Iterable[Event]) -> Watcher:
        """A new watcher, primed with `backlog` (history it must replay first)."""
        if len(self._watchers) >= self._max:
            raise errors.ResourceExhausted(
                f"the registry serves at most {self._max} watches at once",
                retry_after=1.0,
                reason=reasons.TOO_MANY_WATCHERS,
            )
        backlog = [e for e in backlog if view(selector, e) is not None]
        watcher = Watcher(selector, self._buffer + len(backlog))
        for event in backlog:
            watcher.queue.put_nowait(event)
        self._watchers.add(watcher)
        return watcher

    def remove(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def publish(self, events: Iterable[Event]) -> None:
        """Hand committed events to every watcher that sees them; cut off the slow ones."""
        events = list(events)
        for watcher in list(self._watchers):
            for event in events:
                if view(watcher.selector, event) is None:
                    continue
                try:
                    watcher.queue.put_nowait(event)
                except asyncio.QueueFull:
                    self._cut_off(watcher)
                    break

    def _cut_off(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        self.cut_off += 1
        if self.on_cut_off is not None:
            self.on_cut_off()
        watcher.too_slow = True
        watcher.closed_reason = errors.ResourceExhausted(
            "this watch fell too far behind the registry's events and was cancelled; "
            "resume from the last revision received + 1",
            reason=reasons.WATCHER_TOO_SLOW,
        )
        _wake(watcher)

    def close_all(self, reason: errors.HelixError) -> None:
        """End every watch (server shutdown): each stream ends with `reason`."""
        for watcher in list(self._watchers):
            watcher.closed_reason = reason
            _wake(watcher)
        self._watchers.clear()


def _wake(watcher: Watcher) -> None:
    """Wake the watcher's reader; it checks `closed_reason` before every delivery (a full
    queue needs no wake-up: the reader is not waiting)."""
    with contextlib.suppress(asyncio.QueueFull):
        watcher.queue.put_nowait(None)
