"""Registry metrics: agents by kind and health, revision, history and idempotency bytes,
watchers, expiries, limit refusals, batch sizes.

One collector reads the engine at scrape time: gauges from the committed state, counters
and the batch-size histogram from the engine's plain `RegistryStats`. Nothing is updated
per change on the write path, and the engine never imports prometheus_client.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import helix.v1.registry_pb2 as registry_pb2
from helix.registry.engine import Registry
from helix.registry.stats import Distribution

_KIND = registry_pb2.AgentKind.Name
_HEALTH = registry_pb2.AgentHealth.Name


def _histogram(name: str, documentation: str, distribution: Distribution) -> Metric:
    """A histogram family from per-bucket counts (Prometheus wants them cumulative)."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(distribution.bounds, distribution.counts, strict=False):
        running += count
        buckets.append((repr(float(bound)), running))  # le="1.0", as Histogram writes it
    buckets.append(("+Inf", running + distribution.counts[-1]))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=distribution.total)


class RegistryCollector(Collector):
    """Every registry metric, read from a `Registry` at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        registry = self._registry
        state = registry.state
        stats = registry.stats
        agents = GaugeMetricFamily(
            "helix_registry_agents",
            "Registered agents by kind and health.",
            labels=("kind", "health"),
        )
        counts: dict[tuple[int, int], int] = {}
        for agent in state.agents.values():
            key = (agent.kind, agent.health)
            counts[key] = counts.get(key, 0) + 1
        for (kind, health), count in sorted(counts.items()):
            agents.add_metric((_KIND(kind), _HEALTH(health)), count)  # type: ignore[arg-type]
        yield agents
        yield GaugeMetricFamily(
            "helix_registry_revision", "The registry's current revision.", value=state.revision
        )
        yield GaugeMetricFamily(
            "helix_registry_compact_revision",
            "The oldest revision still in the event history.",
            value=state.first_available,
        )
        yield GaugeMetricFamily(
            "helix_registry_history_bytes",
            "Bytes of agents (new and previous states) the kept history holds "
            "(bounded by --registry-history-bytes).",
            value=state.history_size,
        )
        yield GaugeMetricFamily(
            "helix_registry_request_records_bytes",
            "Bytes of RegisterAgent answers kept for retries (bounded by "
            "--registry-request-bytes).",
            value=state.requests_size,
        )
        yield GaugeMetricFamily(
            "helix_registry_watchers", "Watch streams being served.", value=len(registry.hub)
        )
        yield GaugeMetricFamily(
            "helix_registry_leases",
            "Leases held (one per live agent).",
            value=len(registry.replica.leases if registry.replica else registry.leases),
        )
        yield GaugeMetricFamily(
            "helix_registry_queued_writes",
            "Mutations waiting for the registry's single writer.",
            value=registry.queued_writes,
        )
        yield CounterMetricFamily(
            "helix_registry_expired_total",
            "Agents removed because their lease lapsed.",
            value=stats.expired,
        )
        yield CounterMetricFamily(
            "helix_registry_watchers_cut_off_total",
            "Watches cancelled for falling too far behind.",
            value=stats.watchers_cut_off,
        )
        refused = CounterMetricFamily(
            "helix_registry_refused",
            "Writes refused for a limit of the registry (agents, per-principal quota, agent "
            "size, write queue), by ErrorInfo reason.",
            labels=("reason",),
        )
        for reason, count in sorted(stats.refused.items()):
            refused.add_metric((reason,), count)
        yield refused
        yield _histogram(
            "helix_registry_write_batch_size",
            "Changes committed together by one group commit.",
            stats.batch_sizes,
        )


def register_metrics(registry: Registry, metrics: CollectorRegistry) -> None:
    """Export `registry`'s metrics on a server's metrics registry."""
    metrics.register(RegistryCollector(registry))
