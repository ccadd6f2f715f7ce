"""OracleService: validate, call the host, reply; VerifyStream's credit protocol.

The core is host.py (configuration, capacity, verifying a batch); this module is the gRPC
surface. VerifyStream follows oracle.proto's seven steps:

1. the first message must be `open` (else INVALID_ARGUMENT; a second `open` too); the
   oracle must be hosted (NOT_FOUND) and take the DNA's shape (INVALID_ARGUMENT naming
   the gene);
2. the stream takes a window of the oracle's capacity — at most `stream_share` of it, so
   one stream never holds every slot, and when nothing is free the stream ends at once
   with RESOURCE_EXHAUSTED (ORACLE_BUSY, RetryInfo) rather than waiting — and grants it
   as credit;
3. each batch is checked against the allowance (CREDIT_EXCEEDED) and its batch_id against
   those seen (INVALID_ARGUMENT);
4. batches are verified concurrently and answered as they complete, in any order;
5. a completed batch's candidates are granted again as credit, so what the stream holds
   never exceeds its window;
6. after the client half-closes, the held batches are answered and the stream ends OK;
7. when the server drains, no more credit is granted, the held batches are answered and
   the stream ends with UNAVAILABLE (ORACLE_DRAINING). Cancellation abandons the work.

A stream that holds no batch and sends nothing for `idle_timeout` ends with
DEADLINE_EXCEEDED (STREAM_IDLE), giving its window back.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from google.protobuf.message import Message
from grpc.aio import ServicerContext

import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
from helix.common import errors, logs, pages, reasons, rules
from helix.common.aio import cancel_and_wait
from helix.common.errors import FieldViolation
from helix.common.interceptors import Encoded
from helix.common.services import validate
from helix.common.validation import (
    Violations,
    check_no_unknown_fields,
    check_own_unknown_fields,
)
from helix.genome.batches import CandidateRecords
from helix.genome.codec import varint
from helix.oracle import validation as checks
from helix.oracle.host import Hosted, Lease, OracleHost, Target, target_for

log = logging.getLogger("helix.oracle")

RUN_HEADER = "x-helix-run"
_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
MAX_BATCH_ID_RANGES = 65_536
_VERDICTS_TAG = b"\x12"  # VerdictBatch.verdicts and VerifyStreamResponse.verdicts: field 2
_RESPONSE_VERDICTS_TAG = b"\x0a"  # VerifyResponse.verdicts: field 1


def _who(context: ServicerContext[Any, Any]) -> tuple[str, str, str]:
    run = ""
    for key, value in context.invocation_metadata() or ():
        if key == RUN_HEADER and isinstance(value, str) and _RUN.fullmatch(value):
            run = value
    return logs.principal_var.get(), logs.request_id_var.get(), run


def _candidate_count(n: int, path: str, limits: checks.OracleLimits) -> Violations:
    if n < 1:
        return [FieldViolation(path, "must hold at least 1 candidate", rules.TOO_FEW)]
    if n > limits.max_candidates:
        return [
            FieldViolation(
                path, f"must hold at most {limits.max_candidates} candidates", rules.TOO_MANY
            )
        ]
    return []


def _records(
    message: Message, field: int, path: str, found: Violations, n: int
) -> CandidateRecords:
    """The candidates of `message` (its repeated Candidate field number `field`, `n` of
    them), read from its bytes; their unknown fields, wrong ids and missing genomes are
    added to `found`. Every candidate's genome is checked against the DNA when decoded."""
    records = CandidateRecords.find(message.SerializeToString(), field)
    if n >= 1:
        found += records.unknown_fields(path) + records.candidate_violations(path)
    return records


def _timeout(message: oracle_pb2.VerifyRequest | oracle_pb2.VerifyStreamOpen) -> float | None:
    if not message.HasField("timeout"):
        return None
    return message.timeout.seconds + message.timeout.nanos / 1e9


