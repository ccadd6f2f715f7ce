"""Builtin sphere-10D verdicts/s through VerifyStream, against a minimal oracle in the same run.

Two servers, each its own process on core 0 (every thread of it pinned), driven by this
process from the other core(s) with the same client code:

- `helix`: the real `helix oracle serve` with security on (HS256 keys; the client sends a
  minted token with scope `verify`), reports written (a temporary directory), the default
  cache setting, and the oracle configuration's builtin `sphere`;
- `bare`: benchmarks/servers/bare_oracle.py, a plain grpc.aio bidi servicer that parses each
  batch as protobuf messages, scores it with NumPy and builds the VerdictBatch message by
  message (no auth, no validation, no ids checked, no cache, no reports).

The client builds `--batches` batches of 1,000 valid sphere-10D candidates (uniform in the
DNA's bounds, with their correct content-hash ids) and serialises them once; each round
opens one VerifyStream per server and keeps up to `--window` batches in flight, within
the credit granted. Rounds alternate between the servers so machine noise hits both; the
report gives the median verdicts/s of each, their ratio (the issue's targets: helix at
least 0.8x bare and 200,000/s), and the server CPU per 1,000 verdicts (/proc utime+stime
of the whole process). Before the rounds, one batch's verdicts from each server are
checked against NumPy (ids, status, scores).

Then the verdict cache: a second oracle of the same helix server, `sphere-cached`
(`cache: true`). Each round sends fresh batches to `sphere` (no cache), then to
`sphere-cached` twice: the first pass misses (evaluates and stores), the second hits
(every verdict must come back `cached`). The report gives verdicts/s (on the hit pass each
verdict is a cache lookup) and server CPU per verdict of each pass.

`--profile FILE` then samples the helix server with py-spy (`pip install py-spy`) for
`--profile-seconds` under the same load, writes the raw stacks to FILE and prints each
thread's share of the server's CPU and the functions taking the most of it.

Last, the report lines the helix server wrote are counted against the verdicts it returned:
a report queue that cannot keep up drops lines (and would flatter the figures above).

    python benchmarks/bench_oracle_stream.py [--rounds 5] [--batches 200] [--window 8]
                                             [--cache-batches 100] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import grpc
import numpy as np

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
from helix.genome.codec import to_candidates
from helix.genome.layout import FloatArray, Layout, normalise
from helix.security.keys import ensure_hs256_secret
from helix.security.scopes import VERIFY
from helix.security.tokens import mint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import server_profile  # noqa: E402

from harness import HELIX, Processes, RunningProcess, clean_env  # noqa: E402

BARE = ROOT / "benchmarks" / "servers" / "bare_oracle.py"
METHOD = "/helix.v1.OracleService/VerifyStream"
BATCH = 1000
SERVER_CORE = 0
CONFIG = """\
oracles:
  sphere:
    kind: builtin
  sphere-cached:
    kind: builtin
    function: sphere
    cache: true
"""


def sphere_dna() -> dna_pb2.Dna:
    return dna_pb2.Dna(
        name="dnas/bench-sphere-10d",
        genes=[dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=-5.12, high=5.12, size=10))],
    )


@dataclasses.dataclass(frozen=True)
class Batches:
    """Serialised VerifyStreamRequest batches (batch ids 1..n) and, for checks, their
    genomes' values and candidate ids."""

    requests: list[bytes]
    reals: list[FloatArray]
    ids: list[list[str]]


def make_batches(layout: Layout, count: int, seed: int) -> Batches:
    """`count` batches of BATCH valid candidates, uniform in the DNA's bounds."""
    rng = np.random.default_rng(seed)
    requests, reals, ids = [], [], []
    for k in range(count):
        values = rng.uniform(layout.real_low, layout.real_high, size=(BATCH, layout.n_reals))
        population = dataclasses.replace(layout.empty(BATCH), reals=values)
        candidates = to_candidates(layout, population, generation=1, parent_ids=[[]] * BATCH)
        batch = oracle_pb2.VerifyBatch(batch_id=k + 1, candidates=candidates)
        requests.append(oracle_pb2.VerifyStreamRequest(batch=batch).SerializeToString())
        reals.append(values)
        ids.append([c.id for c in candidates])
    return Batches(requests, reals, ids)


def open_request(oracle: str) -> bytes:
    message = oracle_pb2.VerifyStreamOpen(oracle=f"oracles/{oracle}", dna=sphere_dna())
    return oracle_pb2.VerifyStreamRequest(open=message).SerializeToString()


