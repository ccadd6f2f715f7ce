"""One VerifyStream batch of 1,000 sphere-10D candidates through the oracle's Python path.

In one process, no network: the request deserializer the oracle server registers for
VerifyStream (`add_oracle_servicer`, wrapped by the call chain as a server wraps it), then
`OracleServicer.VerifyStream` on an `OracleHost` serving the builtin `sphere` with a
`ReportWriter`, from the batch's bytes to its verdicts' bytes (`Encoded`, what the server
sends as it is); then the formatting of the batch's report lines (`reports._format`, which
the writer runs in a thread before it writes: oracle CPU all the same). Each figure is the
median over the batches of the process CPU time per batch, in µs.

With `--against REV`, the same runs on the services/ tree of git revision REV (exported
to a temporary folder) too: two worker processes, one per tree, take turns every `--turn`
batches (so that a busy spell of the machine hits both), and the report gives both medians
and their ratio. Both trees must give the same verdicts (durations aside) and the same
report lines (time and duration aside).

    python benchmarks/bench_oracle_batch.py [--against REV] [--batches 600] [--turn 20]
    python benchmarks/bench_oracle_batch.py --profile   # cProfile of this tree, top 25
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import hashlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000
STAGES = ("verify", "report_lines", "total")
CONFIG = """\
oracles:
  sphere:
    kind: builtin
    capacity: 100000
"""


# --- the worker: imports helix from whichever tree PYTHONPATH puts first ----------------


class _Context:
    """What VerifyStream reads of a ServicerContext."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-helix-run", "runs/bench"),)


class _Server:
    """Collects the handlers `add_oracle_servicer` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update(handlers)


def _requests(batches: int, seed: int) -> tuple[bytes, list[bytes]]:
    """The serialised open message and `batches` batches of BATCH valid candidates."""
    import helix.v1.dna_pb2 as dna_pb2
    import helix.v1.oracle_pb2 as oracle_pb2
    from helix.genome.codec import to_candidates
    from helix.genome.layout import Layout, normalise

    dna = dna_pb2.Dna(
        name="dnas/bench-sphere-10d",
        genes=[dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=-5.12, high=5.12, size=10))],
    )
    layout = Layout(normalise(dna))
    rng = np.random.default_rng(seed)
    out = []
    for k in range(batches):
        values = rng.uniform(layout.real_low, layout.real_high, size=(BATCH, layout.n_reals))
        population = dataclasses.replace(layout.empty(BATCH), reals=values)
        candidates = to_candidates(layout, population, generation=1, parent_ids=[[]] * BATCH)
        batch = oracle_pb2.VerifyBatch(batch_id=k + 1, candidates=candidates)
        out.append(oracle_pb2.VerifyStreamRequest(batch=batch).SerializeToString())
    message = oracle_pb2.VerifyStreamOpen(oracle="oracles/sphere", dna=dna)
    return oracle_pb2.VerifyStreamRequest(open=message).SerializeToString(), out


def _normalised_verdicts(data: bytes) -> bytes:
    """A VerifyStreamResponse's bytes with every verdict's duration cleared."""
    import helix.v1.oracle_pb2 as oracle_pb2

    response = oracle_pb2.VerifyStreamResponse.FromString(data)
    for verdict in response.verdicts.verdicts:
        verdict.ClearField("duration")
    return response.SerializeToString(deterministic=True)


def _normalised_lines(data: bytes) -> bytes:
    rows = [json.loads(line) for line in data.splitlines()]
    for row in rows:
        row.pop("time"), row.pop("duration")
    return json.dumps(rows).encode()


class _Batches:
    """VerifyStream on an in-process OracleHost: its batches verified on demand."""

    def __init__(self, batches: int, seed: int) -> None:
        self.opening, self.requests = _requests(batches, seed)
        self.sent = 0
        self.verdicts = hashlib.sha256()
        self.lines = hashlib.sha256()

    async def start(self, folder: Path) -> None:
        import helix.v1.oracle_pb2 as oracle_pb2
        from helix.common.interceptors import CallChain
        from helix.oracle import reports
        from helix.oracle.config import parse_config
        from helix.oracle.host import OracleHost
        from helix.oracle.service import OracleServicer
        from helix.oracle.serving import add_oracle_servicer

        self.reports = reports
        self.writer = reports.ReportWriter(folder, queue_size=1 << 30)
        self.host = OracleHost(None, self.writer)
        check = parse_config(CONFIG, "bench.yaml", folder)
        if not await self.host.apply(check):
            raise RuntimeError(f"invalid configuration: {check.violations}")
        servicer = OracleServicer(self.host)
        server = _Server()
        add_oracle_servicer(servicer, server)  # type: ignore[arg-type]
        handler = CallChain([]).wrap(
            "/helix.v1.OracleService/VerifyStream", server.handlers["VerifyStream"]
        )
        deserialize = handler.request_deserializer
        assert deserialize is not None
        self.deserialize: Callable[[bytes], Any] = deserialize
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()

        async def incoming() -> AsyncIterator[Any]:
            while (item := await self.inbox.get()) is not None:
                yield item

        self.responses = aiter(servicer.VerifyStream(incoming(), _Context()))  # type: ignore[arg-type]
        self.inbox.put_nowait(self.deserialize(self.opening))
        first = await anext(self.responses)
        assert isinstance(first, oracle_pb2.VerifyStreamResponse)
        assert first.credit.candidates

    async def run(self, count: int, profile: cProfile.Profile | None) -> dict[str, list[float]]:
        """The next `count` batches: the seconds of each stage of each."""
        from helix.common.interceptors import Encoded

        writer = self.writer
        times: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for request in self.requests[self.sent : self.sent + count]:
            if profile is not None:
                profile.enable()
            started = time.process_time()
            self.inbox.put_nowait(self.deserialize(request))
            while not isinstance(answer := await anext(self.responses), Encoded):
                pass  # credit
            verified = time.process_time()
            pending = list(writer._pending)  # the lines the writer would format
            writer._pending.clear()
            writer._queued = 0
            text = self.reports._format(pending)
            done = time.process_time()
            if profile is not None:
                profile.disable()
            times["verify"].append(verified - started)
            times["report_lines"].append(done - verified)
            times["total"].append(done - started)
            if self.sent < 5:
                self.verdicts.update(_normalised_verdicts(answer.data))
                self.lines.update(_normalised_lines(text))
            self.sent += 1
        return times

    async def stop(self) -> None:
        self.inbox.put_nowait(None)
        async for _ in self.responses:
            pass
        await self.host.close()
        await self.writer.close()


async def _serve(args: argparse.Namespace) -> None:
    """The worker: after "ready", each line on stdin asks for that many batches; each
    answer is one JSON line of their stage times (µs), then digests of the outputs."""
    profile = cProfile.Profile() if args.profile else None
    batches = _Batches(args.batches, args.seed)
    with tempfile.TemporaryDirectory(prefix="helix-bench-batch-") as folder:
        await batches.start(Path(folder))
        if profile is not None:
            await batches.run(args.batches, profile)
            pstats.Stats(profile).sort_stats(args.sort).print_stats(25)
        else:
            print("ready", flush=True)
            while line := sys.stdin.readline():
                times = await batches.run(int(line), None)
                us = {stage: [t * 1e6 for t in values] for stage, values in times.items()}
                print(json.dumps(us), flush=True)
        await batches.stop()
    print(
        json.dumps({"verdicts": batches.verdicts.hexdigest(), "lines": batches.lines.hexdigest()})
    )


# --- the driver ---------------------------------------------------------------------------


def _export(rev: str, into: Path) -> Path:
    """services/ of git revision `rev`, written under `into`; the folder to put on the path."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "services"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "services"


