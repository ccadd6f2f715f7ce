"""`helix registry serve`: the registry alone, one process of a multi-process deployment.

It serves RegistryService (with health, reflection, auth, rate limits and metrics, as every
Helix server) over its SQLite file, and drains on SIGTERM: health NOT_SERVING, watches
ended, in-flight calls finish within the grace period, the store closes. Its state lives
under --data-dir as `helix up` keeps it (registry.sqlite3, or --registry-db), with the
HS256 signing secret created in DATA_DIR/keys on first start: `helix token mint --data-dir`
mints for it, and generator agents started with HELIX_AUTH_HS256_DIR=DATA_DIR/keys share
the secret (they verify the same tokens and mint their own to register).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from helix.common import config as cfg
from helix.common import logs
from helix.common.config import DataDirConfig, DataDirLock
from helix.common.server import HelixServer, create_server, run_server_process
from helix.registry.config import RegistryConfig
from helix.registry.engine import Registry
from helix.registry.service import registry_binding
from helix.registry.stores import registry_store
from helix.security.setup import Security, security_from_config


@dataclasses.dataclass(frozen=True)
class RegistryServerConfig(RegistryConfig, DataDirConfig):
    """A standalone registry: the registry's settings plus the directory of its state.

    The layout of the data dir is the embedded suite's, so a registry can move between
    `helix up` and `helix registry serve` on the same state.
    """

    @property
    def registry_path(self) -> Path:
        return self.registry_file(self.data_dir)


def prepare_registry(config: RegistryServerConfig) -> Security:
    """The data directory (0700), locked for this process (`DataDirBusy` when another
    serves it, `helix up` included), and the server's security, creating the HS256 secret
    on first start. The server built on it holds the lock until it stops. Blocking file
    I/O: run it before the event loop serves."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    DataDirLock.take(config.data_dir)  # before any state is read or created
    return security_from_config(config, embedded_key_dir=config.key_dir)


def create_registry_server(
    config: RegistryServerConfig, security: Security
) -> tuple[HelixServer, int]:
    """Create (not start) the registry's server on its store (SQLite, or etcd)."""
    registry = Registry(registry_store(config, config.registry_path), config.engine_settings())
    return create_server(config, [registry_binding(registry)], security=security)


def _serve(args: argparse.Namespace) -> int:
    config = cfg.load(RegistryServerConfig, args)
    logs.configure(config.log_level)
    security = prepare_registry(config)  # key files: before the event loop runs

    def ready(server: HelixServer) -> None:
        print(f"helix registry listening on {server.address}", flush=True)
        if server.metrics_port is not None:
            metrics_url = f"http://{config.metrics_host}:{server.metrics_port}/metrics"
            print(f"helix registry metrics on {metrics_url}", flush=True)

    return run_server_process(config, lambda: create_registry_server(config, security)[0], ready)


def add_registry_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `helix registry serve` to the `helix` command line."""
    registry = subparsers.add_parser("registry", help="run the registry as a process of its own")
    actions = registry.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve RegistryService alone, its state under --data-dir",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    cfg.add_arguments(serve, RegistryServerConfig)
    serve.set_defaults(handler=_serve)