# --- servers --------------------------------------------------------------------------------


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of process `pid` to `cores` (threads started later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cores)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Server:
    name: str
    process: RunningProcess
    token: str
    metrics_port: int | None = None
    channel: grpc.aio.Channel | None = None
    returned: int = 0  # verdicts received from it, every stream

    async def report_lines(self) -> tuple[int, int]:
        """The helix server's report lines so far, (written, dropped) (bare: none)."""
        if self.metrics_port is None:
            return 0, 0
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urlopen(url, timeout=10).read().decode())
        found = [
            re.search(rf"^helix_oracle_report_lines{kind}_total (\S+)$", text, re.M)
            for kind in ("", "_dropped")
        ]
        if found[0] is None or found[1] is None:
            raise RuntimeError("the helix server's /metrics shows no report line counters")
        return int(float(found[0][1])), int(float(found[1][1]))

    async def reports_settled(self, before: tuple[int, int], verdicts: int) -> tuple[int, int]:
        """Wait until the report lines of `verdicts` more verdicts are written or dropped
        since `before`; the lines (written, dropped) meanwhile."""
        if self.metrics_port is None:
            return 0, 0
        deadline = time.perf_counter() + 30
        # The writer flushes every 0.5s (sooner when its queue is half full): few scrapes,
        # each of which costs the server CPU too.
        await asyncio.sleep(0.6)
        while True:
            written, dropped = await self.report_lines()
            done = (written - before[0], dropped - before[1])
            if sum(done) >= verdicts:
                return done
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{verdicts} report lines not written in 30s: {done}")
            await asyncio.sleep(0.2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_helix(processes: Processes, root: Path) -> tuple[Server, Path]:
    """`helix oracle serve` with auth (HS256), reports and the default cache size: the
    server (with a token of scope `verify`) and its reports directory."""
    keys, reports, config = root / "keys", root / "reports", root / "oracles.yaml"
    _, signer = ensure_hs256_secret(keys)
    config.write_text(CONFIG)
    argv = [HELIX, "oracle", "serve", "--port", "0", "--oracle-config", str(config)]
    argv += ["--oracle-reports-dir", str(reports), "--auth-hs256-dir", str(keys)]
    # Every rotated report file kept, so that the lines written can be counted at the end.
    metrics_port = free_port()
    argv += ["--oracle-report-keep", "1000", "--metrics-port", str(metrics_port)]
    process = await processes.start(argv, clean_env(), name="helix-oracle")
    token = mint(signer, "bench", [VERIFY], 3600)
    return Server("helix", process, token, metrics_port), reports


async def start_bare(processes: Processes, credit: int) -> Server:
    process = await processes.start(
        [sys.executable, str(BARE), "--credit", str(credit)], name="bare-oracle"
    )
    loop = (await process.wait_for_line(r"^event loop (\S+)$"))[1]
    if loop != "uvloop":
        raise RuntimeError(f"the bare oracle runs on {loop}, not on uvloop as helix does")
    return Server("bare", process, "-")


# --- the client -----------------------------------------------------------------------------


@dataclasses.dataclass
class Pass:
    """One stream: verdicts received; seconds from the first credit to the last verdict;
    server CPU seconds until the last of their report lines was written (or dropped); how
    many verdicts came from the cache; report lines the server dropped."""

    verdicts: int
    seconds: float
    cpu: float
    cached: int
    dropped: int

    @property
    def dropped_share(self) -> float:
        return self.dropped / self.verdicts

    @property
    def rate(self) -> float:
        return self.verdicts / self.seconds

    @property
    def cpu_per_thousand(self) -> float:
        return self.cpu / self.verdicts * 1000


def _as_is(request: bytes) -> bytes:
    """The requests are serialised already."""
    return request


class StreamClient:
    """One VerifyStream: sends pre-serialised batches, at most `window` of them in flight
    and never over the credit granted; every batch must get BATCH verdicts."""

    def __init__(
        self,
        server: Server,
        oracle: str,
        batches: Sequence[bytes],
        window: int,
        *,
        count_cached: bool = False,
        settle: bool = True,
    ) -> None:
        self.server = server
        self.oracle = oracle
        self.settle = settle
        self.batches = batches
        self.window = window
        self.count_cached = count_cached
        self.allowance = 0
        self.in_flight = 0
        self.answered = 0
        self.cached = 0
        self.kept: dict[int, oracle_pb2.VerdictBatch] = {}
        self.changed = asyncio.Event()

    async def run(self) -> Pass:
        server = self.server
        assert server.channel is not None
        call = server.channel.stream_stream(
            METHOD,
            request_serializer=_as_is,
            response_deserializer=oracle_pb2.VerifyStreamResponse.FromString,
        )(metadata=(("authorization", f"Bearer {server.token}"),), timeout=600)
        lines_before = await server.report_lines()
        cpu_before = cpu_seconds(server.process.pid)
        await call.write(open_request(self.oracle))
        sender: asyncio.Task[None] | None = None
        started = finished = 0.0
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                assert isinstance(response, oracle_pb2.VerifyStreamResponse)
                self.take(response)
                if sender is None:
                    started = time.perf_counter()
                    sender = asyncio.create_task(self.send(call))
                if self.answered == BATCH * len(self.batches):
                    finished = time.perf_counter()
            if sender is not None:
                await sender
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
        code = await call.code()
        if code != grpc.StatusCode.OK:
            raise RuntimeError(f"{server.name}: VerifyStream ended {code}: {await call.details()}")
        if self.answered != BATCH * len(self.batches):
            raise AssertionError(f"{server.name}: {self.answered} verdicts for {len(self.batches)}")
        server.returned += self.answered
        if self.settle:
            _, dropped = await server.reports_settled(lines_before, self.answered)
        else:  # lines are dropped as they are recorded, before the verdicts are sent
            dropped = (await server.report_lines())[1] - lines_before[1]
        cpu = cpu_seconds(server.process.pid) - cpu_before
        return Pass(self.answered, finished - started, cpu, self.cached, dropped)

    def take(self, response: oracle_pb2.VerifyStreamResponse) -> None:
        if response.HasField("credit"):
            self.allowance += response.credit.candidates
        else:
            verdicts = response.verdicts
            if len(verdicts.verdicts) != BATCH:
                raise AssertionError(f"{self.server.name}: {len(verdicts.verdicts)} verdicts")
            if self.count_cached:
                self.cached += sum(1 for v in verdicts.verdicts if v.cached)
                self.kept[verdicts.batch_id] = verdicts
            self.in_flight -= 1
            self.answered += BATCH
        self.changed.set()

    async def send(
        self, call: grpc.aio.StreamStreamCall[bytes, oracle_pb2.VerifyStreamResponse]
    ) -> None:
        for request in self.batches:
            while self.allowance < BATCH or self.in_flight >= self.window:
                await self.changed.wait()
                self.changed.clear()
            self.allowance -= BATCH
            self.in_flight += 1
            await call.write(request)
        await call.done_writing()


async def verify_stream(
    server: Server,
    oracle: str,
    batches: Sequence[bytes],
    window: int,
    *,
    count_cached: bool = False,
    settle: bool = True,
) -> Pass:
    """One stream (see StreamClient); with `settle`, its server CPU includes writing the
    stream's report lines, which the helix server does after answering."""
    client = StreamClient(server, oracle, batches, window, count_cached=count_cached, settle=settle)
    return await client.run()


async def check_verdicts(server: Server, batches: Batches) -> None:
    """One batch through `server`'s sphere: ids in order, PASSED, scores = NumPy's Σ x²."""
    client = StreamClient(server, "sphere", batches.requests[:1], 1, count_cached=True)
    await client.run()
    answer = client.kept[1].verdicts
    x = batches.reals[0]
    expected = np.einsum("ij,ij->i", x, x)
    if [v.candidate_id for v in answer] != batches.ids[0]:
        raise AssertionError(f"{server.name}: the verdicts' ids are not the candidates'")
    if {v.status for v in answer} != {candidate_pb2.VERDICT_STATUS_PASSED}:
        raise AssertionError(f"{server.name}: not every verdict PASSED")
    if not np.allclose([v.score for v in answer], expected, rtol=1e-12, atol=0):
        raise AssertionError(f"{server.name}: the scores are not NumPy's sphere")


def median(passes: Sequence[Pass], key: str) -> float:
    return float(statistics.median(getattr(p, key) for p in passes))


# --- the measurements -----------------------------------------------------------------------


async def stream_rounds(
    servers: Sequence[Server], batches: Batches, args: argparse.Namespace
) -> dict[str, Any]:
    """Helix and bare taking turns, `args.rounds` streams each: medians and ratios."""
    for server in servers:
        await check_verdicts(server, batches)
        warm = batches.requests[: max(1, args.batches // 4)]
        await verify_stream(server, "sphere", warm, args.window)
    passes: dict[str, list[Pass]] = {server.name: [] for server in servers}
    for _ in range(args.rounds):
        for server in servers:
            run = await verify_stream(server, "sphere", batches.requests, args.window)
            passes[server.name].append(run)
    rate = {name: median(runs, "rate") for name, runs in passes.items()}
    cpu = {name: median(runs, "cpu_per_thousand") * 1000 for name, runs in passes.items()}
    print(
        f"VerifyStream, builtin sphere-10D, batches of {BATCH:,}, {args.batches} batches per "
        f"stream, {args.window} in flight, each server on one core: medians of {args.rounds}"
    )
    print(
        f"  helix (auth, validation, ids, credit, reports): {rate['helix']:9,.0f} verdicts/s"
        f"  {cpu['helix']:5.2f} ms server CPU / 1,000 verdicts"
    )
    print(
        f"  bare grpc.aio oracle (message by message):      {rate['bare']:9,.0f} verdicts/s"
        f"  {cpu['bare']:5.2f} ms server CPU / 1,000 verdicts"
    )
    dropped = sum(p.dropped for p in passes["helix"]) / sum(p.verdicts for p in passes["helix"])
    print(f"  report lines helix dropped (its queue full) in those streams: {dropped:.1%}")
    ratio, cpu_ratio = rate["helix"] / rate["bare"], cpu["helix"] / cpu["bare"]
    print(
        f"  helix / bare: throughput {ratio:.2f}x (targets: >= 0.80x and >= 200,000/s), "
        f"server CPU per verdict {cpu_ratio:.2f}x"
    )
    return {
        "verdicts_per_s": rate,
        "server_cpu_ms_per_1000": cpu,
        "throughput_helix_vs_bare": ratio,
        "cpu_helix_vs_bare": cpu_ratio,
        "helix_report_lines_dropped_share": dropped,
        "rounds_verdicts_per_s": {name: [p.rate for p in runs] for name, runs in passes.items()},
    }


async def cache_rounds(helix: Server, layout: Layout, args: argparse.Namespace) -> dict[str, Any]:
    """Fresh batches each round: `sphere` (no cache), then `sphere-cached` twice."""
    modes = ("no cache", "cache miss", "cache hit")
    passes: dict[str, list[Pass]] = {mode: [] for mode in modes}
    for round_number in range(args.rounds):
        fresh = make_batches(layout, args.cache_batches, seed=1000 + round_number).requests
        passes["no cache"].append(await verify_stream(helix, "sphere", fresh, args.window))
        for mode in modes[1:]:
            run = await verify_stream(helix, "sphere-cached", fresh, args.window, count_cached=True)
            want = run.verdicts if mode == "cache hit" else 0
            if run.cached != want:
                raise AssertionError(
                    f"{mode} pass: {run.cached} of {run.verdicts} verdicts cached, want {want}"
                )
            passes[mode].append(run)
    base = median(passes["no cache"], "cpu_per_thousand")
    print(
        f"verdict cache through VerifyStream (helix; {args.cache_batches} fresh batches a "
        f"round sent to `sphere`, then twice to `sphere-cached`): medians of {args.rounds}"
    )
    out: dict[str, Any] = {}
    for mode in modes:
        rate, cpu = median(passes[mode], "rate"), median(passes[mode], "cpu_per_thousand")
        dropped = median(passes[mode], "dropped_share")
        print(
            f"  {mode:10s} {rate:9,.0f} verdicts/s  {cpu * 1000:5.2f} us server CPU / verdict"
            f"  ({cpu / base:4.2f}x no cache)  report lines dropped {dropped:.0%}"
        )
        out[mode] = {
            "verdicts_per_s": rate,
            "server_cpu_us_per_verdict": cpu * 1000,
            "report_lines_dropped_share": dropped,
        }
    lookups = out["cache hit"]["verdicts_per_s"]
    print(f"  cache lookups/s through the service (the hit pass): {lookups:,.0f}")
    return out


async def profile(helix: Server, batches: Batches, args: argparse.Namespace) -> dict[str, Any]:
    """py-spy on the helix server while the client keeps it busy, and each thread's share
    of its CPU over the same time (/proc)."""
    if server_profile.py_spy() is None:
        print("profile: py-spy is not installed (pip install py-spy); skipped")
        return {}
    out = Path(args.profile)
    pid = helix.process.pid
    before = server_profile.thread_cpu(pid)
    spy = await server_profile.record(pid, args.profile_seconds, out)
    started, verdicts, dropped = time.perf_counter(), 0, 0
    while spy.returncode is None:
        run = await verify_stream(helix, "sphere", batches.requests, args.window, settle=False)
        verdicts, dropped = verdicts + run.verdicts, dropped + run.dropped
    elapsed = time.perf_counter() - started
    after = server_profile.thread_cpu(pid)
    _, err = await spy.communicate()
    if spy.returncode != 0 or not await asyncio.to_thread(out.exists):
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.decode()[-400:]}")
    names = server_profile.thread_names(out)
    cpu = {tid: seconds - before.get(tid, 0.0) for tid, seconds in after.items()}
    spent = sum(cpu.values())
    used: dict[str, float] = {}
    for tid, seconds in cpu.items():
        name = names.get(tid, "(C threads: grpc's event engine)")
        used[name] = used.get(name, 0.0) + seconds
    hot = server_profile.summarise(out, cpu, args.profile_top)
    print(
        f"profile of the helix server, {elapsed:.0f}s of streams back to back "
        f"({verdicts / elapsed:,.0f} verdicts/s, {dropped / verdicts:.0%} of the report lines "
        f"dropped, {spent / elapsed:.0%} of a core): its CPU by thread (/proc)"
    )
    for name, seconds in sorted(used.items(), key=lambda item: -item[1]):
        if seconds > 0:
            print(f"  {100 * seconds / spent:5.1f}%  {name}")
    print(
        f"  functions by share of the server's CPU (py-spy samples of each thread weighed by "
        f"its CPU; raw stacks in {out}): self% total%  function :hottest line"
    )
    for entry in hot:
        print(
            f"  {entry.self_percent:5.1f} {entry.total_percent:5.1f}  {entry.function}"
            f" :{entry.hottest_line}"
        )
    return {
        "thread_cpu_percent": {n: 100 * s / spent for n, s in used.items() if s > 0},
        "functions": [dataclasses.asdict(entry) for entry in hot],
    }


def report_lines(directory: Path) -> int:
    """Lines in every report file of `directory`."""
    total = 0
    for path in directory.iterdir():
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                total += chunk.count(b"\n")
    return total


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200, help="batches of 1,000 a stream")
    parser.add_argument("--window", type=int, default=8, help="batches in flight a stream")
    parser.add_argument("--cache-batches", type=int, default=100)
    parser.add_argument("--profile", help="sample the helix server with py-spy; raw stacks here")
    parser.add_argument("--profile-seconds", type=int, default=20)
    parser.add_argument("--profile-top", type=int, default=15)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    if cores > 1:
        os.sched_setaffinity(0, set(range(cores)) - {SERVER_CORE})
    layout = Layout(normalise(sphere_dna()))
    batches = make_batches(layout, args.batches, seed=1)
    root = Path(tempfile.mkdtemp(prefix="helix-bench-oracle-"))
    report: dict[str, Any] = {}
    options = [("grpc.max_receive_message_length", 64 << 20)]
    try:
        async with Processes() as processes:
            helix, reports = await start_helix(processes, root)
            bare = await start_bare(processes, args.window * BATCH)
            for server in (helix, bare):
                pin(server.process.pid, {SERVER_CORE})
                server.channel = grpc.aio.insecure_channel(server.process.address, options=options)
            try:
                report["stream"] = await stream_rounds((helix, bare), batches, args)
                report["cache"] = await cache_rounds(helix, layout, args)
                if args.profile:
                    report["profile"] = await profile(helix, batches, args)
            finally:
                for server in (helix, bare):
                    assert server.channel is not None
                    await server.channel.close()
            await helix.process.stop()  # it drains: every queued report line is written
        lines = report_lines(reports)
        dropped = helix.returned - lines
        print(
            f"reports: the helix server wrote {lines:,} lines for the {helix.returned:,} "
            f"verdicts it returned ({dropped:,} dropped, {dropped / helix.returned:.0%})"
        )
        report["reports"] = {"lines": lines, "verdicts": helix.returned, "dropped": dropped}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"bench": "oracle_stream", "results": report}))


if __name__ == "__main__":
    asyncio.run(main())
