"""Waiting for a state in tests: poll what matters, with a deadline, and fail saying what.

A test never sleeps hoping a state has arrived: it waits for the state itself (a log line,
a metric, a watch event, an agent registered) and fails with a clear message when the
deadline passes first. Benchmarks and tests/harness.py use it too (no pytest here).
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
    condition: Callable[[], Awaitable[T | None]],
    within: float = ...,
    *,
    what: str = ...,
    interval: float = ...,
    ignore: tuple[type[Exception], ...] = ...,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T | None],
    within: float = ...,
    *,
    what: str = ...,
    interval: float = ...,
    ignore: tuple[type[Exception], ...] = ...,
) -> T: ...


async def eventually(
    condition: Callable[[], Any],
    within: float = 10.0,
    *,
    what: str = "",
    interval: float = 0.01,
    ignore: tuple[type[Exception], ...] = (),
) -> Any:
    """Poll `condition` (sync or async) until it returns something truthy, and return it.

    Fails with AssertionError naming `what` (and the last value) after `within` seconds.
    Exceptions of the `ignore` types count as "not yet" (a server restarting answers
    UNAVAILABLE meanwhile); the last one is shown in the failure.
    """
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
        except ignore as error:
            last_error, result = error, None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error!r}" if last_error is not None else ""
            raise AssertionError(
                f"timed out after {within}s waiting for {what or condition} "
                f"(last: {result!r}){detail}"
            )
        await asyncio.sleep(interval)
