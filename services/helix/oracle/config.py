"""The oracle configuration file: named oracles, checked like DNA documents.

Pure and synchronous (blocking file reads of instance files and entry-point folders: the
service calls `parse_config` in a thread). A configuration is a YAML (or JSON) mapping:

    oracles:
      sphere:                     # the oracle's id: [a-z][a-z0-9-]{0,62}
        kind: builtin             # builtin | command | python | remote
        function: sphere          # builtin: which function (default: the oracle's id)
      knapsack:
        kind: command
        argv: [python3, workers/knapsack.py, data/knapsack-20.json]
        workers: 2

Every problem is a `FieldViolation` naming the file, the field path
(`oracles.knapsack.argv[1]`), the rule and the line; a file with any violation is not
used (the server keeps the configuration it has). Files an oracle names (instances,
worker scripts, entry-point folders, CA bundles) are resolved inside the configuration's
folder and refused when they lead outside it.

`config_hash` is the SHA-256 of the oracle's normalised configuration: every setting with
its default filled in, as canonical JSON, plus the SHA-256 of the content of every file it
names — so two agents with equal hashes give equal verdicts, and an edited instance file
changes the hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helix.v1.common_pb2 as common_pb2
import helix.v1.oracle_pb2 as oracle_pb2
from helix.common import rules
from helix.common.config import parse_duration, parse_size
from helix.common.errors import FieldViolation
from helix.common.validation import RESOURCE_ID_PATTERN, index, join
from helix.oracle import instances
from helix.oracle.builtins import BUILTINS
from helix.oracle.yaml_tree import Tree, read_tree

MAX_CONFIG_BYTES = 1 << 20
MAX_ORACLES = 256
MAX_DESCRIPTION = 4096
MAX_CAPACITY = 1_000_000
MAX_TIMEOUT = 24 * 3600.0
MAX_WORKERS = 256
MAX_ARGV = 256
MAX_ARG_CHARS = 4096
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_TIMEOUT = 300.0
# A builtin evaluates faster than a cache lookup: caching it would only cost memory.
DEFAULT_BUILTIN_CAPACITY = 100_000

KINDS = {
    "builtin": oracle_pb2.ORACLE_KIND_BUILTIN,
    "command": oracle_pb2.ORACLE_KIND_COMMAND,
    "python": oracle_pb2.ORACLE_KIND_PYTHON,
    "remote": oracle_pb2.ORACLE_KIND_REMOTE,
}
OBJECTIVES = {
    "minimize": common_pb2.OBJECTIVE_MINIMIZE,
    "maximize": common_pb2.OBJECTIVE_MAXIMIZE,
    "none": common_pb2.OBJECTIVE_UNSPECIFIED,
}
_ENTRY_POINT = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5}")

_COMMON = ("kind", "description", "capacity", "timeout", "max_timeout", "cache", "objective")
_KIND_KEYS = {
    "builtin": ("function", "params"),
    "command": ("argv", "workers", "in_flight", "env", "limits"),
    "python": ("entry_point", "batch", "path", "workers", "in_flight", "env", "limits"),
    "remote": ("address", "oracle", "ca_file", "token_file"),
}
_LIMIT_KEYS = ("cpu_seconds", "memory", "open_files", "file_size")


@dataclass(frozen=True)
class OracleSpec:
    """One oracle of the configuration, checked and normalised."""

    id: str
    kind: str
    description: str
    capacity: int
    timeout: float
    max_timeout: float
    cache: bool
    objective: common_pb2.Objective.ValueType
    settings: Mapping[str, Any]  # the kind's own keys, normalised (see _KIND_KEYS)
    base_dir: Path
    config_hash: str

    @property
    def name(self) -> str:
        return f"oracles/{self.id}"

    def info(self) -> oracle_pb2.OracleInfo:
        return oracle_pb2.OracleInfo(
            name=self.name,
            kind=KINDS[self.kind],
            description=self.description,
            config_hash=self.config_hash,
            capacity=self.capacity,
            objective=self.objective,
        )


@dataclass
class ConfigCheck:
    """A configuration file read and checked: the oracles, or the violations."""

    filename: str
    oracles: dict[str, OracleSpec] = field(default_factory=dict)
    violations: list[FieldViolation] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.violations


class _Reader:
    """Reads typed settings out of the tree, recording a violation per problem."""

    def __init__(self, tree: Tree, filename: str) -> None:
        self.tree = tree
        self.filename = filename
        self.found: list[FieldViolation] = []

    def bad(self, path: str, description: str, rule: str) -> None:
        self.found.append(
            FieldViolation(path, description, rule, self.filename, self.tree.line(path))
        )

    def keys(self, value: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in value:
            if key not in allowed:
                self.bad(
                    join(path, key),
                    f"unknown setting (known: {', '.join(allowed)})",
                    rules.UNKNOWN_FIELD,
                )

    def integer(self, value: Any, path: str, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(path, f"must be an integer {low}..{high}", rules.TYPE)
            return None
        if not low <= value <= high:
            self.bad(path, f"must be {low}..{high}, got {value}", rules.RANGE)
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.bad(path, "must be true or false", rules.TYPE)
            return None
        return value

    def text(self, value: Any, path: str, max_len: int, *, required: bool = True) -> str | None:
        if not isinstance(value, str):
            self.bad(path, "must be a string", rules.TYPE)
            return None
        if required and not value:
            self.bad(path, "must not be empty", rules.REQUIRED)
            return None
        if len(value) > max_len:
            self.bad(path, f"must be at most {max_len} characters", rules.TOO_LONG)
            return None
        return value

    def duration(self, value: Any, path: str) -> float | None:
        if isinstance(value, bool):
            seconds = None
        elif isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            try:
                seconds = parse_duration(value)
            except ValueError:
                seconds = None
        else:
            seconds = None
        if seconds is None:
            self.bad(path, "must be a duration (examples: 250ms, 10s, 2m, or seconds)", rules.TYPE)
            return None
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT):
            self.bad(path, f"must be > 0 and at most {MAX_TIMEOUT:g} seconds", rules.RANGE)
            return None
        return seconds

    def size(self, value: Any, path: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            size: int | None = value
        elif isinstance(value, str):
            try:
                size = parse_size(value)
            except ValueError:
                size = None
        else:
            size = None
        if size is None or size < 0:
            self.bad(path, "must be a size in bytes (examples: 1048576, 512MiB, 2GiB)", rules.TYPE)
            return None
        return size

    def file(self, value: Any, path: str, base_dir: Path, *, directory: bool = False) -> str | None:
        """A path inside `base_dir` (returned as given); violations otherwise."""
        relative = self.text(value, path, MAX_ARG_CHARS)
        if relative is None:
            return None
        try:
            inside(base_dir, relative, directory=directory)
        except instances.OutsideBase as exc:
            self.bad(path, str(exc), rules.OUTSIDE_BASE)
            return None
        except instances.InstanceError as exc:
            self.bad(path, str(exc), rules.UNREADABLE)
            return None
        return relative


def inside(base_dir: Path, relative: str, *, directory: bool = False) -> Path:
    """The real path of `relative` under `base_dir` (a file, or a folder when `directory`);
    `instances.OutsideBase` if it leads outside, `instances.InstanceError` if missing."""
    if directory:
        if not relative or Path(relative).is_absolute():
            raise instances.OutsideBase(f"{relative!r}: must be a path relative to {base_dir}")
        base = base_dir.resolve(strict=True)
        target = (base / relative).resolve()
        if not target.is_relative_to(base):
            raise instances.OutsideBase(f"{relative}: leads outside {base}")
        if not target.is_dir():
            raise instances.InstanceError(f"{relative}: not a directory")
        return target
    return instances.resolve_inside(base_dir, relative)


def _is_file(path: Path) -> bool:
    """Whether `path` is a regular file; False for a name no file system can hold (too
    long, say) or one it refuses to look at, as for a folder or nothing at all."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _builtin(
    r: _Reader, raw: Mapping[str, Any], path: str, oracle_id: str, base: Path
) -> dict[str, Any] | None:
    function = raw.get("function", oracle_id)
    if not isinstance(function, str) or function not in BUILTINS:
        r.bad(
            join(path, "function"),
            f"must be one of the builtins: {', '.join(sorted(BUILTINS))}",
            rules.ENUM,
        )
        return None
    params = raw.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        r.bad(join(path, "params"), "must be a mapping", rules.TYPE)
        return None
    problems = BUILTINS[function].check_params(params, base)
    for problem in problems:
        r.bad(join(path, problem.field), problem.description, problem.reason)
    if problems:
        return None
    files = {}
    instance = params.get("instance")
    if isinstance(instance, str):
        files["instance"] = _digest(instances.resolve_inside(base, instance))
    return {"function": function, "params": dict(params), "files": files}


