"""Concurrency limits of the call chain: two pools, a share per principal, saturation.

- `CallPools` (before auth, so an overloaded server refuses without verifying tokens):
  unary calls and streams (server, client, bidi) are counted in separate pools,
  `max_concurrent_rpcs` and `max_concurrent_streams`, so long-lived streams can never
  take the slots of short calls. One more gets RESOURCE_EXHAUSTED (reason
  TOO_MANY_CONCURRENT_CALLS, RetryInfo). Only unary health checks are exempt: probes must
  answer when the server is busy. Health Watch and reflection are streams like any other.
- `PrincipalShareStage` (after auth, which names the principal): one principal holds at
  most a share of each pool (TOO_MANY_CALLS_FROM_PRINCIPAL, QuotaFailure, RetryInfo).
  Calls without a token (health Watch, reflection) all count as "anonymous", so they are
  bounded too.
- Saturation: when a pool is full the server reports it (`on_saturation(True)`: health
  NOT_SERVING), and again once it has room (`False`), without flapping: the unary pool
  (calls end within moments) once it has drained by a quarter; the stream pool (streams
  last) as soon as it has a free slot, but no sooner than `STREAM_HOLD` after it was
  last full. Long-lived streams that keep the stream pool nearly full (hundreds of
  watches) never hold the server NOT_SERVING while it can take another.

Per unary call this costs a dict lookup and a few integer operations per stage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from helix.common import errors, logs, reasons
from helix.common.interceptors import EXEMPT_FROM_LIMITS, Call, MethodInfo, Stage
from helix.common.streams import StreamStats

UNARY, STREAM = "unary", "stream"
# The least time the stream pool is reported full once it was (no flapping at the limit).
STREAM_HOLD = 1.0


class Pool:
    """The calls of one kind in flight, their limit, and who holds them."""

    __slots__ = (
        "clear_at",
        "full",
        "full_at",
        "held",
        "hold",
        "in_flight",
        "limit",
        "name",
        "refused",
        "retry_after",
        "share",
    )

    def __init__(self, name: str, limit: int, retry_after: float, hold: float = 0.0) -> None:
        self.name = name
        self.limit = limit
        self.retry_after = retry_after  # the RetryInfo hint of a refusal
        self.in_flight = 0
        self.full = False
        self.full_at = 0.0  # when it was last at its limit (monotonic)
        self.hold = hold
        # No hold: full until drained by a quarter, and by at least two calls (no
        # flapping). With a hold: full until a slot is free and `hold` has passed.
        self.clear_at = max(0, min(limit * 3 // 4, limit - 2)) if not hold else limit - 1
        self.share = limit  # set by PrincipalShareStage
        self.held: dict[str, int] = {}  # principal -> calls in flight (only those > 0)
        self.refused: dict[str, int] = {
            reasons.TOO_MANY_CONCURRENT_CALLS: 0,
            reasons.TOO_MANY_CALLS_FROM_PRINCIPAL: 0,
        }


class CallPools(Stage):
    """Caps unary calls and streams in flight, separately (see the module doc).

    This replaces grpc.aio's `maximum_concurrent_rpcs`, which measured 50 to 120 µs of
    server CPU per call on this project's 2-core machines (`benchmarks/bench_chain.py`),
    a fifth of a bare unary call; counters do the same job for well under a microsecond.
    """

    def __init__(self, unary: int, streams: int, stream_hold: float = STREAM_HOLD) -> None:
        # Unary calls end within moments; a stream's slot frees when some stream ends.
        self.unary = Pool(UNARY, unary, retry_after=0.05)
        self.streams = Pool(STREAM, streams, retry_after=1.0, hold=stream_hold)
        self.saturated = False
        self.on_saturation: Callable[[bool], None] | None = None
        self._pool_of: dict[str, Pool | None] = {}
        self._recheck: asyncio.TimerHandle | None = None

    def __iter__(self) -> Iterator[Pool]:
        return iter((self.unary, self.streams))

    def pool_for(self, info: MethodInfo) -> Pool | None:
        """The pool a method's calls count in, or None when they are exempt."""
        if not (info.request_streaming or info.response_streaming):
            # Probes must answer when the server is busy: that is when they matter.
            return None if info.service in EXEMPT_FROM_LIMITS else self.unary
        return self.streams

    def bind(self, info: MethodInfo) -> None:
        self._pool_of[info.path] = self.pool_for(info)

    def before(self, call: Call) -> None:
        pool = self._pool_of[call.info.path]
        if pool is None:
            return
        if pool.in_flight >= pool.limit:
            pool.refused[reasons.TOO_MANY_CONCURRENT_CALLS] += 1
            kind = "unary calls" if pool is self.unary else "streams"
            raise errors.ResourceExhausted(
                f"the server is at its limit of {pool.limit} concurrent {kind}",
                retry_after=pool.retry_after,
                reason=reasons.TOO_MANY_CONCURRENT_CALLS,
                metadata={"limit": str(pool.limit), "pool": pool.name},
            )
        pool.in_flight += 1
        if pool.in_flight >= pool.limit:
            pool.full_at = time.monotonic() if pool.hold else 0.0
            if not pool.full:
                pool.full = True
                self._changed()

    def after(self, call: Call, code: grpc.StatusCode) -> None:
        pool = self._pool_of[call.info.path]
        if pool is not None:
            pool.in_flight -= 1
            if pool.full and pool.in_flight <= pool.clear_at:
                self._clear(pool)

    def _clear(self, pool: Pool) -> None:
        wait = pool.full_at + pool.hold - time.monotonic() if pool.hold else 0.0
        if wait <= 0:
            pool.full = False
            self._changed()
        elif self._recheck is None:
            # Nothing else may end meanwhile: look again when the hold is over.
            self._recheck = asyncio.get_running_loop().call_later(wait, self._look_again, pool)

    def _look_again(self, pool: Pool) -> None:
        self._recheck = None
        if pool.full and pool.in_flight <= pool.clear_at:
            self._clear(pool)

    def _changed(self) -> None:
        saturated = self.unary.full or self.streams.full
        if saturated is not self.saturated:
            self.saturated = saturated
            if self.on_saturation is not None:
                self.on_saturation(saturated)


