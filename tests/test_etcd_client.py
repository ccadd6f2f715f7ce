"""helix.etcd, the thin async etcd client of the etcd backends (issue 14), on real etcd."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import grpc
import pytest

import helix.etcdpb.kv_pb2 as mvcc
import helix.etcdpb.rpc_pb2 as rpc
import helix.etcdpb.rpc_pb2_grpc as rpc_grpc
from helix.common import errors, reasons
from helix.etcd import (
    Compacted,
    EtcdClient,
    TlsConfig,
    Watch,
    keep_alive,
    ops,
    parse_store_url,
    prefix_end,
)
from helix.etcd.endpoints import grpc_target

from etcd_support import EtcdCluster
from waiting import eventually

# --- the store URL and the grpc target (pure) ---------------------------------------------


def test_a_store_url_gives_its_endpoints_normalised():
    assert parse_store_url("etcd://127.0.0.1:2379") == ["127.0.0.1:2379"]
    assert parse_store_url("etcd://a.example:2379,10.0.0.2:02380,[::1]:2381") == [
        "a.example:2379",
        "10.0.0.2:2380",
        "[::1]:2381",
    ]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "must start with etcd://"),
        ("http://127.0.0.1:2379", "must start with etcd://"),
        ("sqlite", "must start with etcd://"),
        ("etcd://", "names no endpoint"),
        ("etcd://127.0.0.1:2379,", "empty etcd endpoint"),
        ("etcd://,127.0.0.1:2379", "empty etcd endpoint"),
        ("etcd://127.0.0.1", "has no port"),
        ("etcd://:2379", "has no port"),
        ("etcd://127.0.0.1:0", "not within 1..65535"),
        ("etcd://127.0.0.1:65536", "not within 1..65535"),
        ("etcd://127.0.0.1:http", "not within 1..65535"),
        ("etcd://127.0.0.1:-1", "not within 1..65535"),
        ("etcd://::1:2379", "IPv6 address in brackets"),
        ("etcd://[::1:2379", "unclosed ["),
        ("etcd://[nope]:2379", "is not an IPv6 address"),
        ("etcd://bad_host:2379", "not a valid host name"),
        ("etcd://-a:2379", "not a valid host name"),
        ("etcd://root:secret@127.0.0.1:2379", "has credentials"),
        ("etcd://127.0.0.1:2379/prefix", "has a path"),
        ("etcd://127.0.0.1:2379?tls=1", "has a query"),
        ("etcd://127.0.0.1:2379,127.0.0.1:2379", "twice"),
    ],
)
def test_a_bad_store_url_is_refused_saying_why(url, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_store_url(url)


def test_the_grpc_target_balances_over_ip_addresses_of_one_family():
    assert grpc_target(["127.0.0.1:1", "127.0.0.2:2"]) == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert grpc_target(["[::1]:1", "[::2]:2"]) == "ipv6:[::1]:1,[::2]:2"
    assert grpc_target(["etcd.example:2379"]) == "dns:///etcd.example:2379"
    with pytest.raises(ValueError, match="must be IP addresses"):
        grpc_target(["etcd-0.example:2379", "etcd-1.example:2379"])
    with pytest.raises(ValueError, match="mix IPv4 and IPv6"):
        grpc_target(["127.0.0.1:1", "[::1]:2"])


def test_prefix_end_covers_exactly_the_prefix():
    assert prefix_end(b"/agents/") == b"/agents0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"  # every key
    assert prefix_end(b"") == b"\0"


def test_tls_needs_a_certificate_and_its_key_together(tmp_path):
    with pytest.raises(ValueError, match="both a client certificate and its key"):
        TlsConfig(cert=tmp_path / "c.pem")


# --- on a real etcd -------------------------------------------------------------------------

TIMEOUT = 2.0


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with await EtcdClient.connect(parse_store_url(etcd.url), timeout=TIMEOUT) as opened:
        yield opened


async def test_put_get_and_delete_one_key(client):
    assert await client.get(b"/a") is None
    first = await client.put(b"/a", b"1")
    second = await client.put(b"/a", b"2", prev_kv=True)
    assert second.header.revision == first.header.revision + 1
    assert second.prev_kv.value == b"1"
    got = await client.get(b"/a")
    assert got is not None
    assert (got.value, got.version, got.mod_revision) == (b"2", 2, second.header.revision)
    old = await client.get(b"/a", revision=first.header.revision)
    assert old is not None
    assert old.value == b"1"

    deleted = await client.delete(b"/a", prev_kv=True)
    assert deleted.deleted == 1
    assert [kv.value for kv in deleted.prev_kvs] == [b"2"]
    assert await client.get(b"/a") is None


async def test_a_prefix_is_read_in_pages_by_key_at_one_revision(client):
    for i in range(7):
        await client.put(b"/p/%02d" % i, b"%d" % i)
    await client.put(b"/p0", b"outside")  # just past the prefix
    await client.put(b"/o", b"outside")

    page = await client.range_prefix(b"/p/", limit=3)
    assert [kv.key for kv in page.kvs] == [b"/p/00", b"/p/01", b"/p/02"]
    assert page.more
    page2 = await client.range_prefix(b"/p/", limit=3, after=page.last_key, revision=page.revision)
    assert [kv.key for kv in page2.kvs] == [b"/p/03", b"/p/04", b"/p/05"]

    # a write after the first page does not show in the later pages of one scan
    pages = client.scan_prefix(b"/p/", page_size=3)
    seen = [kv.key for kv in (await anext(pages)).kvs]
    await client.put(b"/p/06", b"changed")
    await client.put(b"/p/99", b"new")
    async for later in pages:
        seen.extend(kv.key for kv in later.kvs)
        assert [kv.value for kv in later.kvs if kv.key == b"/p/06"] in ([], [b"6"])
    assert seen == [b"/p/%02d" % i for i in range(7)]

    everything = await client.range_prefix(b"/p/")
    assert len(everything.kvs) == 8
    assert not everything.more

    assert (await client.delete(b"/p/", prefix=True)).deleted == 8
    assert await client.get(b"/p0") is not None


async def test_a_txn_compare_and_set_lets_exactly_one_of_racing_writers_win(client):
    created = await client.txn([ops.absent(b"/n")], [ops.put(b"/n", b"0")])
    assert created.succeeded
    assert (await client.get(b"/n")).mod_revision == created.header.revision

    async def increment() -> int:
        """Read, then write value + 1 if nobody wrote since: retries until it wins."""
        tries = 0
        while True:
            tries += 1
            current = await client.get(b"/n")
            assert current is not None
            reply = await client.txn(
                [ops.mod_revision(b"/n", current.mod_revision)],
                [ops.put(b"/n", b"%d" % (int(current.value) + 1))],
                [ops.get(b"/n")],
            )
            if reply.succeeded:
                return tries
            assert reply.responses[0].response_range.kvs[0].mod_revision > current.mod_revision

    tries = await asyncio.gather(*(increment() for _ in range(8)))
    assert (await client.get(b"/n")).value == b"8"  # no increment lost
    assert max(tries) > 1  # they did race

    # only one of racing creators wins
    results = await asyncio.gather(
        *(client.txn([ops.absent(b"/once")], [ops.put(b"/once", b"%d" % i)]) for i in range(6))
    )
    assert sum(r.succeeded for r in results) == 1
    winner = next(i for i, r in enumerate(results) if r.succeeded)
    assert (await client.get(b"/once")).value == b"%d" % winner

    versioned = await client.txn(
        [ops.version(b"/once", 1), ops.value(b"/once", b"%d" % winner)],
        [ops.delete(b"/once", prev_kv=True)],
    )
    assert versioned.succeeded
    assert versioned.responses[0].response_delete_range.deleted == 1


async def test_leases_grant_ttl_and_revoke(client):
    lease = await client.grant(30)
    assert lease.id > 0
    assert lease.ttl == 30
    assert 0 < await client.time_to_live(lease.id) <= 30
    await client.put(b"/leased", b"x", lease=lease.id)
    await client.revoke(lease.id)
    assert await client.get(b"/leased") is None
    assert await client.time_to_live(lease.id) == -1
    with pytest.raises(errors.NotFound, match="lease not found"):
        await client.revoke(lease.id)


async def test_a_kept_alive_lease_outlives_its_ttl_and_lapses_after_close(client):
    lease = await client.grant(2)
    await client.put(b"/owner", b"me", lease=lease.id)
    lost: list[str] = []
    keeper = keep_alive(client, lease, on_lost=lost.append)
    await asyncio.sleep(lease.ttl * 2 + 1)  # the point of this test: time passing
    assert await client.get(b"/owner") is not None
    assert keeper.renewals >= 4
    assert not keeper.lost.is_set()
    assert not lost

    await keeper.close()
    closed_at = time.monotonic()

    async def gone() -> bool:
        return await client.get(b"/owner") is None

    await eventually(gone, within=lease.ttl + 5.0, what="the lease lapsed after close")
    assert time.monotonic() - closed_at >= lease.ttl - 1  # it was alive until it lapsed
    assert not lost  # closing is not losing


async def test_a_keepalive_reports_a_revoked_lease_lost(client):
    lease = await client.grant(3)
    keeper = keep_alive(client, lease)
    await eventually(lambda: keeper.renewals >= 1, within=5.0, what="a first renewal")
    await client.revoke(lease.id)
    async with asyncio.timeout(lease.ttl + 2.0):
        reason = await keeper.wait_lost()
    assert "expired or was revoked" in reason


async def test_client_close_stops_its_keepalives_and_later_calls_are_unavailable(etcd):
    client = await EtcdClient.connect(etcd.endpoints, timeout=TIMEOUT)
    lease = await client.grant(5)
    keeper = keep_alive(client, lease)
    await eventually(lambda: keeper.renewals >= 1, within=5.0, what="a first renewal")
    await client.close()
    await client.close()  # twice is fine
    assert keeper._task.done()
    with pytest.raises(errors.Unavailable, match="closed"):
        await client.get(b"/a")


async def next_events(watch: Watch, count: int, within: float = 10.0) -> list[mvcc.Event]:
    events: list[mvcc.Event] = []
    async with asyncio.timeout(within):
        while len(events) < count:
            events.append(await anext(watch))
    return events


async def test_a_watch_gives_puts_and_deletes_from_a_revision_with_prev_kv(client):
    start = (await client.put(b"/w/a", b"1")).header.revision
    await client.put(b"/w/a", b"2")
    await client.put(b"/x", b"outside")
    await client.delete(b"/w/a")
    async with Watch(client, b"/w/", prefix_end(b"/w/"), start_revision=start) as watch:
        events = await next_events(watch, 3)
        assert [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events] == [
            (mvcc.Event.PUT, b"/w/a", b"1", start),
            (mvcc.Event.PUT, b"/w/a", b"2", start + 1),
            (mvcc.Event.DELETE, b"/w/a", b"", start + 3),
        ]
        assert [e.prev_kv.value for e in events] == [b"", b"1", b"2"]
        # and live ones, several in one revision
        reply = await client.txn([], [ops.put(b"/w/b", b"b"), ops.put(b"/w/c", b"c")])
        live = await next_events(watch, 2)
        assert [(e.kv.key, e.kv.mod_revision) for e in live] == [
            (b"/w/b", reply.header.revision),
            (b"/w/c", reply.header.revision),
        ]
        assert watch.next_revision == reply.header.revision + 1


async def test_a_watch_from_now_resumes_from_the_revision_it_was_created_at(client):
    before = (await client.put(b"/now", b"0")).header.revision
    watch = Watch(client, b"/now")
    first = asyncio.create_task(anext(watch))
    await eventually(lambda: watch.next_revision, within=5.0, what="the watch created")
    assert watch.next_revision == before + 1  # not a later "now" after a reconnect
    written = (await client.put(b"/now", b"1")).header.revision
    event = await first
    assert (event.kv.value, event.prev_kv.value, event.kv.mod_revision) == (b"1", b"0", written)
    await watch.close()


async def test_a_watch_resumes_after_etcd_restarts_with_no_gap_and_no_duplicate(etcd, client):
    start = (await client.put(b"/r/0", b"0")).header.revision
    watch = Watch(client, b"/r/", prefix_end(b"/r/"), start_revision=start, reconnect_within=30)
    written = [start]
    for i in range(1, 5):
        written.append((await client.put(b"/r/%d" % i, b"%d" % i)).header.revision)
    events = await next_events(watch, 3)  # some read, some buffered or not yet sent

    await etcd.kill("etcd0")
    reading = asyncio.create_task(next_events(watch, 5 + 2, within=40.0))
    await asyncio.sleep(0.5)  # the watch finds its stream broken while etcd is down
    await etcd.restart("etcd0")
    for i in range(5, 10):
        written.append((await client.put(b"/r/%d" % i, b"%d" % i)).header.revision)
    events += await reading
    assert [e.kv.mod_revision for e in events] == written
    assert [e.kv.key for e in events] == [b"/r/%d" % i for i in range(10)]
    assert watch.reconnects >= 1
    await watch.close()
    with pytest.raises(StopAsyncIteration):
        await anext(watch)


async def test_compacted_history_raises_compacted_with_the_compact_revision(client):
    old = (await client.put(b"/c/a", b"1")).header.revision
    await client.put(b"/c/a", b"2")
    compacted = (await client.put(b"/c/a", b"3")).header.revision
    await client.compact(compacted)

    watch = Watch(client, b"/c/", prefix_end(b"/c/"), start_revision=old)
    with pytest.raises(Compacted) as raised:
        await anext(watch)
    assert raised.value.compact_revision == compacted
    assert isinstance(raised.value, errors.OutOfRange)
    assert raised.value.reason == reasons.REVISION_COMPACTED
    assert raised.value.metadata == {"compact_revision": str(compacted)}

    with pytest.raises(Compacted) as read:  # a read of compacted history too
        await client.get(b"/c/a", revision=old)
    assert read.value.reason == reasons.REVISION_COMPACTED
    async with Watch(client, b"/c/", prefix_end(b"/c/"), start_revision=compacted) as ok:
        assert [e.kv.value for e in await next_events(ok, 1)] == [b"3"]


async def test_a_stopped_etcd_is_unavailable_within_the_timeout(etcd):
    client = await EtcdClient.connect(etcd.endpoints, timeout=1.0)
    try:
        await client.put(b"/k", b"v")
        lease = await client.grant(2)
        keeper = keep_alive(client, lease)
        watch = Watch(client, b"/k", start_revision=0, reconnect_within=1.0)
        await etcd.stop("etcd0")
        for call in (client.get(b"/k"), client.put(b"/k", b"w"), client.txn([], [])):
            began = time.monotonic()
            with pytest.raises(errors.Unavailable) as raised:
                await call
            assert time.monotonic() - began < 1.0 + 0.5
            assert raised.value.retry_after == 1.0
            assert isinstance(raised.value.__cause__, type(None))  # no AioRpcError chained
        began = time.monotonic()
        with pytest.raises(errors.Unavailable):
            await anext(watch)
        assert time.monotonic() - began < 1.0 + 2.0
        async with asyncio.timeout(lease.ttl + 2.0):
            assert "no renewal confirmed" in await keeper.wait_lost()
    finally:
        await client.close()


async def test_cancelling_a_caller_propagates(client):
    watch = Watch(client, b"/quiet")
    waiting = asyncio.create_task(anext(watch))
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await watch.close()


# --- auth -----------------------------------------------------------------------------------


async def enable_auth(etcd: EtcdCluster, password: str) -> None:
    async with grpc.aio.insecure_channel(etcd.endpoint) as channel:
        auth = rpc_grpc.AuthStub(channel)
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=password), timeout=5)
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=5)
        await auth.AuthEnable(rpc.AuthEnableRequest(), timeout=5)


async def test_auth_sends_the_token_and_authenticates_again_when_it_is_stale(etcd):
    await enable_auth(etcd, "s3cret")
    async with await EtcdClient.connect(
        etcd.endpoints, user="root", password="s3cret", timeout=TIMEOUT
    ) as client:
        await client.put(b"/a", b"1")
        assert client.auth_renewals == 1
        lease = await client.grant(5)
        keeper = keep_alive(client, lease)
        # a password change drops the user's tokens: the next call gets "invalid auth token"
        reply = await client.call(
            rpc_grpc.AuthStub(client._channel).UserChangePassword,
            rpc.AuthUserChangePasswordRequest(name="root", password="s3cret"),
            "change password",
        )
        assert reply.header.revision > 0
        renewals = client.auth_renewals
        got = await client.get(b"/a")
        assert got is not None
        assert got.value == b"1"
        assert client.auth_renewals == renewals + 1
        # a watch opened with a stale token is refused as "permission denied": renewed too
        await client.call(
            rpc_grpc.AuthStub(client._channel).UserChangePassword,
            rpc.AuthUserChangePasswordRequest(name="root", password="s3cret"),
            "change password",
        )
        renewals = client.auth_renewals
        async with Watch(client, b"/a", start_revision=1) as watch:
            assert [e.kv.value for e in await next_events(watch, 1)] == [b"1"]
        assert client.auth_renewals == renewals + 1
        assert keeper.renewals >= 1
        assert not keeper.lost.is_set()

    async with await EtcdClient.connect(etcd.endpoints, timeout=TIMEOUT) as anonymous:
        with pytest.raises(errors.Unavailable, match="credentials"):
            await anonymous.get(b"/a")
    async with await EtcdClient.connect(
        etcd.endpoints, user="root", password="wrong", timeout=TIMEOUT
    ) as wrong:
        with pytest.raises(errors.Unavailable, match="authentication failed"):
            await wrong.get(b"/a")


# --- several members ------------------------------------------------------------------------


async def test_one_client_over_a_cluster_carries_on_when_a_member_dies(etcd_cluster):
    async with await EtcdClient.connect(etcd_cluster.endpoints, timeout=TIMEOUT) as client:
        start = (await client.put(b"/m/0", b"0")).header.revision
        watch = Watch(client, b"/m/", prefix_end(b"/m/"), start_revision=start, reconnect_within=30)
        assert len(await next_events(watch, 1)) == 1
        leader = await etcd_cluster.leader()
        await etcd_cluster.kill(leader.name)

        async def write(i: int) -> int:
            async def attempt() -> int:
                return (await client.put(b"/m/%d" % i, b"%d" % i)).header.revision

            return await eventually(attempt, within=20.0, ignore=(errors.Unavailable,))

        written = [start] + [await write(i) for i in range(1, 6)]
        events = await next_events(watch, 5, within=30.0)
        assert [start] + [e.kv.mod_revision for e in events] == written
        first = await client.get(b"/m/0")
        assert first is not None
        assert first.value == b"0"
        await watch.close()