def _argv(r: _Reader, raw: Any, path: str, base: Path) -> tuple[list[str], dict[str, str]] | None:
    if not isinstance(raw, list) or not raw:
        r.bad(
            path,
            "must be a non-empty list of strings (the program and its arguments; never a shell)",
            rules.TYPE,
        )
        return None
    if len(raw) > MAX_ARGV:
        r.bad(path, f"must have at most {MAX_ARGV} items", rules.TOO_MANY)
        return None
    out, files = [], {}
    for i, arg in enumerate(raw):
        text = r.text(arg, index(path, i), MAX_ARG_CHARS)
        if text is None:
            return None
        if "\x00" in text:
            r.bad(index(path, i), "must not contain NUL", rules.PATTERN)
            return None
        out.append(text)
        if not Path(text).is_absolute() and _is_file(base / text):
            # A file of the configuration's folder: its content is part of the hash.
            checked = r.file(text, index(path, i), base)
            if checked is None:
                return None
            target = instances.resolve_inside(base, text)
            files[text] = _digest(target)
    return out, files


def _limits(r: _Reader, raw: Any, path: str) -> dict[str, int] | None:
    defaults = {"cpu_seconds": 3600, "memory": 4 << 30, "open_files": 256, "file_size": 64 << 20}
    if raw is None:
        return defaults
    if not isinstance(raw, Mapping):
        r.bad(path, "must be a mapping", rules.TYPE)
        return None
    r.keys(raw, path, _LIMIT_KEYS)
    out = dict(defaults)
    for key in ("cpu_seconds", "open_files"):
        if key in raw:
            value = r.integer(raw[key], join(path, key), 1, 1 << 30)
            out[key] = value if value is not None else out[key]
    for key in ("memory", "file_size"):
        if key in raw:
            value = r.size(raw[key], join(path, key))
            out[key] = value if value is not None else out[key]
    return out


