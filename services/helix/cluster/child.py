"""`python -m helix.cluster.child PARENT_PID ARGS…`: how the supervisor starts each process.

It leaves SIGINT ignored (Ctrl-C in a terminal reaches the whole process group; the
supervisor alone acts on it, stopping the processes in order) and asks the kernel to send
SIGTERM when the supervisor dies (kill -9 included), then becomes `python -m helix.cli
ARGS…` (exec: same pid; both settings survive it). Doing this in a process of its own
rather than between fork and exec keeps the supervisor's gRPC threads out of a fork.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent = int(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the orderly stop still works
        pass
    if os.getppid() != parent:  # the supervisor died before the request took effect
        sys.exit(1)
    os.execv(sys.executable, [sys.executable, "-m", "helix.cli", *argv[1:]])


if __name__ == "__main__":
    main(sys.argv[1:])
