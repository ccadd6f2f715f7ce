"""Resident memory of `helix run` over a 1,000,000-evaluation run: flat after warm-up?

Runs `helix run benchmarks/dna/sphere-10d.yaml --oracle sphere --budget N` (population
1,000; N = `--budget`, default 1,000,000) as a child process (benchmarks/helix_cli.py): the
embedded suite with the orchestrator, generator, oracle agent (writing its verdict report)
and registry, and the client watching the run, all in that one process. Every `--interval`
seconds (default 1) this script reads the child's VmRSS from /proc/PID/status. Afterwards
each sample is placed on the run's evaluation count by the per-generation times of the
run's convergence.json (linear between generations).

Reports the RSS at warm-up (the first sample at or after `--warmup` of the evaluations,
default 10%), the last sample while the run was RUNNING (the end), their ratio (target:
within +-10%), and the lowest and highest RSS after warm-up. `--tracemalloc` instead runs
the same command in this process with tracemalloc on and prints the allocation sites whose
live memory grew most between warm-up and the end (to find what grows when RSS does; it
runs several times slower).

    python benchmarks/bench_memory.py [--budget 1000000] [--interval 1] [--warmup 0.1]
        [--tracemalloc] [--out benchmarks/results/memory.md]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import helix_cli

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "memory.md"
DNA = helix_cli.BENCH_DNA_DIR / "sphere-10d.yaml"
ORACLE = "sphere"
TOLERANCE = 0.10


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a live process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass(frozen=True)
class Sample:
    time: float  # unix seconds
    rss: int
    evaluations: float = 0.0


def place(samples: list[Sample], progress: list[tuple[int, float]]) -> list[Sample]:
    """Each sample with the run's evaluation count at its time: linear between the
    generations' (evaluations, time) points; 0 before the first, the last after it."""
    if not progress:
        return samples
    times = [t for _, t in progress]
    out = []
    for sample in samples:
        i = bisect.bisect_right(times, sample.time)
        if i == 0:
            evaluations = 0.0
        elif i == len(progress):
            evaluations = float(progress[-1][0])
        else:
            (e0, t0), (e1, t1) = progress[i - 1], progress[i]
            evaluations = e0 + (e1 - e0) * (sample.time - t0) / max(t1 - t0, 1e-9)
        out.append(Sample(sample.time, sample.rss, evaluations))
    return out


@dataclass
class Verdict:
    warm: Sample
    end: Sample
    low: Sample
    high: Sample

    @property
    def ratio(self) -> float:
        return self.end.rss / self.warm.rss

    @property
    def within(self) -> bool:
        return abs(self.ratio - 1.0) <= TOLERANCE


def judge(samples: list[Sample], run: helix_cli.HelixRun, warmup: float) -> Verdict:
    """Warm-up and end samples (module docstring)."""
    running = [s for s in samples if s.time <= run.end]
    threshold = warmup * run.evaluations
    after = [s for s in running if s.evaluations >= threshold]
    if not after:
        raise RuntimeError(
            f"no RSS sample after {warmup:.0%} of the evaluations while the run was running "
            f"({len(samples)} samples): use a larger --budget or a shorter --interval"
        )
    return Verdict(
        after[0],
        after[-1],
        min(after, key=lambda s: s.rss),
        max(after, key=lambda s: s.rss),
    )


def sample_run(
    budget: int, seed: int, interval: float, scratch: Path
) -> tuple[helix_cli.HelixRun, list[Sample]]:
    started = helix_cli.start_helix(DNA, ORACLE, budget, seed, scratch / "run")
    pid = started.process.pid
    samples: list[Sample] = []
    try:
        while started.process.poll() is None:
            rss = rss_bytes(pid)
            if rss is not None:
                samples.append(Sample(time.time(), rss))
            time.sleep(interval)
    except BaseException:
        helix_cli.stop(started)
        raise
    run = helix_cli.finish_helix(started)
    return run, place(samples, run.progress)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _at(sample: Sample) -> str:
    return f"{_mib(sample.rss)} at {sample.evaluations:,.0f} evaluations"


