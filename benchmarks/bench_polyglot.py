"""The Node.js oracle agent (examples/node/oracle_agent.js) against the Python oracle agent
hosting the same `knapsack-node`, in this one script run.

1. Verify throughput (candidates/s). Every one of the 1,024 genomes of the knapsack DNA (one
   bits gene of 10), in batches of `--batch` (default 256), `--passes` times per
   repetition, through the unary Verify RPC (one batch at a time) and through one
   VerifyStream per repetition (the credit protocol: a batch is sent as soon as the credit
   covers it; the stream is opened, and its first credit read, before the clock starts).
   Two ends, each asked directly on its own address:
   (a) the Python oracle agent of `helix up`: `knapsack-node` of examples/oracles/oracles.yaml
       (`kind: command`, examples/oracles/node_worker.js in 2 worker processes, JSON Lines
       over pipes) — the baseline;
   (b) the Node agent: the same worker file's `judge` in its own process.
   Caches are off on both ends, so that every candidate of every pass is judged: there are
   only 1,024 genomes and a cache would answer every pass after the first. The Python
   oracle gets `cache: false` (and the server `oracle_cache_bytes=0`), the Node agent
   `--cache-entries 0`; every verdict is checked to be `cached: false`. Both get a
   capacity of `--batch` and a stream share of 1, so that one batch fits either way.
2. A whole run: `helix run examples/dna/knapsack.yaml --oracle knapsack-node --generations
   N --seed S` against a `helix up` suite hosting `knapsack-node` as the examples configure
   it (capacity 64, the same config hash), first with its Python agent alone, then with the
   Node agent registered too (started before the run, stopped after it). Both verdict
   caches are off here too (the server's `oracle_cache_bytes=0`, which leaves the hash as
   it is, and `--cache-entries 0`): with the same seed every run asks the same candidates,
   and a Python cache kept from the runs before would answer them all while a new Node
   agent judges them; so every run does the same work. Reported: the
   run's wall time and evaluations/s as `helix run --json` gives them (CreateRun to the
   run's end), whether every run's outcome is identical (state, generations,
   evaluations, duplicates, best id and score), and the share of the candidates the Node
   agent verified (its own count, printed when it stops, over its count plus the Python
   agent's verdict report for the run).

A warm-up (one pass or run of each kind, not counted) comes first; medians of `--repeats`
repetitions are reported, the two ends alternating, with the ratios Node / Python. Prints a
table and one JSON line, writes Markdown to `--out` (keeping its `## Analysis`).

    python benchmarks/bench_polyglot.py [--repeats 5] [--passes 8] [--batch 256]
        [--run-repeats 3] [--generations 200] [--seed 7] [--out benchmarks/results/polyglot.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helix_cli import kept_analysis  # noqa: E402

import helix.v1.candidate_pb2 as candidate_pb2  # noqa: E402
import helix.v1.dna_pb2 as dna_pb2  # noqa: E402
import helix.v1.oracle_pb2 as oracle_pb2  # noqa: E402
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc  # noqa: E402
from helix.genome.codec import genome_id  # noqa: E402

from harness import HELIX, Cluster, Processes, RunningProcess, clean_env, run_command  # noqa: E402
from node_support import (  # noqa: E402
    DNA_DIR,
    NODE,
    NODE_DIR,
    ORACLE,
    STOP_WITHIN,
    config_hash,
    python_verdicts_for,
    start_agent,
    write_knapsack_config,
)
from waiting import eventually  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "polyglot.md"
GENOMES = 1024  # every genome of one bits gene of 10
KNAPSACK = dna_pb2.Dna(
    name="dnas/knapsack", genes=[dna_pb2.Gene(name="take", bits=dna_pb2.BitsGene(size=10))]
)
VERIFY_SCOPES = ("verify", "oracles.read")
NO_CACHE = ("--cache-entries", "0")  # the Node agent's cache off
# The Node agent's last line when it stops (examples/node/oracle_agent.js).
NODE_SUMMARY = re.compile(
    r"^verified (\d+) candidates \((\d+) judged, (\d+) from cache\) in (\d+) batches$"
)
# What identifies a run's outcome in `helix run --json`: equal for equal seeds.
OUTCOME_KEYS = (
    "state",
    "stop_reason",
    "generations",
    "evaluations",
    "duplicates",
    "failed",
    "errors",
    "oracle_config_hash",
    "best_candidate_id",
    "best_score",
)


class BenchError(RuntimeError):
    """The benchmark could not measure what it measures (said plainly)."""


# --- 1. Verify throughput --------------------------------------------------------------------


def all_batches(size: int) -> list[list[candidate_pb2.Candidate]]:
    """Every genome of the DNA as a candidate (with its id), in batches of `size`."""
    every = []
    for flags in range(GENOMES):
        genome = candidate_pb2.Genome(bits=bytes([flags & 0xFF, flags >> 8]))
        every.append(candidate_pb2.Candidate(id=genome_id(genome), genome=genome))
    return [every[i : i + size] for i in range(0, GENOMES, size)]


def checked(
    verdicts: Sequence[candidate_pb2.Verdict], sent: Sequence[candidate_pb2.Candidate]
) -> int:
    """The number of verdicts, after checking they answer `sent` and none came from a cache."""
    if [v.candidate_id for v in verdicts] != [c.id for c in sent]:
        raise BenchError("the verdicts do not answer the candidates sent, in order")
    if any(v.cached for v in verdicts):
        raise BenchError("a verdict came from a cache: the throughput would be faked")
    return len(verdicts)


async def unary_pass(
    stub: oracle_pb2_grpc.OracleServiceAsyncStub, batches: list[list[candidate_pb2.Candidate]]
) -> float:
    """Seconds to verify `batches` one Verify call after the other."""
    started = time.perf_counter()
    for batch in batches:
        request = oracle_pb2.VerifyRequest(oracle=ORACLE, dna=KNAPSACK, candidates=batch)
        answer = await stub.Verify(request, timeout=60)
        checked(answer.verdicts, batch)
    return time.perf_counter() - started


async def stream_pass(
    stub: oracle_pb2_grpc.OracleServiceAsyncStub,
    batches: list[list[candidate_pb2.Candidate]],
    hash_: str,
) -> float:
    """Seconds to verify `batches` through one VerifyStream: each batch sent as soon as the
    credit covers it. The stream's open and first credit are before the clock starts."""
    call = stub.VerifyStream(timeout=120)
    await call.write(
        oracle_pb2.VerifyStreamRequest(
            open=oracle_pb2.VerifyStreamOpen(oracle=ORACLE, dna=KNAPSACK, config_hash=hash_)
        )
    )
    first = await call.read()
    if not isinstance(first, oracle_pb2.VerifyStreamResponse) or not first.HasField("credit"):
        raise BenchError(f"VerifyStream opened without a credit: {first!r}")
    credit = first.credit.candidates
    if credit < max(len(b) for b in batches):
        raise BenchError(f"a stream's credit ({credit}) does not cover a batch")
    sent: dict[int, list[candidate_pb2.Candidate]] = {}
    waiting = list(enumerate(batches, start=1))
    started = time.perf_counter()
    while waiting or sent:
        while waiting and credit >= len(waiting[0][1]):
            batch_id, batch = waiting.pop(0)
            batch_request = oracle_pb2.VerifyBatch(batch_id=batch_id, candidates=batch)
            await call.write(oracle_pb2.VerifyStreamRequest(batch=batch_request))
            sent[batch_id] = batch
            credit -= len(batch)
        message = await call.read()
        if not isinstance(message, oracle_pb2.VerifyStreamResponse):
            raise BenchError("VerifyStream ended before answering every batch")
        if message.HasField("credit"):
            credit += message.credit.candidates
        else:
            checked(message.verdicts.verdicts, sent.pop(message.verdicts.batch_id))
    elapsed = time.perf_counter() - started
    await call.done_writing()
    # Credits given back after the last verdicts may follow; then the stream ends OK.
    while (rest := await call.read()) is not grpc.aio.EOF:
        if not isinstance(rest, oracle_pb2.VerifyStreamResponse) or not rest.HasField("credit"):
            raise BenchError(f"VerifyStream sent more than its verdicts: {rest!r}")
    if await call.code() != grpc.StatusCode.OK:
        raise BenchError(f"VerifyStream ended {await call.code()}: {await call.details()}")
    return elapsed


