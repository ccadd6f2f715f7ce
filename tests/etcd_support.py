"""Real etcd for tests and benchmarks: one member or a cluster of several, on loopback.

`EtcdCluster(processes, data_root, size=1)` starts the `etcd` binary (Debian's
`etcd-server`; `.ci/run` installs it) through harness.Processes: free client and peer
ports on 127.0.0.1, a data dir per member under `data_root`, and `start()` returns once
every member answers a linearizable read (a leader is elected and a quorum serves).
Members can be stopped (SIGTERM, then SIGKILL after a grace), killed (-9) and restarted
on the same ports and data; `close()` (or leaving `async with`) stops them all.

The `etcd` and `etcd_cluster` fixtures of conftest.py wrap it. Health is checked with
Helix's own etcd stubs (helix.etcdpb, generated from etcd's rpc.proto).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

import helix.etcdpb.rpc_pb2 as etcd_rpc
import helix.etcdpb.rpc_pb2_grpc as etcd_grpc

from harness import CLIENT_OPTIONS, ProcessError, Processes, RunningProcess
from tls_support import Pki

ETCD = "etcd"
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
# etcd drains in well under a second; a member left without quorum can wait out a leadership
# transfer for several (nothing to keep in a test's data dir): SIGKILL it after this.
STOP_GRACE = 2.0
_PROBE_TIMEOUT = 1.0
_START_ATTEMPTS = 3  # a free port taken by someone else between probe and bind: retry


def etcd_available() -> bool:
    """Whether the `etcd` binary is on PATH."""
    return shutil.which(ETCD) is not None


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (all held open until all are found)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


@dataclass
class EtcdMember:
    """One etcd process: its name, ports and data dir, and the process once started."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: RunningProcess | None = field(default=None, repr=False)
    tls: Pki | None = field(default=None, repr=False)  # serve clients over TLS with these

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:port` of its client (gRPC) listener."""
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.endpoint}"

    def channel(self) -> grpc.aio.Channel:
        """A channel to its client listener (TLS with the test CA and client certificate
        when it serves TLS)."""
        if self.tls is None:
            return grpc.aio.insecure_channel(self.endpoint, options=CLIENT_OPTIONS)
        pki = self.tls
        credentials = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
        return grpc.aio.secure_channel(self.endpoint, credentials, options=CLIENT_OPTIONS)

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running


class EtcdCluster:
    """`size` etcd members on loopback (size 1: a single server), started and stopped
    together through `processes`."""

    def __init__(
        self,
        processes: Processes,
        data_root: Path,
        *,
        size: int = 1,
        token: str = "helix-test",
        tls: Pki | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster has at least one member")
        self.processes = processes
        self.data_root = data_root
        self.size = size
        self.token = token
        self.tls = tls  # clients must speak TLS and show a certificate of the test CA
        self.members: list[EtcdMember] = []

    # --- what it is ------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """Every member's `host:port`, in member order."""
        return [m.endpoint for m in self.members]

    @property
    def endpoint(self) -> str:
        """The first member's `host:port` (a single server's only one)."""
        return self.members[0].endpoint

    @property
    def url(self) -> str:
        """`etcd://host:port[,host:port...]`, the form `--store` takes."""
        return "etcd://" + ",".join(self.endpoints)

    def member(self, name: str) -> EtcdMember:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no etcd member {name!r}; members: {[m.name for m in self.members]}")

    # --- life cycle ------------------------------------------------------------------------

    async def start(self, within: float = START_TIMEOUT) -> EtcdCluster:
        """Start every member and wait until each serves a linearizable read."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._plan()
            try:
                await asyncio.gather(*(self._launch(m) for m in self.members))
                await self.wait_healthy(within)
                return self
            except ProcessError:
                await self._stop_members(grace=0)
                if attempt == _START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _plan(self) -> None:
        ports = free_ports(2 * self.size)
        attempt_dir = self.data_root / f"etcd-{ports[0]}"
        self.members = [
            EtcdMember(
                name=f"etcd{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=attempt_dir / f"etcd{i}",
                tls=self.tls,
            )
            for i in range(self.size)
        ]

    def _argv(self, member: EtcdMember) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            ETCD,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
            *(
                [
                    f"--cert-file={self.tls.server_cert}",
                    f"--key-file={self.tls.server_key}",
                    f"--trusted-ca-file={self.tls.ca}",
                    "--client-cert-auth",
                ]
                if self.tls is not None
                else []
            ),
        ]

    async def _launch(self, member: EtcdMember) -> None:
        # etcd logs to stderr (kept in the Processes' log dir); readiness is probed over gRPC.
        member.process = await self.processes.start(
            self._argv(member), ready=None, name=member.name
        )

    async def wait_healthy(self, within: float = START_TIMEOUT) -> None:
        """Wait until every running member answers a linearizable read; ProcessError if
        one ends or the deadline passes first."""
        running = [m for m in self.members if m.running]
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*(_until_serving(m) for m in running))
        except TimeoutError:
            raise ProcessError(self._describe(f"not healthy within {within}s")) from None

    async def stop(self, name: str, grace: float = STOP_GRACE) -> int:
        """SIGTERM one member, SIGKILL after `grace` seconds; its exit status."""
        return await self._process(name).stop(grace)

    async def kill(self, name: str) -> int:
        """kill -9 one member."""
        return await self._process(name).kill()

    async def restart(self, name: str, within: float = START_TIMEOUT) -> EtcdMember:
        """Start a stopped (or running: stopped first) member again, same ports and data,
        and wait until it serves."""
        member = self.member(name)
        await self._process(name).restart()
        try:
            async with asyncio.timeout(within):
                await _until_serving(member)
        except TimeoutError:
            raise ProcessError(self._describe(f"{name} not healthy within {within}s")) from None
        return member

    async def leader(self) -> EtcdMember:
        """The member that is the raft leader now (asked of the running members)."""
        by_id: dict[int, EtcdMember] = {}
        leader_id = 0
        for member in self.members:
            if not member.running:
                continue
            with contextlib.suppress(grpc.aio.AioRpcError):
                status = await _status(member)
                by_id[status.header.member_id] = member
                leader_id = status.leader or leader_id
        if leader_id not in by_id:
            raise LookupError("no running etcd member reports a leader that is running")
        return by_id[leader_id]

    async def close(self, grace: float = STOP_GRACE) -> None:
        """Stop every member still running, all at once (SIGTERM, `grace`, SIGKILL)."""
        await self._stop_members(grace)

    async def _stop_members(self, grace: float) -> None:
        started = [m.process for m in self.members if m.process is not None and m.running]
        await asyncio.gather(*(p.stop(grace) for p in started), return_exceptions=True)

    async def __aenter__(self) -> EtcdCluster:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _process(self, name: str) -> RunningProcess:
        process = self.member(name).process
        if process is None:
            raise RuntimeError(f"etcd member {name} was never started")
        return process

    def _describe(self, what: str) -> str:
        logs = "\n".join(_tail(m) for m in self.members)
        return f"etcd cluster {self.endpoints} {what}\n{logs}"


def _tail(member: EtcdMember, lines: int = 15) -> str:
    if member.process is None:
        return f"--- {member.name}: not started"
    code = member.process.returncode
    state = "running" if code is None else f"exit status {code}"
    text = "\n".join(member.process.stderr_text().splitlines()[-lines:])
    return f"--- {member.name} ({state}), stderr:\n{text}"


async def _status(member: EtcdMember) -> etcd_rpc.StatusResponse:
    async with member.channel() as channel:
        stub = etcd_grpc.MaintenanceStub(channel)
        return await stub.Status(etcd_rpc.StatusRequest(), timeout=_PROBE_TIMEOUT)


async def _until_serving(member: EtcdMember) -> None:
    """Poll `member` until it answers a linearizable Range (what `etcdctl endpoint health`
    checks); ProcessError at once if its process ends."""
    async with member.channel() as channel:
        kv = etcd_grpc.KVStub(channel)
        while True:
            process = member.process
            if process is None or not process.running:
                raise ProcessError(_tail(member, 40))
            with contextlib.suppress(grpc.aio.AioRpcError):
                await kv.Range(etcd_rpc.RangeRequest(key=b"health"), timeout=_PROBE_TIMEOUT)
                return
            await asyncio.sleep(0.05)


class SessionEtcd:
    """One etcd member for a whole test session, started and stopped without an event loop
    (a session fixture outlives every test's loop): the suites that run against both
    stores share it, each test under a key prefix of its own. Its log is kept in
    `data_dir/etcd.log` and shown if it does not start."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self, within: float = START_TIMEOUT) -> SessionEtcd:
        client, peer = free_ports(2)
        member = EtcdMember("etcd0", client, peer, self.data_dir / "member")
        cluster = EtcdCluster.__new__(EtcdCluster)
        cluster.members, cluster.token, cluster.tls = [member], "helix-session", None
        with (self.data_dir / "etcd.log").open("wb") as log:
            self.process = subprocess.Popen(
                cluster._argv(member), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        self.endpoint = member.endpoint
        deadline = time.monotonic() + within
        with grpc.insecure_channel(self.endpoint) as channel:
            kv = etcd_grpc.KVStub(channel)
            while True:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    text = (self.data_dir / "etcd.log").read_text(errors="replace")[-3000:]
                    raise ProcessError(f"the session's etcd did not start:\n{text}")
                with contextlib.suppress(grpc.RpcError):
                    kv.Range(etcd_rpc.RangeRequest(key=b"health"), timeout=_PROBE_TIMEOUT)
                    return self
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
