"""The orchestrator's settings: flags and HELIX_* variables (`helix up`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helix.common.config import Duration, StoreConfig, require, setting
from helix.orchestrator.dispatch import VerifySettings
from helix.orchestrator.ownership import RunOwnership
from helix.orchestrator.runs import RunSettings


@dataclasses.dataclass(frozen=True)
class OrchestratorSettings(StoreConfig):
    """Runs: where they are stored, how long they wait for agents, what they retain."""

    orchestrator_db: Path | None = setting(
        None, "SQLite file of the runs (embedded default: DATA_DIR/runs.sqlite3)"
    )
    orchestrator_wait_timeout: Duration = setting(
        Duration(600.0),
        "a run with no live generator or oracle agent for this long fails",
    )
    orchestrator_batch_timeout: Duration = setting(
        Duration(120.0),
        "a batch an oracle agent has not answered within this is re-sent to another agent",
    )
    orchestrator_max_attempts: int = setting(
        4, "a candidate whose batch failed this many times is recorded as ERROR"
    )
    orchestrator_max_batch: int = setting(1000, "candidates per VerifyStream batch at most")
    orchestrator_window: int = setting(
        4, "generations whose candidates a run remembers to skip duplicates"
    )
    orchestrator_converge_after: int = setting(
        100, "a run that bred only duplicates this many generations in a row stops (CONVERGED)"
    )
    orchestrator_keep_best: int = setting(1000, "best candidates retained per run")
    orchestrator_keep_failed: int = setting(10_000, "first FAILED candidates retained per run")
    orchestrator_keep_events: int = setting(10_000, "latest events retained per run")
    orchestrator_max_runs: int = setting(256, "unfinished runs the orchestrator drives at most")
    orchestrator_max_runs_per_principal: int = setting(
        16, "unfinished runs one caller may have at once"
    )
    orchestrator_keep_finished_runs: int = setting(
        500, "finished runs kept per owner (older ones are deleted with their history)"
    )
    orchestrator_keep_finished_for: Duration = setting(
        Duration(30 * 86400.0), "finished runs are deleted this long after they ended (0: never)"
    )
    orchestrator_owner_ttl: Duration = setting(
        Duration(3.0),
        "with --store etcd: the lease that holds this orchestrator's runs; another takes "
        "them over this long after it dies",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.orchestrator_owner_ttl >= 1, "orchestrator_owner_ttl", "at least 1s")
        for name in (
            "orchestrator_max_attempts",
            "orchestrator_max_batch",
            "orchestrator_window",
            "orchestrator_converge_after",
            "orchestrator_keep_best",
            "orchestrator_keep_events",
            "orchestrator_max_runs",
            "orchestrator_max_runs_per_principal",
        ):
            require(getattr(self, name) >= 1, name, "must be at least 1")
        for name in ("orchestrator_keep_failed", "orchestrator_keep_finished_runs"):
            require(getattr(self, name) >= 0, name, "must be at least 0")

    def runs_file(self, data_dir: Path) -> Path:
        return self.orchestrator_db or data_dir / "runs.sqlite3"

    def run_settings(self) -> RunSettings:
        return RunSettings(
            wait_timeout=float(self.orchestrator_wait_timeout),
            window=self.orchestrator_window,
            converge_after=self.orchestrator_converge_after,
            keep_best=self.orchestrator_keep_best,
            keep_failed=self.orchestrator_keep_failed,
            keep_events=self.orchestrator_keep_events,
            max_runs=self.orchestrator_max_runs,
            max_runs_per_principal=self.orchestrator_max_runs_per_principal,
            keep_finished_runs=self.orchestrator_keep_finished_runs,
            keep_finished_for=float(self.orchestrator_keep_finished_for),
            verify=VerifySettings(
                max_batch=self.orchestrator_max_batch,
                batch_timeout=float(self.orchestrator_batch_timeout),
                max_attempts=self.orchestrator_max_attempts,
                wait_timeout=float(self.orchestrator_wait_timeout),
            ),
        )


def run_ownership(config: OrchestratorSettings) -> RunOwnership | None:
    """With --store etcd, this orchestrator's share of the runs (None on SQLite)."""
    if not config.uses_etcd:
        return None
    from helix.etcd.config import etcd_client

    return RunOwnership(
        etcd_client(config), config.etcd_prefix, ttl=float(config.orchestrator_owner_ttl)
    )
