"""The verdict cache: hits without evaluation, byte-bounded LRU, batch dedupe, exact keys."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2

from helix.oracle.cache import VerdictCache
from helix.v1 import candidate_pb2


def _verdict(
    candidate_id: str,
    score: float = 1.0,
    status: candidate_pb2.VerdictStatus.ValueType = candidate_pb2.VERDICT_STATUS_PASSED,
) -> candidate_pb2.Verdict:
    return candidate_pb2.Verdict(
        candidate_id=candidate_id,
        status=status,
        score=score,
        metrics={"m": 2.0},
        duration=duration_pb2.Duration(nanos=1500),
    )


def _cid(i: int) -> str:
    return f"{i:032x}"


def _evaluate(cache: VerdictCache, ids: list[str], calls: list[str]) -> list[candidate_pb2.Verdict]:
    lookup = cache.lookup_batch("sphere", "h1", "fp1", ids)
    calls.extend(lookup.to_evaluate)
    fresh = [_verdict(i, score=float(int(i, 16))) for i in lookup.to_evaluate]
    cache.store_batch("sphere", "h1", "fp1", fresh)
    return lookup.fill(fresh)


def test_a_hit_returns_an_equal_verdict_without_evaluation() -> None:
    cache = VerdictCache()
    calls: list[str] = []
    first = _evaluate(cache, [_cid(1)], calls)
    second = _evaluate(cache, [_cid(1)], calls)
    assert calls == [_cid(1)]
    assert not first[0].cached
    assert second[0].cached
    expected = candidate_pb2.Verdict()
    expected.CopyFrom(first[0])
    expected.cached = True
    assert second[0] == expected
    assert second[0].duration.nanos == 1500
    assert cache.stats().hits == 1
    assert cache.stats().misses == 1


def test_eviction_by_bytes_keeps_the_most_recent() -> None:
    one = VerdictCache()
    one.put(("o", "h", "f", _cid(0)), _verdict(_cid(0)))
    entry = one.stats().bytes
    cache = VerdictCache(max_bytes=entry * 3)
    for i in range(10):
        cache.put(("o", "h", "f", _cid(i)), _verdict(_cid(i)))
        if i == 7:
            assert cache.get(("o", "h", "f", _cid(6))) is not None  # 6 becomes most recent
    stats = cache.stats()
    assert stats.entries == 3
    assert stats.bytes <= entry * 3
    assert stats.evictions == 7
    present = {i for i in range(10) if cache.get(("o", "h", "f", _cid(i))) is not None}
    assert present == {6, 8, 9}


def test_eviction_by_entries() -> None:
    cache = VerdictCache(max_entries=2)
    for i in range(3):
        cache.put(("o", "h", "f", _cid(i)), _verdict(_cid(i)))
    assert cache.get(("o", "h", "f", _cid(0))) is None
    assert cache.stats().entries == 2
    assert cache.stats().evictions == 1


def test_duplicates_in_one_batch_are_evaluated_once() -> None:
    cache = VerdictCache()
    calls: list[str] = []
    ids = [_cid(1), _cid(2), _cid(1), _cid(1), _cid(3), _cid(2)]
    out = _evaluate(cache, ids, calls)
    assert calls == [_cid(1), _cid(2), _cid(3)]
    assert [v.candidate_id for v in out] == ids
    assert [v.score for v in out] == [1.0, 2.0, 1.0, 1.0, 3.0, 2.0]


@pytest.mark.parametrize("part", range(4))
def test_keys_differing_in_any_part_miss(part: int) -> None:
    cache = VerdictCache()
    key = ("sphere", "h1", "fp1", _cid(1))
    cache.put(key, _verdict(_cid(1)))
    other = list(key)
    other[part] = other[part] + "x"
    assert cache.get((other[0], other[1], other[2], other[3])) is None
    assert cache.get(key) is not None


@pytest.mark.parametrize(
    "status", [candidate_pb2.VERDICT_STATUS_ERROR, candidate_pb2.VERDICT_STATUS_TIMEOUT]
)
def test_error_and_timeout_verdicts_are_not_cached(
    status: candidate_pb2.VerdictStatus.ValueType,
) -> None:
    cache = VerdictCache()
    assert not cache.put(("o", "h", "f", _cid(1)), _verdict(_cid(1), status=status))
    assert cache.get(("o", "h", "f", _cid(1))) is None
    assert len(cache) == 0


def test_a_hit_is_a_fresh_message() -> None:
    cache = VerdictCache()
    cache.put(("o", "h", "f", _cid(1)), _verdict(_cid(1)))
    hit = cache.get(("o", "h", "f", _cid(1)))
    assert hit is not None
    hit.score = 99.0
    again = cache.get(("o", "h", "f", _cid(1)))
    assert again is not None
    assert again.score == 1.0


def test_a_batch_mixing_hits_and_duplicate_misses() -> None:
    cache = VerdictCache()
    calls: list[str] = []
    _evaluate(cache, [_cid(1), _cid(2)], calls)
    calls.clear()
    ids = [_cid(2), _cid(5), _cid(1), _cid(5)]
    out = _evaluate(cache, ids, calls)
    assert calls == [_cid(5)]
    assert [v.cached for v in out] == [True, False, True, False]
    assert [v.candidate_id for v in out] == ids


def test_fill_rejects_a_wrong_number_of_verdicts() -> None:
    lookup = VerdictCache().lookup_batch("o", "h", "f", [_cid(1), _cid(2)])
    with pytest.raises(ValueError, match="expected 2 verdicts, got 1"):
        lookup.fill([_verdict(_cid(1))])
