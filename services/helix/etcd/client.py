"""`EtcdClient`: the thin async client of Helix's etcd backends, on etcd's own v3 API.

One `grpc.aio` channel over every endpoint with grpc's `round_robin` policy (what etcd's own
Go client uses since 3.5): every member gets a subchannel, calls go to the ready ones, a dead
member is skipped at once and rejoins when it answers again; no failover loop of our own.
Reconnect backoff is capped at 1 s, so a restarted member is used again within a second.

Every unary call has a deadline (`timeout`); reads (idempotent) are retried on UNAVAILABLE
by the channel's service config, writes never. Errors are Helix's (`helix.etcd.errors`).
With `user`/`password`, etcd's token goes in the `token` metadata; a call that etcd answers
"invalid auth token" (expired, or dropped by a restart) authenticates again once and is
sent again once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

import helix.etcdpb.kv_pb2 as mvcc
import helix.etcdpb.rpc_pb2 as rpc
import helix.etcdpb.rpc_pb2_grpc as rpc_grpc
from helix.common import errors
from helix.etcd import errors as etcd_errors
from helix.etcd.endpoints import grpc_target

Req = TypeVar("Req")
Resp = TypeVar("Resp")

DEFAULT_TIMEOUT = 5.0
Metadata = tuple[tuple[str, str], ...]
# Streams that must end when their member loses its leader (etcd's WithRequireLeader):
# a partitioned member would otherwise keep a watch open and silent.
REQUIRE_LEADER: Metadata = (("hasleader", "true"),)

_READS = [
    {"service": "etcdserverpb.KV", "method": "Range"},
    {"service": "etcdserverpb.Lease", "method": "LeaseTimeToLive"},
    {"service": "etcdserverpb.Maintenance", "method": "Status"},
    {"service": "etcdserverpb.Auth", "method": "Authenticate"},
]
_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": _READS,
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
_CHANNEL_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # etcd accepts pings every 5 s or slower, and only while a call is open.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024**2),
    ("grpc.max_send_message_length", 16 * 1024**2),
]


@dataclass(frozen=True)
class TlsConfig:
    """TLS to etcd: `ca` verifies the servers (system roots when None), `cert`/`key` (both or
    neither) authenticate Helix to etcd; `server_name` overrides the name checked in the
    servers' certificates (needed when endpoints are IP addresses the certificates lack)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("etcd TLS needs both a client certificate and its key, or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


@dataclass(frozen=True)
class Lease:
    """A granted lease: its id and the TTL etcd granted (at least etcd's minimum)."""

    id: int
    ttl: int


@dataclass(frozen=True)
class Page:
    """One page of a prefix range: the pairs in key order, the store revision it was read
    at, and whether more keys follow (read them with `after=page.last_key`)."""

    kvs: Sequence[mvcc.KeyValue]
    revision: int
    more: bool

    @property
    def last_key(self) -> bytes:
        return self.kvs[-1].key if self.kvs else b""


