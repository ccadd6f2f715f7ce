"""The registry client library every Helix service uses.

- `AgentRegistration`: an agent's own registration — registers, heartbeats at about
  ttl/3 with jitter, registers again after its lease was lost, stops when superseded,
  deregisters on exit (see `helix.agents.registration`).
- `AgentInformer`: discovery — list, then watch from the list's revision; an O(1) cache
  by name; re-list on OUT_OF_RANGE; reconnect with jittered backoff; callbacks or an async
  iterator of changes (see `helix.agents.informer`).
- `AgentPresence`: a service's own registration kept in the background for as long as it
  serves, started and stopped with its server (see `helix.agents.presence`).

They take a `grpc.aio.Channel` (ideally from `helix.common.channel.create_channel`, with
`helix.security.client.bearer_interceptors`) or a RegistryService stub.
"""

from __future__ import annotations

from helix.agents.informer import AgentChange, AgentInformer, ChangesOverflow, ChangeStream
from helix.agents.presence import AgentPresence
from helix.agents.registration import AgentRegistration

__all__ = [
    "AgentChange",
    "AgentInformer",
    "AgentPresence",
    "AgentRegistration",
    "ChangeStream",
    "ChangesOverflow",
]
