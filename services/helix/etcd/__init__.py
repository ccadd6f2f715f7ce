"""Helix's thin async etcd client (issue 14): connection, auth, KV, leases, watch.

Built on etcd's own v3 API (`helix.etcdpb`, generated from etcd's rpc.proto) over grpc.aio;
errors are Helix's domain errors (`helix.etcd.errors`). See docs/decisions.md "etcd".
"""

from helix.etcd.client import EtcdClient, Lease, Page, TlsConfig, prefix_end
from helix.etcd.endpoints import parse_store_url
from helix.etcd.errors import Compacted
from helix.etcd.leases import KeepAlive, Renewer, keep_alive
from helix.etcd.watch import Watch

__all__ = [
    "Compacted",
    "EtcdClient",
    "KeepAlive",
    "Lease",
    "Page",
    "Renewer",
    "TlsConfig",
    "Watch",
    "keep_alive",
    "parse_store_url",
    "prefix_end",
]
