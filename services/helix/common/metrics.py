"""Prometheus RPC metrics with the conventional `grpc_server_*` names, and their exporter.

Each server owns a `CollectorRegistry`, so several servers in one process (tests, the
embedded suite) never collide. Domain metrics live next to the code they measure and
register themselves on the same registry. Every registry also gets the standard
`process_*` and `python_*` collectors and `helix_build_info` (`add_runtime_metrics`).

No family exports `_created` series: Helix's own collectors (grpc_server_*, helix_*) keep
plain counters with no creation time, so prometheus_client's metric classes are told to
write none either (`disable_created_metrics`, for the whole process), and one scrape
follows one convention whichever way a metric is made.
"""

from __future__ import annotations

import platform
import threading
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from helix.common.version import version

disable_created_metrics()  # type: ignore[no-untyped-call]

LABELS = ("grpc_type", "grpc_service", "grpc_method")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# prometheus_client's spelling of these bounds ("1.0", not "1"): queries on `le` keep working.
_OK = grpc.StatusCode.OK
_BUCKET_NAMES = (*(repr(float(b)) for b in _BUCKETS), "+Inf")


class MethodStats:
    """The RPC counters of one method: plain numbers updated on the event loop.

    prometheus_client's own metric children take a lock on every update, which was a
    measurable share of a heartbeat's server CPU; these are updated only from the event
    loop thread and read (as copies) by the exporter thread when scraped.
    """

    __slots__ = ("buckets", "handled", "labels", "ok", "received", "seconds", "sent", "started")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = 0
        self.received = 0
        self.sent = 0
        self.ok = 0
        self.handled: dict[grpc.StatusCode, int] = dict.fromkeys(grpc.StatusCode, 0)  # not OK
        self.buckets = [0] * (len(_BUCKETS) + 1)  # per bucket (not cumulative); last: +Inf
        self.seconds = 0.0

    def finished(self, code: grpc.StatusCode, seconds: float) -> None:
        """Count a call that ended with `code` after `seconds`."""
        if code is _OK:  # Enum hashing runs in Python: skip it for the common case
            self.ok += 1
        else:
            self.handled[code] += 1
        self.buckets[bisect_left(_BUCKETS, seconds)] += 1
        self.seconds += seconds


@dataclass
class RpcMetrics:
    """The server-side RPC metrics of one server: `grpc_server_started_total`,
    `grpc_server_handled_total`, `grpc_server_handling_seconds`,
    `grpc_server_msg_received_total` and `grpc_server_msg_sent_total`, labelled by
    grpc_type, grpc_service and grpc_method (and grpc_code)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        # Bounded by the served API: methods are added when handlers are registered.
        self._methods: dict[tuple[str, str, str], MethodStats] = {}
        self.registry.register(_RpcCollector(self._methods))

    def method(self, grpc_type: str, service: str, method: str) -> MethodStats:
        """The stats of one method (created on first use)."""
        labels = (grpc_type, service, method)
        stats = self._methods.get(labels)
        if stats is None:
            stats = self._methods[labels] = MethodStats(labels)
        return stats


class _RpcCollector(Collector):
    def __init__(self, methods: dict[tuple[str, str, str], MethodStats]) -> None:
        self._methods = methods

    def collect(self) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "grpc_server_started", "RPCs started on the server.", labels=LABELS
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their status.",
            labels=(*LABELS, "grpc_code"),
        )
        seconds = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            labels=LABELS,
        )
        received = CounterMetricFamily(
            "grpc_server_msg_received", "Stream messages received from clients.", labels=LABELS
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent", "Stream messages sent to clients.", labels=LABELS
        )
        for stats in list(self._methods.values()):
            labels = list(stats.labels)
            started.add_metric(labels, stats.started)
            for code, count in list(stats.handled.items()):
                handled.add_metric([*labels, code.name], stats.ok if code is _OK else count)
            cumulative, buckets = 0, []
            for name, count in zip(_BUCKET_NAMES, list(stats.buckets), strict=True):
                cumulative += count
                buckets.append((name, cumulative))
            seconds.add_metric(labels, buckets, stats.seconds)
            received.add_metric(labels, stats.received)
            sent.add_metric(labels, stats.sent)
        yield from (started, handled, seconds, received, sent)


def add_runtime_metrics(registry: CollectorRegistry) -> None:
    """Add the process's standard series to `registry`: `process_*` (CPU, memory, file
    descriptors, start time; Linux), `python_info`, `python_gc_*`, and
    `helix_build_info{version, python, grpc}` (always 1), which dashboards join on to
    tell releases apart."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(_BuildInfoCollector())


class _BuildInfoCollector(Collector):
    def __init__(self) -> None:
        self._labels = [version(), platform.python_version(), grpc.__version__]

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "helix_build_info",
            "Always 1; its labels name the Helix, Python and grpcio versions serving.",
            labels=("version", "python", "grpc"),
        )
        info.add_metric(self._labels, 1)
        yield info


class MetricsExporter:
    """Serves `/metrics` for one registry over HTTP on a background thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        """Stop serving; safe to call twice."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
