"""The embedded default: all four Helix services in one process, on one port."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc

import helix.v1.registry_pb2 as registry_pb2
from helix.agents.presence import AgentPresence
from helix.common.channel import create_channel
from helix.common.config import DashboardConfig, DataDirConfig, DataDirLock, setting
from helix.common.server import HelixServer, ServiceBinding, create_server
from helix.common.services import ORCHESTRATOR, placeholder
from helix.generator.agent import MAJOR_LABEL, generator_labels
from helix.generator.config import GeneratorConfig
from helix.generator.library import DnaLibrary
from helix.generator.service import generator_binding
from helix.oracle.serving import oracle_service
from helix.oracle.settings import OracleSettings
from helix.orchestrator import validation as orchestrator_checks
from helix.orchestrator.agents import ORCHESTRATOR_SCOPES as ORCHESTRATOR_SCOPES  # re-exported
from helix.orchestrator.agents import AgentPool
from helix.orchestrator.config import OrchestratorSettings, run_ownership
from helix.orchestrator.runs import Orchestrator
from helix.orchestrator.service import orchestrator_binding
from helix.orchestrator.stores import run_store
from helix.registry.config import RegistryConfig
from helix.registry.engine import Registry
from helix.registry.service import registry_binding
from helix.registry.stores import registry_store
from helix.security.client import MintingTokenSource, bearer_interceptors
from helix.security.setup import Security, security_from_config

EMBEDDED_GENERATOR_ID = "embedded-generator"
EMBEDDED_ORACLE_ID = "embedded-oracle"
EMBEDDED_ORCHESTRATOR_ID = "embedded-orchestrator"


@dataclasses.dataclass(frozen=True)
class EmbeddedConfig(
    RegistryConfig,
    GeneratorConfig,
    OracleSettings,
    OrchestratorSettings,
    DashboardConfig,
    DataDirConfig,
):
    """`helix up`: all four services in one process on one port, state under `data_dir`."""

    generator_self_register: bool = setting(
        True, "register the embedded generator as an agent in the suite's own registry"
    )
    orchestrator_embedded: bool = setting(
        True, "serve the orchestrator in the suite (it watches the suite's own registry)"
    )

    @property
    def registry_path(self) -> Path:
        return self.registry_file(self.data_dir)

    @property
    def runs_path(self) -> Path:
        return self.runs_file(self.data_dir)

    @property
    def dna_dir(self) -> Path:
        return self.generator_dna_dir or self.data_dir / "dnas"

    @property
    def reports_dir(self) -> Path:
        return self.oracle_reports_dir or self.data_dir / "reports"


def embedded_registry(config: EmbeddedConfig) -> Registry:
    """The registry engine of the suite, on its SQLite file."""
    return Registry(registry_store(config, config.registry_path), config.engine_settings())


def embedded_services(
    config: EmbeddedConfig,
    registry: Registry | None = None,
    presence: AgentPresence | None = None,
    oracle_presence: AgentPresence | None = None,
    orchestrator: ServiceBinding | None = None,
) -> list[ServiceBinding]:
    """The service bindings of the embedded suite, registry first. `presence` keeps the
    embedded generator registered in the suite's own registry, `oracle_presence` its
    oracle (the builtins, or the oracles of --oracle-config)."""
    library = DnaLibrary(config.dna_dir, max_entries=config.generator_cache_entries)
    return [
        registry_binding(registry or embedded_registry(config)),
        generator_binding(
            library,
            workers=config.generator_workers,
            max_message_bytes=int(config.max_send_message_bytes),
            capacity=config.advertised_capacity,
            presence=presence,
            advertise_bytes=config.generator_advertise_bytes,
        ),
        oracle_service(config, reports_dir=config.reports_dir, presence=oracle_presence).binding,
        orchestrator
        or placeholder(
            ORCHESTRATOR,
            "this suite has no key to sign its orchestrator's calls with (external keys or "
            "TLS): run the orchestrator as its own process",
            orchestrator_checks.CHECKS,
        ),
    ]


def prepare_embedded(config: EmbeddedConfig) -> Security:
    """The suite's data directory, locked for this process (`DataDirBusy` when another
    serves it), and its security: on first start, the HS256 signing secret that its tokens
    are minted with (`helix token mint`), and the DNA directory. The server built on it
    (`create_embedded`) holds the lock until it stops. Blocking file I/O: run it before
    the event loop serves, or in a thread."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    DataDirLock.take(config.data_dir)  # before any state is read or created
    if config.generator_dna_dir is None:
        config.dna_dir.mkdir(mode=0o700, exist_ok=True)
    return security_from_config(config, embedded_key_dir=config.key_dir)


