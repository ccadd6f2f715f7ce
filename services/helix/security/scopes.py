"""The one table of which scope each RPC requires, and each scope's rate-limit class.

Every RPC of `helix.v1` is listed here; a method missing from the table is denied to
everyone, admins included, so a new RPC is closed until someone decides who may call it.
Health and reflection are open (no token needed). `admin` holds every listed scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from helix.common.interceptors import EXEMPT_FROM_LIMITS
from helix.security.principal import ADMIN_SCOPE

AGENTS_READ = "agents.read"
AGENTS_WRITE = "agents.write"
DNA_READ = "dna.read"
GENERATE = "generate"
ORACLES_READ = "oracles.read"
VERIFY = "verify"
RUNS_READ = "runs.read"
RUNS_WRITE = "runs.write"

ALL_SCOPES = (
    AGENTS_READ,
    AGENTS_WRITE,
    DNA_READ,
    GENERATE,
    ORACLES_READ,
    VERIFY,
    RUNS_READ,
    RUNS_WRITE,
    ADMIN_SCOPE,
)

_REGISTRY = "/helix.v1.RegistryService/"
_GENERATOR = "/helix.v1.GeneratorService/"
_ORACLE = "/helix.v1.OracleService/"
_ORCHESTRATOR = "/helix.v1.OrchestratorService/"

METHOD_SCOPES: Mapping[str, str] = MappingProxyType(
    {
        _REGISTRY + "RegisterAgent": AGENTS_WRITE,
        _REGISTRY + "Heartbeat": AGENTS_WRITE,
        _REGISTRY + "UpdateAgent": AGENTS_WRITE,
        _REGISTRY + "DeregisterAgent": AGENTS_WRITE,
        _REGISTRY + "GetAgent": AGENTS_READ,
        _REGISTRY + "ListAgents": AGENTS_READ,
        _REGISTRY + "WatchAgents": AGENTS_READ,
        _GENERATOR + "ListDnas": DNA_READ,
        _GENERATOR + "GetDna": DNA_READ,
        _GENERATOR + "ValidateDna": DNA_READ,
        _GENERATOR + "Generate": GENERATE,
        _ORACLE + "ListOracles": ORACLES_READ,
        _ORACLE + "GetOracle": ORACLES_READ,
        _ORACLE + "Verify": VERIFY,
        _ORACLE + "VerifyStream": VERIFY,
        _ORCHESTRATOR + "CreateRun": RUNS_WRITE,
        _ORCHESTRATOR + "GetRun": RUNS_READ,
        _ORCHESTRATOR + "ListRuns": RUNS_READ,
        _ORCHESTRATOR + "CancelRun": RUNS_WRITE,
        _ORCHESTRATOR + "WatchRun": RUNS_READ,
        _ORCHESTRATOR + "ListRunCandidates": RUNS_READ,
    }
)

# Health and reflection: the same services the concurrency limit exempts.
OPEN_SERVICES = EXEMPT_FROM_LIMITS

# Rate-limit classes: reads are cheap, writes touch the store, data-plane calls
# (Generate, Verify) carry whole batches.
READ, WRITE, DATA = "read", "write", "data"
SCOPE_CLASSES: Mapping[str, str] = MappingProxyType(
    {
        AGENTS_READ: READ,
        DNA_READ: READ,
        ORACLES_READ: READ,
        RUNS_READ: READ,
        AGENTS_WRITE: WRITE,
        RUNS_WRITE: WRITE,
        ADMIN_SCOPE: WRITE,
        GENERATE: DATA,
        VERIFY: DATA,
    }
)


def is_open(path: str) -> bool:
    """Health and reflection need no token."""
    return path.lstrip("/").rpartition("/")[0] in OPEN_SERVICES


def required_scope(path: str, extra: Mapping[str, str] | None = None) -> str | None:
    """The scope `path` needs, or None when it is in no table (and so denied)."""
    scope = METHOD_SCOPES.get(path)
    if scope is None and extra is not None:
        scope = extra.get(path)
    return scope
