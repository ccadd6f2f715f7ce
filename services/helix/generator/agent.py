"""`helix generator serve`: a standalone generator agent.

It serves GeneratorService (with health, reflection, auth and rate limits, as every Helix
server) over its DNA directory, and — given `--registry-address` — registers itself in the
registry as a generator agent (its strategies, the valid DNAs of its library that fit in
--generator-advertise-bytes, its capacity) once it has read its library, heartbeats, and
deregisters when it drains. Its calls to the registry carry the service token
(`HELIX_SERVICE_TOKEN_FILE` or `HELIX_SERVICE_TOKEN`, scope agents.write), or tokens
minted with its own HS256 key when it has one (the embedded setup's shared secret).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import helix.v1.registry_pb2 as registry_pb2
from helix.agents.membership import RegistryMembership, advertised, agent_presence
from helix.agents.presence import AgentPresence
from helix.common import config as cfg
from helix.common import logs
from helix.common.config import require
from helix.common.server import HelixServer, create_server, run_server_process
from helix.common.versions import GENERATOR_MAJOR_LABEL
from helix.generator.config import GeneratorConfig
from helix.generator.library import DnaLibrary
from helix.generator.service import generator_binding
from helix.generator.strategies import GENERATOR_MAJOR
from helix.security.setup import Security, security_from_config


@dataclasses.dataclass(frozen=True)
class GeneratorAgentConfig(GeneratorConfig, RegistryMembership):
    """A standalone generator: its library and, optionally, the registry it joins."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_membership()
        require(self.generator_dna_dir is not None, "generator_dna_dir", "must be set")
        require(
            self.generator_dna_dir is None or self.generator_dna_dir.is_dir(),
            "generator_dna_dir",
            f"{self.generator_dna_dir} is not a directory",
        )


# The label naming the generator's major version (strategies.GENERATOR_MAJOR): within one
# major, Generate's output is a pure function of its request, so a run mixes only agents
# whose label has the same value.
MAJOR_LABEL = GENERATOR_MAJOR_LABEL
# The label saying Generate serves GenerateRequest.offset/limit (ranges of a generation):
# an orchestrator splits a generation only across generators that carry it.
RANGES_LABEL = "helix.dev/generate-ranges"


def generator_labels() -> dict[str, str]:
    """The labels every generator agent registers with."""
    return {MAJOR_LABEL: str(GENERATOR_MAJOR), RANGES_LABEL: "true"}


def create_agent(
    config: GeneratorAgentConfig, security: Security
) -> tuple[HelixServer, AgentPresence | None]:
    """Create (not start) the generator agent's server and its registration."""
    library = DnaLibrary(
        config.generator_dna_dir or Path("."), max_entries=config.generator_cache_entries
    )
    agent = registry_pb2.Agent(
        kind=registry_pb2.AGENT_KIND_GENERATOR,
        capacity=config.advertised_capacity,
        labels=generator_labels(),
    )
    presence = agent_presence(config, agent, security.signer, "helix-generator")
    binding = generator_binding(
        library,
        workers=config.generator_workers,
        max_message_bytes=int(config.max_send_message_bytes),
        capacity=config.advertised_capacity,
        presence=presence,
        advertise_bytes=config.generator_advertise_bytes,
    )
    server, _ = create_server(config, [binding], security=security)
    if presence is not None:
        presence.agent.endpoint = advertised(config, server.address)
    return server, presence


def _serve(args: argparse.Namespace) -> int:
    config = cfg.load(GeneratorAgentConfig, args)
    logs.configure(config.log_level)
    security = security_from_config(config)  # key files: before the event loop runs

    def ready(server: HelixServer) -> None:
        print(f"helix generator listening on {server.address}", flush=True)

    return run_server_process(config, lambda: create_agent(config, security)[0], ready)


def add_generator_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `helix generator serve` to the `helix` command line."""
    generator = subparsers.add_parser("generator", help="run a standalone generator agent")
    actions = generator.add_subparsers(dest="generator_command", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve GeneratorService over a DNA directory, registered in a registry",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    cfg.add_arguments(serve, GeneratorAgentConfig)
    serve.set_defaults(handler=_serve)