@dataclass
class Throughput:
    """Candidates/s of each repetition, per end and RPC."""

    candidates: int  # per repetition
    rates: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def median(self, end: str, rpc: str) -> float:
        return statistics.median(self.rates[(end, rpc)])


def verify_config(directory: Path, batch: int) -> Path:
    """knapsack-node of the examples, with no cache and a capacity of one batch."""
    config = write_knapsack_config(directory)
    document = yaml.safe_load(config.read_text())
    document["oracles"]["knapsack-node"].update({"cache": False, "capacity": batch})
    config.write_text(yaml.safe_dump(document))
    return config


async def measure_verify(
    root: Path, processes: Processes, args: argparse.Namespace
) -> tuple[Throughput, str]:
    """Part 1 (module docstring); also the Python agent's hash with these settings."""
    config = verify_config(root / "verify-oracles", args.batch)
    cluster = Cluster(
        "embedded",
        root / "verify-data",
        dna_dir=DNA_DIR,
        settings={"oracle_config": config, "oracle_stream_share": 1, "oracle_cache_bytes": 0},
        processes=processes,
    )
    await cluster.start()
    try:
        hash_ = await config_hash(config)
        extra = ["--capacity", str(args.batch), "--stream-share", "1", *NO_CACHE]
        agent = await start_agent(cluster, processes, hash_, agent_id="bench-node", extra=extra)
        ends = {
            "python": cluster.address_of("oracle"),
            "node": agent.address,
        }
        stubs = {
            end: oracle_pb2_grpc.OracleServiceStub(
                cluster.channel("oracle", "bench", VERIFY_SCOPES, address=address)
            )
            for end, address in ends.items()
        }
        batches = all_batches(args.batch)
        result = Throughput(GENOMES * args.passes)

        async def repetition(end: str, rpc: str) -> float:
            seconds = 0.0
            for _ in range(args.passes):
                if rpc == "Verify":
                    seconds += await unary_pass(stubs[end], batches)
                else:
                    seconds += await stream_pass(stubs[end], batches, hash_)
            return result.candidates / seconds

        for rpc in ("Verify", "VerifyStream"):
            for end in ends:
                await repetition(end, rpc)  # warm-up: workers started, code paths hot
            for _ in range(args.repeats):
                for end in ends:  # alternating, so that drift hits both alike
                    result.rates.setdefault((end, rpc), []).append(await repetition(end, rpc))
        # Every candidate sent to the Node agent was judged, none answered from a cache.
        rounds = (args.repeats + 1) * 2  # warm-up and repetitions, Verify and VerifyStream
        if await stop_agent(agent) != rounds * result.candidates:
            raise BenchError("the Node agent verified other than the candidates sent to it")
    finally:
        await cluster.close()
    return result, hash_


