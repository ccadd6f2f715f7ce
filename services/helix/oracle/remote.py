"""A remote oracle: forwards to an OracleService at an address (e.g. an oracle written in
another language that does not register itself), with its own channel, deadlines and
credit.

- One grpc.aio channel per remote oracle (TLS from `ca_file`, a bearer token re-read from
  `token_file`), opened in `start`, closed in `close`.
- `start` asks the far side for its oracle (GetOracle) to learn its config_hash, objective,
  description and capacity. While it cannot (unreachable, no such oracle, refused), the
  oracle is DEGRADED, a background probe retries with jittered backoff, and `evaluate`
  answers ERROR verdicts naming the address at once; it never raises. The probe repeats
  every REFRESH seconds, so a changed remote configuration is noticed.
- The reported config_hash combines this agent's configuration and the remote's
  config_hash, so verdicts cached here are keyed by the configuration that produced them.
  A remote stream keeps the configuration it was opened with (the remote retires an old
  version when its last call ends), so when the probe sees a new config_hash, each open
  stream finishes what it holds and the rest goes on a new stream. Verdicts computed in
  the moments between the remote's reload and the next probe may still be cached under
  the old hash: the remote does not say which configuration produced a verdict.
- `evaluate` forwards rows through ONE long-lived VerifyStream per (DNA fingerprint,
  timeout), shared by concurrent calls: rows wait in a queue, go out as pieces of at most
  the allowance the remote granted, and are matched back by batch_id. Each piece has a
  deadline (timeout * ceil(piece / remote capacity) + DEADLINE_MARGIN). A piece whose
  stream breaks (UNAVAILABLE while draining, a cut connection, the deadline) is re-sent
  once on a new stream; after that its rows get ERROR (TIMEOUT for the deadline) verdicts
  carrying the remote's status. Refusals that a re-send cannot cure (INVALID_ARGUMENT for
  a DNA the remote's oracle does not take, NOT_FOUND, PERMISSION_DENIED, ...) give ERROR
  verdicts at once, with the remote's BadRequest text. A stream idle for IDLE_CLOSE is
  half-closed, giving the remote back the capacity it holds for it.
- Remote verdicts are checked: each must name the candidate sent at its position ("remote
  answered the wrong candidate" otherwise), with a status and a finite score.
- `healthy` is False while the remote cannot be used, or after FAILURES_DEGRADED
  consecutive failed pieces (reset by the next answered piece).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import grpc
from google.protobuf import descriptor, duration_pb2
from google.rpc import error_details_pb2

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
from helix.agents.support import Backoff, describe, retry_delay, status_details
from helix.common import aio, tracing
from helix.common.aio import cancel_and_wait
from helix.common.channel import create_channel, tls_channel_credentials
from helix.common.errors import FieldViolation
from helix.genome import codec
from helix.genome.layout import Layout, Population, fingerprint
from helix.oracle.config import OracleSpec, inside
from helix.oracle.hosted import Scored
from helix.security.client import FileTokenSource, bearer_interceptors

log = logging.getLogger("helix.oracle")

PASSED = candidate_pb2.VERDICT_STATUS_PASSED
FAILED = candidate_pb2.VERDICT_STATUS_FAILED
ERROR = candidate_pb2.VERDICT_STATUS_ERROR
TIMEOUT = candidate_pb2.VERDICT_STATUS_TIMEOUT
_STATUSES = frozenset(candidate_pb2.VerdictStatus.values()) - {0}

PROBE_TIMEOUT = 3.0  # GetOracle on the remote
OPEN_TIMEOUT = 10.0  # a VerifyStream's first credit
REFRESH = 30.0  # GetOracle again this often while reachable
DEADLINE_MARGIN = 5.0  # added to each piece's deadline (transport, queueing)
# A stream with nothing to send or await is half-closed after this: while open it holds
# its share of the remote's capacity, which other clients of the remote then lack.
IDLE_CLOSE = 5.0
SENDS = 2  # a piece is sent at most twice (re-sent once on a new stream)
FAILURES_DEGRADED = 3  # consecutive failed pieces before the oracle is DEGRADED
MAX_PIECE = 10_000  # candidates per VerifyBatch (oracle.proto)
MAX_MESSAGE_CHARS = 1024
MAX_METRICS = 64
_METRIC_KEY = re.compile(r"[a-z_][a-z0-9_.]{0,63}")
# Codes after which the same piece is worth sending once more on a new stream.
_RESEND = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OK,  # ended while holding batches: a protocol slip, try again
    }
)
_VERIFY_STREAM = "/helix.v1.OracleService/VerifyStream"
_MESSAGE = descriptor.FieldDescriptor.TYPE_MESSAGE
_BATCH_TAG = codec.wire_tag(
    oracle_pb2.VerifyStreamRequest.DESCRIPTOR, "batch", _MESSAGE, codec.LENGTH_DELIMITED
)
_CANDIDATES_TAG = codec.wire_tag(
    oracle_pb2.VerifyBatch.DESCRIPTOR, "candidates", _MESSAGE, codec.LENGTH_DELIMITED
)
_ID_TAG = codec.wire_tag(
    candidate_pb2.Candidate.DESCRIPTOR,
    "id",
    descriptor.FieldDescriptor.TYPE_STRING,
    codec.LENGTH_DELIMITED,
)
_GENOME_TAG = codec.wire_tag(
    candidate_pb2.Candidate.DESCRIPTOR, "genome", _MESSAGE, codec.LENGTH_DELIMITED
)
_BATCH_ID_TAG = codec.wire_tag(
    oracle_pb2.VerifyBatch.DESCRIPTOR,
    "batch_id",
    descriptor.FieldDescriptor.TYPE_UINT64,
    codec.VARINT,
)


def framed_candidates(encodings: Sequence[bytes], ids: Sequence[str]) -> list[bytes]:
    """Each row as a VerifyBatch.candidates entry (tag, size, Candidate{id, genome}),
    ready to be joined into a batch: bytes assembled, not messages built."""
    heads: dict[int, tuple[bytes, bytes]] = {}
    out = []
    for encoding, candidate_id in zip(encodings, ids, strict=True):
        raw_id = candidate_id.encode()
        key = len(encoding) << 8 | len(raw_id)
        head = heads.get(key)
        if head is None:
            genome = _GENOME_TAG + codec.varint(len(encoding))
            id_field = _ID_TAG + codec.varint(len(raw_id))
            size = len(id_field) + len(raw_id) + len(genome) + len(encoding)
            head = heads[key] = (_CANDIDATES_TAG + codec.varint(size) + id_field, genome)
        out.append(head[0] + raw_id + head[1] + encoding)
    return out


def _verdict(candidate_id: str, status: int, message: str) -> candidate_pb2.Verdict:
    return candidate_pb2.Verdict(
        candidate_id=candidate_id,
        status=cast("candidate_pb2.VerdictStatus.ValueType", status),
        message=message[:MAX_MESSAGE_CHARS],
    )


def remote_status(error: grpc.aio.AioRpcError) -> str:
    """Code, reason and message of a remote error, with its BadRequest violations."""
    text = describe(error)
    for detail in status_details(error):
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            text += "".join(f"; {v.field}: {v.description}" for v in bad.field_violations[:5])
    return text


def checked_verdict(verdict: candidate_pb2.Verdict, expected_id: str) -> candidate_pb2.Verdict:
    """A remote verdict as this agent returns it, or an ERROR verdict saying what is wrong
    with it (another candidate's id, no status, a score that is not finite, bad metrics)."""
    if (
        verdict.candidate_id == expected_id
        and verdict.status == PASSED
        and math.isfinite(verdict.score)
        and not verdict.metrics
        and len(verdict.message) <= MAX_MESSAGE_CHARS
    ):
        return verdict  # the common case, checked in one go
    if verdict.candidate_id != expected_id:
        return _verdict(
            expected_id,
            ERROR,
            f"remote answered the wrong candidate ({verdict.candidate_id!r} for {expected_id})",
        )
    problem = ""
    if verdict.status not in _STATUSES:
        problem = f"remote gave no valid status ({verdict.status})"
    elif verdict.status in (PASSED, FAILED) and not math.isfinite(verdict.score):
        problem = "the score is not a finite number"
    elif len(verdict.metrics) > MAX_METRICS or any(
        not _METRIC_KEY.fullmatch(k) or not math.isfinite(v) for k, v in verdict.metrics.items()
    ):
        problem = "remote gave invalid metrics (keys [a-z_][a-z0-9_.]{0,63}, finite values)"
    if problem:
        return _verdict(expected_id, ERROR, problem)
    if len(verdict.message) > MAX_MESSAGE_CHARS:
        verdict.message = verdict.message[:MAX_MESSAGE_CHARS]
    return verdict


class _Job:
    """One `evaluate` call: its candidates (framed as VerifyBatch.candidates entries) and
    the verdict of each row, filled as pieces are answered."""

    def __init__(self, ids: Sequence[str], framed: list[bytes]) -> None:
        self.ids = ids
        self.framed = framed
        self.verdicts: list[candidate_pb2.Verdict | None] = [None] * len(ids)
        self.left = len(ids)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.abandoned = False

    def settle(self, row: int, verdict: candidate_pb2.Verdict) -> None:
        if self.verdicts[row] is None:
            self.verdicts[row] = verdict
            self.left -= 1
            if self.left == 0 and not self.done.done():
                self.done.set_result(None)

    def settle_rows(self, start: int, verdicts: list[candidate_pb2.Verdict]) -> None:
        stop = start + len(verdicts)
        if self.verdicts[start:stop].count(None) != len(verdicts):
            for row, verdict in enumerate(verdicts, start):
                self.settle(row, verdict)
            return
        self.verdicts[start:stop] = verdicts
        self.left -= len(verdicts)
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)

    def fail(self, start: int, stop: int, status: int, message: str) -> None:
        self.settle_rows(
            start, [_verdict(self.ids[row], status, message) for row in range(start, stop)]
        )


