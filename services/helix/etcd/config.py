"""An `EtcdClient` from a server's `StoreConfig` (--store etcd://..., --etcd-*)."""

from __future__ import annotations

from helix.common.config import ConfigError, StoreConfig
from helix.etcd.client import EtcdClient, TlsConfig
from helix.etcd.endpoints import parse_store_url


def etcd_client(config: StoreConfig) -> EtcdClient:
    """A client of the cluster `config.store` names (no I/O but reading the TLS and
    password files: call it before the event loop serves). `ConfigError` names a bad
    setting."""
    try:
        endpoints = parse_store_url(config.store)
    except ValueError as exc:
        raise ConfigError(f"--store / HELIX_STORE: {exc}") from None
    tls = None
    if config.etcd_ca_file or config.etcd_cert_file or config.etcd_server_name:
        tls = TlsConfig(
            ca=config.etcd_ca_file,
            cert=config.etcd_cert_file,
            key=config.etcd_key_file,
            server_name=config.etcd_server_name,
        )
    password = None
    if config.etcd_password_file is not None:
        try:
            password = config.etcd_password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--etcd-password-file: cannot read it: {exc}") from None
    try:
        return EtcdClient(
            endpoints,
            tls=tls,
            user=config.etcd_user,
            password=password,
            timeout=float(config.etcd_timeout),
        )
    except OSError as exc:  # TLS files
        raise ConfigError(f"--etcd-ca-file/--etcd-cert-file/--etcd-key-file: {exc}") from None
