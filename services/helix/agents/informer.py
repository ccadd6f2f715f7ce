"""`AgentInformer`: a local, always-correct cache of the registry's agents (discovery).

    async with AgentInformer(channel, kind=registry_pb2.AGENT_KIND_ORACLE) as informer:
        agent = informer.get("agents/oracle-1")     # O(1), no call
        async for change in informer.changes():     # or informer.on_change(callback)
            ...

The informer lists every page (one snapshot revision S), then watches from S+1 with
progress notifications, applying each event to the cache and remembering the last
revision it is up to date with (`revision`, bookmarks included). When the watch cannot
continue — OUT_OF_RANGE (its revision was compacted), RESOURCE_EXHAUSTED WATCHER_TOO_SLOW
(resuming would replay a backlog at least a watch buffer long; a listing is bounded by
the current state instead), a stream that simply ends, or a registry whose revision went
backwards (its data was replaced) — it lists again and replaces the cache, emitting the
differences as synthetic changes (`from_list=True`). Connection errors reconnect with
jittered exponential backoff and resume from the last revision + 1, so nothing is missed
and nothing is seen twice. Errors retrying cannot fix (a bad selector; refused credentials
before the first listing; a closed channel) stop it: `error` says why, `wait_synced`
raises it, and every `changes()` stream ends.

Changes reach subscribers in revision order; the first listing arrives as PUTs. Callbacks
run inline and must be quick. A `changes()` stream has a bounded buffer: a consumer that
falls further behind gets `ChangesOverflow` from the stream instead of silently missing a
change; it can rebuild from `agents()` (always correct) and open a new stream.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeAlias

import grpc

import helix.v1.registry_pb2 as registry_pb2
from helix.agents.support import (
    Backoff,
    RegistryStub,
    as_stub,
    describe,
    error_reason,
    guarded,
)
from helix.common import reasons
from helix.common.aio import cancel_and_wait

log = logging.getLogger("helix.agents")

Agent = registry_pb2.Agent
EventType: TypeAlias = registry_pb2.AgentEventType.ValueType
DeleteReason: TypeAlias = registry_pb2.AgentDeleteReason.ValueType
ChangeCallback = Callable[[EventType, Agent, DeleteReason], None]
PUT = registry_pb2.AGENT_EVENT_TYPE_PUT
DELETE = registry_pb2.AGENT_EVENT_TYPE_DELETE
UNKNOWN_REASON = registry_pb2.AGENT_DELETE_REASON_UNSPECIFIED

# Errors that retrying cannot fix: the informer stops and reports them.
_FATAL = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED})
# Refused credentials stop an informer that never synced (a misconfiguration to report);
# once it has synced they are retried (a token being rotated).
_AUTH = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def _must_list_again(error: grpc.aio.AioRpcError) -> bool:
    """The watch cannot resume where it was: its revision was compacted, or it fell behind."""
    code = error.code()
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return True
    return (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED
        and error_reason(error) == reasons.WATCHER_TOO_SLOW
    )


@dataclass(frozen=True, slots=True)
class AgentChange:
    """One change to the cache. For DELETE, `agent` is the last state and `reason` says why
    (UNSPECIFIED when the change comes from a re-list, which cannot tell)."""

    type: EventType
    agent: Agent
    reason: DeleteReason
    revision: int
    from_list: bool = False


class ChangesOverflow(Exception):
    """A `changes()` consumer fell more than its buffer behind; rebuild from `agents()`."""


class ChangeStream:
    """An async iterator of `AgentChange`s, subscribed from the moment it is created (so
    `informer.agents()` followed by `informer.changes()` leaves no gap)."""

    def __init__(self, maxsize: int, unsubscribe: Callable[[ChangeStream], None]) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._items: collections.deque[AgentChange] = collections.deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._overflowed = False
        self._closed = False
        self._unsubscribe = unsubscribe

    def _push(self, change: AgentChange) -> None:
        if self._closed or self._overflowed:
            return
        if len(self._items) >= self._maxsize:
            self._overflowed = True
            self._items.clear()
            self._unsubscribe(self)
        else:
            self._items.append(change)
        self._ready.set()

    def close(self) -> None:
        """Stop receiving; the iterator ends once what is buffered has been read."""
        if not self._closed:
            self._closed = True
            self._unsubscribe(self)
            self._ready.set()

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> AgentChange:
        while True:
            if self._overflowed:
                raise ChangesOverflow(
                    f"this consumer fell more than {self._maxsize} changes behind; "
                    "rebuild from informer.agents() and open a new changes() stream"
                )
            if self._items:
                return self._items.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()


class AgentInformer:
    """List-then-watch cache of the agents matching `kind` and `label_selector`."""

    def __init__(
        self,
        channel_or_stub: grpc.aio.Channel | RegistryStub,
        *,
        kind: registry_pb2.AgentKind.ValueType = registry_pb2.AGENT_KIND_UNSPECIFIED,
        label_selector: str = "",
        page_size: int = 500,
        backoff: tuple[float, float] = (0.1, 5.0),
        call_timeout: float = 10.0,
    ) -> None:
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be within 1..1000")
        self._stub = as_stub(channel_or_stub)
        self._kind = kind
        self._selector = label_selector
        self._page_size = page_size
        self._backoff = Backoff(*backoff)
        self._call_timeout = call_timeout
        self._cache: dict[str, Agent] = {}
        self._last_event = 0
        self._callbacks: list[ChangeCallback] = []
        self._streams: set[ChangeStream] = set()
        self._settled = asyncio.Event()
        self._synced = False
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self.error: Exception | None = None
        self.revision = 0
        self.lists = 0
        self.reconnects = 0

    # --- reading the cache -------------------------------------------------------------------

    def get(self, name: str) -> Agent | None:
        """The agent `agents/{id}` (or just `{id}`), or None. Treat it as read-only."""
        return self._cache.get(name if "/" in name else f"agents/{name}")

    def agents(self) -> list[Agent]:
        """A snapshot of every cached agent, in name order."""
        return [self._cache[name] for name in sorted(self._cache)]

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    @property
    def synced(self) -> bool:
        """Whether the first listing has filled the cache."""
        return self._synced

    async def wait_synced(self) -> None:
        """Wait for the first listing; raises the error that stopped the informer, if any."""
        await self._settled.wait()
        if self._synced:
            return
        if self.error is not None:
            raise self.error
        raise RuntimeError("the informer was stopped before its first listing")

    # --- subscribing --------------------------------------------------------------------------

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback(type, agent, reason)` on every change; returns an unsubscriber."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def changes(self, maxsize: int = 10_000) -> ChangeStream:
        """A stream of the changes from now on (see `ChangeStream`, `ChangesOverflow`)."""
        stream = ChangeStream(maxsize, self._streams.discard)
        if self._stopped:
            stream.close()  # a stopped informer sends nothing more
        else:
            self._streams.add(stream)
        return stream

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listing and watching in the background (see `wait_synced`)."""
        if self._stopped:
            raise RuntimeError("a stopped informer cannot be started again; create another")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="agent-informer")

    async def stop(self) -> None:
        """Stop watching and end every `changes()` stream. Safe to call twice."""
        task, self._task = self._task, None
        await cancel_and_wait([task])
        self._halt()

    def _halt(self) -> None:
        self._stopped = True
        self._settled.set()
        for stream in list(self._streams):
            stream.close()

    async def __aenter__(self) -> AgentInformer:
        await self.start()
        try:
            await self.wait_synced()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code in _FATAL or (code in _AUTH and not self._synced):
                    self._fail(error)
                    return
                delay = self._backoff.next(error)
                if _must_list_again(error):
                    log.info("agent informer lists again: %s", describe(error))
                    if not need_list:  # a watch failed: list at once (a listing: wait)
                        need_list = True
                        continue
                else:
                    self.reconnects += 1
                    log.warning("agent informer reconnects in %.2fs: %s", delay, describe(error))
                await asyncio.sleep(delay)
                continue
            except Exception as error:  # a bug, or a channel closed under it: give up
                self._fail(error)
                return
            # The stream ended without an error, or the registry went back in time.
            need_list = True
            await asyncio.sleep(self._backoff.next())

    def _fail(self, error: Exception) -> None:
        if isinstance(error, grpc.aio.AioRpcError):
            log.error("the agent informer stopped: %s", describe(error))
        else:
            log.error("the agent informer stopped", exc_info=error)
        self.error = error
        self._halt()

    async def _list(self) -> None:
        listed: dict[str, Agent] = {}
        request = registry_pb2.ListAgentsRequest(
            page_size=self._page_size, kind=self._kind, label_selector=self._selector
        )
        while True:
            page = await guarded(self._stub.ListAgents(request, timeout=self._call_timeout))
            for agent in page.agents:
                listed[agent.name] = agent
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        self._replace(listed, page.revision)

    def _replace(self, listed: dict[str, Agent], revision: int) -> None:
        old = self._cache
        self._cache = listed
        self.revision = revision
        self._last_event = revision
        self.lists += 1
        changes = [
            AgentChange(DELETE, old[name], UNKNOWN_REASON, revision, from_list=True)
            for name in sorted(old.keys() - listed.keys())
        ]
        changes += [
            AgentChange(PUT, agent, UNKNOWN_REASON, revision, from_list=True)
            for name, agent in sorted(listed.items())
            if old.get(name) != agent
        ]
        if not self._synced:
            self._synced = True
            self._settled.set()
        for change in changes:
            self._emit(change)

    async def _watch(self) -> None:
        """Watch from the last revision + 1 until the stream ends (returns) or fails."""
        request = registry_pb2.WatchAgentsRequest(
            start_revision=self.revision + 1,
            kind=self._kind,
            label_selector=self._selector,
            progress_notify=True,
        )
        call = self._stub.WatchAgents(request)
        try:
            while True:
                response = await guarded(call.read())
                if not isinstance(response, registry_pb2.WatchAgentsResponse):
                    return  # EOF: the stream ended without an error
                self._backoff.reset()
                if response.revision < self.revision:
                    log.warning(
                        "the registry's revision went back from %d to %d: listing again",
                        self.revision,
                        response.revision,
                    )
                    return
                if response.progress:
                    self.revision = max(self.revision, response.revision)
                for event in response.events:
                    self._apply(event)
        finally:
            call.cancel()

    def _apply(self, event: registry_pb2.AgentEvent) -> None:
        if event.revision <= self._last_event:
            return  # seen already (the contract says never; cheap to make sure)
        agent = event.agent
        if event.type == PUT:
            self._cache[agent.name] = agent
        else:
            self._cache.pop(agent.name, None)
        self._last_event = event.revision
        self.revision = max(self.revision, event.revision)
        self._emit(AgentChange(event.type, agent, event.reason, event.revision))

    def _emit(self, change: AgentChange) -> None:
        for callback in list(self._callbacks):
            try:
                callback(change.type, change.agent, change.reason)
            except Exception:
                log.exception("agent informer callback %r failed", callback)
        for stream in list(self._streams):
            stream._push(change)
