"""What `helix loadtest` measures, in bounded memory, and how it reports it.

Every RPC the load test makes is recorded here under its method (`Service/Method`): its
status code and, for a call that succeeded, its latency. Latencies go into a log-bucketed
histogram of fixed size per method (`LatencyHistogram`: 16 buckets per doubling, from
1 µs to about 12 days, so a quantile is within 2.2 % of the true one), so a load test of
any length holds the same few kilobytes. Methods are the fixed set the load test calls
and status codes the 17 of gRPC: every map here is bounded by construction.

Pure: no grpc, no I/O; the command (`helix.cli.loadtest`) does the calling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table

from helix.cli.run_output import format_count, format_rate

OK = "OK"
_MIN_SECONDS = 1e-6  # the lower edge of bucket 0
_PER_DOUBLING = 16  # buckets per doubling: each one 4.4 % wide
_BUCKETS = _PER_DOUBLING * 40  # up to 1e-6 * 2**40 s (~12.7 days); longer ones go in the last
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


class LatencyHistogram:
    """Durations in log-spaced buckets of fixed number: bounded memory, quantiles within
    half a bucket (±2.2 %), clamped to the smallest and largest durations seen."""

    __slots__ = ("_counts", "count", "max", "min", "total")

    def __init__(self) -> None:
        self._counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    @staticmethod
    def _bucket(seconds: float) -> int:
        if seconds <= _MIN_SECONDS:
            return 0
        return min(int(math.log2(seconds / _MIN_SECONDS) * _PER_DOUBLING), _BUCKETS - 1)

    def record(self, seconds: float) -> None:
        """Count one duration (negative or non-finite ones are refused: a bug upstream)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a duration must be finite and not negative, not {seconds!r}")
        self._counts[self._bucket(seconds)] += 1
        self.count += 1
        self.total += seconds
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float | None:
        """The q-quantile in seconds (the geometric middle of its bucket; the smallest and
        largest exactly), None if empty. Monotonic in q: p50 <= p95 <= p99 <= max."""
        if not 0 <= q <= 1:
            raise ValueError(f"a quantile is within 0..1, not {q!r}")
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        if q == 0:
            return self.min
        if rank >= self.count:
            return self.max
        seen = 0
        for index, count in enumerate(self._counts):
            seen += count
            if seen >= rank:
                middle = _MIN_SECONDS * 2 ** ((index + 0.5) / _PER_DOUBLING)
                return min(max(middle, self.min), self.max)
        return self.max  # not reached: the counts add up to self.count

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class MethodStats:
    """One method's calls: outcomes by status code, latencies of those that succeeded,
    and messages received (streams)."""

    codes: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    messages: int = 0

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    @property
    def errors(self) -> dict[str, int]:
        return {code: n for code, n in sorted(self.codes.items()) if code != OK}


@dataclass
class RunTally:
    """The runs of a load test: how many started and how each ended."""

    started: int = 0
    states: dict[str, int] = field(default_factory=dict)  # terminal state -> runs
    not_followed: int = 0  # created, but their end not seen (an RPC error)
    timed_out: int = 0  # still going after --run-timeout: cancelled (not in `states`)
    create_failed: int = 0  # CreateRun refused or failed
    evaluations: int = 0  # of every run whose end was seen, cancelled and timed out included
    seconds: LatencyHistogram = field(default_factory=LatencyHistogram)  # create -> end

    def ended(self, state: str, evaluations: int, seconds: float) -> None:
        self.states[state] = self.states.get(state, 0) + 1
        self.evaluations += evaluations
        self.seconds.record(seconds)


@dataclass
class AgentTally:
    """The simulated agents: registered, heartbeats sent, leases lost, deregistered."""

    simulated: int = 0
    registered: int = 0
    registrations_failed: int = 0
    heartbeats: int = 0
    leases_lost: int = 0  # heartbeat NOT_FOUND: registered again
    deregistered: int = 0
    left_registered: list[str] = field(default_factory=list)  # deregistration failed


class LoadStats:
    """Everything one load test measured (module docstring)."""

    def __init__(self) -> None:
        self.methods: dict[str, MethodStats] = {}
        self.runs = RunTally()
        self.agents = AgentTally()

    def _method(self, method: str) -> MethodStats:
        found = self.methods.get(method)
        if found is None:
            found = self.methods[method] = MethodStats()
        return found

    def record(self, method: str, seconds: float, code: str = OK) -> None:
        """One call of `method` ended with `code` (a gRPC status code name) after
        `seconds`; the latency counts only for calls that succeeded."""
        stats = self._method(method)
        stats.codes[code] = stats.codes.get(code, 0) + 1
        if code == OK:
            stats.latency.record(seconds)

    def received(self, method: str, messages: int = 1) -> None:
        """Messages received on a stream of `method`."""
        self._method(method).messages += messages

    def succeeded(self) -> int:
        """Calls that succeeded, over every method."""
        return sum(stats.codes.get(OK, 0) for stats in self.methods.values())

    def report(
        self,
        settings: Mapping[str, Any],
        stopped_by: str,
        *,
        load_seconds: float,
        checks_seconds: float = 0.0,
        drain_seconds: float = 0.0,
    ) -> dict[str, Any]:
        """The JSON document of `helix loadtest --json` (keys documented in docs/loadtest.md).
        Rates are over `load_seconds`, the load from its start to the stop; the checks
        before it and the drain after it (cancelling runs, deregistering agents) are
        reported apart."""
        per_second = 1.0 / load_seconds if load_seconds > 0 else 0.0
        elapsed = checks_seconds + load_seconds + drain_seconds
        methods = {
            name: _method_report(stats, per_second) for name, stats in sorted(self.methods.items())
        }
        calls = sum(stats.calls for stats in self.methods.values())
        errors = sum(sum(stats.errors.values()) for stats in self.methods.values())
        runs = self.runs
        agents = self.agents
        return {
            "settings": dict(settings),
            "elapsed_seconds": round(elapsed, 6),
            "checks_seconds": round(checks_seconds, 6),
            "load_seconds": round(load_seconds, 6),
            "drain_seconds": round(drain_seconds, 6),
            "stopped_by": stopped_by,
            "totals": {
                "calls": calls,
                "ok": calls - errors,
                "errors": errors,
                "calls_per_second": round(calls * per_second, 3),
            },
            "methods": methods,
            "runs": {
                "started": runs.started,
                "succeeded": runs.states.get("SUCCEEDED", 0),
                "failed": runs.states.get("FAILED", 0),
                "cancelled": runs.states.get("CANCELLED", 0),
                "not_followed": runs.not_followed,
                "timed_out": runs.timed_out,
                "create_failed": runs.create_failed,
                "evaluations": runs.evaluations,
                "evaluations_per_second": round(runs.evaluations * per_second, 3),
                "seconds": _quantiles(runs.seconds, 1.0),
            },
            "agents": {
                "simulated": agents.simulated,
                "registered": agents.registered,
                "registrations_failed": agents.registrations_failed,
                "heartbeats": agents.heartbeats,
                "leases_lost": agents.leases_lost,
                "deregistered": agents.deregistered,
                "left_registered": sorted(agents.left_registered),
            },
        }


