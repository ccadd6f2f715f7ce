"""The etcd fixtures (etcd_support.py) and Helix's etcd stubs (helix.etcdpb) together, on a
real etcd: what the etcd backend of issue 14 will rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

import helix.etcdpb.kv_pb2 as mvcc
import helix.etcdpb.rpc_pb2 as rpc
import helix.etcdpb.rpc_pb2_grpc as rpc_grpc

from etcd_support import EtcdCluster
from waiting import eventually

TIMEOUT = 5.0


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a Range or Watch cover every key starting with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


@pytest.fixture
async def channel(etcd: EtcdCluster) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(etcd.endpoint) as opened:
        yield opened


async def put(kv: rpc_grpc.KVAsyncStub, key: bytes, value: bytes, lease: int = 0) -> int:
    reply = await kv.Put(rpc.PutRequest(key=key, value=value, lease=lease), timeout=TIMEOUT)
    return reply.header.revision


async def test_put_then_get_one_key_and_a_prefix(channel):
    kv = rpc_grpc.KVStub(channel)
    first = await put(kv, b"/agents/a", b"1")
    second = await put(kv, b"/agents/b", b"2")
    await put(kv, b"/other", b"3")
    assert second == first + 1

    one = await kv.Range(rpc.RangeRequest(key=b"/agents/a"), timeout=TIMEOUT)
    assert [(x.key, x.value, x.mod_revision, x.version) for x in one.kvs] == [
        (b"/agents/a", b"1", first, 1)
    ]
    listing = await kv.Range(
        rpc.RangeRequest(key=b"/agents/", range_end=prefix_end(b"/agents/")), timeout=TIMEOUT
    )
    assert [x.key for x in listing.kvs] == [b"/agents/a", b"/agents/b"]
    assert listing.header.revision == second + 1


async def test_a_txn_compares_mod_revision_version_and_create_revision(channel):
    kv = rpc_grpc.KVStub(channel)

    def cas(key: bytes, value: bytes, *compares: rpc.Compare) -> rpc.TxnRequest:
        return rpc.TxnRequest(
            compare=list(compares),
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )

    absent = rpc.Compare(
        key=b"/k", target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
    )
    created = await kv.Txn(cas(b"/k", b"v1", absent), timeout=TIMEOUT)
    assert created.succeeded
    revision = created.header.revision

    again = await kv.Txn(cas(b"/k", b"other", absent), timeout=TIMEOUT)
    assert not again.succeeded
    assert again.responses[0].response_range.kvs[0].value == b"v1"

    def at(mod_revision: int) -> rpc.Compare:
        return rpc.Compare(
            key=b"/k", target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=mod_revision
        )

    first_version = rpc.Compare(
        key=b"/k", target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=1
    )
    updated = await kv.Txn(cas(b"/k", b"v2", at(revision), first_version), timeout=TIMEOUT)
    assert updated.succeeded
    assert updated.header.revision == revision + 1
    stale = await kv.Txn(cas(b"/k", b"v3", at(revision)), timeout=TIMEOUT)
    assert not stale.succeeded
    assert stale.header.revision == revision + 1  # a failed txn writes nothing
    current = stale.responses[0].response_range.kvs[0]
    assert (current.value, current.version, current.mod_revision) == (b"v2", 2, revision + 1)


async def test_a_lease_kept_alive_keeps_its_key_and_a_lapsed_one_deletes_it(channel):
    kv, leases = rpc_grpc.KVStub(channel), rpc_grpc.LeaseStub(channel)
    lease = await leases.LeaseGrant(rpc.LeaseGrantRequest(TTL=2), timeout=TIMEOUT)
    assert lease.TTL >= 2
    await put(kv, b"/leased", b"x", lease=lease.ID)

    keepalive = leases.LeaseKeepAlive()
    for beat in range(4):  # over 2 TTLs, one keepalive stream
        if beat:
            await asyncio.sleep(lease.TTL * 0.6)
        await keepalive.write(rpc.LeaseKeepAliveRequest(ID=lease.ID))
        reply = await keepalive.read()
        assert (reply.ID, reply.TTL) == (lease.ID, lease.TTL)
    keepalive.cancel()
    ttl = await leases.LeaseTimeToLive(
        rpc.LeaseTimeToLiveRequest(ID=lease.ID, keys=True), timeout=TIMEOUT
    )
    assert ttl.keys == [b"/leased"]
    assert ttl.grantedTTL == lease.TTL
    assert 0 < ttl.TTL <= lease.TTL  # whole seconds left, rounded down

    async def gone() -> bool:
        reply = await kv.Range(rpc.RangeRequest(key=b"/leased"), timeout=TIMEOUT)
        return reply.count == 0

    await eventually(gone, within=lease.TTL + 5.0, what="the lapsed lease's key deleted")
    lapsed = await leases.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease.ID), timeout=TIMEOUT)
    assert lapsed.TTL == -1  # etcd's answer for a lease that no longer exists


async def test_a_revoked_lease_deletes_its_key_at_once(channel):
    kv, leases = rpc_grpc.KVStub(channel), rpc_grpc.LeaseStub(channel)
    lease = await leases.LeaseGrant(rpc.LeaseGrantRequest(TTL=60), timeout=TIMEOUT)
    await put(kv, b"/leased", b"x", lease=lease.ID)
    await leases.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease.ID), timeout=TIMEOUT)
    reply = await kv.Range(rpc.RangeRequest(key=b"/leased"), timeout=TIMEOUT)
    assert reply.count == 0


async def test_a_watch_from_a_revision_sees_puts_and_deletes_with_prev_kv(channel):
    kv = rpc_grpc.KVStub(channel)
    start = await put(kv, b"/w/a", b"1")
    await put(kv, b"/w/a", b"2")
    await kv.DeleteRange(rpc.DeleteRangeRequest(key=b"/w/a"), timeout=TIMEOUT)

    watch = rpc_grpc.WatchStub(channel).Watch()
    create = rpc.WatchCreateRequest(
        key=b"/w/", range_end=prefix_end(b"/w/"), start_revision=start, prev_kv=True
    )
    await watch.write(rpc.WatchRequest(create_request=create))
    events: list[mvcc.Event] = []
    async with asyncio.timeout(TIMEOUT):
        while len(events) < 3:
            reply = await watch.read()
            assert reply.compact_revision == 0
            events.extend(reply.events)
    watch.cancel()

    assert [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events] == [
        (mvcc.Event.PUT, b"/w/a", b"1", start),
        (mvcc.Event.PUT, b"/w/a", b"2", start + 1),
        (mvcc.Event.DELETE, b"/w/a", b"", start + 2),
    ]
    assert [e.prev_kv.value for e in events] == [b"", b"1", b"2"]


async def test_a_watch_from_a_compacted_revision_is_cancelled_with_the_compact_revision(channel):
    kv = rpc_grpc.KVStub(channel)
    old = await put(kv, b"/w/a", b"1")
    await put(kv, b"/w/a", b"2")
    compacted = await put(kv, b"/w/a", b"3")
    await kv.Compact(rpc.CompactionRequest(revision=compacted, physical=True), timeout=TIMEOUT)

    watch = rpc_grpc.WatchStub(channel).Watch()
    create = rpc.WatchCreateRequest(key=b"/w/", range_end=prefix_end(b"/w/"), start_revision=old)
    await watch.write(rpc.WatchRequest(create_request=create))
    async with asyncio.timeout(TIMEOUT):
        reply = await watch.read()
        while reply.compact_revision == 0:  # etcd 3.4 may answer `created` first
            assert not reply.events
            reply = await watch.read()
    watch.cancel()
    assert reply.canceled
    assert reply.compact_revision == compacted

    with pytest.raises(grpc.aio.AioRpcError) as raised:  # a read of history before it too
        await kv.Range(rpc.RangeRequest(key=b"/w/a", revision=old), timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "compacted" in (raised.value.details() or "")


async def test_maintenance_status_names_the_server_and_its_leader(etcd, channel):
    status = await rpc_grpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=TIMEOUT)
    assert status.version.startswith("3.")
    assert status.leader == status.header.member_id  # a single member leads itself
    assert etcd.url == f"etcd://{etcd.endpoint}"


async def test_a_three_member_cluster_survives_its_leader_killed(etcd_cluster):
    leader = await etcd_cluster.leader()
    follower = next(m for m in etcd_cluster.members if m is not leader)
    async with grpc.aio.insecure_channel(follower.endpoint) as opened:
        kv = rpc_grpc.KVStub(opened)
        written = await put(kv, b"/acked", b"1")
        assert await etcd_cluster.kill(leader.name) == -9
        await etcd_cluster.wait_healthy()
        assert (await etcd_cluster.leader()) is not leader
        assert await put(kv, b"/after", b"2") > written
        reply = await kv.Range(rpc.RangeRequest(key=b"/acked"), timeout=TIMEOUT)
        assert reply.kvs[0].value == b"1"
    await etcd_cluster.restart(leader.name)
    assert sum(m.running for m in etcd_cluster.members) == 3
