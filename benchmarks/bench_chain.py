"""Unary throughput through the Helix server chain against a bare grpc.aio server.

Both servers run the same echo service (tests/echo_service.py) in a subprocess of their
own, pinned to one core where the OS allows; this process drives them with concurrent
callers. Rounds alternate between the two so machine noise hits both; the report gives
the median calls/s of each and their ratio, measured in this one run.

    python benchmarks/bench_chain.py [--seconds 3] [--rounds 5] [--concurrency 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402

from echo_service import String, stubs  # noqa: E402

MODES = ("bare", "chain", "chain-logged", "secured")
SERVER = ROOT / "benchmarks" / "servers" / "echo_server.py"


async def start(mode: str) -> tuple[asyncio.subprocess.Process, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVER),
        mode,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode().split()
    if os.cpu_count() and os.cpu_count() > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(process.pid, {0})
    return process, f"127.0.0.1:{line[1]}", line[2]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    address: str, concurrency: int, seconds: float, pid: int, token: str = "-"
) -> tuple[float, float]:
    """Calls/s completed by `concurrency` callers in `seconds`, and server CPU µs per call.

    Every mode gets the same bearer-token metadata, so only the server's work differs.
    """
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        unauthenticated = stubs(channel)["Echo"]

        def echo(request: String, timeout: float) -> Any:
            return unauthenticated(request, timeout=timeout, metadata=metadata)

        request = String(value="x" * 64)
        for _ in range(200):  # warm up the connection and the server
            await echo(request, timeout=10)
        done = 0
        deadline = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await echo(request, timeout=10)
                done += 1

        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        return done / elapsed, (cpu_seconds(pid) - cpu_before) / done * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))

    servers = {mode: await start(mode) for mode in MODES}
    results: dict[str, dict[int, list[float]]] = {
        m: {c: [] for c in args.concurrency} for m in servers
    }
    cpu: dict[str, dict[int, list[float]]] = {m: {c: [] for c in args.concurrency} for m in servers}
    try:
        for _ in range(args.rounds):
            for concurrency in args.concurrency:
                for mode, (process, address, token) in servers.items():
                    rate, micros = await drive(
                        address, concurrency, args.seconds, process.pid, token
                    )
                    results[mode][concurrency].append(rate)
                    cpu[mode][concurrency].append(micros)
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            await process.wait()

    report = {}
    print(
        f"unary Echo, {args.rounds} rounds x {args.seconds}s, server on one core:"
        " calls/s and server CPU per call (medians; ratios against bare grpc.aio)"
    )
    for concurrency in args.concurrency:
        medians = {mode: statistics.median(results[mode][concurrency]) for mode in MODES}
        cpus = {mode: statistics.median(cpu[mode][concurrency]) for mode in MODES}
        bare = medians["bare"]
        report[concurrency] = {
            "calls_per_s": medians,
            "server_cpu_us_per_call": cpus,
            "throughput_vs_bare": {m: medians[m] / bare for m in MODES[1:]},
            "cpu_per_call_vs_bare": {m: cpus[m] / cpus["bare"] for m in MODES[1:]},
            "security_cost": {
                "throughput_secured_vs_chain": medians["secured"] / medians["chain"],
                "cpu_per_call_secured_vs_chain": cpus["secured"] / cpus["chain"],
            },
        }
        print(
            f"  concurrency {concurrency:3d}: bare {bare:6.0f}/s {cpus['bare']:5.0f}us"
            + "".join(
                f" | {m} {medians[m]:6.0f}/s ({medians[m] / bare:.2f}x)"
                f" {cpus[m]:5.0f}us ({cpus[m] / cpus['bare']:.2f}x)"
                for m in MODES[1:]
            )
        )
    for concurrency in args.concurrency:
        cost = report[concurrency]["security_cost"]
        print(
            f"  security chain (auth cached + rate limit + validation) at {concurrency:3d}: "
            f"throughput {cost['throughput_secured_vs_chain']:.2f}x of the chain without it, "
            f"server CPU per call {cost['cpu_per_call_secured_vs_chain']:.2f}x"
        )
    print(json.dumps({"bench": "chain", "results": report}))


if __name__ == "__main__":
    asyncio.run(main())
