"""Builtin oracle scoring rate (rows/s) for batches of 1,000, against plain NumPy.

All in one process and one run: rounds alternate between each builtin's `Bound.score`
(the path the oracle service calls: the DNA-shaped Population in, checked float64 scores
out, non-finite values turned to NaN) and the plain NumPy expression of the same function
over the same arrays (the floor: no population, no NaN check). Each figure is the median
over the rounds of process CPU time per batch; the report gives rows/s and the ratio of
the builtin's rate to the plain expression's in the same run.

- sphere, 10 real genes: baseline `np.einsum("ij,ij->i", x, x)`.
- tsp on examples/tsp/berlin52.tsp: baseline a gather from a distance matrix computed in
  this script, `d[t, np.roll(t, -1, axis=1)].sum(axis=1)`. Also the coordinate path the
  builtin takes above MATRIX_MAX_CITIES cities, on the same tours.

    python benchmarks/bench_oracle_builtins.py [--batch 1000] [--batches 200] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from helix.genome.layout import FloatArray, IntArray, Population
from helix.oracle import builtins, instances
from helix.oracle.builtins import BUILTINS, Bound

ROOT = Path(__file__).resolve().parent.parent
TSP_DIR = ROOT / "examples" / "tsp"


def _population(
    n: int, reals: FloatArray | None = None, tours: IntArray | None = None
) -> Population:
    """A population of n rows with the given reals or one permutation gene's tours."""
    return Population(
        reals=reals if reals is not None else np.zeros((n, 0), dtype=np.float64),
        integers=np.zeros((n, 0), dtype=np.int64),
        choices=np.zeros((n, 0), dtype=np.int64),
        bits=np.zeros((n, 0), dtype=np.bool_),
        permutations=() if tours is None else (tours,),
        sequences=(),
    )


def _cpu_per_batch(work: Callable[[], int]) -> float:
    started = time.process_time()
    count = work()
    return (time.process_time() - started) / count


def score_batches(bound: Bound, batches: list[Population]) -> int:
    score = bound.score
    for batch in batches:
        score(batch)
    return len(batches)


def plain_sphere(batches: list[FloatArray]) -> int:
    for x in batches:
        np.einsum("ij,ij->i", x, x)
    return len(batches)


def plain_tsp(distances: npt.NDArray[np.int64], batches: list[IntArray]) -> int:
    for t in batches:
        distances[t, np.roll(t, -1, axis=1)].sum(axis=1)
    return len(batches)


def from_coordinates(instance: instances.TspInstance, batches: list[IntArray]) -> int:
    for t in batches:
        builtins.tour_lengths(instance, t)
    return len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(12)

    sphere = BUILTINS["sphere"].bind({}, TSP_DIR)
    reals = [rng.uniform(-5.12, 5.12, (args.batch, 10)) for _ in range(args.batches)]
    tsp = BUILTINS["tsp"].bind({"instance": "berlin52.tsp"}, TSP_DIR)
    berlin = instances.read_tsplib(TSP_DIR / "berlin52.tsp", "berlin52.tsp")
    c = berlin.coords
    distances = np.floor(np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)) + 0.5).astype(
        np.int64
    )
    no_matrix = instances.TspInstance(berlin.name, berlin.coords, None)
    tours = [np.argsort(rng.random((args.batch, 52)), axis=1) for _ in range(args.batches)]
    for t in tours[:3]:  # the baselines compute the same numbers
        expected = tsp.score(_population(len(t), tours=t))
        assert np.array_equal(expected, distances[t, np.roll(t, -1, axis=1)].sum(axis=1))
        assert np.array_equal(expected, builtins.tour_lengths(no_matrix, t))
    for x in reals[:3]:
        assert np.allclose(
            sphere.score(_population(len(x), reals=x)), (x * x).sum(axis=1), rtol=1e-12
        )

    groups: dict[str, dict[str, Callable[[], int]]] = {
        "sphere-10D": {
            "plain NumPy einsum (baseline)": partial(plain_sphere, reals),
            "builtin sphere Bound.score": partial(
                score_batches, sphere, [_population(len(x), reals=x) for x in reals]
            ),
        },
        "tsp berlin52": {
            "plain NumPy matrix gather (baseline)": partial(plain_tsp, distances, tours),
            "builtin tsp Bound.score": partial(
                score_batches, tsp, [_population(len(t), tours=t) for t in tours]
            ),
            "tour_lengths from coordinates": partial(from_coordinates, no_matrix, tours),
        },
    }
    samples: dict[str, dict[str, list[float]]] = {
        g: {name: [] for name in modes} for g, modes in groups.items()
    }
    for _ in range(args.rounds):
        for g, modes in groups.items():
            for name, work in modes.items():
                samples[g][name].append(_cpu_per_batch(work))
    print(
        f"builtin oracles, batches of {args.batch:,} rows, {args.batches} batches a round, "
        f"median of {args.rounds} rounds (CPU time)"
    )
    for g, by_mode in samples.items():
        baseline = statistics.median(next(iter(by_mode.values())))
        print(f"  {g}")
        for name, values in by_mode.items():
            per_batch = statistics.median(values)
            print(
                f"    {name:38s} {args.batch / per_batch:>14,.0f} rows/s"
                f"  {per_batch * 1e6:8.1f} µs/batch  {baseline / per_batch:5.2f}x baseline rate"
            )


if __name__ == "__main__":
    main()
