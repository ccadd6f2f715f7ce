"""How the call chain drives a stream: deadlines a client cannot stretch, and an end the
server can always reach.

- A client or bidi stream must send its first message within `first_message_timeout` of
  the servicer asking for it (`first_message`); otherwise it ends with DEADLINE_EXCEEDED
  (reason FIRST_MESSAGE_TIMEOUT). Streams that never send held their slots for good.
- The chain writes a response stream itself (`send_responses`) instead of handing an
  async generator to grpc.aio, whose loop waits for ever on a client that never reads,
  holding the servicer's resources (a Generate slot, a watch). A write the client has not
  taken within `write_timeout` ends the call with RESOURCE_EXHAUSTED (STREAM_STALLED); a
  write that waits at all lets the servicer produce its next response meanwhile, so a
  servicer that fails while a write waits (a watch cut off) ends the call at once.
- `current_stream().end(error)` ends the stream being served with `error` from anywhere
  on the event loop (a registry cutting off a slow watcher), even while a write waits.
- A status sent while a write waits queues behind the unread data (`abort_behind_writes`):
  a client that reads on gets the data, then the status; the server does not wait for it.
- A write that fails in the transport (the client cancelled or went away, the server is
  stopping) ends the call as cancelled, never as a server error.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from helix.common import errors, reasons

# How long an abort may wait for the client to take the status; past it the call ends
# here and the status stays queued behind the unread data.
ABORT_WAIT = 0.1
# How long a write may wait before the servicer is asked for its next response meanwhile
# (at most half the write timeout). Writes that finish sooner cost nothing extra.
FETCH_AHEAD_AFTER = 0.05


@dataclass
class StreamStats:
    """Counters of the stream deadlines, read by the call-limit metrics collector."""

    first_message_timeouts: int = 0
    stalled: int = 0


@dataclass(frozen=True)
class StreamSettings:
    """The stream deadlines of one server (ServerConfig's stream_* settings)."""

    first_message_timeout: float = 10.0
    write_timeout: float = 30.0
    stats: StreamStats = field(default_factory=StreamStats)


class TransportEnded(Exception):
    """A write failed in the transport: the client cancelled or left, or the server stops."""


class StreamControl:
    """One response stream as the chain drives it: the write in progress, the watchdog,
    and `end` to stop the stream from outside.

    Writes run in the call's own task. The watchdog is one timer per stream, armed when a
    write begins and none is armed. When a write has waited FETCH_AHEAD_AFTER it starts
    fetching the servicer's next response in a task of its own (the one response held
    back), so a servicer that fails meanwhile ends the call at once; when a write has
    waited `write_timeout` it ends the stream (STREAM_STALLED). A fast stream pays for
    one timer callback per FETCH_AHEAD_AFTER, never for a task per message.
    """

    __slots__ = (
        "_ahead",
        "_due",
        "_fetch",
        "_fetcher",
        "_limit",
        "_loop",
        "_since",
        "_task",
        "_timer",
        "_writing",
        "error",
        "stalled",
    )

    def __init__(self, write_timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = asyncio.current_task()
        self._limit = write_timeout
        self._ahead = min(FETCH_AHEAD_AFTER, write_timeout / 2)
        self._writing = False
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._fetcher: AsyncIterator[Any] | None = None
        self._fetch: asyncio.Task[Any] | None = None
        self.error: Exception | None = None
        self.stalled = False

    def end(self, error: errors.HelixError) -> None:
        """End the stream with `error` now, even while a write waits for the client: the
        status follows what was written (a client that reads on gets both).

        Safe from any task on the event loop and more than once (the first error wins);
        after the call has ended it does nothing.
        """
        self._end(error)

    def _end(self, error: Exception) -> None:
        if self.error is None and self._task is not None:
            self.error = error
            self._task.cancel()

    def close(self) -> Exception | None:
        """Stop the watchdog and `end` for good; returns what the stream was ended with."""
        self._task = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self.error

    # --- the write in progress and the watchdog ------------------------------------------

    def write_begins(self) -> None:
        self._writing = True
        self._since = self._loop.time()
        # Armed already for this write or an earlier one (the common case), unless a slow
        # write before it had moved the timer out to its write timeout.
        if self._timer is None or self._due > self._since + self._ahead:
            self._arm(self._since + self._ahead)

    def write_ends(self) -> None:
        self._writing = False

    def _check(self) -> None:
        self._timer = None
        if not self._writing:
            return  # armed again by the next write
        waited = self._loop.time() - self._since
        if waited >= self._limit:
            self.stalled = True
            self._end(
                errors.ResourceExhausted(
                    f"the client read nothing from this stream for {self._limit:g}s, so the "
                    "server cancelled it; read the stream promptly and retry",
                    retry_after=1.0,
                    reason=reasons.STREAM_STALLED,
                    metadata={"write_timeout_seconds": f"{self._limit:g}"},
                )
            )
            return
        if waited >= self._ahead:
            self._fetch_ahead()
            self._arm(self._since + self._limit)
        else:
            self._arm(self._since + self._ahead)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._due = due
        self._timer = self._loop.call_at(due, self._check)

    # --- fetching the next response while a write waits ------------------------------------

    def _fetch_ahead(self) -> None:
        if self._fetch is None and self._fetcher is not None:
            self._fetch = self._loop.create_task(_next(self._fetcher))
            self._fetch.add_done_callback(self._fetched)

    def _fetched(self, fetch: asyncio.Task[Any]) -> None:
        if fetch.cancelled():
            return
        failure = fetch.exception()
        if failure is not None and not isinstance(failure, StopAsyncIteration):
            # The servicer failed while a write waited: end the call with it now.
            self._end(failure if isinstance(failure, Exception) else RuntimeError(failure))

    def _take_fetch(self) -> asyncio.Task[Any] | None:
        fetch, self._fetch = self._fetch, None
        return fetch

    async def _settle_fetch(self) -> None:
        """Stop a fetch still in progress (the servicer's generator must be idle before it
        is closed)."""
        fetch = self._take_fetch()
        if fetch is not None and not fetch.done():
            fetch.cancel()
            await asyncio.wait((fetch,))
        if fetch is not None and not fetch.cancelled():
            fetch.exception()  # retrieved: the failure is the call's, not asyncio's to log


async def _next(responses: AsyncIterator[Any]) -> Any:
    return await anext(responses)


_current: contextvars.ContextVar[StreamControl | None] = contextvars.ContextVar(
    "helix_stream", default=None
)


def current_stream() -> StreamControl | None:
    """The response stream being served in this context (None outside one)."""
    return _current.get()


def serving(control: StreamControl) -> contextvars.Token[StreamControl | None]:
    """Make `control` the current stream of this context (the chain, per stream)."""
    return _current.set(control)


async def _send_headers(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Send the initial metadata on its own, before the first message.

    grpc.aio marks it sent only when the write that carries it completes; a status sent
    while that first write still waits would carry it again and be refused by the core,
    leaving the client without any status.
    """
    try:
        await context.send_initial_metadata(())
    except grpc.aio.UsageError:
        pass  # the servicer sent its own (or the call is over: the write will say so)
    except grpc.aio.BaseError as exc:
        raise TransportEnded(type(exc).__name__) from exc


async def send_responses(
    responses: AsyncIterator[Any],
    context: grpc.aio.ServicerContext[Any, Any],
    control: StreamControl,
    prepare: Callable[[Any], Any],
) -> None:
    """Write every response of `responses` (each passed through `prepare` first), with
    the watchdog of `control` on each write (see StreamControl)."""
    control._fetcher = responses
    first = True
    try:
        while True:
            fetch = control._take_fetch()
            try:
                response = await (fetch if fetch is not None else anext(responses))
            except StopAsyncIteration:
                return
            message = prepare(response)
            if first:
                await _send_headers(context)
                first = False
            control.write_begins()
            try:
                await context.write(message)
            except grpc.aio.AbortError:
                raise
            except grpc.aio.BaseError as exc:
                raise TransportEnded(type(exc).__name__) from exc
            finally:
                control.write_ends()
    finally:
        control._fetcher = None
        await control._settle_fetch()


async def abort_behind_writes(
    context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status
) -> NoReturn:
    """Abort with `status` where a write may still wait for the client.

    The status is queued behind the data already written; if the client does not take it
    within ABORT_WAIT the call ends here as cancelled (grpc.aio logs that at DEBUG) and a
    client that reads on still gets the data, then the status.
    """
    try:
        await asyncio.wait_for(context.abort_with_status(status), ABORT_WAIT)
    except grpc.aio.AbortError:
        raise
    except (TimeoutError, grpc.aio.BaseError):
        pass
    raise asyncio.CancelledError


async def first_message(
    requests: AsyncIterator[Any], within: float, stats: StreamStats
) -> tuple[bool, Any]:
    """The first message of a request stream, waited for at most `within` seconds:
    (True, message), or (False, None) when the client closed the stream without one.

    A client that sends nothing in time gets DEADLINE_EXCEEDED (FIRST_MESSAGE_TIMEOUT).
    """
    try:
        async with asyncio.timeout(within):
            return True, await anext(requests)
    except StopAsyncIteration:
        return False, None
    except TimeoutError:
        stats.first_message_timeouts += 1
        raise errors.DeadlineExceeded(
            f"the stream's first message did not arrive within {within:g}s",
            reason=reasons.FIRST_MESSAGE_TIMEOUT,
            metadata={"timeout_seconds": f"{within:g}"},
        ) from None
