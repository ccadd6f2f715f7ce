"""Request validation for RegistryService: one pure check per RPC.

Each `check_*_request` returns every violation of the rules registry.proto states, as
`FieldViolation`s with proto field paths, and never raises. Output-only fields are ignored,
as the contract says. A requested lease TTL is never rejected for its length: the
registry clamps it into [min_ttl_seconds, max_ttl_seconds] (see `granted_ttl_seconds`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.duration_pb2 import Duration

import helix.v1.registry_pb2 as registry_pb2
from helix.common import rules
from helix.common.errors import FieldViolation
from helix.common.pages import PageLimits
from helix.common.validation import (
    RESOURCE_ID_PATTERN,
    Violations,
    check_duration,
    check_endpoint,
    check_enum,
    check_etag,
    check_field_mask,
    check_no_unknown_fields,
    check_page,
    check_range,
    check_repeated_len,
    check_request_id,
    check_resource_id,
    check_resource_name,
    check_string,
    duration_is_valid,
    duration_seconds,
    has_unknown_fields,
    index,
    join,
    mask_paths,
)
from helix.registry.labels import (
    MAX_LABEL_SELECTOR_LEN,
    MAX_LABELS,
    check_label_selector,
    check_labels,
)

STRATEGY_NAME_PATTERN = "[a-z][a-z0-9_-]{0,62}"
# The client-settable fields of an Agent, in proto order; each may be named in update_mask.
AGENT_FIELDS = ("endpoint", "labels", "health", "load", "capacity", "ttl", "generator", "oracle")
UPDATABLE_PATHS = frozenset(AGENT_FIELDS)

_KIND = registry_pb2.AgentKind.DESCRIPTOR
_HEALTH = registry_pb2.AgentHealth.DESCRIPTOR
_HEALTHS = frozenset(_HEALTH.values_by_number)
_AGENT_NAME = re.compile(f"agents/{RESOURCE_ID_PATTERN}")


@dataclass(frozen=True, slots=True)
class RegistryLimits(PageLimits):
    """Caps on RegistryService requests a deployment may tune (defaults: registry.proto's).

    The TTL bounds are not validation limits: a requested TTL outside them is clamped.
    """

    max_capacity: int = 100_000
    max_labels: int = MAX_LABELS
    max_strategies: int = 16
    max_dnas: int = 10_000
    max_oracles: int = 1000
    max_label_selector_len: int = MAX_LABEL_SELECTOR_LEN
    default_ttl_seconds: float = 10.0
    min_ttl_seconds: float = 2.0
    max_ttl_seconds: float = 300.0
    max_agents: int = 100_000
    max_agents_per_principal: int = 1000
    max_agent_bytes: int = 65_536

    def __post_init__(self) -> None:
        PageLimits.__post_init__(self)  # (zero-argument super() fails in slots dataclasses)
        if self.max_capacity < 1:
            raise ValueError("max_capacity must be at least 1")
        if not 0 < self.min_ttl_seconds <= self.default_ttl_seconds <= self.max_ttl_seconds:
            raise ValueError("need 0 < min_ttl_seconds <= default_ttl_seconds <= max_ttl_seconds")


DEFAULT_LIMITS = RegistryLimits()


def granted_ttl_seconds(ttl: Duration | None, limits: RegistryLimits = DEFAULT_LIMITS) -> float:
    """The lease TTL the registry grants for a requested one: unset means the default,
    anything else is clamped into [min_ttl_seconds, max_ttl_seconds]."""
    if ttl is None or not duration_is_valid(ttl):
        return limits.default_ttl_seconds
    return min(max(duration_seconds(ttl), limits.min_ttl_seconds), limits.max_ttl_seconds)


# --- parts of an Agent --------------------------------------------------------------------


def _check_load(load: registry_pb2.AgentLoad, path: str) -> Violations:
    return check_range(load.utilization, join(path, "utilization"), 0, 1)


def _check_generator_details(
    details: registry_pb2.GeneratorDetails, path: str, limits: RegistryLimits
) -> Violations:
    strategies_path = join(path, "strategies")
    found = check_repeated_len(details.strategies, strategies_path, limits.max_strategies)
    for i, strategy in enumerate(details.strategies[: limits.max_strategies]):
        found += check_string(
            strategy,
            index(strategies_path, i),
            required=True,
            max_len=63,
            pattern=STRATEGY_NAME_PATTERN,
        )
    dnas_path = join(path, "dnas")
    found += check_repeated_len(details.dnas, dnas_path, limits.max_dnas)
    for i, dna in enumerate(details.dnas[: limits.max_dnas]):
        found += check_resource_name(dna, "dnas", index(dnas_path, i))
    return found


def _check_oracle_details(
    details: registry_pb2.OracleDetails, path: str, limits: RegistryLimits
) -> Violations:
    oracles_path = join(path, "oracles")
    found = check_repeated_len(details.oracles, oracles_path, limits.max_oracles)
    for i, oracle in enumerate(details.oracles[: limits.max_oracles]):
        found += check_resource_name(oracle, "oracles", index(oracles_path, i))
    return found


def _check_agent_field(
    agent: registry_pb2.Agent, field: str, path: str, limits: RegistryLimits, *, update: bool
) -> Violations:
    """One client-settable field of an Agent, as RegisterAgent and UpdateAgent read it.

    Health UNSPECIFIED means SERVING on register but is invalid in an update.
    """
    field_path = join(path, field)
    message: Any = agent  # field names come from AGENT_FIELDS
    if field in _OPTIONAL_MESSAGES and not message.HasField(field):
        return []  # unset is fine: the default TTL, no load reported, no details
    if field == "health":
        return check_enum(agent.health, _HEALTH, field_path, required=update)
    return _FIELD_CHECKS[field](agent, field_path, limits)


_OPTIONAL_MESSAGES = frozenset({"load", "ttl", "generator", "oracle"})
# The checks of the other client-settable fields of an Agent, by field name.
_FIELD_CHECKS: dict[str, Callable[[registry_pb2.Agent, str, RegistryLimits], Violations]] = {
    "endpoint": lambda agent, path, limits: check_endpoint(agent.endpoint, path),
    "labels": lambda agent, path, limits: check_labels(agent.labels, path, limits.max_labels),
    "load": lambda agent, path, limits: _check_load(agent.load, path),
    "capacity": lambda agent, path, limits: check_range(
        agent.capacity, path, 1, limits.max_capacity
    ),
    # Clamped into the server's bounds, never rejected for its length.
    "ttl": lambda agent, path, limits: check_duration(agent.ttl, path),
    "generator": lambda agent, path, limits: _check_generator_details(
        agent.generator, path, limits
    ),
    "oracle": lambda agent, path, limits: _check_oracle_details(agent.oracle, path, limits),
}


def _check_details_match_kind(agent: registry_pb2.Agent, path: str) -> Violations:
    details = agent.WhichOneof("details")
    wanted = {
        "generator": registry_pb2.AGENT_KIND_GENERATOR,
        "oracle": registry_pb2.AGENT_KIND_ORACLE,
    }
    if details is None or agent.kind == wanted[details]:
        return []
    kind_name = _KIND.values_by_number[wanted[details]].name
    return [
        FieldViolation(
            join(path, details), f"must only be set when kind is {kind_name}", rules.WRONG_KIND
        )
    ]


# --- RegistryService requests -------------------------------------------------------------


def check_register_agent_request(
    request: registry_pb2.RegisterAgentRequest, limits: RegistryLimits = DEFAULT_LIMITS
) -> Violations:
    """agent_id optional id; request_id required; agent with kind, endpoint, capacity set,
    valid labels, health, load, ttl and details matching kind (name, output-only ignored)."""
    found = check_no_unknown_fields(request)
    found += check_resource_id(request.agent_id, "agent_id", required=False)
    found += check_request_id(request.request_id, "request_id")
    if not request.HasField("agent"):
        return [*found, FieldViolation("agent", "must be set", rules.REQUIRED)]
    agent = request.agent
    found += check_enum(agent.kind, _KIND, "agent.kind", required=True)
    for field in AGENT_FIELDS:
        found += _check_agent_field(agent, field, "agent", limits, update=False)
    found += _check_details_match_kind(agent, "agent")
    return found


def check_heartbeat_request(
    request: registry_pb2.HeartbeatRequest, limits: RegistryLimits = DEFAULT_LIMITS
) -> Violations:
    """name "agents/{agent}"; epoch >= 1; health a known value; load utilization in [0, 1]."""
    # The registry's hottest call: a clean heartbeat is accepted without building paths
    # (tests/test_validation.py proves this fast accept equal to the full checks).
    if (
        request.epoch >= 1
        and request.health in _HEALTHS
        and (not request.HasField("load") or 0 <= request.load.utilization <= 1)
        and _AGENT_NAME.fullmatch(request.name) is not None
        and not has_unknown_fields(request)
    ):
        return []
    return heartbeat_violations(request)


def heartbeat_violations(request: registry_pb2.HeartbeatRequest) -> Violations:
    """The full checks of `check_heartbeat_request`, each violation with its field path."""
    found = check_no_unknown_fields(request)
    found += check_resource_name(request.name, "agents", "name")
    found += check_range(request.epoch, "epoch", 1)
    found += check_enum(request.health, _HEALTH, "health")
    if request.HasField("load"):
        found += _check_load(request.load, "load")
    return found


def check_update_agent_request(
    request: registry_pb2.UpdateAgentRequest, limits: RegistryLimits = DEFAULT_LIMITS
) -> Violations:
    """agent.name required; etag at most 64; update_mask non-empty with updatable paths
    (or "*"); each masked field valid (health not UNSPECIFIED, endpoint required)."""
    found = check_no_unknown_fields(request)
    found += check_field_mask(request.update_mask, UPDATABLE_PATHS, "update_mask")
    if not request.HasField("agent"):
        return [*found, FieldViolation("agent", "must be set", rules.REQUIRED)]
    agent = request.agent
    found += check_resource_name(agent.name, "agents", "agent.name")
    found += check_etag(agent.etag, "agent.etag")
    selected = mask_paths(request.update_mask, UPDATABLE_PATHS)
    for field in (f for f in AGENT_FIELDS if f in selected):
        found += _check_agent_field(agent, field, "agent", limits, update=True)
    return found


def check_deregister_agent_request(
    request: registry_pb2.DeregisterAgentRequest, limits: RegistryLimits = DEFAULT_LIMITS
) -> Violations:
    """name "agents/{agent}"; etag at most 64 characters."""
    found = check_no_unknown_fields(request)
    found += check_resource_name(request.name, "agents", "name")
    return found + check_etag(request.etag, "etag")


def check_get_agent_request(
    request: registry_pb2.GetAgentRequest, limits: RegistryLimits = DEFAULT_LIMITS
) -> Violations:
    """name "agents/{agent}"."""
    return check_no_unknown_fields(request) + check_resource_name(request.name, "agents", "name")


def check_list_agents_request(
    request: registry_pb2.ListAgentsRequest, limits: RegistryLimits = DEFAULT_LIMITS
) -> Violations:
    """page_size not negative; page_token <= 1024; kind and health known values (UNSPECIFIED
    matches all); label_selector a valid selector of at most 1024 characters."""
    found = check_no_unknown_fields(request)
    found += check_page(request.page_size, request.page_token)
    found += check_enum(request.kind, _KIND, "kind")
    found += check_label_selector(
        request.label_selector, "label_selector", limits.max_label_selector_len
    )
    return found + check_enum(request.health, _HEALTH, "health")


def check_watch_agents_request(
    request: registry_pb2.WatchAgentsRequest, limits: RegistryLimits = DEFAULT_LIMITS
) -> Violations:
    """start_revision not negative; kind a known value; label_selector valid, <= 1024."""
    found = check_no_unknown_fields(request)
    found += check_range(request.start_revision, "start_revision", 0)
    found += check_enum(request.kind, _KIND, "kind")
    return found + check_label_selector(
        request.label_selector, "label_selector", limits.max_label_selector_len
    )


CHECKS: dict[str, Callable[[Any], list[FieldViolation]]] = {
    "RegisterAgent": check_register_agent_request,
    "Heartbeat": check_heartbeat_request,
    "UpdateAgent": check_update_agent_request,
    "DeregisterAgent": check_deregister_agent_request,
    "GetAgent": check_get_agent_request,
    "ListAgents": check_list_agents_request,
    "WatchAgents": check_watch_agents_request,
}
