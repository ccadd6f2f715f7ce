"""`helix run` (the main job) and `helix runs list|get|watch|cancel|candidates`.

`helix run DNA --oracle NAME` creates a run and watches it to the end with a live progress
bar, then prints a summary and the best candidate (or, with `--json`, one JSON object),
and leaves `runs/<run-id>/` (or `--out`): summary.json, candidates.jsonl (the retained
candidates, best first, in named form), convergence.png and convergence.json, and in the
embedded case the oracle's verdict report (reports/, JSON Lines). Without `--address` it
starts the embedded suite in this process on a loopback port — registry, orchestrator,
generator and oracle agent, over real gRPC — in a fresh data dir (or `--data-dir`), and
stops it afterwards. Ctrl-C or SIGTERM cancels the run (CancelRun), waits for CANCELLED
and still writes the run's directory; before the run (or after it, with --dashboard) the
first one stops the command, the embedded suite drained and its scratch data dir removed.
During the run a second one stops the command that way; one after a stop is the default
again (a hard stop).

Exit status: 0 SUCCEEDED, 1 FAILED or an error from the server, 2 a usage error, 130
CANCELLED or stopped by Ctrl-C before the run, 143 the same after SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2
from rich.console import Console

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.cli.client import add_client_arguments, describe_error, open_channel
from helix.cli.generate import local_dna
from helix.cli.oracles import parse_oracle_name
from helix.cli.output import message_json
from helix.cli.run_output import (
    Convergence,
    RunDisplay,
    named_candidate,
    runs_table,
    summary_dict,
    summary_table,
    write_run_dir,
)
from helix.common.channel import create_channel
from helix.common.config import (
    ConfigError,
    Duration,
    env_name,
    parse_duration_setting,
    run_loop,
)
from helix.security.client import MintingTokenSource, bearer_interceptors
from helix.security.scopes import AGENTS_READ, DNA_READ, ORACLES_READ, RUNS_READ, RUNS_WRITE
from helix.security.tokens import mint

SCOPES = (RUNS_READ, RUNS_WRITE, DNA_READ, ORACLES_READ, AGENTS_READ)
EMBEDDED_START = 30.0  # seconds the embedded agents have to register
DASHBOARD_SESSION = 8 * 3600.0  # the dashboard session of `helix run --dashboard`
DASHBOARD_LINK_TTL = 600.0  # its one-time link: long enough to open it while the run goes
# Agents that take work (a DEGRADED one too: one of its oracles failing leaves the others).
TAKES_WORK = (registry_pb2.AGENT_HEALTH_SERVING, registry_pb2.AGENT_HEALTH_DEGRADED)
DEFAULT_BUDGET = 10_000
T = TypeVar("T")
MAX_CANDIDATES_WRITTEN = 1000
TERMINAL = (
    orchestrator_pb2.RUN_STATE_SUCCEEDED,
    orchestrator_pb2.RUN_STATE_FAILED,
    orchestrator_pb2.RUN_STATE_CANCELLED,
)
EXIT = {
    orchestrator_pb2.RUN_STATE_SUCCEEDED: 0,
    orchestrator_pb2.RUN_STATE_FAILED: 1,
    orchestrator_pb2.RUN_STATE_CANCELLED: 130,
}


def _run_name(text: str) -> str:
    return text if text.startswith("runs/") else f"runs/{text}"


def add_run_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `helix run` and `helix runs …` to the command line."""
    run = subparsers.add_parser(
        "run",
        help="run a search to the end (the embedded suite unless --address)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    run.add_argument("dna", help="a DNA file (YAML or JSON), or dnas/NAME from a library")
    run.add_argument("--oracle", required=True, type=parse_oracle_name, help="oracles/NAME or NAME")
    run.add_argument(
        "--budget",
        type=int,
        help=f"max evaluations [default {DEFAULT_BUDGET} when no other limit is given]",
    )
    run.add_argument("--generations", type=int, help="max generations (generation 0 counts)")
    run.add_argument("--duration", help="max running time, e.g. 5m")
    run.add_argument("--target", type=float, help="stop once the best score reaches this")
    run.add_argument("--seed", type=int, help="the seed [default: drawn by the server]")
    direction = run.add_mutually_exclusive_group()
    direction.add_argument("--minimize", action="store_true", help="lower scores are better")
    direction.add_argument(
        "--maximize",
        action="store_true",
        help="higher scores are better [default: the oracle's own objective, else minimize]",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object at the end")
    run.add_argument("--out", type=Path, help="where to write the run's files [runs/RUN-ID]")
    run.add_argument("--run-id", help="the run's id [default: a fresh one]")
    run.add_argument(
        "--dna-dir",
        type=Path,
        help="embedded: the DNA library for dnas/NAME "
        "[default: examples/dna if present, else DATA_DIR/dnas]",
    )
    run.add_argument(
        "--oracle-config",
        type=Path,
        help="embedded: oracle configuration file [default: the builtin oracles]",
    )
    run.add_argument(
        "--dashboard",
        action="store_true",
        help="embedded: serve the web dashboard too, print a one-time login link to it, and "
        "keep serving after the run until Ctrl-C (docs/dashboard.md)",
    )
    run.add_argument(
        "--dashboard-port",
        type=int,
        help="embedded: serve the dashboard on this port of 127.0.0.1 (implies --dashboard) "
        "[default: a free one]",
    )
    add_client_arguments(run)
    run.set_defaults(handler=lambda args: _main(_run(args)), address=None)
    run.set_defaults(address=os.environ.get("HELIX_ADDRESS"))

    runs = subparsers.add_parser("runs", help="list, show, watch and cancel runs")
    actions = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the caller's runs, newest first")
    listing.add_argument(
        "--state",
        choices=["pending", "running", "succeeded", "failed", "cancelled"],
        help="only runs in this state",
    )
    listing.add_argument("--json", action="store_true", help="print the Run messages as JSON")
    add_client_arguments(listing)
    listing.set_defaults(handler=lambda args: _main(_list(args)))
    for action, helptext in (
        ("get", "one run"),
        ("watch", "a run's events until it ends"),
        ("cancel", "cancel a run"),
        ("candidates", "a run's best candidates"),
    ):
        parser = actions.add_parser(action, help=helptext)
        parser.add_argument("name", type=_run_name, help="runs/ID or ID")
        parser.add_argument("--json", action="store_true", help="print messages as JSON")
        if action == "watch":
            parser.add_argument("--after", type=int, default=0, help="after this sequence")
        if action == "cancel":
            parser.add_argument("--etag", default="", help="only if the run still has this etag")
        if action == "candidates":
            parser.add_argument("--limit", type=int, default=10, help="how many [default 10]")
            parser.add_argument("--status", choices=["passed", "failed", "error", "timeout"])
        add_client_arguments(parser, "how long to watch" if action == "watch" else None)
        parser.set_defaults(handler=lambda args, a=action: _main(_ACTIONS[a](args)))


def _main(work: Any) -> int:
    # The event loop the servers use (HELIX_EVENT_LOOP, uvloop by default): `helix run`
    # hosts the embedded suite in this process.
    try:
        return int(run_loop(work, os.environ.get(env_name("event_loop"), "uvloop")))
    except grpc.aio.AioRpcError as error:
        print(f"helix: {describe_error(error)}", file=sys.stderr)
        return 1


def _stub(channel: grpc.aio.Channel) -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub = (
        orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    )
    return stub


# --- helix run ----------------------------------------------------------------------------


def _budget(args: argparse.Namespace) -> orchestrator_pb2.RunBudget:
    budget = orchestrator_pb2.RunBudget()
    if args.budget is not None:
        if args.budget < 1:
            raise ConfigError("--budget must be at least 1")
        budget.max_evaluations = args.budget
    if args.generations is not None:
        if args.generations < 1:
            raise ConfigError("--generations must be at least 1")
        budget.max_generations = args.generations
    if args.duration is not None:
        seconds = parse_duration_setting("--duration", args.duration)
        budget.max_duration.CopyFrom(
            duration_pb2.Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9))
        )
    if not (budget.max_evaluations or budget.max_generations or budget.HasField("max_duration")):
        budget.max_evaluations = DEFAULT_BUDGET
    return budget


