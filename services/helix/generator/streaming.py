"""The async shell of Generate: breeding one chunk ahead in threads, and the stream cap.

Breeding is synchronous and CPU-bound (breeding.py); NumPy releases the GIL for the heavy
parts, so it runs in the service's thread pool while the event loop only moves finished
messages. `bred_ahead` keeps exactly one chunk in the pool while the stream sends the
previous one: enough to overlap breeding with sending, and a stream that ends (finished,
failed or cancelled) leaves at most the chunk in progress to finish, never queues more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import TypeVar

from helix.common import errors, reasons
from helix.generator.stats import GeneratorStats

T = TypeVar("T")


class StreamSlots:
    """At most `capacity` Generate streams at once; more are RESOURCE_EXHAUSTED with
    RetryInfo (GENERATOR_BUSY), so callers move to another generator agent instead of
    queueing behind long streams. Use from the event loop only."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold a slot for the `with` block, or raise GENERATOR_BUSY when none is free."""
        if self.used >= self.capacity:
            raise errors.ResourceExhausted(
                f"this generator is serving its capacity of {self.capacity} Generate "
                "streams; retry later or use another generator agent",
                retry_after=1.0,
                reason=reasons.GENERATOR_BUSY,
                metadata={"capacity": str(self.capacity)},
            )
        self.used += 1
        try:
            yield
        finally:
            self.used -= 1


def _advance(items: Iterator[T], stats: GeneratorStats) -> T | None:
    """The next item of `items`, or None at the end (in a breeding thread)."""
    try:
        return next(items, None)
    finally:
        stats.chunk_settled()


def _submit(
    executor: concurrent.futures.Executor, items: Iterator[T], stats: GeneratorStats
) -> concurrent.futures.Future[T | None]:
    stats.chunk_queued()
    try:
        return executor.submit(_advance, items, stats)
    except BaseException:  # the pool is shut down: nothing was queued
        stats.chunk_settled()
        raise


async def bred_ahead(
    executor: concurrent.futures.Executor, items: Iterator[T], stats: GeneratorStats
) -> AsyncGenerator[T, None]:
    """The items of the blocking iterator `items`, each computed in `executor` while the
    consumer handles the one before; items are computed one after another, never two at
    once. Close it (`aclosing`) to stop: an item not started yet is cancelled, the one in
    progress finishes in its thread, and `stats.pending` counts both until then."""
    pending = _submit(executor, items, stats)
    try:
        while True:
            item = await asyncio.wrap_future(pending)
            if item is None:
                return
            pending = _submit(executor, items, stats)
            yield item
    finally:
        # True when it never ran (cancelled now, or by the pool shutting down): its
        # thread will not settle it, so settle it here. A running one settles itself.
        if pending.cancel():
            stats.chunk_settled()
