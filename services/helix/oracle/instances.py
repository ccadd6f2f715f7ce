"""Instance files of the builtin oracles: TSPLIB EUC_2D and 0/1 knapsack.

Pure and synchronous (blocking file reads, no grpc): the service calls these in a thread.
Every path is resolved under a base directory first (`resolve_inside`): an absolute path,
`..`, or a symlink whose target lies outside the base is refused before anything is opened.
Problems raise `InstanceError`, whose message names the file and, where there is one, the
line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

MAX_INSTANCE_BYTES = 16 * 1024 * 1024
MAX_TSP_CITIES = 10_000  # a 10,000² int64 distance matrix is 800 MB: the cap


class InstanceError(ValueError):
    """An instance file that cannot be used: the message names the file (and line)."""


class OutsideBase(InstanceError):
    """An instance path that is absolute or leads outside its base directory."""


def resolve_inside(base_dir: Path, relative: str) -> Path:
    """The real path of `relative` under `base_dir`; `InstanceError` if it leads outside.

    Refused: an absolute path, a path whose resolution (following `..` and every symlink)
    is not inside the base directory's own real path, a missing file, a non-regular file.
    """
    if not relative or Path(relative).is_absolute():
        raise OutsideBase(f"{relative!r}: must be a path relative to {base_dir}")
    base = base_dir.resolve(strict=True)
    try:
        target = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise InstanceError(f"{relative}: cannot be read ({exc.__class__.__name__})") from None
    if not target.is_relative_to(base):
        raise OutsideBase(f"{relative}: leads outside {base}")
    if not target.is_file():
        raise InstanceError(f"{relative}: not a regular file")
    if target.stat().st_size > MAX_INSTANCE_BYTES:
        raise InstanceError(f"{relative}: over {MAX_INSTANCE_BYTES} bytes")
    return target


def _read_text(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InstanceError(f"{shown}: cannot be read ({exc.__class__.__name__})") from None


@dataclass(frozen=True, slots=True)
class TspInstance:
    """A symmetric TSPLIB EUC_2D instance: its name and integer distance matrix."""

    name: str
    distances: npt.NDArray[np.int64]

    @property
    def size(self) -> int:
        return int(self.distances.shape[0])


def euc_2d(coords: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """TSPLIB's EUC_2D distances: nint(sqrt(dx² + dy²)), nint(x) = (int)(x + 0.5)."""
    delta = coords[:, None, :] - coords[None, :, :]
    return np.floor(np.sqrt((delta * delta).sum(axis=2)) + 0.5).astype(np.int64)


def read_tsplib(path: Path, shown: str) -> TspInstance:
    """A TSPLIB file with EDGE_WEIGHT_TYPE EUC_2D and a NODE_COORD_SECTION.

    Any other EDGE_WEIGHT_TYPE (GEO, ATT, EXPLICIT, ...) is refused with the file and line:
    their distance functions differ and silently scoring them as EUC_2D would give wrong
    lengths. Nodes must be numbered 1..DIMENSION in order.
    """
    name, dimension, weight_type = Path(shown).stem, 0, ""
    rows: list[tuple[float, float]] = []
    reading = False
    for number, line in enumerate(_read_text(path, shown).splitlines(), start=1):
        text = line.strip()
        where = f"{shown}:{number}"
        if not text or text == "EOF":
            if text == "EOF":
                break
            continue
        if reading:
            parts = text.split()
            if len(parts) != 3:
                raise InstanceError(f"{where}: expected 'node x y', got {text!r}")
            try:
                node, x, y = int(parts[0]), float(parts[1]), float(parts[2])
            except ValueError:
                raise InstanceError(f"{where}: expected 'node x y', got {text!r}") from None
            if node != len(rows) + 1:
                raise InstanceError(f"{where}: node {node}, expected {len(rows) + 1}")
            if not (np.isfinite(x) and np.isfinite(y)):
                raise InstanceError(f"{where}: coordinates must be finite")
            rows.append((x, y))
            continue
        key, _, value = (part.strip() for part in text.partition(":"))
        key = key.upper()
        if key == "NODE_COORD_SECTION":
            if weight_type != "EUC_2D":
                raise InstanceError(f"{where}: EDGE_WEIGHT_TYPE must be given as EUC_2D first")
            reading = True
        elif key == "NAME":
            name = value
        elif key == "TYPE" and value.upper() != "TSP":
            raise InstanceError(f"{where}: TYPE {value}: only TSP (symmetric) is supported")
        elif key == "DIMENSION":
            try:
                dimension = int(value)
            except ValueError:
                raise InstanceError(f"{where}: DIMENSION {value!r} is not an integer") from None
            if not 3 <= dimension <= MAX_TSP_CITIES:
                raise InstanceError(f"{where}: DIMENSION {dimension} not in 3..{MAX_TSP_CITIES}")
        elif key == "EDGE_WEIGHT_TYPE":
            weight_type = value.upper()
            if weight_type != "EUC_2D":
                raise InstanceError(
                    f"{where}: EDGE_WEIGHT_TYPE {value} is not supported (only EUC_2D)"
                )
    if not rows:
        raise InstanceError(f"{shown}: no NODE_COORD_SECTION")
    if len(rows) != dimension:
        raise InstanceError(f"{shown}: DIMENSION {dimension} but {len(rows)} nodes")
    return TspInstance(name, euc_2d(np.asarray(rows, dtype=np.float64)))


@dataclass(frozen=True, slots=True)
class KnapsackInstance:
    """A 0/1 knapsack: item weights and values (≥ 0), a capacity, maybe a known optimum."""

    weights: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    capacity: float
    optimum: float | None

    @property
    def size(self) -> int:
        return int(self.weights.shape[0])


MAX_KNAPSACK_ITEMS = 100_000


def knapsack_from(data: object, shown: str) -> KnapsackInstance:
    """A knapsack from a mapping {weights, values, capacity[, optimum]}; `InstanceError`."""
    if not isinstance(data, dict):
        raise InstanceError(f"{shown}: must be a mapping of weights, values, capacity")
    unknown = sorted(set(data) - {"weights", "values", "capacity", "optimum"})
    if unknown:
        raise InstanceError(f"{shown}: unknown key {unknown[0]!r}")
    arrays = []
    for key in ("weights", "values"):
        items = data.get(key)
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_KNAPSACK_ITEMS:
            raise InstanceError(f"{shown}: {key} must be a list of 1..{MAX_KNAPSACK_ITEMS}")
        if not all(_number(v) and v >= 0 for v in items):
            raise InstanceError(f"{shown}: {key} must be finite numbers >= 0")
        arrays.append(np.asarray(items, dtype=np.float64))
    if arrays[0].shape != arrays[1].shape:
        raise InstanceError(f"{shown}: weights and values differ in length")
    capacity = data.get("capacity")
    if not _number(capacity) or capacity < 0:
        raise InstanceError(f"{shown}: capacity must be a finite number >= 0")
    optimum = data.get("optimum")
    if optimum is not None and not _number(optimum):
        raise InstanceError(f"{shown}: optimum must be a finite number")
    return KnapsackInstance(
        arrays[0], arrays[1], float(capacity), None if optimum is None else float(optimum)
    )


def _number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and bool(np.isfinite(float(value)))
    )


def read_knapsack(path: Path, shown: str) -> KnapsackInstance:
    """A knapsack instance file: JSON {weights: [...], values: [...], capacity, optimum?}."""
    try:
        data = json.loads(_read_text(path, shown))
    except json.JSONDecodeError as exc:
        raise InstanceError(f"{shown}:{exc.lineno}: not JSON ({exc.msg})") from None
    return knapsack_from(data, shown)
