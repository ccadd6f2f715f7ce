"""What the web dashboard costs: live viewers of a run, the delay of the events it relays,
and its pages over the gRPC calls they are made of, against one `helix up` it serves.

The suite: `helix up --port 0 --data-dir TMP --dashboard-port 0 --generator-dna-dir
examples/dna`, a subprocess started here (tests/harness.py's Processes), with its oracle
agent's verdict cache off (HELIX_ORACLE_CACHE_BYTES=0): every run below has the same seed,
so a cache would answer each run from the ones before; without it every run does the same
work. Tokens are minted in this process with the suite's HS256 key (TMP/keys). Every
time is this process's `time.perf_counter()`; the benchmark's own gRPC calls go through a
channel like the dashboard's (`helix.common.channel.create_channel`, the token as call
metadata).

1. Live viewers. The same run: dna_name `dnas/rastrigin` (examples/dna/rastrigin.yaml,
   population 100), oracle `oracles/rastrigin`, MINIMIZE, a budget of `--budget`
   evaluations (default 20,000), seed `--seed` (7); created with CreateRun by subject
   `bench` and followed by one gRPC WatchRun of this process (from sequence 0) to its
   terminal event. Wall time: from just before CreateRun to the terminal event's arrival
   at that WatchRun reader.
   (a) no dashboard viewer: the baseline;
   (b) `--viewers` (default 8) dashboard viewers, each with its own aiohttp ClientSession
       (its own connection) and its own dashboard session, signed in beforehand through
       POST /login (form field `token`) with a token of a subject of its own (`viewer-N`,
       scopes `runs.read admin`: admin, so that it may see a run of `bench`), each reading
       GET /runs/ID/events as server-sent events from the first event to `event: end`.
   The viewers and the WatchRun reader open their streams all at once, as soon as
   CreateRun answers. A warm-up pair (a), (b) comes first, then `--repeats` (default 5)
   pairs, (a) and (b) alternating; medians, and the ratio (b)/(a). Checked: the WatchRun
   reader and every viewer got every event of the run once and in order (sequences 1 to
   the run's last), and every run, warm-ups included, ended alike (state, stop reason,
   generation, evaluations, duplicates, best candidate and score, from GetRun).
2. Delivery delay. In the measured (b) runs, for every event and viewer: when the event
   arrived at the viewer (the blank line that ends it read) minus when it arrived at the
   WatchRun reader. Median, p95 and max in ms over every (event, viewer); also over the
   events after the first 10 of each run (the first ones are replayed from the run's
   history to streams that open a few ms apart, so they measure the opening too).
3. Page cost. On the last run (finished), after 5 warm-ups of each, `--page-repeats`
   (default 50) rounds, one request at a time, each a dashboard page then its gRPC calls:
   - GET /runs/ID (a session of `bench`, one keep-alive connection; 200, the whole HTML
     read): GetRun + ListRunCandidates (the best 20) + GetDna + rendering, against GetRun,
     ListRunCandidates and GetDna called one after the other here, as the page calls them;
   - GET /agents: ListAgents (pages of 1,000) + rendering, against ListAgents.
   Medians in ms, and the ratios page / gRPC.

Prints a table and one JSON line, writes Markdown to `--out` (keeping its `## Analysis`).

    python benchmarks/bench_dashboard.py [--repeats 5] [--budget 20000] [--viewers 8]
        [--page-repeats 50] [--seed 7] [--out benchmarks/results/dashboard.md]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
from helix_cli import kept_analysis  # noqa: E402

import helix.v1.common_pb2 as common_pb2  # noqa: E402
import helix.v1.generator_pb2 as generator_pb2  # noqa: E402
import helix.v1.generator_pb2_grpc as generator_pb2_grpc  # noqa: E402
import helix.v1.orchestrator_pb2 as orchestrator_pb2  # noqa: E402
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc  # noqa: E402
import helix.v1.registry_pb2 as registry_pb2  # noqa: E402
import helix.v1.registry_pb2_grpc as registry_pb2_grpc  # noqa: E402
from helix.common.channel import create_channel  # noqa: E402
from helix.dashboard.sessions import COOKIE  # noqa: E402
from helix.security.keys import SigningKey, load_hs256_dir  # noqa: E402
from helix.security.tokens import mint  # noqa: E402

from harness import HELIX, Processes, RunningProcess, clean_env  # noqa: E402
from waiting import eventually  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "dashboard.md"
DNA_DIR = ROOT / "examples" / "dna"
DASHBOARD_LINE = re.compile(r"^helix dashboard on (http://\S+)$")
OWNER = "bench"
OWNER_SCOPES = ("runs.read", "runs.write", "dna.read", "agents.read")
VIEWER_SCOPES = ("runs.read", "admin")
TOKEN_TTL = 4 * 3600.0
CALL_TIMEOUT = 30.0
RUN_TIMEOUT = 900.0  # one run, followed to its end
PAGE_WARMUPS = 5
CANDIDATES_SHOWN = 20  # the run page's best candidates (DashboardLimits.candidates_shown)
SETTLED_AFTER = 10  # events of a run counted as the streams' opening in part 2
TERMINAL = frozenset(
    {
        orchestrator_pb2.RUN_STATE_SUCCEEDED,
        orchestrator_pb2.RUN_STATE_FAILED,
        orchestrator_pb2.RUN_STATE_CANCELLED,
    }
)


class BenchError(RuntimeError):
    """The benchmark could not measure what it measures (said plainly)."""


# --- the suite -------------------------------------------------------------------------------


@dataclass
class Suite:
    """`helix up` with its dashboard, and this process's gRPC stubs to it (subject `bench`)."""

    process: RunningProcess
    url: str
    signer: SigningKey
    channel: grpc.aio.Channel
    runs: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub
    registry: registry_pb2_grpc.RegistryServiceAsyncStub
    metadata: tuple[tuple[str, str], ...]

    def at(self, path: str) -> str:
        return self.url.rstrip("/") + path

    def token(self, subject: str, scopes: Sequence[str]) -> str:
        return mint(self.signer, subject, scopes, TOKEN_TTL)