class _Worker:
    """A worker process on one tree's services/."""

    def __init__(self, services: Path, args: argparse.Namespace) -> None:
        path = os.pathsep.join([str(services), str(ROOT / "generated")])
        argv = [sys.executable, __file__, "--worker", "--batches", str(args.batches)]
        argv += ["--seed", str(args.seed)]
        self.process = subprocess.Popen(
            argv,
            env={**os.environ, "PYTHONPATH": path},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.times: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self._line()  # "ready"

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker ended ({self.process.wait()})")
        return line

    def run(self, count: int) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        for stage, values in json.loads(self._line()).items():
            self.times[stage] += values

    def finish(self) -> dict[str, str]:
        assert self.process.stdin is not None
        self.process.stdin.close()
        digests: dict[str, str] = json.loads(self._line())
        self.process.wait()
        return digests


def drive(args: argparse.Namespace) -> None:
    trees = {"this tree": ROOT / "services"}
    with tempfile.TemporaryDirectory(prefix="helix-bench-against-") as folder:
        if args.against:
            trees = {args.against: _export(args.against, Path(folder)), **trees}
        workers = {name: _Worker(services, args) for name, services in trees.items()}
        order = list(workers.values())
        turns = args.batches // args.turn
        for _ in range(turns):
            for one in order:
                one.run(args.turn)
            order.reverse()  # neither tree always goes first
        digests = {name: one.finish() for name, one in workers.items()}
    print(
        f"one VerifyStream batch of {BATCH:,} sphere-10D candidates, in process (deserialize, "
        f"verify, verdict bytes; then its report lines): process CPU µs per batch, median of "
        f"{turns * args.turn} batches each, the trees taking turns every {args.turn}"
    )
    medians = {
        name: {stage: statistics.median(one.times[stage]) for stage in STAGES}
        for name, one in workers.items()
    }
    for name, figures in medians.items():
        shown = "  ".join(f"{stage} {figures[stage]:7.0f}" for stage in STAGES)
        print(f"  {name:12s} {shown}")
    if args.against:
        base, now = medians[args.against], medians["this tree"]
        shown = "  ".join(f"{stage} {base[stage] / now[stage]:5.2f}x" for stage in STAGES)
        print(f"  {args.against} / this tree: {shown}")
        if len({(d["verdicts"], d["lines"]) for d in digests.values()}) != 1:
            raise AssertionError("the trees gave different verdicts or report lines")
        print("  same verdicts (durations aside) and report lines (time, duration aside)")
    print(json.dumps({"bench": "oracle_batch", "results": medians}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="git revision to compare with (its services/)")
    parser.add_argument("--batches", type=int, default=600, help="batches each tree verifies")
    parser.add_argument("--turn", type=int, default=20, help="batches a turn")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile this tree instead")
    parser.add_argument("--sort", default="tottime", help="the profile's order (pstats keys)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker or args.profile:
        asyncio.run(_serve(args))
    else:
        drive(args)


if __name__ == "__main__":
    main()
