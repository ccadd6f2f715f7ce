"""benchmarks/bench_scale.py at a tiny size: a real `helix cluster up` with one oracle
worker process, a real `helix run` through its gateway, the figures and files it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_scale
import cpu_oracle

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.timeout(180)
def test_one_worker_point_through_the_whole_cluster(tmp_path, capsys):
    out, png = tmp_path / "scale.md", tmp_path / "scale.png"
    out.write_text("# old\n\n## Analysis\n\nwritten by hand\n")
    argv = ["--workers", "1", "--budget", "1000", "--repeats", "1", "--warmup", "0"]
    argv += ["--cost", "200us", "--out", str(out), "--plot", str(png)]
    report = bench_scale.main(argv)

    (point,) = report["points"]
    assert point["workers"] == 1
    assert point["speedup"] == point["efficiency"] == 1.0
    # A generation is 1,000 candidates: the run ends with the one that reaches the budget.
    assert 1000 <= point["evaluations"][0] < 3000
    assert point["evaluations_per_second"] > 0
    cpu = point["cpu_seconds"]
    # The worker process burned ~0.2 ms per candidate (>= 0.05 s for 1,000 even on a
    # machine whose cores run slower); the orchestrator and the oracle agent did real work.
    assert cpu["oracle workers"] >= 0.05 * point["evaluations"][0] / 1000
    assert cpu["orchestrator"] > 0
    assert cpu["oracle agents"] > 0
    assert cpu["client (helix run)"] > 0
    assert report["oracle_alone_evaluations_per_second"] > 0
    assert point["oracle_alone_evaluations_per_second"] > 0

    text = out.read_text()
    assert "| 1 | " in text
    assert "## Where the cores go" in text
    assert text.rstrip().endswith("written by hand")  # the analysis is kept
    assert "# old" not in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert json.loads(printed[-1])["bench"] == "scale"


@pytest.mark.timeout(120)
def test_a_failed_run_says_why_and_the_cluster_stops_with_every_process(tmp_path):
    with bench_scale.cluster_up(1, 100, tmp_path) as cluster:
        assert sorted(cluster.named.values()) == [
            "generator-1",
            "oracle-1",
            "orchestrator",
            "registry",
        ]
        # Every process of the cluster: the supervisor, its children, the oracle's worker
        # (which the oracle agent starts once it listens: on a loaded machine, a moment on).
        deadline = time.monotonic() + 30
        pids = list(bench_scale.process_tree(cluster.process.pid))
        while len(pids) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = list(bench_scale.process_tree(cluster.process.pid))
        assert len(pids) >= 6
        with pytest.raises(RuntimeError, match="--budget must be at least 1"):
            bench_scale.run_on(cluster, 0, 1, tmp_path / "run")
    assert cluster.process.returncode is not None
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids)


def test_speedup_and_efficiency_are_against_one_worker():
    def point(workers: int, rate: float) -> bench_scale.Point:
        run = bench_scale.helix_cli.HelixRun(
            {"evaluations": 1000, "evaluations_per_second": rate}, 1.0, Path("."), 1
        )
        return bench_scale.Point(workers, 1000, [bench_scale.Timed(run, {}, 1.0)])

    rows = bench_scale.rows([point(1, 500.0), point(2, 900.0), point(4, 1600.0)])
    assert [(r.workers, r.speedup, r.efficiency) for r in rows] == [
        (1, 1.0, 1.0),
        (2, 1.8, 0.9),
        (4, 3.2, 0.8),
    ]


def test_a_w_above_the_cores_is_warned_about():
    assert bench_scale.over_cores([1, 2], 2) == []
    (warning,) = bench_scale.over_cores([1, 2, 4], 2)
    assert warning.startswith("W=4 exceeds this machine's 2 cores")


def test_bad_worker_counts_and_costs_are_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        bench_scale.main(["--workers", "1 two"])
    assert "'two' in '1 two' is not a number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_scale.main(["--workers", "0"])
    assert "workers must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_scale.main(["--cost=-1ms"])
    assert "the cost must be positive" in capsys.readouterr().err
    assert bench_scale.parse_seconds("500us") == pytest.approx(0.0005)
    assert bench_scale.parse_seconds("1ms") == pytest.approx(0.001)


def test_the_oracle_burns_the_cpu_it_was_calibrated_for():
    loops = cpu_oracle.calibrate(0.002, sample=0.1)
    started = time.process_time()
    cpu_oracle.burn(loops * 50)
    per_candidate = (time.process_time() - started) / 50
    # CPU time, so other processes do not count; a core shared with a busy hyperthread
    # runs slower per CPU second, hence the room.
    assert 0.0008 < per_candidate < 0.006


def test_a_bad_loop_count_in_the_environment_is_named():
    env = {**os.environ, cpu_oracle.LOOPS_VARIABLE: "lots"}
    done = subprocess.run(
        [sys.executable, "-c", "import cpu_oracle"],
        cwd=BENCHMARKS,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "CPU_ORACLE_LOOPS='lots' is not a whole number" in done.stderr
