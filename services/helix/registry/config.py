"""Configuration of the registry service."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helix.common.config import ByteSize, Duration, StoreConfig, require, setting
from helix.registry.engine import EngineSettings
from helix.registry.validation import RegistryLimits


@dataclasses.dataclass(frozen=True)
class RegistryConfig(StoreConfig):
    """The registry: where it stores agents, lease bounds, history and watch limits."""

    registry_db: Path | None = setting(None, "SQLite file of the registry (embedded: DATA_DIR)")
    registry_sync: str = setting("full", "SQLite synchronous mode: full (fsync) or normal")
    registry_default_ttl: Duration = setting(Duration(10.0), "lease TTL when none is asked")
    registry_min_ttl: Duration = setting(Duration(2.0), "shortest lease granted")
    registry_max_ttl: Duration = setting(Duration(300.0), "longest lease granted")
    registry_sweep_interval: Duration = setting(Duration(0.5), "how often lapsed leases expire")
    registry_history: int = setting(10_000, "events kept for watches and paginated lists")
    registry_history_bytes: ByteSize = setting(
        ByteSize(64 * 1024**2),
        "bytes of agents (new and previous states) the kept events may hold at most",
    )
    registry_watch_buffer: int = setting(1024, "events a watcher may fall behind by")
    registry_max_watchers: int = setting(1000, "watches served at once")
    registry_progress_interval: Duration = setting(
        Duration(10.0), "idle watches get a progress notification this often"
    )
    registry_max_batch: int = setting(1000, "mutations committed together at most")
    registry_write_queue: int = setting(10_000, "mutations waiting for the writer at most")
    registry_max_agents: int = setting(100_000, "agents registered at once at most")
    registry_max_agents_per_principal: int = setting(
        1000, "agents one principal (the token's subject; admins too) may hold at once"
    )
    registry_max_agent_bytes: ByteSize = setting(
        ByteSize(64 * 1024),
        "largest agent (serialized, as stored) RegisterAgent/UpdateAgent accept",
    )
    registry_request_ttl: Duration = setting(
        Duration(600.0), "how long RegisterAgent request ids are remembered"
    )
    registry_accept_loss: bool = setting(
        False,
        "start even if the database lost changes the data dir records (missing, empty or an "
        "older copy): revisions continue after the last one reached",
    )
    registry_request_bytes: ByteSize = setting(
        ByteSize(32 * 1024**2),
        "bytes of RegisterAgent answers remembered for retries at most (the oldest go first)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # etcd takes 1.5 MiB per transaction by default; a change writes its agent about
        # four times (the agent, the event with its previous state, the RegisterAgent
        # answer).
        require(
            not self.uses_etcd or self.registry_max_agent_bytes <= 256 * 1024,
            "registry_max_agent_bytes",
            "at most 256 KiB with --store etcd://",
        )
        require(self.registry_sync.lower() in ("full", "normal"), "registry_sync", "full or normal")
        require(
            0 < self.registry_min_ttl <= self.registry_default_ttl <= self.registry_max_ttl,
            "registry_default_ttl",
            "need 0 < registry_min_ttl <= registry_default_ttl <= registry_max_ttl",
        )
        require(
            0.01 <= self.registry_sweep_interval <= 60,
            "registry_sweep_interval",
            "must be within 10ms..60s",
        )
        require(100 <= self.registry_history <= 10_000_000, "registry_history", "100..10000000")
        # At least two events of the largest agent (each holds the agent and its previous state).
        require(
            4 * self.registry_max_agent_bytes <= self.registry_history_bytes <= 64 * 1024**3,
            "registry_history_bytes",
            "4 x registry_max_agent_bytes..64GiB",
        )
        require(
            self.registry_max_agent_bytes <= self.registry_request_bytes <= 64 * 1024**3,
            "registry_request_bytes",
            "registry_max_agent_bytes..64GiB",
        )
        require(1 <= self.registry_watch_buffer <= 1_000_000, "registry_watch_buffer", "1..1000000")
        require(1 <= self.registry_max_watchers <= 100_000, "registry_max_watchers", "1..100000")
        require(
            0.1 <= self.registry_progress_interval <= 3600,
            "registry_progress_interval",
            "must be within 100ms..1h",
        )
        require(1 <= self.registry_max_batch <= 100_000, "registry_max_batch", "1..100000")
        # One group commit is handed to each watcher whole: a batch larger than a watcher's
        # buffer would cut off even an idle, fast watcher (WATCHER_TOO_SLOW).
        require(
            self.registry_watch_buffer >= self.registry_max_batch,
            "registry_watch_buffer",
            "must be at least registry_max_batch (a whole group commit fits in it)",
        )
        require(1 <= self.registry_write_queue <= 1_000_000, "registry_write_queue", "1..1000000")
        require(self.registry_request_ttl >= 600, "registry_request_ttl", "at least 10m")
        require(1 <= self.registry_max_agents <= 10_000_000, "registry_max_agents", "1..10000000")
        # An agent must fit, with room to spare, in a 4 MiB page or watch response.
        require(
            1024 <= self.registry_max_agent_bytes <= 1024 * 1024,
            "registry_max_agent_bytes",
            "1024..1048576",
        )
        require(
            1 <= self.registry_max_agents_per_principal <= 10_000_000,
            "registry_max_agents_per_principal",
            "1..10000000",
        )

    def registry_file(self, data_dir: Path) -> Path:
        """The SQLite file: --registry-db, else registry.sqlite3 in `data_dir`."""
        return self.registry_db or data_dir / "registry.sqlite3"

    def engine_settings(self) -> EngineSettings:
        limits = RegistryLimits(
            default_ttl_seconds=self.registry_default_ttl,
            min_ttl_seconds=self.registry_min_ttl,
            max_ttl_seconds=self.registry_max_ttl,
            max_agents=self.registry_max_agents,
            max_agents_per_principal=self.registry_max_agents_per_principal,
            max_agent_bytes=self.registry_max_agent_bytes,
        )
        return EngineSettings(
            limits=limits,
            sweep_interval=self.registry_sweep_interval,
            history_limit=self.registry_history,
            history_bytes=self.registry_history_bytes,
            watch_buffer=self.registry_watch_buffer,
            max_watchers=self.registry_max_watchers,
            progress_interval=self.registry_progress_interval,
            max_batch=self.registry_max_batch,
            write_queue=self.registry_write_queue,
            request_ttl=self.registry_request_ttl,
            request_bytes=self.registry_request_bytes,
            accept_loss=self.registry_accept_loss,
        )