# --- 2. Whole runs ---------------------------------------------------------------------------


@dataclass
class Run:
    """One `helix run`: its summary, and what the Node agent verified (None: not there)."""

    summary: dict[str, Any]
    node_verified: int | None = None
    python_verified: int = 0

    @property
    def outcome(self) -> tuple[object, ...]:
        return tuple(self.summary[key] for key in OUTCOME_KEYS)

    @property
    def node_share(self) -> float:
        total = (self.node_verified or 0) + self.python_verified
        return (self.node_verified or 0) / total if total else 0.0


async def stop_agent(agent: RunningProcess) -> int:
    """SIGTERM the Node agent; the candidates it verified (its last line says), after
    checking that it judged every one of them (its cache is off: none came from it)."""
    code = await agent.stop(STOP_WITHIN)
    found = NODE_SUMMARY.match(agent.lines[-1]) if agent.lines else None
    if code != 0 or not found:
        raise BenchError(agent.describe(f"exited {code} without its summary line"))
    verified, judged = int(found[1]), int(found[2])
    if judged != verified:
        raise BenchError(f"the Node agent judged {judged} of the {verified} it verified")
    return verified


async def python_verified(data_dir: Path, run: str, expected: int) -> int:
    """The verdicts the Python agent reported for `run`, once they number `expected`: the
    run's evaluations less the Node agent's (its report is written behind the verdicts)."""

    def reported() -> tuple[int] | None:  # a tuple: a count of 0 is an answer too
        count = python_verdicts_for(data_dir, run)
        return (count,) if count == expected else None

    what = f"the Python agent's report holding {expected} verdicts of {run}"
    (count,) = await eventually(reported, within=30, what=what, interval=0.05)
    return count


