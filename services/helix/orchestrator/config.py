"""The orchestrator's settings: flags and HELIX_* variables (`helix up`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helix.common.config import Duration, ServerConfig, setting
from helix.orchestrator.dispatch import VerifySettings
from helix.orchestrator.runs import RunSettings


@dataclasses.dataclass(frozen=True)
class OrchestratorSettings(ServerConfig):
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
            verify=VerifySettings(
                max_batch=self.orchestrator_max_batch,
                batch_timeout=float(self.orchestrator_batch_timeout),
                max_attempts=self.orchestrator_max_attempts,
                wait_timeout=float(self.orchestrator_wait_timeout),
            ),
        )
