"""The `helix` program's entry point (the console script and `python -m helix.cli`).

Before anything else it fixes two of glibc's malloc thresholds, so that memory a long run
frees goes back to the system (what `MALLOC_MMAP_THRESHOLD_=4194304` and
`MALLOC_TRIM_THRESHOLD_=2097152` in the environment would do):

By default glibc adjusts them as it goes: each time a block it had mmapped is freed, the
mmap threshold rises to that block's size (up to 32 MiB) and the trim threshold to twice
that, so a malloc arena keeps up to 64 MiB free at its top instead of giving it back. A
Helix process has an arena per allocating thread (gRPC's, the breeding and store
executors) and frees blocks of a few hundred KiB every generation, so over a long
`helix run` resident memory rose by about 20% after warm-up before it levelled off. With
the thresholds fixed (blocks of 4 MiB and more mmapped, an arena's free top returned
beyond 2 MiB) it stays flat, and lower, at the same speed (benchmarks/results/memory.md).

A threshold the environment sets is left as it is, and so is a C library other than
glibc. Calling `helix.cli.main.main` directly (the tests do) skips this.

(Limiting the number of arenas instead, MALLOC_ARENA_MAX=2, also kept memory flat, but made
`helix oracle serve` die of SIGSEGV now and then as it started its python workers.
docs/decisions.md says more.)
"""

from __future__ import annotations

import ctypes
import os

# mallopt's parameter numbers (malloc.h), the environment variables that set the same
# values, and the values used here.
THRESHOLDS = {
    "MALLOC_MMAP_THRESHOLD_": (-3, 4 << 20),  # M_MMAP_THRESHOLD
    "MALLOC_TRIM_THRESHOLD_": (-1, 2 << 20),  # M_TRIM_THRESHOLD
}


def fix_malloc_thresholds() -> list[str]:
    """Fix glibc's mmap and trim thresholds (module docstring); returns the environment
    names of those it set (none where the environment sets them, or not glibc)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return []
        libc = ctypes.CDLL(None)
    except (AttributeError, ValueError, OSError):
        return []
    done = []
    for variable, (parameter, value) in THRESHOLDS.items():
        if variable not in os.environ and libc.mallopt(parameter, value) == 1:
            done.append(variable)
    return done


def main() -> int:
    """Run the `helix` command (see the module docstring)."""
    fix_malloc_thresholds()
    from helix.cli.main import main as run  # imported after the setting, not before

    return run()
