"""The embedded default: all four Helix services in one process, on one port."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helix.common.config import default_data_dir, require
from helix.common.server import HelixServer, ServiceBinding, create_server
from helix.common.services import GENERATOR, ORACLE, ORCHESTRATOR, placeholder
from helix.generator import validation as generator_checks
from helix.oracle import validation as oracle_checks
from helix.orchestrator import validation as orchestrator_checks
from helix.registry.config import RegistryConfig
from helix.registry.engine import Registry
from helix.registry.service import registry_binding
from helix.registry.sqlite_store import SqliteRegistryStore
from helix.security.setup import Security, security_from_config


@dataclasses.dataclass(frozen=True)
class EmbeddedConfig(RegistryConfig):
    """`helix up`: all four services in one process on one port, state under `data_dir`."""

    data_dir: Path = dataclasses.field(
        default_factory=default_data_dir,
        metadata={"help": "where the embedded suite keeps its state", "flag": None},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(str(self.data_dir) not in ("", "."), "data_dir", "must name a directory")
        require(
            not self.data_dir.exists() or self.data_dir.is_dir(),
            "data_dir",
            f"{self.data_dir} exists and is not a directory",
        )

    @property
    def registry_path(self) -> Path:
        return self.registry_db or self.data_dir / "registry.sqlite3"


def embedded_registry(config: EmbeddedConfig) -> Registry:
    """The registry engine of the suite, on its SQLite file."""
    store = SqliteRegistryStore(config.registry_path, synchronous=config.registry_sync)
    return Registry(store, config.engine_settings())


def embedded_services(
    config: EmbeddedConfig, registry: Registry | None = None
) -> list[ServiceBinding]:
    """The service bindings of the embedded suite, registry first."""
    return [
        registry_binding(registry or embedded_registry(config)),
        placeholder(GENERATOR, "the generator lands with its own issue", generator_checks.CHECKS),
        placeholder(ORACLE, "the oracle lands with its own issue", oracle_checks.CHECKS),
        placeholder(
            ORCHESTRATOR, "the orchestrator lands with its own issue", orchestrator_checks.CHECKS
        ),
    ]


def embedded_key_dir(config: EmbeddedConfig) -> Path:
    """Where the embedded suite keeps its HS256 signing secrets."""
    return config.auth_hs256_dir or config.data_dir / "keys"


def prepare_embedded(config: EmbeddedConfig) -> Security:
    """The suite's data directory and security: on first start, the HS256 signing secret
    that its tokens are minted with (`helix token mint`). Blocking file I/O: run it before
    the event loop serves, or in a thread."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return security_from_config(config, embedded_key_dir=embedded_key_dir(config))


def create_embedded(
    config: EmbeddedConfig, security: Security | None = None
) -> tuple[HelixServer, int]:
    """Create (not start) the embedded suite's server; `security` from `prepare_embedded`
    (prepared here, blocking, when not given)."""
    security = security or prepare_embedded(config)
    return create_server(config, embedded_services(config), security=security)
