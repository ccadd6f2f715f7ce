"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import grpc

log = logging.getLogger("helix")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object] | None]) -> None:
    """Cancel background tasks and wait until they have ended.

    `asyncio.wait` never raises the tasks' own CancelledError, so only a cancellation of
    the caller propagates from here (it is never swallowed). A task that had failed has its
    exception logged rather than lost.
    """
    pending = {task for task in tasks if task is not None}
    for task in pending:
        task.cancel()
    if not pending:
        return
    await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())


async def raise_for_status(call: Any) -> None:
    """Raise a finished grpc.aio call's error as an AioRpcError, if it ended with one."""
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise grpc.aio.AioRpcError(
            code,
            await call.initial_metadata(),
            await call.trailing_metadata(),
            await call.details(),
        )


async def write(call: Any, message: Any) -> None:
    """Write a message on a streaming call; the call's AioRpcError when it has already
    failed. grpc.aio raises InvalidStateError for a write after the end, whatever the
    status, which still comes from here when the call ended with OK."""
    try:
        await call.write(message)
    except asyncio.InvalidStateError:
        await raise_for_status(call)
        raise
