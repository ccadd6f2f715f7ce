"""`helix oracle serve`: a standalone oracle agent.

It serves OracleService (with health, reflection, auth and rate limits, as every Helix
server) for the oracles of its configuration file, and — given `--registry-address` —
registers itself in the registry as an oracle agent (the names of its oracles, its
capacity), heartbeats with its health (DEGRADED while an oracle's workers keep failing or
its reports cannot be written) and load (candidates held), and deregisters when it
drains. Its calls to the registry carry the service token (`HELIX_SERVICE_TOKEN_FILE` or
`HELIX_SERVICE_TOKEN`, scope agents.write), or tokens minted with its own HS256 key.
"""

from __future__ import annotations

import argparse
import dataclasses

import helix.v1.registry_pb2 as registry_pb2
from helix.agents.membership import RegistryMembership, advertised, agent_presence
from helix.agents.presence import AgentPresence
from helix.common import config as cfg
from helix.common import logs
from helix.common.config import require
from helix.common.server import HelixServer, create_server, run_server_process
from helix.oracle.serving import oracle_service, require_valid_config
from helix.oracle.settings import OracleSettings
from helix.security.setup import Security, security_from_config


@dataclasses.dataclass(frozen=True)
class OracleAgentConfig(OracleSettings, RegistryMembership):
    """A standalone oracle agent: its configuration and, optionally, the registry it joins."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_membership()
        require(self.oracle_config is not None, "oracle_config", "must be set")


def create_agent(
    config: OracleAgentConfig, security: Security
) -> tuple[HelixServer, AgentPresence | None]:
    """Create (not start) the oracle agent's server and its registration."""
    agent = registry_pb2.Agent(kind=registry_pb2.AGENT_KIND_ORACLE)
    agent.oracle.SetInParent()
    presence = agent_presence(config, agent, security.signer, "helix-oracle")
    service = oracle_service(config, presence=presence)
    server, _ = create_server(config, [service.binding], security=security)
    if presence is not None:
        presence.agent.endpoint = advertised(config, server.address)
    return server, presence


def _serve(args: argparse.Namespace) -> int:
    config = cfg.load(OracleAgentConfig, args)
    logs.configure(config.log_level)
    security = security_from_config(config)
    require_valid_config(config.oracle_config)  # its problems, before anything starts

    def ready(server: HelixServer) -> None:
        print(f"helix oracle listening on {server.address}", flush=True)

    return run_server_process(config, lambda: create_agent(config, security)[0], ready)


def add_oracle_serve_command(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `serve` to `helix oracle`."""
    serve = actions.add_parser(
        "serve",
        help="serve OracleService for the oracles of a configuration file",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    cfg.add_arguments(serve, OracleAgentConfig)
    serve.set_defaults(handler=_serve)