def _workers_and_env(
    r: _Reader, raw: Mapping[str, Any], path: str, in_flight_default: int = 32
) -> dict[str, Any] | None:
    workers = r.integer(raw.get("workers", 2), join(path, "workers"), 1, MAX_WORKERS)
    in_flight = r.integer(raw.get("in_flight", in_flight_default), join(path, "in_flight"), 1, 4096)
    env = raw.get("env", [])
    names: list[str] = []
    if not isinstance(env, list):
        r.bad(join(path, "env"), "must be a list of environment variable names to pass", rules.TYPE)
        return None
    for i, name in enumerate(env):
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            r.bad(
                index(join(path, "env"), i), "must be an environment variable name", rules.PATTERN
            )
            return None
        names.append(name)
    limits = _limits(r, raw.get("limits"), join(path, "limits"))
    if workers is None or in_flight is None or limits is None:
        return None
    return {"workers": workers, "in_flight": in_flight, "env": sorted(set(names)), "limits": limits}


def _command(
    r: _Reader, raw: Mapping[str, Any], path: str, oracle_id: str, base: Path
) -> dict[str, Any] | None:
    if "argv" not in raw:
        r.bad(join(path, "argv"), "must be set: the program and its arguments", rules.REQUIRED)
        return None
    argv = _argv(r, raw["argv"], join(path, "argv"), base)
    pool = _workers_and_env(r, raw, path)
    if argv is None or pool is None:
        return None
    return {"argv": argv[0], "files": argv[1], **pool}


