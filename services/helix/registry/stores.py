"""The registry's store as configured: SQLite under the data dir, or etcd (--store)."""

from __future__ import annotations

from pathlib import Path

from helix.registry.config import RegistryConfig
from helix.registry.sqlite_store import SqliteRegistryStore
from helix.registry.store import RegistryStore


def registry_store(config: RegistryConfig, sqlite_path: Path) -> RegistryStore:
    """The store `config.store` selects; `sqlite_path` is the file for the default."""
    if not config.uses_etcd:
        return SqliteRegistryStore(sqlite_path, synchronous=config.registry_sync)
    from helix.etcd.config import etcd_client
    from helix.registry.etcd_store import EtcdRegistryStore

    return EtcdRegistryStore(etcd_client(config), config.etcd_prefix, owns_client=True)