@dataclasses.dataclass(slots=True)
class _Slice:
    """Rows [start, stop) of a job, and how often they have been sent."""

    job: _Job
    start: int
    stop: int
    sends: int = 0


@dataclasses.dataclass(slots=True)
class _Piece:
    """A VerifyBatch sent and not yet answered."""

    batch_id: int
    slices: list[_Slice]
    size: int
    deadline: float


class _Ending(NamedTuple):
    """Why a stream ended while it held pieces: what their rows get if not re-sent."""

    code: grpc.StatusCode
    status: int  # ERROR or TIMEOUT
    message: str

    @property
    def resend(self) -> bool:
        return self.code in _RESEND


class _Stream:
    """The VerifyStream of one (DNA fingerprint, timeout): a queue of rows, the pieces in
    flight, and the task that opens, feeds, reads and reopens the call."""

    def __init__(self, remote: RemoteOracle, key: tuple[str, float], opening: bytes) -> None:
        self.remote = remote
        self.key = key
        self.timeout = key[1]
        self.opening = opening
        self.queue: deque[_Slice] = deque()
        self.pieces: dict[int, _Piece] = {}
        self.allowance = 0
        self.next_batch_id = 1
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.idle_since: float | None = None  # of the current call, with nothing held
        self.closing = False  # the current call is half-closed
        self.opened_with = ""  # the remote's config_hash when the current call was opened

    def submit(self, job: _Job) -> None:
        self.queue.append(_Slice(job, 0, len(job.ids)))
        self.wake.set()
        if self.task is None:
            # Shared by every caller: not traced under the call that happens to start it.
            self.task = tracing.spawn_detached(self.run(), name=f"remote oracle {self.remote.id}")

    async def run(self) -> None:
        try:
            while self._drop_abandoned():
                call = await self.open()
                if call is not None:
                    ending = await self.serve(call)
                    self.fail_pieces(ending or self._ended_ok())
        except Exception:
            log.exception("remote oracle %s: forwarding failed", self.remote.id)
        finally:
            # No await since the queue was last seen empty: nothing submitted is left behind.
            if self.remote.streams.get(self.key) is self:
                del self.remote.streams[self.key]
            self.abandon()

    def abandon(self) -> None:
        """Closed (or failed): whatever is still held gets a verdict, never nothing."""
        message = f"{self.remote.where}: the oracle was closed"
        for piece in self.pieces.values():
            for part in piece.slices:
                part.job.fail(part.start, part.stop, ERROR, message)
        self.pieces.clear()
        self.fail_queue(ERROR, message)

    def _drop_abandoned(self) -> bool:
        while self.queue and self.queue[0].job.abandoned:
            self.queue.popleft()
        return bool(self.queue)

    def fail_queue(self, status: int, message: str) -> None:
        while self.queue:
            piece = self.queue.popleft()
            piece.job.fail(piece.start, piece.stop, status, message)

    async def open(self) -> Any:
        """A call that has accepted `open` and granted credit; None when the queued rows
        got ERROR verdicts instead (remote unusable or refusing)."""
        remote = self.remote
        if remote.problem is not None:
            self.fail_queue(ERROR, remote.problem)
            return None
        loop = asyncio.get_running_loop()
        busy_until = loop.time() + self.timeout + DEADLINE_MARGIN
        while True:
            call = remote.verify_stream()
            try:
                async with asyncio.timeout(OPEN_TIMEOUT):
                    await aio.write(call, self.opening)
                    first = await call.read()
                    if first is grpc.aio.EOF:
                        await aio.raise_for_status(call)
                        raise _Protocol("the remote ended the stream before granting credit")
                if first.WhichOneof("kind") != "credit":
                    raise _Protocol("the remote's first message was not credit")
            except grpc.aio.AioRpcError as error:
                await _end_call(call)
                busy = error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                if busy and loop.time() < busy_until:
                    await asyncio.sleep(min(max(retry_delay(error), 0.05), 2.0))
                    continue
                self.refused(error.code(), remote_status(error))
                return None
            except (TimeoutError, _Protocol) as error:
                await _end_call(call)
                text = str(error) or f"no credit within {OPEN_TIMEOUT:g}s of opening"
                self.refused(grpc.StatusCode.UNAVAILABLE, text)
                return None
            except Exception as error:  # e.g. the token file cannot be read
                await _end_call(call)
                self.refused(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")
                return None
            self.allowance = first.credit.candidates
            self.next_batch_id = 1
            self.opened_with = remote.remote_hash
            return call

    def refused(self, code: grpc.StatusCode, text: str) -> None:
        message = f"{self.remote.where}: {text}"
        if code == grpc.StatusCode.UNAVAILABLE:
            self.remote.lost(message)
        if code != grpc.StatusCode.INVALID_ARGUMENT:
            self.remote.failed_piece()
        log.warning("remote oracle %s: opening VerifyStream failed: %s", self.remote.id, text)
        self.fail_queue(ERROR, message)

    async def serve(self, call: Any) -> _Ending | None:
        """Send pieces within the credit and read answers until the call ends (None when
        it ended with nothing held) or a piece's deadline passes."""
        loop = asyncio.get_running_loop()
        reading: asyncio.Future[Any] = asyncio.ensure_future(call.read())
        waking: asyncio.Future[Any] = asyncio.ensure_future(self.wake.wait())
        self.idle_since, self.closing = None, False
        try:
            while True:
                self.wake.clear()
                await self._send(call)
                if waking.done():
                    waking = asyncio.ensure_future(self.wake.wait())
                due = self._due(loop.time())
                done, _ = await asyncio.wait(
                    {reading, waking},
                    timeout=None if due is None else max(0.0, due - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if reading in done:
                    response = reading.result()
                    if response is grpc.aio.EOF:
                        await aio.raise_for_status(call)
                        return self._ended_ok() if self.pieces else None
                    self.answer(response)
                    reading = asyncio.ensure_future(call.read())
                elif not done:
                    late = await self._timer(call, loop.time())
                    if late is not None:
                        return late
        except grpc.aio.AioRpcError as error:
            return _Ending(error.code(), ERROR, f"{self.remote.where}: {remote_status(error)}")
        except asyncio.InvalidStateError:  # written after the call ended with OK
            return self._ended_ok() if self.pieces else None
        finally:
            reading.cancel()
            waking.cancel()
            await _end_call(call)

    async def _send(self, call: Any) -> None:
        """Send what is queued, in pieces, as far as the allowance goes."""
        if not self.closing and self.opened_with != self.remote.remote_hash:
            # The remote's configuration changed, but its side of this call keeps the old
            # one: finish what the call holds, then go on with a new call.
            self.closing = True
            await call.done_writing()
            return
        while not self.closing and self.allowance > 0 and self._drop_abandoned():
            await aio.write(call, self.next_piece(asyncio.get_running_loop().time()))

    def _due(self, now: float) -> float | None:
        """When to look again without news: the first piece's deadline, or when an idle
        stream is half-closed (None: only news matters)."""
        if self.pieces:
            self.idle_since = None
            return min(p.deadline for p in self.pieces.values())
        if self.queue or self.closing:
            self.idle_since = None
            return None
        self.idle_since = now if self.idle_since is None else self.idle_since
        return self.idle_since + IDLE_CLOSE

    async def _timer(self, call: Any, now: float) -> _Ending | None:
        """A deadline passed: a late piece ends the call; an idle call is half-closed
        (the remote then ends it with OK)."""
        if self.pieces:
            return self._overdue(now)
        if not self.closing and not self.queue:
            self.closing = True
            await call.done_writing()
        return None

    def _ended_ok(self) -> _Ending:
        text = "the remote ended the stream without answering every batch"
        return _Ending(grpc.StatusCode.OK, ERROR, f"{self.remote.where}: {text}")

    def _overdue(self, now: float) -> _Ending | None:
        late = [p for p in self.pieces.values() if p.deadline <= now]
        if not late:
            return None
        seconds = self._allowed(late[0].size)
        text = f"no verdicts within {seconds:.1f}s (timeout {self.timeout:g}s per candidate)"
        return _Ending(grpc.StatusCode.DEADLINE_EXCEEDED, TIMEOUT, f"{self.remote.where}: {text}")

    def _allowed(self, size: int) -> float:
        capacity = max(1, self.remote.remote_capacity or size)
        return self.timeout * math.ceil(size / capacity) + DEADLINE_MARGIN

    def next_piece(self, now: float) -> bytes:
        """Take up to the allowance from the queue as a piece; its VerifyStreamRequest."""
        room = min(self.allowance, MAX_PIECE)
        slices: list[_Slice] = []
        size = 0
        while room > size and self._drop_abandoned():
            head = self.queue[0]
            take = min(head.stop - head.start, room - size)
            if take < head.stop - head.start:
                part = _Slice(head.job, head.start, head.start + take, head.sends)
                head.start += take
            else:
                part = self.queue.popleft()
            part.sends += 1
            slices.append(part)
            size += take
        batch_id = self.next_batch_id
        self.next_batch_id += 1
        self.allowance -= size
        self.pieces[batch_id] = _Piece(batch_id, slices, size, now + self._allowed(size))
        self.remote.pieces_sent += 1
        body = _BATCH_ID_TAG + codec.varint(batch_id)
        body += b"".join(b for s in slices for b in s.job.framed[s.start : s.stop])
        return _BATCH_TAG + codec.varint(len(body)) + body

    def answer(self, response: oracle_pb2.VerifyStreamResponse) -> None:
        kind = response.WhichOneof("kind")
        if kind == "credit":
            self.allowance += response.credit.candidates
            return
        batch = response.verdicts
        piece = self.pieces.pop(batch.batch_id, None)
        if piece is None:
            log.warning(
                "remote oracle %s answered unknown batch %d", self.remote.id, batch.batch_id
            )
            return
        verdicts = batch.verdicts
        if len(verdicts) != piece.size:
            text = f"remote answered {len(verdicts)} verdicts for a batch of {piece.size}"
            for part in piece.slices:
                part.job.fail(part.start, part.stop, ERROR, f"{self.remote.where}: {text}")
            self.remote.failed_piece()
            return
        self.remote.answered_piece()
        at = 0
        for part in piece.slices:
            size = part.stop - part.start
            ids = part.job.ids[part.start : part.stop]
            answered = verdicts[at : at + size]
            part.job.settle_rows(
                part.start, [checked_verdict(v, i) for v, i in zip(answered, ids, strict=True)]
            )
            at += size

    def fail_pieces(self, ending: _Ending) -> None:
        """The call ended holding pieces: re-send them once, or give their rows verdicts."""
        if not self.pieces:
            return
        pieces = sorted(self.pieces.values(), key=lambda p: p.batch_id)
        self.pieces.clear()
        self.allowance = 0
        self.remote.failed_piece()
        log.warning(
            "remote oracle %s: a stream ended holding %d batches: %s",
            self.remote.id,
            len(pieces),
            ending.message,
        )
        for piece in reversed(pieces):
            for part in reversed(piece.slices):
                if ending.resend and part.sends < SENDS and not part.job.abandoned:
                    self.remote.resent += part.stop - part.start
                    self.queue.appendleft(part)
                else:
                    part.job.fail(part.start, part.stop, ending.status, ending.message)


class _Protocol(Exception):
    """The remote broke the VerifyStream protocol."""


async def _end_call(call: Any) -> None:
    """Cancel a call and end its request side: grpc.aio's intercepted calls keep a task
    waiting for writes otherwise, once the call has ended on its own."""
    call.cancel()
    with contextlib.suppress(Exception):
        await call.done_writing()


def _identity(data: bytes) -> bytes:
    return data


class RemoteOracle:
    """An oracle served by another OracleService (see the module docstring)."""

    def __init__(self, spec: OracleSpec) -> None:
        self.configured = spec
        self.spec = spec  # with what the remote says of itself once it has been reached
        settings = spec.settings
        self.address: str = settings["address"]
        self.remote_name = f"oracles/{settings['oracle']}"
        self.where = f"remote oracle {self.remote_name} at {self.address}"
        self.remote: oracle_pb2.OracleInfo | None = None
        self.remote_capacity = 0
        self.problem: str | None = f"{self.where}: not contacted yet"
        self.failures = 0
        self.pieces_sent = 0
        self.resent = 0  # candidates re-sent on a new stream
        self.streams: dict[tuple[str, float], _Stream] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._method: Any = None
        self._probe_now = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def remote_hash(self) -> str:
        return self.remote.config_hash if self.remote is not None else ""

    @property
    def healthy(self) -> bool:
        return self.problem is None and self.failures < FAILURES_DEGRADED

    def check_dna(self, layout: Layout) -> list[FieldViolation]:
        return []  # the remote checks shapes: a misfit is ERROR verdicts with its BadRequest

    async def start(self) -> None:
        settings = self.configured.settings
        base = self.configured.base_dir
        credentials = None
        if "ca_file" in settings:
            ca_file = inside(base, settings["ca_file"])
            credentials = await asyncio.to_thread(tls_channel_credentials, ca_file)
        source = None
        if "token_file" in settings:
            source = FileTokenSource(Path(inside(base, settings["token_file"])))
        self._channel = create_channel(
            self.address, credentials=credentials, interceptors=bearer_interceptors(source)
        )
        self._stub = oracle_pb2_grpc.OracleServiceStub(self._channel)
        self._method = self._channel.stream_stream(
            _VERIFY_STREAM,
            request_serializer=_identity,
            response_deserializer=oracle_pb2.VerifyStreamResponse.FromString,
        )
        await self.probe()
        self._watcher = asyncio.create_task(self._watch(), name=f"probe {self.where}")

    async def close(self) -> None:
        streams = list(self.streams.values())
        await cancel_and_wait([self._watcher, *(s.task for s in streams)])
        for stream in streams:
            stream.abandon()  # a task cancelled before it ran has not done it
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def verify_stream(self) -> Any:
        return self._method()

    # --- reachability ---------------------------------------------------------------------

    async def probe(self) -> bool:
        """GetOracle on the remote: learn what it serves; True when it is usable."""
        request = oracle_pb2.GetOracleRequest(name=self.remote_name)
        try:
            response = await self._stub.GetOracle(request, timeout=PROBE_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            verb = "is unreachable" if code == grpc.StatusCode.UNAVAILABLE else "refused GetOracle"
            self._set_problem(f"{self.where} {verb}: {remote_status(error)}")
            return False
        except Exception as error:  # e.g. the token file cannot be read
            self._set_problem(f"{self.where}: {type(error).__name__}: {error}")
            return False
        self._learn(response.oracle)
        return True

    def _set_problem(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("%s; its candidates get ERROR verdicts until it answers", problem)
        self.problem = problem

    def _learn(self, info: oracle_pb2.OracleInfo) -> None:
        if self.problem is not None:
            log.info("%s is reachable (kind %s)", self.where, oracle_pb2.OracleKind.Name(info.kind))
        self.problem = None
        if self.remote is not None and info.config_hash != self.remote.config_hash:
            log.info("%s changed its configuration (config_hash %s)", self.where, info.config_hash)
            for stream in self.streams.values():
                stream.wake.set()  # its call goes on with the old configuration: reopen
        self.remote = info
        self.remote_capacity = info.capacity
        configured = self.configured
        combined = hashlib.sha256(f"{configured.config_hash}:{info.config_hash}".encode())
        self.spec = dataclasses.replace(
            configured,
            config_hash=combined.hexdigest(),
            objective=configured.objective or info.objective,
            description=configured.description or f"{info.description} (via {self.address})"[:4096],
        )

    def lost(self, problem: str) -> None:
        """A call found the remote unreachable: probe again now."""
        self._set_problem(problem)
        self._probe_now.set()

    def failed_piece(self) -> None:
        self.failures += 1

    def answered_piece(self) -> None:
        self.failures = 0

    async def _watch(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            wait = REFRESH if self.problem is None else backoff.next()
            self._probe_now.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._probe_now.wait()
            except TimeoutError:
                pass
            if await self.probe():
                backoff.reset()

    # --- verifying ------------------------------------------------------------------------

    async def evaluate(
        self, layout: Layout, population: Population, ids: Sequence[str], candidate_timeout: float
    ) -> Scored:
        if not ids:
            return Scored(verdicts=[])
        if self.problem is not None:
            return Scored(verdicts=[_verdict(cid, ERROR, self.problem) for cid in ids])
        job = _Job(ids, framed_candidates(codec.encode_genomes(layout, population), ids))
        self._stream_for(layout, candidate_timeout).submit(job)
        try:
            await job.done
        finally:
            job.abandoned = True  # cancelled: what is still queued is not sent
        verdicts = [v for v in job.verdicts if v is not None]
        assert len(verdicts) == len(ids)
        return Scored(verdicts=verdicts)

    def _stream_for(self, layout: Layout, timeout: float) -> _Stream:
        # Streams are shared per DNA and timeout, and each holds part of the remote's
        # capacity: timeouts are rounded up to a power of two seconds, so callers that
        # vary theirs finely share at most a few streams per DNA: a power of two
        # milliseconds, at most twice the timeout asked for, never less.
        timeout = 2 ** math.ceil(math.log2(max(timeout, 0.001) * 1000)) / 1000
        key = (fingerprint(layout.dna), timeout)
        stream = self.streams.get(key)
        if stream is None:
            opening = oracle_pb2.VerifyStreamRequest(
                open=oracle_pb2.VerifyStreamOpen(
                    oracle=self.remote_name, dna=layout.dna, timeout=_duration(timeout)
                )
            )
            stream = _Stream(self, key, opening.SerializeToString())
            self.streams[key] = stream
        return stream


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(max(1, round(seconds * 1e9)))
    return value
