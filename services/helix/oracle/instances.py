"""Instance files of the builtin oracles: TSPLIB EUC_2D and 0/1 knapsack.

Pure and synchronous (blocking file reads, no grpc): the service calls these in a thread.
Every path is resolved under a base directory first (`resolve_inside`): an absolute path,
`..`, or a symlink whose target lies outside the base is refused before anything is opened.
Problems raise `InstanceError`, whose message names the file and, where there is one, the
line.
"""

from __future__ import annotations

import json
import math
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helix.genome.layout import FloatArray, IntArray

MAX_INSTANCE_BYTES = 16 * 1024 * 1024
MAX_TSP_CITIES = 100_000
MATRIX_MAX_CITIES = 2_000
"""Up to this many cities a distance matrix is kept (2,000² int64: 32 MB); above, tour
lengths are computed from the coordinates."""
MAX_COORDINATE = 1e9
"""|x|, |y| at most this: a distance is then at most 2.9e9 and a tour of MAX_TSP_CITIES at
most 2.9e14, both exact integers in float64 (< 2^53)."""


class InstanceError(ValueError):
    """An instance file that cannot be used: the message names the file (and line)."""


class OutsideBase(InstanceError):
    """An instance path that is absolute or leads outside its base directory."""


def resolve_inside(base_dir: Path, relative: str) -> Path:
    """The real path of `relative` under `base_dir`; `OutsideBase` if it leads outside.

    Containment is decided first, on the path resolved non-strictly (every `..` and every
    existing symlink followed), so a path that leaves the base is `OutsideBase` whether or
    not its target exists: an error must not tell a configuration author which files exist
    outside the base. Only then: a missing file, a non-regular file or one over
    MAX_INSTANCE_BYTES is `InstanceError`. An absolute path is `OutsideBase` outright.
    """
    if Path(relative).is_absolute():
        raise OutsideBase(f"{relative}: must be a path relative to the base directory")
    try:
        base = base_dir.resolve(strict=True)
        target = (base / relative).resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a missing base, a symlink loop (3.11: Runtime)
        raise InstanceError(f"{relative}: cannot be resolved ({exc.__class__.__name__})") from None
    if not target.is_relative_to(base):
        raise OutsideBase(f"{relative}: leads outside the base directory {base}")
    try:
        status = target.stat()
    except FileNotFoundError:
        raise InstanceError(f"{relative}: no such file under {base}") from None
    except OSError as exc:
        raise InstanceError(f"{relative}: cannot be read ({exc.__class__.__name__})") from None
    if not stat.S_ISREG(status.st_mode):
        raise InstanceError(f"{relative}: not a regular file")
    if status.st_size > MAX_INSTANCE_BYTES:
        raise InstanceError(f"{relative}: over {MAX_INSTANCE_BYTES} bytes")
    return target