async def start_suite(processes: Processes, root: Path) -> Suite:
    """`helix up --dashboard-port 0` on a fresh data dir, once its agents are registered."""
    data_dir = root / "data"
    argv = [HELIX, "up", "--port", "0", "--data-dir", str(data_dir), "--dashboard-port", "0"]
    argv += ["--generator-dna-dir", str(DNA_DIR)]
    process = await processes.start(argv, clean_env({"oracle_cache_bytes": 0}), name="helix-up")
    urls = [m[1] for line in process.lines if (m := DASHBOARD_LINE.match(line))]
    if not urls:
        raise BenchError(process.describe("printed no `helix dashboard on URL` line"))
    _, signer = load_hs256_dir(data_dir / "keys")
    if signer is None:
        raise BenchError(f"no HS256 key in {data_dir / 'keys'}")
    channel = create_channel(process.address)
    token = mint(signer, OWNER, OWNER_SCOPES, TOKEN_TTL)
    suite = Suite(
        process,
        urls[0],
        signer,
        channel,
        orchestrator_pb2_grpc.OrchestratorServiceStub(channel),
        generator_pb2_grpc.GeneratorServiceStub(channel),
        registry_pb2_grpc.RegistryServiceStub(channel),
        (("authorization", f"Bearer {token}"),),
    )

    async def registered() -> bool:
        found = await suite.registry.ListAgents(
            registry_pb2.ListAgentsRequest(), metadata=suite.metadata, timeout=CALL_TIMEOUT
        )
        kinds = {a.kind for a in found.agents}
        return {registry_pb2.AGENT_KIND_GENERATOR, registry_pb2.AGENT_KIND_ORACLE} <= kinds

    await eventually(registered, 60, what="the suite's generator and oracle agents to register")
    return suite