def _python(
    r: _Reader, raw: Mapping[str, Any], path: str, oracle_id: str, base: Path
) -> dict[str, Any] | None:
    entry = raw.get("entry_point")
    if not isinstance(entry, str) or not _ENTRY_POINT.fullmatch(entry):
        r.bad(
            join(path, "entry_point"),
            'must be "module:function" (e.g. "queueing:simulate")',
            rules.PATTERN,
        )
        return None
    batch = r.boolean(raw.get("batch", False), join(path, "batch"))
    folder = r.file(raw.get("path", "."), join(path, "path"), base, directory=True)
    # A batch worker calls the function with up to 1,000 waiting lines: two calls' worth.
    pool = _workers_and_env(r, raw, path, 2000 if batch else 32)
    if batch is None or folder is None or pool is None:
        return None
    target = inside(base, folder, directory=True)
    module = entry.split(":")[0].replace(".", "/")
    files = {}
    for candidate in (target / f"{module}.py", target / module / "__init__.py"):
        if _is_file(candidate) and candidate.resolve().is_relative_to(base.resolve()):
            files[str(candidate.relative_to(target))] = _digest(candidate)
            break
    return {"entry_point": entry, "batch": batch, "path": folder, "files": files, **pool}


def _remote(
    r: _Reader, raw: Mapping[str, Any], path: str, oracle_id: str, base: Path
) -> dict[str, Any] | None:
    address = raw.get("address")
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        r.bad(join(path, "address"), 'must be "host:port"', rules.ENDPOINT)
        return None
    remote_id = raw.get("oracle", oracle_id)
    if not isinstance(remote_id, str) or not re.fullmatch(RESOURCE_ID_PATTERN, remote_id):
        r.bad(
            join(path, "oracle"),
            f"must be an oracle id matching {RESOURCE_ID_PATTERN}",
            rules.PATTERN,
        )
        return None
    out: dict[str, Any] = {"address": address, "oracle": remote_id}
    for key in ("ca_file", "token_file"):
        if key in raw:
            checked = r.file(raw[key], join(path, key), base)
            if checked is None:
                return None
            out[key] = checked
    return out


_KIND_READERS: dict[
    str, Callable[[_Reader, Mapping[str, Any], str, str, Path], dict[str, Any] | None]
] = {
    "builtin": _builtin,
    "command": _command,
    "python": _python,
    "remote": _remote,
}


_Common = tuple[str, int, float, float, bool, "common_pb2.Objective.ValueType"]


def _objective(
    r: _Reader, raw: Mapping[str, Any], path: str, kind: str, settings: dict[str, Any] | None
) -> common_pb2.Objective.ValueType:
    text = raw.get("objective")
    if text is None:
        if kind == "builtin" and settings is not None:
            return BUILTINS[settings["function"]].objective
        return common_pb2.OBJECTIVE_UNSPECIFIED
    if text not in OBJECTIVES:
        r.bad(join(path, "objective"), f"must be one of: {', '.join(OBJECTIVES)}", rules.ENUM)
        return common_pb2.OBJECTIVE_UNSPECIFIED
    return OBJECTIVES[text]


def _common(
    r: _Reader, raw: Mapping[str, Any], path: str, kind: str, settings: dict[str, Any] | None
) -> _Common | None:
    """The settings every kind has: description, capacity, timeouts, cache, objective."""
    description = r.text(
        raw.get("description", ""), join(path, "description"), MAX_DESCRIPTION, required=False
    )
    default_capacity = {"builtin": DEFAULT_BUILTIN_CAPACITY, "remote": 10_000}.get(kind, 1)
    if settings is not None and kind in ("command", "python"):
        default_capacity = settings["workers"] * settings["in_flight"]
    capacity = r.integer(
        raw.get("capacity", default_capacity), join(path, "capacity"), 1, MAX_CAPACITY
    )
    timeout = r.duration(raw.get("timeout", DEFAULT_TIMEOUT), join(path, "timeout"))
    max_timeout = r.duration(raw.get("max_timeout", DEFAULT_MAX_TIMEOUT), join(path, "max_timeout"))
    cache = r.boolean(raw.get("cache", kind != "builtin"), join(path, "cache"))
    objective = _objective(r, raw, path, kind, settings)
    if timeout is not None and max_timeout is not None and timeout > max_timeout:
        r.bad(join(path, "timeout"), f"must be at most max_timeout ({max_timeout:g}s)", rules.RANGE)
        return None
    if (
        description is None
        or capacity is None
        or timeout is None
        or max_timeout is None
        or cache is None
    ):
        return None
    return description, capacity, timeout, max_timeout, cache, objective


