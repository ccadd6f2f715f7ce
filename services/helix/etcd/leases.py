"""`KeepAlive`: one lease kept alive on one long-lived LeaseKeepAlive stream.

A background task (owned by the client, so `EtcdClient.close()` stops it too) sends a
keepalive every TTL/3 and reads etcd's answer. A broken stream is opened again (after
0.2 s, then up to 1 s between tries) with the same lease. The lease is reported lost —
`lost` set, `on_lost(reason)` called, the task ends — when etcd answers that it no longer
exists (TTL 0), or when a whole TTL passes since the last renewal etcd confirmed: it may
then have expired without us hearing, and an owner must behave as if it had.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

import grpc

import helix.etcdpb.rpc_pb2 as rpc
from helix.common import aio, errors
from helix.etcd.client import REQUIRE_LEADER, EtcdClient, Lease

log = logging.getLogger("helix.etcd")

_RETRY_MIN, _RETRY_MAX = 0.2, 1.0


class KeepAlive:
    """Keeps `lease` alive until `close()` (which does not revoke it) or until it is lost."""

    def __init__(
        self, client: EtcdClient, lease: Lease, on_lost: Callable[[str], None] | None = None
    ) -> None:
        self.client = client
        self.lease = lease
        self.on_lost = on_lost
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.renewals = 0
        # Until when the lease is known to live: a renewal confirmed at t (measured when it
        # was sent) keeps it alive until t + TTL.
        self.alive_until = time.monotonic() + lease.ttl
        self._task = client.start_task(self._run(), name=f"etcd-keepalive-{lease.id:x}")

    @property
    def interval(self) -> float:
        return max(self.lease.ttl / 3, 0.1)

    async def close(self) -> None:
        """Stop renewing (the lease then lapses after its TTL unless revoked)."""
        self._task.cancel()
        await asyncio.wait({self._task})

    async def wait_lost(self) -> str:
        """Wait until the lease is lost; why."""
        await self.lost.wait()
        return self.lost_reason

    async def __aenter__(self) -> KeepAlive:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _report_lost(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        log.warning("etcd lease %x lost: %s", self.lease.id, reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    async def _run(self) -> None:
        delay = _RETRY_MIN
        while True:
            try:
                await self._stream()
                return  # the lease is gone
            except (grpc.aio.AioRpcError, errors.HelixError, TimeoutError) as exc:
                if self.client.closed:
                    return
                if time.monotonic() >= self.alive_until:
                    self._report_lost(f"no renewal confirmed within its TTL ({exc!s:.200})")
                    return
                log.info(
                    "etcd lease %x keepalive stream broken, reopening: %.200s", self.lease.id, exc
                )
            except Exception as exc:  # a defect: its owner must not go on trusting the lease
                log.exception("etcd lease %x: the keepalive failed", self.lease.id)
                self._report_lost(f"the keepalive failed: {exc!r:.200}")
                return
            await asyncio.sleep(min(delay, max(self.alive_until - time.monotonic(), 0.0)))
            delay = min(delay * 2, _RETRY_MAX)

    async def _stream(self) -> None:
        """Renew on one stream until it breaks (raises) or the lease is gone (returns)."""
        metadata, token = await self.client.metadata(REQUIRE_LEADER)
        stream = self.client.leases.LeaseKeepAlive(metadata=metadata)
        try:
            while True:
                sent = time.monotonic()
                try:
                    async with asyncio.timeout(max(self.alive_until - sent, 0.0)):
                        await aio.write(stream, rpc.LeaseKeepAliveRequest(ID=self.lease.id))
                        reply = await stream.read()
                except grpc.aio.AioRpcError as exc:
                    await self.client.renew_token_if_stale(exc, token)
                    raise
                except asyncio.InvalidStateError:  # it ended (OK) while we slept
                    raise errors.Unavailable("etcd ended the keepalive stream") from None
                if not isinstance(reply, rpc.LeaseKeepAliveResponse):  # EOF
                    raise errors.Unavailable("etcd ended the keepalive stream")
                if reply.TTL <= 0:
                    self._report_lost("etcd says the lease has expired or was revoked")
                    return
                self.alive_until = sent + reply.TTL
                self.renewals += 1
                await asyncio.sleep(self.interval)
        finally:
            stream.cancel()


def keep_alive(
    client: EtcdClient, lease: Lease, on_lost: Callable[[str], None] | None = None
) -> KeepAlive:
    """Start keeping `lease` alive in the background (see `KeepAlive`)."""
    return KeepAlive(client, lease, on_lost)


class Renewer:
    """Renews leases once each on one shared LeaseKeepAlive stream: what a registry does for
    every heartbeat of every agent, without a stream per lease.

    `renew(id)` sends one keepalive and waits for etcd's answer to it: the lease's TTL
    from now, or 0 when the lease no longer exists. etcd answers the requests of one
    stream in order, one answer each, carrying the lease id. A broken stream fails the
    renewals waiting on it (`Unavailable`) and the next renewal opens a new one.
    """

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self._stream: (
            grpc.aio.StreamStreamCall[rpc.LeaseKeepAliveRequest, rpc.LeaseKeepAliveResponse] | None
        ) = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, collections.deque[asyncio.Future[int]]] = {}
        self._lock = asyncio.Lock()

    async def renew(self, lease_id: int) -> int:
        """Renew `lease_id` now; its TTL in seconds, 0 when it has expired or was revoked.
        `Unavailable` when etcd does not answer within the client's timeout."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.client.timeout):
                async with self._lock:
                    stream = await self._open()
                    self._waiting.setdefault(lease_id, collections.deque()).append(future)
                    try:
                        await aio.write(stream, rpc.LeaseKeepAliveRequest(ID=lease_id))
                    except grpc.aio.AioRpcError as exc:
                        self._broken(stream, exc)
                    except asyncio.InvalidStateError:  # it had ended (OK)
                        self._broken(stream, errors.Unavailable("etcd ended the stream"))
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise  # this renewal was cancelled
                        # The stream was cancelled under the write (it broke): not ours.
                        self._broken(stream, errors.Unavailable("the stream was cut"))
                return await future
        except TimeoutError:
            raise errors.Unavailable(
                f"etcd did not confirm the renewal of lease {lease_id:x} in time",
                retry_after=1.0,
            ) from None
        finally:
            waiting = self._waiting.get(lease_id)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._waiting[lease_id]

    async def close(self) -> None:
        if self._stream is not None:
            self._broken(self._stream, errors.Unavailable("the lease renewer is closed"))

    async def _open(
        self,
    ) -> grpc.aio.StreamStreamCall[rpc.LeaseKeepAliveRequest, rpc.LeaseKeepAliveResponse]:
        if self._stream is None:
            metadata, token = await self.client.metadata(REQUIRE_LEADER)
            stream = self.client.leases.LeaseKeepAlive(metadata=metadata)
            self._stream = stream
            self._reader = self.client.start_task(
                self._read(stream, token), name="etcd-lease-renewer"
            )
        return self._stream

    async def _read(
        self,
        stream: grpc.aio.StreamStreamCall[rpc.LeaseKeepAliveRequest, rpc.LeaseKeepAliveResponse],
        token: str | None,
    ) -> None:
        try:
            while True:
                reply = await stream.read()
                if not isinstance(reply, rpc.LeaseKeepAliveResponse):  # EOF
                    raise errors.Unavailable("etcd ended the keepalive stream")
                waiting = self._waiting.get(reply.ID)
                if waiting:
                    future = waiting.popleft()
                    if not waiting:
                        del self._waiting[reply.ID]
                    if not future.done():
                        future.set_result(max(int(reply.TTL), 0))
        except grpc.aio.AioRpcError as exc:
            if not self.client.closed:
                await self.client.renew_token_if_stale(exc, token)
            self._broken(stream, exc)
        except errors.HelixError as exc:
            self._broken(stream, exc)

    def _broken(
        self,
        stream: grpc.aio.StreamStreamCall[rpc.LeaseKeepAliveRequest, rpc.LeaseKeepAliveResponse],
        cause: BaseException,
    ) -> None:
        """Fail every renewal waiting on `stream` and forget it (the next one reopens)."""
        if self._stream is not stream:
            return
        self._stream = None
        stream.cancel()
        waiting, self._waiting = self._waiting, {}
        error = errors.Unavailable(
            f"etcd's keepalive stream broke: {cause!s:.200}", retry_after=1.0
        )
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
