"""The registry's plain counters, read by `registry/metrics.py` at scrape time.

The engine and the watch hub only bump integers here; they never import a metrics
library, so the write path pays an addition per event rather than a metrics call, and
the cores stay testable without an exporter. Turning these into Prometheus families is
the collector's job.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Changes per group commit; powers of two up to the default `max_batch` and just beyond.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(slots=True)
class Distribution:
    """Observations counted per bucket: `counts[i]` holds values in (bounds[i-1],
    bounds[i]] and the last count those above every bound (Prometheus' `le` buckets,
    not yet cumulative)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(slots=True)
class RegistryStats:
    """What the registry has done since it started (counters only ever grow)."""

    expired: int = 0
    watchers_cut_off: int = 0
    # Writes refused for a limit of the registry, by ErrorInfo reason (`LIMIT_REASONS`).
    refused: dict[str, int] = field(default_factory=dict)
    batch_sizes: Distribution = field(default_factory=lambda: Distribution(BATCH_SIZE_BUCKETS))