def _dna(args: argparse.Namespace) -> tuple[str, dna_pb2.Dna | None]:
    """(dna_name, None) for dnas/NAME, else ("", the checked DNA of the file)."""
    if args.dna.startswith("dnas/") and not Path(args.dna).exists():
        return args.dna, None
    return "", local_dna(args.dna)


@contextlib.asynccontextmanager
async def _embedded(
    args: argparse.Namespace, reports: Path, console: Console
) -> AsyncIterator[grpc.aio.Channel]:
    """The embedded suite on a loopback port for this run, and a channel to it."""
    from helix.common import logs
    from helix.suite import (
        EMBEDDED_GENERATOR_ID,
        EMBEDDED_ORACLE_ID,
        EmbeddedConfig,
        create_embedded,
        prepare_embedded,
    )

    dna_dir = args.dna_dir
    if dna_dir is None and await asyncio.to_thread(Path("examples/dna").is_dir):
        dna_dir = Path("examples/dna")
    scratch = None
    data_dir = args.data_dir
    if data_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="helix-run-")
        data_dir = Path(scratch.name)
    # A signal before the run cancels this task (`_Signals`): what writes into the data
    # dir, starts or drains the suite is finished first (`_to_the_end`), so the scratch
    # dir is removed after the last write and the suite never stops halfway.
    try:
        config = EmbeddedConfig(
            host="127.0.0.1",
            port=0,
            data_dir=data_dir,
            generator_dna_dir=dna_dir,
            oracle_config=args.oracle_config,
            oracle_reports_dir=reports,
            grace_period=Duration(1.0),
            log_level="warning",
            metrics_port=None,
        )
        logs.configure(config.log_level)
        security = await _to_the_end(asyncio.to_thread(prepare_embedded, config))
        server, _ = create_embedded(config, security)
        dashboard = None
        if args.dashboard:
            from helix.dashboard.server import Dashboard  # aiohttp: only when asked for

            dashboard = Dashboard(server.address, port=args.dashboard_port or 0)
            server.attachments.append(dashboard)
        starting = asyncio.ensure_future(server.start())
        try:
            await _to_the_end(starting)
            assert security.signer is not None
            subject = f"cli:{getpass.getuser()}"
            tokens = MintingTokenSource(security.signer, subject, SCOPES)
            channel = create_channel(server.address, interceptors=bearer_interceptors(tokens))
            try:
                await _registered(channel, (EMBEDDED_GENERATOR_ID, EMBEDDED_ORACLE_ID))
                if dashboard is not None:
                    token = mint(security.signer, subject, SCOPES, DASHBOARD_SESSION)
                    link = dashboard.login_url(token, DASHBOARD_LINK_TTL)
                    # To stdout, like every ready line (the link is what a person looks
                    # for), unless stdout is kept for the one JSON object of --json.
                    print(
                        f"helix dashboard on {link}",
                        file=sys.stderr if args.json else sys.stdout,
                        flush=True,
                    )
                    console.print(
                        f"the link signs one browser in, once, within {DASHBOARD_LINK_TTL:g}s"
                    )
                yield channel
            finally:
                await _to_the_end(channel.close())
        finally:
            # A start that failed has undone itself (HelixServer.start); one that
            # finished is drained.
            if starting.done() and not starting.cancelled() and starting.exception() is None:
                await _to_the_end(server.shutdown(1.0))
    finally:
        if scratch is not None:
            await _to_the_end(asyncio.to_thread(scratch.cleanup))


