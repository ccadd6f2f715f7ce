"""The benchmarks of the run path (bench_run, bench_memory, bench_quality's `helix run`
side) at tiny sizes, and the pieces they compute their figures with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_memory
import bench_quality
import bench_run
import helix_cli
import run_profile

HELIX = "/work/x/services/helix"
PY = "/usr/lib/python3.11"


def frame(function: str, path: str, line: int = 1) -> str:
    return f"{function} ({path}:{line})"


ROOT = [
    frame("<module>", f"{HELIX}/cli/main.py", 168),
    frame("main", f"{HELIX}/cli/main.py", 152),
    frame("_main", f"{HELIX}/cli/runs.py", 159),
    frame("run_until_complete", f"{PY}/asyncio/base_events.py", 640),
]


def test_a_sample_goes_to_the_innermost_part_that_is_not_a_library():
    raw = [
        # the generator validating, down in helix.genome and helix.common: generate
        ";".join(
            [
                *ROOT,
                frame("Generate", f"{HELIX}/generator/service.py"),
                frame("validate", f"{HELIX}/common/services.py"),
                frame("decode", f"{HELIX}/genome/codec.py"),
            ]
        )
        + " 5",
        # the orchestrator's dispatch to oracle agents: verify
        ";".join([*ROOT, frame("feeding", f"{HELIX}/orchestrator/dispatch.py")]) + " 3",
        # the generation loop: orchestrate; the CLI's roots never decide
        ";".join(
            [
                *ROOT,
                frame("_generations", f"{HELIX}/orchestrator/runs.py"),
                frame("population", f"{HELIX}/orchestrator/search.py", 209),
            ]
        )
        + " 7",
        # a response stream written by the call chain: plumbing
        ";".join(
            [
                *ROOT,
                frame("_drive", f"{HELIX}/common/interceptors.py"),
                frame("send_responses", f"{HELIX}/common/streams.py"),
            ]
        )
        + " 2",
        # nothing of Helix's below the roots: the event loop
        ";".join([*ROOT, frame("_run_once", f"{PY}/asyncio/base_events.py")]) + " 4",
        # an import, wherever it happens
        ";".join(
            [
                *ROOT,
                frame("plot", f"{HELIX}/cli/run_output.py"),
                frame("_find_and_load", "<frozen importlib._bootstrap>"),
            ]
        )
        + " 1",
        # the client drawing its plot
        ";".join([*ROOT, frame("plot_convergence", f"{HELIX}/cli/run_output.py", 830)]) + " 6",
        "",
    ]
    profile = run_profile.read_raw(raw, 100)
    assert profile.samples == 28
    assert dict(profile.parts) == {
        "generate": 5,
        "verify": 3,
        "orchestrate": 7,
        "rpc plumbing and auth": 2,
        "event loop and gRPC": 4,
        "startup": 1,
        "client": 6,
    }
    assert profile.functions["orchestrate"] == {
        "population (orchestrator/search.py:209)": 7,
    }
    assert profile.seconds("orchestrate") == pytest.approx(0.07)
    assert profile.leaves["decode (genome/codec.py:1)"] == 5


def test_rss_samples_are_placed_on_the_evaluations_between_generations():
    progress = [(1000, 10.0), (2000, 12.0), (2900, 13.0)]
    samples = [bench_memory.Sample(t, 1) for t in (9.0, 10.0, 11.0, 12.5, 14.0)]
    placed = bench_memory.place(samples, progress)
    assert [s.evaluations for s in placed] == [0.0, 1000.0, 1500.0, 2450.0, 2900.0]


def test_bench_run_measures_three_sides_and_profiles_the_run(tmp_path, capsys):
    out = tmp_path / "run.md"
    report = bench_run.main(
        ["--budget", "3000", "--optuna-trials", "100", "--repeats", "1", "--out", str(out)]
    )
    # helix finishes the generation that reaches the budget: at most one population more.
    assert 3000 <= report["helix_evaluations"][0] < 3000 + bench_run.POPULATION
    assert report["deap_evaluations"] == [3000]
    assert report["optuna_evaluations"] == [100]
    for side in ("helix", "deap", "optuna"):
        assert report[f"{side}_evaluations_per_second"] > 0
    assert report["helix_over_deap"] == pytest.approx(
        report["helix_evaluations_per_second"] / report["deap_evaluations_per_second"]
    )
    profile = report["profile"]
    assert "error" not in profile, profile
    assert profile["samples"] > 0
    assert sum(profile["share"].values()) == pytest.approx(1.0, abs=0.01)
    assert set(profile["share"]) == set(run_profile.PARTS)
    text = out.read_text()
    assert "| helix run (embedded suite, auth on) | " in text
    assert "## Where the time goes" in text
    assert "| startup |" in text  # a tiny run is mostly its imports
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert json.loads(printed[-1])["bench"] == "run"


def test_bench_memory_samples_the_run_after_warm_up(tmp_path, capsys):
    out = tmp_path / "memory.md"
    report = bench_memory.main(
        ["--budget", "30000", "--interval", "0.05", "--warmup", "0.1", "--out", str(out)]
    )
    assert 30000 <= report["evaluations"] < 31000
    assert report["samples"] >= 3
    assert 3000 <= report["warm_evaluations"] <= report["end_evaluations"] <= 31000
    assert report["ratio"] == pytest.approx(report["end_rss"] / report["warm_rss"])
    assert report["low_rss"] <= min(report["warm_rss"], report["end_rss"])
    assert report["high_rss"] >= max(report["warm_rss"], report["end_rss"])
    # An embedded suite with NumPy, gRPC and matplotlib loaded is well above 30 MiB.
    assert report["warm_rss"] > 30 * 2**20
    assert "end / warm-up" in out.read_text()
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert json.loads(printed[-1])["bench"] == "memory"


def test_bench_quality_takes_alpha_from_helix_run(tmp_path):
    out = tmp_path / "quality.md"
    report = bench_quality.main(
        [
            "--problems",
            "rastrigin-10d,tsp-berlin52",
            "--seeds",
            "1",
            "--budget-scale",
            "0.01",
            "--out",
            str(out),
        ]
    )
    for name, budget, population in (("rastrigin-10d", 200, 100), ("tsp-berlin52", 460, 600)):
        row = report["results"][name]
        assert row["ratio_alpha"] == "run"
        assert len(row["run_best"]) == 1
        assert budget <= row["run_evaluations"][0] < budget + population
        assert row["ratio"] == pytest.approx(row["run_median"] / row["deap_median"])
    # Every tour is at least the optimum; a random rastrigin point is above 0.
    assert report["results"]["tsp-berlin52"]["run_best"][0] >= 7542
    assert report["results"]["rastrigin-10d"]["run_best"][0] > 0
    assert "alpha via `helix run`" in out.read_text()


def test_a_failing_helix_run_says_why(tmp_path):
    with pytest.raises(RuntimeError, match="--budget must be at least 1"):
        helix_cli.run_helix(bench_run.DNA, "sphere", 0, 1, tmp_path / "run")


def test_rewriting_a_results_file_keeps_its_other_sections(tmp_path):
    path = tmp_path / "memory.md"
    bench_memory.rewrite(path, head="# Memory\n\nfirst figures\n")
    bench_memory.rewrite(path, section=(bench_memory.TRACED, f"{bench_memory.TRACED}\n\n- +1 MiB"))
    path.write_text(path.read_text() + "\n## Analysis\n\nby hand\n")
    bench_memory.rewrite(path, head="# Memory\n\nsecond figures\n")
    text = path.read_text()
    assert "first figures" not in text
    assert text.index("second figures") < text.index("- +1 MiB") < text.index("by hand")
    bench_memory.rewrite(path, section=(bench_memory.TRACED, f"{bench_memory.TRACED}\n\n- +2 MiB"))
    text = path.read_text()
    assert "- +1 MiB" not in text
    assert text.index("second figures") < text.index("- +2 MiB") < text.index("by hand")
    # bench_run keeps the analysis the same way
    assert bench_run.kept_analysis(path) == ["", "## Analysis\n\nby hand"]
    assert bench_run.kept_analysis(tmp_path / "none.md") == []
