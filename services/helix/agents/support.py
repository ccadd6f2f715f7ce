"""What the registry client pieces share: stubs, error decoding, jittered backoff, callbacks.

Pure asyncio + grpc.aio; nothing here talks to the network by itself.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import helix.v1.registry_pb2_grpc as registry_pb2_grpc

if TYPE_CHECKING:
    RegistryStub: TypeAlias = registry_pb2_grpc.RegistryServiceAsyncStub
else:
    RegistryStub: TypeAlias = Any

log = logging.getLogger("helix.agents")
T = TypeVar("T")

# Codes after which the same call may well succeed later: the registry is restarting,
# slow, or rate limiting this principal.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def as_stub(channel_or_stub: grpc.aio.Channel | RegistryStub) -> RegistryStub:
    """A RegistryService stub for a channel (a stub is returned as it is)."""
    if isinstance(channel_or_stub, grpc.aio.Channel):
        stub: RegistryStub = registry_pb2_grpc.RegistryServiceStub(channel_or_stub)
        return stub
    return channel_or_stub


async def guarded(call: Awaitable[T]) -> T:
    """Await a call; a cancellation nobody asked for becomes an AioRpcError CANCELLED.

    grpc.aio raises a bare CancelledError in the caller when the channel of a call made
    through interceptors is closed mid-call; taken as it is, it would end the caller's
    task as if it had been cancelled. A real cancellation of the task passes through.
    """
    try:
        return await call
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.CANCELLED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            "the call was cancelled under its caller (was its channel closed?)",
        ) from None


def status_details(error: grpc.aio.AioRpcError) -> list[Any]:
    """The `google.rpc.Status` details of a failed call (packed `Any`s), or none when it
    carries none or a status that contradicts the call's own code."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status detail that contradicts the call's own code
        return []
    return list(status.details) if status is not None else []


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The `google.rpc.ErrorInfo` a Helix error carries, if any."""
    for detail in status_details(error):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of an error (e.g. "EPOCH_MISMATCH"), or "" when there is none."""
    info = error_info(error)
    return info.reason if info is not None else ""


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    """The delay a `google.rpc.RetryInfo` asks for, in seconds (0 when there is none)."""
    for detail in status_details(error):
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return seconds(info.retry_delay)
    return 0.0


def describe(error: grpc.aio.AioRpcError) -> str:
    """A one-line description for logs: code, reason and message (never metadata)."""
    reason = error_reason(error)
    suffix = f" ({reason})" if reason else ""
    return f"{error.code().name}{suffix}: {error.details()}"


def seconds(duration: duration_pb2.Duration) -> float:
    nanos: int = duration.ToNanoseconds()
    return nanos / 1e9


class Backoff:
    """Jittered exponential backoff: the n-th delay is drawn from [d/2, d] with
    d = min(maximum, initial * 2**n), so clients that failed together retry apart."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next(self, error: grpc.aio.AioRpcError | None = None) -> float:
        """The next delay; at least what the error's RetryInfo asks for (within maximum)."""
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self._attempt, 32))
        self._attempt += 1
        delay = ceiling * (0.5 + self._rng() / 2)
        if error is not None:
            delay = max(delay, min(retry_delay(error), self.maximum))
        return delay


async def notify(callback: Callable[..., Any] | None, *args: Any) -> None:
    """Call a user callback (sync or async); its errors are logged, never raised, so a
    faulty callback cannot stop heartbeats or the informer."""
    if callback is None:
        return
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:  # CancelledError is a BaseException and passes through
        log.exception("registry client callback %r failed", callback)