async def _to_the_end(work: Awaitable[T]) -> T:
    """Await `work` to its end even when this task is cancelled meanwhile, then re-raise
    the cancel: a thread cannot be stopped halfway (cancelling `to_thread` would leave it
    writing into a dir being removed), nor should a server's start or drain be."""
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.shield(future)
        raise


async def _registered(channel: grpc.aio.Channel, agent_ids: tuple[str, ...]) -> None:
    """Wait (at most EMBEDDED_START seconds) until the embedded agents are registered and
    serving, so the run is checked against them (an unknown DNA or oracle is refused
    at once rather than waiting PENDING for agents that will never serve it)."""
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EMBEDDED_START
    for agent_id in agent_ids:
        while True:
            try:
                found = await stub.GetAgent(
                    registry_pb2.GetAgentRequest(name=f"agents/{agent_id}"), timeout=5
                )
                if found.agent.health in TAKES_WORK:
                    break
            except grpc.aio.AioRpcError as error:
                if error.code() not in (
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.UNAVAILABLE,
                ):
                    raise
            if loop.time() > deadline:
                return  # the run will say what it waits for
            await asyncio.sleep(0.01)


async def _objective(channel: grpc.aio.Channel, oracle: str) -> int:
    """The oracle's own objective if it states one, else MINIMIZE."""
    stub = oracle_pb2_grpc.OracleServiceStub(channel)
    try:
        found = await stub.GetOracle(oracle_pb2.GetOracleRequest(name=oracle), timeout=10)
    except grpc.aio.AioRpcError:
        return common_pb2.OBJECTIVE_MINIMIZE
    return found.oracle.objective or common_pb2.OBJECTIVE_MINIMIZE


