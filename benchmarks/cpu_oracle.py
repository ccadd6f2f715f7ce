"""A CPU-bound oracle for benchmarks/bench_scale.py: sphere, plus a fixed amount of CPU work.

The batch entry point `sphere` scores each genome's `x` as the builtin sphere does, and
before that burns CPU_ORACLE_LOOPS iterations of a pure-Python busy loop per candidate
(CPU time, not sleep: it holds a core, as a real simulation would). The benchmark
calibrates the count once (`calibrate`, by `time.process_time`, so other processes on the
machine do not skew it) and hands every worker the same number through the environment:
the oracle configuration passes the variable through by name (`env: [CPU_ORACLE_LOOPS]`).
Without the variable the module calibrates itself to 1 ms at import.

This module runs in `helix.oracle.pyworker` processes and imports nothing from Helix.
"""

from __future__ import annotations

import os
import time
from typing import Any

LOOPS_VARIABLE = "CPU_ORACLE_LOOPS"
DEFAULT_SECONDS = 0.001


def burn(loops: int) -> int:
    """`loops` iterations of integer arithmetic; the result only keeps the loop honest."""
    acc = 0
    for i in range(loops):
        acc = (acc + i * i) & 0xFFFF
    return acc


def calibrate(seconds: float = DEFAULT_SECONDS, *, sample: float = 0.2) -> int:
    """The number of `burn` loops that takes `seconds` of this process's CPU time.

    Times `burn` for about `sample` seconds of CPU (after a short warm-up) and scales; the
    smallest of three estimates of the time per loop, so a preempted or cache-cold pass
    does not inflate the count."""
    if seconds <= 0 or sample <= 0:
        raise ValueError(f"seconds and sample must be positive, not {seconds!r}, {sample!r}")
    probe = 10_000
    burn(probe)
    per_loop = []
    for _ in range(3):
        started = time.process_time()
        loops = probe
        while time.process_time() - started < sample / 3:
            burn(probe)
            loops += probe
        per_loop.append((time.process_time() - started) / loops)
    return max(1, round(seconds / min(per_loop)))


def _loops_from_environment() -> int:
    text = os.environ.get(LOOPS_VARIABLE)
    if text is None:
        return calibrate()
    try:
        loops = int(text)
    except ValueError:
        raise ValueError(f"{LOOPS_VARIABLE}={text!r} is not a whole number") from None
    if loops < 0:
        raise ValueError(f"{LOOPS_VARIABLE}={loops} must not be negative")
    return loops


LOOPS = _loops_from_environment()


def sphere(genomes: list[dict[str, Any]]) -> list[float]:
    """Batch entry point: the sphere of each genome's `x`, after LOOPS of CPU work each."""
    scores = []
    for genome in genomes:
        burn(LOOPS)
        scores.append(float(sum(value * value for value in genome["x"])))
    return scores


def _timed_loop(evaluations: int, batch: int = 32) -> tuple[int, float, float]:
    """(evaluations, wall seconds, CPU seconds) of `sphere` called in a loop on batches of
    `batch`: the oracle alone, no Helix."""
    genomes = [{"x": [0.1 * ((i + j) % 50) for j in range(10)]} for i in range(batch)]
    sphere(genomes[:2])  # warm
    done = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while done < evaluations:
        done += len(sphere(genomes[: min(batch, evaluations - done)]))
    return done, time.perf_counter() - wall, time.process_time() - cpu


if __name__ == "__main__":
    # `python cpu_oracle.py N`: waits for a line on stdin (so several start together), runs
    # N candidates through `sphere` and prints "evaluations wall_seconds cpu_seconds".
    import sys

    count = int(sys.argv[1])
    sys.stdin.readline()
    print(*_timed_loop(count))
