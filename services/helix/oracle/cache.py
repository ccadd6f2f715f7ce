"""The verdict cache: a bounded LRU of verdicts, keyed by what makes a verdict deterministic.

A verdict is a pure function of (oracle name, config_hash, DNA genes fingerprint,
candidate id) (candidate.proto: "Verdicts are deterministic"), so the cache keys on exactly
that tuple. Verdicts are stored as serialised bytes (compact, and a hit returns a fresh
message the caller may mutate). The LRU is bounded both by bytes and by entries.

Only PASSED and FAILED verdicts are cached: ERROR and TIMEOUT describe the evaluation
(a crashed or hung worker, a full machine), not the candidate, so a later evaluation may
well succeed; caching them would make a transient fault permanent for that candidate.

Thread-safety: none. The cache is used from the event loop thread only (the oracle
service calls it per batch, between awaits), so no lock is taken.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from helix.v1 import candidate_pb2

CacheKey = tuple[str, str, str, str]
"""(oracle name, config_hash, DNA genes fingerprint, candidate id)."""

_CACHEABLE = frozenset({candidate_pb2.VERDICT_STATUS_PASSED, candidate_pb2.VERDICT_STATUS_FAILED})
# Rough per-entry overhead of the key tuple, its strings and the OrderedDict node.
_ENTRY_OVERHEAD = 200


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    bytes: int
    entries: int

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(slots=True)
class BatchLookup:
    """A batch split into cached verdicts and the distinct candidate ids to evaluate.

    `verdicts[i]` is the cached verdict for position i, or None when it must be evaluated.
    `to_evaluate` lists each missing candidate id once (first-seen order); `positions` maps
    each of them to every position of the batch that carries it.
    """

    verdicts: list[candidate_pb2.Verdict | None]
    to_evaluate: list[str]
    positions: dict[str, list[int]] = field(default_factory=dict)

    def fill(self, evaluated: Sequence[candidate_pb2.Verdict]) -> list[candidate_pb2.Verdict]:
        """Fan the verdicts of `to_evaluate` (same order) out to every position."""
        if len(evaluated) != len(self.to_evaluate):
            raise ValueError(f"expected {len(self.to_evaluate)} verdicts, got {len(evaluated)}")
        out = list(self.verdicts)
        for candidate_id, verdict in zip(self.to_evaluate, evaluated, strict=True):
            for position in self.positions[candidate_id]:
                out[position] = verdict
        return [v for v in out if v is not None]


class VerdictCache:
    """An LRU of verdicts bounded by `max_bytes` and `max_entries` (event loop only)."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_entries: int = 1_000_000) -> None:
        if max_bytes <= 0 or max_entries <= 0:
            raise ValueError("max_bytes and max_entries must be positive")
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._data: OrderedDict[CacheKey, bytes] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @staticmethod
    def _size(key: CacheKey, blob: bytes) -> int:
        return len(blob) + sum(len(part) for part in key) + _ENTRY_OVERHEAD

    def get(self, key: CacheKey) -> candidate_pb2.Verdict | None:
        blob = self._data.get(key)
        if blob is None:
            self._misses += 1
            return None
        self._data.move_to_end(key)
        self._hits += 1
        verdict = candidate_pb2.Verdict.FromString(blob)
        verdict.cached = True
        return verdict

    def put(self, key: CacheKey, verdict: candidate_pb2.Verdict) -> bool:
        """Store a PASSED/FAILED verdict; return whether it was stored."""
        if verdict.status not in _CACHEABLE:
            return False
        stored = candidate_pb2.Verdict()
        stored.CopyFrom(verdict)
        stored.cached = False
        blob = stored.SerializeToString()
        size = self._size(key, blob)
        if size > self._max_bytes:
            return False
        old = self._data.pop(key, None)
        if old is not None:
            self._bytes -= self._size(key, old)
        self._data[key] = blob
        self._bytes += size
        while self._bytes > self._max_bytes or len(self._data) > self._max_entries:
            old_key, old_blob = self._data.popitem(last=False)
            self._bytes -= self._size(old_key, old_blob)
            self._evictions += 1
        return True

    def lookup_batch(
        self, oracle: str, config_hash: str, fingerprint: str, candidate_ids: Sequence[str]
    ) -> BatchLookup:
        """Split a batch into hits and distinct misses (each miss id listed once)."""
        verdicts: list[candidate_pb2.Verdict | None] = []
        to_evaluate: list[str] = []
        positions: dict[str, list[int]] = {}
        for index, candidate_id in enumerate(candidate_ids):
            pending = positions.get(candidate_id)
            if pending is not None:
                pending.append(index)
                verdicts.append(None)
                continue
            verdict = self.get((oracle, config_hash, fingerprint, candidate_id))
            verdicts.append(verdict)
            if verdict is None:
                positions[candidate_id] = [index]
                to_evaluate.append(candidate_id)
        return BatchLookup(verdicts, to_evaluate, positions)

    def store_batch(
        self,
        oracle: str,
        config_hash: str,
        fingerprint: str,
        verdicts: Sequence[candidate_pb2.Verdict],
    ) -> None:
        for verdict in verdicts:
            self.put((oracle, config_hash, fingerprint, verdict.candidate_id), verdict)

    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._evictions, self._bytes, len(self._data))

    def __len__(self) -> int:
        return len(self._data)
