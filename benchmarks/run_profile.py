"""Where a `helix run` spends its time: py-spy's samples of the child process, grouped.

`profile_helix` runs `helix run` (benchmarks/helix_cli.py) under `py-spy record --gil
--format raw`: py-spy samples the child's Python stacks `rate` times a second, keeping only
the samples of the thread that holds the GIL, so the samples add up to the Python CPU time
of the process (every service of the embedded suite shares one interpreter and one GIL;
NumPy and SQLite work that releases the GIL, and gRPC's C core, are not in them).

`split` puts each sample in one part, by the innermost frame of Helix's own code that is
not a shared library (helix.genome, helix.common other than the RPC plumbing):

- generate: helix.generator (the GeneratorService handler, validation, ranking, breeding,
  encoding candidates, streaming them);
- verify: helix.oracle (the oracle agent's VerifyStream, scoring, the verdict report) and
  helix.orchestrator.dispatch (the orchestrator feeding candidates to oracle agents);
- orchestrate: the rest of helix.orchestrator (the generation loop, duplicate window,
  ranking, retained candidates, events, the run store's commits);
- rpc plumbing and auth: helix.common's call chain (interceptors, the response-stream
  writer `send_responses` of every service, server, channels), helix.security (token
  checks), helix.registry and helix.agents (discovery);
- client: `helix run`'s own work (WatchRun, progress display, run directory, plot);
- startup: imports;
- event loop and gRPC: samples with no Helix frame (asyncio's loop, grpc.aio internals).
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from helix_cli import HelixRun, finish_helix, start_helix

PARTS = (
    "generate",
    "verify",
    "orchestrate",
    "rpc plumbing and auth",
    "client",
    "startup",
    "event loop and gRPC",
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?):(?P<line>\d+)\)$")
# Frames that hold every sample of the main thread: never its part.
_ROOTS = {
    ("cli/__main__.py", "<module>"),
    ("cli/entry.py", "main"),
    ("cli/main.py", "<module>"),
    ("cli/main.py", "main"),
    ("cli/runs.py", "_main"),
    ("cli/runs.py", "add_run_commands.<locals>.<lambda>"),
}
_PLUMBING = (
    "common/interceptors.py",
    "common/streams.py",
    "common/server.py",
    "common/channel.py",
)


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.is_file() else shutil.which("py-spy")


@dataclass
class Profile:
    """The grouped samples of one profiled run."""

    rate: int
    samples: int = 0
    parts: collections.Counter[str] = field(default_factory=collections.Counter)
    # part -> "function (module:line)" -> samples, for the innermost Helix frame
    functions: dict[str, collections.Counter[str]] = field(default_factory=dict)
    # the innermost frame of any code (self time), "function (module:line)" -> samples
    leaves: collections.Counter[str] = field(default_factory=collections.Counter)

    def seconds(self, part: str | None = None) -> float:
        return (self.parts[part] if part else self.samples) / self.rate

    def share(self, part: str) -> float:
        return self.parts[part] / self.samples if self.samples else 0.0


def _helix_module(path: str) -> str | None:
    """'orchestrator/search.py' for a frame of services/helix/orchestrator/search.py."""
    marker = "/helix/"
    at = path.rfind(marker)
    if at < 0 or "/site-packages/" in path[at:]:
        return None
    module = path[at + len(marker) :]
    return module if "/" in module or module.endswith(".py") else None


def _part(module: str) -> str | None:
    top = module.split("/", 1)[0]
    if top == "generator":
        return "generate"
    if top == "oracle" or module == "orchestrator/dispatch.py":
        return "verify"
    if top == "orchestrator":
        return "orchestrate"
    if top in ("security", "registry", "agents") or module in _PLUMBING:
        return "rpc plumbing and auth"
    if top == "cli":
        return "client"
    return None  # a shared library (genome, common): its caller decides


def classify(frames: list[str]) -> tuple[str, str]:
    """(part, the deciding frame) for one sample's stack, outermost frame first."""
    for text in reversed(frames):
        if "importlib._bootstrap" in text:
            return "startup", "imports"
        match = _FRAME.match(text)
        if match is None:
            continue
        module = _helix_module(match["file"])
        if module is None or (module, match["function"]) in _ROOTS:
            continue
        part = _part(module)
        if part is not None:
            return part, f"{match['function']} ({module}:{match['line']})"
    return "event loop and gRPC", _short(frames[-1]) if frames else "?"


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    module = _helix_module(path)
    if module is None:
        at = path.find("/site-packages/")
        module = path[at + len("/site-packages/") :] if at >= 0 else Path(path).name
    return f"{match['function']} ({module}:{match['line']})"


def read_raw(lines: Iterable[str], rate: int) -> Profile:
    """Group py-spy's raw output ("frame;frame;... count" per line)."""
    profile = Profile(rate)
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        part, frame = classify(frames)
        profile.samples += n
        profile.parts[part] += n
        profile.functions.setdefault(part, collections.Counter())[frame] += n
        if frames:
            profile.leaves[_short(frames[-1])] += n
    return profile


def profile_helix(
    dna: Path, oracle: str, budget: int, seed: int, out: Path, rate: int = 200
) -> tuple[HelixRun, Profile]:
    """`helix run` under py-spy (module docstring); RuntimeError when py-spy is missing or
    cannot attach (it needs ptrace)."""
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[dev]')")
    raw = out.parent / f"{out.name}.pyspy.txt"
    prefix = [
        spy,
        "record",
        "--gil",
        "--full-filenames",
        "--format",
        "raw",
        "--rate",
        str(rate),
        "--output",
        str(raw),
        "--",
    ]
    started = start_helix(dna, oracle, budget, seed, out, prefix=prefix)
    try:
        run = finish_helix(started)
    except (RuntimeError, subprocess.TimeoutExpired) as failed:
        raise RuntimeError(f"the profiled run failed: {failed}") from None
    if not raw.is_file():
        raise RuntimeError(f"py-spy wrote no profile to {raw}")
    with raw.open(encoding="utf-8") as lines:
        return run, read_raw(lines, rate)
