"""Search throughput through `helix cluster up` against the number of oracle worker processes.

For each W in `--workers` (default "1 2"): `helix cluster up --oracles W --generators 1
--port 0` on a fresh data dir (gateway in the supervisor, registry, orchestrator, one
generator agent, W oracle agents: every one a process of its own), then `helix run
benchmarks/dna/sphere-10d.yaml --oracle cpu --address GATEWAY --data-dir DATA_DIR --json`
as a client process: one warm-up run of `--warmup` evaluations, then `--repeats` timed
runs of `--budget` x W evaluations (the same seconds of work per point); the figure is the
median `evaluations_per_second` those runs print (evaluations over CreateRun-to-end
seconds). The cluster is stopped by SIGTERM between points.

The oracle (benchmarks/cpu_oracle.py) is CPU-bound: a `kind: python` batch entry point
that burns `--cost` (1 ms) of CPU per candidate in a busy loop calibrated once here by
`time.process_time`, then scores sphere. `workers: 1` per agent, so W agents = W worker
processes doing the CPU work; `in_flight: 64` gives each agent's VerifyStream a window of
32 candidates (half its capacity), so a worker always has the next batch waiting; `cache:
false` and a fresh seed per run so no verdict is ever a cache hit.

Reported: speed-up(W) = evals/s(W) / evals/s(1), efficiency = speed-up / W (the ideal is
the linear line, speed-up W), and the ceiling: one process calling the entry point in a
loop (evaluations/s of the oracle alone, no Helix); and, just before each point's cluster,
the same loop in W processes started together: what the machine itself gives W processes
of this work (on a shared or small machine, less than W times one). The CPU time each process of the
cluster (and the client) used during the timed runs, from /proc/PID/stat utime+stime
before and after, says where the machine's cores went: on a small machine the
orchestrator, generator and gateway compete with the oracle workers for them. A W above
the machine's cores is warned about. Prints a markdown table and one JSON line, writes
`--out` (benchmarks/results/scale.md, keeping its hand-written `## Analysis`) and `--plot`
(scale.png: speed-up against W with the linear line).

    python benchmarks/bench_scale.py [--workers "1 2 4 8 12"] [--budget 20000]
        [--repeats 3] [--warmup 2000] [--cost 1ms] [--out ...] [--plot ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_oracle
import helix_cli
from helix_cli import kept_analysis

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_OUT = RESULTS / "scale.md"
DEFAULT_PLOT = RESULTS / "scale.png"
DNA = helix_cli.BENCH_DNA_DIR / "sphere-10d.yaml"
ORACLE = "cpu"
TARGET_EFFICIENCY = 0.9
START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
READY = re.compile(r"^helix listening on (?P<address>\S+:\d+)$")
STARTED = re.compile(r"^helix cluster: (?P<name>[\w-]+) \(pid (?P<pid>\d+)\) listening on \S+")
ORACLE_CONFIG = """\
oracles:
  cpu:
    kind: python
    description: sphere after CPU_ORACLE_LOOPS of busy loop per candidate (bench_scale)
    entry_point: cpu_oracle:sphere
    batch: true
    workers: 1
    in_flight: 64
    cache: false
    timeout: 60s
    env: [CPU_ORACLE_LOOPS]
    objective: minimize
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cores() -> int:
    """The cores this process may run on (what a worker process can use)."""
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


# --- the oracle alone ------------------------------------------------------------------


@dataclass(frozen=True)
class Ceiling:
    """The entry point called directly in a loop by one process: no Helix at all."""

    evaluations: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.evaluations / self.seconds

    @property
    def cpu_per_evaluation(self) -> float:
        return self.cpu_seconds / self.evaluations


