"""The builtin oracles: known optima, scalar reference formulas, instance files, DNA shapes.

Every vectorised function is checked against a plain Python implementation of its textbook
formula (one row, one value at a time) on random points; every builtin scores its stated
optimum at its known optimal point; the instance readers refuse each malformed file with a
rule code and the path the configuration gave.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
from helix.common import rules
from helix.common.errors import FieldViolation, InvalidArgument
from helix.genome.layout import Layout, Population, normalise
from helix.oracle import builtins, instances
from helix.oracle.builtins import BUILTINS, Bound

ROOT = Path(__file__).resolve().parent.parent
TSP_DIR = ROOT / "examples" / "tsp"
DATA_DIR = ROOT / "examples" / "oracles" / "data"
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# TSPLIB's berlin52.opt.tour (1-based), length 7542.
BERLIN52_OPTIMAL_TOUR = [
    1, 49, 32, 45, 19, 41, 8, 9, 10, 43, 33, 51, 11, 52, 14, 13, 47, 26, 27, 28, 12, 25, 4,
    6, 15, 5, 24, 48, 38, 37, 40, 39, 36, 35, 34, 44, 46, 16, 29, 50, 20, 23, 30, 2, 7, 42,
    21, 17, 3, 18, 31, 22,
]  # fmt: skip


# --- building DNAs and populations --------------------------------------------------------


def real_gene(name: str, low: float, high: float, size: int) -> dna_pb2.Gene:
    return dna_pb2.Gene(name=name, real=dna_pb2.RealGene(low=low, high=high, size=size))


def bits_gene(name: str, size: int) -> dna_pb2.Gene:
    return dna_pb2.Gene(name=name, bits=dna_pb2.BitsGene(size=size))


def permutation_gene(name: str, size: int) -> dna_pb2.Gene:
    return dna_pb2.Gene(name=name, permutation=dna_pb2.PermutationGene(size=size))


def layout_of(*genes: dna_pb2.Gene) -> Layout:
    return Layout(normalise(dna_pb2.Dna(name="dnas/test", genes=genes)))


def population(
    reals: npt.ArrayLike | None = None,
    bits: npt.ArrayLike | None = None,
    tours: npt.ArrayLike | None = None,
) -> Population:
    """A population with the given columns (rows in step); the other kinds empty."""
    given_rows = [np.asarray(a) for a in (reals, bits, tours) if a is not None]
    n = len(given_rows[0])
    return Population(
        reals=np.asarray(reals if reals is not None else np.zeros((n, 0)), dtype=np.float64),
        integers=np.zeros((n, 0), dtype=np.int64),
        choices=np.zeros((n, 0), dtype=np.int64),
        bits=np.asarray(bits if bits is not None else np.zeros((n, 0)), dtype=np.bool_),
        permutations=() if tours is None else (np.asarray(tours, dtype=np.int64),),
        sequences=(),
    )


def bind(name: str, params: dict[str, object] | None = None, base: Path = TSP_DIR) -> Bound:
    return BUILTINS[name].bind(params or {}, base)


def only(violations: list[FieldViolation]) -> FieldViolation:
    assert len(violations) == 1, violations
    return violations[0]


# --- known optima -------------------------------------------------------------------------

REAL_OPTIMA = {
    "sphere": (0.0, 1e-12),
    "rastrigin": (0.0, 1e-12),
    "rosenbrock": (1.0, 1e-12),
    "ackley": (0.0, 1e-12),
    "schwefel": (builtins.SCHWEFEL_X, builtins.SCHWEFEL_TOLERANCE),  # per dimension
}


@pytest.mark.parametrize("name", sorted(REAL_OPTIMA))
@pytest.mark.parametrize("n", [1, 2, 10, 30])
def test_real_functions_score_0_at_their_optimum(name: str, n: int) -> None:
    point, tolerance = REAL_OPTIMA[name]
    bound = bind(name)
    assert bound.objective == common_pb2.OBJECTIVE_MINIMIZE
    assert bound.optimum == 0.0
    scores = bound.score(population(reals=np.full((3, n), point)))
    assert scores.dtype == np.float64
    assert scores.shape == (3,)
    assert np.all(np.abs(scores - bound.optimum) <= tolerance * n), scores


@pytest.mark.parametrize("name", ["onemax", "leading-ones"])
@pytest.mark.parametrize("n", [1, 7, 64, 200])
def test_onemax_and_leading_ones_score_n_at_all_ones(name: str, n: int) -> None:
    bound = bind(name)
    assert bound.objective == common_pb2.OBJECTIVE_MAXIMIZE
    ones, zeros = [True] * n, [False] * n
    assert bound.score(population(bits=[ones, zeros])).tolist() == [n, 0]


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_trap_scores_n_at_all_ones_and_n_k_minus_1_over_k_at_all_zeros(k: int) -> None:
    n = 4 * k
    bound = bind("trap", {"block_size": k})
    assert bound.objective == common_pb2.OBJECTIVE_MAXIMIZE
    ones, zeros = [True] * n, [False] * n
    one_bit_short = [True] * (n - 1) + [False]  # the last block deceived: k - 1 ones → 0
    assert bound.score(population(bits=[ones, zeros, one_bit_short])).tolist() == [
        n,
        n * (k - 1) / k,
        n - k,
    ]


def test_trap_default_block_size_is_5() -> None:
    assert bind("trap").score(population(bits=[[False] * 10])).tolist() == [8.0]


def _all_selections(n: int) -> np.ndarray:
    return ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1).astype(np.bool_)


def test_knapsack_example_optimum_is_the_brute_force_optimum() -> None:
    data = json.loads((DATA_DIR / "knapsack-20.json").read_text())
    weights, values = np.array(data["weights"]), np.array(data["values"])
    assert len(weights) == 20
    every = _all_selections(20)  # 2^20 selections
    feasible = every.astype(np.int64) @ weights <= data["capacity"]
    brute_force = int((every.astype(np.int64) @ values)[feasible].max())
    assert brute_force == data["optimum"] == 524

    bound = bind("knapsack", {"instance": "knapsack-20.json"}, DATA_DIR)
    assert bound.objective == common_pb2.OBJECTIVE_MAXIMIZE
    assert bound.optimum == 524
    assert bound.check_dna(layout_of(bits_gene("items", 20))) == []
    scores = bound.score(population(bits=every))
    assert scores.max() == 524
    assert np.array_equal(scores >= 0, feasible)  # every infeasible one scores below 0
    assert scores[np.argmax(scores)] == bound.optimum


def test_knapsack_over_capacity_scores_minus_the_excess_weight() -> None:
    bound = bind("knapsack", {"weights": [3, 4, 5], "values": [10, 20, 30], "capacity": 8})
    rows = [[True, False, True], [True, True, True], [False, False, False], [False, True, True]]
    assert bound.score(population(bits=rows)).tolist() == [40.0, -4.0, 0.0, -1.0]


def test_berlin52_optimal_tour_scores_exactly_7542() -> None:
    bound = bind("tsp", {"instance": "berlin52.tsp"})
    assert bound.objective == common_pb2.OBJECTIVE_MINIMIZE
    assert bound.optimum == 7542.0
    tour = np.array(BERLIN52_OPTIMAL_TOUR) - 1
    assert sorted(tour.tolist()) == list(range(52))
    rotated, reversed_ = np.roll(tour, 17), tour[::-1]
    scores = bound.score(population(tours=[tour, rotated, reversed_, np.arange(52)]))
    assert scores[:3].tolist() == [7542.0, 7542.0, 7542.0]
    assert scores[3] > 7542.0


def test_every_builtin_is_listed_with_its_objective() -> None:
    assert sorted(BUILTINS) == sorted(
        [
            "sphere",
            "rastrigin",
            "rosenbrock",
            "ackley",
            "schwefel",
            "onemax",
            "leading-ones",
            "trap",
            "knapsack",
            "tsp",
        ]
    )
    params: dict[str, dict[str, object]] = {
        "knapsack": {"weights": [1], "values": [1], "capacity": 1},
        "tsp": {"instance": "berlin52.tsp"},
    }
    for name, builtin in BUILTINS.items():
        assert builtin.description
        assert builtin.optimum
        assert bind(name, params.get(name)).objective == builtin.objective


# --- vectorised = the scalar textbook formula ---------------------------------------------


def sphere_ref(x: Sequence[float]) -> float:
    return sum(v * v for v in x)


def rastrigin_ref(x: Sequence[float]) -> float:
    return 10 * len(x) + sum(v * v - 10 * math.cos(2 * math.pi * v) for v in x)


def rosenbrock_ref(x: Sequence[float]) -> float:
    if len(x) == 1:
        return (1 - x[0]) ** 2
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


def ackley_ref(x: Sequence[float]) -> float:
    n = len(x)
    first = -20 * math.exp(-0.2 * math.sqrt(sum(v * v for v in x) / n))
    return first - math.exp(sum(math.cos(2 * math.pi * v) for v in x) / n) + 20 + math.e


def schwefel_ref(x: Sequence[float]) -> float:
    return 418.9828872724338 * len(x) - sum(v * math.sin(math.sqrt(abs(v))) for v in x)


REAL_REFERENCES: dict[str, tuple[Callable[[Sequence[float]], float], float]] = {
    "sphere": (sphere_ref, 5.12),
    "rastrigin": (rastrigin_ref, 5.12),
    "rosenbrock": (rosenbrock_ref, 2.048),
    "ackley": (ackley_ref, 32.768),
    "schwefel": (schwefel_ref, 500.0),
}


@st.composite
def real_points(draw: st.DrawFn, bound: float) -> list[list[float]]:
    n = draw(st.integers(1, 12))
    coordinate = st.floats(-bound, bound, allow_nan=False)
    row = st.lists(coordinate, min_size=n, max_size=n)
    return draw(st.lists(row, min_size=1, max_size=6))


@pytest.mark.parametrize("name", sorted(REAL_REFERENCES))
def test_real_functions_equal_their_scalar_formula(name: str) -> None:
    reference, bound_ = REAL_REFERENCES[name]
    scorer = bind(name).score

    @PROPERTY
    @given(points=real_points(bound_))
    def check(points: list[list[float]]) -> None:
        scores = scorer(population(reals=points))
        expected = [reference(row) for row in points]
        assert scores.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert np.all(scores >= -builtins.SCHWEFEL_TOLERANCE * len(points[0]))  # ≥ optimum

    check()


@st.composite
def bit_rows(draw: st.DrawFn, multiple: int = 1) -> list[list[bool]]:
    n = multiple * draw(st.integers(1, 40 // multiple))
    row = st.lists(st.booleans(), min_size=n, max_size=n)
    return draw(st.lists(row, min_size=1, max_size=6))


def onemax_ref(bits: Sequence[bool]) -> float:
    return float(sum(1 for b in bits if b))


def leading_ones_ref(bits: Sequence[bool]) -> float:
    count = 0
    for b in bits:
        if not b:
            break
        count += 1
    return float(count)


def trap_ref(bits: Sequence[bool], k: int) -> float:
    total = 0
    for start in range(0, len(bits), k):
        u = sum(bits[start : start + k])
        total += k if u == k else k - 1 - u
    return float(total)


@pytest.mark.parametrize(
    ("name", "reference"), [("onemax", onemax_ref), ("leading-ones", leading_ones_ref)]
)
def test_bit_functions_equal_their_scalar_formula(
    name: str, reference: Callable[[Sequence[bool]], float]
) -> None:
    scorer = bind(name).score

    @PROPERTY
    @given(rows=bit_rows())
    def check(rows: list[list[bool]]) -> None:
        assert scorer(population(bits=rows)).tolist() == [reference(r) for r in rows]

    check()


@PROPERTY
@given(data=st.data(), k=st.integers(2, 8))
def test_trap_equals_its_scalar_formula(data: st.DataObject, k: int) -> None:
    rows = data.draw(bit_rows(k))
    scores = bind("trap", {"block_size": k}).score(population(bits=rows))
    assert scores.tolist() == [trap_ref(r, k) for r in rows]


@PROPERTY
@given(data=st.data())
def test_knapsack_equals_its_scalar_formula(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 20))
    amount = st.floats(0, 1000, allow_nan=False) | st.integers(0, 1000)
    weights = data.draw(st.lists(amount, min_size=n, max_size=n))
    values = data.draw(st.lists(amount, min_size=n, max_size=n))
    capacity = data.draw(amount)
    rows = data.draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=1))
    bound = bind("knapsack", {"weights": weights, "values": values, "capacity": capacity})
    expected = []
    for row in rows:
        weight = sum(w for w, b in zip(weights, row, strict=True) if b)
        value = sum(v for v, b in zip(values, row, strict=True) if b)
        expected.append(value if weight <= capacity else capacity - weight)
    assert bound.score(population(bits=rows)).tolist() == pytest.approx(expected, rel=1e-9)


def nint(x: float) -> int:
    """TSPLIB's nint: (int)(x + 0.5)."""
    return int(x + 0.5)


