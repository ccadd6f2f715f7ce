"""benchmarks/bench_dashboard.py (live viewers, event delay and page cost of the web
dashboard) end to end on a tiny budget, its refusals of bad flags, and its arithmetic."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_dashboard

TINY = ["--repeats", "1", "--budget", "2000", "--viewers", "2", "--page-repeats", "3"]
REPORT_KEYS = {
    "bench",
    "seconds",
    "machine",
    "viewers",
    "budget",
    "repeats",
    "run_wall_seconds",
    "run_wall_ratio",
    "runs_identical",
    "run_outcome",
    "events_per_run",
    "delivery_delay_ms",
    "delivery_delay_ms_settled",
    "page_ms",
    "page_ratio",
}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_tiny_run_measures_viewers_delay_and_pages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dashboard.md"
    out.write_text("# old figures\n\n## Analysis\n\nwritten by hand\n")
    bench_dashboard.main([*TINY, "--out", str(out)])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(printed) == 1
    report = json.loads(printed[0])
    assert set(report) == REPORT_KEYS
    assert report["bench"] == "dashboard"
    assert set(report["machine"]) >= {"cores", "python", "aiohttp"}
    assert (report["viewers"], report["budget"], report["repeats"]) == (2, 2000, 1)

    walls = report["run_wall_seconds"]
    assert set(walls) == {"no_viewer", "viewers"}
    assert all(isinstance(w, float) and w > 0 for w in walls.values())
    assert report["run_wall_ratio"] == pytest.approx(walls["viewers"] / walls["no_viewer"])
    # The same seed: every run, warm-ups included, ended alike, at its budget.
    assert report["runs_identical"] is True
    outcome = report["run_outcome"]
    assert outcome["state"] == "SUCCEEDED"
    assert outcome["stop_reason"] == "MAX_EVALUATIONS"
    assert 2000 <= outcome["evaluations"] < 2000 + 100  # one population of 100 at most over
    # Every viewer got every event: one delay per (event, viewer) of the measured (b) run.
    events = report["events_per_run"]
    assert events > outcome["generation"]  # a generation event each, and more
    delay = report["delivery_delay_ms"]
    assert delay["samples"] == events * 2
    assert delay["min"] <= delay["median"] <= delay["p95"] <= delay["max"]
    assert delay["median"] > 0  # relayed through the dashboard: never before gRPC's reader
    settled = report["delivery_delay_ms_settled"]
    assert settled["samples"] == (events - bench_dashboard.SETTLED_AFTER) * 2

    pages = report["page_ms"]
    assert set(pages) == {"run_page", "run_grpc", "agents_page", "agents_grpc"}
    assert all(ms > 0 for ms in pages.values())
    ratios = report["page_ratio"]
    assert set(ratios) == {"run", "agents"}
    assert all(isinstance(r, float) and r > 0 for r in ratios.values())
    assert ratios["run"] == pytest.approx(pages["run_page"] / pages["run_grpc"])
    assert ratios["agents"] == pytest.approx(pages["agents_page"] / pages["agents_grpc"])

    text = out.read_text()
    assert "old figures" not in text
    assert "| (b) / (a) | **" in text
    assert "Every run ended alike" in text
    assert "| after the first 10 of each run |" in text
    assert "| GET /agents vs ListAgents |" in text
    assert "cores, Python 3." in text
    assert "aiohttp " in text
    assert "## Not measured" in text
    assert text.rstrip().endswith("## Analysis\n\nwritten by hand")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--budget", "0"], "--budget must be at least 1"),
        (["--viewers", "0"], "--viewers must be at least 1"),
        (["--viewers", "65"], "--viewers must be at most 64"),
        (["--page-repeats", "-1"], "--page-repeats must be at least 1"),
        (["--budget", "x"], "invalid int value: 'x'"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_dashboard.main(flags)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert bench_dashboard.percentile(values, 0.95) == 95.0
    assert bench_dashboard.percentile(values, 0.5) == 50.0
    assert bench_dashboard.percentile(values, 1.0) == 100.0
    assert bench_dashboard.percentile([3.0], 0.95) == 3.0


def test_delays_are_viewer_minus_grpc_per_event_and_viewer() -> None:
    outcome = bench_dashboard.Outcome("SUCCEEDED", "MAX_EVALUATIONS", 1, 100, 0, "id", 1.0)
    run = bench_dashboard.Run(
        "runs/r",
        1.0,
        outcome,
        3,
        {1: 10.0, 2: 11.0, 3: 12.0},
        [{1: 10.001, 2: 11.004, 3: 12.002}, {1: 10.010, 2: 11.000, 3: 12.003}],
    )
    assert bench_dashboard.delays_ms([run]) == pytest.approx([1, 4, 2, 10, 0, 3], abs=1e-6)
    assert bench_dashboard.delays_ms([run], after=2) == pytest.approx([2, 3], abs=1e-6)
