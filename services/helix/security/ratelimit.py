"""Token buckets per principal and rate class, in a bounded LRU map (pure; no I/O).

Each (principal, class) pair has a bucket holding up to `burst` tokens, refilled at `rate`
per second; a call takes one token. A principal that floods exhausts only its own bucket,
so everyone else keeps being served. The map keeps at most `max_entries` buckets: the
least recently used is evicted first (an evicted principal comes back with a full bucket,
which is the price of bounded memory).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """`rate` tokens per second, at most `burst` saved up."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not self.rate > 0 or not self.burst >= 1:
            raise ValueError(f"a rate needs rate > 0 and burst >= 1, not {self}")


class TokenBucketLimiter:
    """Decides whether a principal may make one more call of a class now."""

    def __init__(self, rates: Mapping[str, Rate], max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._rates = dict(rates)
        self._max_entries = max_entries
        # (principal, class) -> [tokens, last refill time]
        self._buckets: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, principal: str, rate_class: str, now: float) -> float:
        """Take one token; returns 0.0 if allowed, else seconds until a token is available.

        A class without a configured rate is unlimited.
        """
        rate = self._rates.get(rate_class)
        if rate is None:
            return 0.0
        key = (principal, rate_class)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [rate.burst, now]
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_entries:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[0] = min(rate.burst, bucket[0] + elapsed * rate.rate)
                bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / rate.rate
