"""`Watch`: the events of a key range from a start revision, as an async iterator.

One Watch stream per `Watch` (etcd multiplexes; one per watcher keeps resumption simple),
opened with `prev_kv`, progress notifications and etcd's require-leader metadata (a member
cut off from its leader ends the stream instead of going silent). etcd sends the events of
one revision in one response, so after each response the watch knows the next revision it
needs; a broken stream is opened again from there, on any member: no gap, no duplicate.
Reconnecting gives up with `Unavailable` when no stream could be opened for
`reconnect_within` seconds. History compacted past the revision needed raises
`Compacted(compact_revision)`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import grpc

import helix.etcdpb.kv_pb2 as mvcc
import helix.etcdpb.rpc_pb2 as rpc
from helix.common import aio, errors
from helix.etcd import errors as etcd_errors
from helix.etcd.client import REQUIRE_LEADER, EtcdClient

log = logging.getLogger("helix.etcd")

_RETRY_MIN, _RETRY_MAX = 0.1, 1.0
_Stream = grpc.aio.StreamStreamCall[rpc.WatchRequest, rpc.WatchResponse]


class Watch:
    """Events of keys in [key, range_end) (range_end b"": `key` alone) from `start_revision`
    (0: from now), each with `prev_kv`. Iterate with `async for`; `close()` ends it."""

    def __init__(
        self,
        client: EtcdClient,
        key: bytes,
        range_end: bytes = b"",
        *,
        start_revision: int = 0,
        reconnect_within: float | None = None,
    ) -> None:
        self.client = client
        self.key, self.range_end = key, range_end
        self.next_revision = start_revision  # the first revision not yet received
        self.reconnect_within = client.timeout if reconnect_within is None else reconnect_within
        self.reconnects = 0
        self._buffer: collections.deque[mvcc.Event] = collections.deque()
        self._stream: _Stream | None = None
        self._closed = False

    def __aiter__(self) -> Watch:
        return self

    @property
    def pending(self) -> int:
        """Events received and not yet taken: 0 means every revision received so far was
        taken whole (etcd sends each revision in one response)."""
        return len(self._buffer)

    async def __anext__(self) -> mvcc.Event:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._fill()
        return self._buffer.popleft()

    async def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _fill(self) -> None:
        """Read one response into the buffer, (re)opening the stream as needed."""
        broken_at: float | None = None
        delay = _RETRY_MIN
        while not self._closed:
            try:
                if self._stream is None:
                    self._stream = await self._open()
                reply = await _read(self._stream)
            except (grpc.aio.AioRpcError, errors.Unavailable) as exc:
                self._drop_stream()
                now = time.monotonic()
                broken_at = now if broken_at is None else broken_at
                self._give_up_if(exc, now - broken_at >= self.reconnect_within)
                log.info(
                    "etcd watch %r broken, resuming from %d: %.200s",
                    self.key,
                    self.next_revision,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                self.reconnects += 1
                continue
            self._take(reply)
            return

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    def _give_up_if(self, exc: grpc.aio.AioRpcError | errors.Unavailable, overdue: bool) -> None:
        if self.client.closed:
            raise etcd_errors.closed("watch") from None
        if not overdue:
            return
        if isinstance(exc, errors.Unavailable):
            raise exc
        raise etcd_errors.translate(exc, f"watch {self.key!r}") from None

    def _take(self, reply: rpc.WatchResponse) -> None:
        """Buffer `reply`'s events (one or more whole revisions) and move past them."""
        if reply.compact_revision:
            raise etcd_errors.Compacted(reply.compact_revision)
        if reply.canceled:
            raise errors.Internal(
                f"etcd cancelled the watch of {self.key!r}: {reply.cancel_reason}"
            )
        if reply.events:
            self.next_revision = reply.events[-1].kv.mod_revision + 1
            self._buffer.extend(reply.events)
        elif reply.created and self.next_revision == 0:
            # "From now" means after the revision it was created at: resume from there,
            # not from a later "now" that would skip what was written in between.
            self.next_revision = reply.header.revision + 1
        elif not reply.created:
            # A progress notification: every event up to header.revision has been sent.
            # Moving past it spares a quiet watch a needless Compacted on resuming.
            self.next_revision = max(self.next_revision, reply.header.revision + 1)

    async def _open(self) -> _Stream:
        """A stream with this watch created on it from `next_revision`."""
        for attempt in (1, 2):
            metadata, token = await self.client.metadata(REQUIRE_LEADER)
            stream = self.client.watches.Watch(metadata=metadata)
            create = rpc.WatchCreateRequest(
                key=self.key,
                range_end=self.range_end,
                start_revision=self.next_revision,
                prev_kv=True,
                progress_notify=True,
            )
            try:
                await aio.write(stream, rpc.WatchRequest(create_request=create))
                async with asyncio.timeout(self.client.timeout):
                    reply = await _read(stream)
            except TimeoutError:
                stream.cancel()
                raise errors.Unavailable("etcd did not confirm a watch in time") from None
            except asyncio.InvalidStateError:  # it ended (OK) before the request went out
                stream.cancel()
                raise errors.Unavailable("etcd ended the watch stream") from None
            except BaseException:
                stream.cancel()
                raise
            if reply.canceled and not reply.compact_revision and attempt == 1:
                # A stale token shows as "permission denied" on a watch (etcd checks it when
                # the watch is created): authenticate again once.
                stream.cancel()
                if await self.client.force_renew_token(token):
                    continue
            try:
                self._take(reply)
            except BaseException:
                stream.cancel()
                raise
            return stream
        raise AssertionError("unreachable")


async def _read(stream: _Stream) -> rpc.WatchResponse:
    reply = await stream.read()
    if not isinstance(reply, rpc.WatchResponse):  # EOF
        raise errors.Unavailable("etcd ended the watch stream")
    return reply
