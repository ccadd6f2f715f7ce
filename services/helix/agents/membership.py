"""What a standalone agent (`helix generator serve`, `helix oracle serve`) needs to join a
registry: the settings, the endpoint it advertises, and its `AgentPresence`.

Its calls to the registry carry the service token (`HELIX_SERVICE_TOKEN_FILE` or
`HELIX_SERVICE_TOKEN`, scope agents.write), or tokens minted with its own HS256 key when it
has one (the embedded setup's shared secret).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import grpc

import helix.v1.registry_pb2 as registry_pb2
from helix.agents.presence import AgentPresence
from helix.common.channel import create_channel, tls_channel_credentials
from helix.common.config import require, setting
from helix.common.validation import RESOURCE_ID_PATTERN
from helix.security.client import bearer_interceptors, service_token_source
from helix.security.keys import SigningKey


@dataclasses.dataclass(frozen=True)
class RegistryMembership:
    """Settings of an agent that registers itself (a mixin of its server's config; call
    `check_membership` from its `__post_init__`)."""

    registry_address: str = setting("", "registry host:port to register with (empty: none)")
    registry_ca_file: Path | None = setting(None, "CA bundle (PEM) to reach the registry by TLS")
    agent_id: str = setting("", "id to register as (empty: the registry picks one)")
    advertise_address: str = setting(
        "", "host:port other agents dial to reach this one (default: the listen address)"
    )

    def check_membership(self) -> None:
        require(
            not self.agent_id or re.fullmatch(RESOURCE_ID_PATTERN, self.agent_id) is not None,
            "agent_id",
            f"{self.agent_id!r} does not match {RESOURCE_ID_PATTERN}",
        )


def advertised(config: RegistryMembership, listen_address: str) -> str:
    """The endpoint to register: --advertise-address, else the listen address (a
    wildcard host is advertised as loopback: set --advertise-address beyond one machine)."""
    if config.advertise_address:
        return config.advertise_address
    host, _, port = listen_address.rpartition(":")
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def agent_presence(
    config: RegistryMembership,
    agent: registry_pb2.Agent,
    signer: SigningKey | None,
    default_subject: str,
) -> AgentPresence | None:
    """The presence that keeps `agent` registered (None without --registry-address)."""
    if not config.registry_address:
        return None
    tokens = service_token_source(
        config.agent_id or default_subject, ["agents.write"], signer=signer
    )
    credentials = (
        tls_channel_credentials(config.registry_ca_file) if config.registry_ca_file else None
    )

    def connect() -> grpc.aio.Channel:
        return create_channel(
            config.registry_address,
            credentials=credentials,
            interceptors=bearer_interceptors(tokens),
        )

    return AgentPresence(connect, agent, agent_id=config.agent_id)
