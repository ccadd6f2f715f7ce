"""Registry benchmarks, each against its baseline in this one run.

- Heartbeat throughput through the full chain (auth, rate limit with a generous quota,
  validation, access log) of a real `helix up` (or, with `--shape processes`, of
  `helix registry serve`), at 16 and 64 concurrent callers, against a bare grpc.aio unary
  echo server on the same event loop (uvloop, as `helix up`), and, labelled apart,
  against the same bare echo on asyncio's own loop; all servers pinned to the same core.
- Durable RegisterAgent (SQLite, synchronous=FULL, group commit) with 64 callers and 1.
- ListAgents over 10,000 agents in pages of 1,000: p50/p99 per page.
- A burst of 10,000 events delivered to 100 watchers: events/s delivered.
- Server memory (RSS) for 10,000 agents and 100 watchers: bytes per agent.

    python benchmarks/bench_registry.py [--seconds 3] [--rounds 3] [--shape embedded]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.security.client import StaticTokenSource, bearer_interceptors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_chain import cpu_seconds, drive, pin_to_first_core  # noqa: E402
from bench_chain import start as start_echo  # noqa: E402

from harness import SHAPES, Cluster, Processes, Shape  # noqa: E402
from waiting import eventually  # noqa: E402


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def start_registry(processes: Processes, data_dir: Path, shape: Shape) -> tuple[Cluster, str]:
    """The registry of a cluster of `shape` (no generator registered) with generous rate
    limits, pinned to core 0, and a token for it."""
    settings = {
        "rate_read": 1e7,
        "rate_write": 1e7,
        "rate_data": 1e7,
        "registry_max_watchers": 1000,
        "registry_max_agents_per_principal": 100_000,  # one principal registers them all
        "registry_watch_buffer": 20000,
        "registry_progress_interval": "100ms",  # idle watches answer soon (see watch_burst)
    }
    cluster = Cluster(shape, data_dir, generators=0, settings=settings, processes=processes)
    await cluster.start()
    pin_to_first_core(cluster.member("registry").process.pid)
    return cluster, cluster.token("bench", ["agents.read", "agents.write"])


def stub_for(address: str, token: str) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(
        address, interceptors=bearer_interceptors(StaticTokenSource(token))
    )
    return channel, registry_pb2_grpc.RegistryServiceStub(channel)


def agent(i: int) -> registry_pb2.Agent:
    return registry_pb2.Agent(
        kind=registry_pb2.AGENT_KIND_ORACLE,
        endpoint=f"10.0.{i // 250}.{i % 250}:50051",
        capacity=16,
        labels={"zone": f"z{i % 4}", "pool": "bench"},
    )


def register(i: int, prefix: str) -> registry_pb2.RegisterAgentRequest:
    request = registry_pb2.RegisterAgentRequest(
        agent_id=f"{prefix}-{i}", agent=agent(i), request_id=f"{prefix}-req-{i}"
    )
    request.agent.ttl.FromSeconds(300)
    return request


async def heartbeat_rate(
    address: str, token: str, pid: int, concurrency: int, seconds: float
) -> tuple[float, float]:
    """Heartbeats/s and server CPU µs per heartbeat. The token goes as plain metadata, as
    the echo baseline's does: client-side interceptors would make the client the limit."""
    metadata = (("authorization", f"Bearer {token}"),)
    setup_channel, setup = stub_for(address, token)
    async with setup_channel:
        epochs = []
        for i in range(concurrency):
            response = await setup.RegisterAgent(register(i, f"hb{concurrency}"))
            epochs.append((response.agent.name, response.agent.epoch))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for name, epoch in epochs * 5:  # warm up
            await stub.Heartbeat(
                registry_pb2.HeartbeatRequest(name=name, epoch=epoch), metadata=metadata
            )
        done = 0
        deadline = time.perf_counter() + seconds

        async def caller(name: str, epoch: int) -> None:
            nonlocal done
            request = registry_pb2.HeartbeatRequest(name=name, epoch=epoch)
            while time.perf_counter() < deadline:
                await stub.Heartbeat(request, timeout=10, metadata=metadata)
                done += 1

        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(caller(n, e) for n, e in epochs))
        elapsed = time.perf_counter() - started
        return done / elapsed, (cpu_seconds(pid) - cpu_before) / done * 1e6