class _BatchIds:
    """The batch ids seen on a stream, as sorted disjoint ranges [low, high]: increasing
    counters stay one range; ids that scatter are bounded by MAX_BATCH_ID_RANGES."""

    def __init__(self) -> None:
        self.lows: list[int] = []
        self.highs: list[int] = []

    def add(self, batch_id: int) -> bool:
        """Record `batch_id`; False if it was seen before."""
        i = bisect.bisect_right(self.lows, batch_id) - 1
        if i >= 0 and batch_id <= self.highs[i]:
            return False
        joins_left = i >= 0 and self.highs[i] == batch_id - 1
        joins_right = i + 1 < len(self.lows) and self.lows[i + 1] == batch_id + 1
        if joins_left and joins_right:
            self.highs[i] = self.highs[i + 1]
            del self.lows[i + 1], self.highs[i + 1]
        elif joins_left:
            self.highs[i] = batch_id
        elif joins_right:
            self.lows[i + 1] = batch_id
        else:
            if len(self.lows) >= MAX_BATCH_ID_RANGES:
                raise errors.ResourceExhausted(
                    f"batch ids on this stream form over {MAX_BATCH_ID_RANGES} separate "
                    "ranges; use increasing counters (or open a new stream)",
                    reason=reasons.RESOURCE_EXHAUSTED,
                )
            self.lows.insert(i + 1, batch_id)
            self.highs.insert(i + 1, batch_id)
        return True


class _End:
    """The end of a stream's responses: OK (error None) or an error."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class _Stream:
    """One VerifyStream after its `open`: reads batches, verifies them, queues responses."""

    def __init__(
        self,
        servicer: OracleServicer,
        hosted: Hosted,
        target: Target,
        timeout: float,
        lease: Lease,
        who: tuple[str, str, str],
    ) -> None:
        self.servicer = servicer
        self.hosted = hosted
        self.target = target
        self.timeout = timeout
        self.lease = lease
        self.who = who
        self.allowance = lease.n
        self.held = 0  # batches received and not answered
        self.seen = _BatchIds()
        # Verdicts (with the candidates their batch held) and credit, in sending order.
        # Credit for a batch is granted only once its verdicts were handed to the
        # transport, so a client that reads nothing cannot make this queue grow: what it
        # holds never exceeds the window (the chain's write timeout ends such a stream).
        self.out: asyncio.Queue[oracle_pb2.VerifyStreamResponse | tuple[Encoded, int] | _End] = (
            asyncio.Queue()
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self.reading_done = False
        self.ended = False
        self.idle: asyncio.Timeout | None = None
        self.owed = 0  # credit held back while the report writer catches up
        self.paying: asyncio.Task[None] | None = None

    def end(self, error: BaseException | None) -> None:
        if not self.ended:
            self.ended = True
            self.out.put_nowait(_End(error))

    def _idle_deadline(self) -> float | None:
        if self.held or self.owed:
            return None
        return asyncio.get_running_loop().time() + self.servicer.idle_timeout

    async def read(self, messages: AsyncIterator[oracle_pb2.VerifyStreamRequest]) -> None:
        try:
            while True:
                async with asyncio.timeout_at(self._idle_deadline()) as self.idle:
                    message = await anext(messages, None)
                self.idle = None
                if message is None:
                    break
                self.take(message)
        except TimeoutError:
            self.end(
                errors.DeadlineExceeded(
                    f"the stream held credit and sent no batch for "
                    f"{self.servicer.idle_timeout:g}s; open a new stream to go on",
                    reason=reasons.STREAM_IDLE,
                )
            )
            return
        except errors.HelixError as error:
            self.end(error)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading a VerifyStream failed")
            self.end(errors.Internal("reading the stream failed"))
            return
        self.reading_done = True
        self.maybe_finish()

    def take(self, message: oracle_pb2.VerifyStreamRequest) -> None:
        if self.ended:
            # The stream's end is queued (a drain, an error): a batch still on its way is
            # neither verified nor answered. The client re-sends it elsewhere, so verifying
            # it here would verify (and report) its candidates twice.
            return
        kind = message.WhichOneof("kind")
        if kind != "batch":
            found = check_no_unknown_fields(message)
            text = "must be sent only once, in the first message" if kind else "must be set"
            found.append(FieldViolation("open" if kind else "batch", text, rules.ONEOF))
            raise errors.InvalidArgument.from_violations(found)
        batch = message.batch
        n = len(batch.candidates)
        found = check_own_unknown_fields(message) + check_own_unknown_fields(batch, "batch")
        if batch.batch_id == 0:
            found.append(FieldViolation("batch.batch_id", "must be set (not 0)", rules.REQUIRED))
        found += _candidate_count(n, "batch.candidates", self.servicer.limits)
        records = _records(batch, 2, "batch.candidates", found, n) if not found else None
        if found or records is None:
            raise errors.InvalidArgument.from_violations(found)
        if n > self.allowance:
            raise errors.ResourceExhausted(
                f"batch {batch.batch_id} has {n} candidates but the stream's allowance is "
                f"{self.allowance}: send only as many as the credit granted",
                reason=reasons.CREDIT_EXCEEDED,
                metadata={"allowance": str(self.allowance), "batch_id": str(batch.batch_id)},
            )
        if not self.seen.add(batch.batch_id):
            raise errors.InvalidArgument(
                f"batch_id {batch.batch_id} was already sent on this stream",
                [
                    FieldViolation(
                        "batch.batch_id", "must be unique within the stream", rules.REUSED
                    )
                ],
            )
        self.allowance -= n
        self.held += 1
        if self.idle is not None:
            self.idle.reschedule(None)
        task = asyncio.create_task(
            self.verify(batch.batch_id, n, records), name=f"verify batch {batch.batch_id}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def verify(self, batch_id: int, n: int, records: CandidateRecords) -> None:
        host = self.servicer.host
        try:
            outcome = await host.verify(
                self.hosted,
                self.target,
                records,
                self.timeout,
                _VERDICTS_TAG,
                "batch.candidates",
                self.who,
                flow_controlled=True,
            )
        except asyncio.CancelledError:
            raise
        except errors.HelixError as error:
            self.end(error)
            return
        except Exception:
            log.exception("verifying a batch failed")
            self.end(errors.Internal("verifying the batch failed"))
            return
        inner = b"\x08" + varint(batch_id) + outcome.body
        # The VerifyStreamResponse's bytes (verdicts = field 2), sent as they are; the
        # batch's credit is granted again once they are sent (`sent`).
        self.out.put_nowait((Encoded(_VERDICTS_TAG + varint(len(inner)) + inner), n))
        self.held -= 1
        self.maybe_finish()

    def sent(self, n: int) -> None:
        """A batch's verdicts of `n` candidates went to the transport: grant them again."""
        self.grant(n)
        if self.idle is not None:
            self.idle.reschedule(self._idle_deadline())

    def grant(self, n: int) -> None:
        """Grant `n` candidates of credit again — or, while the report writer is behind,
        hold them back until it has caught up, so that no report line is dropped under
        load: the verdicts still go out at once, only the next batches wait."""
        if self.servicer.host.draining or self.reading_done or self.ended:
            return
        reports = self.servicer.host.reports
        if self.owed or (reports is not None and reports.congested):
            self.owed += n
            if self.paying is None and reports is not None:
                self.paying = asyncio.create_task(self._pay(reports.room), name="owed credit")
            return
        self.allowance += n
        self.out.put_nowait(
            oracle_pb2.VerifyStreamResponse(credit=oracle_pb2.VerifyCredit(candidates=n))
        )

    async def _pay(self, room: asyncio.Event) -> None:
        await room.wait()
        owed, self.owed, self.paying = self.owed, 0, None
        self.grant(owed)
        if self.idle is not None:
            self.idle.reschedule(self._idle_deadline())

    def maybe_finish(self) -> None:
        if self.held:
            return
        if self.servicer.host.draining:
            self.end(
                errors.Unavailable(
                    "this oracle agent is shutting down; the batches it held are answered: "
                    "continue on another agent",
                    reason=reasons.ORACLE_DRAINING,
                    retry_after=1.0,
                )
            )
        elif self.reading_done:
            self.end(None)

    def abandon(self) -> list[asyncio.Task[None]]:
        """Cancel the stream's work and give its window back, at once (no await, so a
        second cancellation cannot skip it); the tasks to wait for."""
        tasks = [*self.tasks, *([self.paying] if self.paying is not None else [])]
        for task in tasks:
            task.cancel()
        self.lease.release()
        return tasks


