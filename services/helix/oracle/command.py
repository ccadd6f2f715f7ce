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

`python_spec` runs `python` oracles (a `module:function` entry point) through the same pool,
with `helix.oracle.pyworker` as the worker program.
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
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any, TypeAlias

import helix.v1.candidate_pb2 as candidate_pb2
from helix.common import errors

MAX_MESSAGE_CHARS = 1024
MAX_METRICS = 64
_METRIC_KEY = re.compile(r"[a-z_][a-z0-9_.]{0,63}")
_VERDICT_KEYS = frozenset({"id", "status", "score", "metrics", "message"})
Status: TypeAlias = candidate_pb2.VerdictStatus.ValueType
_STATUSES: dict[str, Status] = {
    "passed": candidate_pb2.VERDICT_STATUS_PASSED,
    "failed": candidate_pb2.VERDICT_STATUS_FAILED,
    "error": candidate_pb2.VERDICT_STATUS_ERROR,
}
_STATUS_NAMES = {
    value: candidate_pb2.VerdictStatus.Name(value) for value in candidate_pb2.VerdictStatus.values()
}
_ERROR = candidate_pb2.VERDICT_STATUS_ERROR
_ENCODE_GENOME = json.JSONEncoder(separators=(",", ":")).encode
_RAW_DECODE = json.JSONDecoder().raw_decode
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


_ENTRY_POINT = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
PYWORKER = "helix.oracle.pyworker"


def python_spec(
    entry_point: str,
    *,
    batch: bool = False,
    path: str | None = None,
    max_batch: int = 1000,
    **options: Any,
) -> CommandSpec:
    """A CommandSpec running a `python` oracle: `helix.oracle.pyworker` calling `entry_point`
    ("module:function") in each worker, scalar or batch, with `path` (an absolute directory)
    first on the worker's sys.path. `options` are the other CommandSpec fields.

    A batch worker calls the function with the request lines it has, so by default it may
    hold two batches (`in_flight` = 2 x max_batch): one being evaluated, the next waiting.
    The per-candidate timeout then covers one call of the function on up to `max_batch`
    genomes."""
    if not _ENTRY_POINT.fullmatch(entry_point):
        raise ValueError(f"entry point {entry_point!r} is not MODULE:FUNCTION")
    if path is not None and not os.path.isabs(path):
        raise ValueError(f"path {path!r} must be absolute (workers run in their own directory)")
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    argv = [sys.executable, "-I", "-m", PYWORKER, entry_point]
    if batch:
        argv += ["--batch", "--max-batch", str(max_batch)]
        options.setdefault("in_flight", 2 * max_batch)
    if path is not None:
        argv += ["--path", path]
    return CommandSpec(argv=tuple(argv), **options)


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


class _Batch:
    """One `verify` call: its verdicts by position, how many are still missing, and the one
    future its caller awaits (one future per call, not one per candidate)."""

    __slots__ = ("future", "remaining", "timeout", "verdicts")

    def __init__(self, size: int, future: asyncio.Future[None], timeout: float) -> None:
        self.verdicts: list[candidate_pb2.Verdict | None] = [None] * size
        self.remaining = size
        self.future = future
        self.timeout = timeout


class _Job:
    """One candidate of a batch; its request line is encoded when it is first written."""

    __slots__ = ("attempts", "batch", "candidate_id", "genome", "index", "line", "started")

    def __init__(
        self, batch: _Batch, index: int, candidate_id: str, genome: Mapping[str, object]
    ) -> None:
        self.batch = batch
        self.index = index
        self.candidate_id = candidate_id
        self.genome = genome
        self.line = ""
        self.attempts = 0
        self.started = 0.0


class _Broken(Exception):
    """The worker broke the protocol or died; `status` is what the head candidate gets."""

    def __init__(self, message: str, status: Status = _ERROR) -> None:
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


def request_line(candidate_id: str, genome: Mapping[str, object]) -> str:
    """One request line: compact ASCII JSON, newline-terminated (docs/oracle-protocol.md)."""
    return f'{{"id":{encode_basestring_ascii(candidate_id)},"genome":{_ENCODE_GENOME(genome)}}}\n'