def _read_text(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InstanceError(f"{shown}: cannot be read ({exc.__class__.__name__})") from None


# --- TSPLIB -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TspInstance:
    """A symmetric TSPLIB EUC_2D instance: its name, city coordinates (n, 2) and, for up to
    MATRIX_MAX_CITIES cities, the integer distance matrix (None above: lengths are then
    computed from the coordinates, the same numbers without n² memory)."""

    name: str
    coords: FloatArray
    distances: IntArray | None

    @property
    def size(self) -> int:
        return int(self.coords.shape[0])


def euc_2d(a: FloatArray, b: FloatArray) -> FloatArray:
    """TSPLIB's EUC_2D distance between points a[..., :] and b[..., :] (last axis x, y):
    nint(sqrt(dx² + dy²)) with nint(x) = (int)(x + 0.5), as float64 (exact: below 2^53)."""
    dx = a[..., 0] - b[..., 0]
    dy = a[..., 1] - b[..., 1]
    return np.floor(np.sqrt(dx * dx + dy * dy) + 0.5)


def tsp_instance(name: str, coords: FloatArray) -> TspInstance:
    """An instance from its coordinates, with the distance matrix when it is small enough."""
    if coords.shape[0] > MATRIX_MAX_CITIES:
        return TspInstance(name, coords, None)
    matrix = euc_2d(coords[:, None, :], coords[None, :, :]).astype(np.int64)
    return TspInstance(name, coords, matrix)


@dataclass(slots=True)
class _TspHeader:
    """The specification part of a TSPLIB file, as read so far."""

    name: str
    dimension: int = 0
    weight_type: str = ""


# Specification keywords that do not change how an EUC_2D instance is read.
_IGNORED_KEYS = frozenset({"COMMENT", "CAPACITY", "DISPLAY_DATA_TYPE", "EDGE_WEIGHT_FORMAT"})


def _read_dimension(value: str, where: str) -> int:
    try:
        dimension = int(value)
    except ValueError:
        raise InstanceError(f"{where}: DIMENSION {value!r} is not an integer") from None
    if not 3 <= dimension <= MAX_TSP_CITIES:
        raise InstanceError(f"{where}: DIMENSION {dimension} not in 3..{MAX_TSP_CITIES}")
    return dimension


def _read_weight_type(value: str, where: str) -> str:
    weight_type = value.upper()
    if weight_type != "EUC_2D":
        raise InstanceError(f"{where}: EDGE_WEIGHT_TYPE {value} is not supported (only EUC_2D)")
    return weight_type


def _header_line(header: _TspHeader, text: str, where: str) -> None:
    """Apply one `KEY : value` line of the specification part to `header`."""
    key, colon, value = (part.strip() for part in text.partition(":"))
    key = key.upper()
    if not colon or not value:
        raise InstanceError(f"{where}: expected 'KEYWORD : value', got {text!r}")
    if key == "NAME":
        header.name = value
    elif key == "TYPE":
        if value.upper() != "TSP":
            raise InstanceError(f"{where}: TYPE {value}: only TSP (symmetric) is supported")
    elif key == "DIMENSION":
        header.dimension = _read_dimension(value, where)
    elif key == "EDGE_WEIGHT_TYPE":
        header.weight_type = _read_weight_type(value, where)
    elif key == "NODE_COORD_TYPE":
        if value.upper() != "TWOD_COORDS":
            raise InstanceError(f"{where}: NODE_COORD_TYPE {value}: EUC_2D needs TWOD_COORDS")
    elif key not in _IGNORED_KEYS:
        raise InstanceError(f"{where}: {key} is not a TSPLIB keyword this reader knows")


def _coord_line(text: str, where: str, expected: int) -> tuple[float, float]:
    """The (x, y) of one `node x y` line, which must be node number `expected`."""
    parts = text.split()
    try:
        node, x, y = int(parts[0]), float(parts[1]), float(parts[2])
    except (ValueError, IndexError):
        raise InstanceError(f"{where}: expected 'node x y', got {text!r}") from None
    if len(parts) != 3:
        raise InstanceError(f"{where}: expected 'node x y', got {text!r}")
    if node != expected:
        raise InstanceError(f"{where}: node {node}, expected {expected}")
    if not (abs(x) <= MAX_COORDINATE and abs(y) <= MAX_COORDINATE):
        raise InstanceError(f"{where}: coordinates must be finite, within ±{MAX_COORDINATE:g}")
    return x, y


def read_tsplib(path: Path, shown: str) -> TspInstance:
    """A TSPLIB file with EDGE_WEIGHT_TYPE EUC_2D and a NODE_COORD_SECTION.

    Any other EDGE_WEIGHT_TYPE (GEO, ATT, EXPLICIT, ...) is refused with the file and line:
    their distance functions differ and silently scoring them as EUC_2D would give wrong
    lengths. The specification (DIMENSION, EDGE_WEIGHT_TYPE) comes before the
    NODE_COORD_SECTION, whose nodes are numbered 1..DIMENSION in order; nothing but
    coordinates may follow it (an optional EOF ends the file).
    """
    header = _TspHeader(Path(shown).stem)
    rows: list[tuple[float, float]] = []
    reading = False
    for number, line in enumerate(_read_text(path, shown).splitlines(), start=1):
        text, where = line.strip(), f"{shown}:{number}"
        if text == "EOF":
            break
        if not text:
            continue
        if reading:
            rows.append(_coord_line(text, where, len(rows) + 1))
        elif text.upper().rstrip(" :") == "NODE_COORD_SECTION":
            if header.weight_type != "EUC_2D" or not header.dimension:
                raise InstanceError(f"{where}: DIMENSION and EDGE_WEIGHT_TYPE EUC_2D go first")
            reading = True
        else:
            _header_line(header, text, where)
    if not reading:
        raise InstanceError(f"{shown}: no NODE_COORD_SECTION")
    if len(rows) != header.dimension:
        raise InstanceError(f"{shown}: DIMENSION {header.dimension} but {len(rows)} nodes")
    return tsp_instance(header.name, np.asarray(rows, dtype=np.float64))


# --- knapsack -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnapsackInstance:
    """A 0/1 knapsack: item weights and values (≥ 0), a capacity, maybe a known optimum."""

    weights: FloatArray
    values: FloatArray
    capacity: float
    optimum: float | None

    @property
    def size(self) -> int:
        return int(self.weights.shape[0])


MAX_KNAPSACK_ITEMS = 100_000
KNAPSACK_KEYS = frozenset({"weights", "values", "capacity", "optimum"})


def _finite_number(value: object) -> float | None:
    """`value` as a float if it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        return None
    return number if math.isfinite(number) else None


def _items(data: dict[str, object], key: str, shown: str) -> FloatArray:
    items = data.get(key)
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_KNAPSACK_ITEMS:
        raise InstanceError(f"{shown}: {key} must be a list of 1..{MAX_KNAPSACK_ITEMS} numbers")
    numbers = [_finite_number(v) for v in items]
    for i, number in enumerate(numbers):
        if number is None or number < 0:
            raise InstanceError(f"{shown}: {key}[{i}] must be a finite number >= 0")
    return np.asarray(numbers, dtype=np.float64)


def knapsack_from(data: object, shown: str) -> KnapsackInstance:
    """A knapsack from a mapping {weights, values, capacity[, optimum]}; `InstanceError`."""
    if not isinstance(data, dict):
        raise InstanceError(f"{shown}: must be a mapping of weights, values, capacity")
    unknown = sorted(set(data) - KNAPSACK_KEYS)
    if unknown:
        raise InstanceError(f"{shown}: unknown key {unknown[0]!r}")
    weights, values = _items(data, "weights", shown), _items(data, "values", shown)
    if weights.shape != values.shape:
        raise InstanceError(
            f"{shown}: weights ({weights.size}) and values ({values.size}) differ in length"
        )
    capacity = _finite_number(data.get("capacity"))
    if capacity is None or capacity < 0:
        raise InstanceError(f"{shown}: capacity must be given, a finite number >= 0")
    optimum = None
    if data.get("optimum") is not None:
        optimum = _finite_number(data["optimum"])
        if optimum is None:
            raise InstanceError(f"{shown}: optimum must be a finite number")
    return KnapsackInstance(weights, values, capacity, optimum)


def read_knapsack(path: Path, shown: str) -> KnapsackInstance:
    """A knapsack instance file: JSON {weights: [...], values: [...], capacity, optimum?}."""
    try:
        data = json.loads(_read_text(path, shown))
    except json.JSONDecodeError as exc:
        raise InstanceError(f"{shown}:{exc.lineno}: not JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # an int of too many digits, deep nesting
        raise InstanceError(f"{shown}: not usable JSON ({exc.__class__.__name__})") from None
    return knapsack_from(data, shown)
