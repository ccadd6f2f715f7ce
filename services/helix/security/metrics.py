"""Security metrics: why calls were refused. Labels are fixed reason codes, never tokens."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass
class SecurityMetrics:
    """Counters of refused calls, on a server's registry."""

    registry: CollectorRegistry

    def __post_init__(self) -> None:
        self.auth_refused = Counter(
            "helix_auth_refused_total",
            "Calls refused by authentication or authorisation, by ErrorInfo reason.",
            ("reason",),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "helix_rate_limited_total",
            "Calls refused by the per-principal rate limiter, by rate class.",
            ("rate_class",),
            registry=self.registry,
        )