def tour_length_ref(coords: Sequence[tuple[float, float]], tour: Sequence[int]) -> float:
    total = 0
    for i, city in enumerate(tour):
        (x1, y1), (x2, y2) = coords[city], coords[tour[(i + 1) % len(tour)]]
        total += nint(math.sqrt((x1 - x2) ** 2 + (y1 - y2) ** 2))
    return float(total)


@st.composite
def tsp_cases(draw: st.DrawFn) -> tuple[list[tuple[float, float]], list[list[int]]]:
    n = draw(st.integers(3, 30))
    coordinate = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-1000, 1000).map(float)
    coords = draw(st.lists(st.tuples(coordinate, coordinate), min_size=n, max_size=n))
    tours = draw(st.lists(st.permutations(range(n)), min_size=1, max_size=6))
    return coords, tours


@PROPERTY
@given(case=tsp_cases())
def test_tour_lengths_equal_the_scalar_loop_with_nint_rounding(
    case: tuple[list[tuple[float, float]], list[list[int]]],
) -> None:
    coords, tours = case
    expected = [tour_length_ref(coords, t) for t in tours]
    array = np.asarray(coords, dtype=np.float64)
    with_matrix = instances.tsp_instance("t", array)
    assert with_matrix.distances is not None
    from_coords = instances.TspInstance("t", array, None)
    for instance in (with_matrix, from_coords):
        scores = builtins.tour_lengths(instance, np.asarray(tours, dtype=np.int64))
        assert scores.tolist() == expected


