"""Entry points for the `python` oracle tests (tests/test_oracle_python.py), run by
helix.oracle.pyworker in worker processes; `genome["kind"]` picks a behaviour."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np


def total(genome: dict[str, Any]) -> float:
    print("chatter on stdout must not reach the protocol")  # on purpose
    return float(sum(genome["x"]))


def judged(genome: dict[str, Any]) -> object:
    kind = genome.get("kind", "")
    if kind == "failed":
        return {"status": "failed", "score": 7, "metrics": {"weight": 3}, "message": "too heavy"}
    if kind == "bad_status":
        return {"status": "meh", "score": 1.0}
    if kind == "with_id":
        return {"id": "f" * 32, "status": "passed", "score": 1.0}
    if kind == "nan_score":
        return {"status": "passed", "score": math.nan}
    if kind == "inf":
        return math.inf
    if kind == "raise":
        raise ValueError("no good genome " + str(genome["x"][0]))
    if kind == "none":
        return None
    if kind == "numpy":
        return np.float32(2.5)
    return float(sum(genome["x"]))


def spin(genome: dict[str, Any]) -> float:
    """Holds the GIL: pure-Python busy loop for genome["seconds"]."""
    end = time.perf_counter() + genome["seconds"]
    n = 0
    while time.perf_counter() < end:
        n += 1
    return float(n > 0)


def sleepy(genome: dict[str, Any]) -> float:
    time.sleep(genome.get("sleep", 0.0))
    return float(sum(genome["x"]))


def batch_total(genomes: list[dict[str, Any]]) -> list[object]:
    verdicts: list[object] = [
        {"status": "passed", "score": float(sum(g["x"])), "metrics": {"batch": len(genomes)}}
        for g in genomes
    ]
    if any(g.get("kind") == "short" for g in genomes):
        verdicts.pop()
    return verdicts


def batch_numpy(genomes: list[dict[str, Any]]) -> object:
    return np.array([sum(g["x"]) for g in genomes])


def batch_raise(genomes: list[dict[str, Any]]) -> list[object]:
    raise RuntimeError(f"batch of {len(genomes)} broke")
