"""Token verification cost per algorithm: uncached (signature checked) against cached.

Each algorithm verifies N distinct tokens with a cache too small to help (every call pays
the signature), then one token N times through the cache, in this one process. Reports
the median µs per verification over several rounds and the cached/uncached ratio.

    python benchmarks/bench_tokens.py [--tokens 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jwt

from helix.security.tokens import TokenVerifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from auth_support import claims, make_keyring


def per_call_us(verifier: TokenVerifier, tokens: list[str]) -> float:
    started = time.perf_counter()
    for token in tokens:
        verifier.verify(token)
    return (time.perf_counter() - started) / len(tokens) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    keyring = make_keyring(Path(tempfile.mkdtemp(prefix="helix-bench-tokens-")))
    keys = keyring.security().verifier.keys
    signers = {
        "HS256": (keyring.hs256.key, keyring.hs256.kid),
        "EdDSA": (keyring.ed25519_private, "ed"),
        "RS256": (keyring.rsa_private, "rsa"),
    }
    report = {}
    print(f"token verification, median of {args.rounds} rounds x {args.tokens} tokens")
    for algorithm, (key, kid) in signers.items():
        tokens = [
            jwt.encode(claims(sub=f"user-{i}"), key, algorithm=algorithm, headers={"kid": kid})
            for i in range(args.tokens)
        ]
        uncached, cached = [], []
        for _ in range(args.rounds):
            uncached.append(per_call_us(TokenVerifier(keys, cache_size=1), tokens))
            warm = TokenVerifier(keys)
            warm.verify(tokens[0])
            cached.append(per_call_us(warm, [tokens[0]] * args.tokens))
        u, c = statistics.median(uncached), statistics.median(cached)
        report[algorithm] = {"uncached_us": u, "cached_us": c, "cached_vs_uncached": c / u}
        print(f"  {algorithm:6s} uncached {u:7.1f} us  cached {c:5.2f} us  ({c / u:.3f}x)")
    print(json.dumps({"bench": "tokens", "results": report}))


if __name__ == "__main__":
    main()
