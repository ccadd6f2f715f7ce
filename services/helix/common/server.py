"""Build a Helix gRPC server separately from running it.

`create_server(config, services)` returns a bound, not yet started `HelixServer` and its
real port. Every server gets the standard health service (SERVING for `""` and each
service it serves; placeholders are left out; `""` NOT_SERVING while a concurrency pool
is full), reflection, the declared interceptor chain with its concurrency pools and
stream deadlines, explicit message-size limits and keepalive. `HelixServer.shutdown()`
drains: health goes NOT_SERVING and health watches end, shutdown hooks run, new calls are
refused and in-flight calls get the grace period to finish. It is safe to call twice, and
SIGTERM or SIGINT trigger it in `serve()`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from helix.common import logs, tracing
from helix.common.config import DataDirConfig, DataDirLock, ServerConfig, run_loop
from helix.common.health import NOT_SERVING, SERVING, HealthService
from helix.common.health import SERVICE_NAME as HEALTH_SERVICE
from helix.common.interceptors import CallChain, ChainedServer, Stage, default_stages
from helix.common.limits import CallPools, call_limit_stages
from helix.common.limits import register_metrics as register_limit_metrics
from helix.common.metrics import MetricsExporter, RpcMetrics, add_runtime_metrics
from helix.common.reflection import reflection_servicer
from helix.common.streams import StreamSettings

if TYPE_CHECKING:
    from helix.security.setup import Security

log = logging.getLogger("helix.server")

ShutdownHook = Callable[[], Awaitable[None]]


class BindError(OSError):
    """The server could not listen on the configured address."""


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to serve: its full name, how to add its handlers to a server, and
    hooks: `on_start` before the server accepts calls, `on_shutdown` when the drain begins
    (end long-lived streams; services in reverse order), `on_stopped` once no call is in
    flight (close stores)."""

    name: str
    add_to_server: Callable[[grpc.aio.Server], None]
    on_shutdown: Sequence[ShutdownHook] = field(default=())
    on_start: Sequence[ShutdownHook] = field(default=())
    on_stopped: Sequence[ShutdownHook] = field(default=())
    # Registers the service's own metrics on the server's Prometheus registry.
    add_metrics: Callable[[CollectorRegistry], None] | None = None
    # A contract served as UNIMPLEMENTED (`helix.common.services.placeholder`): reflection
    # lists it, health does not (it is not served, so it is never reported SERVING).
    placeholder: bool = False
    # Called once the service is SERVING with a function to report its health from then on
    # (False: NOT_SERVING, say while the store it depends on is unreachable).
    health_source: Callable[[Callable[[bool], None]], None] | None = None


