"""The builtin oracles: NumPy objective functions scored over a whole batch at once.

Pure and synchronous (no grpc). The one way in is `BUILTINS`, name → `Builtin`:

    builtin = BUILTINS["tsp"]
    violations = builtin.check_params(params, base_dir)   # config validation
    bound = builtin.bind(params, base_dir)                 # loads instance files (blocking)
    violations = bound.check_dna(layout)                   # does a DNA's shape fit?
    scores = bound.score(population)                       # float64, one per row

`params` is the oracle's configuration mapping (from YAML); unknown keys are violations.
Instance paths are relative to `base_dir` and must resolve inside it (no absolute path,
no `..` out, no symlink out). `bind` raises `helix.common.errors.InvalidArgument` with
the violations `check_params` would give, so callers may skip the separate check.

Scores: `score` returns finite float64 values, or NaN for a row whose score overflowed to a
non-finite value (possible only for real-valued functions with huge bounds, e.g. rosenbrock
at |x| ~ 1e80). Callers turn NaN rows into an ERROR verdict; no infinity is ever returned.
The population must fit the DNA the bound oracle accepted with `check_dna` (and have been
decoded by `genome_checks.decode_genomes`, so reals are finite and permutations valid).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import helix.v1.common_pb2 as common_pb2
from helix.common import rules
from helix.common.errors import FieldViolation, InvalidArgument
from helix.genome.layout import FloatArray, Kind, Layout, Population
from helix.oracle import instances
from helix.oracle.instances import InstanceError, KnapsackInstance, TspInstance

Params = Mapping[str, Any]
Scorer = Callable[[Population], FloatArray]
MAX_TRAP_BLOCK = 64


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
    """One builtin oracle: its name, objective, description and known optimum."""

    name: str
    objective: common_pb2.Objective.ValueType
    description: str
    optimum: str
    _check: Callable[[Params, Path], list[FieldViolation]]
    _bind: Callable[[Params, Path], Bound]

    def check_params(self, params: Params, base_dir: Path) -> list[FieldViolation]:
        """The violations of `params` (field `params.KEY`); loads instance files to check."""
        return self._check(params, base_dir)

    def bind(self, params: Params, base_dir: Path) -> Bound:
        """The oracle bound to `params`; `InvalidArgument` if they break a rule. Blocking."""
        violations = self._check(params, base_dir)
        if violations:
            raise InvalidArgument(f"builtin {self.name}: invalid params", violations)
        return self._bind(params, base_dir)


# --- the functions ----------------------------------------------------------------------


def _finite(scores: FloatArray) -> FloatArray:
    """The scores with every non-finite value as NaN (see the module docstring)."""
    out = np.asarray(scores, dtype=np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        out = out.copy()
        out[bad] = np.nan
    return out


def sphere(x: FloatArray) -> FloatArray:
    """Σ x²; minimum 0 at x = 0."""
    return np.einsum("ij,ij->i", x, x)


def rastrigin(x: FloatArray) -> FloatArray:
    """10 n + Σ (x² − 10 cos 2πx); minimum 0 at x = 0."""
    return 10.0 * x.shape[1] + (x * x - 10.0 * np.cos(2.0 * np.pi * x)).sum(axis=1)


def rosenbrock(x: FloatArray) -> FloatArray:
    """Σ 100 (x[i+1] − x[i]²)² + (1 − x[i])²; minimum 0 at x = 1 (n ≥ 2; n = 1 gives
    (1 − x)²)."""
    if x.shape[1] == 1:
        return (1.0 - x[:, 0]) ** 2
    head, tail = x[:, :-1], x[:, 1:]
    return (100.0 * (tail - head * head) ** 2 + (1.0 - head) ** 2).sum(axis=1)


def ackley(x: FloatArray) -> FloatArray:
    """−20 exp(−0.2 √(mean x²)) − exp(mean cos 2πx) + 20 + e; minimum 0 at x = 0."""
    n = x.shape[1]
    mean_sq = np.einsum("ij,ij->i", x, x) / n
    mean_cos = np.cos(2.0 * np.pi * x).sum(axis=1) / n
    return -20.0 * np.exp(-0.2 * np.sqrt(mean_sq)) - np.exp(mean_cos) + 20.0 + np.e


SCHWEFEL_X = 420.968746
SCHWEFEL_C = 418.9828872724338


def schwefel(x: FloatArray) -> FloatArray:
    """418.98289 n − Σ x sin √|x|; minimum ≈ 0 (|f| < 1e-4 per dimension) at
    x = 420.968746 in every dimension (domain [−500, 500])."""
    return SCHWEFEL_C * x.shape[1] - (x * np.sin(np.sqrt(np.abs(x)))).sum(axis=1)


def onemax(bits: Any) -> FloatArray:
    """The number of ones; maximum n at all ones."""
    return np.count_nonzero(bits, axis=1).astype(np.float64)


def leading_ones(bits: Any) -> FloatArray:
    """The number of ones before the first zero; maximum n at all ones."""
    n = bits.shape[1]
    first_zero = np.where(bits.all(axis=1), n, np.argmin(bits, axis=1))
    return first_zero.astype(np.float64)


def trap(bits: Any, k: int) -> FloatArray:
    """Deceptive trap over consecutive blocks of k bits (n a multiple of k): a block with
    u ones scores k if u = k, else k − 1 − u. Maximum n (all ones); the deceptive local
    optimum, all zeros, scores n (k − 1) / k."""
    u = bits.reshape(bits.shape[0], -1, k).sum(axis=2)
    return np.where(u == k, k, k - 1 - u).sum(axis=1).astype(np.float64)


def knapsack(bits: Any, instance: KnapsackInstance) -> FloatArray:
    """Total value of the chosen items if their weight fits the capacity; otherwise the
    negative excess weight (capacity − weight < 0). Maximise.

    Over capacity: every infeasible selection scores below every feasible one (values are
    ≥ 0, so feasible scores are ≥ 0 > infeasible ones), and among infeasible ones less
    excess is better, which leads a search back to the feasible region instead of leaving
    it a flat plateau (a death penalty) or letting a weak penalty factor make an
    overweight selection win. The optimum is the instance's (given in its file).
    """
    chosen = bits.astype(np.float64)
    weight = chosen @ instance.weights
    value = chosen @ instance.values
    return np.where(weight <= instance.capacity, value, instance.capacity - weight)


def tour_lengths(instance: TspInstance, tours: Any) -> FloatArray:
    """The closed-tour length of each row of `tours` (0-based city indices). Minimise."""
    return instance.distances[tours, np.roll(tours, -1, axis=1)].sum(axis=1).astype(np.float64)


# --- DNA shapes ---------------------------------------------------------------------------


def _only(
    layout: Layout, kind: Kind, *, size: int | None = None, multiple: int | None = None
) -> list[FieldViolation]:
    """Violations unless every gene is of `kind` (at least one), with `size` total values
    (or a multiple of `multiple`)."""
    out = [
        FieldViolation(
            f"genes[{g.index}]",
            f"gene {g.name!r} is {g.kind}; this oracle takes {kind} genes only",
            rules.DNA_SHAPE,
        )
        for g in layout.genes
        if g.kind != kind
    ]
    total = sum(g.size for g in layout.genes if g.kind == kind)
    if not out and total == 0:
        out.append(FieldViolation("genes", f"this oracle needs {kind} genes", rules.DNA_SHAPE))
    elif not out and size is not None and total != size:
        out.append(
            FieldViolation(
                "genes",
                f"{kind} values: {total}, this oracle needs exactly {size}",
                rules.DNA_SHAPE,
            )
        )
    elif not out and multiple is not None and total % multiple:
        out.append(
            FieldViolation(
                "genes",
                f"{total} bits is not a multiple of the trap block size {multiple}",
                rules.DNA_SHAPE,
            )
        )
    return out


def _one_permutation(layout: Layout, size: int) -> list[FieldViolation]:
    if len(layout.genes) != 1 or layout.genes[0].kind != "permutation":
        return [
            FieldViolation(
                "genes",
                f"this oracle needs exactly one permutation gene of {size}",
                rules.DNA_SHAPE,
            )
        ]
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
    return [
        FieldViolation(
            f"params.{key}", f"unknown parameter (known: {sorted(allowed)})", rules.UNKNOWN_FIELD
        )
        for key in params
        if key not in allowed
    ]


def _no_params(params: Params, base_dir: Path) -> list[FieldViolation]:
    return _unknown(params, set())


def _real(name: str, fn: Callable[[FloatArray], FloatArray], optimum: str, text: str) -> Builtin:
    def bind(params: Params, base_dir: Path) -> Bound:
        return Bound(
            name,
            common_pb2.OBJECTIVE_MINIMIZE,
            0.0,
            lambda layout: _only(layout, "real"),
            lambda population: _finite(fn(population.reals)),
        )

    return Builtin(name, common_pb2.OBJECTIVE_MINIMIZE, text, optimum, _no_params, bind)


def _bits(name: str, fn: Callable[[Any], FloatArray], text: str) -> Builtin:
    def bind(params: Params, base_dir: Path) -> Bound:
        return Bound(
            name,
            common_pb2.OBJECTIVE_MAXIMIZE,
            None,
            lambda layout: _only(layout, "bits"),
            lambda population: fn(population.bits),
        )

    return Builtin(name, common_pb2.OBJECTIVE_MAXIMIZE, text, "n (all ones)", _no_params, bind)


def _trap_block(params: Params) -> int:
    value = params.get("block_size", 5)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _check_trap(params: Params, base_dir: Path) -> list[FieldViolation]:
    out = _unknown(params, {"block_size"})
    if not out and not 2 <= _trap_block(params) <= MAX_TRAP_BLOCK:
        out.append(
            FieldViolation(
                "params.block_size", f"must be an integer 2..{MAX_TRAP_BLOCK}", rules.RANGE
            )
        )
    return out


def _bind_trap(params: Params, base_dir: Path) -> Bound:
    k = _trap_block(params)
    return Bound(
        "trap",
        common_pb2.OBJECTIVE_MAXIMIZE,
        None,
        lambda layout: _only(layout, "bits", multiple=k),
        lambda population: trap(population.bits, k),
    )


def _load_instance(
    params: Params, base_dir: Path, read: Callable[[Path, str], Any]
) -> tuple[Any, FieldViolation | None]:
    path = params.get("instance")
    if not isinstance(path, str):
        return None, FieldViolation("params.instance", "must be a relative file path", rules.TYPE)
    try:
        return read(instances.resolve_inside(base_dir, path), path), None
    except instances.OutsideBase as exc:
        return None, FieldViolation("params.instance", str(exc), rules.OUTSIDE_BASE)
    except InstanceError as exc:
        return None, FieldViolation("params.instance", str(exc), rules.INVALID_INSTANCE)


def _knapsack_instance(params: Params, base_dir: Path) -> tuple[Any, list[FieldViolation]]:
    out = _unknown(params, {"instance", "weights", "values", "capacity", "optimum"})
    if out:
        return None, out
    if "instance" in params:
        if set(params) != {"instance"}:
            return None, [
                FieldViolation(
                    "params", "give either instance or weights/values/capacity", rules.ONEOF
                )
            ]
        instance, violation = _load_instance(params, base_dir, instances.read_knapsack)
        return instance, [violation] if violation else []
    try:
        return instances.knapsack_from(dict(params), "params"), []
    except InstanceError as exc:
        return None, [FieldViolation("params", str(exc), rules.INVALID_INSTANCE)]


def _bind_knapsack(params: Params, base_dir: Path) -> Bound:
    instance, _ = _knapsack_instance(params, base_dir)
    return Bound(
        "knapsack",
        common_pb2.OBJECTIVE_MAXIMIZE,
        instance.optimum,
        lambda layout: _only(layout, "bits", size=instance.size),
        lambda population: knapsack(population.bits, instance),
    )


TSP_OPTIMA = {"berlin52": 7542.0}  # TSPLIB's published optimal tour lengths


def _check_tsp(params: Params, base_dir: Path) -> list[FieldViolation]:
    out = _unknown(params, {"instance"})
    if not out:
        _, violation = _load_instance(params, base_dir, instances.read_tsplib)
        out += [violation] if violation else []
    return out


def _bind_tsp(params: Params, base_dir: Path) -> Bound:
    instance, _ = _load_instance(params, base_dir, instances.read_tsplib)
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
        _real("rastrigin", rastrigin, "0 at x = 0", "10 n + Σ (x² − 10 cos 2πx)"),
        _real("rosenbrock", rosenbrock, "0 at x = 1", "Σ 100 (x[i+1] − x[i]²)² + (1 − x[i])²"),
        _real("ackley", ackley, "0 at x = 0", "Ackley's function (a = 20, b = 0.2, c = 2π)"),
        _real(
            "schwefel", schwefel, "≈ 0 at x = 420.9687", "418.9829 n − Σ x sin √|x| on [−500, 500]"
        ),
        _bits("onemax", onemax, "the number of ones"),
        _bits("leading-ones", leading_ones, "the number of ones before the first zero"),
        Builtin(
            "trap",
            common_pb2.OBJECTIVE_MAXIMIZE,
            "deceptive trap over blocks of block_size bits (default 5)",
            "n (all ones); deceptive local optimum n (k − 1) / k at all zeros",
            _check_trap,
            _bind_trap,
        ),
        Builtin(
            "knapsack",
            common_pb2.OBJECTIVE_MAXIMIZE,
            "0/1 knapsack: value if within capacity, else minus the excess weight",
            "the instance's optimum (its file's `optimum`)",
            lambda p, d: _knapsack_instance(p, d)[1],
            _bind_knapsack,
        ),
        Builtin(
            "tsp",
            common_pb2.OBJECTIVE_MINIMIZE,
            "closed tour length over a TSPLIB EUC_2D instance (params.instance)",
            "TSPLIB's published optimum (berlin52: 7,542)",
            _check_tsp,
            _bind_tsp,
        ),
    )
}
