"""The `helix` program's entry point: glibc's malloc thresholds fixed (helix.cli.entry)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only"
)

_FIX = "from helix.cli import entry; print(' '.join(entry.fix_malloc_thresholds()))"


def _fix_in_a_new_process(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _FIX],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_thresholds_are_fixed_unless_the_environment_sets_them() -> None:
    """glibc takes both settings (mallopt returns 1); a threshold the environment sets is
    left as it is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    assert _fix_in_a_new_process(env) == "MALLOC_MMAP_THRESHOLD_ MALLOC_TRIM_THRESHOLD_"
    chosen = {**env, "MALLOC_MMAP_THRESHOLD_": "262144"}
    assert _fix_in_a_new_process(chosen) == "MALLOC_TRIM_THRESHOLD_"
