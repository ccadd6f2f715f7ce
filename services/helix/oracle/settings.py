"""Settings of an oracle server (`helix oracle serve`, and the embedded suite's oracle)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helix.common.config import ByteSize, Duration, ServerConfig, require, setting


@dataclasses.dataclass(frozen=True)
class OracleSettings(ServerConfig):
    """The oracle: its configuration file, cache, reports and VerifyStream limits."""

    oracle_config: Path | None = setting(
        None, "YAML file of the named oracles to host (embedded default: the builtins)"
    )
    oracle_config_poll: Duration = setting(
        Duration(2.0), "how often the configuration file is checked for changes"
    )
    oracle_reports_dir: Path | None = setting(
        None, "directory of the JSON Lines verification reports (embedded: DATA_DIR/reports)"
    )
    oracle_report_max_bytes: ByteSize = setting(
        ByteSize(64 << 20), "a report file is rotated at this size"
    )
    oracle_report_keep: int = setting(5, "rotated report files kept")
    oracle_report_queue_lines: int = setting(
        65_536,
        "report lines queued in memory at most; from half full, streams get their next "
        "credit only once the writer has caught up",
    )
    oracle_cache_bytes: ByteSize = setting(
        ByteSize(64 << 20), "memory for cached verdicts (0: no cache)"
    )
    oracle_stream_share: float = setting(
        0.5, "fraction of an oracle's capacity one VerifyStream may hold"
    )
    oracle_stream_idle_timeout: Duration = setting(
        Duration(60.0), "a VerifyStream holding no batch and sending none is ended after this"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.oracle_config is None or self.oracle_config.is_file(),
            "oracle_config",
            f"{self.oracle_config} is not a file",
        )
        require(0 < self.oracle_config_poll <= 3600, "oracle_config_poll", "0..1h")
        require(self.oracle_report_max_bytes >= 1024, "oracle_report_max_bytes", ">= 1KiB")
        require(0 <= self.oracle_report_keep <= 1000, "oracle_report_keep", "0..1000")
        require(
            16 <= self.oracle_report_queue_lines <= 10_000_000,
            "oracle_report_queue_lines",
            "16..10000000",
        )
        require(0 < self.oracle_stream_share <= 1, "oracle_stream_share", "in (0, 1]")
        require(0 < self.oracle_stream_idle_timeout <= 86400, "oracle_stream_idle_timeout", "0..1d")
