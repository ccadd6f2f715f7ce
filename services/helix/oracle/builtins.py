"""The builtin oracles: NumPy objective functions scored over a whole batch at once.

Pure and synchronous (no grpc). The one way in is `BUILTINS`, name → `Builtin`:

    builtin = BUILTINS["tsp"]
    violations = builtin.check_params(params, base_dir)   # config validation
    bound = builtin.bind(params, base_dir)                 # loads instance files (blocking)
    violations = bound.check_dna(layout)                   # does a DNA's shape fit?
    scores = bound.score(population)                       # float64, one per row

`params` is the oracle's configuration mapping (from YAML); unknown keys are violations.
Instance paths are relative to `base_dir` and must resolve inside it (no absolute path,
no `..` out, no symlink out: rule `outside_base`, decided before the file's existence).
`bind` raises `helix.common.errors.InvalidArgument` with the violations `check_params`
would give, so callers may skip the separate check; both read the instance file once.

Scores: `score` returns finite float64 values, or NaN for a row whose score overflowed to a
non-finite value (possible for real-valued functions with huge bounds, e.g. rosenbrock
at |x| ~ 1e80, and for knapsack items of astronomical weight). Callers turn NaN rows into an
ERROR verdict; no infinity is ever returned. The population must fit the DNA the bound
oracle accepted with `check_dna` (and have been decoded by `genome_checks.decode_genomes`,
so reals are finite and permutations valid).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

import helix.v1.common_pb2 as common_pb2
from helix.common import rules
from helix.common.errors import FieldViolation, InvalidArgument
from helix.genome.layout import BoolArray, FloatArray, IntArray, Kind, Layout, Population
from helix.oracle import instances
from helix.oracle.instances import InstanceError, KnapsackInstance, TspInstance

Params = Mapping[str, Any]
Scorer = Callable[[Population], FloatArray]
MAX_TRAP_BLOCK = 64
DEFAULT_TRAP_BLOCK = 5
TOUR_CHUNK_VALUES = 1 << 20
"""Tour lengths from coordinates (no distance matrix) take rows in chunks of about this
many cities, so the temporary (rows, n, 2) arrays stay near 16 MB whatever the batch."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Bound:
    """A builtin with its parameters applied and instance loaded, ready to score."""

    name: str
    objective: common_pb2.Objective.ValueType
    optimum: float | None
    check_dna: Callable[[Layout], list[FieldViolation]]
    score: Scorer


@dataclass(frozen=True, slots=True)
class Builtin:
    """One builtin oracle: its name, objective, description and known optimum.

    `_make` applies params: the bound oracle, or the violations of the params.
    """

    name: str
    objective: common_pb2.Objective.ValueType
    description: str
    optimum: str
    _make: Callable[[Params, Path], Bound | list[FieldViolation]]

    def check_params(self, params: Params, base_dir: Path) -> list[FieldViolation]:
        """The violations of `params` (field `params.KEY`); loads instance files to check."""
        made = self._make(params, base_dir)
        return made if isinstance(made, list) else []

    def bind(self, params: Params, base_dir: Path) -> Bound:
        """The oracle bound to `params`; `InvalidArgument` if they break a rule. Blocking."""
        made = self._make(params, base_dir)
        if isinstance(made, list):
            raise InvalidArgument(f"builtin {self.name}: invalid params", made)
        return made


# --- the functions ----------------------------------------------------------------------


def _f64(values: npt.ArrayLike) -> FloatArray:
    """`values` as a float64 array (no copy when it already is one)."""
    return np.asarray(values, dtype=np.float64)


def _finite(scores: FloatArray) -> FloatArray:
    """The scores with every non-finite value as NaN (see the module docstring).

    Callers compute the scores under `np.errstate(over="ignore", invalid="ignore")`: an
    overflow is an expected outcome of huge bounds, reported as NaN, not a warning.
    """
    finite = np.isfinite(scores)
    if finite.all():
        return scores
    return np.where(finite, scores, np.nan)


