"""The two etcd clients considered for issue 14, against one local etcd (docs/decisions.md).

`generated`: Helix's stubs from etcd's rpc.proto (helix.etcdpb) on a grpc.aio channel.
`aetcd`: the aetcd package (PyPI), which Helix does not depend on: give a Python that has
it with --aetcd-python (skipped otherwise). Each client runs in a subprocess of its own
(both register etcd's message names, `etcdserverpb.*`, in protobuf's default pool, so
they cannot share a process); rounds alternate between them against the same etcd.
Each round: N sequential durable puts, then N sequential txns (compare the key's
mod_revision, put on success); the report gives the median per-operation latency.

    python benchmarks/etcd_clients.py [--ops 1000] [--rounds 3] [--aetcd-python PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


async def _generated(endpoint: str, ops: int, prefix: bytes) -> dict[str, float]:
    import grpc

    import helix.etcdpb.rpc_pb2 as rpc
    import helix.etcdpb.rpc_pb2_grpc as rpc_grpc

    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = rpc_grpc.KVStub(channel)
        put_times = []
        for i in range(ops):
            t = time.perf_counter()
            await kv.Put(rpc.PutRequest(key=prefix + b"p%d" % i, value=b"v"), timeout=5)
            put_times.append(time.perf_counter() - t)
        key = prefix + b"txn"
        revision = (await kv.Put(rpc.PutRequest(key=key, value=b"0"), timeout=5)).header.revision
        txn_times = []
        for i in range(ops):
            request = rpc.TxnRequest(
                compare=[
                    rpc.Compare(
                        key=key,
                        target=rpc.Compare.MOD,
                        result=rpc.Compare.EQUAL,
                        mod_revision=revision,
                    )
                ],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"%d" % i))],
            )
            t = time.perf_counter()
            reply = await kv.Txn(request, timeout=5)
            txn_times.append(time.perf_counter() - t)
            assert reply.succeeded
            revision = reply.header.revision
    return {"put": statistics.median(put_times), "txn": statistics.median(txn_times)}


async def _aetcd(endpoint: str, ops: int, prefix: bytes) -> dict[str, float]:
    import aetcd  # type: ignore[import-not-found]

    host, _, port = endpoint.rpartition(":")
    async with aetcd.Client(host=host, port=int(port), timeout=5) as client:
        put_times = []
        for i in range(ops):
            t = time.perf_counter()
            await client.put(prefix + b"p%d" % i, b"v")
            put_times.append(time.perf_counter() - t)
        key = prefix + b"txn"
        await client.put(key, b"0")
        got = await client.get(key)
        revision = got.mod_revision
        txn_times = []
        for i in range(ops):
            t = time.perf_counter()
            succeeded, _ = await client.transaction(
                compare=[client.transactions.mod(key) == revision],
                success=[client.transactions.put(key, b"%d" % i)],
                failure=[],  # its default (None) fails in aetcd 1.0.0: TypeError
            )
            txn_times.append(time.perf_counter() - t)
            assert succeeded
            # aetcd returns no txn header: the new mod_revision costs one more read.
            revision = (await client.get(key)).mod_revision
    return {"put": statistics.median(put_times), "txn": statistics.median(txn_times)}


def worker(client: str, endpoint: str, ops: int, prefix: str) -> None:
    run = _generated if client == "generated" else _aetcd
    print(json.dumps(asyncio.run(run(endpoint, ops, prefix.encode()))))


async def compare(ops: int, rounds: int, aetcd_python: str | None) -> None:
    from etcd_support import EtcdCluster
    from harness import Processes, run_command

    pythons = {"generated": sys.executable}
    if aetcd_python:
        pythons["aetcd"] = aetcd_python
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in pythons}
    with tempfile.TemporaryDirectory(prefix="helix-etcd-bench-") as tmp:
        async with Processes() as processes, EtcdCluster(processes, Path(tmp)) as etcd:
            for r in range(rounds):
                for name, python in pythons.items():
                    argv = [python, __file__, "--worker", name, "--endpoint", etcd.endpoint]
                    argv += ["--ops", str(ops), "--prefix", f"/bench/{name}/{r}/"]
                    code, out, err = await run_command(argv, within=600)
                    if code != 0:
                        raise SystemExit(f"{name} failed:\n{err}")
                    results[name].append(json.loads(out))
    print(f"etcd clients, {ops} sequential ops per round, {rounds} rounds, median latency:")
    base = {k: statistics.median(r[k] for r in results["generated"]) for k in ("put", "txn")}
    for name, runs in results.items():
        line = []
        for kind in ("put", "txn"):
            median = statistics.median(r[kind] for r in runs)
            line.append(f"{kind} {median * 1e6:7.0f} µs ({median / base[kind]:.2f}x generated)")
        print(f"  {name:10s} " + "   ".join(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--aetcd-python")
    parser.add_argument("--worker", choices=["generated", "aetcd"])
    parser.add_argument("--endpoint")
    parser.add_argument("--prefix", default="/bench/")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.endpoint, args.ops, args.prefix)
    else:
        asyncio.run(compare(args.ops, args.rounds, args.aetcd_python))


if __name__ == "__main__":
    main()