def server_options(config: ServerConfig) -> list[tuple[str, Any]]:
    """Channel arguments for a server: message limits, keepalive, no port sharing."""
    return [
        ("grpc.max_receive_message_length", int(config.max_receive_message_bytes)),
        ("grpc.max_send_message_length", int(config.max_send_message_bytes)),
        ("grpc.keepalive_time_ms", int(config.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            int(config.keepalive_min_time * 1000),
        ),
        ("grpc.http2.max_ping_strikes", 2),
        # Room for an oversized token to reach the auth stage and get a clear answer.
        ("grpc.max_metadata_size", 32 * 1024),
        # Two servers on one port would silently split traffic; fail to bind instead.
        ("grpc.so_reuseport", 0),
    ]


class Attachment(Protocol):
    """Something served beside the gRPC services, in the same process and loop."""

    async def start(self) -> object: ...

    async def stop(self) -> None: ...


class HelixServer:
    """A bound gRPC server with its health service, metrics and drain logic."""

    def __init__(
        self,
        config: ServerConfig,
        server: grpc.aio.Server,
        health_servicer: HealthService,
        metrics: RpcMetrics,
        services: Sequence[ServiceBinding],
        port: int,
    ) -> None:
        self.config = config
        self.grpc_server = server
        self.health = health_servicer
        self.metrics = metrics
        self.services = tuple(services)
        self.port = port
        self.metrics_port: int | None = None
        self._exporter: MetricsExporter | None = None
        self.security: Security | None = None
        # The lock of the data dir the server's state lives in, released when it stops.
        self.data_dir_lock: DataDirLock | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._force_stop: asyncio.Future[None] | None = None
        self._stopped = asyncio.Event()
        self._saturated = False
        self._saturation_update: asyncio.Task[None] | None = None
        self._health_updates: list[asyncio.Future[None]] = []
        # Started once gRPC serves, stopped first when the drain begins (the dashboard).
        self.attachments: list[Attachment] = []

    @property
    def address(self) -> str:
        """`host:port` with the real port (useful when the configured port was 0)."""
        host = self.config.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Start /metrics (if configured), then serving, and mark `""` and every service
        served (not the placeholders) SERVING.

        The exporter starts first so that a busy metrics port fails the start before any
        call has been accepted.
        """
        if self.config.metrics_port is not None:
            address = f"{self.config.metrics_host}:{self.config.metrics_port}"
            try:
                self._exporter = await asyncio.to_thread(
                    MetricsExporter,
                    self.metrics.registry,
                    self.config.metrics_host,
                    self.config.metrics_port,
                )
            except OSError as exc:
                raise BindError(f"cannot serve /metrics on {address}: {exc.strerror}") from None
            self.metrics_port = self._exporter.port
        started: list[ServiceBinding] = []
        try:
            for service in self.services:
                for hook in service.on_start:
                    await hook()
                started.append(service)
        except BaseException:
            await self._run_stopped(started)
            if self._exporter is not None:
                await asyncio.to_thread(self._exporter.close)
                self._exporter = None
            self._release_data_dir()
            raise
        await self.grpc_server.start()
        if self.security is not None:
            self.security.start()
        await self._mark_serving()
        await self._start_attachments()

    async def _start_attachments(self) -> None:
        """Start the attachments; if one fails, stop everything started and re-raise."""
        for attachment in self.attachments:
            try:
                await attachment.start()
            except BaseException:
                # A full drain (it stops every attachment, runs the services' shutdown and
                # stop hooks, releases the data dir) and never a second one later.
                await self.shutdown(0)
                raise

    async def _mark_serving(self) -> None:
        await self.health.set("", SERVING)
        for service in self.services:
            if not service.placeholder:
                await self.health.set(service.name, SERVING)
                if service.health_source is not None:
                    service.health_source(functools.partial(self._report_health, service.name))

    def _report_health(self, name: str, serving: bool) -> None:
        """A service's own report of its health (ignored once the drain has begun)."""
        self._health_updates.append(
            asyncio.ensure_future(self.health.set(name, SERVING if serving else NOT_SERVING))
        )
        self._health_updates = [u for u in self._health_updates if not u.done()]

    def report_saturation(self, saturated: bool) -> None:
        """The overall status `""` is NOT_SERVING while a concurrency pool is full and
        SERVING again once it has drained (the pools call this on each change, with
        hysteresis); the services' own statuses are left alone, and the drain's
        NOT_SERVING always wins (health ignores changes once it has begun)."""
        self._saturated = saturated
        if self._saturation_update is None or self._saturation_update.done():
            self._saturation_update = asyncio.ensure_future(self._apply_saturation())

    async def _apply_saturation(self) -> None:
        applied = None
        while applied is not self._saturated:
            applied = self._saturated
            status = NOT_SERVING if applied else SERVING
            await self.health.set("", status)

    def shutdown(self, grace: float | None = None) -> asyncio.Task[None]:
        """Begin the drain (once) and return the task that finishes it; await it to wait."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._drain(grace))
        return self._shutdown

    def _on_signal(self) -> None:
        """First SIGTERM/SIGINT drains; a second one stops at once (Ctrl-C twice)."""
        if self._shutdown is None:
            self.shutdown()
            return
        log.warning("second signal: stopping without waiting for in-flight calls")
        self._force_stop = asyncio.ensure_future(self.grpc_server.stop(0))

    async def _drain(self, grace: float | None) -> None:
        grace = self.config.grace_period if grace is None else grace
        deadline = asyncio.get_running_loop().time() + grace
        log.info("draining", extra={"grace_seconds": grace})
        try:
            await self.health.enter_graceful_shutdown()
            for attachment in reversed(self.attachments):
                try:
                    await asyncio.wait_for(attachment.stop(), timeout=max(0.5, grace))
                except Exception:
                    log.exception("stopping %s failed", attachment)
            # Last served, first drained: a service that calls an earlier one (the embedded
            # orchestrator and agents call the registry) lets go of it while it still
            # answers, as a stack unwinds.
            for service in reversed(self.services):
                for hook in service.on_shutdown:
                    # Hooks get at least a moment, even with no grace: ending streams with
                    # a proper status is quick and better than a cut connection.
                    remaining = max(0.1, deadline - asyncio.get_running_loop().time())
                    try:
                        await asyncio.wait_for(hook(), timeout=remaining)
                    except TimeoutError:
                        log.warning("shutdown hook of %s ran out of grace time", service.name)
                    except Exception:
                        log.exception("shutdown hook of %s failed", service.name)
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            await self.grpc_server.stop(remaining)
            await self._run_stopped(self.services)
        finally:
            if self.security is not None:
                await self.security.stop()
            if self._exporter is not None:
                await asyncio.to_thread(self._exporter.close)
                self._exporter = None
            self._release_data_dir()
            self._stopped.set()
            log.info("stopped")

    def _release_data_dir(self) -> None:
        if self.data_dir_lock is not None:
            self.data_dir_lock.release()

    async def _run_stopped(self, services: Sequence[ServiceBinding]) -> None:
        for service in services:
            for hook in service.on_stopped:
                try:
                    await hook()
                except Exception:
                    log.exception("stop hook of %s failed", service.name)

    async def wait_for_termination(self) -> None:
        """Return when the server has stopped."""
        await self._stopped.wait()

    async def serve(self, on_ready: Callable[[HelixServer], None] | None = None) -> None:
        """Start, then serve until SIGTERM or SIGINT, then drain; cancelling also drains."""
        loop = asyncio.get_running_loop()
        await self.start()
        # SIGINT only where it is not ignored: a process started with it ignored (as
        # `helix cluster up` starts its processes, to stop them in order itself) keeps it so.
        signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal)
        try:
            if on_ready is not None:
                on_ready(self)
            await self.wait_for_termination()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            # Drain even when cancelled; the shield keeps a cancel from cutting the drain short.
            await asyncio.shield(self.shutdown())


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured files (mutual TLS with a client CA), or None."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    try:
        chain = config.tls_cert_file.read_bytes()
        key = config.tls_key_file.read_bytes()
        client_ca = config.tls_client_ca_file.read_bytes() if config.tls_client_ca_file else None
    except OSError as exc:
        raise BindError(f"cannot read TLS files: {exc}") from None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def create_server(
    config: ServerConfig,
    services: Sequence[ServiceBinding],
    *,
    security: Security | None,
    extra_stages: Sequence[Stage] = (),
) -> tuple[HelixServer, int]:
    """Build and bind a server for `services`; returns it (not started) and its real port.

    `security` adds authentication, scopes and rate limits to the chain; it is required so
    that serving without it is always an explicit `security=None` in code (tests of the
    runtime, the benchmark's baseline), never a setting. `extra_stages` run last. A server
    whose state lives in a data dir (`DataDirConfig`) holds the dir's lock until it stops
    (`DataDirBusy` when another server has it).
    """
    lock = DataDirLock.claim(config.data_dir) if isinstance(config, DataDirConfig) else None
    try:
        helix_server, port = _build_server(config, services, security, extra_stages)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    helix_server.data_dir_lock = lock
    return helix_server, port


def _build_server(
    config: ServerConfig,
    services: Sequence[ServiceBinding],
    security: Security | None,
    extra_stages: Sequence[Stage],
) -> tuple[HelixServer, int]:
    metrics = RpcMetrics()
    add_runtime_metrics(metrics.registry)
    # The concurrency limits are counters of the chain (helix.common.limits), not grpc.aio's
    # own limiter, which costs a fifth of a unary call (see docs/decisions.md).
    server = grpc.aio.server(options=server_options(config))
    pools = CallPools(config.max_concurrent_rpcs, config.max_concurrent_streams)
    streams = StreamSettings(config.stream_first_message_timeout, config.stream_write_timeout)
    register_limit_metrics(pools, streams.stats, metrics.registry)
    stages = [
        *tracing.server_stages(),  # first: its span covers the whole call (none when off)
        *default_stages(metrics, pools),
        *(security.stages(metrics.registry) if security is not None else ()),
        # The share needs the principal; without security every caller is "anonymous".
        *(call_limit_stages(pools, config.concurrent_share_per_principal) if security else ()),
        *extra_stages,
    ]
    # Every handler, health and reflection included, is added through the chain.
    chained: Any = ChainedServer(server, CallChain(stages, streams))
    for service in services:
        service.add_to_server(chained)
        if service.add_metrics is not None:
            service.add_metrics(metrics.registry)
    health_servicer = HealthService()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, chained)
    names = [s.name for s in services]
    # Reflection from protoc's descriptor set, comments included (helix.common.reflection).
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection_servicer([*names, HEALTH_SERVICE, reflection.SERVICE_NAME]), chained
    )
    credentials = server_credentials(config)
    try:
        if credentials is None:
            port = server.add_insecure_port(config.address)
        else:
            port = server.add_secure_port(config.address, credentials)
    except RuntimeError as exc:
        raise BindError(f"cannot listen on {config.address}: {exc}") from None
    if port == 0:
        raise BindError(f"cannot listen on {config.address}")
    helix_server = HelixServer(config, server, health_servicer, metrics, services, port)
    pools.on_saturation = helix_server.report_saturation
    helix_server.security = security
    return helix_server, port


def run_server_process(
    config: ServerConfig,
    build: Callable[[], HelixServer],
    on_ready: Callable[[HelixServer], None],
) -> int:
    """The body of a `helix` command that serves: build the server on the configured event
    loop, serve until SIGTERM or SIGINT, drain, and flush the logs. Returns the exit status.

    Blocking setup (config, logging, key files) belongs before this call.
    """

    async def serve() -> None:
        await build().serve(on_ready=on_ready)

    try:
        run_loop(serve(), config.event_loop)
    finally:
        logs.shutdown()
    return 0