class OracleServicer(oracle_pb2_grpc.OracleServiceServicer):
    """OracleService over an `OracleHost`."""

    def __init__(
        self,
        host: OracleHost,
        *,
        limits: checks.OracleLimits = checks.DEFAULT_LIMITS,
        stream_share: float = 0.5,
        idle_timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.limits = limits
        self.stream_share = stream_share
        self.idle_timeout = idle_timeout
        self.streams: set[_Stream] = set()

    async def ListOracles(
        self,
        request: oracle_pb2.ListOraclesRequest,
        context: ServicerContext[oracle_pb2.ListOraclesRequest, oracle_pb2.ListOraclesResponse],
    ) -> oracle_pb2.ListOraclesResponse:
        validate(lambda r: checks.check_list_oracles_request(r, self.limits), request)
        after = ""
        if request.page_token:
            position = pages.decode_page_token(request.page_token)
            if position.snapshot:
                raise pages.invalid_page_token("is not a next_page_token of this listing")
            after = position.after
        size = self.limits.page_size(request.page_size)
        names = sorted(h.spec.name for h in self.host.oracles.values())
        start = bisect.bisect_right(names, after)
        chosen = names[start : start + size]
        response = oracle_pb2.ListOraclesResponse(
            oracles=[self.host.get(name).spec.info() for name in chosen]
        )
        if start + size < len(names):
            response.next_page_token = pages.encode_page_token(pages.PagePosition(chosen[-1]))
        return response

    async def GetOracle(
        self,
        request: oracle_pb2.GetOracleRequest,
        context: ServicerContext[oracle_pb2.GetOracleRequest, oracle_pb2.GetOracleResponse],
    ) -> oracle_pb2.GetOracleResponse:
        validate(lambda r: checks.check_get_oracle_request(r, self.limits), request)
        return oracle_pb2.GetOracleResponse(oracle=self.host.get(request.name).spec.info())

    async def _target(
        self, message: oracle_pb2.VerifyRequest | oracle_pb2.VerifyStreamOpen, path: str
    ) -> tuple[Hosted, Target]:
        hosted = self.host.get(message.oracle)
        target = target_for(message.dna)
        hosted.check_dna(target, path)
        return hosted, target

    async def Verify(
        self,
        request: oracle_pb2.VerifyRequest,
        context: ServicerContext[oracle_pb2.VerifyRequest, oracle_pb2.VerifyResponse],
    ) -> oracle_pb2.VerifyResponse:
        n = len(request.candidates)
        found = check_own_unknown_fields(request) + check_no_unknown_fields(request.dna, "dna")
        found += checks.check_target(request, "")
        found += _candidate_count(n, "candidates", self.limits)
        records = _records(request, 3, "candidates", found, n) if not found else None
        if found or records is None:
            raise errors.InvalidArgument.from_violations(found)
        hosted, target = await self._target(request, "dna")
        lease = self.host.lease(hosted, n)
        try:
            outcome = await self.host.verify(
                hosted,
                target,
                records,
                self.host.timeout_for(hosted, _timeout(request)),
                _RESPONSE_VERDICTS_TAG,
                "candidates",
                _who(context),
            )
        finally:
            lease.release()
        return Encoded(outcome.body)  # type: ignore[return-value]  # VerifyResponse's bytes

    async def VerifyStream(
        self,
        request_iterator: AsyncIterable[oracle_pb2.VerifyStreamRequest],
        context: ServicerContext[oracle_pb2.VerifyStreamRequest, oracle_pb2.VerifyStreamResponse],
    ) -> AsyncIterator[oracle_pb2.VerifyStreamResponse]:  # (or Encoded: see add_oracle_servicer)
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None:
            raise errors.InvalidArgument.from_violations(
                [
                    FieldViolation(
                        "open", "must be sent as the stream's first message", rules.REQUIRED
                    )
                ]
            )
        validate(lambda r: checks.check_first_verify_stream_request(r, self.limits), first)
        hosted, target = await self._target(first.open, "open.dna")
        expected = first.open.config_hash
        if expected and expected != hosted.spec.config_hash:
            raise errors.FailedPrecondition(
                f"{first.open.oracle} has config_hash {hosted.spec.config_hash}, "
                f"not the {expected} the stream asks for",
                reason=reasons.CONFIG_HASH_MISMATCH,
                metadata={"config_hash": hosted.spec.config_hash},
            )
        share = max(1, math.floor(hosted.spec.capacity * self.stream_share))
        # What is free, up to the share; nothing free fails with ORACLE_BUSY at once.
        lease = self.host.lease(hosted, min(share, hosted.free) if hosted.free else share)
        stream = _Stream(
            self,
            hosted,
            target,
            self.host.timeout_for(hosted, _timeout(first.open)),
            lease,
            _who(context),
        )
        self.streams.add(stream)
        reader = asyncio.create_task(stream.read(messages), name="read VerifyStream")
        try:
            yield oracle_pb2.VerifyStreamResponse(
                credit=oracle_pb2.VerifyCredit(candidates=lease.n)
            )
            while True:
                item = await stream.out.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                if isinstance(item, tuple):
                    encoded, n = item
                    yield encoded  # type: ignore[misc]  # Encoded verdicts, sent as they are
                    stream.sent(n)
                else:
                    yield item
        finally:
            self.streams.discard(stream)
            reader.cancel()
            tasks = stream.abandon()
            await cancel_and_wait([reader, *tasks])

    def drain(self) -> None:
        """Begin the drain: no more credit; each stream ends once its batches are answered."""
        self.host.draining = True
        for stream in list(self.streams):
            stream.maybe_finish()
