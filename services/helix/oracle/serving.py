"""OracleService on a server: configuration loading and reloading, reports, cache,
registration as an oracle agent, and metrics.

`oracle_service(settings, ...).binding` is the ServiceBinding. On start it reads the
configuration (with aiofiles; checked in a thread, since builtins read their instance
files) and starts the oracles — an invalid configuration at start fails the start with
every violation named. Then it checks the file every `oracle_config_poll` for changes: a
valid new version is applied (unchanged oracles keep running), an invalid one is logged
with its violations, counted (`helix_oracle_config_reload_failures`), shown as
`helix_oracle_config_valid 0`, and the old configuration keeps serving.

Health in the registry: DEGRADED while an oracle's workers keep failing or the report
directory cannot be written; the load is the candidates held.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import aiofiles
import aiofiles.os
import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.agents.presence import AgentPresence
from helix.common import errors, rules
from helix.common.aio import cancel_and_wait
from helix.common.config import ConfigError
from helix.common.errors import FieldViolation
from helix.common.interceptors import add_encoding_servicer
from helix.common.server import ServiceBinding
from helix.oracle.cache import VerdictCache
from helix.oracle.config import ConfigCheck, builtin_config, parse_config, read_config
from helix.oracle.host import OracleHost
from helix.oracle.hosted import PoolOracle
from helix.oracle.reports import ReportWriter
from helix.oracle.service import OracleServicer
from helix.oracle.settings import OracleSettings

log = logging.getLogger("helix.oracle")
_REPORT_INTERVAL = 1.0  # seconds between health/load updates to the registry
MAX_AGENT_CAPACITY = 100_000  # the registry's bound on Agent.capacity


def builtin_data_dir() -> Path:
    """The folder of the instance files shipped with Helix (berlin52.tsp)."""
    return Path(str(resources.files("helix.oracle") / "data"))


async def read_config_file(path: Path) -> tuple[ConfigCheck, bytes]:
    """Read and check a configuration file (aiofiles; the check in a thread)."""
    try:
        async with aiofiles.open(path, "rb") as f:
            data = await f.read(4 << 20)
    except OSError as exc:
        problem = FieldViolation(
            "", f"cannot be read ({exc.strerror or exc})", rules.UNREADABLE, str(path), 0
        )
        return ConfigCheck(str(path), violations=[problem]), b""
    return await asyncio.to_thread(read_config, path, data), data


def require_valid_config(path: Path | None) -> None:
    """Before a server starts (blocking): ConfigError listing every problem of the oracle
    configuration file, so a bad file stops the command with its problems, not a trace."""
    if path is not None:
        valid_config(path, "--oracle-config")


def valid_config(path: Path, flag: str) -> ConfigCheck:
    """The oracle configuration file given by `flag` (blocking), or ConfigError naming the
    flag when it cannot be read, or listing every problem it has."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from None
    check = read_config(path, data)
    if not check.valid:
        shown = "\n  ".join(str(v) for v in check.violations[:50])
        raise ConfigError(f"the oracle configuration {path} is invalid:\n  {shown}")
    return check


class ConfigSource:
    """Where the oracle configuration comes from: a file (watched) or the builtin default."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._digest = ""
        self.reverted = False

    async def first(self) -> ConfigCheck:
        if self.path is None:
            text = builtin_config(builtin_data_dir())
            return await asyncio.to_thread(
                parse_config, text, "<builtin oracles>", builtin_data_dir()
            )
        check, data = await read_config_file(self.path)
        self._digest = hashlib.sha256(data).hexdigest()
        with contextlib.suppress(OSError):
            stat = await aiofiles.os.stat(self.path)
            self._seen = (stat.st_mtime_ns, stat.st_size)
        return check

    async def changed(self) -> ConfigCheck | None:
        """The file's new version, checked, when it changed since last seen; else None."""
        if self.path is None:
            return None
        try:
            stat = await aiofiles.os.stat(self.path)
            seen: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            seen = None
        if seen == self._seen:
            return None
        self._seen = seen
        check, data = await read_config_file(self.path)
        digest = hashlib.sha256(data).hexdigest()
        if check.valid and digest == self._digest:
            self.reverted = True  # back to the version served: valid again
            return None
        if check.valid:
            self._digest = digest
        return check


