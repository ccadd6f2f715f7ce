"""The oracles an oracle server hosts: configuration, capacity, and verifying a batch.

grpc-free; used from the event loop. `OracleHost` owns

- the configuration (`load` / `reload`): an invalid new version keeps the old one serving;
  an oracle whose config_hash is unchanged keeps running (its workers are not restarted);
  a changed or removed one is retired: new calls get the new version at once, and the old
  one is closed when the last call using it ends (`Lease`);
- the capacity of each oracle: `lease(oracle, n)` takes n candidates of it or fails with
  ORACLE_BUSY (RESOURCE_EXHAUSTED with RetryInfo), so the candidates held never exceed
  what was configured, however many callers there are;
- `verify`: decode a batch against its DNA (INVALID_ARGUMENT naming the field), check ids,
  split off cache hits and in-batch duplicates, evaluate the rest once, cache, report, and
  return the encoded verdicts in request order;
- the verdict cache and the report writer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import duration_pb2

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
from helix.common import errors, reasons, rules
from helix.common.errors import FieldViolation
from helix.common.validation import index
from helix.genome import codec
from helix.genome.batches import CandidateRecords
from helix.genome.layout import Layout, fingerprint, normalise
from helix.oracle import verdicts as wire
from helix.oracle.cache import VerdictCache
from helix.oracle.config import ConfigCheck, OracleSpec
from helix.oracle.hosted import RunningOracle, Scored, open_oracle
from helix.oracle.reports import ReportWriter

log = logging.getLogger("helix.oracle")

PASSED = candidate_pb2.VERDICT_STATUS_PASSED
ERROR = candidate_pb2.VERDICT_STATUS_ERROR
_SHAPE_CACHE = 256  # (oracle, DNA fingerprint) shape checks remembered per oracle


@dataclass
class HostStats:
    """Counters for metrics."""

    verified: dict[tuple[str, str], int] = field(default_factory=dict)  # (oracle, status)
    batches: int = 0
    busy: int = 0
    reloads: int = 0
    reload_failures: int = 0
    config_valid: bool = True


class Hosted:
    """One configured oracle, running, with its capacity and users."""

    def __init__(self, spec: OracleSpec, oracle: RunningOracle) -> None:
        self.configured = spec
        self.oracle = oracle
        self.free = spec.capacity
        self.users = 0
        self.retired = False
        self.closing = False
        self._shapes: dict[str, list[FieldViolation]] = {}

    @property
    def spec(self) -> OracleSpec:
        """What the oracle serves as: its configuration, or for a remote oracle that and
        what the remote reported (config_hash, objective), once it has been reached."""
        return self.oracle.spec

    @property
    def id(self) -> str:
        return self.spec.id

    def check_dna(self, target: Target, path: str) -> None:
        """INVALID_ARGUMENT (DNA_SHAPE) naming the gene when the DNA does not fit."""
        found = self._shapes.get(target.fingerprint)
        if found is None:
            found = self.oracle.check_dna(target.layout)
            if len(self._shapes) >= _SHAPE_CACHE:
                self._shapes.pop(next(iter(self._shapes)))
            self._shapes[target.fingerprint] = found
        if found:
            shown = [
                FieldViolation(f"{path}.{v.field}" if v.field else path, v.description, v.reason)
                for v in found
            ]
            raise errors.InvalidArgument(
                f"the DNA does not fit oracle {self.spec.id}: {found[0].description}",
                shown,
                reason=reasons.DNA_SHAPE,
            )


class Lease:
    """n candidates of one oracle's capacity, held until `release` (idempotent)."""

    def __init__(self, host: OracleHost, hosted: Hosted, n: int) -> None:
        self.host = host
        self.hosted = hosted
        self.n = n
        hosted.free -= n
        hosted.users += 1

    def release(self) -> None:
        if self.n < 0:
            return
        self.hosted.free += self.n
        self.hosted.users -= 1
        self.n = -1
        self.host.retire_if_idle(self.hosted)


@dataclass(frozen=True)
class Outcome:
    """A verified batch: the verdicts as repeated-field bytes, in request order."""

    body: bytes
    statuses: list[candidate_pb2.VerdictStatus.ValueType]


