"""The orchestrator's run store as configured: SQLite under the data dir, or etcd."""

from __future__ import annotations

from pathlib import Path

from helix.common.config import StoreConfig
from helix.orchestrator.sqlite_store import SqliteRunStore
from helix.orchestrator.store import RunStore


def run_store(config: StoreConfig, sqlite_path: Path, *, synchronous: str = "NORMAL") -> RunStore:
    """The store `config.store` selects; `sqlite_path` is the file for the default."""
    if not config.uses_etcd:
        return SqliteRunStore(sqlite_path, synchronous=synchronous)
    from helix.etcd.config import etcd_client
    from helix.orchestrator.etcd_store import EtcdRunStore

    return EtcdRunStore(etcd_client(config), config.etcd_prefix, owns_client=True)