class PrincipalShareStage(Stage):
    """At most `share` of each pool per principal; runs after the auth stage."""

    def __init__(self, pools: CallPools, share: float) -> None:
        self._pools = pools
        for pool in pools:
            pool.share = max(1, int(pool.limit * share))
        self._pool_of: dict[str, Pool | None] = {}

    def bind(self, info: MethodInfo) -> None:
        self._pool_of[info.path] = self._pools.pool_for(info)

    def before(self, call: Call) -> None:
        pool = self._pool_of[call.info.path]
        if pool is None:
            return
        principal = logs.principal_var.get()
        count = pool.held.get(principal, 0)
        if count >= pool.share:
            pool.refused[reasons.TOO_MANY_CALLS_FROM_PRINCIPAL] += 1
            kind = "unary calls" if pool is self._pools.unary else "streams"
            raise errors.ResourceExhausted(
                f"{principal!r} already holds its share of {pool.share} concurrent {kind}",
                retry_after=pool.retry_after,
                quota_subject=f"principal:{principal}/{pool.name}",
                reason=reasons.TOO_MANY_CALLS_FROM_PRINCIPAL,
                metadata={"limit": str(pool.share), "pool": pool.name},
            )
        pool.held[principal] = count + 1
        call.principal = principal

    def after(self, call: Call, code: grpc.StatusCode) -> None:
        pool = self._pool_of[call.info.path]
        if pool is None:
            return
        # The map holds only principals with calls in flight, so it is bounded by the pool.
        count = pool.held[call.principal] - 1
        if count:
            pool.held[call.principal] = count
        else:
            del pool.held[call.principal]


class _CallLimitCollector(Collector):
    def __init__(self, pools: CallPools, streams: StreamStats) -> None:
        self._pools = pools
        self._streams = streams

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "helix_calls_in_flight", "Calls being served, by pool.", labels=("pool",)
        )
        limit = GaugeMetricFamily(
            "helix_call_limit", "Calls each pool serves at once.", labels=("pool",)
        )
        refused = CounterMetricFamily(
            "helix_calls_refused",
            "Calls refused because a pool, or the caller's share of it, was full.",
            labels=("pool", "reason"),
        )
        for pool in self._pools:
            in_flight.add_metric((pool.name,), pool.in_flight)
            limit.add_metric((pool.name,), pool.limit)
            for reason, count in list(pool.refused.items()):
                refused.add_metric((pool.name, reason), count)
        yield from (in_flight, limit, refused)
        yield GaugeMetricFamily(
            "helix_server_saturated",
            "1 while a pool is full (health NOT_SERVING), until it has room again.",
            value=int(self._pools.saturated),
        )
        yield CounterMetricFamily(
            "helix_streams_first_message_timeouts",
            "Client or bidi streams ended for sending no first message in time.",
            value=self._streams.first_message_timeouts,
        )
        yield CounterMetricFamily(
            "helix_streams_stalled",
            "Response streams cancelled because the client read nothing in time.",
            value=self._streams.stalled,
        )


def register_metrics(pools: CallPools, streams: StreamStats, registry: CollectorRegistry) -> None:
    """Export the pools and stream deadlines on `registry`."""
    registry.register(_CallLimitCollector(pools, streams))


def call_limit_stages(pools: CallPools, share: float) -> list[Stage]:
    """The per-principal share stage to follow auth, or none when the share is the whole
    pool (every principal may then fill it, as the pool alone allows)."""
    return [] if share >= 1 else [PrincipalShareStage(pools, share)]