def _loopback(address: str) -> str:
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        host = "127.0.0.1" if host != "[::]" else "[::1]"
    return f"{host}:{port}"


def create_embedded(
    config: EmbeddedConfig, security: Security | None = None
) -> tuple[HelixServer, int]:
    """Create (not start) the embedded suite's server; `security` from `prepare_embedded`
    (prepared here, blocking, when not given).

    The embedded generator registers itself in the suite's registry, over loopback with
    tokens minted by the suite's own key, as any generator agent does, so discovery works
    the same embedded and distributed. (Not with TLS, where the suite's certificate may not
    name the loopback address: the generator is then simply not registered.)
    """
    security = security or prepare_embedded(config)
    agent = registry_pb2.Agent(
        kind=registry_pb2.AGENT_KIND_GENERATOR,
        capacity=config.advertised_capacity,
        labels={"embedded": "true", **generator_labels()},
    )
    target: dict[str, str] = {}
    signer = security.signer

    def connect() -> grpc.aio.Channel:
        assert signer is not None
        tokens = MintingTokenSource(signer, "helix-generator", ["agents.write"])
        return create_channel(target["address"], interceptors=bearer_interceptors(tokens))

    presence = oracle_presence = None
    oracle_agent = registry_pb2.Agent(
        kind=registry_pb2.AGENT_KIND_ORACLE, labels={"embedded": "true"}
    )
    oracle_agent.oracle.SetInParent()
    orchestrator_agent = registry_pb2.Agent(
        kind=registry_pb2.AGENT_KIND_ORCHESTRATOR, capacity=1000, labels={"embedded": "true"}
    )
    local = signer is not None and config.tls_cert_file is None
    if config.generator_self_register and local:
        presence = AgentPresence(connect, agent, agent_id=EMBEDDED_GENERATOR_ID)
        oracle_presence = AgentPresence(connect, oracle_agent, agent_id=EMBEDDED_ORACLE_ID)
    orchestrator = None
    if local and config.orchestrator_embedded:
        assert signer is not None
        calls = MintingTokenSource(signer, "helix-orchestrator", ORCHESTRATOR_SCOPES)

        def dial(address: str) -> grpc.aio.Channel:
            return create_channel(address, interceptors=bearer_interceptors(calls))

        engine = Orchestrator(
            run_store(config, config.runs_path, synchronous=config.registry_sync),
            AgentPool(
                lambda: dial(target["address"]),
                dial,
                generator_major=generator_labels()[MAJOR_LABEL],
            ),
            config.run_settings(),
            run_ownership(config),
        )
        orchestrator_presence = None
        if config.generator_self_register:
            orchestrator_presence = AgentPresence(
                connect, orchestrator_agent, agent_id=EMBEDDED_ORCHESTRATOR_ID
            )
        orchestrator = orchestrator_binding(engine, presence=orchestrator_presence)
    server, port = create_server(
        config,
        embedded_services(
            config, presence=presence, oracle_presence=oracle_presence, orchestrator=orchestrator
        ),
        security=security,
    )
    target["address"] = _loopback(server.address)
    agent.endpoint = oracle_agent.endpoint = orchestrator_agent.endpoint = target["address"]
    return server, port