def _verdict(
    candidate_id: str,
    status: Status,
    message: str = "",
    *,
    score: float = 0.0,
    metrics: Mapping[str, float] | None = None,
    seconds: float = 0.0,
) -> candidate_pb2.Verdict:
    verdict = candidate_pb2.Verdict(candidate_id=candidate_id, status=status, score=score)
    if message:
        verdict.message = message[:MAX_MESSAGE_CHARS]
    if metrics:
        verdict.metrics.update(metrics)
    duration = verdict.duration
    duration.seconds, duration.nanos = divmod(max(0, int(seconds * 1e9)), 1_000_000_000)
    return verdict


def _number(value: object) -> float | None:
    if type(value) is float:  # the common case first
        return value if math.isfinite(value) else None
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


def _load(line: str | bytes) -> object:
    """`json.loads`, with a fast path for a str holding one JSON value (no whitespace regex)."""
    if isinstance(line, str):
        try:
            obj, end = _RAW_DECODE(line)
        except ValueError:
            pass  # json.loads below gives the error (or accepts leading whitespace)
        else:
            if end == len(line) or line[end:].isspace():
                return obj
    return json.loads(line)


def parse_verdict_line(
    line: str | bytes, expected_id: str
) -> tuple[Status, float, dict[str, float], str]:
    """(status, score, metrics, message) of one verdict line, or raises ValueError (a bad
    verdict for the expected candidate) or _Broken (the stream is out of step)."""
    try:
        obj = _load(line)
    except ValueError as exc:  # also UnicodeDecodeError
        raise _Broken(f"worker wrote a line that is not JSON ({exc}): {line[:80]!r}") from None
    if type(obj) is not dict:
        raise _Broken(f"worker wrote JSON that is not an object: {line[:80]!r}")
    if obj.get("id") != expected_id:
        raise _Broken(f"worker answered id {obj.get('id')!r} while {expected_id!r} was expected")
    if not obj.keys() <= _VERDICT_KEYS:
        raise ValueError(f"unknown verdict field(s) {sorted(set(obj) - _VERDICT_KEYS)}")
    raw_status = obj.get("status")
    status = _STATUSES.get(raw_status) if type(raw_status) is str else None
    if status is None:
        raise ValueError(f"status must be passed, failed or error, not {raw_status!r}")
    message = obj.get("message", "")
    if type(message) is not str:
        raise ValueError("message must be a string")
    score = 0.0
    if status != _ERROR:
        parsed = _number(obj.get("score"))
        if parsed is None:
            raise ValueError(f"score must be a finite number, not {obj.get('score')!r}")
        score = parsed
    metrics = _metrics(obj["metrics"]) if "metrics" in obj else {}
    return status, score, metrics, message


def _split_lines(block: bytes) -> list[str] | list[bytes]:
    """The lines of `block`, decoded in one call; as bytes if it is not all UTF-8 (the line
    that is not then breaks the stream, the lines before it count)."""
    try:
        return block.decode().split("\n")
    except UnicodeDecodeError:
        return block.split(b"\n")


