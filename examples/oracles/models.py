"""Python entry points (oracle kind `python`) for two example DNAs. Pure Python, no
dependencies; each function takes one candidate's named genome (a dict) and returns a
score, or a verdict dict. See docs/oracle-protocol.md.

- `hyperparameters(genome)`: the synthetic validation loss of examples/dna/hyperparameters.yaml
  (minimise; 0.0 at learning_rate 10^-2.5, 3 layers, 128 units, adam, dropout 0.2 and
  exactly features 0, 3, 5 and 9) — a stand-in for training a model, with the same shape
  of landscape (smooth in log lr, dropout and log units; discrete choices and a mask).
- `primer(genome)`: a PCR primer's quality for examples/dna/primer.yaml (minimise):
  distance of its melting temperature (Wallace rule, 2·(A+T) + 4·(G+C) °C) from 60 °C, of
  its GC content from 50 %, a penalty for a 3' end without G or C (the "GC clamp") and for
  runs of four or more equal bases, and one for self-complementarity (the longest stretch
  that pairs with the reverse complement of itself, over 4 bases).
"""

from __future__ import annotations

import math

OPTIMIZER_COST = {"adam": 0.0, "rmsprop": 0.1, "sgd": 0.2, "adagrad": 0.3}
RELEVANT_FEATURES = {0, 3, 5, 9}


def hyperparameters(genome: dict) -> float:
    log_lr = math.log10(genome["learning_rate"])
    features = genome["features"]
    missing = sum(1 for i in RELEVANT_FEATURES if not features[i])
    noise = sum(1 for i, on in enumerate(features) if on and i not in RELEVANT_FEATURES)
    return (
        0.5 * (log_lr + 2.5) ** 2
        + 4.0 * (genome["dropout"] - 0.2) ** 2
        + 0.05 * (genome["layers"] - 3.0) ** 2
        + 0.1 * math.log2(genome["units"] / 128.0) ** 2
        + OPTIMIZER_COST[genome["optimizer"]]
        + 0.25 * missing
        + 0.02 * noise
    )


_PAIR = str.maketrans("ACGT", "TGCA")


def _longest_self_pairing(primer: str) -> int:
    reverse_complement = primer.translate(_PAIR)[::-1]
    best = 0
    for shift in range(-len(primer) + 1, len(primer)):
        run = 0
        for i, base in enumerate(primer):
            j = i + shift
            run = run + 1 if 0 <= j < len(primer) and reverse_complement[j] == base else 0
            best = max(best, run)
    return best


def primer(genome: dict) -> dict:
    seq = genome["primer"]
    gc = sum(1 for b in seq if b in "GC")
    tm = 2 * (len(seq) - gc) + 4 * gc
    gc_share = gc / len(seq)
    runs = sum(1 for i in range(len(seq) - 3) if len(set(seq[i : i + 4])) == 1)
    pairing = _longest_self_pairing(seq)
    score = (
        abs(tm - 60.0) / 5.0
        + abs(gc_share - 0.5) * 10.0
        + (0.0 if seq[-1] in "GC" else 1.0)
        + runs
        + max(0, pairing - 4)
    )
    return {"status": "passed", "score": score, "metrics": {"tm": tm, "gc": gc_share}}
