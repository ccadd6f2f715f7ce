"""Generator metrics: chunks and candidates bred, Generate streams started, chunks pending,
the DNAs advertised in the registry (and those left out), what the DNA library's cache
saves (files read, cache hits, shared reads, evictions), the library's files that are not
served and the links out of it that were refused."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from helix.generator.library import LibraryStats
from helix.generator.stats import GeneratorStats


class _StatsCollector(Collector):
    """Reads the counters at scrape time: breeding pays nothing per chunk for the export."""

    def __init__(self, stats: GeneratorStats, library: LibraryStats) -> None:
        self._stats = stats
        self._library = library

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
        yield GaugeMetricFamily(
            "helix_generator_advertised_dnas",
            "DNA names this agent registered with.",
            value=stats.advertised,
        )
        yield GaugeMetricFamily(
            "helix_generator_advertised_dnas_left_out",
            "Valid DNAs served but left out of the registration (it is bounded).",
            value=stats.left_out,
        )
        library = self._library
        for name, text, value in (
            ("reads", "DNA files read from disk.", library.reads),
            ("hits", "DNA requests the library's cache answered.", library.hits),
            ("shared_reads", "DNA requests that joined a read under way.", library.shared),
            ("evictions", "DNA documents evicted from the library's cache.", library.evictions),
            (
                "outside_refused",
                "DNA files refused as links to outside the library directory.",
                library.outside,
            ),
        ):
            yield CounterMetricFamily(f"helix_generator_library_{name}", text, value=value)
        yield GaugeMetricFamily(
            "helix_generator_library_skipped_files",
            "Files of the DNA library directory that are not served (as last listed).",
            value=library.skipped,
        )


def register_metrics(
    stats: GeneratorStats, library: LibraryStats, metrics: CollectorRegistry
) -> None:
    """Export a generator's `stats` and its library's on a server's metrics registry."""
    metrics.register(_StatsCollector(stats, library))
