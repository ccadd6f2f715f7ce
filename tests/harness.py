"""Real processes for end-to-end tests and benchmarks, and Helix clusters made of them.

Every test or benchmark that runs more than one process starts it here, so how a process
is started, found ready, stopped, killed, restarted and cleaned up is written once:

- `start_process(argv, env, ready=regex)` starts a real subprocess and waits, with a
  deadline, for the stdout line that says it is ready. A process that dies or stalls
  first is an error showing its exit status and output, never a hang. stdout is read in
  the background (a child never blocks on a full pipe) and kept for `next_line` and
  `wait_for_line`; stderr goes to a log file.
- `Processes` owns what a test or benchmark started and stops all of it at exit, however
  the test ended: SIGTERM, a deadline, then SIGKILL to the process's whole group. Each
  process gets a session of its own, and an atexit hook kills whatever is still running
  if the interpreter ends first: no orphans.
- `Cluster` runs Helix in one of its deployment shapes, `embedded` (`helix up`: every
  service in one process) or `processes` (`helix registry serve` plus standalone agents
  that register with it), and hands out tokens, channels, stubs and per-service addresses,
  so one test body runs against either shape. Members can be killed (-9) and restarted.
- `eventually(condition)` (from waiting.py) polls with a deadline instead of sleeping.

It needs no pytest (benchmarks import it too); the fixtures live in conftest.py.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import grpc

import helix.v1.generator_pb2_grpc as generator_pb2_grpc
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.keys import SigningKey, load_hs256_dir
from helix.security.tokens import mint
from helix.suite import EMBEDDED_GENERATOR_ID

T = TypeVar("T")

HELIX = str(Path(sys.executable).parent / "helix")
# The ready line of every Helix server and of the test and benchmark servers:
# `helix listening on H:P`, `helix registry listening on H:P`, `drain server listening on H:P`.
LISTENING = re.compile(r"^(?P<role>\S.*?) listening on (?P<address>\S+:\d+)$")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
_STDOUT_LIMIT = 16 * 1024 * 1024  # longest stdout line read (a JSON line of a big listing)
_TAIL_LINES = 40


class ProcessError(RuntimeError):
    """A process did not do what was waited for (it ended, or took too long); the message
    shows its command, exit status and the end of its output."""


# Process-group ids of children not yet reaped, for the atexit hook.
_unreaped: set[int] = set()


@atexit.register
def _kill_unreaped() -> None:
    """The last line of defence: the interpreter is ending with children still running."""
    for pgid in list(_unreaped):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


def _pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    return re.compile(pattern) if isinstance(pattern, str) else pattern


class RunningProcess:
    """A real subprocess: its ready match and address, its stdout lines, stop/kill/restart.

    `address` and `port` come from the named group `address` of the ready pattern. Lines of
    stdout are kept from the start of the current run; `next_line` and `wait_for_line` read
    them in order, after the ready line.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        *,
        ready: re.Pattern[str] | None,
        name: str,
        log_path: Path | None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.ready = ready
        self.name = name
        self.log_path = log_path
        self.match: re.Match[str] | None = None
        self.runs = 0
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._lines: list[str] = []
        self._cursor = 0
        self._eof = False
        self._changed = asyncio.Condition()

    # --- what it is ------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """`host:port` from its ready line."""
        if self.match is None or "address" not in self.match.re.groupindex:
            raise RuntimeError(f"{self.name}: its ready line names no address")
        return self.match["address"]

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it ended (negative: the signal that ended it), else None."""
        return None if self._process is None else self._process.returncode

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def lines(self) -> list[str]:
        """Every stdout line of the current run so far."""
        return list(self._lines)

    def stderr_text(self) -> str:
        """What it wrote to stderr, every run (empty when stderr was not kept)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    # --- life cycle ------------------------------------------------------------------------

    async def start(self, within: float = START_TIMEOUT) -> RunningProcess:
        """Start it and wait until it prints its ready line (if it has a ready pattern).

        Raises ProcessError, after killing it, when it ends or stays silent past `within` s.
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if self._process is not None:
            await self._reap()  # the previous run ended by itself
        self.runs += 1
        self._lines, self._cursor, self._eof, self.match = [], 0, False, None
        log = None
        if self.log_path is not None:
            log = await asyncio.to_thread(self.log_path.open, "ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log if log is not None else asyncio.subprocess.DEVNULL,
                start_new_session=True,  # its own process group: kill() takes its children
                limit=_STDOUT_LIMIT,
            )
        finally:
            if log is not None:
                log.close()
        _unreaped.add(self._process.pid)
        self._pump = asyncio.create_task(self._read_stdout(self._process), name=self.name)
        if self.ready is not None:
            await self._wait_ready(self.ready, within)
        return self

    async def _wait_ready(self, ready: re.Pattern[str], within: float) -> None:
        try:
            async with asyncio.timeout(within):
                self.match = await self._next_match(ready, f"its ready line /{ready.pattern}/")
        except TimeoutError:
            await self.kill()
            message = f"printed no ready line /{ready.pattern}/ within {within}s (killed)"
            raise ProcessError(self._describe(message)) from None
        except ProcessError:
            await self._reap()
            raise

    async def stop(self, grace: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to `grace` seconds for it to drain and exit, else SIGKILL.
        Returns its exit status; safe to call when it has already ended."""
        process = self._started()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await process.wait()
            except TimeoutError:
                self._kill_group(process)
        return await self._reap()

    async def kill(self) -> int:
        """SIGKILL (kill -9) it and every process of its group; returns -SIGKILL, or the
        status it had already ended with."""
        self._kill_group(self._started())
        return await self._reap()

    async def restart(
        self, *, argv: Sequence[str] | None = None, within: float = START_TIMEOUT
    ) -> RunningProcess:
        """Stop it if it runs, then start it again with the same environment and `argv`
        (default: the same). It gets a new address unless its argv pins the port."""
        if self._process is not None:
            await self.stop()
        if argv is not None:
            self.argv = list(argv)
        return await self.start(within)

    def send_signal(self, signum: int) -> None:
        """Send `signum` to the process itself (SIGSTOP to freeze it, SIGINT, ...)."""
        self._started().send_signal(signum)

    async def wait(self, within: float = STOP_TIMEOUT) -> int:
        """Wait for it to end by itself; ProcessError if it has not after `within` s."""
        process = self._started()
        try:
            async with asyncio.timeout(within):
                await process.wait()
        except TimeoutError:
            raise ProcessError(self._describe(f"did not end within {within}s")) from None
        return await self._reap()

    # --- its output ------------------------------------------------------------------------

    async def next_line(self, within: float = 20.0) -> str:
        """The next stdout line not read yet; ProcessError if none comes in time."""
        line = await self._read(None, "its next line", within)
        return line.string

    async def wait_for_line(
        self, pattern: str | re.Pattern[str], within: float = 20.0
    ) -> re.Match[str]:
        """Skip stdout lines until one matches `pattern`; ProcessError if none in time."""
        regex = _pattern(pattern)
        return await self._read(regex, f"a line matching /{regex.pattern}/", within)

    async def _read(
        self, pattern: re.Pattern[str] | None, what: str, within: float
    ) -> re.Match[str]:
        try:
            async with asyncio.timeout(within):
                return await self._next_match(pattern, what)
        except TimeoutError:
            raise ProcessError(self._describe(f"printed no {what} within {within}s")) from None

    async def _next_match(self, pattern: re.Pattern[str] | None, what: str) -> re.Match[str]:
        async with self._changed:
            while True:
                while self._cursor < len(self._lines):
                    line = self._lines[self._cursor]
                    self._cursor += 1
                    found = (pattern or _ANY_LINE).search(line)
                    if found:
                        return found
                if self._eof:
                    break
                await self._changed.wait()
        await self._exit_status(5.0)
        raise ProcessError(self._describe(f"ended its output before {what}"))

    async def _read_stdout(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while raw := await process.stdout.readline():
                async with self._changed:
                    self._lines.append(raw.decode(errors="replace").rstrip("\r\n"))
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._eof = True
                self._changed.notify_all()

    # --- internals -------------------------------------------------------------------------

    def _started(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._process

    @staticmethod
    def _kill_group(process: asyncio.subprocess.Process) -> None:
        # Only while the child is not reaped: until then its pid names its own group.
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    async def _exit_status(self, within: float) -> int | None:
        process = self._started()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await process.wait()
        return process.returncode

    async def _reap(self) -> int:
        """Wait for the exit and for the end of its stdout; idempotent."""
        process = self._started()
        await process.wait()
        _unreaped.discard(process.pid)
        pump = self._pump
        if pump is not None:
            # asyncio.wait neither raises the pump's error nor cancels it on a timeout.
            await asyncio.wait({pump}, timeout=5.0)
            if not pump.done():  # a stray holder of its stdout keeps the pipe open
                pump.cancel()
                await asyncio.wait({pump})
            self._pump = None
            if not pump.cancelled() and pump.exception() is not None:
                raise ProcessError(self._describe(f"stdout unreadable: {pump.exception()!r}"))
        assert process.returncode is not None
        return process.returncode

    def describe(self, what: str) -> str:
        """What a failure message shows of this process: `what`, its command, exit status
        (or still running) and the end of its stdout and stderr."""
        return self._describe(what)

    def _describe(self, what: str) -> str:
        code = self.returncode
        status = "still running" if code is None else f"exit status {code}"
        stdout = "\n".join(self._lines[-_TAIL_LINES:]) or "(nothing)"
        stderr_lines = self.stderr_text().splitlines()[-_TAIL_LINES:]
        stderr = "\n".join(stderr_lines) or ("(nothing)" if self.log_path else "(not kept)")
        return (
            f"{self.name} [{shlex.join(self.argv)}] {what}; {status}\n"
            f"--- stdout (last {_TAIL_LINES} lines) ---\n{stdout}\n"
            f"--- stderr (last {_TAIL_LINES} lines) ---\n{stderr}"
        )


_ANY_LINE = re.compile(r"^")


class Processes:
    """The processes a test or benchmark started; `close()` (or leaving `async with`)
    stops every one still running, all at once. Logs go to `log_dir` (default: a temporary
    directory removed at close), one file per process name."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self._own_dir = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="helix-harness-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[RunningProcess] = []
        self._names: set[str] = set()

    async def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        ready: str | re.Pattern[str] | None = LISTENING,
        within: float = START_TIMEOUT,
        name: str | None = None,
        keep_stderr: bool = True,
    ) -> RunningProcess:
        """Start `argv` and wait for its `ready` line (None: do not wait); see
        `RunningProcess.start`. `keep_stderr=False` sends stderr to /dev/null (a server
        whose per-call logging would otherwise fill a file)."""
        label = self._unique(name or Path(argv[0]).name)
        process = RunningProcess(
            argv,
            env,
            ready=_pattern(ready) if ready is not None else None,
            name=label,
            log_path=self.log_dir / f"{label}.log" if keep_stderr else None,
        )
        self.started.append(process)  # before it starts: a failed start is cleaned up too
        return await process.start(within)

    def _unique(self, name: str) -> str:
        label, n = name, 1
        while label in self._names:
            n += 1
            label = f"{name}-{n}"
        self._names.add(label)
        return label

    async def close(self) -> None:
        await stop_all(self.started)
        if self._own_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    async def __aenter__(self) -> Processes:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def stop_all(processes: Iterable[RunningProcess], grace: float = STOP_TIMEOUT) -> None:
    """Stop every started process at once (each: SIGTERM, deadline, SIGKILL)."""
    started = [p for p in processes if p.returncode is None and p.runs > 0]
    results = await asyncio.gather(*(p.stop(grace) for p in started), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, ProcessError):
            raise result


async def start_process(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    ready: str | re.Pattern[str] | None = LISTENING,
    within: float = START_TIMEOUT,
    name: str | None = None,
    log_dir: Path | None = None,
) -> RunningProcess:
    """Start one process outside any `Processes` (its caller stops it); its stderr goes to
    a file in `log_dir` (default: a new temporary directory)."""
    directory = log_dir or Path(tempfile.mkdtemp(prefix="helix-harness-"))
    label = name or Path(argv[0]).name
    ready_pattern = _pattern(ready) if ready is not None else None
    process = RunningProcess(
        argv, env, ready=ready_pattern, name=label, log_path=directory / f"{label}.log"
    )
    return await process.start(within)


async def run_command(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    within: float = 60.0,
    cwd: Path | None = None,
) -> tuple[int, str, str]:
    """Run a command to its end: (exit status, stdout, stderr). ProcessError, after killing
    it, if it has not ended within `within` seconds."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await process.communicate()
    except TimeoutError:
        raise ProcessError(f"[{shlex.join(argv)}] did not end within {within}s") from None
    finally:
        if process.returncode is None:  # timed out, or the caller was cancelled
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def run_helix(
    *args: str,
    env: Mapping[str, str] | None = None,
    within: float = 60.0,
    cwd: Path | None = None,
) -> tuple[int, str, str]:
    """Run one `helix` command to its end: (exit status, stdout, stderr)."""
    return await run_command([HELIX, *args], env, within=within, cwd=cwd)


# --- Helix clusters -------------------------------------------------------------------------

Shape = Literal["embedded", "processes"]
SHAPES: tuple[Shape, ...] = get_args(Shape)
# Scopes a cluster's stubs get unless told otherwise.
DEFAULT_SCOPES: Mapping[str, tuple[str, ...]] = {
    "registry": ("agents.read", "agents.write"),
    "generator": ("dna.read", "generate"),
}
# Channels of test clients: each with subchannels of its own, so a channel opened after a
# member restarted connects afresh (grpc otherwise shares one connection per target, and
# with it the backoff of the connection to the process that was killed), and quick to
# reconnect to a restarted member (grpc waits a second or more by default, and longer with
# each attempt).
CLIENT_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def clean_env(settings: Mapping[str, object] | None = None) -> dict[str, str]:
    """This environment without any HELIX_* variable, plus `settings` as HELIX_* ones
    (`rate_read=1e6` -> HELIX_RATE_READ=1000000.0; booleans as true/false)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIX_")}
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (settings or {}).items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"HELIX_{key.upper()}"] = text
    return env


def pin_port(argv: Sequence[str], port: int) -> list[str]:
    """`argv` with its `--port` set to `port` (added when absent)."""
    pinned = list(argv)
    if "--port" in pinned:
        pinned[pinned.index("--port") + 1] = str(port)
    else:
        pinned += ["--port", str(port)]
    return pinned


@dataclass
class Member:
    """One process of a cluster: the services it serves and the agent it registers as."""

    name: str
    services: frozenset[str]
    process: RunningProcess
    agent_id: str | None = None

    @property
    def address(self) -> str:
        return self.process.address

    @property
    def agent_name(self) -> str | None:
        return f"agents/{self.agent_id}" if self.agent_id else None


class Cluster:
    """Helix in one deployment shape, under `data_dir` (its SQLite and its HS256 keys).

    - `embedded`: `helix up` serves all four services on one address; its own generator
      registers itself (unless `generators=0`); `generators=N` adds N-1 standalone ones.
    - `processes`: `helix registry serve`, then N standalone generator agents
      (`helix generator serve --registry-address ...`) that share its key dir and register.

    `settings` become HELIX_* variables of every member (each takes the ones it knows);
    `dna_dir` is the generators' library (default DATA_DIR/dnas in both shapes). Members are
    found by name (`registry`, `suite`, `generator-1`) or by a service they serve, so
    `address_of("registry")` and `kill("registry")` mean the same thing in both shapes.
    """

    def __init__(  # noqa: PLR0913 - keyword-only options, each with its default
        self,
        shape: Shape,
        data_dir: Path,
        *,
        generators: int = 1,
        settings: Mapping[str, object] | None = None,
        dna_dir: Path | None = None,
        processes: Processes | None = None,
        start_within: float = START_TIMEOUT,
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown cluster shape {shape!r} (one of {', '.join(SHAPES)})")
        self.shape = shape
        self.data_dir = data_dir
        self.key_dir = data_dir / "keys"
        self.dna_dir = dna_dir or data_dir / "dnas"
        self.generators = generators
        self.settings = dict(settings or {})
        self.start_within = start_within
        self.members: dict[str, Member] = {}
        self._own_processes = processes is None
        self._processes = processes or Processes()
        self._channels: list[grpc.aio.Channel] = []
        self._signer: SigningKey | None = None
        self._generators_added = 0

    async def start(self) -> Cluster:
        """Start every member of the shape; on failure, stop what started and raise."""
        try:
            if self.shape == "embedded":
                await self.start_embedded()
                extra = self.generators - 1
            else:
                await self.start_registry()
                extra = self.generators
            await asyncio.gather(*(self.add_generator() for _ in range(max(0, extra))))
        except BaseException:
            await self.close()
            raise
        return self

    # --- members: one method per kind of process -----------------------------------------

    async def start_embedded(self) -> Member:
        """`helix up`: all four services in one process, its own generator registered."""
        settings = {"generator_self_register": self.generators > 0, **self.settings}
        argv = [HELIX, "up", "--port", "0", "--data-dir", str(self.data_dir)]
        argv += ["--generator-dna-dir", str(self.dna_dir)]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.dna_dir.mkdir(parents=True, exist_ok=True)
        registers = str(settings["generator_self_register"]).lower() in ("true", "1", "yes", "on")
        return await self._start_member(
            "suite",
            argv,
            clean_env(settings),
            {"registry", "generator", "oracle", "orchestrator"},
            agent_id=EMBEDDED_GENERATOR_ID if registers else None,
        )

    async def start_registry(self) -> Member:
        """`helix registry serve`: the registry alone, creating the cluster's key."""
        argv = [HELIX, "registry", "serve", "--port", "0", "--data-dir", str(self.data_dir)]
        return await self._start_member("registry", argv, clean_env(self.settings), {"registry"})

    async def add_generator(
        self,
        agent_id: str | None = None,
        *,
        dna_dir: Path | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> Member:
        """A standalone generator agent registered with the cluster's registry, sharing its
        HS256 key (it verifies the cluster's tokens and mints its own to register)."""
        # Numbered when called, not when started: generators started together get their own.
        self._generators_added += 1
        number = self._generators_added
        agent_id = agent_id or f"gen-{number}"
        library = dna_dir or self.dna_dir
        library.mkdir(parents=True, exist_ok=True)
        argv = [HELIX, "generator", "serve", "--port", "0", "--generator-dna-dir", str(library)]
        argv += ["--registry-address", self.address_of("registry"), "--agent-id", agent_id]
        env = clean_env({**self.settings, **(settings or {}), "auth_hs256_dir": self.key_dir})
        return await self._start_member(
            f"generator-{number}", argv, env, {"generator"}, agent_id=agent_id
        )

    async def _start_member(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        services: Iterable[str],
        *,
        agent_id: str | None = None,
    ) -> Member:
        """Start a process whose ready line is `... listening on HOST:PORT` as a member."""
        process = await self._processes.start(argv, env, within=self.start_within, name=name)
        member = Member(name, frozenset(services), process, agent_id)
        self.members[name] = member
        return member

    # --- finding members -------------------------------------------------------------------

    def member(self, key: str) -> Member:
        """The member named `key`, else the first that serves service `key`."""
        if key in self.members:
            return self.members[key]
        for member in self.members.values():
            if key in member.services:
                return member
        raise KeyError(
            f"no member of this {self.shape} cluster is or serves {key!r} "
            f"(members: {', '.join(self.members) or 'none'})"
        )

    def address_of(self, service: str) -> str:
        """Where `service` (registry, generator, oracle, orchestrator) answers."""
        return self.member(service).address

    def generator_agents(self) -> list[str]:
        """The agent names the cluster's generators register as."""
        return [
            m.agent_name
            for m in self.members.values()
            if "generator" in m.services and m.agent_name
        ]

    # --- faults ----------------------------------------------------------------------------

    async def kill(self, key: str) -> int:
        """kill -9 a member (by name or service); returns its exit status."""
        return await self.member(key).process.kill()

    async def stop(self, key: str, grace: float = STOP_TIMEOUT) -> int:
        """SIGTERM a member and wait for its drain; returns its exit status."""
        return await self.member(key).process.stop(grace)

    async def restart(self, key: str, *, same_port: bool = True) -> Member:
        """Start a member again (stopping it first if it runs) on the same data dir and, by
        default, the same port, so whoever dials its address finds it again."""
        member = self.member(key)
        process = member.process
        argv = pin_port(process.argv, process.port) if same_port and process.match else None
        await process.restart(argv=argv, within=self.start_within)
        return member

    # --- credentials and channels ----------------------------------------------------------

    @property
    def signer(self) -> SigningKey:
        """The cluster's HS256 signing key (from `key_dir`, created by its first server)."""
        if self._signer is None:
            _, signer = load_hs256_dir(self.key_dir)
            if signer is None:
                raise RuntimeError(f"no HS256 key in {self.key_dir}: is the cluster started?")
            self._signer = signer
        return self._signer

    def token(self, subject: str = "tester", scopes: Iterable[str] = (), ttl: float = 3600) -> str:
        """A bearer token for `subject` with `scopes`, valid in every member."""
        return mint(self.signer, subject, scopes, ttl)

    def channel(
        self,
        service: str = "registry",
        subject: str = "tester",
        scopes: Iterable[str] | None = None,
        *,
        address: str | None = None,
    ) -> grpc.aio.Channel:
        """A channel to `service` (or `address`) carrying a token of `subject` with `scopes`
        (default: what the service's stubs need); closed with the cluster."""
        granted = DEFAULT_SCOPES.get(service, ()) if scopes is None else scopes
        source = StaticTokenSource(self.token(subject, granted))
        channel = grpc.aio.insecure_channel(
            address or self.address_of(service),
            options=CLIENT_OPTIONS,
            interceptors=bearer_interceptors(source),
        )
        self._channels.append(channel)
        return channel

    def registry(
        self, subject: str = "tester", scopes: Iterable[str] | None = None
    ) -> registry_pb2_grpc.RegistryServiceAsyncStub:
        return registry_pb2_grpc.RegistryServiceStub(self.channel("registry", subject, scopes))

    def generator(
        self,
        subject: str = "tester",
        scopes: Iterable[str] | None = None,
        *,
        address: str | None = None,
    ) -> generator_pb2_grpc.GeneratorServiceAsyncStub:
        channel = self.channel("generator", subject, scopes, address=address)
        return generator_pb2_grpc.GeneratorServiceStub(channel)

    # --- the end ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Close its channels and stop its members: agents first (they deregister while
        the registry still answers), then the rest."""
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()
        members = list(self.members.values())
        await stop_all(m.process for m in members if "registry" not in m.services)
        await stop_all(m.process for m in members)
        if self._own_processes:
            await self._processes.close()

    async def __aenter__(self) -> Cluster:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
