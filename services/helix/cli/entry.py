"""The `helix` program's entry point (the console script and `python -m helix.cli`).

Before anything else it limits glibc's malloc arenas to two, by running itself again with
`MALLOC_ARENA_MAX=2` in its environment (glibc reads it once, when the process starts):

glibc gives every thread that allocates an arena of its own, up to eight per core. The
threads of a Helix process (gRPC's, the breeding and store executors) free in one arena
what another filled, and each arena keeps the pages it once held. Over a long `helix run`
that made resident memory climb by about 20% after warm-up before it levelled off. With
two arenas it stays flat, with no change in speed (benchmarks/results/memory.md).

An environment that sets MALLOC_ARENA_MAX itself (to any value) is left as it is, and so
is a C library other than glibc. Calling `helix.cli.main.main` directly (the tests do)
skips this.
"""

from __future__ import annotations

import contextlib
import os
import sys

ARENAS = "2"
_VARIABLE = "MALLOC_ARENA_MAX"


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (AttributeError, ValueError, OSError):
        return False


def main() -> int:
    """Run the `helix` command (see the module docstring)."""
    if _VARIABLE not in os.environ and _glibc():
        os.environ[_VARIABLE] = ARENAS
        # On failure (cannot run itself again) it goes on with glibc's default arenas.
        with contextlib.suppress(OSError):
            os.execv(sys.executable, [sys.executable, "-m", "helix.cli", *sys.argv[1:]])
    from helix.cli.main import main as run  # imported after the exec, not before

    return run()