def test_large_instances_score_from_coordinates_in_chunks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rng = np.random.default_rng(12)
    n = 300
    coords = rng.uniform(0, 5000, size=(n, 2)).round(1)
    lines = ["NAME: big", "TYPE: TSP", f"DIMENSION: {n}", "EDGE_WEIGHT_TYPE: EUC_2D"]
    lines += ["NODE_COORD_SECTION", *(f"{i + 1} {x} {y}" for i, (x, y) in enumerate(coords))]
    (tmp_path / "big.tsp").write_text("\n".join([*lines, "EOF", ""]))
    tours = np.array([rng.permutation(n) for _ in range(50)])
    with_matrix = bind("tsp", {"instance": "big.tsp"}, tmp_path)
    monkeypatch.setattr(instances, "MATRIX_MAX_CITIES", 299)
    monkeypatch.setattr(builtins, "TOUR_CHUNK_VALUES", 1000)  # 3 rows a chunk
    from_coords = bind("tsp", {"instance": "big.tsp"}, tmp_path)
    assert from_coords.score(population(tours=tours[:1])).shape == (1,)
    expected = [tour_length_ref([tuple(c) for c in coords.tolist()], t) for t in tours.tolist()]
    assert with_matrix.score(population(tours=tours)).tolist() == expected
    assert from_coords.score(population(tours=tours)).tolist() == expected