def _quantiles(histogram: LatencyHistogram, scale: float) -> dict[str, float | None]:
    def scaled(value: float | None) -> float | None:
        return None if value is None else round(value * scale, 3)

    found: dict[str, float | None] = {key: scaled(histogram.quantile(q)) for key, q in QUANTILES}
    found["mean"] = scaled(histogram.mean())
    found["max"] = scaled(histogram.max if histogram.count else None)
    return found


def _method_report(stats: MethodStats, per_second: float) -> dict[str, Any]:
    calls = stats.calls
    return {
        "calls": calls,
        "ok": stats.codes.get(OK, 0),
        "errors": stats.errors,
        "calls_per_second": round(calls * per_second, 3),
        "latency_ms": _quantiles(stats.latency, 1000.0),
        "messages": stats.messages,
    }


# --- the tables ---------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def methods_table(report: Mapping[str, Any]) -> Table:
    """One row per method: calls, calls/s (over the load), latency quantiles (ms) and
    errors by code."""
    table = Table(title="RPCs", title_justify="left", box=None, pad_edge=False)
    table.add_column("METHOD")
    for heading in ("CALLS", "CALLS/S", "P50 MS", "P95 MS", "P99 MS", "MAX MS"):
        table.add_column(heading, justify="right")
    table.add_column("ERRORS")
    for name, method in report["methods"].items():
        latency = method["latency_ms"]
        errors = ", ".join(f"{code} {n:,}" for code, n in method["errors"].items())
        table.add_row(
            name,
            format_count(method["calls"]),
            format_rate(method["calls_per_second"]),
            *(_ms(latency[key]) for key in ("p50", "p95", "p99", "max")),
            errors or "-",
        )
    totals = report["totals"]
    table.add_row(
        "all",
        format_count(totals["calls"]),
        format_rate(totals["calls_per_second"]),
        "",
        "",
        "",
        "",
        format_count(totals["errors"]) if totals["errors"] else "-",
        style="bold",
    )
    return table


def summary_table(report: Mapping[str, Any]) -> Table:
    """The load test as a whole: target, time, runs and agents."""
    settings = report["settings"]
    runs = report["runs"]
    agents = report["agents"]
    seconds = runs["seconds"]
    table = Table(title="helix loadtest", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("address", settings["address"]),
        (
            "elapsed",
            f"{report['elapsed_seconds']:.1f}s: checks {report['checks_seconds']:.1f}s, "
            f"load {report['load_seconds']:.1f}s (stopped by {report['stopped_by']}; the "
            f"rates are over it), drain {report['drain_seconds']:.1f}s",
        ),
        (
            "runs",
            f"{runs['started']:,} started: {runs['succeeded']:,} succeeded, "
            f"{runs['failed']:,} failed, {runs['cancelled']:,} cancelled"
            + (
                f", {runs['timed_out']:,} timed out (cancelled after --run-timeout)"
                if runs["timed_out"]
                else ""
            ),
        ),
        ("evaluations", format_count(runs["evaluations"])),
        ("evaluations/s", format_rate(runs["evaluations_per_second"])),
        (
            "run time p50/p95/p99",
            " / ".join("-" if seconds[k] is None else f"{seconds[k]:.2f}s" for k in _KEYS),
        ),
        (
            "agents",
            f"{agents['registered']:,} of {agents['simulated']:,} registered, "
            f"{agents['heartbeats']:,} heartbeats, {agents['leases_lost']:,} leases lost, "
            f"{agents['deregistered']:,} deregistered",
        ),
    ]
    if runs["not_followed"] or runs["create_failed"]:
        rows.append(
            (
                "runs not seen through",
                f"{runs['create_failed']:,} not created, {runs['not_followed']:,} not followed",
            )
        )
    if agents["left_registered"]:
        rows.append(("left registered", some_names(agents["left_registered"])))
    for what, value in rows:
        table.add_row(what, value)
    return table


_KEYS = ("p50", "p95", "p99")


def some_names(names: list[str], shown: int = 5) -> str:
    """The first `shown` names, and how many more (a list of 1000 agents helps nobody)."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more:,} more" if more > 0 else "")


def report_tables(report: Mapping[str, Any]) -> Group:
    """The summary, then the per-method table, for a console."""
    return Group(summary_table(report), "", methods_table(report))
