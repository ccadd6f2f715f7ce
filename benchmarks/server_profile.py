"""Where a server process spends its CPU: py-spy's sampled stacks and /proc's per-thread time.

For benchmarks that drive a server in another process:

- `thread_cpu(pid)`: each thread's CPU seconds so far (/proc/PID/task/TID/stat);
- `record(pid, seconds, out)`: py-spy (`pip install py-spy`) samples the process without
  pausing it (`--nonblocking`; idle threads are left out) and writes its raw, collapsed
  stacks to `out`, one thread per stack root (`--threads`);
- `thread_names(out)` maps thread ids to Python thread names from those stacks, and
  `summarise(out, cpu, top)` gives the functions taking the most of the process's CPU,
  self and total: each thread's samples weighed by its CPU time. A Python function's
  self time includes the C it calls (protobuf parsing, NumPy).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def thread_cpu(pid: int) -> dict[int, float]:
    """Each thread of `pid` (by thread id): the CPU seconds it has used so far."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def py_spy() -> str | None:
    """The py-spy executable (this interpreter's, else on PATH), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: int, out: Path, rate: int = 250) -> asyncio.subprocess.Process:
    """Start py-spy sampling `pid` for `seconds` into `out` (raw format); await its
    `communicate()` for the end."""
    spy = py_spy()
    if spy is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    await asyncio.to_thread(out.unlink, missing_ok=True)
    return await asyncio.create_subprocess_exec(
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nonblocking",
        "--threads",
        "-o",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


def _stacks(raw: Path) -> list[tuple[str, list[str], int]]:
    """(thread root, frames outermost first, samples) of each line of py-spy's raw output."""
    out = []
    for text in raw.read_text().splitlines():
        stack, _, count = text.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        root = frames[0] if frames[0].startswith("thread (") else ""
        out.append((root, frames[1:] if root else frames, int(count)))
    return out


def thread_names(raw: Path) -> dict[int, str]:
    """Thread id -> Python thread name, from `--threads` stacks ("thread (1234): Main")."""
    found = {}
    for root, _, _ in _stacks(raw):
        if root:
            tid, _, name = root.removeprefix("thread (").partition(")")
            found[int(tid)] = name.removeprefix(":").strip() or "?"
    return found


def _function(frame: str) -> tuple[str, str]:
    """py-spy's "name (file:line)" as ("name (file)", "line")."""
    name, _, place = frame.rpartition(" (")
    where, _, line = place.rstrip(")").rpartition(":")
    return f"{name} ({where})", line


@dataclass(frozen=True)
class Hot:
    """A function's share of the server's CPU: itself, and with what it calls."""

    function: str
    self_percent: float
    total_percent: float
    hottest_line: str


def summarise(raw: Path, cpu: Mapping[int, float], top: int) -> list[Hot]:
    """The `top` functions by self time, as shares of the process's CPU.

    py-spy's samples say where each thread spends its time, but a thread blocked on the
    GIL or in a C call may be sampled as active: so each thread's samples are weighed by
    its CPU seconds from /proc (`cpu`, by thread id) — a mostly waiting thread counts
    little however often it was sampled. Threads py-spy did not see (C threads) count in
    the whole, in no function.
    """
    per_thread: dict[int, Counter[tuple[str, ...]]] = {}
    for root, frames, count in _stacks(raw):
        tid = root.removeprefix("thread (").partition(")")[0]
        if frames and tid.isdigit():
            per_thread.setdefault(int(tid), Counter())[tuple(frames)] += count
    spent = sum(cpu.values())
    own: defaultdict[str, float] = defaultdict(float)
    total: defaultdict[str, float] = defaultdict(float)
    lines: defaultdict[tuple[str, str], float] = defaultdict(float)
    for thread, stacks in per_thread.items():
        weight = 100 * cpu.get(thread, 0.0) / spent / sum(stacks.values())
        for stack, samples in stacks.items():
            parsed = [_function(f) for f in stack]
            leaf, line = parsed[-1]
            own[leaf] += samples * weight
            lines[leaf, line] += samples * weight
            for name in {name for name, _ in parsed}:
                total[name] += samples * weight
    hot = []
    for name in sorted(own, key=own.__getitem__, reverse=True)[:top]:
        hottest = max((k for k in lines if k[0] == name), key=lines.__getitem__)[1]
        hot.append(Hot(name, own[name], total[name], hottest))
    return hot
