"""The orchestrator's checkpoint cost per generation: the run store on etcd against the run
store on SQLite, in this one run.

The real path: the orchestrator engine drives a rastrigin run (population 100) over the
embedded suite's generator and oracle agents, once on `SqliteRunStore` (synchronous=FULL,
as `helix up` keeps runs) and once on `EtcdRunStore` over a real single-member etcd on
loopback (fsync on), rounds alternating; every `commit` the engine makes is timed (a
generation's commit holds its checkpoint, its population and its retained candidates).
Reported: the median and p90 commit per generation, and the run's wall time per
generation, with the ratios etcd / SQLite.

    python benchmarks/bench_run_store.py [--rounds 3] [--evaluations 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402

from helix.etcd import EtcdClient  # noqa: E402
from helix.orchestrator.agents import GENERATOR_MAJOR, ORCHESTRATOR_SCOPES, AgentPool  # noqa: E402
from helix.orchestrator.etcd_store import EtcdRunStore  # noqa: E402
from helix.orchestrator.runs import Orchestrator, RunSettings  # noqa: E402
from helix.orchestrator.sqlite_store import SqliteRunStore  # noqa: E402
from helix.orchestrator.store import RunCommit, RunStore  # noqa: E402
from helix.security.client import MintingTokenSource, bearer_interceptors  # noqa: E402
from helix.security.principal import Principal  # noqa: E402

from etcd_support import EtcdCluster, etcd_available  # noqa: E402
from harness import Processes  # noqa: E402
from orchestrator_support import RUN_SCOPES, run_request, start_run_suite  # noqa: E402


class TimedStore:
    """A run store whose commits are timed (everything else passes through)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.generation_commits: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def commit(self, change: RunCommit) -> None:
        started = time.perf_counter()
        await self.store.commit(change)
        if change.checkpoint is not None:
            self.generation_commits.append(time.perf_counter() - started)


async def one_run(suite: Any, store: RunStore, evaluations: int) -> tuple[list[float], float]:
    """Drive one run on `store`: its generation commits (s) and wall time per generation."""
    signer = suite.server.security.signer
    calls = MintingTokenSource(signer, "helix-orchestrator", ORCHESTRATOR_SCOPES)

    def dial(address: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(calls))

    pool = AgentPool(lambda: dial(suite.server.address), dial, generator_major=GENERATOR_MAJOR)
    timed = TimedStore(store)
    engine = Orchestrator(timed, pool, RunSettings())
    await engine.start()
    alice = Principal("alice", frozenset(RUN_SCOPES))
    try:
        run = await engine.create(alice, run_request(evaluations=evaluations))
        started = time.perf_counter()
        async for _ in engine.watch(alice, run.name, 0):
            pass  # to the terminal state's event
        elapsed = time.perf_counter() - started
        done = await engine.get(alice, run.name)
        generations = max(done.progress.generation + 1, 1)
    finally:
        await engine.stop()
    return timed.generation_commits, elapsed / generations


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=5000)
    args = parser.parse_args()
    if not etcd_available():
        print("bench_run_store: the etcd binary is not installed; skipped")
        return
    with tempfile.TemporaryDirectory(prefix="helix-bench-runs-") as tmp:
        root = Path(tmp)
        processes = Processes(root / "logs")
        suite = await start_run_suite(root / "suite", orchestrator_embedded=False)
        try:
            etcd = await EtcdCluster(processes, root / "etcd").start()
            commits: dict[str, list[float]] = {"sqlite": [], "etcd": []}
            per_generation: dict[str, list[float]] = {"sqlite": [], "etcd": []}
            for i in range(args.rounds):
                stores: dict[str, RunStore] = {
                    "sqlite": SqliteRunStore(root / f"runs-{i}.sqlite3", synchronous="FULL"),
                    "etcd": EtcdRunStore(
                        EtcdClient([etcd.endpoint]), f"/bench-{uuid.uuid4().hex}", owns_client=True
                    ),
                }
                for name, store in stores.items():
                    timings, wall = await one_run(suite, store, args.evaluations)
                    commits[name] += timings
                    per_generation[name].append(wall)
        finally:
            await suite.close()
            await processes.close()
    report: dict[str, Any] = {}
    for name in commits:
        report[name] = {
            "generation_commit_median_ms": statistics.median(commits[name]) * 1e3,
            "generation_commit_p90_ms": p90(commits[name]) * 1e3,
            "wall_per_generation_ms": statistics.median(per_generation[name]) * 1e3,
            "commits": len(commits[name]),
        }
    report["ratios_etcd_over_sqlite"] = {
        key: report["etcd"][key] / report["sqlite"][key]
        for key in (
            "generation_commit_median_ms",
            "generation_commit_p90_ms",
            "wall_per_generation_ms",
        )
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
