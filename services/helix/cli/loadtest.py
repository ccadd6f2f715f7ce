"""`helix loadtest`: drive a running deployment with simulated agents and runs, and
measure every RPC it makes.

It never starts a server: it targets `--address` (and `--registry-address`, by default the
same) and stops by itself after `--duration` (default 60s) or `--count` runs in all.

- N simulated agents (`--agents`): each RegisterAgent as an ORACLE agent that hosts no
  oracle, with health NOT_SERVING and the label `helix-loadtest=<session>` — an agent no
  orchestrator gives work to (it takes only SERVING or DEGRADED agents hosting the run's
  oracle) — then Heartbeat at its lease's pace (a third of the TTL, or
  `--heartbeat-interval`), first ones spread over one interval, and DeregisterAgent at
  the end. A lost lease (heartbeat NOT_FOUND) is registered again. Every agent it
  registered is deregistered when it stops, on Ctrl-C, SIGTERM and errors too; only a
  second signal or a kill leaves them to expire at their TTL.
- M concurrent runs (`--runs`): each CreateRun with a small budget on `--dna` and
  `--oracle`, WatchRun to the end, GetRun for the final counters, ListAgents of its own
  agents, then the next run. A run still going after `--run-timeout` (default 5m) is
  cancelled and counted as timed out. At the end of `--duration` (or on Ctrl-C) runs still
  going are cancelled (CancelRun) and watched to their end.

Before any load it checks, through the registry, that a generator advertises the DNA and
an oracle agent that takes work (SERVING, DEGRADED or health unset) hosts the oracle (else
the runs would wait PENDING), and that the orchestrator answers: an unreachable address or
a missing DNA or oracle is a clear error, exit status 1.

Report: per method calls, calls/s, latency p50/p95/p99/max (ms, of calls that succeeded)
and errors by status code; runs by outcome and evaluations/s. Rates are over the load
(from its start to the stop); the checks and the drain are timed apart. A table, or with
`--json` one JSON document on stdout (keys in docs/loadtest.md). Exit status: 0 when calls
of the load succeeded (not counting the checks, nor the calls of runs that timed out), 1
when none did (or the checks failed), 2 for bad flags, 130 after Ctrl-C and 143 after
SIGTERM (the report printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict

import grpc
from rich.console import Console
from rich.live import Live

import helix.v1.common_pb2 as common_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.agents.support import describe
from helix.cli.client import add_client_arguments, open_channel
from helix.cli.loadstats import report_tables, some_names
from helix.cli.loadwork import (
    GET_ORACLE,
    LIST_AGENTS,
    LIST_RUNS,
    LoadSettings,
    Session,
    SimulatedAgent,
    run_template,
    runner,
)
from helix.cli.oracles import parse_oracle_name
from helix.common.aio import cancel_and_wait
from helix.common.config import ConfigError, env_name, parse_duration_setting, run_loop
from helix.common.validation import check_resource_name
from helix.security.scopes import (
    AGENTS_READ,
    AGENTS_WRITE,
    ORACLES_READ,
    RUNS_READ,
    RUNS_WRITE,
)

SCOPES = (AGENTS_READ, AGENTS_WRITE, ORACLES_READ, RUNS_READ, RUNS_WRITE)
DEFAULT_DURATION = "60s"
DEFAULT_RUN_TIMEOUT = "5m"
# An agent registered without health is SERVING; these take work (as the orchestrator says).
TAKING_WORK = (
    registry_pb2.AGENT_HEALTH_UNSPECIFIED,
    registry_pb2.AGENT_HEALTH_SERVING,
    registry_pb2.AGENT_HEALTH_DEGRADED,
)
MAX_AGENTS = 10_000
MAX_RUNS = 1_000
MAX_COUNT = 1_000_000
MAX_BUDGET = 10**9
OBJECTIVES = {
    "minimize": common_pb2.OBJECTIVE_MINIMIZE,
    "maximize": common_pb2.OBJECTIVE_MAXIMIZE,
}


def _bounded(flag: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ConfigError(f"{flag}: {value} is not within {low}..{high:,}")
    return value


def _seconds(flag: str, text: str, low: float, high: float, bounds: str) -> float:
    seconds = parse_duration_setting(flag, text)
    if not low <= seconds <= high:
        raise ConfigError(f"{flag}: {text!r} is not within {bounds}")
    return seconds


def settings_from(args: argparse.Namespace) -> LoadSettings:
    """Check the flags (ConfigError naming the flag, exit status 2) before any call."""
    agents = _bounded("--agents", args.agents, 0, MAX_AGENTS)
    runs = _bounded("--runs", args.runs, 0, MAX_RUNS)
    budget = _bounded("--budget", args.budget, 1, MAX_BUDGET)
    if args.duration is not None and args.count is not None:
        raise ConfigError("--duration and --count exclude each other: give one")
    count = None if args.count is None else _bounded("--count", args.count, 1, MAX_COUNT)
    duration = None
    if count is None:
        text = args.duration or DEFAULT_DURATION
        duration = _seconds("--duration", text, 0.001, 30 * 86400, "1ms..30 days")
    if agents == 0 and runs == 0:
        raise ConfigError("--agents and --runs are both 0: nothing to do")
    if count is not None and runs == 0:
        raise ConfigError("--count counts runs: it needs --runs of 1 or more")
    ttl = _seconds("--agent-ttl", args.agent_ttl, 1, 3600, "1s..1h")
    interval = None
    if args.heartbeat_interval is not None:
        interval = _seconds("--heartbeat-interval", args.heartbeat_interval, 0.01, 3600, "10ms..1h")
    timeout = _seconds("--timeout", args.timeout, 0.001, 3600, "1ms..1h")
    run_timeout = _seconds("--run-timeout", args.run_timeout, 0.01, 30 * 86400, "10ms..30 days")
    dna = args.dna if args.dna.startswith("dnas/") else f"dnas/{args.dna}"
    if check_resource_name(dna, "dnas", "dna"):
        raise ConfigError(f"--dna: {args.dna!r} is not dnas/ID or ID, ID matching [a-z][a-z0-9-]*")
    return LoadSettings(
        address=args.address,
        registry_address=args.registry_address or args.address,
        agents=agents,
        runs=runs,
        oracle=args.oracle,
        dna=dna,
        budget=budget,
        duration_seconds=duration,
        count=count,
        agent_ttl_seconds=ttl,
        heartbeat_interval_seconds=interval,
        timeout_seconds=timeout,
        run_timeout_seconds=run_timeout,
        objective=args.objective or "",
    )


def add_loadtest_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `helix loadtest` to the `helix` command line."""
    parser = subparsers.add_parser(
        "loadtest",
        help="drive a running deployment with simulated agents and runs; measure every RPC",
        description="\n\n".join(__doc__.split("\n\n")[:2]) if __doc__ else None,
    )
    parser.add_argument("--agents", type=int, default=10, help="simulated agents [default 10]")
    parser.add_argument("--runs", type=int, default=2, help="concurrent runs [default 2]")
    parser.add_argument(
        "--oracle",
        type=parse_oracle_name,
        default="oracles/rastrigin",
        help="the runs' oracle, oracles/NAME or NAME [default rastrigin]",
    )
    parser.add_argument(
        "--dna",
        default="dnas/rastrigin",
        help="the runs' DNA in the generators' library, dnas/NAME or NAME "
        "[default rastrigin, examples/dna/rastrigin.yaml]",
    )
    parser.add_argument("--budget", type=int, default=500, help="evaluations per run [default 500]")
    parser.add_argument(
        "--duration", help=f"stop after this long, e.g. 30s, 5m [default {DEFAULT_DURATION}]"
    )
    parser.add_argument("--count", type=int, help="stop after this many runs in all")
    parser.add_argument(
        "--run-timeout",
        default=DEFAULT_RUN_TIMEOUT,
        help="cancel a run still going after this long, counted as timed out "
        f"[default {DEFAULT_RUN_TIMEOUT}]",
    )
    parser.add_argument(
        "--agent-ttl", default="10s", help="lease TTL the agents ask for [default 10s]"
    )
    parser.add_argument(
        "--heartbeat-interval",
        help="time between an agent's heartbeats [default: a third of the granted TTL]",
    )
    parser.add_argument(
        "--registry-address",
        help="the registry's HOST:PORT when it is not --address's [default --address]",
    )
    parser.add_argument(
        "--objective",
        choices=("minimize", "maximize"),
        help="the runs' objective [default: the oracle's own, read with GetOracle at "
        "--address; give it when --address serves no OracleService]",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_client_arguments(parser)
    parser.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    # A load generator as fast as the servers: uvloop unless HELIX_EVENT_LOOP says otherwise.
    return int(
        run_loop(_loadtest(args, settings), os.environ.get(env_name("event_loop"), "uvloop"))
    )


# --- before and around the load ---------------------------------------------------------


class Unready(Exception):
    """The deployment cannot take this load test (unreachable, no DNA, no oracle)."""


async def _listed(session: Session, kind: int) -> list[registry_pb2.Agent]:
    request = registry_pb2.ListAgentsRequest(page_size=1000, kind=kind)  # type: ignore[arg-type]
    agents: list[registry_pb2.Agent] = []
    while True:
        with session.measure(LIST_AGENTS):
            page = await session.registry.ListAgents(request)
        agents.extend(page.agents)
        if not page.next_page_token or len(agents) >= 100_000:
            return agents
        request.page_token = page.next_page_token


def _check_hosts(
    settings: LoadSettings, generators: list[registry_pb2.Agent], oracles: list[registry_pb2.Agent]
) -> None:
    """Unready unless a generator advertises the DNA and an oracle agent that takes work
    hosts the oracle."""
    where = settings.registry_address
    if not any(settings.dna in agent.generator.dnas for agent in generators):
        served = sorted({dna for agent in generators for dna in agent.generator.dnas})
        raise Unready(
            f"no generator agent in the registry at {where} serves --dna {settings.dna} "
            f"(served: {', '.join(served[:20]) or 'none'})"
        )
    hosting = [agent for agent in oracles if settings.oracle in agent.oracle.oracles]
    if not any(agent.health in TAKING_WORK for agent in hosting):
        if hosting:
            idle = some_names(sorted(agent.name for agent in hosting), 3)
            raise Unready(
                f"no oracle agent in the registry at {where} that takes work hosts --oracle "
                f"{settings.oracle} ({idle}: not SERVING or DEGRADED)"
            )
        hosted = sorted({oracle for agent in oracles for oracle in agent.oracle.oracles})
        raise Unready(
            f"no oracle agent in the registry at {where} hosts --oracle {settings.oracle} "
            f"(hosted: {', '.join(hosted[:20]) or 'none'})"
        )


async def _preflight(session: Session) -> int:
    """Check the deployment can take the runs; the runs' objective (the oracle's own)."""
    settings = session.settings
    where = settings.registry_address
    try:
        generators = await _listed(session, registry_pb2.AGENT_KIND_GENERATOR)
        oracles = await _listed(session, registry_pb2.AGENT_KIND_ORACLE) if settings.runs else []
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise Unready(f"cannot reach the registry at {where}: {describe(error)}") from None
        raise Unready(f"the registry at {where} refused ListAgents: {describe(error)}") from None
    if not settings.runs:
        return common_pb2.OBJECTIVE_MINIMIZE
    _check_hosts(settings, generators, oracles)
    front = settings.address
    try:
        with session.measure(LIST_RUNS):
            await session.orchestrator.ListRuns(orchestrator_pb2.ListRunsRequest(page_size=1))
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise Unready(f"cannot reach the orchestrator at {front}: {describe(error)}") from None
        raise Unready(f"the orchestrator at {front} refused ListRuns: {describe(error)}") from None
    if settings.objective:
        return OBJECTIVES[settings.objective]
    try:
        with session.measure(GET_ORACLE):
            found = await session.oracles.GetOracle(
                oracle_pb2.GetOracleRequest(name=settings.oracle)
            )
    except grpc.aio.AioRpcError:
        return common_pb2.OBJECTIVE_MINIMIZE  # no oracle service there: minimize
    return found.oracle.objective or common_pb2.OBJECTIVE_MINIMIZE


@contextlib.contextmanager
def _interrupts(session: Session, received: list[int]) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM (appended to `received`) stops the test cleanly; a
    second one of either is the default again (the agents left then expire at their TTL)."""
    loop = asyncio.get_running_loop()
    installed: list[int] = []

    def remove() -> None:
        while installed:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(installed.pop())

    def stop(signum: int) -> None:
        received.append(signum)
        session.end("interrupt")
        remove()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop, signum)
            installed.append(signum)
    try:
        yield
    finally:
        remove()


async def _loadtest(args: argparse.Namespace, settings: LoadSettings) -> int:
    registry_args = argparse.Namespace(**{**vars(args), "address": settings.registry_address})
    async with (
        open_channel(args, SCOPES) as front,
        open_channel(registry_args, SCOPES) as registry,
    ):
        session = Session(settings, registry, front)
        started = time.monotonic()
        try:
            objective = await _preflight(session)
        except Unready as exc:
            print(f"helix loadtest: {exc}", file=sys.stderr)
            return 1
        received: list[int] = []
        with _interrupts(session, received):
            load_started = time.monotonic()
            session.loading = True  # from here the calls that succeed count (exit status)
            await _drive(session, objective)
        ended = time.monotonic()
    # (a signal in the instant before the load started: a load of 0 s)
    stopped_at = max(session.stopped_at or ended, load_started)
    report = session.stats.report(
        _settings_report(session),
        session.stopped_by,
        checks_seconds=load_started - started,
        load_seconds=stopped_at - load_started,
        drain_seconds=ended - stopped_at,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        Console(width=max(120, Console().width)).print(report_tables(report))
    left = report["agents"]["left_registered"]
    if left:
        print(
            f"helix loadtest: {len(left):,} agents could not be deregistered "
            f"({some_names(left)}): they expire at their TTL",
            file=sys.stderr,
        )
    if received:  # the shell's 128 + the signal's number
        return 143 if received[0] == signal.SIGTERM else 130
    if not session.load_ok:
        print(
            "helix loadtest: no call of the load succeeded "
            "(the checks before it do not count; nor do runs that timed out)",
            file=sys.stderr,
        )
        return 1
    return 0


def _settings_report(session: Session) -> dict[str, object]:
    found = asdict(session.settings)
    found["session"] = session.id
    return found


async def _drive(session: Session, objective: int) -> None:
    """The agents and runs, until the duration or count is over (or Ctrl-C)."""
    settings = session.settings
    agents = [SimulatedAgent(session, index) for index in range(settings.agents)]
    session.stats.agents.simulated = len(agents)
    template = run_template(settings, objective)
    timer = None
    if settings.duration_seconds is not None:
        timer = asyncio.get_running_loop().call_later(
            settings.duration_seconds, session.end, "duration"
        )
    runners = [asyncio.ensure_future(runner(session, template)) for _ in range(settings.runs)]
    lives = [asyncio.ensure_future(agent.live()) for agent in agents]
    progress = asyncio.ensure_future(_progress(session))
    try:
        if runners:
            await asyncio.gather(*runners)
            session.end("count")  # runners end before the duration only with --count
        await asyncio.gather(*lives)
    finally:
        if timer is not None:
            timer.cancel()
        session.end("error")  # whatever else ends it: the agents deregister
        await asyncio.gather(*runners, *lives, return_exceptions=True)
        await cancel_and_wait([progress])


def _status(session: Session, started: float) -> str:
    stats = session.stats
    calls = sum(method.calls for method in stats.methods.values())
    ended = sum(stats.runs.states.values())
    limit = session.settings.duration_seconds
    elapsed = time.monotonic() - started
    clock = f"{elapsed:.0f}s" + (f" of {limit:.0f}s" if limit is not None else "")
    stopping = " - stopping: cancelling runs, deregistering agents" if session.stop.is_set() else ""
    return (
        f"helix loadtest {clock}: {calls:,} calls, {ended:,} runs ended, "
        f"{stats.agents.registered - stats.agents.deregistered:,} agents registered{stopping}"
    )


async def _progress(session: Session) -> None:
    """A status line on a terminal's stderr while the load runs (erased at the end)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        return
    started = time.monotonic()
    with Live(_status(session, started), console=console, transient=True) as live:
        while True:
            await asyncio.sleep(0.5)
            live.update(_status(session, started))