def prefix_end(prefix: bytes) -> bytes:
    """The `range_end` covering every key that starts with `prefix` (etcd's GetPrefixRangeEnd;
    an empty or all-0xff prefix means every key: b"\\0")."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


class _Auth:
    """etcd's simple/JWT token for one user, fetched on first use and again when stale."""

    def __init__(self, stub: rpc_grpc.AuthAsyncStub, user: str, password: str, timeout: float):
        self._stub, self._user, self._password, self._timeout = stub, user, password, timeout
        self._lock = asyncio.Lock()
        self.token: str | None = None
        self.renewals = 0

    async def current(self) -> str:
        if self.token is None:
            await self.renew(None)
        assert self.token is not None
        return self.token

    async def renew(self, stale: str | None) -> None:
        """Authenticate again, unless another call already replaced token `stale`."""
        async with self._lock:
            if self.token != stale:
                return
            request = rpc.AuthenticateRequest(name=self._user, password=self._password)
            try:
                reply = await self._stub.Authenticate(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                raise etcd_errors.translate(exc, f"authenticate as {self._user}") from None
            self.token = reply.token
            self.renewals += 1


class EtcdClient:
    """Connection to one etcd cluster. Build with `await EtcdClient.connect(...)` (no I/O:
    an unreachable etcd shows on the first call), close with `close()` or `async with`."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        tls: TlsConfig | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not timeout > 0:
            raise ValueError("the etcd timeout must be positive")
        if (user is None) != (password is None):
            raise ValueError("etcd auth needs both a user and a password, or neither")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        options = list(_CHANNEL_OPTIONS)
        target = grpc_target(self.endpoints)
        if tls is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.aio.secure_channel(target, tls.credentials(), options=options)
        self.kv = rpc_grpc.KVStub(self._channel)
        self.leases = rpc_grpc.LeaseStub(self._channel)
        self.watches = rpc_grpc.WatchStub(self._channel)
        self.maintenance = rpc_grpc.MaintenanceStub(self._channel)
        self._auth = (
            _Auth(rpc_grpc.AuthStub(self._channel), user, password, timeout)
            if user is not None and password is not None
            else None
        )
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(
        cls,
        endpoints: list[str],
        *,
        tls: TlsConfig | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (each call's deadline, not connect's)
    ) -> EtcdClient:
        """A client of the cluster at `endpoints` (`host:port`, see `parse_store_url`)."""
        return cls(endpoints, tls=tls, user=user, password=password, timeout=timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def auth_renewals(self) -> int:
        """How many times a token was fetched (1 after the first authenticated call)."""
        return self._auth.renewals if self._auth is not None else 0

    async def close(self) -> None:
        """Stop the keepalive and watch tasks started here, then close the channel. Safe to
        call twice."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._channel.close()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- calls -----------------------------------------------------------------------------

    async def metadata(self, extra: Metadata = ()) -> tuple[Metadata, str | None]:
        """The metadata for a call (with the auth token when auth is on) and that token."""
        if self._closed:
            raise etcd_errors.closed("a call")
        if self._auth is None:
            return extra, None
        token = await self._auth.current()
        return (("token", token), *extra), token

    async def renew_token_if_stale(self, error: grpc.aio.AioRpcError, token: str | None) -> bool:
        """After `error`: authenticate again if it says `token` is stale; whether it did."""
        if self._auth is None or not etcd_errors.is_stale_token(error):
            return False
        await self._auth.renew(token)
        return True

    async def force_renew_token(self, token: str | None) -> bool:
        """Authenticate again (unless another call did since `token`); whether auth is on."""
        if self._auth is None:
            return False
        await self._auth.renew(token)
        return True

    async def call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req, what: str
    ) -> Resp:
        """One unary call with the deadline and the token; retried once on a stale token."""
        for attempt in (1, 2):
            metadata, token = await self.metadata()
            try:
                return await method(request, timeout=self.timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    raise etcd_errors.closed(what) from None
                if attempt == 1 and await self.renew_token_if_stale(exc, token):
                    continue
                raise etcd_errors.translate(exc, what) from None
        raise AssertionError("unreachable")

    def start_task(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task that `close()` cancels and waits for."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- KV ----------------------------------------------------------------------------------

    async def get(self, key: bytes, *, revision: int = 0) -> mvcc.KeyValue | None:
        """The pair at `key` (at `revision`, 0: now), or None."""
        reply = await self.call(
            self.kv.Range, rpc.RangeRequest(key=key, revision=revision), f"get {key!r}"
        )
        return reply.kvs[0] if reply.kvs else None

    async def range_prefix(
        self, prefix: bytes, *, limit: int = 0, after: bytes = b"", revision: int = 0
    ) -> Page:
        """Up to `limit` (0: all) pairs under `prefix`, in key order, with keys above `after`,
        read at `revision` (0: now; give the first page's revision to the next pages for one
        consistent snapshot)."""
        if limit < 0:
            raise ValueError("limit must be 0 (no limit) or positive")
        start = after + b"\0" if after else prefix
        request = rpc.RangeRequest(
            key=start, range_end=prefix_end(prefix), limit=limit, revision=revision
        )
        reply = await self.call(self.kv.Range, request, f"range {prefix!r}*")
        # etcd's header has the store's current revision even for a read of an older one
        read_at = revision or reply.header.revision
        return Page(kvs=list(reply.kvs), revision=read_at, more=reply.more)

    async def last_in_prefix(self, prefix: bytes) -> mvcc.KeyValue | None:
        """The pair with the greatest key under `prefix`, or None."""
        request = rpc.RangeRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            limit=1,
            sort_order=rpc.RangeRequest.DESCEND,
            sort_target=rpc.RangeRequest.KEY,
        )
        reply = await self.call(self.kv.Range, request, f"last of {prefix!r}*")
        return reply.kvs[0] if reply.kvs else None

    async def scan_prefix(self, prefix: bytes, *, page_size: int = 500) -> AsyncIterator[Page]:
        """Every pair under `prefix` as pages of `page_size`, all read at the revision of the
        first page (a consistent snapshot; `Compacted` if it is compacted meanwhile)."""
        page = await self.range_prefix(prefix, limit=page_size)
        yield page
        while page.more:
            page = await self.range_prefix(
                prefix, limit=page_size, after=page.last_key, revision=page.revision
            )
            yield page

    async def put(
        self, key: bytes, value: bytes, *, lease: int = 0, prev_kv: bool = False
    ) -> rpc.PutResponse:
        """Write `key`; the reply's `header.revision` is the revision of this write."""
        request = rpc.PutRequest(key=key, value=value, lease=lease, prev_kv=prev_kv)
        return await self.call(self.kv.Put, request, f"put {key!r}")

    async def delete(
        self, key: bytes, *, prefix: bool = False, prev_kv: bool = False
    ) -> rpc.DeleteRangeResponse:
        """Delete `key` (or every key under it with `prefix`); `deleted` says how many."""
        request = rpc.DeleteRangeRequest(
            key=key, range_end=prefix_end(key) if prefix else b"", prev_kv=prev_kv
        )
        return await self.call(self.kv.DeleteRange, request, f"delete {key!r}")

    async def txn(
        self,
        compare: Sequence[rpc.Compare],
        success: Sequence[rpc.RequestOp],
        failure: Sequence[rpc.RequestOp] = (),
    ) -> rpc.TxnResponse:
        """If every `compare` holds, `success`, else `failure`, atomically. The reply says
        which (`succeeded`), holds each op's response and `header.revision` (the revision
        of the writes, if any were made)."""
        request = rpc.TxnRequest(
            compare=list(compare), success=list(success), failure=list(failure)
        )
        return await self.call(self.kv.Txn, request, "txn")

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        """Drop the history before `revision` (`physical`: wait until it is gone on disk)."""
        request = rpc.CompactionRequest(revision=revision, physical=physical)
        await self.call(self.kv.Compact, request, f"compact at {revision}")

    async def status(self) -> rpc.StatusResponse:
        """The answering member's status (version, leader, db size): a health probe."""
        return await self.call(self.maintenance.Status, rpc.StatusRequest(), "status")

    # --- leases ------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> Lease:
        """A new lease of `ttl` seconds (etcd may grant more: its minimum TTL)."""
        if ttl < 1:
            raise ValueError("a lease TTL is at least 1 second")
        reply = await self.call(self.leases.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl), "grant")
        if reply.error:
            raise errors.Internal(f"etcd refused a lease: {reply.error}")
        return Lease(id=reply.ID, ttl=reply.TTL)

    async def revoke(self, lease_id: int) -> None:
        """End lease `lease_id` now, deleting its keys; NotFound if it does not exist."""
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        await self.call(self.leases.LeaseRevoke, request, f"revoke lease {lease_id:x}")

    async def time_to_live(self, lease_id: int) -> int:
        """Whole seconds lease `lease_id` has left; -1 when it does not exist (any more)."""
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        reply = await self.call(self.leases.LeaseTimeToLive, request, f"ttl of {lease_id:x}")
        return reply.TTL