async def _run(args: argparse.Namespace) -> int:
    dna_name, dna = _dna(args)
    budget = _budget(args)
    run_id = args.run_id or f"run-{secrets.token_hex(5)}"
    out: Path = args.out or Path("runs") / run_id
    console = Console(stderr=True)
    if args.dashboard_port is not None:
        if not 0 <= args.dashboard_port <= 65535:
            raise ConfigError(f"--dashboard-port: {args.dashboard_port} is not in 0..65535")
        args.dashboard = True
    if args.dashboard and args.address:
        raise ConfigError(
            "--dashboard serves the embedded suite's dashboard; a suite at --address serves "
            "its own (helix up --dashboard-port N, then helix dashboard open)"
        )
    with _Signals() as signals:
        try:
            if args.address:
                channel = open_channel(args, SCOPES)
                async with channel:
                    return await _search(
                        args, channel, run_id, out, dna_name, dna, budget, console, signals
                    )
            async with _embedded(args, out / "reports", console) as channel:
                signals.status = await _search(
                    args, channel, run_id, out, dna_name, dna, budget, console, signals
                )
                if args.dashboard:
                    console.print("the dashboard keeps serving: Ctrl-C to stop")
                    await asyncio.Event().wait()  # until a signal stops the command
                return signals.status
        except asyncio.CancelledError:
            if not signals.stopped(asyncio.current_task()):
                raise
            return signals.exit_status()


