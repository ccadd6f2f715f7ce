"""`helix cluster up`: its settings (flags and `HELIX_*` variables, like every server)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from helix.common.config import (
    DashboardConfig,
    DataDirConfig,
    Duration,
    StoreConfig,
    require,
    setting,
)

AUTO = "auto"


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class ClusterConfig(StoreConfig, DashboardConfig, DataDirConfig):
    """One machine, every core: the registry, the orchestrator, generator and oracle agent
    processes under one supervisor, behind one address (`--host`/`--port`: the gateway).

    The server settings (`--grace-period`, limits, TLS, `--metrics-port`) are the
    gateway's; `--store` and the etcd flags go to the registry and the orchestrator;
    `HELIX_*` variables reach every process. State under `--data-dir`: the registry's
    (and the signing key, `DATA_DIR/keys`, so `helix run --address … --data-dir DATA_DIR`
    mints its tokens as with `helix up`), `orchestrator/`, `reports/<agent>/`.
    """

    generators: int | None = setting(
        None, "generator agent processes [default: one per 4 cores, at least one]"
    )
    oracles: str = setting(
        AUTO,
        "oracle agent processes: a number, or auto (autoscaled between --oracles-min and "
        "--oracles-max from the orchestrator's backlog)",
    )
    oracles_min: int = setting(1, "fewest oracle agent processes when autoscaled")
    oracles_max: int | None = setting(
        None, "most oracle agent processes when autoscaled [default: the machine's cores]"
    )
    oracle_config: Path | None = setting(
        None, "the oracles' YAML configuration [default: the builtin oracles]"
    )
    generator_dna_dir: Path | None = setting(
        None, "the generators' DNA directory [default: DATA_DIR/dnas]"
    )
    scale_interval: Duration = setting(
        Duration(1.0), "how often the autoscaler reads the orchestrator's backlog"
    )
    scale_up_ratio: float = setting(
        1.0, "add oracle processes while the backlog per unit of live capacity is above this"
    )
    scale_down_ratio: float = setting(
        0.25, "remove oracle processes once the backlog ratio stays below this"
    )
    scale_up_cooldown: Duration = setting(
        Duration(5.0), "the least time between two scale-ups (new agents must register)"
    )
    scale_down_window: Duration = setting(
        Duration(30.0),
        "the backlog ratio must stay low this long (since any scaling) before a scale-down",
    )
    restart_backoff: Duration = setting(
        Duration(0.5), "wait before restarting a crashed process; doubles per crash in a row"
    )
    restart_backoff_max: Duration = setting(Duration(30.0), "the longest restart back-off")
    process_start_timeout: Duration = setting(
        Duration(60.0), "how long a process may take to print that it listens"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.generators is None or 1 <= self.generators <= 256,
            "generators",
            f"{self.generators} is not within 1..256",
        )
        if self.oracles != AUTO:
            require(
                self.oracles.isdigit() and 1 <= int(self.oracles) <= 256,
                "oracles",
                f"{self.oracles!r} is neither auto nor a number within 1..256",
            )
        require(1 <= self.oracles_min <= 256, "oracles_min", "must be within 1..256")
        require(
            self.oracles_max is None or self.oracles_min <= self.oracles_max <= 256,
            "oracles_max",
            f"{self.oracles_max} is not within --oracles-min ({self.oracles_min})..256",
        )
        require(self.scale_interval >= 0.05, "scale_interval", "must be at least 50ms")
        require(
            0 < self.scale_down_ratio < self.scale_up_ratio,
            "scale_down_ratio",
            f"must be above 0 and below --scale-up-ratio ({self.scale_up_ratio})",
        )
        require(self.scale_up_cooldown >= 0, "scale_up_cooldown", "must not be negative")
        require(self.scale_down_window >= 0, "scale_down_window", "must not be negative")
        require(self.restart_backoff > 0, "restart_backoff", "must be positive")
        require(
            self.restart_backoff_max >= self.restart_backoff,
            "restart_backoff_max",
            "must be at least --restart-backoff",
        )
        require(self.process_start_timeout > 0, "process_start_timeout", "must be positive")
        require(
            self.oracle_config is None or self.oracle_config.is_file(),
            "oracle_config",
            f"{self.oracle_config} is not a file",
        )
        require(
            self.generator_dna_dir is None or self.generator_dna_dir.is_dir(),
            "generator_dna_dir",
            f"{self.generator_dna_dir} is not a directory",
        )

    @property
    def generator_count(self) -> int:
        return self.generators or max(1, machine_cores() // 4)

    @property
    def oracle_bounds(self) -> tuple[int, int]:
        """(fewest, most) oracle processes: equal unless autoscaled."""
        if self.oracles != AUTO:
            return int(self.oracles), int(self.oracles)
        most = self.oracles_max or max(self.oracles_min, machine_cores())
        return self.oracles_min, most

    @property
    def dna_dir(self) -> Path:
        return self.generator_dna_dir or self.data_dir / "dnas"
