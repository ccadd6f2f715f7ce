"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

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