# --- non-finite scores --------------------------------------------------------------------


def test_overflowing_scores_become_nan_never_infinity() -> None:
    huge = layout_of(real_gene("x", -1e300, 1e300, 3))
    for name in ("rosenbrock", "sphere"):
        bound = bind(name)
        assert bound.check_dna(huge) == []
        scores = bound.score(population(reals=[[1e200, 1e200, 1e200], [1.0, 1.0, 1.0]]))
        assert math.isnan(scores[0])
        assert np.isfinite(scores[1])
    knapsack = bind("knapsack", {"weights": [1e308, 1e308], "values": [1, 1], "capacity": 1})
    assert math.isnan(knapsack.score(population(bits=[[True, True]]))[0])


# --- params -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sphere", "onemax", "trap", "tsp", "knapsack"])
def test_an_unknown_params_key_is_named(name: str) -> None:
    params: dict[str, object] = {"instance": "berlin52.tsp"} if name == "tsp" else {}
    params["dimension"] = 3
    violation = only(BUILTINS[name].check_params(params, TSP_DIR))
    assert violation.field == "params.dimension"
    assert violation.reason == rules.UNKNOWN_FIELD
    with pytest.raises(InvalidArgument) as raised:
        BUILTINS[name].bind(params, TSP_DIR)
    assert raised.value.violations == (violation,)