def _guarded(fn: Callable[[FloatArray], FloatArray], x: FloatArray) -> FloatArray:
    """`fn(x)` with overflow and inf - inf silent and every non-finite score NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _finite(fn(x))


def sphere(x: FloatArray) -> FloatArray:
    """Σ x²; minimum 0 at x = 0."""
    return _f64(np.einsum("ij,ij->i", x, x))


def rastrigin(x: FloatArray) -> FloatArray:
    """10 n + Σ (x² - 10 cos 2πx); minimum 0 at x = 0."""
    return _f64(10.0 * x.shape[1] + (x * x - 10.0 * np.cos(2.0 * np.pi * x)).sum(axis=1))


def rosenbrock(x: FloatArray) -> FloatArray:
    """Σ 100 (x[i+1] - x[i]²)² + (1 - x[i])²; minimum 0 at x = 1 (n ≥ 2; n = 1 gives
    (1 - x)²)."""
    if x.shape[1] == 1:
        return _f64((1.0 - x[:, 0]) ** 2)
    head, tail = x[:, :-1], x[:, 1:]
    return _f64((100.0 * (tail - head * head) ** 2 + (1.0 - head) ** 2).sum(axis=1))


def ackley(x: FloatArray) -> FloatArray:
    """-20 exp(-0.2 √(mean x²)) - exp(mean cos 2πx) + 20 + e; minimum 0 at x = 0."""
    n = x.shape[1]
    mean_sq = np.einsum("ij,ij->i", x, x) / n
    mean_cos = np.cos(2.0 * np.pi * x).sum(axis=1) / n
    return _f64(-20.0 * np.exp(-0.2 * np.sqrt(mean_sq)) - np.exp(mean_cos) + 20.0 + np.e)


SCHWEFEL_X = 420.968746
"""Schwefel's minimiser in every dimension (to the 9 digits the literature gives)."""
SCHWEFEL_C = 418.9828872724338
"""418.9829 to full precision: -x sin √|x| at its minimiser, so f(SCHWEFEL_X) ≈ 0."""
SCHWEFEL_TOLERANCE = 1e-9
"""|f(SCHWEFEL_X, ..., SCHWEFEL_X)| is below this per dimension (SCHWEFEL_X is rounded)."""


def schwefel(x: FloatArray) -> FloatArray:
    """418.98289 n - Σ x sin √|x|; minimum ≈ 0 (within SCHWEFEL_TOLERANCE per dimension)
    at x = 420.968746 in every dimension (domain [-500, 500])."""
    return _f64(SCHWEFEL_C * x.shape[1] - (x * np.sin(np.sqrt(np.abs(x)))).sum(axis=1))


def onemax(bits: BoolArray) -> FloatArray:
    """The number of ones; maximum n at all ones."""
    return _f64(np.count_nonzero(bits, axis=1))


def leading_ones(bits: BoolArray) -> FloatArray:
    """The number of ones before the first zero; maximum n at all ones."""
    n = bits.shape[1]
    return _f64(np.where(bits.all(axis=1), n, np.argmin(bits, axis=1)))


def trap(bits: BoolArray, k: int) -> FloatArray:
    """Deceptive trap over consecutive blocks of k bits (n a multiple of k): a block with
    u ones scores k if u = k, else k - 1 - u. Maximum n (all ones); the deceptive local
    optimum, all zeros, scores n (k - 1) / k."""
    u = bits.reshape(bits.shape[0], -1, k).sum(axis=2)
    return _f64(np.where(u == k, k, k - 1 - u).sum(axis=1))


def knapsack(bits: BoolArray, instance: KnapsackInstance) -> FloatArray:
    """Total value of the chosen items if their weight fits the capacity; otherwise the
    negative excess weight (capacity - weight < 0). Maximise.

    Over capacity: every infeasible selection scores below every feasible one (values are
    ≥ 0, so feasible scores are ≥ 0 > infeasible ones), and among infeasible ones less
    excess is better, which leads a search back to the feasible region instead of leaving
    it a flat plateau (a death penalty) or letting a weak penalty factor make an
    overweight selection win. The optimum is the instance's (given in its file).
    """
    chosen = bits.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        weight = chosen @ instance.weights
        value = chosen @ instance.values
        return _finite(
            _f64(np.where(weight <= instance.capacity, value, instance.capacity - weight))
        )


