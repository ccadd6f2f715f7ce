"""Builders for `EtcdClient.txn`: the compares and operations a backend writes most.

Compares (all EQUAL unless said): `absent(key)` (never created, or deleted), `mod_revision
(key, rev)` (unchanged since `rev`: an etag), `version(key, n)`, `value(key, v)`.
Compare `lease(key, id)`: attached to that lease. Operations: `put`, `get`, `delete`,
`delete_range`.
"""

from __future__ import annotations

import helix.etcdpb.kv_pb2 as mvcc
import helix.etcdpb.rpc_pb2 as rpc

_EQUAL = rpc.Compare.EQUAL


def absent(key: bytes) -> rpc.Compare:
    return rpc.Compare(key=key, target=rpc.Compare.CREATE, result=_EQUAL, create_revision=0)


def mod_revision(key: bytes, revision: int) -> rpc.Compare:
    return rpc.Compare(key=key, target=rpc.Compare.MOD, result=_EQUAL, mod_revision=revision)


def version(key: bytes, number: int) -> rpc.Compare:
    return rpc.Compare(key=key, target=rpc.Compare.VERSION, result=_EQUAL, version=number)


def value(key: bytes, expected: bytes) -> rpc.Compare:
    return rpc.Compare(key=key, target=rpc.Compare.VALUE, result=_EQUAL, value=expected)


def lease(key: bytes, lease_id: int) -> rpc.Compare:
    """`key` is attached to lease `lease_id`."""
    return rpc.Compare(key=key, target=rpc.Compare.LEASE, result=_EQUAL, lease=lease_id)


def put(key: bytes, data: bytes, *, lease: int = 0) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=data, lease=lease))


def get(key: bytes, range_end: bytes = b"", *, limit: int = 0) -> rpc.RequestOp:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=range_end, limit=limit))


def delete(key: bytes, *, prev_kv: bool = False) -> rpc.RequestOp:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, prev_kv=prev_kv))


def delete_range(key: bytes, range_end: bytes) -> rpc.RequestOp:
    """Delete every key in [key, range_end)."""
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=range_end))


# The etcd types a backend names.
RequestOp = rpc.RequestOp
Compare = rpc.Compare
KeyValue = mvcc.KeyValue
Event = mvcc.Event
DELETE = mvcc.Event.DELETE
