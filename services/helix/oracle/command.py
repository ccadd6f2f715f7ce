"""Command oracles: a pool of sandboxed worker processes speaking JSON Lines.

Each worker is any program (an argv list, never a shell) that reads one request line per
candidate on stdin (`{"id": ..., "genome": {...}}`) and writes one verdict line per request,
in request order, on stdout. docs/oracle-protocol.md is the authors' contract; this module
enforces it. Every candidate given to `CommandPool.verify` gets exactly one verdict, whatever
the worker does (crash, exit, hang, garbage, wrong id, flooding); a broken worker is killed
with its whole process group, reaped, and replaced with back-off.

The sandbox is a process group of its own (`start_new_session`), a fresh working directory,
rlimits set by a tiny exec wrapper (no `preexec_fn`: unsafe in a threaded gRPC process) and
an environment built from an allow-list only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import helix.v1.candidate_pb2 as candidate_pb2
from helix.common import errors

MAX_MESSAGE_CHARS = 1024
MAX_METRICS = 64
_METRIC_KEY = re.compile(r"[a-z_][a-z0-9_.]{0,63}")
_VERDICT_KEYS = frozenset({"id", "status", "score", "metrics", "message"})
_STATUSES = {
    "passed": candidate_pb2.VERDICT_STATUS_PASSED,
    "failed": candidate_pb2.VERDICT_STATUS_FAILED,
    "error": candidate_pb2.VERDICT_STATUS_ERROR,
}
_MAX_ATTEMPTS = 2  # a candidate held by a worker that broke on another one is retried once
_TERM_GRACE = 0.2
_CHUNK = 1 << 16

# Runs in the child before the worker program: rlimits, then exec (argv: limits..., program).
_WRAPPER = (
    "import os,resource as r,sys\n"
    "a=sys.argv[1:]\n"
    "for n,v in zip((r.RLIMIT_CPU,r.RLIMIT_AS,r.RLIMIT_NOFILE,r.RLIMIT_FSIZE),a[:4]):\n"
    " v=int(v)\n"
    " if v>0:r.setrlimit(n,(v,v))\n"
    "os.execvp(a[4],a[4:])\n"
)


@dataclass(frozen=True)
class Limits:
    """Per-worker rlimits; 0 leaves a limit as inherited."""

    cpu_seconds: int = 600
    address_space_bytes: int = 4 << 30
    open_files: int = 256
    file_bytes: int = 64 << 20


@dataclass(frozen=True)
class CommandSpec:
    """How to run a command oracle's workers."""

    argv: tuple[str, ...]
    workers: int = 2
    timeout: float = 10.0
    limits: Limits = field(default_factory=Limits)
    env_allow: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "TZ")
    work_root: str | None = None
    max_line_bytes: int = 1 << 20
    stderr_ring_bytes: int = 8192
    in_flight: int = 32
    degraded_after: int = 3
    backoff_base: float = 0.05
    backoff_max: float = 5.0

    def __post_init__(self) -> None:
        if not self.argv or not all(isinstance(a, str) and a for a in self.argv):
            raise ValueError("argv must be a non-empty list of non-empty strings")
        if self.workers < 1 or self.in_flight < 1:
            raise ValueError("workers and in_flight must be >= 1")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError("timeout must be a positive finite number of seconds")
        if self.max_line_bytes < 1024 or self.stderr_ring_bytes < 0:
            raise ValueError("max_line_bytes must be >= 1024 and stderr_ring_bytes >= 0")


class Health(enum.Enum):
    SERVING = "SERVING"
    DEGRADED = "DEGRADED"


@dataclass
class PoolCounters:
    """Monotonic counters for metrics."""

    verdicts: dict[str, int] = field(default_factory=dict)
    worker_starts: int = 0
    worker_failures: int = 0
    timeouts: int = 0
    protocol_errors: int = 0
    retries: int = 0


class _Job:
    __slots__ = ("attempts", "candidate_id", "future", "line", "started")

    def __init__(
        self, candidate_id: str, line: bytes, future: asyncio.Future[candidate_pb2.Verdict]
    ):
        self.candidate_id = candidate_id
        self.line = line
        self.future = future
        self.attempts = 0
        self.started = 0.0


