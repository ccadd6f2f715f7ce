"""Verdict-cache lookups/s and CPU per lookup, hit vs miss, against a plain dict lookup.

All in one process and one run: rounds alternate between a dict lookup of the same keys
(the floor any Python cache pays), `VerdictCache.get` hits, `VerdictCache.get` misses and
`lookup_batch` over batches of 1,000 (all hits; all distinct misses). Each figure is the
median over the rounds of process CPU time per lookup; the report gives lookups/s and the
ratio against the dict lookup measured in the same run.

    python benchmarks/bench_oracle_cache.py [--entries 100000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

from google.protobuf import duration_pb2

from helix.oracle.cache import VerdictCache
from helix.v1 import candidate_pb2

ORACLE, CONFIG, FINGERPRINT = "sphere", "c" * 64, "f" * 64


def _setup(entries: int) -> tuple[VerdictCache, dict[tuple[str, str, str, str], bytes], list[str]]:
    cache = VerdictCache(max_bytes=1 << 40, max_entries=entries)
    plain: dict[tuple[str, str, str, str], bytes] = {}
    ids = [f"{i:032x}" for i in range(entries)]
    for i, cid in enumerate(ids):
        verdict = candidate_pb2.Verdict(
            candidate_id=cid,
            status=candidate_pb2.VERDICT_STATUS_PASSED,
            score=float(i),
            duration=duration_pb2.Duration(nanos=12_345),
        )
        key = (ORACLE, CONFIG, FINGERPRINT, cid)
        cache.put(key, verdict)
        plain[key] = verdict.SerializeToString()
    return cache, plain, ids


def _cpu_per_op(work: Callable[[], int]) -> float:
    started = time.process_time()
    count = work()
    return (time.process_time() - started) / count


Key = tuple[str, str, str, str]


def dict_get(plain: dict[Key, bytes], keys: list[Key]) -> int:
    get = plain.get
    for key in keys:
        get(key)
    return len(keys)


def cache_get(cache: VerdictCache, keys: list[Key], hit: bool) -> int:
    get = cache.get
    for key in keys:
        if (get(key) is not None) != hit:
            raise AssertionError(f"expected {'a hit' if hit else 'a miss'}")
    return len(keys)


def batch_lookup(cache: VerdictCache, fingerprint: str, batches: list[list[str]], hit: bool) -> int:
    total = 0
    for batch in batches:
        lookup = cache.lookup_batch(ORACLE, CONFIG, fingerprint, batch)
        if len(lookup.to_evaluate) != (0 if hit else len(batch)):
            raise AssertionError(f"expected all {'hits' if hit else 'misses'}")
        total += len(batch)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    cache, plain, ids = _setup(args.entries)
    keys = [(ORACLE, CONFIG, FINGERPRINT, cid) for cid in ids]
    missing = [(ORACLE, CONFIG, FINGERPRINT + "x", cid) for cid in ids]
    batches = [ids[i : i + 1000] for i in range(0, len(ids), 1000)]
    modes: dict[str, Callable[[], int]] = {
        "dict get (baseline)": partial(dict_get, plain, keys),
        "cache get, hit": partial(cache_get, cache, keys, True),
        "cache get, miss": partial(cache_get, cache, missing, False),
        "lookup_batch 1000, all hits": partial(batch_lookup, cache, FINGERPRINT, batches, True),
        "lookup_batch 1000, all misses": partial(
            batch_lookup, cache, FINGERPRINT + "x", batches, False
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, work in modes.items():
            samples[name].append(_cpu_per_op(work))
    baseline = statistics.median(samples["dict get (baseline)"])
    print(f"verdict cache, {args.entries:,} entries, median of {args.rounds} rounds (CPU time)")
    for name, values in samples.items():
        per_op = statistics.median(values)
        print(
            f"  {name:32s} {1 / per_op:>14,.0f} lookups/s  {per_op * 1e9:8.0f} ns CPU/lookup"
            f"  {per_op / baseline:6.1f}x dict"
        )


if __name__ == "__main__":
    main()