async def sign_in(http: aiohttp.ClientSession, suite: Suite, token: str) -> str:
    """A dashboard session for `token` (POST /login): its cookie."""
    async with http.post(
        suite.at("/login"), data={"token": token}, allow_redirects=False
    ) as response:
        text = await response.text()
        cookie = response.cookies.get(COOKIE)
        if response.status != 303 or cookie is None:
            raise BenchError(f"POST /login: {response.status}, no session: {text[:500]}")
        return cookie.value


@dataclass
class Viewer:
    """A browser of its own: an HTTP client (its own connections) and a session."""

    http: aiohttp.ClientSession
    cookie: str


async def open_viewers(suite: Suite, count: int, viewers: list[Viewer]) -> None:
    """Sign `count` viewers in, each a subject of its own, into `viewers` (closed by the
    caller, also when this fails part way)."""
    for number in range(1, count + 1):
        http = aiohttp.ClientSession()
        viewers.append(Viewer(http, ""))
        token = suite.token(f"viewer-{number}", VIEWER_SCOPES)
        viewers[-1].cookie = await sign_in(http, suite, token)


# --- 1 and 2: runs with and without viewers --------------------------------------------------


@dataclass
class Run:
    """One run followed to its end: times in perf_counter seconds."""

    name: str
    wall: float  # CreateRun to the terminal event at the WatchRun reader
    outcome: Outcome
    last_sequence: int
    grpc_arrivals: dict[int, float]  # sequence -> arrival at the WatchRun reader
    viewer_arrivals: list[dict[int, float]] = field(default_factory=list)


def run_request(args: argparse.Namespace) -> orchestrator_pb2.CreateRunRequest:
    run = orchestrator_pb2.Run(
        display_name="bench-dashboard",
        dna_name="dnas/rastrigin",
        oracle="oracles/rastrigin",
        objective=common_pb2.OBJECTIVE_MINIMIZE,
        budget=orchestrator_pb2.RunBudget(max_evaluations=args.budget),
        seed=args.seed,
    )
    return orchestrator_pb2.CreateRunRequest(run=run, request_id=uuid.uuid4().hex)


async def follow_grpc(suite: Suite, name: str) -> tuple[dict[int, float], float]:
    """Read WatchRun from the start to the terminal event: arrivals by sequence, and when
    the terminal event arrived."""
    arrivals: dict[int, float] = {}
    call = suite.runs.WatchRun(
        orchestrator_pb2.WatchRunRequest(name=name, after_sequence=0),
        metadata=suite.metadata,
        timeout=RUN_TIMEOUT,
    )
    async for response in call:
        now = time.perf_counter()
        event = response.event
        arrivals[event.sequence] = now
        changed = event.state_changed if event.HasField("state_changed") else None
        if changed is not None and changed.state in TERMINAL:
            return arrivals, now
    raise BenchError(f"WatchRun of {name} ended before the run's terminal event")


async def read_events(
    content: aiohttp.StreamReader,
) -> AsyncIterator[tuple[str, str, str, float]]:
    """The events of a text/event-stream: (event, id, data, when its blank line was read);
    comments and `retry:` skipped."""
    fields: dict[str, str] = {}
    while raw := await content.readline():
        line = raw.decode().rstrip("\n")
        if line:
            name, _, value = line.partition(":")
            if name:
                fields[name] = value.removeprefix(" ")
            continue
        if "event" in fields or "data" in fields:
            now = time.perf_counter()
            yield fields.get("event", "message"), fields.get("id", ""), fields.get("data", ""), now
        fields = {}


async def follow_sse(suite: Suite, viewer: Viewer, run_id: str) -> dict[int, float]:
    """Read /runs/ID/events to `event: end`: arrivals by sequence (the `id:` line)."""
    arrivals: dict[int, float] = {}
    headers = {"Cookie": f"{COOKIE}={viewer.cookie}", "Accept": "text/event-stream"}
    path = f"/runs/{run_id}/events"
    async with viewer.http.get(suite.at(path), headers=headers) as response:
        if response.status != 200:
            raise BenchError(f"GET {path}: {response.status} {(await response.text())[:500]}")
        async for event, event_id, data, now in read_events(response.content):
            if event == "end":
                return arrivals
            if event != "run":  # failure, fatal, gap: the run was not relayed whole
                raise BenchError(f"a viewer of {run_id} got `event: {event}` {data}")
            sequence = int(event_id)
            if sequence in arrivals:
                raise BenchError(f"a viewer got event {sequence} of {run_id} twice")
            arrivals[sequence] = now
    raise BenchError(f"GET {path} ended without `event: end`")


