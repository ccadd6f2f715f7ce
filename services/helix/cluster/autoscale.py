"""How many oracle agent processes the backlog calls for: the autoscaler's policy (pure,
clock given) and the reading of the orchestrator's backlog from its /metrics.

The signal is the orchestrator's backlog ratio: candidates bred and handed to verification
without a verdict yet (on an agent, or queued for room on one), per unit of capacity the
live oracle agents advertise (the same figures a Kubernetes HorizontalPodAutoscaler reads
from `helix_orchestrator_backlog` and `helix_orchestrator_oracle_capacity`). The policy is
the HPA's, for a process count:

- **up**: when the mean ratio over the last few samples is at or above `up_ratio`, ask
  for `ceil(workers * ratio / up_ratio)` (at least one more, at most `maximum`) — a burst
  reaches the maximum in one step rather than one process per cooldown — then wait
  `up_cooldown` before the next scale-up (new processes take a moment to register, and
  the capacity they add shows only then);
- **down** (hysteresis): only when every sample over the last `down_window` (and since
  the last change) is below `down_ratio`, to `ceil(workers * peak / up_ratio)` — what the
  window's peak needed — at least `minimum`. Between the two ratios nothing changes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

BACKLOG = "helix_orchestrator_backlog"
CAPACITY = "helix_orchestrator_oracle_capacity"
_UP_SAMPLES = 3  # the scale-up signal: the mean of this many latest samples
_MAX_SAMPLES = 100_000  # bounds the window however small the interval


@dataclass(frozen=True)
class Policy:
    minimum: int
    maximum: int
    up_ratio: float = 1.0
    down_ratio: float = 0.25
    up_cooldown: float = 5.0
    down_window: float = 30.0


@dataclass(frozen=True)
class Decision:
    """One change of the wanted process count, and what it was decided on."""

    at: float
    workers: int
    wanted: int
    backlog: int
    capacity: int
    ratio: float  # the figure the decision used (the mean for up, the peak for down)

    def describe(self) -> str:
        way = "up" if self.wanted > self.workers else "down"
        return (
            f"scale {way}: oracles {self.workers} -> {self.wanted} "
            f"(backlog {self.backlog}, capacity {self.capacity}, ratio {self.ratio:.2f})"
        )


def ratio(backlog: int, capacity: int) -> float:
    """Backlog per unit of live capacity; with none live, the backlog itself."""
    return backlog / capacity if capacity > 0 else float(backlog)


class Autoscaler:
    """Feed it one sample per interval (`observe`); it returns a `Decision` when the number
    of oracle processes should change."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._samples: deque[tuple[float, float]] = deque(maxlen=_MAX_SAMPLES)
        self._last_up = -math.inf
        self._last_change: float | None = None  # the first sample's time until a change

    def observe(self, now: float, backlog: int, capacity: int, workers: int) -> Decision | None:
        policy = self.policy
        if self._last_change is None:
            self._last_change = now
        self._samples.append((now, ratio(backlog, capacity)))
        while self._samples and self._samples[0][0] < now - policy.down_window:
            self._samples.popleft()
        if workers < policy.minimum or workers > policy.maximum:  # out of bounds: mend
            wanted = min(max(workers, policy.minimum), policy.maximum)
            return self._decide(now, workers, wanted, backlog, capacity, ratio(backlog, capacity))
        recent = [r for _, r in list(self._samples)[-_UP_SAMPLES:]]
        mean = sum(recent) / len(recent)
        if mean >= policy.up_ratio and workers < policy.maximum:
            if now - self._last_up < policy.up_cooldown:
                return None
            needed = math.ceil(workers * mean / policy.up_ratio)
            wanted = min(policy.maximum, max(workers + 1, needed))
            self._last_up = now
            return self._decide(now, workers, wanted, backlog, capacity, mean)
        if workers > policy.minimum and now - self._last_change >= policy.down_window:
            window = [r for t, r in self._samples if t >= self._last_change]
            peak = max(window)
            if peak < policy.down_ratio:
                wanted = max(policy.minimum, math.ceil(workers * peak / policy.up_ratio))
                if wanted < workers:
                    return self._decide(now, workers, wanted, backlog, capacity, peak)
        return None

    def _decide(
        self, now: float, workers: int, wanted: int, backlog: int, capacity: int, figure: float
    ) -> Decision | None:
        if wanted == workers:
            return None
        self._last_change = now
        return Decision(now, workers, wanted, backlog, capacity, figure)


def read_backlog(text: str) -> tuple[int, int]:
    """(backlog, live oracle capacity) from the orchestrator's /metrics text; ValueError
    when either is missing."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in (BACKLOG, CAPACITY) and family.samples:
            found[family.name] = family.samples[0].value
    missing = {BACKLOG, CAPACITY} - found.keys()
    if missing:
        raise ValueError(f"the orchestrator's metrics have no {', '.join(sorted(missing))}")
    return int(found[BACKLOG]), int(found[CAPACITY])