def oracle_alone(loops: int, evaluations: int, processes: int = 1, passes: int = 3) -> Ceiling:
    """`processes` processes (`python cpu_oracle.py`), started together, each calling the
    entry point in a loop on `evaluations` candidates with `loops` of CPU work each: what
    this machine gives W worker processes with no Helix at all. Each pass's rate is the
    evaluations over the slowest process's seconds; the fastest of `passes` passes (the one
    other work on the machine disturbed least) is returned."""
    env = {**os.environ, cpu_oracle.LOOPS_VARIABLE: str(loops)}
    best: Ceiling | None = None
    for _ in range(passes):
        children = [
            subprocess.Popen(
                [sys.executable, "cpu_oracle.py", str(evaluations)],
                cwd=HERE,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        try:
            for child in children:  # all imported and waiting: go
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            results = [child.communicate(timeout=600)[0].split() for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                child.wait()
        if any(
            child.returncode != 0 or len(r) != 3 for child, r in zip(children, results, strict=True)
        ):
            raise RuntimeError(f"cpu_oracle.py failed: {results}")
        passed = Ceiling(
            sum(int(r[0]) for r in results),
            max(float(r[1]) for r in results),
            sum(float(r[2]) for r in results),
        )
        if best is None or passed.rate > best.rate:
            best = passed
    assert best is not None
    return best


# --- CPU time per process ----------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime in seconds) of a live process, else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    # After the command: state ppid ... utime (14th field) stime (15th): indices 11, 12.
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(root: int) -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of `root` and every descendant."""
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    tree = {root: table[root]} if root in table else {}
    grew = True
    while grew:
        grew = False
        for pid, (parent, cpu) in table.items():
            if parent in tree and pid not in tree:
                tree[pid] = (parent, cpu)
                grew = True
    return tree


ROLES = (
    "supervisor + gateway",
    "registry",
    "orchestrator",
    "generator",
    "oracle agents",
    "oracle workers",
    "client (helix run)",
)
OTHERS = "other work on the machine"


def machine_busy() -> float:
    """CPU seconds every core of the machine has been busy (not idle or iowait) since boot,
    from /proc/stat: what other work on a shared machine took is this minus ours."""
    fields = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def role_of(pid: int, tree: dict[int, tuple[int, float]], named: dict[int, str]) -> str:
    """The part of the cluster a process of its tree plays (`named`: the supervisor's
    `listening` lines, pid -> name; a child of an oracle agent is its worker)."""
    name = named.get(pid)
    if name is None:
        parent = tree[pid][0]
        if named.get(parent, "").startswith("oracle-"):
            return "oracle workers"
        return "supervisor + gateway"  # the supervisor itself (or a helper of its)
    if name.startswith("oracle-"):
        return "oracle agents"
    if name.startswith("generator-"):
        return "generator"
    return name if name in ROLES else "supervisor + gateway"


def cpu_by_role(
    before: dict[int, tuple[int, float]],
    after: dict[int, tuple[int, float]],
    named: dict[int, str],
) -> dict[str, float]:
    """CPU seconds each role used between two snapshots of the cluster's tree."""
    used = dict.fromkeys(ROLES, 0.0)
    for pid, (_, cpu) in after.items():
        start = before.get(pid, (0, 0.0))[1]
        used[role_of(pid, after, named)] += cpu - start
    return used


# --- the cluster -----------------------------------------------------------------------


@dataclass
class Cluster:
    """A running `helix cluster up` (module docstring)."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    address: str
    named: dict[int, str]  # pid -> name, from its `listening` lines
    log: Path


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the orderly stop), then kill after STOP_TIMEOUT; reaped either way."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def write_oracle_config(directory: Path) -> Path:
    """The CPU oracle's configuration and module in `directory`; the config file."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "cpu_oracle.py", directory / "cpu_oracle.py")
    config = directory / "oracles.yaml"
    config.write_text(ORACLE_CONFIG, encoding="utf-8")
    return config


def environment(loops: int) -> dict[str, str]:
    env = helix_cli.environment()
    env[cpu_oracle.LOOPS_VARIABLE] = str(loops)
    env["HELIX_LOG_LEVEL"] = "WARNING"
    return env


@contextmanager
def cluster_up(workers: int, loops: int, scratch: Path) -> Iterator[Cluster]:
    """`helix cluster up --oracles W --generators 1 --port 0` on a fresh data dir in
    `scratch`, until its ready line; stopped by SIGTERM on leaving."""
    scratch.mkdir(parents=True, exist_ok=True)
    data_dir = scratch / "data"
    config = write_oracle_config(scratch / "oracle-config")
    argv = [sys.executable, "-m", "helix.cli", "cluster", "up", "--port", "0"]
    argv += ["--data-dir", str(data_dir), "--oracles", str(workers), "--generators", "1"]
    argv += ["--oracle-config", str(config), "--generator-dna-dir", str(helix_cli.BENCH_DNA_DIR)]
    log = scratch / "cluster.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv,
            cwd=helix_cli.ROOT,
            env=environment(loops),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        address = ""
        while not address:
            if process.poll() is not None:
                tail = "\n".join(_read_lines(log)[-30:])
                raise RuntimeError(f"helix cluster up exited {process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"helix cluster up not ready within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)
            for line in _read_lines(log):
                if match := READY.match(line):
                    address = match["address"]
        named = {
            int(m["pid"]): m["name"] for line in _read_lines(log) if (m := STARTED.match(line))
        }
        oracles = sum(name.startswith("oracle-") for name in named.values())
        if oracles != workers:
            raise RuntimeError(f"helix cluster up started {oracles} oracle agents, not {workers}")
        yield Cluster(process, data_dir, address, named, log)
    finally:
        _stop(process)


@dataclass
class Timed:
    """One timed run on the cluster, and the CPU each part used meanwhile."""

    run: helix_cli.HelixRun
    cpu: dict[str, float]
    window: float  # seconds between the two CPU snapshots (the client's whole life)


def run_on(cluster: Cluster, budget: int, seed: int, out: Path) -> Timed:
    """`helix run` (a client process) on the cluster to its end; RuntimeError if it fails."""
    argv = helix_cli.command(
        DNA,
        ORACLE,
        budget,
        seed,
        out,
        ["--address", cluster.address, "--data-dir", str(cluster.data_dir)],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, busy = process_tree(cluster.process.pid), machine_busy()
    began = time.perf_counter()
    with (
        (out.parent / f"{out.name}.stdout").open("wb") as stdout,
        (out.parent / f"{out.name}.stderr").open("wb") as stderr,
    ):
        process = subprocess.Popen(
            argv,
            cwd=helix_cli.ROOT,
            env=helix_cli.environment(),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    run = helix_cli.finish_helix(helix_cli.Started(process, out, began, argv))
    window = time.perf_counter() - began
    after, busy = process_tree(cluster.process.pid), machine_busy() - busy
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_by_role(before, after, cluster.named)
    # The client is the one child reaped meanwhile: its CPU from the children's rusage.
    cpu["client (helix run)"] = (reaped.ru_utime + reaped.ru_stime) - (
        children.ru_utime + children.ru_stime
    )
    # This script's own CPU meanwhile is next to nothing (it waits for the client).
    cpu[OTHERS] = max(0.0, busy - sum(cpu.values()))
    return Timed(run, cpu, window)


@dataclass
class Point:
    """Every timed run at W oracle worker processes."""

    workers: int
    budget: int
    runs: list[Timed] = field(default_factory=list)
    warmup: helix_cli.HelixRun | None = None
    bare: Ceiling | None = None  # W processes of the oracle alone, just before the cluster

    @property
    def rate(self) -> float:
        return statistics.median(t.run.evaluations_per_second for t in self.runs)

    def cpu(self) -> dict[str, float]:
        """CPU seconds of each role over all timed runs."""
        return {role: sum(t.cpu[role] for t in self.runs) for role in (*ROLES, OTHERS)}

    @property
    def run_seconds(self) -> float:
        return sum(t.run.evaluations / t.run.evaluations_per_second for t in self.runs)

    @property
    def window_seconds(self) -> float:
        return sum(t.window for t in self.runs)

    @property
    def evaluations(self) -> int:
        return sum(t.run.evaluations for t in self.runs)


@dataclass(frozen=True)
class Plan:
    """What every point runs: `budget` evaluations per timed run at W=1 (x W at W),
    `repeats` timed runs after a `warmup`-evaluation run, seeds from `seed`, `loops` of
    busy loop per candidate, `alone` candidates per process per pass of the oracle alone."""

    budget: int
    repeats: int
    warmup: int
    seed: int
    loops: int
    alone: int


def measure_point(workers: int, plan: Plan, scratch: Path) -> Point:
    """W oracle worker processes: the oracle alone in W processes (the machine's own
    speed-up for this work), then a fresh cluster, a warm-up run, `plan.repeats` timed runs
    of `plan.budget` x W evaluations (each its own seed: nothing is ever a repeat), then
    SIGTERM."""
    budget, seed = plan.budget * workers, plan.seed
    point = Point(workers, budget)
    point.bare = oracle_alone(plan.loops, plan.alone, workers)
    folder = scratch / f"w{workers}"
    with cluster_up(workers, plan.loops, folder) as cluster:
        if plan.warmup > 0:
            point.warmup = run_on(cluster, plan.warmup, seed + 1000, folder / "warmup").run
        for i in range(plan.repeats):
            point.runs.append(run_on(cluster, budget, seed + i, folder / f"run-{i}"))
    return point


# --- reporting ---------------------------------------------------------------------------


def parse_workers(text: str) -> list[int]:
    """ "1 2 4" (spaces or commas) -> [1, 2, 4]; each a whole number of at least 1."""
    values = []
    for word in text.replace(",", " ").split():
        try:
            value = int(word)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{word!r} in {text!r} is not a number") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value} in {text!r}: workers must be at least 1")
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError("no worker counts given")
    return values


def parse_seconds(text: str) -> float:
    """ "1ms", "500us", "0.002" (seconds) -> seconds, positive."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            number, scale = text[: -len(unit)], units[unit]
            break
    else:
        number, scale = text, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 1ms") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the cost must be positive")
    return value


def over_cores(workers: Sequence[int], machine_cores: int) -> list[str]:
    """A warning for each W above the machine's cores."""
    return [
        f"W={w} exceeds this machine's {machine_cores} cores: its oracle workers share "
        "cores, so its speed-up cannot be linear"
        for w in workers
        if w > machine_cores
    ]


@dataclass(frozen=True)
class Row:
    workers: int
    rate: float
    speedup: float
    efficiency: float


def rows(points: Sequence[Point]) -> list[Row]:
    """Speed-up and efficiency of each point against the W=1 point (or, without one, the
    smallest W measured, scaled as if it were linear below it)."""
    base = min(points, key=lambda p: p.workers)
    per_worker = base.rate / base.workers
    return [
        Row(p.workers, p.rate, p.rate / per_worker, p.rate / per_worker / p.workers) for p in points
    ]


def table(points: Sequence[Point], ceiling: Ceiling, machine_cores: int) -> list[str]:
    lines = [
        "| W (oracle workers) | evaluations/s | runs (evaluations/s) | speed-up | "
        "efficiency | ideal | oracle alone in W processes: evaluations/s | its speed-up | "
        "helix / oracle alone | cores |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    bare_one = ceiling.rate
    for row, point in zip(rows(points), points, strict=True):
        each = ", ".join(f"{t.run.evaluations_per_second:,.0f}" for t in point.runs)
        warn = " (W > cores)" if row.workers > machine_cores else ""
        bare = point.bare.rate if point.bare is not None else float("nan")
        lines.append(
            f"| {row.workers}{warn} | {row.rate:,.0f} | {each} | {row.speedup:.2f} | "
            f"{100 * row.efficiency:.0f}% | {row.workers:.2f} | {bare:,.0f} | "
            f"{bare / bare_one:.2f} | {100 * row.rate / bare:.0f}% | {machine_cores} |"
        )
    lines += [
        "",
        f"- the oracle alone (one process calling the entry point in a loop, no Helix; the "
        f"fastest of 3 passes of ~1 s): {ceiling.rate:,.0f} evaluations/s "
        f"({1000 * ceiling.cpu_per_evaluation:.3f} ms of CPU per candidate): the ceiling for "
        f"W=1; W=1 reaches {100 * rows(points)[0].rate / ceiling.rate:.0f}% of it"
        + (" (W=1 was not measured)" if points[0].workers != 1 else "")
        + ". 'oracle alone in W processes' is the same loop in W processes started together, "
        "measured just before the point's cluster: what this machine gives W processes of "
        "this work with no Helix at all; 'its speed-up' is against one process.",
    ]
    return lines


def cpu_table(points: Sequence[Point]) -> list[str]:
    """Where the cores went: CPU of each role per timed run second (cores busy) and per
    1,000 evaluations."""
    head = "| W | " + " | ".join(ROLES) + f" | all of helix | {OTHERS} |"
    lines = [
        "CPU each process used during the timed runs (utime + stime from /proc/PID/stat "
        "before and after each run), as cores busy on average (CPU seconds / run seconds) "
        "and, in brackets, ms of CPU per 1,000 evaluations. The client's figure includes "
        "its own start (imports) and the run directory and plot it writes after the run; "
        f"'{OTHERS}' is the machine's busy time (/proc/stat) minus all of that, in cores "
        "over the client's whole life: what other processes took from the same cores.",
        "",
        head,
        "|---" * (len(ROLES) + 3) + "|",
    ]
    for p in points:
        cpu = p.cpu()
        seconds, thousands = p.run_seconds, p.evaluations / 1000
        cells = [f"{cpu[r] / seconds:.2f} ({1000 * cpu[r] / thousands:.0f})" for r in ROLES]
        total = sum(cpu[r] for r in ROLES)
        cells.append(f"{total / seconds:.2f} ({1000 * total / thousands:.0f})")
        cells.append(f"{cpu[OTHERS] / p.window_seconds:.2f}")
        lines.append(f"| {p.workers} | " + " | ".join(cells) + " |")
    return lines


def plot(
    points: Sequence[Point],
    machine_cores: int,
    cost: float,
    path: Path,
    base_bare: float | None = None,
) -> None:
    """Speed-up against W, with the linear line, 90% of it, and (given the oracle alone's
    one-process rate `base_bare`) the speed-up of the oracle alone in W processes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    measured = rows(points)
    top = max(r.workers for r in measured)
    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=100)
    axes.plot([0, top], [0, top], "--", color="grey", label="linear (ideal)")
    axes.plot([0, top], [0, TARGET_EFFICIENCY * top], ":", color="grey", label="90% of linear")
    axes.plot(
        [r.workers for r in measured],
        [r.speedup for r in measured],
        "o-",
        color="tab:blue",
        label="helix cluster up",
    )
    bare = [(p.workers, p.bare.rate) for p in points if p.bare is not None]
    if bare and base_bare is not None:
        axes.plot(
            [w for w, _ in bare],
            [rate / base_bare for _, rate in bare],
            "s-",
            color="tab:green",
            label="the oracle alone in W processes (no Helix)",
        )
    if machine_cores < top:
        axes.axvline(machine_cores, color="tab:red", linewidth=1, label=f"{machine_cores} cores")
    axes.set_xlabel("oracle worker processes W")
    axes.set_ylabel("speed-up: evaluations/s(W) / evaluations/s(1)")
    axes.set_title(f"Search throughput vs oracle workers ({1000 * cost:g} ms CPU per candidate)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(0, top + 0.5)
    axes.set_ylim(0, top + 0.5)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=parse_workers, default=[1, 2])
    parser.add_argument("--budget", type=int, default=20_000, help="evaluations at W=1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--cost", type=parse_seconds, default=0.001)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args(argv)
    if args.budget < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--budget and --repeats must be at least 1, --warmup at least 0")
    workers = sorted(set(args.workers))
    machine_cores, model = cores(), cpu_model()
    for warning in over_cores(workers, machine_cores):
        print(f"warning: {warning}", file=sys.stderr)
    started = time.perf_counter()
    loops = cpu_oracle.calibrate(args.cost)
    alone = max(100, round(1.0 / args.cost))  # about a second per pass
    plan = Plan(args.budget, args.repeats, args.warmup, args.seed, loops, alone)
    points = []
    with tempfile.TemporaryDirectory(prefix="helix-bench-scale-") as scratch:
        for w in workers:
            points.append(measure_point(w, plan, Path(scratch)))
            print(f"W={w}: {points[-1].rate:,.0f} evaluations/s", flush=True)
    # The ceiling for W=1: the oracle alone in one process, measured with the W=1 point.
    ceiling = next((p.bare for p in points if p.workers == 1 and p.bare is not None), None)
    if ceiling is None:
        ceiling = oracle_alone(loops, alone, 1)
    elapsed = time.perf_counter() - started
    results = table(points, ceiling, machine_cores)
    command = shlex.join(["python", "benchmarks/bench_scale.py", *(argv or sys.argv[1:])])
    document = [
        "# Search throughput against oracle worker processes (`helix cluster up`)",
        "",
        f"`{command}`: {elapsed:.0f} s on {machine_cores} cores ({model}). Sphere-10D "
        "(population 1,000) with the CPU oracle of benchmarks/cpu_oracle.py: "
        f"{1000 * args.cost:g} ms of CPU per candidate ({loops:,} busy-loop iterations, "
        f"calibrated by time.process_time); {args.budget:,} x W evaluations per timed "
        f"run, median of {args.repeats} after a {args.warmup:,}-evaluation warm-up, a fresh "
        "cluster per W (benchmarks/bench_scale.py's docstring has the whole arrangement).",
        "",
        *results,
        *(f"- warning: {warning}" for warning in over_cores(workers, machine_cores)),
        "",
        "## Where the cores go",
        "",
        *cpu_table(points),
        "",
        f"![speed-up against W]({args.plot.name})",
        *kept_analysis(args.out),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(document) + "\n", encoding="utf-8")
    plot(points, machine_cores, args.cost, args.plot, ceiling.rate)
    print(f"search throughput against oracle workers, {elapsed:.0f} s (written to {args.out})")
    print("\n".join(results))
    print("\n".join(cpu_table(points)[2:]))
    report: dict[str, Any] = {
        "bench": "scale",
        "cores": machine_cores,
        "cpu_model": model,
        "loops": loops,
        "cost_seconds": args.cost,
        "oracle_alone_evaluations_per_second": ceiling.rate,
        "seconds": round(elapsed, 1),
        "points": [
            {
                "workers": row.workers,
                "evaluations_per_second": row.rate,
                "speedup": row.speedup,
                "efficiency": row.efficiency,
                "budget": point.budget,
                "evaluations": [t.run.evaluations for t in point.runs],
                "runs_evaluations_per_second": [t.run.evaluations_per_second for t in point.runs],
                "oracle_alone_evaluations_per_second": (
                    point.bare.rate if point.bare is not None else None
                ),
                "cpu_seconds": {role: round(s, 3) for role, s in point.cpu().items()},
                "run_seconds": round(point.run_seconds, 3),
            }
            for row, point in zip(rows(points), points, strict=True)
        ],
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