@dataclass(frozen=True)
class Outcome:
    """How a run ended (GetRun): equal for equal seeds."""

    state: str
    stop_reason: str
    generation: int
    evaluations: int
    duplicates: int
    best_candidate_id: str
    best_score: float


async def outcome_of(suite: Suite, name: str) -> Outcome:
    run = (
        await suite.runs.GetRun(
            orchestrator_pb2.GetRunRequest(name=name), metadata=suite.metadata, timeout=30
        )
    ).run
    progress = run.progress
    return Outcome(
        orchestrator_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_"),
        orchestrator_pb2.RunStopReason.Name(run.stop_reason).removeprefix("RUN_STOP_REASON_"),
        progress.generation,
        progress.evaluations,
        progress.duplicates,
        progress.best.candidate.id,
        progress.best.verdict.score,
    )


async def one_run(suite: Suite, viewers: Sequence[Viewer], args: argparse.Namespace) -> Run:
    """Create the run and follow it over gRPC, and through every viewer, to its end."""
    request = run_request(args)
    started = time.perf_counter()
    response = await suite.runs.CreateRun(request, metadata=suite.metadata, timeout=CALL_TIMEOUT)
    name = response.run.name
    run_id = name.removeprefix("runs/")

    async def viewing() -> list[dict[int, float]]:
        return list(await asyncio.gather(*(follow_sse(suite, v, run_id) for v in viewers)))

    async with asyncio.timeout(RUN_TIMEOUT):
        (grpc_arrivals, ended), seen = await asyncio.gather(follow_grpc(suite, name), viewing())
    last = max(grpc_arrivals)
    every = list(range(1, last + 1))
    if sorted(grpc_arrivals) != every:
        raise BenchError(f"the WatchRun reader did not get every event 1..{last} of {name}")
    for arrivals in seen:
        if sorted(arrivals) != every:
            missing = len(set(every) - set(arrivals))
            raise BenchError(f"a viewer missed {missing} of the {last} events of {name}")
    outcome = await outcome_of(suite, name)
    return Run(name, ended - started, outcome, last, grpc_arrivals, seen)


def delays_ms(runs: Sequence[Run], after: int = 0) -> list[float]:
    """Arrival at a viewer minus arrival at the WatchRun reader, for every event with a
    sequence above `after` and every viewer of `runs`, in ms."""
    return [
        1000 * (seen - run.grpc_arrivals[sequence])
        for run in runs
        for arrivals in run.viewer_arrivals
        for sequence, seen in arrivals.items()
        if sequence > after
    ]


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (`share` in 0..1)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(share * len(ordered) - 1e-9)))
    return ordered[rank - 1]


@dataclass
class Viewing:
    """Part 1 and 2: the measured runs of each kind, and the warm-ups."""

    plain: list[Run] = field(default_factory=list)
    viewed: list[Run] = field(default_factory=list)
    warmups: list[Run] = field(default_factory=list)

    def wall(self, kind: str) -> float:
        return statistics.median(r.wall for r in (self.plain if kind == "plain" else self.viewed))

    @property
    def ratio(self) -> float:
        return self.wall("viewed") / self.wall("plain")

    @property
    def every_run(self) -> list[Run]:
        return [*self.warmups, *self.plain, *self.viewed]

    @property
    def identical(self) -> bool:
        return len({r.outcome for r in self.every_run}) == 1

    def delay(self, after: int = 0) -> dict[str, float | int]:
        values = delays_ms(self.viewed, after)
        return {
            "median": statistics.median(values),
            "p95": percentile(values, 0.95),
            "max": max(values),
            "min": min(values),
            "samples": len(values),
        }