async def _complete(work: Coroutine[Any, Any, None]) -> None:
    """Await `work` to its end even when the caller is cancelled meanwhile (clean-up that
    must not be cut short), then re-raise the caller's cancellation."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.cancelled():
                raise
            cancelled = exc
    task.result()
    if cancelled is not None:
        raise cancelled


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
        self.free = 0  # request lines this incarnation may still have in flight
        self.ring = _Ring(pool.spec.stderr_ring_bytes)
        self.ready = asyncio.Event()  # a line was written (the reader has something to wait for)
        self.wakeup = asyncio.Event()  # work was queued or a slot was freed (for the writer)
        self.last_answer = 0.0

    async def run(self) -> None:
        spec = self.pool.spec
        while True:
            failures = self.pool.consecutive_failures
            if failures:
                await asyncio.sleep(min(spec.backoff_base * 2 ** (failures - 1), spec.backoff_max))
            # Inside the pool's directory, which close() removes whatever happens here.
            workdir = await asyncio.to_thread(
                tempfile.mkdtemp, prefix=f"worker-{self.index}-", dir=self.pool.root
            )
            try:
                await self._incarnation(workdir)
            finally:
                self.free = 0
                await _complete(self._clean_up(workdir))

    async def _clean_up(self, workdir: str) -> None:
        await self._kill()
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
        self.free = spec.in_flight
        stderr = asyncio.create_task(self._drain_stderr())
        writer = asyncio.create_task(self._write())
        try:
            await self._read(stderr)
        except _Broken as broken:
            self._fail(broken)
        finally:
            for task in (writer, stderr):
                task.cancel()
            await asyncio.gather(writer, stderr, return_exceptions=True)

    async def _write(self) -> None:
        process = self.process
        assert process is not None
        assert process.stdin is not None
        queue, pending, wakeup = self.pool.queue, self.pending, self.wakeup
        while True:
            if not queue or self.free <= 0:
                wakeup.clear()
                await wakeup.wait()
                continue
            # Every free slot's line in one write: one syscall and one wake-up, not one per line.
            now = time.monotonic()
            lines = []
            while queue and self.free > 0:
                job = queue.popleft()
                if job.batch.future.done():  # its caller went away
                    continue
                if not job.line:
                    try:
                        job.line = request_line(job.candidate_id, job.genome)
                    except (TypeError, ValueError) as exc:
                        message = f"the genome cannot be written as JSON: {exc}"
                        self.pool.settle(job, _verdict(job.candidate_id, _ERROR, message))
                        continue
                job.started = now
                pending.append(job)
                lines.append(job.line)
                self.free -= 1
            if not lines:
                continue
            self.ready.set()
            try:
                process.stdin.write("".join(lines).encode())
                await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                return  # the reader sees the exit and blames the head

    async def _drain_stderr(self) -> None:
        process = self.process
        assert process is not None
        assert process.stderr is not None
        while chunk := await process.stderr.read(4096):
            self.ring.add(chunk)

    async def _read(self, stderr: asyncio.Task[None]) -> None:
        process = self.process
        assert process is not None
        assert process.stdout is not None
        stdout = process.stdout
        self.last_answer = time.monotonic()
        limit = self.pool.spec.max_line_bytes
        queue = self.pool.queue
        rest = b""
        # Chunks, not readline: one task and one wake-up for every line already in the pipe.
        reading: asyncio.Task[bytes] = asyncio.create_task(stdout.read(_CHUNK))
        # The leader's exit, seen even when forked children keep its stdout open.
        exiting: asyncio.Task[int] = asyncio.create_task(_exit_code(process))
        try:
            while True:
                if not await self._wait_chunk(reading, exiting, stderr):
                    continue
                chunk = reading.result()
                if not chunk:
                    raise _Broken(await self._exit_message(stderr))
                data = rest + chunk if rest else chunk
                end = data.rfind(b"\n")
                if end >= 0:
                    rest = data[end + 1 :]
                    self._answer(data[:end], limit)
                    if queue:
                        self.wakeup.set()
                else:
                    rest = data
                if len(rest) >= limit:
                    raise _Broken(f"worker wrote a line longer than {limit} bytes")
                reading = asyncio.create_task(stdout.read(_CHUNK))
        finally:
            for task in (reading, exiting):
                task.cancel()
            await asyncio.gather(reading, exiting, return_exceptions=True)

    async def _wait_chunk(
        self, reading: asyncio.Task[bytes], exiting: asyncio.Task[int], stderr: asyncio.Task[None]
    ) -> bool:
        """True when a chunk (or EOF) is read; raises _Broken on timeout or the leader's exit."""
        if exiting.done() and not reading.done():
            await asyncio.wait({reading}, timeout=0.1)  # lines written before the exit
            if not reading.done():
                raise _Broken(await self._exit_message(stderr))
        if not self.pending:
            self.ready.clear()
            waiter = asyncio.create_task(self.ready.wait())
            try:
                await asyncio.wait({reading, waiter, exiting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            return reading.done()
        head = self.pending[0]
        timeout = head.batch.timeout
        deadline = max(head.started, self.last_answer) + timeout
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

    def _answer(self, block: bytes, limit: int) -> None:
        """Settle one pending candidate per line of `block` (complete lines, the last newline
        cut off), in order; raises _Broken at the first line that puts the stream out of step.

        The pool sees verdicts only as fast as it reads them, so the worker's time for the
        lines of one read is shared evenly between them."""
        long_lines = len(block) >= limit  # then each line is measured, in bytes, below
        lines = block.split(b"\n") if long_lines else _split_lines(block)
        pending, pool = self.pending, self.pool
        now = time.monotonic()
        share = 0.0
        if pending:
            share = (now - max(pending[0].started, self.last_answer)) / len(lines)
        self.last_answer = now
        for line in lines:
            if not pending:
                raise _Broken("worker wrote a line while no request was pending")
            if long_lines and len(line) >= limit:
                raise _Broken(f"worker wrote a line longer than {limit} bytes")
            head = pending[0]
            try:
                status, score, metrics, message = parse_verdict_line(line, head.candidate_id)
            except ValueError as exc:
                pool.counters.protocol_errors += 1
                status, score, metrics, message = _ERROR, 0.0, {}, f"invalid verdict line: {exc}"
            else:
                pool.consecutive_failures = 0
            pending.popleft()
            self.free += 1
            verdict = _verdict(
                head.candidate_id, status, message, score=score, metrics=metrics, seconds=share
            )
            pool.settle(head, verdict)

    async def _exit_message(self, stderr: asyncio.Task[None]) -> str:
        process = self.process
        assert process is not None
        try:
            code = await asyncio.wait_for(_exit_code(process), 1.0)
        except TimeoutError:
            return "worker closed its stdout but kept running"
        # what it wrote to stderr on the way out belongs in the message's tail
        await asyncio.wait({stderr}, timeout=0.2)
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
        seconds = time.monotonic() - max(head.started, self.last_answer)
        pool.settle(head, _verdict(head.candidate_id, broken.status, message, seconds=seconds))
        retry = []
        for job in rest:
            job.attempts += 1
            if job.attempts >= _MAX_ATTEMPTS:
                pool.settle(job, _verdict(job.candidate_id, _ERROR, message))
            else:
                pool.counters.retries += 1
                retry.append(job)
        if retry:
            pool.queue.extendleft(reversed(retry))  # first in line again, in their order
            pool.wake_writers()

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
        self.queue: deque[_Job] = deque()
        self.root = ""  # the workers' directories are made in it (see start)
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
        self.root = await asyncio.to_thread(
            tempfile.mkdtemp, prefix="helix-oracle-", dir=self.spec.work_root
        )
        self._workers = [_Worker(self, i) for i in range(self.spec.workers)]
        self._tasks = [
            asyncio.create_task(w.run(), name=f"oracle-worker-{w.index}") for w in self._workers
        ]

    def wake_writers(self) -> None:
        for worker in self._workers:
            if worker.free > 0:
                worker.wakeup.set()

    def settle(self, job: _Job, verdict: candidate_pb2.Verdict) -> None:
        """Give `job` its verdict unless it has one (or its caller went away)."""
        batch = job.batch
        if batch.verdicts[job.index] is not None or batch.future.done():
            return
        batch.verdicts[job.index] = verdict
        name = _STATUS_NAMES[verdict.status]
        self.counters.verdicts[name] = self.counters.verdicts.get(name, 0) + 1
        batch.remaining -= 1
        if not batch.remaining:
            batch.future.set_result(None)

    async def verify(
        self,
        items: Sequence[tuple[str, Mapping[str, object]]],
        timeout: float | None = None,  # noqa: ASYNC109 - per candidate, not for the call
    ) -> list[candidate_pb2.Verdict]:
        """One verdict per (candidate_id, named genome), in the order given.

        `timeout` is the per-candidate timeout of this call's candidates (a VerifyRequest's,
        already capped by the caller); None means the spec's."""
        if self._closed or not self._tasks:
            raise errors.Unavailable("the command oracle is not running")
        if timeout is None:
            timeout = self.spec.timeout
        elif not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a positive finite number of seconds")
        if not items:
            return []
        batch = _Batch(len(items), asyncio.get_running_loop().create_future(), timeout)
        self.queue.extend(_Job(batch, i, cid, genome) for i, (cid, genome) in enumerate(items))
        self.wake_writers()
        try:
            await batch.future
        finally:
            batch.future.cancel()  # no-op when settled; writers skip its queued candidates
        return batch.verdicts  # type: ignore[return-value] # every position is settled

    async def close(self) -> None:
        """Kill every worker group, reap it, remove its directory; pending callers get ERROR."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        jobs = [job for worker in self._workers for job in worker.pending]
        jobs += self.queue
        for worker in self._workers:
            worker.pending.clear()
        self.queue.clear()
        for job in jobs:
            self.settle(job, _verdict(job.candidate_id, _ERROR, "oracle closed"))
        if self.root:
            await asyncio.to_thread(shutil.rmtree, self.root, True)

    def worker_pids(self) -> list[int]:
        """The process-group ids of the running workers (for tests and diagnostics)."""
        return [w.process.pid for w in self._workers if w.process is not None]