async def register_rate(address: str, token: str, callers: int, total: int, prefix: str) -> float:
    channel, stub = stub_for(address, token)
    async with channel:
        queue = list(range(total))

        async def caller() -> None:
            while queue:
                await stub.RegisterAgent(register(queue.pop(), prefix), timeout=30)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return total / (time.perf_counter() - started)


async def list_pages(address: str, token: str, rounds: int) -> list[float]:
    channel, stub = stub_for(address, token)
    latencies = []
    async with channel:
        for _ in range(rounds):
            page_token = ""
            while True:
                started = time.perf_counter()
                page = await stub.ListAgents(
                    registry_pb2.ListAgentsRequest(page_size=1000, page_token=page_token)
                )
                latencies.append(time.perf_counter() - started)
                page_token = page.next_page_token
                if not page_token:
                    break
    return latencies


async def watch_burst(address: str, token: str, watchers: int, events: int) -> float:
    channel, stub = stub_for(address, token)
    async with channel:
        start = (await stub.ListAgents(registry_pb2.ListAgentsRequest(page_size=1))).revision + 1
        request = registry_pb2.WatchAgentsRequest(start_revision=start, progress_notify=True)
        streams = [stub.WatchAgents(request) for _ in range(watchers)]
        delivered = 0
        established = 0

        async def read(stream: Any) -> None:
            nonlocal delivered, established
            seen = 0
            first = True
            async for response in stream:
                if first:  # the watch is registered (its first bookmark or events)
                    established, first = established + 1, False
                seen += len(response.events)
                delivered += len(response.events)
                if seen >= events:
                    return

        readers = [asyncio.ensure_future(read(s)) for s in streams]
        # Time the burst, not the setup of the streams: every watch has answered first.
        await eventually(lambda: established == watchers, 30, what="every watch registered")
        started = time.perf_counter()
        writer_channel, writer = stub_for(address, token)
        async with writer_channel:
            queue = list(range(events))

            async def caller() -> None:
                while queue:
                    await writer.RegisterAgent(register(queue.pop(), "burst"), timeout=30)

            await asyncio.gather(*(caller() for _ in range(64)))
        await asyncio.wait_for(asyncio.gather(*readers), 300)
        return delivered / (time.perf_counter() - started)