async def helix_run(cluster: Cluster, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`helix run` of knapsack against `cluster`, to its end: its --json summary."""
    argv = [HELIX, "run", str(DNA_DIR / "knapsack.yaml"), "--oracle", "knapsack-node"]
    argv += ["--generations", str(args.generations), "--seed", str(args.seed), "--json"]
    argv += ["--out", str(out), "--address", cluster.address_of("orchestrator")]
    argv += ["--data-dir", str(cluster.data_dir)]
    code, stdout, stderr = await run_command(argv, clean_env(), within=600)
    if code != 0:
        raise BenchError(f"helix run exited {code}: {stderr.strip()[-2000:]}")
    summary: dict[str, Any] = json.loads(stdout)
    return summary


async def measure_runs(
    root: Path, processes: Processes, args: argparse.Namespace
) -> tuple[dict[str, list[Run]], str]:
    """Part 2 (module docstring): runs per setup ("python", "python+node"), warm-ups left
    out; and the config hash of the examples' knapsack-node."""
    config = write_knapsack_config(root / "run-oracles")
    cluster = Cluster(
        "embedded",
        root / "run-data",
        dna_dir=DNA_DIR,
        settings={"oracle_config": config, "oracle_cache_bytes": 0},
        processes=processes,
    )
    await cluster.start()
    runs: dict[str, list[Run]] = {"python": [], "python+node": []}
    try:
        hash_ = await config_hash(config)
        for i in range(args.run_repeats + 1):  # the first of each is the warm-up
            for setup in runs:
                agent = None
                if setup == "python+node":
                    agent = await start_agent(
                        cluster, processes, hash_, agent_id=f"bench-node-{i}", extra=NO_CACHE
                    )
                summary = await helix_run(cluster, root / "runs" / f"{setup}-{i}", args)
                run = Run(summary)
                if agent is not None:
                    run.node_verified = await stop_agent(agent)
                run.python_verified = await python_verified(
                    cluster.data_dir,
                    summary["run"],
                    int(summary["evaluations"]) - (run.node_verified or 0),
                )
                if i > 0:
                    runs[setup].append(run)
    finally:
        await cluster.close()
    return runs, hash_


# --- the report ------------------------------------------------------------------------------


def machine() -> str:
    cores = os.cpu_count() or 0
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cores} cores, load average {load} (1, 5, 15 min) at the start"