Sizes = dict[tuple[str, int], tuple[int, int]]  # (file, line) -> (bytes, blocks)


def _sizes(snapshot: tracemalloc.Snapshot) -> Sizes:
    # Not the snapshots this module keeps, nor tracemalloc's own.
    mine = snapshot.filter_traces(
        [
            tracemalloc.Filter(False, __file__),
            tracemalloc.Filter(False, tracemalloc.__file__),
        ]
    )
    return {
        (stat.traceback[0].filename, stat.traceback[0].lineno): (stat.size, stat.count)
        for stat in mine.statistics("lineno")
    }


def _where(filename: str) -> str:
    """A source file as services/helix/..., grpc/... (site-packages) or the stdlib name."""
    path = Path(filename)
    if path.is_relative_to(helix_cli.ROOT) and ".venv" not in path.parts:
        return str(path.relative_to(helix_cli.ROOT))
    at = filename.find("site-packages/")
    return filename[at + len("site-packages/") :] if at >= 0 else path.name


def trace_allocations(budget: int, seed: int, scratch: Path, warmup: float, top: int) -> list[str]:
    """The run in this process under tracemalloc: the `top` allocation sites (file:line of
    the allocating frame) whose live memory grew most from warm-up to the end, the two
    snapshots chosen as the RSS samples are (`judge`), among snapshots taken every 2 s."""
    from helix.cli.main import main as helix_main

    out = scratch / "traced"
    argv = helix_cli.command(DNA, ORACLE, budget, seed, out)[3:]
    taken: list[tuple[float, Sizes]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(2.0):
            taken.append((time.time(), _sizes(tracemalloc.take_snapshot())))

    tracemalloc.start(1)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        status = helix_main(argv)
    finally:
        done.set()
        thread.join()
        tracemalloc.stop()
    if status != 0:
        raise RuntimeError(f"helix run exited {status}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    points = json.loads((out / "convergence.json").read_text(encoding="utf-8"))["points"]
    run = helix_cli.HelixRun(summary, 0.0, out, 0, [(p["evaluations"], p["time"]) for p in points])
    placed = place([Sample(t, i) for i, (t, _) in enumerate(taken)], run.progress)
    verdict = judge(placed, run, warmup)
    warm, end = taken[verdict.warm.rss][1], taken[verdict.end.rss][1]
    grown = sorted(
        ((end.get(k, (0, 0))[0] - warm.get(k, (0, 0))[0], k) for k in set(warm) | set(end)),
        reverse=True,
    )
    lines = [
        f"snapshots at {verdict.warm.evaluations:,.0f} and {verdict.end.evaluations:,.0f} "
        f"evaluations; traced memory {sum(v[0] for v in warm.values()) / 2**20:,.1f} -> "
        f"{sum(v[0] for v in end.values()) / 2**20:,.1f} MiB"
    ]
    for size, key in grown[:top]:
        blocks = end.get(key, (0, 0))[1] - warm.get(key, (0, 0))[1]
        lines.append(f"- {size / 2**20:+.3f} MiB ({blocks:+,} blocks) `{_where(key[0])}:{key[1]}`")
    return lines


TRACED = "## Python allocations (tracemalloc)"


def sections(text: str) -> tuple[str, dict[str, str]]:
    """A results file as its head and its `## ` sections (title line -> whole section)."""
    head, found, title = [], {}, ""
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            title = line.rstrip("\n")
            found[title] = ""
        if title:
            found[title] += line
        else:
            head.append(line)
    return "".join(head), found


def rewrite(path: Path, head: str | None = None, section: tuple[str, str] | None = None) -> None:
    """Write `path` with a new head and/or one section replaced, keeping the others (the
    tracemalloc section, a hand-written `## Analysis`)."""
    old_head, found = sections(path.read_text(encoding="utf-8") if path.is_file() else "")
    if section is not None:
        found[section[0]] = section[1]
    parts = [(head if head is not None else old_head).rstrip("\n") + "\n"]
    parts += ["\n" + body.strip("\n") + "\n" for body in found.values()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--budget", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=0.1)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--arena-max",
        type=int,
        help="run helix with MALLOC_ARENA_MAX set to this (glibc's limit on malloc arenas)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not 0 < args.warmup < 1 or args.interval <= 0 or args.budget < 1:
        parser.error("--warmup must be in (0, 1), --interval and --budget positive")
    if args.arena_max is not None:
        os.environ["MALLOC_ARENA_MAX"] = str(args.arena_max)  # the child inherits it
    started = time.perf_counter()
    command = " ".join(["python benchmarks/bench_memory.py", *(argv or sys.argv[1:])])
    with tempfile.TemporaryDirectory(prefix="helix-bench-memory-") as scratch:
        if args.tracemalloc:
            grown = trace_allocations(args.budget, args.seed, Path(scratch), args.warmup, args.top)
            text = "\n".join(
                [
                    f"`{command}`: the same run in the benchmark's own process with "
                    "tracemalloc on (1 frame). Python allocation sites whose live memory grew "
                    "most from warm-up to the end (NumPy's arrays are traced; protobuf's upb "
                    "arenas, gRPC's C core, SQLite and the allocator's own overhead are not):",
                    "",
                    *grown,
                ]
            )
            rewrite(args.out, section=(TRACED, f"{TRACED}\n\n{text}\n"))
            print(text)
            report: dict[str, Any] = {"bench": "memory", "tracemalloc": grown}
            print(json.dumps(report))
            return report
        run, samples = sample_run(args.budget, args.seed, args.interval, Path(scratch))
    elapsed = time.perf_counter() - started
    verdict = judge(samples, run, args.warmup)
    rate = run.evaluations / run.running_seconds
    lines = [
        f"- run: {run.evaluations:,} evaluations in {int(run.summary['generations']):,} "
        f"generations, {run.running_seconds:.1f} s running ({rate:,.0f} evaluations/s), "
        f"best {run.best:.3g}; {len(samples)} RSS samples, one per {args.interval:g} s",
        f"- RSS after warm-up ({args.warmup:.0%} of the evaluations): {_at(verdict.warm)}",
        f"- RSS at the end (last sample while running): {_at(verdict.end)}",
        f"- end / warm-up: **{verdict.ratio:.3f}** (target within +-{TOLERANCE:.0%}: "
        f"{'met' if verdict.within else 'missed'})",
        f"- after warm-up: lowest {_at(verdict.low)}, highest {_at(verdict.high)}",
    ]
    # The RSS curve, about 20 points, for the record.
    step = max(1, len(samples) // 20)
    curve = ", ".join(
        f"{s.evaluations / 1000:,.0f}k: {s.rss / 2**20:,.0f}" for s in samples[::step]
    )
    document = [
        "# Resident memory over a long run",
        "",
        f"`{command}`: {elapsed:.0f} s on this machine (2 cores, shared with other work "
        "while it ran). `helix run benchmarks/dna/sphere-10d.yaml --oracle sphere` "
        f"(population 1,000, budget {args.budget:,}), the embedded suite in the child "
        "process; its VmRSS sampled from /proc"
        + (
            f"; the child run with MALLOC_ARENA_MAX={args.arena_max}."
            if args.arena_max is not None
            else " (glibc's default arenas; its mmap and trim thresholds fixed by the `helix`"
            " entry point)."
        ),
        "",
        *lines,
        "",
        f"RSS in MiB by evaluations: {curve}",
    ]
    rewrite(args.out, head="\n".join(document) + "\n")
    print(f"resident memory over {run.evaluations:,} evaluations (written to {args.out})")
    print("\n".join(lines))
    report = {
        "bench": "memory",
        "budget": args.budget,
        "evaluations": run.evaluations,
        "running_seconds": round(run.running_seconds, 2),
        "samples": len(samples),
        "warm_rss": verdict.warm.rss,
        "warm_evaluations": round(verdict.warm.evaluations),
        "end_rss": verdict.end.rss,
        "end_evaluations": round(verdict.end.evaluations),
        "low_rss": verdict.low.rss,
        "high_rss": verdict.high.rss,
        "ratio": verdict.ratio,
        "within": verdict.within,
        "seconds": round(elapsed, 1),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
