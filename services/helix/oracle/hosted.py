"""The running oracles of an oracle server, one per configured oracle, behind one interface.

`open_oracle(spec)` builds the running form of an `OracleSpec`: a builtin scores a whole
batch with NumPy; a command or python oracle is a `CommandPool` of sandboxed worker
processes (python runs `helix.oracle.pyworker`, a JSON Lines worker that calls the entry
point); a remote oracle forwards to another OracleService (remote.py). Each one:

- `check_dna(layout)`: the violations when a DNA's genes do not have the shape it takes;
- `evaluate(layout, population, ids, timeout)`: one verdict per row, in row order, never
  raising for a candidate's failure (that is an ERROR or TIMEOUT verdict);
- `healthy`: False while it is DEGRADED (repeated worker failures, remote unreachable);
- `start()` / `close()`.

Cheap work stays on the event loop (a builtin batch of 1,000 sphere rows takes tens of
microseconds); a builtin batch over BUILTIN_THREAD_CELLS values is scored in a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

import helix.v1.candidate_pb2 as candidate_pb2
from helix.common.errors import FieldViolation
from helix.genome.layout import FloatArray, Layout, Population
from helix.genome.named import to_named_rows
from helix.oracle.builtins import BUILTINS, Bound
from helix.oracle.command import CommandPool, CommandSpec, Health, python_spec
from helix.oracle.command import Limits as WorkerLimits
from helix.oracle.config import OracleSpec, inside

PASSED = candidate_pb2.VERDICT_STATUS_PASSED
ERROR = candidate_pb2.VERDICT_STATUS_ERROR
BUILTIN_THREAD_CELLS = 1 << 20
NON_FINITE = "the score is not a finite number"


class RunningOracle(Protocol):
    spec: OracleSpec

    @property
    def healthy(self) -> bool: ...

    def check_dna(self, layout: Layout) -> list[FieldViolation]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def evaluate(
        self, layout: Layout, population: Population, ids: Sequence[str], candidate_timeout: float
    ) -> Scored: ...


class Scored:
    """The outcome of evaluating a batch: either columnar (`scores[i]` for row i, every row
    PASSED except those in `errors`, row -> message; `duration` seconds per candidate), as
    builtins give it, or `verdicts`, one full message per row, as worker pools give it."""

    __slots__ = ("duration", "errors", "scores", "verdicts")

    def __init__(
        self,
        scores: FloatArray | None = None,
        errors: dict[int, str] | None = None,
        duration: float = 0.0,
        verdicts: list[candidate_pb2.Verdict] | None = None,
    ) -> None:
        self.scores = scores
        self.errors = errors or {}
        self.duration = duration
        self.verdicts = verdicts


class BuiltinOracle:
    """A builtin function bound to its parameters (instance files read at start)."""

    def __init__(self, spec: OracleSpec) -> None:
        self.spec = spec
        self._bound: Bound | None = None

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        settings = self.spec.settings
        builtin = BUILTINS[settings["function"]]
        self._bound = await asyncio.to_thread(builtin.bind, settings["params"], self.spec.base_dir)

    async def close(self) -> None:
        return None

    def check_dna(self, layout: Layout) -> list[FieldViolation]:
        assert self._bound is not None
        return self._bound.check_dna(layout)

    async def evaluate(
        self, layout: Layout, population: Population, ids: Sequence[str], candidate_timeout: float
    ) -> Scored:
        assert self._bound is not None
        start = time.perf_counter()
        cells = len(population) * max(1, sum(g.size for g in layout.genes))
        if cells > BUILTIN_THREAD_CELLS:
            scores = await asyncio.to_thread(self._bound.score, population)
        else:
            scores = self._bound.score(population)
        n = len(population)
        elapsed = (time.perf_counter() - start) / max(1, n)
        errors = {int(i): NON_FINITE for i in np.flatnonzero(~np.isfinite(scores))}
        return Scored(scores, errors, elapsed)


def pool_spec(spec: OracleSpec) -> CommandSpec:
    """The worker pool of a command or python oracle."""
    settings = spec.settings
    limits = settings["limits"]
    worker_limits = WorkerLimits(
        cpu_seconds=limits["cpu_seconds"],
        address_space_bytes=limits["memory"],
        open_files=limits["open_files"],
        file_bytes=limits["file_size"],
    )
    options = {
        "workers": settings["workers"],
        "timeout": spec.timeout,
        "limits": worker_limits,
        "env_allow": ("PATH", "LANG", "LC_ALL", "TZ", *settings["env"]),
        "in_flight": settings["in_flight"],
    }
    if spec.kind == "python":
        folder = inside(spec.base_dir, settings["path"], directory=True)
        return python_spec(
            settings["entry_point"], batch=settings["batch"], path=str(folder), **options
        )
    argv = tuple(
        str(spec.base_dir.resolve() / arg) if arg in settings["files"] else arg
        for arg in settings["argv"]
    )
    return CommandSpec(argv=argv, **options)


class PoolOracle:
    """A command or python oracle: a pool of sandboxed JSON Lines worker processes."""

    def __init__(self, spec: OracleSpec) -> None:
        self.spec = spec
        self.pool = CommandPool(pool_spec(spec))

    @property
    def healthy(self) -> bool:
        return self.pool.health is Health.SERVING

    async def start(self) -> None:
        await self.pool.start()

    async def close(self) -> None:
        await self.pool.close()

    def check_dna(self, layout: Layout) -> list[FieldViolation]:
        return []  # a program takes any DNA; it answers ERROR for genomes it cannot score

    async def evaluate(
        self, layout: Layout, population: Population, ids: Sequence[str], candidate_timeout: float
    ) -> Scored:
        rows = to_named_rows(layout, population)
        verdicts = await self.pool.verify(
            list(zip(ids, rows, strict=True)), timeout=candidate_timeout
        )
        return Scored(verdicts=verdicts)


def open_oracle(spec: OracleSpec) -> RunningOracle:
    """The running form of `spec` (not started)."""
    if spec.kind == "builtin":
        return BuiltinOracle(spec)
    if spec.kind in ("command", "python"):
        return PoolOracle(spec)
    from helix.oracle.remote import RemoteOracle  # grpc: only for remote oracles

    return RemoteOracle(spec)
