"""Orchestrator metrics: runs by state (the unfinished ones it drives) and runs ended,
generations and evaluations, generations split across generators, the backlog of
candidates awaiting a verdict and the live oracle capacity to answer them (the ratio is
what an autoscaler of oracle agents follows), watchers. Read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.orchestrator.agents import accepting

if TYPE_CHECKING:
    from helix.orchestrator.runs import Orchestrator

_UNFINISHED = (orchestrator_pb2.RUN_STATE_PENDING, orchestrator_pb2.RUN_STATE_RUNNING)
_ENDED = (
    orchestrator_pb2.RUN_STATE_SUCCEEDED,
    orchestrator_pb2.RUN_STATE_FAILED,
    orchestrator_pb2.RUN_STATE_CANCELLED,
)


def _state(state: int) -> str:
    return orchestrator_pb2.RunState.Name(state).removeprefix("RUN_STATE_").lower()  # type: ignore[arg-type]


class _Collector(Collector):
    def __init__(self, engine: Orchestrator) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        runs = GaugeMetricFamily(
            "helix_orchestrator_runs", "Unfinished runs this orchestrator drives.", labels=["state"]
        )
        counts = engine.unfinished_by_state()
        for state in _UNFINISHED:
            runs.add_metric([_state(state)], counts.get(state, 0))
        yield runs
        ended = CounterMetricFamily(
            "helix_orchestrator_runs_ended", "Runs that ended, by final state.", labels=["state"]
        )
        for state in _ENDED:
            ended.add_metric([_state(state)], engine.ended.get(state, 0))
        yield ended
        yield CounterMetricFamily(
            "helix_orchestrator_generations", "Generations completed.", value=engine.generations
        )
        yield CounterMetricFamily(
            "helix_orchestrator_evaluations",
            "Candidates verified for runs (duplicates not counted).",
            value=engine.evaluations,
        )
        yield CounterMetricFamily(
            "helix_orchestrator_split_generations",
            "Generations bred in ranges across several generators at once.",
            value=engine.breeder.splits,
        )
        yield GaugeMetricFamily(
            "helix_orchestrator_backlog",
            "Candidates handed to verification that have no verdict yet (all runs).",
            value=engine.backlog,
        )
        try:
            agents = engine.pool.informer.agents()
        except RuntimeError:  # not started
            agents = []
        capacity = sum(
            agent.capacity
            for agent in agents
            if agent.kind == registry_pb2.AGENT_KIND_ORACLE and accepting(agent)
        )
        yield GaugeMetricFamily(
            "helix_orchestrator_oracle_capacity",
            "Capacity (concurrent candidates) the live oracle agents advertise.",
            value=capacity,
        )
        yield GaugeMetricFamily(
            "helix_orchestrator_backlog_ratio",
            "Backlog per unit of live oracle capacity (the backlog itself while no oracle "
            "is live): above 1, candidates wait for a free slot; what autoscalers follow.",
            value=backlog_ratio(engine.backlog, capacity),
        )
        yield GaugeMetricFamily(
            "helix_orchestrator_watchers", "WatchRun streams open.", value=engine.watchers.count
        )


def backlog_ratio(backlog: int, capacity: int) -> float:
    """Candidates awaiting a verdict per unit of live oracle capacity; with no capacity,
    the backlog itself (so any waiting candidate reads as pressure to scale up)."""
    return backlog / capacity if capacity > 0 else float(backlog)


def register_metrics(engine: Orchestrator, metrics: CollectorRegistry) -> None:
    """Export an orchestrator's figures on a server's metrics registry."""
    metrics.register(_Collector(engine))