async def measure_viewing(suite: Suite, viewers: list[Viewer], args: argparse.Namespace) -> Viewing:
    result = Viewing()
    for repetition in range(args.repeats + 1):  # the first pair is the warm-up
        plain = await one_run(suite, (), args)
        viewed = await one_run(suite, viewers, args)
        if repetition == 0:
            result.warmups += [plain, viewed]
        else:
            result.plain.append(plain)
            result.viewed.append(viewed)
    return result


# --- 3. page cost ----------------------------------------------------------------------------


async def get_page(http: aiohttp.ClientSession, suite: Suite, path: str, cookie: str) -> None:
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    async with http.get(suite.at(path), headers=headers, allow_redirects=False) as response:
        text = await response.text()
        if response.status != 200 or response.content_type != "text/html":
            raise BenchError(f"GET {path}: {response.status} {text[:500]}")


async def run_calls(suite: Suite, name: str) -> None:
    """The run page's gRPC calls, one after the other, as the page makes them."""
    metadata, timeout = suite.metadata, CALL_TIMEOUT
    run = (
        await suite.runs.GetRun(
            orchestrator_pb2.GetRunRequest(name=name), metadata=metadata, timeout=timeout
        )
    ).run
    await suite.runs.ListRunCandidates(
        orchestrator_pb2.ListRunCandidatesRequest(name=run.name, page_size=CANDIDATES_SHOWN),
        metadata=metadata,
        timeout=timeout,
    )
    if run.HasField("dna") or not run.dna_name:
        raise BenchError(f"{name} names no DNA: the page would not call GetDna")
    await suite.generator.GetDna(
        generator_pb2.GetDnaRequest(name=run.dna_name), metadata=metadata, timeout=timeout
    )


async def agents_calls(suite: Suite) -> None:
    """ListAgents, every page, as the agents page calls it."""
    token = ""
    while True:
        page = await suite.registry.ListAgents(
            registry_pb2.ListAgentsRequest(page_size=1000, page_token=token),
            metadata=suite.metadata,
            timeout=CALL_TIMEOUT,
        )
        token = page.next_page_token
        if not token:
            return


