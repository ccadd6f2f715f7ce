"""benchmarks/bench_polyglot.py (the Node.js oracle agent against the Python one) end to end
on a tiny budget, its refusals of bad flags, and its check that no verdict came from a cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import helix.v1.candidate_pb2 as candidate_pb2

from node_support import require_node_modules, requires_node

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_polyglot

TINY = ["--repeats", "1", "--passes", "1", "--run-repeats", "1", "--generations", "15"]


@requires_node
@pytest.mark.timeout(240)
def test_a_tiny_run_measures_both_agents_and_writes_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_node_modules()
    out = tmp_path / "polyglot.md"
    out.write_text("# old figures\n\n## Analysis\n\nwritten by hand\n")
    report = bench_polyglot.main([*TINY, "--batch", "128", "--out", str(out)])
    rates = report["verify_candidates_per_second"]
    assert set(rates) == {
        "python/Verify",
        "python/VerifyStream",
        "node/Verify",
        "node/VerifyStream",
    }
    assert all(rate > 0 for rate in rates.values())
    for rpc in ("Verify", "VerifyStream"):
        assert report["verify_node_over_python"][rpc] == pytest.approx(
            rates[f"node/{rpc}"] / rates[f"python/{rpc}"]
        )
    # One run per setup after the warm-ups, the same seed: the same outcome, all four
    # oracle-verified candidates accounted for by the two agents.
    assert report["run_identical"] is True
    outcomes = report["run_outcomes"]
    assert len(outcomes) == 2
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]["state"] == "SUCCEEDED"
    assert outcomes[0]["generations"] == 15
    node, python = report["node_verified"][0], report["python_verified"][0]
    assert node > 0, "the Node agent verified nothing in the shared run"
    assert python > 0, "the Python agent verified nothing in the shared run"
    assert node + python == outcomes[0]["evaluations"]
    assert report["node_share"] == pytest.approx(node / (node + python))
    for setup in ("python", "python+node"):
        assert report["run_wall_seconds"][setup] > 0
        assert report["run_evaluations_per_second"][setup] > 0
    text = out.read_text()
    assert "old figures" not in text
    assert "| Verify | " in text
    assert "| VerifyStream | " in text
    assert "| Python + Node | " in text
    assert "Outcome of every run identical" in text
    assert "cores, load average" in text
    assert "## Not measured" in text
    assert text.rstrip().endswith("## Analysis\n\nwritten by hand")
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert json.loads(printed[-1])["bench"] == "polyglot"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--run-repeats", "0"], "--run-repeats must be at least 1"),
        (["--generations", "0"], "--generations must be at least 1"),
        (["--passes", "-1"], "--passes must be at least 1"),
        (["--batch", "0"], "--batch must be within 1..1024"),
        (["--batch", "2000"], "--batch must be within 1..1024"),
        (["--repeats", "x"], "invalid int value: 'x'"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_polyglot.main(flags)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_without_node_it_says_so_and_skips(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench_polyglot, "NODE", None)
    out = tmp_path / "polyglot.md"
    report = bench_polyglot.main(["--out", str(out)])
    assert report == {"bench": "polyglot", "skipped": "node (Node.js >= 20) is not on the PATH"}
    assert "bench_polyglot: node (Node.js >= 20) is not on the PATH; skipped" in (
        capsys.readouterr().out
    )
    assert not out.exists()
    monkeypatch.setattr(bench_polyglot, "NODE_DIR", tmp_path)
    monkeypatch.setattr(bench_polyglot, "NODE", "/usr/bin/node")
    assert "node_modules is missing: run `npm ci" in bench_polyglot.main([])["skipped"]


def test_a_cached_or_misplaced_verdict_stops_the_measurement() -> None:
    batch = bench_polyglot.all_batches(4)[0]
    fresh = [candidate_pb2.Verdict(candidate_id=c.id) for c in batch]
    assert bench_polyglot.checked(fresh, batch) == 4
    cached = [candidate_pb2.Verdict(candidate_id=c.id, cached=i == 2) for i, c in enumerate(batch)]
    with pytest.raises(bench_polyglot.BenchError, match="from a cache"):
        bench_polyglot.checked(cached, batch)
    with pytest.raises(bench_polyglot.BenchError, match="do not answer"):
        bench_polyglot.checked(fresh[::-1], batch)


def test_batches_hold_every_genome_once() -> None:
    batches = bench_polyglot.all_batches(256)
    assert [len(b) for b in batches] == [256] * 4
    ids = {c.id for b in batches for c in b}
    assert len(ids) == bench_polyglot.GENOMES
    assert [len(b) for b in bench_polyglot.all_batches(1000)] == [1000, 24]