def test_params_must_be_a_mapping() -> None:
    violation = only(BUILTINS["sphere"].check_params([1, 2], TSP_DIR))  # type: ignore[arg-type]
    assert (violation.field, violation.reason) == ("params", rules.TYPE)


@pytest.mark.parametrize("block_size", [1, 65, "5", True, 2.5])
def test_trap_block_size_must_be_an_integer_2_to_64(block_size: object) -> None:
    violation = only(BUILTINS["trap"].check_params({"block_size": block_size}, TSP_DIR))
    assert (violation.field, violation.reason) == ("params.block_size", rules.RANGE)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({}, rules.REQUIRED),
        ({"instance": ""}, rules.REQUIRED),
        ({"instance": 52}, rules.TYPE),
        ({"instance": "missing.tsp"}, rules.INVALID_INSTANCE),
        ({"instance": "."}, rules.INVALID_INSTANCE),  # the base directory itself
    ],
)
def test_tsp_instance_must_name_a_file(params: dict[str, object], reason: str) -> None:
    violation = only(BUILTINS["tsp"].check_params(params, TSP_DIR))
    assert (violation.field, violation.reason) == ("params.instance", reason)


# --- paths stay inside the base directory -------------------------------------------------


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A base directory with berlin52.tsp, beside an `outside` directory with a copy."""
    inside, outside = tmp_path / "base", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    shutil.copy(TSP_DIR / "berlin52.tsp", inside / "berlin52.tsp")
    shutil.copy(TSP_DIR / "berlin52.tsp", outside / "berlin52.tsp")
    (inside / "sub").mkdir()
    (inside / "sub" / "inner.tsp").symlink_to(inside / "berlin52.tsp")
    (inside / "escape.tsp").symlink_to(outside / "berlin52.tsp")
    (inside / "dangling.tsp").symlink_to(outside / "missing.tsp")
    (inside / "out").symlink_to(outside, target_is_directory=True)
    return inside


@pytest.mark.parametrize(
    "path",
    [
        "../outside/berlin52.tsp",  # exists outside
        "../outside/missing.tsp",  # missing outside: still outside_base, never "missing"
        "../../../../../../etc/passwd",
        "sub/../../outside/berlin52.tsp",
        "escape.tsp",  # a symlink to a file outside
        "dangling.tsp",  # a symlink to a missing file outside
        "out/berlin52.tsp",  # through a symlinked directory
        "out/missing.tsp",
        "/etc/passwd",  # absolute, existing
        "/nonexistent/berlin52.tsp",  # absolute, missing
    ],
)
def test_a_path_leading_outside_the_base_is_outside_base(base: Path, path: str) -> None:
    violation = only(BUILTINS["tsp"].check_params({"instance": path}, base))
    assert (violation.field, violation.reason) == ("params.instance", rules.OUTSIDE_BASE)
    assert path in violation.description


def test_absolute_path_inside_the_base_is_still_refused(base: Path) -> None:
    violation = only(BUILTINS["tsp"].check_params({"instance": str(base / "berlin52.tsp")}, base))
    assert violation.reason == rules.OUTSIDE_BASE


@pytest.mark.parametrize("path", ["berlin52.tsp", "sub/inner.tsp", "sub/../berlin52.tsp"])
def test_paths_and_links_that_stay_inside_are_read(base: Path, path: str) -> None:
    tour = np.array(BERLIN52_OPTIMAL_TOUR) - 1
    assert bind("tsp", {"instance": path}, base).score(population(tours=[tour])).tolist() == [
        7542.0
    ]


def test_a_symlink_loop_or_an_oversized_file_is_invalid_instance(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (base / "loop.tsp").symlink_to(base / "loop.tsp")
    violation = only(BUILTINS["tsp"].check_params({"instance": "loop.tsp"}, base))
    assert violation.reason == rules.INVALID_INSTANCE
    monkeypatch.setattr(instances, "MAX_INSTANCE_BYTES", 100)
    violation = only(BUILTINS["tsp"].check_params({"instance": "berlin52.tsp"}, base))
    assert violation.reason == rules.INVALID_INSTANCE
    assert "over 100 bytes" in violation.description


def test_a_missing_file_inside_the_base_is_invalid_instance(base: Path) -> None:
    for path in ("missing.tsp", "sub/../missing.tsp", "sub/missing.tsp"):
        violation = only(BUILTINS["tsp"].check_params({"instance": path}, base))
        assert violation.reason == rules.INVALID_INSTANCE, path


# --- malformed TSPLIB ---------------------------------------------------------------------

GOOD_HEADER = ["NAME: tiny", "TYPE: TSP", "DIMENSION: 3", "EDGE_WEIGHT_TYPE: EUC_2D"]
GOOD_NODES = ["NODE_COORD_SECTION", "1 0 0", "2 3 4", "3 0 4"]


def tsplib_violation(tmp_path: Path, lines: list[str]) -> FieldViolation:
    (tmp_path / "bad.tsp").write_text("\n".join(lines) + "\n")
    return only(BUILTINS["tsp"].check_params({"instance": "bad.tsp"}, tmp_path))


def test_a_small_good_tsplib_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "tiny.tsp").write_text("\n".join([*GOOD_HEADER, *GOOD_NODES, "EOF"]))
    bound = bind("tsp", {"instance": "tiny.tsp"}, tmp_path)
    assert bound.optimum is None  # no published optimum for an unknown instance
    assert bound.score(population(tours=[[0, 1, 2]])).tolist() == [12.0]  # 5 + 3 + 4


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ["NAME: x", "TYPE: TSP", "DIMENSION: 3", "EDGE_WEIGHT_TYPE: GEO", *GOOD_NODES],
            "bad.tsp:4: EDGE_WEIGHT_TYPE GEO is not supported",
        ),
        (["NAME: x", "TYPE: TSP", "DIMENSION: 3", *GOOD_NODES], "bad.tsp:4: DIMENSION and"),
        ([*GOOD_HEADER], "bad.tsp: no NODE_COORD_SECTION"),
        ([*GOOD_HEADER, "1 0 0", "2 3 4", "3 0 4"], "bad.tsp:5: expected 'KEYWORD : value'"),
        ([*GOOD_HEADER, *GOOD_NODES[:-1]], "bad.tsp: DIMENSION 3 but 2 nodes"),
        ([*GOOD_HEADER, *GOOD_NODES, "4 1 1"], "bad.tsp: DIMENSION 3 but 4 nodes"),
        ([*GOOD_HEADER, *GOOD_NODES[:-1], "3 zero 4"], "bad.tsp:8: expected 'node x y'"),
        ([*GOOD_HEADER, *GOOD_NODES[:-1], "3 0"], "bad.tsp:8: expected 'node x y'"),
        ([*GOOD_HEADER, *GOOD_NODES[:-1], "3 0 nan"], "bad.tsp:8: coordinates must be finite"),
        ([*GOOD_HEADER, *GOOD_NODES[:-1], "3 0 1e10"], "bad.tsp:8: coordinates must be"),
        ([*GOOD_HEADER, *GOOD_NODES[:-1], "7 0 4"], "bad.tsp:8: node 7, expected 3"),
        (
            ["NAME: x", "TYPE: TSP", "DIMENSION: three", "EDGE_WEIGHT_TYPE: EUC_2D", *GOOD_NODES],
            "bad.tsp:3: DIMENSION 'three' is not an integer",
        ),
        (
            ["NAME: x", "TYPE: TSP", "DIMENSION: 2", "EDGE_WEIGHT_TYPE: EUC_2D", *GOOD_NODES],
            "bad.tsp:3: DIMENSION 2 not in 3..",
        ),
        (["NAME: x", "TYPE: ATSP", *GOOD_HEADER[2:], *GOOD_NODES], "bad.tsp:2: TYPE ATSP"),
        ([*GOOD_HEADER, "SPEED: 3", *GOOD_NODES], "bad.tsp:5: SPEED is not a TSPLIB keyword"),
    ],
)
def test_malformed_tsplib_is_invalid_instance_with_file_and_line(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    violation = tsplib_violation(tmp_path, lines)
    assert (violation.field, violation.reason) == ("params.instance", rules.INVALID_INSTANCE)
    assert message in violation.description


def test_a_tsplib_file_that_is_not_utf8_is_invalid_instance(tmp_path: Path) -> None:
    (tmp_path / "bad.tsp").write_bytes(b"NAME: \xff\xfe\n")
    violation = only(BUILTINS["tsp"].check_params({"instance": "bad.tsp"}, tmp_path))
    assert violation.reason == rules.INVALID_INSTANCE


# --- malformed knapsack -------------------------------------------------------------------

GOOD_KNAPSACK = {"weights": [1, 2, 3], "values": [4, 5, 6], "capacity": 4}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": [1, -2, 3]}, "weights[1] must be a finite number >= 0"),
        ({"values": [4, 5, "six"]}, "values[2] must be a finite number >= 0"),
        ({"values": [4, 5]}, "weights (3) and values (2) differ in length"),
        ({"capacity": None}, "capacity must be given"),
        ({"capacity": -1}, "capacity must be given, a finite number >= 0"),
        ({"weights": []}, "weights must be a list of 1.."),
        ({"weights": [1, True, 3]}, "weights[1] must be"),
        ({"optimum": "best"}, "optimum must be a finite number"),
        ({"colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_malformed_knapsack_file_is_invalid_instance(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    data = {**GOOD_KNAPSACK, **change}
    data = {k: v for k, v in data.items() if v is not None}
    (tmp_path / "k.json").write_text(json.dumps(data))
    violation = only(BUILTINS["knapsack"].check_params({"instance": "k.json"}, tmp_path))
    assert (violation.field, violation.reason) == ("params.instance", rules.INVALID_INSTANCE)
    assert violation.description.startswith("k.json: ")
    assert message in violation.description


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"weights": [1],\n "values": [1,\n "capacity": 1}', "k.json:3: not JSON"),
        ("[1, 2, 3]", "must be a mapping"),
        ('{"weights": [1], "values": [1], "capacity": NaN}', "capacity must be"),
        ('{"weights": [1e999], "values": [1], "capacity": 1}', "weights[0] must be"),
        ('{"weights": [' + "9" * 400 + '], "values": [1], "capacity": 1}', "weights[0]"),
        ("[" * 100_000 + "]" * 100_000, "not usable JSON"),
    ],
)
def test_unusable_knapsack_json_is_invalid_instance(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "k.json").write_text(text)
    violation = only(BUILTINS["knapsack"].check_params({"instance": "k.json"}, tmp_path))
    assert violation.reason == rules.INVALID_INSTANCE
    assert message in violation.description


def test_inline_knapsack_params_are_checked_like_a_file() -> None:
    violation = only(
        BUILTINS["knapsack"].check_params({"weights": [-1], "values": [1], "capacity": 1}, DATA_DIR)
    )
    assert (violation.field, violation.reason) == ("params", rules.INVALID_INSTANCE)
    both = {"instance": "knapsack-20.json", "capacity": 3}
    violation = only(BUILTINS["knapsack"].check_params(both, DATA_DIR))
    assert (violation.field, violation.reason) == ("params", rules.ONEOF)
    violation = only(BUILTINS["knapsack"].check_params({"instance": "../x.json"}, DATA_DIR))
    assert violation.reason == rules.OUTSIDE_BASE


# --- DNA shapes ---------------------------------------------------------------------------


def test_sphere_given_a_permutation_gene_names_that_gene() -> None:
    layout = layout_of(real_gene("x", -5, 5, 3), permutation_gene("order", 4))
    violation = only(bind("sphere").check_dna(layout))
    assert (violation.field, violation.reason) == ("genes[1].permutation", rules.DNA_SHAPE)
    assert "'order'" in violation.description
    assert bind("sphere").check_dna(layout_of(real_gene("x", -5, 5, 3))) == []


def test_tsp_given_a_permutation_of_the_wrong_size_names_its_size() -> None:
    bound = bind("tsp", {"instance": "berlin52.tsp"})
    violation = only(bound.check_dna(layout_of(permutation_gene("tour", 51))))
    assert (violation.field, violation.reason) == ("genes[0].permutation.size", rules.DNA_SHAPE)
    assert "51" in violation.description
    assert "52" in violation.description
    assert bound.check_dna(layout_of(permutation_gene("tour", 52))) == []


def test_tsp_needs_exactly_one_permutation_gene() -> None:
    bound = bind("tsp", {"instance": "berlin52.tsp"})
    two = bound.check_dna(layout_of(permutation_gene("a", 52), permutation_gene("b", 52)))
    assert [(v.field, v.reason) for v in two] == [("genes", rules.DNA_SHAPE)]
    mixed = bound.check_dna(layout_of(permutation_gene("a", 52), bits_gene("b", 3)))
    assert [v.field for v in mixed] == ["genes[1].bits", "genes"]


def test_onemax_given_reals_names_the_real_gene() -> None:
    layout = layout_of(bits_gene("mask", 8), real_gene("x", 0, 1, 2))
    violation = only(bind("onemax").check_dna(layout))
    assert (violation.field, violation.reason) == ("genes[1].real", rules.DNA_SHAPE)


def test_bit_oracles_accept_several_bits_genes() -> None:
    layout = layout_of(bits_gene("a", 8), bits_gene("b", 12))
    assert bind("onemax").check_dna(layout) == []
    assert bind("trap", {"block_size": 4}).check_dna(layout) == []
    violation = only(bind("trap", {"block_size": 3}).check_dna(layout_of(bits_gene("a", 10))))
    assert (violation.field, violation.reason) == ("genes", rules.DNA_SHAPE)


def test_knapsack_needs_one_bit_per_item() -> None:
    bound = bind("knapsack", {"instance": "knapsack-20.json"}, DATA_DIR)
    violation = only(bound.check_dna(layout_of(bits_gene("items", 19))))
    assert (violation.field, violation.reason) == ("genes", rules.DNA_SHAPE)
    assert "20" in violation.description


def test_every_kind_mismatch_is_named_per_gene() -> None:
    kinds = [real_gene("r", 0, 1, 1), bits_gene("b", 2), permutation_gene("p", 3)]
    for name in ("rastrigin", "leading-ones"):
        expected = {"rastrigin": "real", "leading-ones": "bits"}[name]
        fields = [v.field for v in bind(name).check_dna(layout_of(*kinds))]
        assert fields == [
            f"genes[{i}].{g.WhichOneof('kind')}"
            for i, g in enumerate(kinds)
            if g.WhichOneof("kind") != expected
        ]