def verify_table(t: Throughput, args: argparse.Namespace) -> list[str]:
    lines = [
        "| RPC | Python agent (command oracle) | Node agent | Node / Python |",
        "|---|---|---|---|",
    ]
    for rpc in ("Verify", "VerifyStream"):
        python, node = t.median("python", rpc), t.median("node", rpc)
        lines.append(f"| {rpc} | {python:,.0f} | {node:,.0f} | **{node / python:.2f}x** |")
    lines.append("")
    lines.append(
        f"Candidates/s, median of {args.repeats} repetitions of {t.candidates:,} candidates "
        f"({args.passes} passes over the {GENOMES:,} genomes in batches of {args.batch}), "
        "caches off."
    )
    return lines


def run_table(runs: dict[str, list[Run]]) -> list[str]:
    python, both = runs["python"], runs["python+node"]
    wall = {k: statistics.median(r.summary["wall_seconds"] for r in v) for k, v in runs.items()}
    rate = {
        k: statistics.median(r.summary["evaluations_per_second"] for r in v)
        for k, v in runs.items()
    }
    share = statistics.median(r.node_share for r in both)
    first = python[0].summary
    return [
        "| agents | wall s | evaluations/s | Node agent's share |",
        "|---|---|---|---|",
        f"| Python | {wall['python']:.2f} | {rate['python']:,.0f} | - |",
        f"| Python + Node | {wall['python+node']:.2f} | {rate['python+node']:,.0f} "
        f"| {100 * share:.0f}% |",
        f"| (Python + Node) / Python | **{wall['python+node'] / wall['python']:.2f}x** "
        f"| **{rate['python+node'] / rate['python']:.2f}x** | |",
        "",
        f"Medians of {len(python)} runs each. Outcome of every run "
        f"{'identical' if identical(runs) else 'NOT identical'}: {first['generations']} "
        f"generations, {first['evaluations']:,} evaluations, {first['duplicates']:,} "
        f"duplicates, best {first['best_candidate_id']} score {first['best_score']:g}. "
        "Node agent's share per run: "
        + ", ".join(
            f"{r.node_verified or 0}/{(r.node_verified or 0) + r.python_verified}" for r in both
        )
        + " candidates.",
    ]


def identical(runs: dict[str, list[Run]]) -> bool:
    return len({r.outcome for setup in runs.values() for r in setup}) == 1


