"""WatchRun's live fan-out: one bounded queue per watcher, limits on watchers in all and
per principal. A watcher whose queue would overflow is marked too slow (its stream ends
with WATCHER_TOO_SLOW and the client resumes from its last sequence): events are never
dropped silently."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import helix.v1.orchestrator_pb2 as orchestrator_pb2
from helix.common import errors, reasons


class Watchers:
    """Live event fan-out: one bounded queue per watcher; a full queue marks it too slow."""

    def __init__(self, *, queue: int, max_watchers: int, max_per_principal: int) -> None:
        self.queue = queue
        self.max_watchers = max_watchers
        self.max_per_principal = max_per_principal
        self._by_run: dict[str, set[Watcher]] = {}
        self._by_principal: dict[str, int] = {}
        self.count = 0

    def subscribe(self, run: str, principal: str) -> Watcher:
        if self.count >= self.max_watchers:
            raise errors.ResourceExhausted(
                f"the orchestrator serves {self.count} watchers, its limit",
                retry_after=1.0,
                reason=reasons.TOO_MANY_WATCHERS,
            )
        if self._by_principal.get(principal, 0) >= self.max_per_principal:
            raise errors.ResourceExhausted(
                f"{principal} already holds {self.max_per_principal} WatchRun streams, its limit",
                retry_after=1.0,
                reason=reasons.TOO_MANY_WATCHERS,
            )
        watcher = Watcher(run, principal, self.queue)
        self._by_run.setdefault(run, set()).add(watcher)
        self._by_principal[principal] = self._by_principal.get(principal, 0) + 1
        self.count += 1
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        found = self._by_run.get(watcher.run)
        if found is None or watcher not in found:
            return
        found.discard(watcher)
        if not found:
            del self._by_run[watcher.run]
        left = self._by_principal[watcher.principal] - 1
        if left:
            self._by_principal[watcher.principal] = left
        else:
            del self._by_principal[watcher.principal]
        self.count -= 1

    def close(self, why: str) -> None:
        """End every watch (UNAVAILABLE with `why`): the service is stopping."""
        for watchers in self._by_run.values():
            for watcher in watchers:
                watcher.close(why)

    def close_run(self, run: str, why: str) -> None:
        """End the live watches of one run (UNAVAILABLE with `why`; events already queued
        are delivered first): it is no longer driven here."""
        for watcher in self._by_run.get(run, ()):
            watcher.close(why)

    def publish(self, run: str, events: Sequence[orchestrator_pb2.RunEvent]) -> None:
        for watcher in self._by_run.get(run, ()):
            watcher.push(events)


class Watcher:
    def __init__(self, run: str, principal: str, maxsize: int) -> None:
        self.run = run
        self.principal = principal
        self.maxsize = maxsize
        self.events: list[orchestrator_pb2.RunEvent] = []
        self.overflowed = False
        self.closed = ""  # why the watch must end (the service stops)
        self.ready = asyncio.Event()

    def push(self, events: Sequence[orchestrator_pb2.RunEvent]) -> None:
        if self.overflowed:
            return
        if len(self.events) + len(events) > self.maxsize:
            self.overflowed = True
            self.events.clear()
        else:
            self.events.extend(events)
        self.ready.set()

    def close(self, why: str) -> None:
        self.closed = why
        self.ready.set()

    def take_now(self) -> list[orchestrator_pb2.RunEvent]:
        """The events queued so far, without waiting."""
        if self.closed and not self.events:
            raise errors.Unavailable(self.closed, retry_after=1.0)
        if self.overflowed:
            raise errors.ResourceExhausted(
                f"this watcher fell more than {self.maxsize} events behind; watch again from "
                "the last sequence received",
                reason=reasons.WATCHER_TOO_SLOW,
            )
        taken, self.events = self.events, []
        return taken

    async def take(self) -> list[orchestrator_pb2.RunEvent]:
        while not self.events and not self.overflowed and not self.closed:
            self.ready.clear()
            await self.ready.wait()
        return self.take_now()