async def heartbeat_against_baselines(
    address: str, token: str, pid: int, echoes: dict[str, Any], concurrency: int, args: Any
) -> dict[str, float]:
    """Medians of `args.rounds` rounds, alternating the echo baselines and the heartbeat."""
    rates: dict[str, list[float]] = {name: [] for name in [*echoes, "heartbeat"]}
    cpus: dict[str, list[float]] = {name: [] for name in rates}
    for _ in range(args.rounds):
        for loop, (echo, _) in echoes.items():
            rate, cpu = await drive(echo.address, concurrency, args.seconds, echo.pid)
            rates[loop].append(rate)
            cpus[loop].append(cpu)
        rate, cpu = await heartbeat_rate(address, token, pid, concurrency, args.seconds)
        rates["heartbeat"].append(rate)
        cpus["heartbeat"].append(cpu)
    b, h = statistics.median(rates["uvloop"]), statistics.median(rates["heartbeat"])
    bc, hc = statistics.median(cpus["uvloop"]), statistics.median(cpus["heartbeat"])
    ba, bac = statistics.median(rates["asyncio"]), statistics.median(cpus["asyncio"])
    return {
        "bare_echo_per_s": b,
        "heartbeat_per_s": h,
        "ratio": h / b,
        "bare_cpu_us": bc,
        "heartbeat_cpu_us": hc,
        "cpu_ratio": hc / bc,
        "bare_echo_asyncio_per_s": ba,
        "bare_asyncio_cpu_us": bac,
        "ratio_vs_asyncio_echo": h / ba,
        "cpu_ratio_vs_asyncio_echo": hc / bac,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--shape", choices=SHAPES, default="embedded")
    args = parser.parse_args()
    if importlib.util.find_spec("uvloop") is None:
        raise SystemExit("uvloop is not installed: helix and the baseline would not run on it")
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))  # servers get core 0
    report: dict[str, Any] = {"event_loop": "uvloop", "shape": args.shape}
    data = Path(tempfile.mkdtemp(prefix="helix-bench-registry-"))
    async with Processes() as processes:
        # The fair baseline runs on uvloop as helix does; the asyncio one is kept, labelled.
        echoes = {loop: await start_echo(processes, "bare", loop) for loop in ("uvloop", "asyncio")}
        cluster, token = await start_registry(processes, data / "suite", args.shape)
        registry = cluster.member("registry").process
        address = registry.address
        print(
            f"registry benchmarks ({args.shape}), medians of {args.rounds} rounds x"
            f" {args.seconds}s; helix and the bare echo baseline both on uvloop"
        )
        for concurrency in (16, 64):
            row = await heartbeat_against_baselines(
                address, token, registry.pid, echoes, concurrency, args
            )
            report[f"heartbeat_{concurrency}"] = row
            h, b, ba = (
                row["heartbeat_per_s"],
                row["bare_echo_per_s"],
                row["bare_echo_asyncio_per_s"],
            )
            hc, bc, bac = row["heartbeat_cpu_us"], row["bare_cpu_us"], row["bare_asyncio_cpu_us"]
            print(
                f"  heartbeat x{concurrency:2d}: {h:6.0f}/s vs bare echo on uvloop {b:6.0f}/s"
                f" = {h / b:.2f}x  (server CPU/call {hc:.0f}us vs {bc:.0f}us = {hc / bc:.2f}x)"
            )
            print(
                f"      against a bare echo on asyncio instead: {ba:6.0f}/s = {h / ba:.2f}x"
                f"  (server CPU/call {bac:.0f}us = {hc / bac:.2f}x)"
            )
        for callers in (64, 1):
            total = 3000 if callers == 64 else 300
            rate = await register_rate(address, token, callers, total, f"reg{callers}")
            report[f"register_{callers}_callers_per_s"] = rate
            print(f"  durable RegisterAgent, {callers:2d} callers: {rate:7.0f}/s")
        before = rss_bytes(registry.pid)
        await register_rate(address, token, 64, args.agents, "many")
        latencies = await list_pages(address, token, args.rounds)
        p50 = statistics.median(latencies) * 1000
        p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000
        report["list_page_1000_ms"] = {"p50": p50, "p99": p99, "pages": len(latencies)}
        listed = args.agents + 3300
        print(
            f"  ListAgents over {listed} agents, pages of 1000: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )
        rate = await watch_burst(address, token, args.watchers, 10_000)
        report["watch_burst_events_per_s"] = rate
        print(
            f"  burst of 10,000 events to {args.watchers} watchers: {rate:,.0f} events/s delivered"
        )
        after = rss_bytes(registry.pid)
        per_agent = (after - before) / (args.agents + 10_000)
        report["rss_bytes_per_agent"] = per_agent
        print(
            f"  memory: {per_agent:,.0f} bytes per agent (RSS delta, {args.watchers} watchers open)"
        )
        await cluster.close()
    shutil.rmtree(data, ignore_errors=True)
    print(json.dumps({"bench": "registry", "results": report}))


if __name__ == "__main__":
    asyncio.run(main())