def missing_node() -> str:
    """What is missing to run the Node agent, or ""."""
    if NODE is None:
        return "node (Node.js >= 20) is not on the PATH"
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return f"{NODE_DIR}/node_modules is missing: run `npm ci --prefix {NODE_DIR}`"
    return ""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Verify repetitions [5]")
    parser.add_argument("--passes", type=int, default=8, help="passes over the genomes [8]")
    parser.add_argument("--batch", type=int, default=256, help="candidates per batch [256]")
    parser.add_argument("--run-repeats", type=int, default=3, help="runs of each setup [3]")
    parser.add_argument("--generations", type=int, default=200, help="generations a run [200]")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for name in ("repeats", "passes", "run_repeats", "generations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.batch <= GENOMES:
        parser.error(f"--batch must be within 1..{GENOMES}")
    missing = missing_node()
    if missing:  # as bench_run_store does without etcd: `make bench` goes on
        print(f"bench_polyglot: {missing}; skipped")
        return {"bench": "polyglot", "skipped": missing}
    facts = machine()
    started = time.perf_counter()
    return asyncio.run(_main(args, argv, facts, started))


async def _main(
    args: argparse.Namespace, argv: list[str] | None, facts: str, started: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="helix-bench-polyglot-") as tmp:
        root = Path(tmp)
        async with Processes(root / "logs") as processes:
            throughput, verify_hash = await measure_verify(root, processes, args)
            runs, run_hash = await measure_runs(root, processes, args)
    elapsed = time.perf_counter() - started
    verify = verify_table(throughput, args)
    whole = run_table(runs)
    command = " ".join(
        ["python benchmarks/bench_polyglot.py", *(sys.argv[1:] if argv is None else argv)]
    )
    document = [
        "# The Node.js oracle agent against the Python oracle agent",
        "",
        f"`{command}`: {elapsed:.0f} s on this machine: {facts}. The baseline is the Python "
        "oracle agent, measured in the same script run; settings in "
        "benchmarks/bench_polyglot.py's docstring.",
        "",
        "## Verify throughput",
        "",
        "Both ends judge with the same `judge` of examples/oracles/node_worker.js: the Python "
        "agent in 2 Node.js worker processes it feeds JSON Lines (`kind: command`), the Node "
        "agent in its own process. Each end is called directly on its address, one call (or "
        "batch) at a time, with a token checked by both. There are only 1,024 genomes, so "
        "caches are turned off rather than the genomes varied: the Python oracle with "
        "`cache: false` and `oracle_cache_bytes=0`, the Node agent with `--cache-entries "
        "0`, and every verdict is checked to be `cached: false`. Both get a capacity of one "
        f"batch ({args.batch}) and a stream share of 1 (config hash {verify_hash[:12]}..., "
        "given to the Node agent).",
        "",
        *verify,
        "",
        "## A whole run",
        "",
        f"`helix run examples/dna/knapsack.yaml --oracle knapsack-node --generations "
        f"{args.generations} --seed {args.seed}` against `helix up` hosting `knapsack-node` "
        f"as examples/oracles/oracles.yaml configures it (capacity 64, config hash "
        f"{run_hash[:12]}...), with its Python agent alone, then with the Node agent "
        "registered too (started before each run, stopped after it). Both caches are off "
        "(`oracle_cache_bytes=0` on the server, `--cache-entries 0`): the same seed asks the "
        "same candidates in every run, and a Python cache kept from the runs before would "
        "answer all of them. Wall time and evaluations/s as `helix run --json` reports them "
        "(CreateRun to the run's end). The Node agent's share: what it verified (its own "
        "count) over that plus the Python agent's verdict report for the run.",
        "",
        *whole,
        "",
        "## Not measured",
        "",
        "- Concurrent callers or several streams at once in part 1 (one caller, one batch "
        "in flight; the Python agent hands candidates to 2 worker processes, the Node agent "
        "judges on its own event loop).",
        "- Cache hits (caches are off throughout).",
        "- Costlier oracles: knapsack's `judge` takes microseconds, so part 1 measures each "
        "end's per-candidate overhead (gRPC, checks, ids, worker IPC), not the judging.",
        "- Startup times of either agent, TLS, memory.",
        *kept_analysis(args.out),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(document) + "\n", encoding="utf-8")
    print(f"polyglot oracle agents, {elapsed:.0f} s, {facts} (written to {args.out})")
    print("\n".join([*verify, "", *whole]))
    python, both = runs["python"], runs["python+node"]
    report: dict[str, Any] = {
        "bench": "polyglot",
        "seconds": round(elapsed, 1),
        "cores": os.cpu_count(),
        "verify_candidates_per_second": {
            f"{end}/{rpc}": throughput.median(end, rpc)
            for end in ("python", "node")
            for rpc in ("Verify", "VerifyStream")
        },
        "verify_node_over_python": {
            rpc: throughput.median("node", rpc) / throughput.median("python", rpc)
            for rpc in ("Verify", "VerifyStream")
        },
        "run_wall_seconds": {
            "python": statistics.median(r.summary["wall_seconds"] for r in python),
            "python+node": statistics.median(r.summary["wall_seconds"] for r in both),
        },
        "run_evaluations_per_second": {
            "python": statistics.median(r.summary["evaluations_per_second"] for r in python),
            "python+node": statistics.median(r.summary["evaluations_per_second"] for r in both),
        },
        "run_identical": identical(runs),
        "run_outcomes": [dict(zip(OUTCOME_KEYS, r.outcome, strict=True)) for r in python + both],
        "node_verified": [r.node_verified for r in both],
        "python_verified": [r.python_verified for r in both],
        "node_share": statistics.median(r.node_share for r in both),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
