"""Generator metrics: chunks and candidates bred, Generate streams started, chunks pending."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from helix.generator.stats import GeneratorStats


class _StatsCollector(Collector):
    """Reads the counters at scrape time: breeding pays nothing per chunk for the export."""

    def __init__(self, stats: GeneratorStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield CounterMetricFamily(
            "helix_generator_chunks", "Chunks of candidates bred.", value=stats.chunks
        )
        yield CounterMetricFamily(
            "helix_generator_candidates",
            "Candidates bred (elites included).",
            value=stats.candidates,
        )
        yield CounterMetricFamily(
            "helix_generator_streams", "Generate streams started.", value=stats.streams
        )
        yield GaugeMetricFamily(
            "helix_generator_chunks_pending",
            "Chunks queued for or being bred in the breeding threads.",
            value=stats.pending,
        )


def register_metrics(stats: GeneratorStats, metrics: CollectorRegistry) -> None:
    """Export a generator's `stats` on a server's metrics registry."""
    metrics.register(_StatsCollector(stats))
