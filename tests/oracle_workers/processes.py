"""The process table, read from /proc: for "no zombie, no stray worker" checks."""

from __future__ import annotations

import os
from pathlib import Path


def processes() -> list[tuple[int, int, str, str]]:
    """(pid, ppid, state, cmdline) of every process on the machine."""
    rows = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        rows.append((int(entry), int(fields[1]), fields[0], cmdline))
    return rows


def leftovers(token: str) -> list[tuple[int, int, str, str]]:
    """Processes whose command line holds `token`, and zombie children of this process."""
    me = os.getpid()
    return [p for p in processes() if token in p[3] or (p[1] == me and p[2] == "Z")]
