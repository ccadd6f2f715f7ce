"""Registry metrics: agents by kind and health, revision, watchers, expiries, batch sizes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

import helix.v1.registry_pb2 as registry_pb2
from helix.registry.engine import Registry

_KIND = registry_pb2.AgentKind.Name
_HEALTH = registry_pb2.AgentHealth.Name


class _StateCollector(Collector):
    """Reads the engine's committed state at scrape time (nothing to update per change)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._registry.state
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
            "helix_registry_watchers", "Watch streams being served.", value=len(self._registry.hub)
        )
        yield GaugeMetricFamily(
            "helix_registry_leases",
            "Leases held (one per live agent).",
            value=len(self._registry.leases),
        )


def register_metrics(registry: Registry, metrics: CollectorRegistry) -> None:
    """Export `registry`'s metrics on a server's metrics registry."""
    metrics.register(_StateCollector(registry))
    expired = Counter(
        "helix_registry_expired_total",
        "Agents removed because their lease lapsed.",
        registry=metrics,
    )
    batches = Histogram(
        "helix_registry_write_batch_size",
        "Changes committed together by one group commit.",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        registry=metrics,
    )
    cut_off = Counter(
        "helix_registry_watchers_cut_off_total",
        "Watches cancelled for falling too far behind.",
        registry=metrics,
    )
    registry.on_expired = expired.inc
    registry.on_batch = batches.observe
    registry.hub.on_cut_off = cut_off.inc
