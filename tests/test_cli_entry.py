"""The `helix` program's entry point: glibc's malloc arenas limited (helix.cli.entry)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import HELIX, Processes, clean_env

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/environ").exists() or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="glibc and /proc only",
)


def _environment(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


async def test_helix_runs_with_two_malloc_arenas_unless_told_otherwise(
    processes: Processes, tmp_path: Path
) -> None:
    """A `helix` process runs itself again with MALLOC_ARENA_MAX=2 (same pid, same
    arguments); a value the environment sets is kept."""
    serve = [HELIX, "registry", "serve", "--host", "127.0.0.1", "--port", "0"]
    default = await processes.start([*serve, "--data-dir", str(tmp_path / "a")], clean_env())
    assert b"MALLOC_ARENA_MAX=2" in _environment(default.pid)
    chosen = await processes.start(
        [*serve, "--data-dir", str(tmp_path / "b")], {**clean_env(), "MALLOC_ARENA_MAX": "8"}
    )
    assert b"MALLOC_ARENA_MAX=8" in _environment(chosen.pid)
    assert b"MALLOC_ARENA_MAX=2" not in _environment(chosen.pid)
