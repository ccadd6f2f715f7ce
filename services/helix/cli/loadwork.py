"""The load of `helix loadtest` (see its module): simulated agents and runs, every call
measured, until the session's stop event is set.

- `SimulatedAgent`: registers as an ORACLE agent hosting no oracle, NOT_SERVING, labelled
  `helix-loadtest=<session>` (no orchestrator gives it work), heartbeats, registers again
  after a lost lease, and is deregistered (by its etag) once registered, however it stops.
- runners: CreateRun, WatchRun to the end (cancelling the run once the test stops, or
  once it has outlived `--run-timeout`), GetRun, ListAgents of the session's agents; then
  the next run.

`Session.load_ok` counts the calls of the load that succeeded (the exit status): not the
checks before it, nor the calls of a run that outlived `--run-timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2

import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.agents.support import describe, retry_delay, seconds
from helix.cli.loadstats import OK, LoadStats

LABEL = "helix-loadtest"  # label of the simulated agents; its value is the session id
RETRY_PAUSE = 0.5  # seconds before retrying a refused call that named no delay
MAX_DEREGISTER_SECONDS = 120.0  # the longest an agent retries its deregistration
MAX_WATCH_ATTEMPTS = 5  # broken WatchRun streams of one run before it is given up
AGENT_ENDPOINT = "127.0.0.1:9"  # advertised, never dialled: the agents take no work
AGENT_CAPACITY = 1

REGISTER = "RegistryService/RegisterAgent"
HEARTBEAT = "RegistryService/Heartbeat"
DEREGISTER = "RegistryService/DeregisterAgent"
LIST_AGENTS = "RegistryService/ListAgents"
GET_ORACLE = "OracleService/GetOracle"
LIST_RUNS = "OrchestratorService/ListRuns"
CREATE_RUN = "OrchestratorService/CreateRun"
WATCH_RUN = "OrchestratorService/WatchRun"
GET_RUN = "OrchestratorService/GetRun"
CANCEL_RUN = "OrchestratorService/CancelRun"
TERMINAL = (
    orchestrator_pb2.RUN_STATE_SUCCEEDED,
    orchestrator_pb2.RUN_STATE_FAILED,
    orchestrator_pb2.RUN_STATE_CANCELLED,
)
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)


@dataclass(frozen=True)
class LoadSettings:
    """The checked flags of one load test."""

    address: str
    registry_address: str
    agents: int
    runs: int
    oracle: str
    dna: str
    budget: int
    duration_seconds: float | None
    count: int | None
    agent_ttl_seconds: float
    heartbeat_interval_seconds: float | None  # None: a third of the granted TTL
    timeout_seconds: float  # --timeout: each call's deadline; also how long a run cancelled
    # at the end may take to end
    run_timeout_seconds: float  # --run-timeout: a run still going after this is cancelled
    objective: str  # "minimize", "maximize", or "" for the oracle's own (GetOracle)


# --- measuring --------------------------------------------------------------------------


class Session:
    """One load test: its stubs, what it measured, and the stop signal."""

    def __init__(
        self, settings: LoadSettings, registry: grpc.aio.Channel, front: grpc.aio.Channel
    ) -> None:
        self.settings = settings
        self.id = f"lt-{secrets.token_hex(4)}"
        self.registry: registry_pb2_grpc.RegistryServiceAsyncStub = (
            registry_pb2_grpc.RegistryServiceStub(registry)
        )
        self.orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub = (
            orchestrator_pb2_grpc.OrchestratorServiceStub(front)
        )
        self.oracles: oracle_pb2_grpc.OracleServiceAsyncStub = oracle_pb2_grpc.OracleServiceStub(
            front
        )
        self.stats = LoadStats()
        self.stop = asyncio.Event()
        self.stopped_by = ""
        self.stopped_at: float | None = None  # time.monotonic() when the stop came
        self.loading = False  # set once the load starts: the checks before it do not count
        self.load_ok = 0  # calls of the load that succeeded (see the module docstring)
        self._runs_taken = 0
        self._warned: set[tuple[str, str]] = set()  # (method, code): bounded by both

    @contextlib.contextmanager
    def measure(self, method: str, run: RunCalls | None = None) -> Iterator[None]:
        """Record one call of `method`: its latency and status code. A call cancelled
        (the load test stopping) is not recorded. One that succeeded counts in `load_ok`
        once the load has started (for a run's call: once the run ends in time)."""
        started = time.perf_counter()
        try:
            yield
        except grpc.aio.AioRpcError as error:
            self.stats.record(method, time.perf_counter() - started, error.code().name)
            raise
        self.record_ok(method, time.perf_counter() - started, run)

    def record_ok(self, method: str, seconds: float, run: RunCalls | None = None) -> None:
        self.stats.record(method, seconds, OK)
        if run is not None:
            run.ok += 1
        elif self.loading:
            self.load_ok += 1

    def warn(self, method: str, error: grpc.aio.AioRpcError, what: str = "") -> None:
        """Say on stderr why a call failed, once per method and status code (N agents or
        runners failing alike would otherwise say it N times, or once a second)."""
        key = (method, error.code().name)
        if key in self._warned:
            return
        self._warned.add(key)
        subject = f"{what}: " if what else ""
        print(f"helix loadtest: {subject}{method}: {describe(error)}", file=sys.stderr)

    def warn_once(self, key: str, message: str) -> None:
        """Print `message` on stderr the first time `key` (one of a fixed few) comes."""
        if ("", key) not in self._warned:
            self._warned.add(("", key))
            print(message, file=sys.stderr)

    def end(self, why: str) -> None:
        if not self.stop.is_set():
            self.stopped_by = why
            self.stopped_at = time.monotonic()
            self.stop.set()

    def take_run(self) -> bool:
        """Whether another run may start (`--count`: K in all)."""
        if self.stop.is_set():
            return False
        count = self.settings.count
        if count is not None and self._runs_taken >= count:
            return False
        self._runs_taken += 1
        return True

    async def pause(self, delay: float) -> bool:
        """Wait `delay` seconds or until the load test stops; whether it stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.stop.wait()
        return self.stop.is_set()


# --- the simulated agents ---------------------------------------------------------------


class SimulatedAgent:
    """An agent that registers, heartbeats and deregisters, and takes no work."""

    def __init__(self, session: Session, index: int) -> None:
        self.session = session
        self.agent_id = f"{session.id}-agent-{index}"
        self.name = f"agents/{self.agent_id}"
        self.epoch = 0
        self.etag = ""
        self.ttl = session.settings.agent_ttl_seconds
        self.registered = False
        self.refused = False  # its registration was refused for good
        self.unsure = False  # a RegisterAgent deadline: it may have registered unseen

    def _agent(self) -> registry_pb2.Agent:
        ttl = self.session.settings.agent_ttl_seconds
        agent = registry_pb2.Agent(
            kind=registry_pb2.AGENT_KIND_ORACLE,
            endpoint=AGENT_ENDPOINT,
            capacity=AGENT_CAPACITY,
            health=registry_pb2.AGENT_HEALTH_NOT_SERVING,
            labels={LABEL: self.session.id},
            ttl=duration_pb2.Duration(seconds=int(ttl), nanos=int(ttl % 1 * 1e9)),
        )
        agent.oracle.SetInParent()  # hosts no oracle
        return agent

    async def register(self) -> bool:
        """Register (retrying refusals with the same request_id until the test stops).
        False when refused for good (`refused`) or when the test stopped first; after a
        DEADLINE_EXCEEDED the registry may have registered it all the same (`unsure`)."""
        session = self.session
        request = registry_pb2.RegisterAgentRequest(
            agent_id=self.agent_id, agent=self._agent(), request_id=secrets.token_hex(16)
        )
        while not session.stop.is_set():
            try:
                with session.measure(REGISTER):
                    response = await session.registry.RegisterAgent(request)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:
                    session.warn(REGISTER, error, "an agent could not register")
                    self.refused = True
                    return False
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self.unsure = True
                await session.pause(retry_pause(error))
                continue
            self.epoch = response.agent.epoch
            self.etag = response.agent.etag
            self.ttl = seconds(response.agent.ttl) or self.ttl
            self.registered = True
            self.unsure = False
            return True
        return False

    def _interval(self) -> float:
        given = self.session.settings.heartbeat_interval_seconds
        return given if given is not None else max(self.ttl / 3, 0.01)

    async def live(self) -> None:
        """Register, heartbeat until the test stops, deregister (always, once registered)."""
        session = self.session
        try:
            if not await self.register():
                if self.refused:  # not one the stop interrupted
                    session.stats.agents.registrations_failed += 1
                return
            session.stats.agents.registered += 1
            # The first heartbeats spread over one interval, so N agents do not beat together.
            delay = random.uniform(0, self._interval())
            while not await session.pause(delay):
                delay = self._interval()
                if not await self._heartbeat():
                    return
        finally:
            if self.registered:
                await self.deregister()
            elif self.unsure:  # it may be registered: by name (NOT_FOUND if it is not)
                await self.deregister(unsure=True)

    async def _heartbeat(self) -> bool:
        """One heartbeat; False once this registration is gone for good."""
        session = self.session
        request = registry_pb2.HeartbeatRequest(name=self.name, epoch=self.epoch)
        try:
            with session.measure(HEARTBEAT):
                response = await session.registry.Heartbeat(request)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # the lease lapsed: register again
                session.stats.agents.leases_lost += 1
                self.registered = False
                return await self.register()
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:  # superseded: not ours
                self.registered = False
                return False
            return True  # recorded; the next heartbeat tries again
        session.stats.agents.heartbeats += 1
        self.etag = response.etag or self.etag
        return True

    async def deregister(self, unsure: bool = False) -> None:
        """Remove this registration (only it: by its etag); NOT_FOUND means it is gone.
        Refusals (a rate limit after N agents stop at once) are retried at the pace the
        server asks, for as long as the lease could still be alive: after that the agent
        has expired anyway. `unsure`: a registration this agent never saw succeed (its
        call's deadline passed); removed, it counts as registered and deregistered, and
        NOT_FOUND (it never registered) counts as nothing."""
        session = self.session
        request = registry_pb2.DeregisterAgentRequest(name=self.name, etag=self.etag)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + min(self.ttl + 1.0, MAX_DEREGISTER_SECONDS)
        while True:
            try:
                with session.measure(DEREGISTER):
                    await session.registry.DeregisterAgent(request)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    if unsure:
                        self.unsure = False
                        return
                    break
                if error.code() in RETRYABLE and loop.time() < give_up:
                    await asyncio.sleep(retry_pause(error))
                    continue
                session.warn(DEREGISTER, error, "an agent could not deregister")
                session.stats.agents.left_registered.append(self.name)
                return
            break
        if unsure:
            self.unsure = False
            session.stats.agents.registered += 1
        self.registered = False
        session.stats.agents.deregistered += 1


def retry_pause(error: grpc.aio.AioRpcError) -> float:
    """How long to wait before retrying a refused call: the delay its RetryInfo asks for
    (else RETRY_PAUSE), stretched by up to half again at random, so that N agents or
    runners refused together do not all come back in the same instant."""
    return (retry_delay(error) or RETRY_PAUSE) * random.uniform(1.0, 1.5)


# --- the runs ---------------------------------------------------------------------------


def run_template(settings: LoadSettings, objective: int) -> orchestrator_pb2.Run:
    return orchestrator_pb2.Run(
        display_name="helix loadtest",
        dna_name=settings.dna,
        oracle=settings.oracle,
        objective=objective,  # type: ignore[arg-type]
        budget=orchestrator_pb2.RunBudget(max_evaluations=settings.budget),
    )


class RunCalls:
    """One run's calls that succeeded (they count in `Session.load_ok` only if the run
    ends in time), and whether it outlived `--run-timeout`."""

    __slots__ = ("ok", "timed_out")

    def __init__(self) -> None:
        self.ok = 0
        self.timed_out = False


async def runner(session: Session, template: orchestrator_pb2.Run) -> None:
    """Runs one after another until the test stops."""
    while session.take_run():
        await _one_run(session, template)


async def _one_run(session: Session, template: orchestrator_pb2.Run) -> None:
    tally = session.stats.runs
    tally.started += 1
    started = time.monotonic()
    calls = RunCalls()
    request = orchestrator_pb2.CreateRunRequest(run=template, request_id=secrets.token_hex(16))
    try:
        with session.measure(CREATE_RUN, calls):
            created = await session.orchestrator.CreateRun(request)
    except grpc.aio.AioRpcError as error:
        tally.create_failed += 1
        if error.code() in RETRYABLE:
            await session.pause(retry_pause(error))
        else:
            session.warn(CREATE_RUN, error)
            await session.pause(RETRY_PAUSE)  # a persistent refusal must not spin
        return
    name = created.run.name
    deadline = asyncio.get_running_loop().time() + session.settings.run_timeout_seconds
    try:
        await _follow(session, name, deadline, calls)
        with session.measure(GET_RUN, calls):
            final = (
                await session.orchestrator.GetRun(orchestrator_pb2.GetRunRequest(name=name))
            ).run
    except (grpc.aio.AioRpcError, TimeoutError):
        if calls.timed_out:
            tally.timed_out += 1
        else:
            tally.not_followed += 1
            session.load_ok += calls.ok
        return
    if calls.timed_out:
        tally.timed_out += 1
        tally.evaluations += final.progress.evaluations
        return
    session.load_ok += calls.ok
    state = orchestrator_pb2.RunState.Name(final.state).removeprefix("RUN_STATE_")
    tally.ended(state, final.progress.evaluations, time.monotonic() - started)
    if session.settings.agents:
        with contextlib.suppress(grpc.aio.AioRpcError), session.measure(LIST_AGENTS):
            await session.registry.ListAgents(
                registry_pb2.ListAgentsRequest(
                    page_size=100, label_selector=f"{LABEL}={session.id}"
                )
            )


async def _follow(session: Session, name: str, deadline: float, calls: RunCalls) -> None:
    """Watch `name` to its end (resuming a broken stream); once the test stops, or at
    `deadline` (loop time: --run-timeout after its creation, `calls.timed_out` then),
    cancel it and watch it end. Raises the last error (TimeoutError: a cancelled run that
    did not end within --timeout) when the run cannot be followed."""
    loop = asyncio.get_running_loop()
    last = 0
    cancelled = False
    failures = 0
    while True:
        if session.stop.is_set() and not cancelled:
            cancelled = True
            await _cancel(session, name, calls)
        # Once cancelled, the run has --timeout to end: a stuck server cannot hold the
        # load test (and its report) forever. Before, it has until its deadline (a run
        # left PENDING, with no agent to take it, would otherwise be watched forever).
        limit = loop.time() + session.settings.timeout_seconds if cancelled else deadline
        try:
            async with asyncio.timeout_at(limit):
                async for event in _watch(session, name, last, cancelled, calls):
                    last = event.sequence
            return
        except TimeoutError:
            if cancelled:
                raise
            calls.timed_out = True
            cancelled = True
            session.warn_once(
                "run-timeout",
                f"helix loadtest: {name} did not end within --run-timeout "
                f"{session.settings.run_timeout_seconds:g}s: cancelled (runs that outlive it "
                "are counted as runs.timed_out; is it PENDING, waiting for an agent?)",
            )
            await _cancel(session, name, calls)
        except grpc.aio.AioRpcError as error:
            failures += 1
            if error.code() not in RETRYABLE or failures >= MAX_WATCH_ATTEMPTS:
                raise
            await asyncio.sleep(retry_pause(error))
        except _Stopped:
            continue  # the test stopped mid-watch: cancel, then watch the rest


class _Stopped(Exception):
    """The load test stopped while a run was being watched."""


async def _watch(
    session: Session, name: str, after: int, cancelled: bool, calls: RunCalls
) -> AsyncIterator[orchestrator_pb2.RunEvent]:
    """One WatchRun stream, measured: its latency is the time to its first event (or to
    its end, with none). Raises _Stopped if the test stops first, unless `cancelled` or
    the run's terminal event has come (then the stream's end is awaited: nothing to cancel)."""
    started = time.perf_counter()
    first: float | None = None
    ended = False
    call = session.orchestrator.WatchRun(
        orchestrator_pb2.WatchRunRequest(name=name, after_sequence=after)
    )
    never = asyncio.Event()
    stopping: asyncio.Future[Any] = asyncio.ensure_future(
        never.wait() if cancelled else session.stop.wait()
    )
    reading: asyncio.Future[Any] | None = None
    try:
        while True:
            if reading is None:
                reading = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                if not ended:
                    raise _Stopped
                stopping = asyncio.ensure_future(never.wait())
                continue
            response = reading.result()
            reading = None
            if not isinstance(response, orchestrator_pb2.WatchRunResponse):  # EOF: it ended
                session.record_ok(WATCH_RUN, (first or time.perf_counter()) - started, calls)
                return
            if first is None:
                first = time.perf_counter()
            session.stats.received(WATCH_RUN)
            event = response.event
            ended = ended or (
                event.HasField("state_changed") and event.state_changed.state in TERMINAL
            )
            yield event
    except grpc.aio.AioRpcError as error:
        session.stats.record(WATCH_RUN, time.perf_counter() - started, error.code().name)
        raise
    finally:
        stopping.cancel()
        if reading is not None:
            reading.cancel()
        call.cancel()


async def _cancel(session: Session, name: str, calls: RunCalls) -> None:
    """CancelRun; FAILED_PRECONDITION (it ended first) is recorded and harmless."""
    with contextlib.suppress(grpc.aio.AioRpcError), session.measure(CANCEL_RUN, calls):
        await session.orchestrator.CancelRun(orchestrator_pb2.CancelRunRequest(name=name))
