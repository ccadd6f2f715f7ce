"""Leased verification of one run's candidates on every suitable oracle agent at once.

`Verifier.verify(feed, record)` takes a generation's fresh candidates as they are
generated and returns when each has exactly one verdict recorded:

- One VerifyStream per oracle agent hosting the run's oracle, opened with the run's DNA
  and pinned config_hash (an agent with another configuration refuses it with
  CONFIG_HASH_MISMATCH and is left out for a while). Streams are kept from one generation
  to the next and closed with the run.
- A batch goes to a stream only within the credit it granted; among the streams with
  credit, power of two choices on outstanding work picks one. A batch is at most
  `max_batch` candidates and at most an even share of what waits, so every agent works.
- Leases: a batch whose stream breaks (agent killed, channel closed because the agent
  left the registry or stopped SERVING, the agent draining) or that misses its deadline
  goes back to the queue and is re-sent elsewhere; its candidates count an attempt.
  Re-sent candidates travel in smaller batches (halved per attempt), isolating one that
  kills its worker; after `max_attempts` a candidate is recorded as ERROR, never retried
  forever. A verdict is recorded once: a late answer for a re-sent batch is ignored.
- Its VerifyStreams name the run (`x-helix-run` metadata), so the agents' verification
  reports say which run each verdict was for.
- With no agent to verify on, it waits for one (the pool wakes it) up to `wait_timeout`,
  then raises `NoAgents`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.agents.support import describe, error_reason
from helix.common import reasons
from helix.common.aio import cancel_and_wait
from helix.orchestrator import wire
from helix.orchestrator.agents import AgentPool
from helix.orchestrator.search import Verdicts

log = logging.getLogger("helix.orchestrator")

ERROR = candidate_pb2.VERDICT_STATUS_ERROR
MAX_BATCH_BYTES = 2 * 1024 * 1024  # well under the 4 MiB default message limit
OPEN_TIMEOUT = 10.0
BUSY_BACKOFF = 1.0  # an agent that refused a stream (busy, unreachable) rests this long
EXCLUDE = 30.0  # an agent with another config_hash, or without the oracle, is left out
VERIFY_STREAM = "/helix.v1.OracleService/VerifyStream"
RUN_HEADER = "x-helix-run"  # the run a call works for, in the oracle agents' reports


class RunFailed(Exception):
    """The run cannot go on (its oracle refuses its DNA, its generator refuses the request);
    the message says why, for Run.error."""


class NoAgents(Exception):
    """No agent could be used for `wait_timeout` seconds."""


@dataclass(frozen=True, slots=True)
class VerifySettings:
    max_batch: int = 1000
    batch_timeout: float = 120.0  # a batch not answered within this is re-sent elsewhere
    max_attempts: int = 4
    wait_timeout: float = 600.0
    candidate_timeout: float | None = None  # per-candidate timeout asked of the oracle


@dataclass(slots=True, eq=False)
class _Piece:
    """Candidates to verify (serialised, with their ids) that have failed `attempts` times."""

    records: list[bytes]
    ids: list[str]
    attempts: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, n: int) -> _Piece:
        """The first `n` candidates, removed from this piece."""
        head = _Piece(self.records[:n], self.ids[:n], self.attempts)
        del self.records[:n], self.ids[:n]
        return head


@dataclass(slots=True, eq=False)
class _Batch:
    piece: _Piece
    deadline: float


@dataclass(slots=True, eq=False)
class _Stream:
    agent: registry_pb2.Agent
    call: grpc.aio.StreamStreamCall  # type: ignore[type-arg]
    credit: int = 0
    next_id: int = 1
    inflight: dict[int, _Batch] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    broken: str = ""
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def outstanding(self) -> int:
        return sum(len(b.piece) for b in self.inflight.values())


def _raise_if_failed(feeder: asyncio.Task[None]) -> None:
    """Raise what ended the feeding task (breeding), if it failed."""
    if not feeder.done():
        return
    if feeder.cancelled():
        raise RunFailed("breeding the generation was cancelled")
    failure = feeder.exception()
    if failure is not None:
        raise failure


class Verifier:
    """Verifies one run's candidates (module docstring). Not safe for two concurrent
    `verify` calls; one per generation."""

    def __init__(
        self,
        pool: AgentPool,
        oracle: str,
        config_hash: str,
        dna: dna_pb2.Dna,
        settings: VerifySettings | None = None,
        *,
        run: str = "",
    ) -> None:
        self.pool = pool
        self.run = run  # named to the oracle agents (x-helix-run), for their reports
        self.oracle = oracle
        self.config_hash = config_hash
        self.dna = dna
        self.settings = settings or VerifySettings()
        self._streams: dict[str, _Stream] = {}
        self._opening: dict[str, asyncio.Task[None]] = {}
        self._resting: dict[str, float] = {}  # agent name -> loop time it may be used again
        self._pending: collections.deque[_Piece] = collections.deque()
        self._wake = asyncio.Event()
        self._record: Callable[[Verdicts], object] | None = None
        self._rng = random.Random()
        self._fatal: RunFailed | None = None
        self._busy_until = 0.0  # loop time until which a busy agent counts as progress
        self.resent = 0
        self.streams_opened = 0

    # --- the public side ----------------------------------------------------------------

    async def verify(
        self,
        feed: AsyncIterator[tuple[list[bytes], list[str]]],
        record: Callable[[Verdicts], object],
    ) -> None:
        """Verify every candidate `feed` yields (serialised, with its id); `record` takes
        each verdict once."""
        self._record = record
        self._pending.clear()
        done_feeding = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def feeding() -> None:
            async for records, ids in feed:
                if ids:  # copies: pieces are cut in place, the caller's lists are its own
                    self._pending.append(_Piece(list(records), list(ids)))
                    self._wake.set()
            done_feeding.set()
            self._wake.set()

        feeder = asyncio.create_task(feeding(), name="generate")
        idle_since: float | None = None
        try:
            while True:
                _raise_if_failed(feeder)
                if self._fatal is not None:
                    raise self._fatal
                seen = self.pool.version
                self._check_deadlines(loop.time())
                self._open_streams(loop.time())
                self._assign(loop.time())
                inflight = any(s.inflight for s in self._streams.values())
                if done_feeding.is_set() and not self._pending and not inflight:
                    return
                if self._pending and not self._usable():
                    idle_since = idle_since if idle_since is not None else loop.time()
                    if loop.time() - idle_since > self.settings.wait_timeout:
                        raise NoAgents(
                            f"no oracle agent could verify {self.oracle} (config_hash "
                            f"{self.config_hash[:12]}…) for {self.settings.wait_timeout:g}s"
                        )
                else:
                    idle_since = None
                self._wake.clear()
                waits = [
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(self.pool.wait_changed(0.5, seen)),
                ]
                try:
                    await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
        finally:
            await cancel_and_wait([feeder])
            self._record = None

    async def close(self) -> None:
        """Close every stream (the agents get their credit back)."""
        await cancel_and_wait(list(self._opening.values()))
        self._opening.clear()
        for stream in list(self._streams.values()):
            self._drop(stream, "the run is done with it", requeue=False)
        readers = [s.reader for s in self._streams.values()]
        self._streams.clear()
        await cancel_and_wait(readers)

    # --- streams ------------------------------------------------------------------------

    def _usable(self) -> bool:
        """Whether some stream can take work or holds some, or an agent said lately it is
        busy (reachable, its capacity held by other runs: waiting for it is progress).
        Streams being opened do not count: an agent that never answers or refuses for
        another reason must not reset the clock after which the run fails with NoAgents."""
        if self._busy_until > asyncio.get_running_loop().time():
            return True
        return any(not s.broken and s.credit > 0 for s in self._streams.values()) or any(
            s.inflight for s in self._streams.values()
        )

    def _open_streams(self, now: float) -> None:
        for agent in self.pool.oracles(self.oracle):
            name = agent.name
            stream = self._streams.get(name)
            if stream is not None and not stream.broken:
                if (stream.agent.endpoint, stream.agent.epoch) == (agent.endpoint, agent.epoch):
                    continue
                self._drop(stream, "the agent re-registered")
            if name in self._opening or self._resting.get(name, 0.0) > now:
                continue
            self._opening[name] = asyncio.create_task(self._open(agent), name=f"open {name}")
        for name, stream in list(self._streams.items()):
            if not stream.broken and not self.pool.live(name):
                self._drop(stream, "the agent left the registry or stopped serving")

    async def _open(self, agent: registry_pb2.Agent) -> None:
        name = agent.name
        try:
            # Raw messages (wire.py): batches go out as the candidates' bytes, verdicts
            # come back as bytes.
            verify_stream = self.pool.channel(agent).stream_stream(
                VERIFY_STREAM,
                request_serializer=wire.serialize,
                response_deserializer=wire.RawVerifyStreamResponse.FromString,
            )
            call = verify_stream(metadata=((RUN_HEADER, self.run),) if self.run else None)
            opening = oracle_pb2.VerifyStreamOpen(
                oracle=self.oracle, dna=self.dna, config_hash=self.config_hash
            )
            if self.settings.candidate_timeout:
                opening.timeout.CopyFrom(_duration(self.settings.candidate_timeout))
            try:
                await call.write(oracle_pb2.VerifyStreamRequest(open=opening))
                async with asyncio.timeout(OPEN_TIMEOUT):
                    first: Any = await call.read()
            except (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError) as error:
                call.cancel()
                self._refused(agent, error)
                return
            except BaseException:
                call.cancel()
                raise
            credit = _first_credit(first)
            if credit is None:
                call.cancel()
                self._rest(name, BUSY_BACKOFF, "opened without credit")
                return
            stream = _Stream(agent, call, credit=credit)
            stream.reader = asyncio.create_task(self._read(stream), name=f"read {name}")
            self._streams[name] = stream
            self.streams_opened += 1
        finally:
            self._opening.pop(name, None)
            self._wake.set()

    def _refused(self, agent: registry_pb2.Agent, error: BaseException) -> None:
        name = agent.name
        if not isinstance(error, grpc.aio.AioRpcError):
            why = (
                "no credit within the open timeout"
                if isinstance(error, TimeoutError)
                else "the stream ended as it opened"
            )
            self._rest(name, BUSY_BACKOFF, why)
            return
        code, reason = error.code(), error_reason(error)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self._busy_until = asyncio.get_running_loop().time() + 3 * BUSY_BACKOFF
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self._fatal = RunFailed(
                f"{name} refused the run's DNA for {self.oracle}: {error.details()}"
            )
        elif reason == reasons.CONFIG_HASH_MISMATCH or code == grpc.StatusCode.NOT_FOUND:
            self._rest(name, EXCLUDE, describe(error))
        else:
            self._rest(name, BUSY_BACKOFF, describe(error))

    def _rest(self, name: str, seconds: float, why: str) -> None:
        log.info("oracle agent %s left out for %.0fs: %s", name, seconds, why)
        self._resting[name] = asyncio.get_running_loop().time() + seconds
        if len(self._resting) > 10_000:  # bounded: forget the oldest
            self._resting.pop(next(iter(self._resting)))

    async def _read(self, stream: _Stream) -> None:
        why = "the stream ended"
        try:
            while True:
                response: Any = await stream.call.read()
                if response is grpc.aio.EOF:
                    why = "the agent ended the stream"
                    break
                self._take(stream, response)
                self._wake.set()
        except grpc.aio.AioRpcError as error:
            why = describe(error)
        except DecodeError as error:  # its batches go elsewhere, as from a broken stream
            why = f"the agent sent a malformed response ({error})"
        except asyncio.CancelledError:
            if stream.broken:
                return
            raise
        if not stream.broken:
            self._drop(stream, why)
            self._wake.set()

    def _take(self, stream: _Stream, response: Any) -> None:
        """One response of a stream (DecodeError if it is not a VerifyStreamResponse: gRPC
        gives None for bytes the response type cannot parse)."""
        if response is None:
            raise DecodeError("not a VerifyStreamResponse")
        if response.HasField("credit"):
            stream.credit += _credit(response)
        elif response.HasField("verdicts"):
            self._answered(stream, response.verdicts)

    def _answered(self, stream: _Stream, answer: bytes) -> None:
        """A VerdictBatch (serialised): each verdict is recorded once, in its bytes and with
        the fields the run reads; a batch answered wrongly goes back to the queue. Bytes
        that are not a VerdictBatch raise DecodeError before the batch is touched (the
        stream is then dropped, and the batch re-sent with its others)."""
        raw = wire.RawVerdictBatch.FromString(answer)
        raws = list(raw.verdicts)
        columns = wire.read_verdicts(raws)
        batch = stream.inflight.pop(raw.batch_id, None)
        if batch is None:
            return
        piece = batch.piece
        self.pool.add_outstanding(stream.agent.name, -len(piece))
        if len(raws) != len(piece):
            self._requeue(piece, f"{stream.agent.name} answered a batch wrongly")
            return
        answered = Verdicts(*columns, raws)
        if answered.ids != piece.ids:  # keep the right ones, re-send the others
            right = [i for i, cid in enumerate(piece.ids) if answered.ids[i] == cid]
            wrong = sorted(set(range(len(piece))) - set(right))
            answered = answered.rows(right)
            self._requeue(
                _Piece(
                    [piece.records[i] for i in wrong],
                    [piece.ids[i] for i in wrong],
                    piece.attempts,
                ),
                f"{stream.agent.name} answered the wrong candidate",
            )
        if self._record is not None and len(answered):
            self._record(answered)

    def _drop(self, stream: _Stream, why: str, *, requeue: bool = True) -> None:
        """A stream is over: its batches go back to the queue (an attempt each)."""
        if stream.broken:
            return
        stream.broken = why
        self._streams.pop(stream.agent.name, None)
        stream.call.cancel()
        for batch in stream.inflight.values():
            self.pool.add_outstanding(stream.agent.name, -len(batch.piece))
            if requeue:
                self._requeue(batch.piece, f"{stream.agent.name}: {why}")
        stream.inflight.clear()
        if requeue:
            log.info("stream to %s dropped: %s", stream.agent.name, why)
            self._rest(stream.agent.name, BUSY_BACKOFF, why)

    def _requeue(self, piece: _Piece, why: str) -> None:
        attempts = piece.attempts + 1
        if attempts < self.settings.max_attempts:
            self.resent += len(piece)
            self._pending.appendleft(_Piece(piece.records, piece.ids, attempts))
            return
        if self._record is None:
            return
        message = f"not verified: {attempts} attempts failed; last: {why}"[:1024]
        given_up = [
            candidate_pb2.Verdict(candidate_id=cid, status=ERROR, message=message)
            for cid in piece.ids
        ]
        self._record(Verdicts.of(given_up))

    def _check_deadlines(self, now: float) -> None:
        for stream in list(self._streams.values()):
            if any(batch.deadline < now for batch in stream.inflight.values()):
                self._drop(stream, f"a batch missed its {self.settings.batch_timeout:g}s deadline")

    def _assign(self, now: float) -> None:
        while self._pending:
            ready = [s for s in self._streams.values() if not s.broken and s.credit > 0]
            if not ready:
                return
            if len(ready) == 1:
                stream = ready[0]
            else:
                a, b = self._rng.sample(ready, 2)
                stream = a if a.outstanding <= b.outstanding else b
            first = self._pending[0]
            waiting = sum(len(p) for p in self._pending)
            limit = min(stream.credit, self.settings.max_batch, 10_000)
            share = math.ceil(waiting / len(ready))
            limit = min(limit, max(share, 1))
            if first.attempts:
                limit = min(limit, max(1, self.settings.max_batch >> first.attempts))
            size = max(1, len(first.records[0]) + 8)
            limit = max(1, min(limit, MAX_BATCH_BYTES // size))
            piece = self._pending.popleft() if len(first) <= limit else first.take(limit)
            batch_id = stream.next_id
            stream.next_id += 1
            batch = wire.RawVerifyBatch(batch_id=batch_id, candidates=piece.records)
            message = wire.RawVerifyStreamRequest(batch=batch.SerializeToString())
            stream.credit -= len(piece)
            stream.inflight[batch_id] = _Batch(piece, now + self.settings.batch_timeout)
            self.pool.add_outstanding(stream.agent.name, len(piece))
            task = asyncio.get_running_loop().create_task(self._send(stream, message))
            task.add_done_callback(_quiet)

    async def _send(self, stream: _Stream, message: Any) -> None:
        try:
            async with stream.writing:
                if stream.broken:
                    return
                await stream.call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
            why = describe(error) if isinstance(error, grpc.aio.AioRpcError) else "closed"
            self._drop(stream, f"a write failed: {why}")
            self._wake.set()


def _quiet(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        error = task.exception()
        if error is not None:
            log.error("sending a batch failed", exc_info=error)


def _credit(response: Any) -> int:
    """The candidates a (raw) VerifyStreamResponse's credit grants (DecodeError if its
    credit is not a VerifyCredit)."""
    return int(oracle_pb2.VerifyCredit.FromString(response.credit).candidates)


def _first_credit(first: Any) -> int | None:
    """The credit of a stream's first response; None when it is not a credit (the stream
    ended, the response is not a VerifyStreamResponse, or its credit does not parse)."""
    if first is grpc.aio.EOF or first is None or not first.HasField("credit"):
        return None
    try:
        return _credit(first)
    except DecodeError:
        return None


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
