"""The embedded default: all four Helix services in one process, on one port."""

from __future__ import annotations

from pathlib import Path

from helix.common.config import EmbeddedConfig
from helix.common.server import HelixServer, ServiceBinding, create_server
from helix.common.services import GENERATOR, ORACLE, ORCHESTRATOR, REGISTRY, placeholder
from helix.generator import validation as generator_checks
from helix.oracle import validation as oracle_checks
from helix.orchestrator import validation as orchestrator_checks
from helix.registry import validation as registry_checks
from helix.security.setup import security_from_config


def embedded_services(config: EmbeddedConfig) -> list[ServiceBinding]:
    """The service bindings of the embedded suite, registry first."""
    return [
        placeholder(REGISTRY, "the registry lands with its own issue", registry_checks.CHECKS),
        placeholder(GENERATOR, "the generator lands with its own issue", generator_checks.CHECKS),
        placeholder(ORACLE, "the oracle lands with its own issue", oracle_checks.CHECKS),
        placeholder(
            ORCHESTRATOR, "the orchestrator lands with its own issue", orchestrator_checks.CHECKS
        ),
    ]


def embedded_key_dir(config: EmbeddedConfig) -> Path:
    """Where the embedded suite keeps its HS256 signing secrets."""
    return config.auth_hs256_dir or config.data_dir / "keys"


def create_embedded(config: EmbeddedConfig) -> tuple[HelixServer, int]:
    """Create (not start) the embedded suite's server.

    Prepares the data directory and, on first start, the HS256 signing secret that tokens
    for this suite are minted with (`helix token mint --data-dir`). Blocking file I/O:
    call it before the event loop serves.
    """
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    security = security_from_config(config, embedded_key_dir=embedded_key_dir(config))
    return create_server(config, embedded_services(config), security=security)