async def timed(action: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await action()
    return 1000 * (time.perf_counter() - started)


@dataclass
class Pages:
    """Part 3: ms per request of each kind."""

    ms: dict[str, list[float]] = field(default_factory=dict)

    def median(self, kind: str) -> float:
        return statistics.median(self.ms[kind])

    def ratio(self, page: str) -> float:
        return self.median(f"{page}_page") / self.median(f"{page}_grpc")


async def measure_pages(suite: Suite, name: str, args: argparse.Namespace) -> Pages:
    run_path = f"/runs/{name.removeprefix('runs/')}"
    result = Pages()
    async with aiohttp.ClientSession() as http:
        cookie = await sign_in(http, suite, suite.token(OWNER, OWNER_SCOPES))
        kinds: dict[str, Callable[[], Awaitable[None]]] = {
            "run_page": lambda: get_page(http, suite, run_path, cookie),
            "run_grpc": lambda: run_calls(suite, name),
            "agents_page": lambda: get_page(http, suite, "/agents", cookie),
            "agents_grpc": lambda: agents_calls(suite),
        }
        for repetition in range(PAGE_WARMUPS + args.page_repeats):
            for kind, action in kinds.items():
                ms = await timed(action)
                if repetition >= PAGE_WARMUPS:
                    result.ms.setdefault(kind, []).append(ms)
    return result


# --- the report ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "grpcio": grpc.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def describe_machine(facts: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in facts["load_average"])
    return (
        f"{facts['cores']} cores, Python {facts['python']}, aiohttp {facts['aiohttp']}, "
        f"grpcio {facts['grpcio']}, load average {load} (1, 5, 15 min) at the start"
    )


def viewing_table(v: Viewing, args: argparse.Namespace) -> list[str]:
    plain, viewed = v.wall("plain"), v.wall("viewed")
    first = v.every_run[0].outcome
    events = v.every_run[0].last_sequence
    rate = {k: first.evaluations / v.wall(k) for k in ("plain", "viewed")}
    return [
        "| run | wall s | evaluations/s |",
        "|---|---|---|",
        f"| (a) no viewer | {plain:.3f} | {rate['plain']:,.0f} |",
        f"| (b) {args.viewers} dashboard viewers | {viewed:.3f} | {rate['viewed']:,.0f} |",
        f"| (b) / (a) | **{v.ratio:.3f}x** | |",
        "",
        f"Medians of {len(v.plain)} runs each (walls (a): "
        + ", ".join(f"{r.wall:.3f}" for r in v.plain)
        + "; (b): "
        + ", ".join(f"{r.wall:.3f}" for r in v.viewed)
        + f"). Every run ended {'alike' if v.identical else 'NOT alike'}: "
        f"{first.state}, {first.stop_reason}, generation {first.generation}, "
        f"{first.evaluations:,} evaluations, {first.duplicates:,} duplicates, best score "
        f"{first.best_score:.6g}; "
        f"{events} events a run, each received once and in order by the WatchRun reader and "
        "by every viewer.",
    ]


def delay_table(v: Viewing) -> list[str]:
    every, settled = v.delay(), v.delay(SETTLED_AFTER)
    return [
        "| events | median ms | p95 ms | max ms | min ms | (event, viewer) pairs |",
        "|---|---|---|---|---|---|",
        f"| all | {every['median']:.2f} | {every['p95']:.2f} | {every['max']:.2f} "
        f"| {every['min']:.2f} | {every['samples']:,} |",
        f"| after the first {SETTLED_AFTER} of each run | {settled['median']:.2f} "
        f"| {settled['p95']:.2f} | {settled['max']:.2f} | {settled['min']:.2f} "
        f"| {settled['samples']:,} |",
        "",
        "Arrival at a dashboard viewer minus arrival at this process's own WatchRun reader, "
        "same clock, over the measured (b) runs.",
    ]


def page_table(p: Pages, args: argparse.Namespace) -> list[str]:
    return [
        "| page | dashboard ms | gRPC calls ms | dashboard / gRPC |",
        "|---|---|---|---|",
        f"| GET /runs/ID vs GetRun + ListRunCandidates + GetDna | {p.median('run_page'):.2f} "
        f"| {p.median('run_grpc'):.2f} | **{p.ratio('run'):.2f}x** |",
        f"| GET /agents vs ListAgents | {p.median('agents_page'):.2f} "
        f"| {p.median('agents_grpc'):.2f} | **{p.ratio('agents'):.2f}x** |",
        "",
        f"Medians of {args.page_repeats} sequential requests of each kind, after "
        f"{PAGE_WARMUPS} warm-ups, page and calls alternating.",
    ]


def report_of(
    v: Viewing, p: Pages, facts: dict[str, Any], elapsed: float, args: argparse.Namespace
) -> dict[str, Any]:
    return {
        "bench": "dashboard",
        "seconds": round(elapsed, 1),
        "machine": facts,
        "viewers": args.viewers,
        "budget": args.budget,
        "repeats": args.repeats,
        "run_wall_seconds": {"no_viewer": v.wall("plain"), "viewers": v.wall("viewed")},
        "run_wall_ratio": v.ratio,
        "runs_identical": v.identical,
        "run_outcome": dataclasses.asdict(v.every_run[0].outcome),
        "events_per_run": v.every_run[0].last_sequence,
        "delivery_delay_ms": v.delay(),
        "delivery_delay_ms_settled": v.delay(SETTLED_AFTER),
        "page_ms": {kind: p.median(kind) for kind in p.ms},
        "page_ratio": {"run": p.ratio("run"), "agents": p.ratio("agents")},
    }


def document(
    command: str,
    facts: dict[str, Any],
    elapsed: float,
    tables: tuple[list[str], list[str], list[str]],
    args: argparse.Namespace,
) -> list[str]:
    viewing, delay, pages = tables
    return [
        "# The web dashboard: live viewers, event delay, page cost",
        "",
        f"`{command}`: {elapsed:.0f} s on this machine: {describe_machine(facts)}. One "
        "`helix up --dashboard-port 0` (examples/dna, verdict cache off) serves everything "
        "below; baselines are measured in the same script run; settings in "
        "benchmarks/bench_dashboard.py's docstring.",
        "",
        "## What live viewers cost a run",
        "",
        f"Rastrigin (dna_name `dnas/rastrigin`, population 100), budget {args.budget:,} "
        f"evaluations, seed {args.seed}, created by CreateRun and followed by one gRPC "
        "WatchRun of the benchmark; wall time from CreateRun to the terminal event at that "
        f"reader, (a) alone and (b) with {args.viewers} dashboard viewers (each its own HTTP "
        "client, session and subject) reading `/runs/ID/events` to `event: end`. A warm-up "
        "pair first, then (a) and (b) alternating.",
        "",
        *viewing,
        "",
        "## How late the dashboard delivers events",
        "",
        *delay,
        "",
        "## What a page costs over its gRPC calls",
        "",
        "The run page of the last (finished) run and the agents page, each through one "
        "keep-alive connection of a signed-in session, against the gRPC calls the page is "
        "made of, called one after the other by the benchmark on a channel like the "
        "dashboard's (both over loopback to the suite).",
        "",
        *pages,
        "",
        "## Not measured",
        "",
        "- Browsers: the viewers are aiohttp clients reading the stream; a browser's "
        "EventSource, page script and chart drawing are not part of the figures.",
        "- The agents stream (`/agents/events`), the runs, DNAs and oracles pages, sign-in.",
        "- Viewers that resume (Last-Event-ID), slow readers, or the stream limits.",
        "- Runs with costlier oracles, other populations, a cluster behind a gateway.",
        *kept_analysis(args.out),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="pairs of runs measured [5]")
    parser.add_argument("--budget", type=int, default=20_000, help="evaluations a run [20000]")
    parser.add_argument("--viewers", type=int, default=8, help="dashboard viewers in (b) [8]")
    parser.add_argument("--page-repeats", type=int, default=50, help="requests of each [50]")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for name in ("repeats", "budget", "viewers", "page_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.viewers > 64:  # DashboardLimits.max_streams
        parser.error("--viewers must be at most 64 (the dashboard's limit of live streams)")
    facts = machine()
    started = time.perf_counter()
    return asyncio.run(_main(args, argv, facts, started))


async def _main(
    args: argparse.Namespace, argv: list[str] | None, facts: dict[str, Any], started: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="helix-bench-dashboard-") as tmp:
        root = Path(tmp)
        async with Processes(root / "logs") as processes:
            suite = await start_suite(processes, root)
            viewers: list[Viewer] = []
            try:
                await open_viewers(suite, args.viewers, viewers)
                viewing = await measure_viewing(suite, viewers, args)
                pages = await measure_pages(suite, viewing.viewed[-1].name, args)
            finally:
                for viewer in viewers:
                    await viewer.http.close()
                await suite.channel.close()
    if not viewing.identical:
        raise BenchError(
            "the runs ended differently: "
            + "; ".join(f"{r.name}: {r.outcome}" for r in viewing.every_run)
        )
    elapsed = time.perf_counter() - started
    tables = (viewing_table(viewing, args), delay_table(viewing), page_table(pages, args))
    command = " ".join(
        ["python benchmarks/bench_dashboard.py", *(sys.argv[1:] if argv is None else argv)]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = document(command, facts, elapsed, tables, args)
    args.out.write_text("\n".join(text) + "\n", encoding="utf-8")
    print(f"web dashboard, {elapsed:.0f} s, {describe_machine(facts)} (written to {args.out})")
    print("\n".join([*tables[0], "", *tables[1], "", *tables[2]]))
    report = report_of(viewing, pages, facts, elapsed, args)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
