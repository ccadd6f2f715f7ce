"""Security metrics: why calls were refused, and key reloads. Labels are fixed reason codes
and rate classes, never tokens or principals.

The convention of every Helix service: the code that counts keeps plain counters (here
`SecurityStats`, updated on the event loop), and a Collector reads them when /metrics is
scraped, so counting costs a dict update and no lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass
class SecurityStats:
    """What the auth and rate-limit stages refused, and how key reloads went."""

    auth_refused: Counter[str] = field(default_factory=Counter)  # by ErrorInfo reason
    rate_limited: Counter[str] = field(default_factory=Counter)  # by rate class
    key_reloads: int = 0
    key_reload_failures: int = 0


class _SecurityCollector(Collector):
    def __init__(self, stats: SecurityStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        refused = CounterMetricFamily(
            "helix_auth_refused",
            "Calls refused by authentication or authorisation, by ErrorInfo reason.",
            labels=("reason",),
        )
        for reason, count in sorted(stats.auth_refused.items()):
            refused.add_metric((reason,), count)
        yield refused
        limited = CounterMetricFamily(
            "helix_rate_limited",
            "Calls refused by the per-principal rate limiter, by rate class.",
            labels=("rate_class",),
        )
        for rate_class, count in sorted(stats.rate_limited.items()):
            limited.add_metric((rate_class,), count)
        yield limited
        yield CounterMetricFamily(
            "helix_auth_key_reloads",
            "Times changed key files were read and their keys put in use.",
            value=stats.key_reloads,
        )
        yield CounterMetricFamily(
            "helix_auth_key_reload_failures",
            "Times changed key files did not load (the keys in use were kept).",
            value=stats.key_reload_failures,
        )


def register_metrics(stats: SecurityStats, registry: CollectorRegistry) -> None:
    """Export `stats` on a server's metrics registry."""
    registry.register(_SecurityCollector(stats))
