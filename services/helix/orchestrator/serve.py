"""`helix orchestrator serve`: the orchestrator alone, one process of a multi-process deployment.

It serves OrchestratorService (with health, reflection, auth, rate limits and metrics, as
every Helix server) over its SQLite file of runs, discovers generator and oracle agents
through the registry at --registry-address (required), and registers itself there as an
agent of kind ORCHESTRATOR. Runs live under --data-dir as `helix up` keeps them
(runs.sqlite3, or --orchestrator-db); the data dir is locked for this process. On start it
resumes every run left PENDING or RUNNING (after a crash or a drain) from its last
checkpoint. SIGTERM drains: health NOT_SERVING, runs stop where they are (resumed by the
next start), in-flight calls finish within the grace period.

Its calls to the registry and to the agents carry the service token
(`HELIX_SERVICE_TOKEN_FILE` or `HELIX_SERVICE_TOKEN`, scopes agents.read, dna.read,
generate, oracles.read, verify), or tokens minted with its own HS256 key when it has one:
started with HELIX_AUTH_HS256_DIR=DATA_DIR/keys of a `helix registry serve`, it verifies
that registry's tokens and mints its own, as generator and oracle agents do.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import grpc

import helix.v1.registry_pb2 as registry_pb2
from helix.agents.membership import RegistryMembership, advertised, agent_presence
from helix.agents.presence import AgentPresence
from helix.common import config as cfg
from helix.common import logs
from helix.common.channel import create_channel, tls_channel_credentials
from helix.common.config import DataDirConfig, DataDirLock, require
from helix.common.server import HelixServer, create_server, run_server_process
from helix.orchestrator.agents import GENERATOR_MAJOR, ORCHESTRATOR_SCOPES, AgentPool
from helix.orchestrator.config import OrchestratorSettings, run_ownership
from helix.orchestrator.runs import Orchestrator
from helix.orchestrator.service import orchestrator_binding
from helix.orchestrator.stores import run_store
from helix.security.client import bearer_interceptors, service_token_source
from helix.security.setup import Security, security_from_config

DEFAULT_SUBJECT = "helix-orchestrator"
AGENT_CAPACITY = 1000  # runs driven at once, as the embedded orchestrator advertises


@dataclasses.dataclass(frozen=True)
class OrchestratorServerConfig(OrchestratorSettings, RegistryMembership, DataDirConfig):
    """A standalone orchestrator: its settings, the registry it discovers agents through
    (and registers with), and the directory of its runs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_membership()
        require(
            bool(self.registry_address),
            "registry_address",
            "must be set: the orchestrator finds its generator and oracle agents there",
        )

    @property
    def runs_path(self) -> Path:
        return self.runs_file(self.data_dir)


def prepare_orchestrator(config: OrchestratorServerConfig) -> Security:
    """The data directory (0700), locked for this process (`DataDirBusy` when another
    serves it), and the server's security from its configured keys. The server built on
    it holds the lock until it stops. Blocking file I/O: run it before the event loop."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    DataDirLock.take(config.data_dir)  # before any state is read or created
    return security_from_config(config)


def create_orchestrator_server(
    config: OrchestratorServerConfig, security: Security
) -> tuple[HelixServer, AgentPresence | None]:
    """Create (not start) the orchestrator's server, its engine on its SQLite store, and
    its registration."""
    calls = service_token_source(
        config.agent_id or DEFAULT_SUBJECT, ORCHESTRATOR_SCOPES, signer=security.signer
    )
    # One CA bundle for the deployment: it verifies the registry and the agents dialled.
    credentials = (
        tls_channel_credentials(config.registry_ca_file) if config.registry_ca_file else None
    )

    def dial(address: str) -> grpc.aio.Channel:
        return create_channel(
            address, credentials=credentials, interceptors=bearer_interceptors(calls)
        )

    engine = Orchestrator(
        run_store(config, config.runs_path),
        AgentPool(lambda: dial(config.registry_address), dial, generator_major=GENERATOR_MAJOR),
        config.run_settings(),
        run_ownership(config),
    )
    agent = registry_pb2.Agent(kind=registry_pb2.AGENT_KIND_ORCHESTRATOR, capacity=AGENT_CAPACITY)
    presence = agent_presence(config, agent, security.signer, DEFAULT_SUBJECT)
    binding = orchestrator_binding(engine, presence=presence)
    server, _ = create_server(config, [binding], security=security)
    if presence is not None:
        presence.agent.endpoint = advertised(config, server.address)
    return server, presence


def _serve(args: argparse.Namespace) -> int:
    config = cfg.load(OrchestratorServerConfig, args)
    logs.configure(config.log_level)
    security = prepare_orchestrator(config)  # key files: before the event loop runs

    def ready(server: HelixServer) -> None:
        print(f"helix orchestrator listening on {server.address}", flush=True)
        if server.metrics_port is not None:
            metrics_url = f"http://{config.metrics_host}:{server.metrics_port}/metrics"
            print(f"helix orchestrator metrics on {metrics_url}", flush=True)

    return run_server_process(
        config, lambda: create_orchestrator_server(config, security)[0], ready
    )


def add_orchestrator_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `helix orchestrator serve` to the `helix` command line."""
    orchestrator = subparsers.add_parser(
        "orchestrator", help="run the orchestrator as a process of its own"
    )
    actions = orchestrator.add_subparsers(
        dest="orchestrator_command", metavar="ACTION", required=True
    )
    serve = actions.add_parser(
        "serve",
        help="serve OrchestratorService alone, its runs under --data-dir",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    cfg.add_arguments(serve, OrchestratorServerConfig)
    serve.set_defaults(handler=_serve)
