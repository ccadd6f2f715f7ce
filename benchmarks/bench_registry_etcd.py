"""The registry on etcd against the registry on SQLite, in this one run.

The same `helix up` registry (uvloop, the full chain), once on its SQLite file
(synchronous=FULL, group commit) and once on a real single-member etcd on loopback (fsync
on, as etcd always is), rounds alternating:

- durable RegisterAgent/s at 64 callers (each answered once its change is durable);
- Heartbeat/s at 64 callers (SQLite: an in-memory lease; etcd: a LeaseKeepAlive round
  trip to etcd's leader on one shared stream);
- a burst of registrations delivered to 100 watchers: events/s delivered;
- two replicas on the same etcd, 32 callers each: durable RegisterAgent/s in all.

The issue's bar: the etcd backend's durable writes at least 0.5x SQLite's.

    python benchmarks/bench_registry_etcd.py [--rounds 3] [--seconds 2] [--registrations 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_chain import pin_to_first_core  # noqa: E402
from bench_registry import heartbeat_rate, register, stub_for, watch_burst  # noqa: E402

from etcd_support import EtcdCluster, etcd_available  # noqa: E402
from harness import Cluster, Processes  # noqa: E402

SETTINGS = {
    "rate_read": 1e7,
    "rate_write": 1e7,
    "rate_data": 1e7,
    "registry_max_watchers": 1000,
    "registry_max_agents_per_principal": 100_000,
    "registry_watch_buffer": 20000,
    "registry_progress_interval": "100ms",
}


async def start(processes: Processes, root: Path, store: dict[str, str]) -> tuple[Cluster, str]:
    cluster = await start_cluster(processes, root, store)
    return cluster, cluster.token("bench", ["agents.read", "agents.write"])


async def start_cluster(processes: Processes, root: Path, store: dict[str, str]) -> Cluster:
    cluster = Cluster(
        "embedded",
        root / uuid.uuid4().hex,
        generators=0,
        settings={**SETTINGS, **store},
        processes=processes,
    )
    await cluster.start()
    pin_to_first_core(cluster.member("registry").process.pid)
    return cluster


async def registrations(addresses: list[str], token: str, callers: int, total: int) -> float:
    """Durable RegisterAgent/s: `callers` callers spread over `addresses`."""
    stubs = [stub_for(address, token) for address in addresses]
    prefix = "r" + uuid.uuid4().hex[:8]
    queue = list(range(total))

    async def caller(k: int) -> None:
        stub = stubs[k % len(stubs)][1]
        while queue:
            await stub.RegisterAgent(register(queue.pop(), prefix), timeout=30)

    started = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(callers)))
    elapsed = time.perf_counter() - started
    for channel, _ in stubs:
        await channel.close()
    return total / elapsed


async def one_round(
    processes: Processes, root: Path, store: dict[str, str], args: argparse.Namespace
) -> dict[str, float]:
    cluster, token = await start(processes, root, store)
    try:
        address = cluster.address_of("registry")
        pid = cluster.member("registry").process.pid
        figures = {
            "register_per_s": await registrations([address], token, 64, args.registrations),
            "heartbeat_per_s": (await heartbeat_rate(address, token, pid, 64, args.seconds))[0],
            "watch_events_per_s": await watch_burst(address, token, 100, args.events),
        }
    finally:
        await cluster.close()
    return figures


async def two_replicas(
    processes: Processes, root: Path, store: dict[str, str], args: argparse.Namespace
) -> float:
    prefix = f"/bench-{uuid.uuid4().hex}"
    first, token = await start(processes, root, {**store, "etcd_prefix": prefix})
    keys = first.data_dir / "keys"
    second = await start_cluster(
        processes, root, {**store, "etcd_prefix": prefix, "auth_hs256_dir": str(keys)}
    )
    try:
        addresses = [first.address_of("registry"), second.address_of("registry")]
        return await registrations(addresses, token, 64, args.registrations)
    finally:
        await second.close()
        await first.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--registrations", type=int, default=2000)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    if not etcd_available():
        print("bench_registry_etcd: the etcd binary is not installed; skipped")
        return
    with tempfile.TemporaryDirectory(prefix="helix-bench-etcd-") as tmp:
        root = Path(tmp)
        processes = Processes(root / "logs")
        try:
            etcd = await EtcdCluster(processes, root / "etcd").start()
            stores = {"sqlite": {}, "etcd": {"store": etcd.url}}
            results: dict[str, list[dict[str, float]]] = {name: [] for name in stores}
            replicas: list[float] = []
            for _ in range(args.rounds):
                for name, store in stores.items():
                    fresh = {**store, "etcd_prefix": f"/bench-{uuid.uuid4().hex}"} if store else {}
                    results[name].append(await one_round(processes, root, fresh, args))
                replicas.append(await two_replicas(processes, root, stores["etcd"], args))
        finally:
            await processes.close()
    medians = {
        name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        for name, rounds in results.items()
    }
    report: dict[str, Any] = {"medians": medians, "two_etcd_replicas_register_per_s": 0.0}
    report["two_etcd_replicas_register_per_s"] = statistics.median(replicas)
    report["ratios_etcd_over_sqlite"] = {
        key: medians["etcd"][key] / medians["sqlite"][key] for key in medians["sqlite"]
    }
    print(json.dumps(report, indent=2))
    ratio = report["ratios_etcd_over_sqlite"]["register_per_s"]
    print(f"durable RegisterAgent/s on etcd: {ratio:.2f}x SQLite's (bar: >= 0.5x)")


if __name__ == "__main__":
    asyncio.run(main())
