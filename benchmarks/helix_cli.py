"""`helix run` as a user runs it, for the benchmarks: a child process, embedded suite.

`run_helix` starts `python -m helix.cli run DNA --oracle NAME --budget N --seed S
--json --out DIR` from the repository root (so `examples/dna` is its DNA library) with
no `HELIX_ADDRESS`, so the command builds its embedded suite in that process — registry,
orchestrator, generator and oracle agent over real gRPC on a loopback port, every call
authenticated with tokens minted by the suite's own key — runs the search to its end,
writes the run directory and exits. The result is the summary `--json` prints (state,
evaluations, best_score, wall_seconds, evaluations_per_second, start/end times, ...),
plus the child's own wall time and the per-generation times of convergence.json.

`start_helix` is the same command left running (for sampling it while it runs, or for
attaching a profiler); `finish_helix` waits for it and reads the result.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DNA_DIR = Path(__file__).resolve().parent / "dna"
DEFAULT_TIMEOUT = 1800.0


@dataclass
class HelixRun:
    """One finished `helix run`: its JSON summary and what the parent saw."""

    summary: dict[str, Any]
    process_seconds: float  # the child's whole life: interpreter, suite, run, run dir
    out: Path
    pid: int
    # (evaluations, unix time) after each generation that convergence.json kept.
    progress: list[tuple[int, float]] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        return int(self.summary["evaluations"])

    @property
    def best(self) -> float:
        return float(self.summary["best_score"])

    @property
    def evaluations_per_second(self) -> float:
        """The figure `helix run` reports: evaluations over CreateRun-to-end seconds."""
        return float(self.summary["evaluations_per_second"])

    @property
    def running_seconds(self) -> float:
        """From the run's start_time (RUNNING) to its end_time."""
        return _stamp(self.summary["end_time"]) - _stamp(self.summary["start_time"])

    @property
    def start(self) -> float:
        return _stamp(self.summary["start_time"])

    @property
    def end(self) -> float:
        return _stamp(self.summary["end_time"])


ANALYSIS = "## Analysis"


def kept_analysis(path: Path) -> list[str]:
    """The hand-written `## Analysis` section of the previous results file, kept as is."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    at = text.find(f"\n{ANALYSIS}")
    return ["", text[at + 1 :].rstrip("\n")] if at >= 0 else []


def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def command(
    dna: Path | str, oracle: str, budget: int, seed: int, out: Path, extra: Sequence[str] = ()
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "helix.cli",
        "run",
        str(dna),
        "--oracle",
        oracle,
        "--budget",
        str(budget),
        "--seed",
        str(seed),
        "--json",
        "--out",
        str(out),
        *extra,
    ]


def environment() -> dict[str, str]:
    """This environment without what would point `helix run` at another suite."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIX_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    out: Path
    started: float
    argv: list[str]


def start_helix(
    dna: Path | str,
    oracle: str,
    budget: int,
    seed: int,
    out: Path,
    prefix: Sequence[str] = (),
) -> Started:
    """Start `helix run` (module docstring); `prefix` runs it under another command (a
    profiler). Its stdout and stderr go to files in `out`'s parent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [*prefix, *command(dna, oracle, budget, seed, out)]
    stdout = (out.parent / f"{out.name}.stdout").open("wb")
    stderr = (out.parent / f"{out.name}.stderr").open("wb")
    with stdout, stderr:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=environment(),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    return Started(process, out, time.perf_counter(), argv)


def stop(started: Started) -> None:
    """Kill the child if it still runs, and reap it."""
    if started.process.poll() is None:
        started.process.kill()
    started.process.wait()


def finish_helix(started: Started, timeout: float = DEFAULT_TIMEOUT) -> HelixRun:
    """Wait for `helix run` to exit; its summary, or RuntimeError with its stderr's tail."""
    try:
        code = started.process.wait(timeout)
    except BaseException:  # a timeout, Ctrl-C, a test's deadline: leave no child behind
        stop(started)
        raise
    seconds = time.perf_counter() - started.started
    out = started.out
    text = (out.parent / f"{out.name}.stdout").read_text(encoding="utf-8")
    start = text.find("{")
    if code != 0 or start < 0:
        tail = (out.parent / f"{out.name}.stderr").read_text(encoding="utf-8")[-2000:]
        raise RuntimeError(f"{' '.join(started.argv)} exited {code}:\n{tail}")
    # raw_decode: a profiler running the command may print after the object.
    summary, _ = json.JSONDecoder().raw_decode(text, start)
    if summary.get("state") != "SUCCEEDED":
        raise RuntimeError(f"helix run ended {summary.get('state')}: {summary.get('error')}")
    progress = []
    convergence = out / "convergence.json"
    if convergence.is_file():
        points = json.loads(convergence.read_text(encoding="utf-8")).get("points", [])
        progress = [(int(p["evaluations"]), float(p["time"])) for p in points]
    return HelixRun(summary, seconds, out, started.process.pid, progress)


def run_helix(
    dna: Path | str,
    oracle: str,
    budget: int,
    seed: int,
    out: Path,
    timeout: float = DEFAULT_TIMEOUT,
) -> HelixRun:
    """Run `helix run` to its end (module docstring)."""
    return finish_helix(start_helix(dna, oracle, budget, seed, out), timeout)