class _Collector(Collector):
    def __init__(self, host: OracleHost) -> None:
        self._host = host

    def collect(self) -> Iterator[Metric]:
        host = self._host
        verified = CounterMetricFamily(
            "helix_oracle_verdicts",
            "Verdicts returned, by oracle and status.",
            labels=["oracle", "status"],
        )
        for (oracle, status), count in sorted(host.stats.verified.items()):
            verified.add_metric([oracle, status.removeprefix("VERDICT_STATUS_").lower()], count)
        yield verified
        yield CounterMetricFamily(
            "helix_oracle_batches", "Batches verified.", value=host.stats.batches
        )
        yield CounterMetricFamily(
            "helix_oracle_busy_refusals",
            "Calls and streams refused because the oracle held its capacity (ORACLE_BUSY).",
            value=host.stats.busy,
        )
        yield CounterMetricFamily(
            "helix_oracle_config_reloads", "Configurations applied.", value=host.stats.reloads
        )
        yield CounterMetricFamily(
            "helix_oracle_config_reload_failures",
            "Configuration versions refused as invalid (the previous one kept serving).",
            value=host.stats.reload_failures,
        )
        yield GaugeMetricFamily(
            "helix_oracle_config_valid",
            "1 when the configuration file's current version is served, 0 when it is invalid.",
            value=1 if host.stats.config_valid else 0,
        )
        held = GaugeMetricFamily(
            "helix_oracle_candidates_held", "Candidates held, by oracle.", labels=["oracle"]
        )
        capacity = GaugeMetricFamily(
            "helix_oracle_capacity",
            "Configured capacity in candidates, by oracle.",
            labels=["oracle"],
        )
        healthy = GaugeMetricFamily(
            "helix_oracle_healthy",
            "1 when the oracle is SERVING, 0 when DEGRADED.",
            labels=["oracle"],
        )
        starts = CounterMetricFamily(
            "helix_oracle_worker_starts", "Worker processes started, by oracle.", labels=["oracle"]
        )
        failures = CounterMetricFamily(
            "helix_oracle_worker_failures",
            "Worker processes that failed, by oracle.",
            labels=["oracle"],
        )
        for oracle_id, hosted in sorted(host.oracles.items()):
            held.add_metric([oracle_id], hosted.spec.capacity - hosted.free)
            capacity.add_metric([oracle_id], hosted.spec.capacity)
            healthy.add_metric([oracle_id], 1 if hosted.oracle.healthy else 0)
            if isinstance(hosted.oracle, PoolOracle):
                counters = hosted.oracle.pool.counters
                starts.add_metric([oracle_id], counters.worker_starts)
                failures.add_metric([oracle_id], counters.worker_failures)
        yield from (held, capacity, healthy, starts, failures)
        if host.cache is not None:
            stats = host.cache.stats()
            yield CounterMetricFamily(
                "helix_oracle_cache_hits", "Verdict cache hits.", value=stats.hits
            )
            yield CounterMetricFamily(
                "helix_oracle_cache_misses", "Verdict cache misses.", value=stats.misses
            )
            yield CounterMetricFamily(
                "helix_oracle_cache_evictions",
                "Verdicts evicted from the cache.",
                value=stats.evictions,
            )
            yield GaugeMetricFamily(
                "helix_oracle_cache_bytes", "Bytes held by the verdict cache.", value=stats.bytes
            )
            yield GaugeMetricFamily(
                "helix_oracle_cache_hit_ratio", "Hits / lookups so far.", value=stats.hit_ratio
            )
        if host.reports is not None:
            reports = host.reports
            yield CounterMetricFamily(
                "helix_oracle_report_lines", "Report lines written.", value=reports.written
            )
            yield CounterMetricFamily(
                "helix_oracle_report_lines_dropped",
                "Report lines dropped (queue full, or the directory could not be written).",
                value=reports.dropped,
            )
            yield GaugeMetricFamily(
                "helix_oracle_reports_degraded",
                "1 while the report directory cannot be written.",
                value=1 if reports.degraded else 0,
            )


