"""Unary throughput through the Helix server chain against a bare grpc.aio server.

Both servers run the same echo service (tests/echo_service.py) in a subprocess of their
own, on the same event loop (uvloop by default, as `helix up`), pinned to one core where
the OS allows; this process drives them with concurrent callers. Rounds alternate between
the servers so machine noise hits all of them; the report gives the median calls/s of each
and their ratio, measured in this one run.

    python benchmarks/bench_chain.py [--seconds 3] [--rounds 5] [--concurrency 16 64]
                                     [--loop uvloop|asyncio]
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
from harness import Processes, RunningProcess  # noqa: E402

MODES = ("bare", "chain", "chain-logged", "secured")
SERVER = ROOT / "benchmarks" / "servers" / "echo_server.py"


def pin_to_first_core(pid: int) -> None:
    """Servers on core 0, the driving process on the others (where there are others)."""
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {0})


async def start(
    processes: Processes, mode: str, loop: str = "uvloop"
) -> tuple[RunningProcess, str]:
    """An echo server in `mode` on event loop `loop`, pinned to core 0, and its token."""
    server = await processes.start(
        [sys.executable, str(SERVER), mode, "--loop", loop],
        name=f"echo-{mode}-{loop}",
        keep_stderr=mode != "chain-logged",  # a log line per call: not worth a file
    )
    token = (await server.wait_for_line(r"^token (\S+)$"))[1]
    running = (await server.wait_for_line(r"^event loop (\S+)$"))[1]
    if running != loop:
        raise RuntimeError(f"the {mode} echo server runs on {running}, not {loop}")
    pin_to_first_core(server.pid)
    return server, token


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
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))

    results: dict[str, dict[int, list[float]]] = {
        m: {c: [] for c in args.concurrency} for m in MODES
    }
    cpu: dict[str, dict[int, list[float]]] = {m: {c: [] for c in args.concurrency} for m in MODES}
    async with Processes() as processes:
        servers = {mode: await start(processes, mode, args.loop) for mode in MODES}
        for _ in range(args.rounds):
            for concurrency in args.concurrency:
                for mode, (server, token) in servers.items():
                    rate, micros = await drive(
                        server.address, concurrency, args.seconds, server.pid, token
                    )
                    results[mode][concurrency].append(rate)
                    cpu[mode][concurrency].append(micros)

    report = {}
    print(
        f"unary Echo, {args.rounds} rounds x {args.seconds}s, each server on one core and on"
        f" {args.loop}: calls/s and server CPU per call (medians; ratios against bare grpc.aio)"
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
    print(json.dumps({"bench": "chain", "event_loop": args.loop, "results": report}))


if __name__ == "__main__":
    asyncio.run(main())
