"""The embedded default: all four Helix services in one process, on one port."""

from __future__ import annotations

from helix.common.config import EmbeddedConfig
from helix.common.server import HelixServer, ServiceBinding, create_server
from helix.common.services import GENERATOR, ORACLE, ORCHESTRATOR, REGISTRY, placeholder


def embedded_services(config: EmbeddedConfig) -> list[ServiceBinding]:
    """The service bindings of the embedded suite, registry first."""
    return [
        placeholder(REGISTRY, "the registry lands with its own issue"),
        placeholder(GENERATOR, "the generator lands with its own issue"),
        placeholder(ORACLE, "the oracle lands with its own issue"),
        placeholder(ORCHESTRATOR, "the orchestrator lands with its own issue"),
    ]


def create_embedded(config: EmbeddedConfig) -> tuple[HelixServer, int]:
    """Create (not start) the embedded suite's server; prepares the data directory."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return create_server(config, embedded_services(config))
