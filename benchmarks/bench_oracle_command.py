"""Command-oracle pool throughput against a plain asyncio loop over the same worker program.

Both sides send the same candidates (`--candidates`, default 20,000, each a named genome of
one 10-real gene `x`) through the same trivial worker program
(`benchmarks/oracle_sum_worker.py`: score = sum of x), with the same number of worker
processes (`--workers`, default 2), in this one process and one run:

- **plain loop (baseline)**: `--workers` processes started before the clock (as the pool's
  are), the candidates cut into contiguous equal shards, one per process; per process a
  writer task does `stdin.write(json.dumps(request).encode())` + `await drain()` per line
  and a reader does `await stdout.readline()` + `json.loads` per verdict, checking the id.
  That is the work any caller must do: serialise each request, parse each reply. No
  sandbox, no timeout, no validation, no protobuf, no recovery.
- **pool**: `CommandPool.verify(items)` on a started pool (sandboxed workers, pipelining,
  per-candidate timeouts, verdict validation, one `helix.v1.Verdict` per candidate in
  request order).

The ratio pool/plain therefore measures the pool's own overhead (futures, verdict protos,
validation, sandbox bookkeeping, pipelining). Rounds alternate which side runs first; the
report gives medians of candidates/s and of the parent process's CPU µs per candidate, and
the median of the per-round ratios. Each round checks both sides return the same scores.

    python benchmarks/bench_oracle_command.py [--candidates 20000] [--workers 2]
        [--rounds 7] [--in-flight N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import helix.v1.candidate_pb2 as candidate_pb2
from helix.oracle.command import CommandPool, CommandSpec

WORKER = str(Path(__file__).resolve().parent / "oracle_sum_worker.py")
Item = tuple[str, Mapping[str, object]]


def make_items(count: int) -> list[Item]:
    rng = random.Random(12)
    return [
        (f"{i:032x}", {"x": [rng.uniform(-5.12, 5.12) for _ in range(10)]}) for i in range(count)
    ]


async def _pipe_shard(process: asyncio.subprocess.Process, shard: Sequence[Item]) -> list[float]:
    assert process.stdin is not None
    assert process.stdout is not None
    stdin, stdout = process.stdin, process.stdout

    async def write() -> None:
        for candidate_id, genome in shard:
            request = {"id": candidate_id, "genome": genome}
            stdin.write((json.dumps(request, separators=(",", ":")) + "\n").encode())
            await stdin.drain()

    writer = asyncio.create_task(write())
    scores = []
    for candidate_id, _ in shard:
        verdict = json.loads(await stdout.readline())
        if verdict["id"] != candidate_id:
            raise AssertionError(f"plain loop: {verdict['id']} answered for {candidate_id}")
        scores.append(float(verdict["score"]))
    await writer
    return scores


async def plain_round(items: Sequence[Item], workers: int) -> tuple[float, float, list[float]]:
    """(seconds, parent CPU seconds, scores) of the plain loop; process start is untimed."""
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            WORKER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        for _ in range(workers)
    ]
    size = -(-len(items) // workers)
    shards = [items[i * size : (i + 1) * size] for i in range(workers)]
    cpu, started = time.process_time(), time.perf_counter()
    parts = await asyncio.gather(
        *(_pipe_shard(p, s) for p, s in zip(processes, shards, strict=True))
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    for process in processes:
        assert process.stdin is not None
        process.stdin.close()
        await process.wait()
    return seconds, cpu, [score for part in parts for score in part]


async def pool_round(pool: CommandPool, items: Sequence[Item]) -> tuple[float, float, list[float]]:
    cpu, started = time.process_time(), time.perf_counter()
    verdicts = await pool.verify(items)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    bad = [v for v in verdicts if v.status != candidate_pb2.VERDICT_STATUS_PASSED]
    if bad or [v.candidate_id for v in verdicts] != [cid for cid, _ in items]:
        raise AssertionError(f"pool: {len(bad)} verdicts not PASSED or out of order: {bad[:1]}")
    return seconds, cpu, [v.score for v in verdicts]


async def run(args: argparse.Namespace) -> None:
    items = make_items(args.candidates)
    in_flight = args.in_flight or CommandSpec(argv=("-",)).in_flight
    pool = CommandPool(
        CommandSpec(argv=(sys.executable, WORKER), workers=args.workers, in_flight=in_flight)
    )
    await pool.start()
    try:
        await pool_round(pool, items[:200])  # workers up and warm
        await plain_round(items[:200], args.workers)
        samples: dict[str, list[float]] = {"plain": [], "pool": [], "plain_cpu": [], "pool_cpu": []}
        ratios = []
        for round_ in range(args.rounds):
            sides = ["plain", "pool"] if round_ % 2 == 0 else ["pool", "plain"]
            results = {}
            for side in sides:
                if side == "plain":
                    results[side] = await plain_round(items, args.workers)
                else:
                    results[side] = await pool_round(pool, items)
            if results["plain"][2] != results["pool"][2]:
                raise AssertionError("plain loop and pool disagree on the scores")
            for side, (seconds, cpu, _) in results.items():
                samples[side].append(len(items) / seconds)
                samples[f"{side}_cpu"].append(cpu / len(items) * 1e6)
            ratios.append(samples["pool"][-1] / samples["plain"][-1])
    finally:
        await pool.close()
    print(
        f"command oracle, {args.candidates:,} candidates of 10 reals, {args.workers} workers,"
        f" in_flight {in_flight}, median of {args.rounds} alternating rounds"
    )
    print(
        f"  plain loop (baseline: {args.workers} processes of the same worker, json.dumps per"
        " request + json.loads per verdict, readline loop)"
    )
    for side in ("plain", "pool"):
        print(
            f"  {side:6s} {statistics.median(samples[side]):>10,.0f} candidates/s"
            f"  {statistics.median(samples[side + '_cpu']):6.1f} µs parent CPU/candidate"
        )
    print(
        f"  pool/plain {statistics.median(ratios):.2f}x (per-round ratios:"
        f" {', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.8x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--in-flight", type=int, default=0, help="default: CommandSpec's")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