class _Broken(Exception):
    """The worker broke the protocol or died; `status` is what the head candidate gets."""

    def __init__(self, message: str, status: int = candidate_pb2.VERDICT_STATUS_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _Ring:
    """The last `size` bytes written to it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.size:
            del self.data[: len(self.data) - self.size]

    def tail(self, chars: int = 400) -> str:
        text = self.data.decode("utf-8", "replace").strip()
        return text[-chars:]


def _verdict(
    candidate_id: str,
    status: int,
    message: str = "",
    *,
    score: float = 0.0,
    metrics: Mapping[str, float] | None = None,
    seconds: float = 0.0,
) -> candidate_pb2.Verdict:
    verdict = candidate_pb2.Verdict(
        candidate_id=candidate_id,
        status=cast("candidate_pb2.VerdictStatus.ValueType", status),
        score=score,
        message=message[:MAX_MESSAGE_CHARS],
    )
    verdict.metrics.update(metrics or {})
    verdict.duration.FromNanoseconds(max(0, int(seconds * 1e9)))
    return verdict


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _metrics(raw: object) -> dict[str, float]:
    if not isinstance(raw, dict) or len(raw) > MAX_METRICS:
        raise ValueError(f"metrics must be an object of at most {MAX_METRICS} entries")
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _METRIC_KEY.fullmatch(key):
            raise ValueError(f"metric key {key!r} does not match [a-z_][a-z0-9_.]{{0,63}}")
        number = _number(value)
        if number is None:
            raise ValueError(f"metric {key!r} must be a finite number, not {value!r}")
        metrics[key] = number
    return metrics


def parse_verdict_line(line: bytes, expected_id: str) -> tuple[int, float, dict[str, float], str]:
    """(status, score, metrics, message) of one verdict line, or raises ValueError (a bad
    verdict for the expected candidate) or _Broken (the stream is out of step)."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Broken(f"worker wrote a line that is not JSON ({exc}): {line[:80]!r}") from None
    if not isinstance(obj, dict):
        raise _Broken(f"worker wrote JSON that is not an object: {line[:80]!r}")
    if obj.get("id") != expected_id:
        raise _Broken(f"worker answered id {obj.get('id')!r} while {expected_id!r} was expected")
    unknown = sorted(set(obj) - _VERDICT_KEYS)
    if unknown:
        raise ValueError(f"unknown verdict field(s) {unknown}")
    status = _STATUSES.get(obj.get("status"))  # type: ignore[arg-type]
    if status is None:
        raise ValueError(f"status must be passed, failed or error, not {obj.get('status')!r}")
    message = obj.get("message", "")
    if not isinstance(message, str):
        raise ValueError("message must be a string")
    score = 0.0
    if status != candidate_pb2.VERDICT_STATUS_ERROR:
        parsed = _number(obj.get("score"))
        if parsed is None:
            raise ValueError(f"score must be a finite number, not {obj.get('score')!r}")
        score = parsed
    metrics = _metrics(obj.get("metrics", {}))
    return status, score, metrics, message


async def _exit_code(process: asyncio.subprocess.Process) -> int:
    """The leader's exit code as soon as it is reaped; `Process.wait` would also wait for
    its pipes, which children it forked may hold open."""
    while process.returncode is None:  # noqa: ASYNC110 - no event fires on the leader's exit alone
        await asyncio.sleep(0.02)
    return process.returncode


class _Worker:
    """One worker slot: runs, watches and replaces its process until the pool closes."""

    def __init__(self, pool: CommandPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.pending: deque[_Job] = deque()
        self.ring = _Ring(pool.spec.stderr_ring_bytes)
        self.ready = asyncio.Event()
        self.last_answer = 0.0

    async def run(self) -> None:
        spec = self.pool.spec
        while True:
            failures = self.pool.consecutive_failures
            if failures:
                await asyncio.sleep(min(spec.backoff_base * 2 ** (failures - 1), spec.backoff_max))
            workdir = await asyncio.to_thread(
                tempfile.mkdtemp, prefix="helix-worker-", dir=spec.work_root
            )
            try:
                await self._incarnation(workdir)
            finally:
                await asyncio.shield(self._kill())
                await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _incarnation(self, workdir: str) -> None:
        spec = self.pool.spec
        env = {k: os.environ[k] for k in spec.env_allow if k in os.environ}
        lim = spec.limits
        self.ring = _Ring(spec.stderr_ring_bytes)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", _WRAPPER,
            str(lim.cpu_seconds), str(lim.address_space_bytes), str(lim.open_files),
            str(lim.file_bytes), *spec.argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=workdir, env=env,
            start_new_session=True, limit=spec.max_line_bytes,
        )  # fmt: skip
        self.pool.counters.worker_starts += 1
        slots = asyncio.Semaphore(spec.in_flight)
        tasks = [
            asyncio.create_task(self._write(slots)),
            asyncio.create_task(self._drain_stderr()),
        ]
        try:
            await self._read(slots)
        except _Broken as broken:
            self._fail(broken)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _write(self, slots: asyncio.Semaphore) -> None:
        process = self.process
        assert process is not None
        assert process.stdin is not None
        queue = self.pool.queue
        while True:
            await slots.acquire()
            batch = [await queue.get()]
            # Every free slot's line in one write: one syscall and one wake-up, not one per line.
            while not queue.empty() and not slots.locked():
                await slots.acquire()  # free: returns at once
                batch.append(queue.get_nowait())
            now = time.monotonic()
            lines = []
            for job in batch:
                if job.future.done():  # its caller went away
                    slots.release()
                    continue
                job.started = now
                self.pending.append(job)
                lines.append(job.line)
            if not lines:
                continue
            self.ready.set()
            try:
                process.stdin.write(b"".join(lines))
                await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                return  # the reader sees the exit and blames the head

    async def _drain_stderr(self) -> None:
        process = self.process
        assert process is not None
        assert process.stderr is not None
        while chunk := await process.stderr.read(4096):
            self.ring.add(chunk)

    async def _read(self, slots: asyncio.Semaphore) -> None:
        process = self.process
        assert process is not None
        assert process.stdout is not None
        stdout = process.stdout
        self.last_answer = time.monotonic()
        limit = self.pool.spec.max_line_bytes
        rest = b""
        # Chunks, not readline: one task and one wake-up for every line already in the pipe.
        reading: asyncio.Task[bytes] = asyncio.create_task(stdout.read(_CHUNK))
        # The leader's exit, seen even when forked children keep its stdout open.
        exiting: asyncio.Task[int] = asyncio.create_task(_exit_code(process))
        try:
            while True:
                if not await self._wait_line(reading, exiting):
                    continue
                chunk = reading.result()
                if not chunk:
                    raise _Broken(await self._exit_message())
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    if len(line) >= limit:
                        raise _Broken(f"worker wrote a line longer than {limit} bytes")
                    self._answer(line)
                    slots.release()
                if len(rest) >= limit:
                    raise _Broken(f"worker wrote a line longer than {limit} bytes")
                reading = asyncio.create_task(stdout.read(_CHUNK))
        finally:
            for task in (reading, exiting):
                task.cancel()
            await asyncio.gather(reading, exiting, return_exceptions=True)

    async def _wait_line(self, reading: asyncio.Task[bytes], exiting: asyncio.Task[int]) -> bool:
        """True when a chunk (or EOF) is read; raises _Broken on timeout or the leader's exit."""
        if exiting.done() and not reading.done():
            await asyncio.wait({reading}, timeout=0.1)  # lines written before the exit
            if not reading.done():
                raise _Broken(await self._exit_message())
        if not self.pending:
            self.ready.clear()
            waiter = asyncio.create_task(self.ready.wait())
            try:
                await asyncio.wait({reading, waiter, exiting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            return reading.done()
        timeout = self.pool.spec.timeout
        deadline = max(self.pending[0].started, self.last_answer) + timeout
        done, _ = await asyncio.wait(
            {reading, exiting},
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not done:
            self.pool.counters.timeouts += 1
            raise _Broken(
                f"no verdict within the {timeout:g} s per-candidate timeout;"
                " the worker was killed and replaced",
                candidate_pb2.VERDICT_STATUS_TIMEOUT,
            )
        return reading.done()

    def _answer(self, line: bytes) -> None:
        """Settle the head candidate with this line (or raise _Broken, leaving it pending)."""
        if not self.pending:
            raise _Broken("worker wrote a line while no request was pending")
        head = self.pending[0]
        now = time.monotonic()
        seconds = now - max(head.started, self.last_answer)
        try:
            status, score, metrics, message = parse_verdict_line(line, head.candidate_id)
        except ValueError as exc:
            self.pool.counters.protocol_errors += 1
            status, score, metrics, message = (
                candidate_pb2.VERDICT_STATUS_ERROR, 0.0, {}, f"invalid verdict line: {exc}"
            )  # fmt: skip
        else:
            self.pool.consecutive_failures = 0
        self.pending.popleft()
        self.last_answer = now
        verdict = _verdict(
            head.candidate_id, status, message, score=score, metrics=metrics, seconds=seconds
        )
        self.pool.settle(head, verdict)

    async def _exit_message(self) -> str:
        process = self.process
        assert process is not None
        try:
            code = await asyncio.wait_for(_exit_code(process), 1.0)
        except TimeoutError:
            return "worker closed its stdout but kept running"
        return f"worker exited with code {code}"

    def _fail(self, broken: _Broken) -> None:
        pool = self.pool
        pool.counters.worker_failures += 1
        pool.consecutive_failures += 1
        jobs = list(self.pending)
        self.pending.clear()
        if not jobs:
            return
        tail = self.ring.tail()
        message = broken.message + (f"; stderr tail: {tail}" if tail else "")
        head, rest = jobs[0], jobs[1:]
        seconds = time.monotonic() - head.started
        pool.settle(head, _verdict(head.candidate_id, broken.status, message, seconds=seconds))
        for job in rest:
            job.attempts += 1
            if job.attempts >= _MAX_ATTEMPTS:
                pool.settle(
                    job, _verdict(job.candidate_id, candidate_pb2.VERDICT_STATUS_ERROR, message)
                )
            else:
                pool.counters.retries += 1
                pool.queue.put_nowait(job)

    async def _kill(self) -> None:
        """SIGTERM the whole group, SIGKILL after a grace, and reap the leader."""
        process, self.process = self.process, None
        if process is None:
            return
        pgid = process.pid  # start_new_session: the leader's pid is the group id
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_exit_code(process), _TERM_GRACE)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)  # also the group's children if the leader left
        await _exit_code(process)
        # asyncio.subprocess.Process has no public close: close its transport (and pipes),
        # or a pipe whose reader was cancelled before EOF stays open until collected.
        transport = getattr(process, "_transport", None)
        if transport is not None:
            transport.close()


class CommandPool:
    """A pool of sandboxed JSON Lines workers; `verify` gives one verdict per candidate."""

    def __init__(self, spec: CommandSpec) -> None:
        self.spec = spec
        self.counters = PoolCounters()
        self.consecutive_failures = 0
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._workers: list[_Worker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def health(self) -> Health:
        if self.consecutive_failures >= self.spec.degraded_after:
            return Health.DEGRADED
        return Health.SERVING

    async def start(self) -> None:
        if self._tasks or self._closed:
            raise errors.FailedPrecondition("the command pool was already started")
        self._workers = [_Worker(self, i) for i in range(self.spec.workers)]
        self._tasks = [
            asyncio.create_task(w.run(), name=f"oracle-worker-{w.index}") for w in self._workers
        ]

    def settle(self, job: _Job, verdict: candidate_pb2.Verdict) -> None:
        if not job.future.done():
            job.future.set_result(verdict)
            name = candidate_pb2.VerdictStatus.Name(verdict.status)
            self.counters.verdicts[name] = self.counters.verdicts.get(name, 0) + 1

    async def verify(
        self, items: Sequence[tuple[str, Mapping[str, object]]]
    ) -> list[candidate_pb2.Verdict]:
        """One verdict per (candidate_id, named genome), in the order given."""
        if self._closed or not self._tasks:
            raise errors.Unavailable("the command oracle is not running")
        loop = asyncio.get_running_loop()
        jobs = []
        for candidate_id, genome in items:
            line = json.dumps({"id": candidate_id, "genome": genome}, separators=(",", ":"))
            jobs.append(_Job(candidate_id, line.encode() + b"\n", loop.create_future()))
        for job in jobs:
            self.queue.put_nowait(job)
        try:
            return list(await asyncio.gather(*(job.future for job in jobs)))
        finally:
            for job in jobs:
                job.future.cancel()  # no-op when settled; skipped by writers otherwise

    async def close(self) -> None:
        """Kill every worker group, reap it, remove its directory; pending callers get ERROR."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self._workers:
            for job in worker.pending:
                self.settle(
                    job,
                    _verdict(job.candidate_id, candidate_pb2.VERDICT_STATUS_ERROR, "oracle closed"),
                )
            worker.pending.clear()
        while not self.queue.empty():
            job = self.queue.get_nowait()
            self.settle(
                job, _verdict(job.candidate_id, candidate_pb2.VERDICT_STATUS_ERROR, "oracle closed")
            )

    def worker_pids(self) -> list[int]:
        """The process-group ids of the running workers (for tests and diagnostics)."""
        return [w.process.pid for w in self._workers if w.process is not None]