def _oracle(r: _Reader, oracle_id: str, raw: Any, path: str, base: Path) -> OracleSpec | None:
    if not re.fullmatch(RESOURCE_ID_PATTERN, oracle_id):
        r.bad(path, f"an oracle id must match {RESOURCE_ID_PATTERN}", rules.PATTERN)
        return None
    if not isinstance(raw, Mapping):
        r.bad(path, "must be a mapping of settings with at least `kind`", rules.TYPE)
        return None
    kind = raw.get("kind")
    if kind not in KINDS:
        r.bad(
            join(path, "kind"),
            f"must be one of: {', '.join(KINDS)}",
            rules.REQUIRED if kind is None else rules.ENUM,
        )
        return None
    r.keys(raw, path, _COMMON + _KIND_KEYS[kind])
    before = len(r.found)
    settings = _KIND_READERS[kind](r, raw, path, oracle_id, base)
    common = _common(r, raw, path, kind, settings)
    if len(r.found) > before or settings is None or common is None:
        return None
    description, capacity, timeout, max_timeout, cache, objective = common
    if kind == "builtin" and not description:
        description = BUILTINS[settings["function"]].description
    normalised = {
        "kind": kind,
        "capacity": capacity,
        "timeout": timeout,
        "max_timeout": max_timeout,
        "cache": cache,
        "objective": common_pb2.Objective.Name(objective),
        **settings,
    }
    canonical = json.dumps(normalised, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return OracleSpec(
        id=oracle_id,
        kind=kind,
        description=description,
        capacity=capacity,
        timeout=timeout,
        max_timeout=max_timeout,
        cache=cache,
        objective=objective,
        settings=settings,
        base_dir=base,
        config_hash=hashlib.sha256(canonical.encode()).hexdigest(),
    )


def parse_config(text: str, filename: str, base_dir: Path) -> ConfigCheck:
    """Check a configuration's text (YAML or JSON). Never raises on any input. Blocking:
    it reads the files the oracles name."""
    check = ConfigCheck(filename)
    tree = read_tree(text, filename)
    if tree.violations:
        check.violations = tree.violations
        return check
    r = _Reader(tree, filename)
    root = tree.value
    if not isinstance(root, Mapping) or "oracles" not in root:
        r.bad("oracles", "must be set: a mapping of oracle id to its settings", rules.REQUIRED)
        check.violations = r.found
        return check
    r.keys(root, "", ("oracles",))
    oracles = root["oracles"]
    if not isinstance(oracles, Mapping) or not oracles:
        r.bad("oracles", "must be a non-empty mapping of oracle id to its settings", rules.TYPE)
    elif len(oracles) > MAX_ORACLES:
        r.bad("oracles", f"must hold at most {MAX_ORACLES} oracles", rules.TOO_MANY)
    else:
        for oracle_id, raw in oracles.items():
            spec = _oracle(r, oracle_id, raw, join("oracles", oracle_id), base_dir)
            if spec is not None:
                check.oracles[oracle_id] = spec
    check.violations = r.found
    if check.violations:
        check.oracles = {}
    return check


def read_config(path: Path, data: bytes) -> ConfigCheck:
    """Check a configuration file's bytes (as read by the caller, e.g. with aiofiles)."""
    filename = str(path)
    if len(data) > MAX_CONFIG_BYTES:
        return ConfigCheck(
            filename,
            violations=[
                FieldViolation(
                    "",
                    f"the file is over {MAX_CONFIG_BYTES} bytes",
                    rules.FILE_TOO_LARGE,
                    filename,
                    1,
                )
            ],
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return ConfigCheck(
            filename,
            violations=[
                FieldViolation("", "the file is not UTF-8 text", rules.ENCODING, filename, line)
            ],
        )
    return parse_config(text, filename, path.parent)


def builtin_config(base_dir: Path) -> str:
    """The configuration the embedded suite hosts by default: every builtin that needs no
    instance file under its own name, and `tsp` on berlin52 when `base_dir` holds it."""
    lines = ["oracles:"]
    for name in sorted(BUILTINS):
        if name in ("knapsack", "tsp"):
            continue
        lines += [f"  {name}:", "    kind: builtin"]
    if (base_dir / "berlin52.tsp").is_file():
        lines += ["  tsp:", "    kind: builtin", "    params: {instance: berlin52.tsp}"]
    return "\n".join(lines) + "\n"
