"""Waiting for a state in tests: poll what matters, with a deadline, and fail saying what.

A test never sleeps hoping a state has arrived: it waits for the state itself (a log line,
a metric, a watch event) and fails with a clear message when the deadline passes first.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]], what: str, *, within: float = ..., interval: float = ...
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T], what: str, *, within: float = ..., interval: float = ...
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    what: str,
    *,
    within: float = 10.0,
    interval: float = 0.01,
) -> Any:
    """Call `probe` (sync or async) until it returns a truthy value, and return that value;
    fail with AssertionError naming `what` (and the last value) after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)