class OracleHost:
    """The hosted oracles of one server (see the module docstring)."""

    def __init__(
        self,
        cache: VerdictCache | None = None,
        reports: ReportWriter | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.cache = cache
        self.reports = reports
        self.stats = HostStats()
        self.oracles: dict[str, Hosted] = {}
        self.config_file = ""
        self.draining = False
        self._on_change = on_change
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: set[Hosted] = set()  # replaced, still in use by a call

    # --- configuration ------------------------------------------------------------------

    async def apply(self, check: ConfigCheck) -> bool:
        """Serve the oracles of a checked configuration; False (old kept) when invalid."""
        if not check.valid:
            self.stats.reload_failures += 1
            self.stats.config_valid = False
            shown = "; ".join(str(v) for v in check.violations[:5])
            log.error(
                "oracle configuration %s is invalid; %s: %s",
                check.filename,
                "keeping the oracles already served" if self.oracles else "no oracles served",
                shown,
            )
            return False
        started: dict[str, Hosted] = {}
        try:
            for oracle_id, spec in check.oracles.items():
                current = self.oracles.get(oracle_id)
                if current is not None and current.configured.config_hash == spec.config_hash:
                    # Unchanged where it matters to verdicts: keep it running, and take
                    # what does not (its description, its folder) from the new version.
                    _refresh(current, spec)
                    started[oracle_id] = current
                    continue
                running = open_oracle(spec)
                try:
                    await running.start()
                except BaseException:
                    await asyncio.gather(running.close(), return_exceptions=True)
                    raise
                started[oracle_id] = Hosted(spec, running)
        except BaseException:
            fresh = [h for i, h in started.items() if self.oracles.get(i) is not h]
            await asyncio.gather(*(h.oracle.close() for h in fresh), return_exceptions=True)
            raise
        old, self.oracles = self.oracles, started
        for oracle_id, hosted in old.items():
            if started.get(oracle_id) is not hosted:
                hosted.retired = True
                self._retired.add(hosted)
                self.retire_if_idle(hosted)
        self.config_file = check.filename
        self.stats.config_valid = True
        self.stats.reloads += 1
        if self._on_change is not None:
            self._on_change()
        return True

    def retire_if_idle(self, hosted: Hosted) -> None:
        if hosted.retired and hosted.users == 0 and not hosted.closing:
            hosted.closing = True
            self._retired.discard(hosted)
            task = asyncio.get_running_loop().create_task(
                hosted.oracle.close(), name=f"close oracle {hosted.id}"
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every oracle, retired ones still in use included (the server stopped)."""
        every = [*self.oracles.values(), *self._retired]
        self.oracles, self._retired = {}, set()
        running = []
        for hosted in every:
            hosted.retired = True
            if not hosted.closing:
                hosted.closing = True
                running.append(hosted.oracle.close())
        await asyncio.gather(*running, *self._closing, return_exceptions=True)

    @property
    def healthy(self) -> bool:
        return all(h.oracle.healthy for h in self.oracles.values())

    # --- calls --------------------------------------------------------------------------

    def get(self, name: str) -> Hosted:
        """The oracle named "oracles/{id}"; NOT_FOUND otherwise."""
        hosted = self.oracles.get(name.removeprefix("oracles/"))
        if hosted is None:
            raise errors.NotFound(
                f"no oracle {name} on this agent (ListOracles shows the hosted ones)",
                metadata={"oracle": name},
            )
        return hosted

    def lease(self, hosted: Hosted, n: int) -> Lease:
        """n candidates of `hosted`'s capacity, or ORACLE_BUSY."""
        if self.draining:
            raise errors.Unavailable(
                "this oracle agent is shutting down; use another one",
                reason=reasons.ORACLE_DRAINING,
                retry_after=1.0,
            )
        capacity = hosted.spec.capacity
        if n > capacity:
            raise errors.ResourceExhausted(
                f"{n} candidates are more than oracle {hosted.id} holds at once "
                f"({capacity}): send batches of at most {capacity}",
                reason=reasons.BATCH_OVER_CAPACITY,
                metadata={"capacity": str(capacity)},
            )
        if n > hosted.free or n < 1:
            self.stats.busy += 1
            raise errors.ResourceExhausted(
                f"oracle {hosted.id} holds {hosted.spec.capacity - hosted.free} of its "
                f"capacity of {hosted.spec.capacity} candidates; {n} more do not fit now",
                retry_after=0.5,
                reason=reasons.ORACLE_BUSY,
                metadata={"capacity": str(hosted.spec.capacity), "free": str(hosted.free)},
            )
        return Lease(self, hosted, n)

    def timeout_for(self, hosted: Hosted, requested: float | None) -> float:
        """The per-candidate timeout: the request's, lowered to the oracle's maximum."""
        if requested is None:
            return hosted.spec.timeout
        return min(requested, hosted.spec.max_timeout)

    async def verify(  # noqa: PLR0913 -- the batch and who asked
        self,
        hosted: Hosted,
        target: Target,
        records: CandidateRecords,
        candidate_timeout: float,
        field_tag: bytes,
        path: str,
        who: tuple[str, str, str] = ("", "", ""),
        *,
        flow_controlled: bool = False,
    ) -> Outcome:
        """Verify a batch, found in its message's bytes (`records`, whose first checks the
        caller made): verdicts in request order, as repeated-field bytes tagged
        `field_tag`. INVALID_ARGUMENT for genomes that do not fit, wrong ids. A
        `flow_controlled` caller (a VerifyStream, which holds back credit while the reports
        are congested) never has its report lines dropped for a full queue."""
        self.stats.batches += 1
        layout = target.layout
        population = records.decode(layout, path)
        id_text = codec.candidate_id_text(codec.encode_genomes(layout, population))
        ids = codec.split_ids(id_text)
        if records.id_text != id_text:  # some id is not the genome's, or empty
            given = records.ids()
            if given != ids:
                _check_ids(given, ids, path)
        spec = hosted.spec
        n = len(ids)
        caching = spec.cache and self.cache is not None
        hits: dict[str, candidate_pb2.Verdict] = {}
        if not caching and len(set(ids)) == n:
            todo = ids  # nothing to look up, no id twice: every row, in order
        else:
            first: dict[str, int] = {}
            for i, candidate_id in enumerate(ids):
                first.setdefault(candidate_id, i)
            hits = self._hits(spec, target, first)
            todo = [cid for cid in first if cid not in hits] if hits else list(first)
        started = time.perf_counter()
        if len(todo) == n:
            scored = await hosted.oracle.evaluate(layout, population, ids, candidate_timeout)
        elif todo:
            rows = [first[cid] for cid in todo]
            scored = await hosted.oracle.evaluate(
                layout, population.take(rows), todo, candidate_timeout
            )
        else:
            scored = Scored(np.zeros(0))
        elapsed = time.perf_counter() - started
        scores: Sequence[float]
        if len(todo) == n and scored.verdicts is None and not caching:
            assert scored.scores is not None
            outcome = _fast(field_tag, ids, scored)
            scores = scored.scores.tolist()
        else:
            by_id = self._merge(hosted, target, todo, scored, hits)
            chosen = [by_id[cid] for cid in ids]
            outcome = Outcome(wire.encode_messages(field_tag, chosen), [v.status for v in chosen])
            scores = [v.score for v in chosen]
        statuses = outcome.statuses
        if self.reports is not None:
            principal, request_id, run = who
            self.reports.record_batch(
                oracle=spec.id,
                principal=principal,
                request_id=request_id,
                run=run,
                ids=ids,
                statuses=statuses,
                scores=scores,
                duration_seconds=elapsed / len(todo) if todo else 0.0,
                cached=[cid in hits for cid in ids] if hits else None,
                keep=flow_controlled,
            )
        counts = self.stats.verified
        for status in set(statuses):
            key = (spec.id, candidate_pb2.VerdictStatus.Name(status))
            counts[key] = counts.get(key, 0) + statuses.count(status)
        return outcome

    def _hits(
        self, spec: OracleSpec, target: Target, ids: Iterable[str]
    ) -> dict[str, candidate_pb2.Verdict]:
        """The cached verdicts of `ids` (none when the oracle is not cached)."""
        hits: dict[str, candidate_pb2.Verdict] = {}
        if spec.cache and self.cache is not None:
            for candidate_id in ids:
                key = (spec.id, spec.config_hash, target.fingerprint, candidate_id)
                verdict = self.cache.get(key)
                if verdict is not None:
                    hits[candidate_id] = verdict
        return hits

    def _merge(
        self,
        hosted: Hosted,
        target: Target,
        todo: list[str],
        scored: Scored,
        hits: dict[str, candidate_pb2.Verdict],
    ) -> dict[str, candidate_pb2.Verdict]:
        """Every distinct id's verdict: evaluated now (and cached) or from the cache."""
        by_id = dict(hits)
        evaluated = scored.verdicts
        if evaluated is None:
            assert scored.scores is not None
            duration = _duration(scored.duration)
            evaluated = []
            for row, (candidate_id, score) in enumerate(
                zip(todo, scored.scores.tolist(), strict=True)
            ):
                message = scored.errors.get(row)
                verdict = candidate_pb2.Verdict(
                    candidate_id=candidate_id,
                    status=ERROR if message else PASSED,
                    score=0.0 if message else score,
                    message=message or "",
                )
                if duration is not None:
                    verdict.duration.CopyFrom(duration)
                evaluated.append(verdict)
        spec = hosted.spec
        for candidate_id, verdict in zip(todo, evaluated, strict=True):
            by_id[candidate_id] = verdict
            if spec.cache and self.cache is not None:
                self.cache.put(
                    (spec.id, spec.config_hash, target.fingerprint, candidate_id), verdict
                )
        return by_id


def _refresh(hosted: Hosted, spec: OracleSpec) -> None:
    """Give a kept oracle the new version of its configuration (same config_hash)."""
    if hosted.configured == spec:
        return
    hosted.configured = spec
    running: Any = hosted.oracle
    if hasattr(running, "configured"):  # a remote oracle: its spec adds what the remote said
        running.configured = spec
        running.spec = dataclasses.replace(
            running.spec, description=spec.description or running.spec.description
        )
    else:
        running.spec = spec


def _duration(seconds: float) -> duration_pb2.Duration | None:
    if seconds <= 0:
        return None
    value = duration_pb2.Duration()
    value.FromNanoseconds(max(1, round(seconds * 1e9)))
    return value


def _fast(field_tag: bytes, ids: list[str], scored: Scored) -> Outcome:
    """Columnar verdicts (a builtin, nothing cached, no duplicates) encoded with NumPy."""
    assert scored.scores is not None
    duration = wire.duration_bytes(scored.duration)
    special = {
        row: candidate_pb2.Verdict(candidate_id=ids[row], status=ERROR, message=message)
        for row, message in scored.errors.items()
    }
    body = wire.encode_rows(field_tag, ids, scored.scores, special, duration, cached=False)
    statuses: list[candidate_pb2.VerdictStatus.ValueType] = [PASSED] * len(ids)
    for row in special:
        statuses[row] = ERROR
    return Outcome(body, statuses)


def _check_ids(given: list[str], ids: list[str], path: str) -> None:
    wrong = [
        FieldViolation(
            f"{index(path, i)}.id",
            f"must be the genome's content hash {real} (or empty), got {value}",
            rules.WRONG_ID,
        )
        for i, (value, real) in enumerate(zip(given, ids, strict=True))
        if value and value != real
    ]
    if wrong:
        raise errors.InvalidArgument(
            "a candidate's id is not its genome's content hash",
            wrong[:100],
            reason=reasons.WRONG_ID,
        )


@dataclass(frozen=True, slots=True)
class Target:
    """A request's DNA, ready to decode genomes with: its layout and genes fingerprint."""

    layout: Layout
    fingerprint: str


_TARGET_CACHE_DNA_BYTES = 64 << 10


def target_for(dna: dna_pb2.Dna) -> Target:
    """The Target of a valid DNA (the last few small DNAs' are remembered)."""
    encoded = dna.SerializeToString(deterministic=True)
    if len(encoded) <= _TARGET_CACHE_DNA_BYTES:
        return _target(encoded)
    return _make_target(dna)


@functools.lru_cache(maxsize=32)
def _target(encoded: bytes) -> Target:
    return _make_target(dna_pb2.Dna.FromString(encoded))


def _make_target(dna: dna_pb2.Dna) -> Target:
    normalised = normalise(dna)
    return Target(Layout(normalised), fingerprint(normalised))
