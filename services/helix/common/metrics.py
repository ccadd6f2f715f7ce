"""Prometheus RPC metrics with the conventional `grpc_server_*` names, and their exporter.

Each server owns a `CollectorRegistry`, so several servers in one process (tests, the
embedded suite) never collide. Domain metrics live next to the code they measure and
register themselves on the same registry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

LABELS = ("grpc_type", "grpc_service", "grpc_method")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class RpcMetrics:
    """The server-side RPC metrics of one server."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            LABELS,
            registry=self.registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            (*LABELS, "grpc_code"),
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            LABELS,
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total",
            "Stream messages received from clients.",
            LABELS,
            registry=self.registry,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Stream messages sent to clients.",
            LABELS,
            registry=self.registry,
        )


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