def tour_lengths(instance: TspInstance, tours: IntArray) -> FloatArray:
    """The closed-tour length of each row of `tours` (0-based city indices). Minimise.

    From the distance matrix when the instance has one; otherwise from the coordinates by
    the same EUC_2D formula, in chunks of rows (the same numbers, exactly: both sum
    integers below 2^53).
    """
    following = np.roll(tours, -1, axis=1)
    if instance.distances is not None:
        return _f64(instance.distances[tours, following].sum(axis=1))
    out = np.empty(tours.shape[0], dtype=np.float64)
    step = max(1, TOUR_CHUNK_VALUES // max(1, tours.shape[1]))
    for start in range(0, tours.shape[0], step):
        rows = slice(start, start + step)
        legs = instances.euc_2d(instance.coords[tours[rows]], instance.coords[following[rows]])
        out[rows] = legs.sum(axis=1)
    return out


# --- DNA shapes ---------------------------------------------------------------------------


def _wrong_kinds(layout: Layout, kind: Kind) -> list[FieldViolation]:
    return [
        FieldViolation(
            f"genes[{g.index}].{g.kind}",
            f"gene {g.name!r} is a {g.kind} gene; this oracle takes {kind} genes only",
            rules.DNA_SHAPE,
        )
        for g in layout.genes
        if g.kind != kind
    ]


def _only(
    layout: Layout, kind: Kind, *, size: int | None = None, multiple: int | None = None
) -> list[FieldViolation]:
    """Violations unless every gene is of `kind` (at least one), with `size` values in all
    (or a multiple of `multiple`)."""
    wrong = _wrong_kinds(layout, kind)
    if wrong:
        return wrong
    total = sum(g.size for g in layout.genes)
    if total == 0:
        text = f"this oracle needs {kind} genes"
    elif size is not None and total != size:
        text = f"{total} {kind} values in all; this oracle's instance needs exactly {size}"
    elif multiple is not None and total % multiple:
        text = f"{total} bits in all is not a multiple of the trap block size {multiple}"
    else:
        return []
    return [FieldViolation("genes", text, rules.DNA_SHAPE)]


def _one_permutation(layout: Layout, size: int) -> list[FieldViolation]:
    """Violations unless the DNA is exactly one permutation gene of `size` elements."""
    wrong = _wrong_kinds(layout, "permutation")
    if wrong or len(layout.genes) != 1:
        text = f"this oracle needs exactly one permutation gene, of {size} elements"
        return [*wrong, FieldViolation("genes", text, rules.DNA_SHAPE)]
    gene = layout.genes[0]
    if gene.size != size:
        return [
            FieldViolation(
                "genes[0].permutation.size",
                f"gene {gene.name!r} has {gene.size} elements; the instance has {size} cities",
                rules.DNA_SHAPE,
            )
        ]
    return []


# --- params -------------------------------------------------------------------------------


def _unknown(params: Params, allowed: set[str]) -> list[FieldViolation]:
    if not isinstance(params, Mapping):
        return [FieldViolation("params", "must be a mapping", rules.TYPE)]
    known = f"known: {', '.join(sorted(allowed))}" if allowed else "this builtin takes none"
    return [
        FieldViolation(f"params.{key}", f"unknown parameter ({known})", rules.UNKNOWN_FIELD)
        for key in params
        if key not in allowed
    ]


def _real(name: str, fn: Callable[[FloatArray], FloatArray], optimum: str, text: str) -> Builtin:
    def make(params: Params, base_dir: Path) -> Bound | list[FieldViolation]:
        return _unknown(params, set()) or Bound(
            name,
            common_pb2.OBJECTIVE_MINIMIZE,
            0.0,
            lambda layout: _only(layout, "real"),
            lambda population: _guarded(fn, population.reals),
        )

    return Builtin(name, common_pb2.OBJECTIVE_MINIMIZE, text, optimum, make)


def _bits(name: str, fn: Callable[[BoolArray], FloatArray], text: str) -> Builtin:
    def make(params: Params, base_dir: Path) -> Bound | list[FieldViolation]:
        return _unknown(params, set()) or Bound(
            name,
            common_pb2.OBJECTIVE_MAXIMIZE,
            None,  # n, the DNA's number of bits
            lambda layout: _only(layout, "bits"),
            lambda population: fn(population.bits),
        )

    return Builtin(name, common_pb2.OBJECTIVE_MAXIMIZE, text, "n (all ones)", make)


def _make_trap(params: Params, base_dir: Path) -> Bound | list[FieldViolation]:
    unknown = _unknown(params, {"block_size"})
    if unknown:
        return unknown
    k = params.get("block_size", DEFAULT_TRAP_BLOCK)
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_TRAP_BLOCK:
        text = f"must be an integer 2..{MAX_TRAP_BLOCK}"
        return [FieldViolation("params.block_size", text, rules.RANGE)]
    return Bound(
        "trap",
        common_pb2.OBJECTIVE_MAXIMIZE,
        None,  # n, the DNA's number of bits
        lambda layout: _only(layout, "bits", multiple=k),
        lambda population: trap(population.bits, k),
    )


def _load_instance(
    params: Params, base_dir: Path, read: Callable[[Path, str], _T]
) -> _T | FieldViolation:
    """The instance file `params.instance` names, read inside `base_dir`; or the violation."""
    path = params.get("instance")
    if path is None or path == "":
        return FieldViolation("params.instance", "an instance file is required", rules.REQUIRED)
    if not isinstance(path, str):
        return FieldViolation("params.instance", "must be a relative file path", rules.TYPE)
    try:
        return read(instances.resolve_inside(base_dir, path), path)
    except instances.OutsideBase as exc:
        return FieldViolation("params.instance", str(exc), rules.OUTSIDE_BASE)
    except InstanceError as exc:
        return FieldViolation("params.instance", str(exc), rules.INVALID_INSTANCE)


def _knapsack_instance(params: Params, base_dir: Path) -> KnapsackInstance | FieldViolation:
    """The instance from a file (`params.instance`) or inline (weights, values, capacity)."""
    if "instance" in params:
        if set(params) != {"instance"}:
            text = "give either instance or weights/values/capacity, not both"
            return FieldViolation("params", text, rules.ONEOF)
        return _load_instance(params, base_dir, instances.read_knapsack)
    try:
        return instances.knapsack_from(dict(params), "params")
    except InstanceError as exc:
        return FieldViolation("params", str(exc), rules.INVALID_INSTANCE)


def _make_knapsack(params: Params, base_dir: Path) -> Bound | list[FieldViolation]:
    unknown = _unknown(params, {"instance", *instances.KNAPSACK_KEYS})
    if unknown:
        return unknown
    instance = _knapsack_instance(params, base_dir)
    if isinstance(instance, FieldViolation):
        return [instance]
    return Bound(
        "knapsack",
        common_pb2.OBJECTIVE_MAXIMIZE,
        instance.optimum,
        lambda layout: _only(layout, "bits", size=instance.size),
        lambda population: knapsack(population.bits, instance),
    )


TSP_OPTIMA = {"berlin52": 7542.0}  # TSPLIB's published optimal tour lengths


def _make_tsp(params: Params, base_dir: Path) -> Bound | list[FieldViolation]:
    unknown = _unknown(params, {"instance"})
    if unknown:
        return unknown
    instance = _load_instance(params, base_dir, instances.read_tsplib)
    if isinstance(instance, FieldViolation):
        return [instance]
    return Bound(
        "tsp",
        common_pb2.OBJECTIVE_MINIMIZE,
        TSP_OPTIMA.get(instance.name),
        lambda layout: _one_permutation(layout, instance.size),
        lambda population: tour_lengths(instance, population.permutations[0]),
    )


BUILTINS: Mapping[str, Builtin] = {
    b.name: b
    for b in (
        _real("sphere", sphere, "0 at x = 0", "Σ x² over all real genes"),
        _real("rastrigin", rastrigin, "0 at x = 0", "10 n + Σ (x² - 10 cos 2πx)"),
        _real("rosenbrock", rosenbrock, "0 at x = 1", "Σ 100 (x[i+1] - x[i]²)² + (1 - x[i])²"),
        _real("ackley", ackley, "0 at x = 0", "Ackley's function (a = 20, b = 0.2, c = 2π)"),
        _real(
            "schwefel", schwefel, "≈ 0 at x = 420.9687", "418.9829 n - Σ x sin √|x| on [-500, 500]"
        ),
        _bits("onemax", onemax, "the number of ones"),
        _bits("leading-ones", leading_ones, "the number of ones before the first zero"),
        Builtin(
            "trap",
            common_pb2.OBJECTIVE_MAXIMIZE,
            f"deceptive trap over blocks of block_size bits (default {DEFAULT_TRAP_BLOCK})",
            "n (all ones); deceptive local optimum n (k - 1) / k at all zeros",
            _make_trap,
        ),
        Builtin(
            "knapsack",
            common_pb2.OBJECTIVE_MAXIMIZE,
            "0/1 knapsack: value if within capacity, else minus the excess weight",
            "the instance's optimum (its file's `optimum`)",
            _make_knapsack,
        ),
        Builtin(
            "tsp",
            common_pb2.OBJECTIVE_MINIMIZE,
            "closed tour length over a TSPLIB EUC_2D instance (params.instance)",
            "TSPLIB's published optimum (berlin52: 7,542)",
            _make_tsp,
        ),
    )
}