class OracleService:
    """OracleService for a server: `binding` to add to it, and the host and servicer
    behind it (see the module docstring). `reports_dir` overrides
    settings.oracle_reports_dir (the embedded suite's DATA_DIR/reports); `presence`
    registers the server as an oracle agent, listing its oracles."""

    def __init__(
        self,
        settings: OracleSettings,
        *,
        reports_dir: Path | None = None,
        presence: AgentPresence | None = None,
    ) -> None:
        self.settings = settings
        self.presence = presence
        directory = reports_dir or settings.oracle_reports_dir
        self.reports_dir = directory
        self.reports = None
        if directory is not None:
            self.reports = ReportWriter(
                directory,
                max_bytes=int(settings.oracle_report_max_bytes),
                keep=settings.oracle_report_keep,
                queue_size=settings.oracle_report_queue_lines,
            )
        cache_bytes = int(settings.oracle_cache_bytes)
        cache = VerdictCache(cache_bytes) if cache_bytes else None
        self.host = OracleHost(cache, self.reports)
        self.servicer = OracleServicer(
            self.host,
            stream_share=settings.oracle_stream_share,
            idle_timeout=float(settings.oracle_stream_idle_timeout),
        )
        self.source = ConfigSource(settings.oracle_config)
        self._background: list[asyncio.Task[None]] = []
        self.binding = ServiceBinding(
            oracle_pb2.DESCRIPTOR.services_by_name["OracleService"].full_name,
            self._add,
            on_start=(self._start,),
            on_shutdown=(self._leave,),
            on_stopped=(self._stopped,),
            add_metrics=lambda metrics: metrics.register(_Collector(self.host)),
        )

    def _add(self, server: grpc.aio.Server) -> None:
        add_oracle_servicer(self.servicer, server)

    def _advertise(self) -> None:
        if self.presence is None:
            return
        host, agent = self.host, self.presence.agent
        agent.oracle.oracles[:] = sorted(h.spec.name for h in host.oracles.values())[:1000]
        total = sum(h.spec.capacity for h in host.oracles.values())
        agent.capacity = max(1, min(total, MAX_AGENT_CAPACITY))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(float(self.settings.oracle_config_poll))
            try:
                check = await self.source.changed()
                if self.source.reverted:
                    self.source.reverted = False
                    self.host.stats.config_valid = True
                if check is not None and await self.host.apply(check):
                    log.info(
                        "oracle configuration %s reloaded: %d oracles",
                        check.filename,
                        len(self.host.oracles),
                    )
                    self._advertise()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.host.stats.reload_failures += 1
                self.host.stats.config_valid = False
                log.exception("reloading the oracle configuration failed; the old one serves")

    async def _report_health(self) -> None:
        while True:
            await asyncio.sleep(_REPORT_INTERVAL)
            registration = self.presence.registration if self.presence is not None else None
            if registration is None:
                continue
            reports = self.reports
            degraded = not self.host.healthy or (reports is not None and reports.degraded)
            registration.health = (
                registry_pb2.AGENT_HEALTH_DEGRADED
                if degraded
                else registry_pb2.AGENT_HEALTH_SERVING
            )
            held = _held(self.host)
            if registration.load.in_flight != held:
                registration.load = registry_pb2.AgentLoad(in_flight=held)

    async def _start(self) -> None:
        if self._background:
            return
        if self.reports is not None and self.reports_dir is not None:
            await aiofiles.os.makedirs(self.reports_dir, exist_ok=True)
            self.reports.start()
        check = await self.source.first()
        if not check.valid:
            shown = "\n  ".join(str(v) for v in check.violations[:20])
            raise errors.FailedPrecondition(f"the oracle configuration is invalid:\n  {shown}")
        await self.host.apply(check)
        log.info("serving %d oracles from %s", len(self.host.oracles), check.filename)
        for job, name in (
            (self._watch, "watch oracle configuration"),
            (self._report_health, "oracle health"),
        ):
            self._background.append(asyncio.create_task(job(), name=name))
        if self.presence is not None:
            self._advertise()
            await self.presence.start()

    async def _leave(self) -> None:
        self.servicer.drain()
        if self.presence is not None:
            await self.presence.stop()

    async def _stopped(self) -> None:
        await cancel_and_wait(self._background)
        if self.presence is not None:
            await self.presence.stop()
        await self.host.close()
        if self.reports is not None:
            await self.reports.close()


def add_oracle_servicer(servicer: OracleServicer, server: grpc.aio.Server) -> None:
    """OracleService's handlers, as the generated `add_OracleServiceServicer_to_server`
    registers them, but sending the verdicts Verify and VerifyStream encode themselves
    (`Encoded`) as they are."""
    add_encoding_servicer(oracle_pb2.DESCRIPTOR.services_by_name["OracleService"], servicer, server)


def oracle_service(
    settings: OracleSettings,
    *,
    reports_dir: Path | None = None,
    presence: AgentPresence | None = None,
) -> OracleService:
    """The OracleService of a server (see OracleService)."""
    return OracleService(settings, reports_dir=reports_dir, presence=presence)


def _held(host: OracleHost) -> int:
    return sum(h.spec.capacity - h.free for h in host.oracles.values())