class _Signals:
    """Ctrl-C (SIGINT) and SIGTERM for the whole of `helix run`.

    While the run goes (`running`), the first one sets `cancel`: the run is cancelled and
    its results still written. Otherwise (the embedded suite starting, the dashboard's
    keep-serving phase) the first one cancels the command's task, so that everything
    unwinds in order: the suite drains, the scratch data dir (with its signing key) is
    removed. A second one during the run stops the command so; one after a stop is the
    default again (a hard stop)."""

    def __init__(self) -> None:
        self.cancel = asyncio.Event()
        self.received: list[int] = []
        self.status: int | None = None  # the run's exit status, once it has ended
        self._running = False
        self._stopping = False
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._installed: list[int] = []

    def __enter__(self) -> _Signals:
        # SIGINT only where it is not ignored (HelixServer.serve does the same): a process
        # started with it ignored (a background job, `helix cluster up`'s) keeps it so.
        signums = [signal.SIGTERM]
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signums.append(signal.SIGINT)
        for signum in signums:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(signum, self._on, signum)
                self._installed.append(signum)
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        while self._installed:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.remove_signal_handler(self._installed.pop())

    def _on(self, signum: int) -> None:
        self.received.append(signum)
        if self._running and not self.cancel.is_set():
            self.cancel.set()
            return
        self._stopping = True
        self._remove()
        if self._task is not None:
            self._task.cancel()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._running = True
        try:
            yield
        finally:
            self._running = False

    def stopped(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether the cancellation being handled is this stop's (then taken back)."""
        return self._stopping and task is not None and task.uncancel() == 0

    def exit_status(self) -> int:
        """The run's status once it has ended, else 130 (SIGINT) or 143 (SIGTERM)."""
        if self.status is not None:
            return self.status
        return 128 + int(self.received[0]) if self.received else 130


async def _search(  # noqa: PLR0913 - the resolved arguments of `helix run`
    args: argparse.Namespace,
    channel: grpc.aio.Channel,
    run_id: str,
    out: Path,
    dna_name: str,
    dna: dna_pb2.Dna | None,
    budget: orchestrator_pb2.RunBudget,
    console: Console,
    signals: _Signals,
) -> int:
    stub = _stub(channel)
    run = await _run_message(args, channel, dna_name, dna, budget)
    started = time.monotonic()
    convergence = Convergence()
    # From CreateRun until its results are written, a signal cancels the run (one created
    # as it came is cancelled as soon as it is followed, so none is left going on a suite
    # at --address; after its end it changes nothing), and a second stops the command.
    with signals.running():
        created = await stub.CreateRun(
            orchestrator_pb2.CreateRunRequest(
                run=run, run_id=run_id, request_id=secrets.token_hex(16)
            )
        )
        name = created.run.name
        with RunDisplay(console) as display:
            display.update_run(created.run)
            await _follow(stub, name, display, convergence, signals.cancel)
        wall = time.monotonic() - started
        final = (await stub.GetRun(orchestrator_pb2.GetRunRequest(name=name))).run
        pinned = dna if dna is not None else await _library_dna(channel, dna_name)
        candidates = await _candidates(stub, name, MAX_CANDIDATES_WRITTEN)
        best_named = None
        if final.progress.HasField("best") and pinned is not None:
            best_named = named_candidate(pinned, final.progress.best.candidate)
        files = None
        if pinned is not None:
            files = await asyncio.to_thread(
                write_run_dir, out, final, pinned, convergence, candidates, wall
            )
        summary = summary_dict(final, wall, best_named)
        summary["out"] = str(out)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            console.print(summary_table(final, wall))
            if best_named is not None:
                print(json.dumps(best_named))
            if files is not None:
                console.print(f"plot: {files.plot}")
        status = EXIT.get(final.state, 1)
        if final.state == orchestrator_pb2.RUN_STATE_CANCELLED and signals.received:
            status = 128 + int(signals.received[0])  # 130 after Ctrl-C, 143 after SIGTERM
        return status


async def _run_message(
    args: argparse.Namespace,
    channel: grpc.aio.Channel,
    dna_name: str,
    dna: dna_pb2.Dna | None,
    budget: orchestrator_pb2.RunBudget,
) -> orchestrator_pb2.Run:
    run = orchestrator_pb2.Run(oracle=args.oracle, budget=budget)
    if args.maximize:
        run.objective = common_pb2.OBJECTIVE_MAXIMIZE
    elif args.minimize:
        run.objective = common_pb2.OBJECTIVE_MINIMIZE
    else:
        run.objective = await _objective(channel, args.oracle)  # type: ignore[assignment]
    if dna is not None:
        run.dna.CopyFrom(dna)
    else:
        run.dna_name = dna_name
    if args.seed is not None:
        run.seed = args.seed
    if args.target is not None:
        run.target_score = args.target
    return run


async def _follow(
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub,
    name: str,
    display: RunDisplay,
    convergence: Convergence,
    cancel: asyncio.Event,
) -> None:
    """Watch `name` to its end, resuming a broken stream from the last sequence; once
    `cancel` is set, cancel the run and watch it end."""
    last = 0
    cancelled = False
    while True:
        call = stub.WatchRun(orchestrator_pb2.WatchRunRequest(name=name, after_sequence=last))
        waiter = asyncio.ensure_future(cancel.wait())
        try:
            while True:
                reading = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait([reading, waiter], return_when=asyncio.FIRST_COMPLETED)
                if waiter in done and not cancelled:
                    cancelled = True
                    try:
                        await stub.CancelRun(orchestrator_pb2.CancelRunRequest(name=name))
                    except grpc.aio.AioRpcError as error:
                        # Ended before the cancel reached it (its end not read yet): the
                        # run keeps its state, and its end is read below.
                        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                            raise
                    waiter = asyncio.ensure_future(asyncio.Event().wait())
                response = await reading
                if not isinstance(response, orchestrator_pb2.WatchRunResponse):
                    return  # EOF: the run ended
                event = response.event
                last = event.sequence
                convergence.add(event)
                display.event(event)
        except grpc.aio.AioRpcError as error:
            if error.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                raise
            await asyncio.sleep(0.5)
        finally:
            waiter.cancel()
            call.cancel()


async def _library_dna(channel: grpc.aio.Channel, name: str) -> dna_pb2.Dna | None:
    stub = generator_pb2_grpc.GeneratorServiceStub(channel)
    try:
        found = await stub.GetDna(generator_pb2.GetDnaRequest(name=name), timeout=10)
    except grpc.aio.AioRpcError:
        return None
    return found.dna.dna


async def _candidates(
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub,
    name: str,
    limit: int,
    status: int = 0,
) -> list[candidate_pb2.ScoredCandidate]:
    out: list[candidate_pb2.ScoredCandidate] = []
    request = orchestrator_pb2.ListRunCandidatesRequest(
        name=name,
        page_size=min(limit, 1000),
        status=status,  # type: ignore[arg-type]
    )
    while len(out) < limit:
        page = await stub.ListRunCandidates(request)
        out.extend(page.candidates)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    return out[:limit]


# --- helix runs ---------------------------------------------------------------------------


async def _list(args: argparse.Namespace) -> int:
    state = orchestrator_pb2.RunState.Value(f"RUN_STATE_{args.state.upper()}") if args.state else 0
    async with open_channel(args, (RUNS_READ,)) as channel:
        stub = _stub(channel)
        request = orchestrator_pb2.ListRunsRequest(state=state)  # type: ignore[arg-type]
        runs: list[orchestrator_pb2.Run] = []
        while True:
            page = await stub.ListRuns(request)
            runs.extend(page.runs)
            if not page.next_page_token or len(runs) >= 10_000:
                break
            request.page_token = page.next_page_token
    if args.json:
        for run in runs:
            print(message_json(run))
    else:
        Console().print(runs_table(runs))
    return 0


async def _get(args: argparse.Namespace) -> int:
    async with open_channel(args, (RUNS_READ,)) as channel:
        run = (await _stub(channel).GetRun(orchestrator_pb2.GetRunRequest(name=args.name))).run
    if args.json:
        print(message_json(run, indent=2))
    else:
        from helix.cli.run_output import run_seconds

        Console().print(summary_table(run, run_seconds(run) or 0.0))
    return 0


async def _watch(args: argparse.Namespace) -> int:
    async with open_channel(args, (RUNS_READ,)) as channel:
        stub = _stub(channel)
        call = stub.WatchRun(
            orchestrator_pb2.WatchRunRequest(name=args.name, after_sequence=args.after)
        )
        async for response in call:
            print(message_json(response.event), flush=True)
    return 0


async def _cancel(args: argparse.Namespace) -> int:
    async with open_channel(args, (RUNS_WRITE,)) as channel:
        response = await _stub(channel).CancelRun(
            orchestrator_pb2.CancelRunRequest(name=args.name, etag=args.etag)
        )
    print(message_json(response.run, indent=2) if args.json else f"{response.run.name} cancelled")
    return 0


async def _list_candidates(args: argparse.Namespace) -> int:
    status = (
        candidate_pb2.VerdictStatus.Value(f"VERDICT_STATUS_{args.status.upper()}")
        if args.status
        else 0
    )
    async with open_channel(args, (RUNS_READ,)) as channel:
        found = await _candidates(_stub(channel), args.name, max(1, args.limit), status)
    for scored in found:
        if args.json:
            print(message_json(scored))
        else:
            verdict = scored.verdict
            status_name = candidate_pb2.VerdictStatus.Name(verdict.status).removeprefix(
                "VERDICT_STATUS_"
            )
            print(f"{scored.candidate.id}  {status_name:8} {verdict.score:.6g}")
    return 0


_ACTIONS = {
    "get": _get,
    "watch": _watch,
    "cancel": _cancel,
    "candidates": _list_candidates,
}
