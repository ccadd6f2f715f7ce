"""`helix cluster up`: every service in processes of its own on one machine, supervised.

A Python process runs on one core; the cluster puts the registry, the orchestrator, N
generator agents and M oracle agents each in a process (`helix … serve`, the commands
docs/processes.md describes), on loopback ports, and serves them to clients on one address
through the gateway (`helix.cluster.gateway`). The supervisor:

- starts the registry first (its key, `DATA_DIR/keys`, signs everyone's tokens), then the
  orchestrator and the agents, waits for each one's ready line, and prints where each
  listens, then `helix listening on HOST:PORT` (the gateway, like `helix up`);
- restarts a process that exits unbidden, after a back-off that doubles per crash in a
  row (reset once it has run a minute); the registry and the orchestrator come back on
  their first port (the agents are told the registry's address once), agents on any;
- scales the oracle agents between --oracles-min and --oracles-max from the
  orchestrator's backlog (`helix.cluster.autoscale`); a process scaled away is drained,
  not killed: SIGTERM makes it NOT_SERVING, answer the batches it holds, deregister and
  exit, so no verdict is lost;
- stops on SIGTERM or Ctrl-C in order: the gateway stops taking calls, the orchestrator
  checkpoints and exits, then the agents drain, then the registry. A second signal
  kills what is left. The processes are in the supervisor's process group (a signal to
  the group reaches all), ignore SIGINT (Ctrl-C reaches the supervisor, which stops them
  in order) and are sent SIGTERM by the kernel if the supervisor dies (kill -9
  included), so none outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import helix.v1.generator_pb2 as generator_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.cluster.autoscale import Autoscaler, Policy, read_backlog
from helix.cluster.config import ClusterConfig
from helix.cluster.gateway import Routes, gateway_bindings
from helix.common.config import ServerConfig, StoreConfig, env_name, flag_name, format_setting
from helix.common.server import Attachment, HelixServer, create_server

log = logging.getLogger("helix.cluster")

REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
GENERATOR = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
ORACLE = oracle_pb2.DESCRIPTOR.services_by_name["OracleService"].full_name
ORCHESTRATOR = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name

_LISTENING = re.compile(r"^helix (\w+) listening on (\S+)$")
_METRICS = re.compile(r"^helix (\w+) metrics on (\S+)$")
_STABLE = 60.0  # a process that ran this long starts its crash count afresh
_STOP_MARGIN = 5.0  # beyond a process's own grace period before it is killed
_MAX_SCRAPE = 4 * 1024 * 1024
_SCRAPE_TIMEOUT = 5.0


class ClusterError(RuntimeError):
    """The cluster could not start (a process failed to come up)."""


@dataclass(eq=False)
class Child:
    """One supervised process: its role, its command line, and its current process."""

    name: str
    role: str  # registry, orchestrator, generator, oracle
    args: list[str]
    port: int = 0  # fixed after the first start for the registry and the orchestrator
    process: asyncio.subprocess.Process | None = None
    address: str | None = None
    metrics_url: str | None = None
    draining: bool = False
    crashes: int = 0
    started: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    output: list[str] = field(default_factory=list, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


# Server settings that are the gateway's alone (each process listens on loopback, plaintext,
# with its own metrics port) or given to each process explicitly (`Supervisor._common`).
_GATEWAY_ONLY = frozenset(
    {
        "host",
        "port",
        "metrics_port",
        "metrics_host",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "log_level",
        "grace_period",
    }
)


def _changed(config: ClusterConfig, fields: tuple[dataclasses.Field[object], ...]) -> list[str]:
    """`--flag value` for each of `fields` the cluster was given a value other than its
    default for."""
    flags: list[str] = []
    for item in fields:
        value = getattr(config, item.name)
        if value is not None and value != item.default:
            flags += [flag_name(item), format_setting(value)]
    return flags


def _server_flags(config: ClusterConfig) -> list[str]:
    """The server settings every process is given too: limits, keepalive, auth, rate
    limits, the event loop (each process checks the tokens and limits itself)."""
    fields = tuple(f for f in dataclasses.fields(ServerConfig) if f.name not in _GATEWAY_ONLY)
    return _changed(config, fields)


def _store_flags(config: ClusterConfig) -> list[str]:
    """The store flags the registry and the orchestrator are given."""
    server = {f.name for f in dataclasses.fields(ServerConfig)}
    return _changed(
        config, tuple(f for f in dataclasses.fields(StoreConfig) if f.name not in server)
    )


class Supervisor:
    """Runs one cluster until told to stop (`run`)."""

    def __init__(
        self,
        config: ClusterConfig,
        say: Callable[[str], None] | None = None,
        attach: Sequence[Callable[[HelixServer], Attachment]] = (),
    ) -> None:
        self.config = config
        # Served beside the gateway, from its address (the dashboard: helix.cli.cluster).
        self._attach = tuple(attach)
        self._say_to = say or _print
        self.data_dir = config.data_dir.resolve()
        # To the processes: the message limits; their keepalive rules are their own.
        self.routes = Routes(
            [
                ("grpc.max_receive_message_length", int(config.max_receive_message_bytes)),
                ("grpc.max_send_message_length", int(config.max_send_message_bytes)),
            ]
        )
        self.children: list[Child] = []
        self.gateway: HelixServer | None = None
        self.decisions: list[str] = []
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once `helix listening on` is printed
        self._autoscaler: asyncio.Task[None] | None = None
        self._oracle_changes = asyncio.Lock()

    # ---- life cycle -------------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, stop in order; the exit status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal)
        try:
            self.gateway, _ = create_server(
                self.config, gateway_bindings(self.routes), security=None
            )
            self.gateway.attachments.extend(make(self.gateway) for make in self._attach)
            starting = asyncio.create_task(self._start_all())
            stopped = asyncio.create_task(self._stopping.wait())
            await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not starting.done():  # told to stop while starting: stop what has started
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, ClusterError):
                    await starting
                return 0
            try:
                starting.result()
            except ClusterError as exc:
                self.say(f"cannot start: {exc}")
                return 1
            await self.gateway.start()
            self._print_ready()
            self.ready.set()
            low, high = self.config.oracle_bounds
            if low < high:
                self._autoscaler = asyncio.create_task(
                    self._autoscale(
                        Policy(
                            low,
                            high,
                            self.config.scale_up_ratio,
                            self.config.scale_down_ratio,
                            self.config.scale_up_cooldown,
                            self.config.scale_down_window,
                        )
                    )
                )
            await self._stopping.wait()
            return 0
        finally:
            await asyncio.shield(self._stop_all())
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def stop(self) -> None:
        """Begin the orderly stop (what SIGTERM does)."""
        self._stopping.set()

    def _on_signal(self) -> None:
        if not self._stopping.is_set():
            self.say("stopping")
            self._stopping.set()
            return
        self.say("second signal: killing every process")
        for child in self.children:
            if child.running:
                assert child.process is not None
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()

    async def _start_all(self) -> None:
        config = self.config
        for path in (self.data_dir / "registry", self.data_dir / "orchestrator"):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if config.generator_dna_dir is None:
            config.dna_dir.mkdir(mode=0o700, exist_ok=True)
        registry = self._child("registry", "registry", self._registry_args())
        await self._launch(registry)
        waits = [
            self._launch(self._child("orchestrator", "orchestrator", self._orchestrator_args()))
        ]
        for index in range(1, config.generator_count + 1):
            name = f"generator-{index}"
            waits.append(self._launch(self._child(name, "generator", self._generator_args(name))))
        low, _ = config.oracle_bounds
        for index in range(1, low + 1):
            name = f"oracle-{index}"
            waits.append(self._launch(self._child(name, "oracle", self._oracle_args(name))))
        results = await asyncio.gather(*waits, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _child(self, name: str, role: str, args: list[str]) -> Child:
        child = Child(name, role, args)
        self.children.append(child)
        return child

    async def _launch(self, child: Child) -> None:
        """Start `child` for the first time (ClusterError if it does not come up), then
        keep it running."""
        await self._spawn(child)
        child.task = asyncio.create_task(self._keep(child))

    async def _stop_all(self) -> None:
        self._stopping.set()
        if self._autoscaler is not None:
            self._autoscaler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._autoscaler
        if self.gateway is not None:
            try:
                await self.gateway.shutdown()
            except Exception:  # the processes must still be stopped
                log.exception("the gateway's drain failed")
        tasks = [c.task for c in self.children if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The orchestrator first (it checkpoints and lets go of the agents), then the
        # agents (they answer what they hold and deregister), the registry last.
        for roles in (("orchestrator",), ("generator", "oracle"), ("registry",)):
            await asyncio.gather(*(self._terminate(c) for c in self.children if c.role in roles))
        await self.routes.close()
        if self.children:
            self.say("stopped")

    async def _terminate(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        if not (child.draining and child.address is not None):  # (a second one would hurry it)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.config.grace_period + _STOP_MARGIN)
        except TimeoutError:
            self.say(f"{child.name} (pid {process.pid}) did not stop in time: killed")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    # ---- one process ------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env[env_name("auth_hs256_dir")] = str(self.config.key_dir.resolve())
        env.pop(env_name("data_dir"), None)  # each process is given its own
        # The gateway's TLS, not theirs: the processes serve plaintext on loopback.
        for name in [k for k in env if k.startswith(env_name("tls_"))]:
            del env[name]
        return env

    async def _spawn(self, child: Child) -> None:
        """Start the process and wait for its ready line; ClusterError (the process
        stopped) if it exits or stays silent past --process-start-timeout."""
        args = [
            sys.executable,
            "-m",
            "helix.cluster.child",
            str(os.getpid()),
            *child.args,
            "--port",
            str(child.port),
        ]
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env=self._environment(),
        )
        child.process, child.address, child.metrics_url = process, None, None
        child.started = time.monotonic()
        child.output = []
        ready = asyncio.get_running_loop().create_future()
        pump = asyncio.create_task(self._read_output(child, process, ready))
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.config.process_start_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            pump.cancel()
            raise ClusterError(
                f"{child.name} did not say it listens within "
                f"{self.config.process_start_timeout:g}s{_tail(child)}"
            ) from None
        except BaseException:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            pump.cancel()
            raise
        if not ready.result():
            await process.wait()
            raise ClusterError(
                f"{child.name} exited with status {process.returncode} before it listened"
                f"{_tail(child)}"
            )
        if child.role in ("registry", "orchestrator"):
            child.port = int(child.address.rpartition(":")[2]) if child.address else 0
        self._route()
        metrics = f", metrics {child.metrics_url}" if child.metrics_url else ""
        self.say(f"{child.name} (pid {process.pid}) listening on {child.address}{metrics}")

    async def _read_output(
        self, child: Child, process: asyncio.subprocess.Process, ready: asyncio.Future[bool]
    ) -> None:
        """Read the process's stdout: its ready lines, then anything it prints (to our
        stderr, named). Sets `ready` True on the listening line, False at its end."""
        assert process.stdout is not None
        try:
            while True:
                try:
                    raw = await process.stdout.readline()
                except ValueError:  # a line beyond the reader's limit: skip it
                    continue
                if not raw:
                    break
                line = raw.decode(errors="replace").rstrip()
                if not ready.done():
                    child.output = [*child.output[-19:], line]
                if found := _METRICS.match(line):
                    child.metrics_url = found.group(2)
                elif found := _LISTENING.match(line):
                    child.address = _loopback(found.group(2))
                    await self._metrics_line(child, process.stdout)
                    if not ready.done():
                        ready.set_result(True)
                elif ready.done():
                    _relay(child, line)
        finally:
            if not ready.done():
                ready.set_result(False)

    @staticmethod
    async def _metrics_line(child: Child, stdout: asyncio.StreamReader) -> None:
        """The metrics line follows the listening line at once where there is one (the
        registry's and the orchestrator's; the agents print none)."""
        if child.role not in ("registry", "orchestrator"):
            return
        with contextlib.suppress(TimeoutError, ValueError):
            following = await asyncio.wait_for(stdout.readline(), 0.5)
            if metrics := _METRICS.match(following.decode(errors="replace").strip()):
                child.metrics_url = metrics.group(2)

    async def _keep(self, child: Child) -> None:
        """Restart `child` whenever it exits unbidden, with back-off, until the cluster
        stops or the child is drained away."""
        while True:
            assert child.process is not None
            status = await child.process.wait()
            self._route()
            if self._stopping.is_set():
                return
            if child.draining:
                self.say(f"{child.name} (pid {child.process.pid}) drained, exit status {status}")
                self._forget(child)
                return
            if time.monotonic() - child.started >= _STABLE:
                child.crashes = 0
            delay = min(
                self.config.restart_backoff_max,
                self.config.restart_backoff * 2 ** min(child.crashes, 32),
            )
            child.crashes += 1
            self.say(
                f"{child.name} (pid {child.process.pid}) exited with status {status}; "
                f"restarting in {delay:g}s"
            )
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    return
                if child.draining:  # scaled away while it waited: no restart
                    self._forget(child)
                    return
                try:
                    await self._spawn(child)
                except Exception as exc:  # a restart that fails is retried
                    delay = min(self.config.restart_backoff_max, delay * 2)
                    self.say(f"restart of {child.name} failed: {exc}; again in {delay:g}s")
                    continue
                if child.draining and child.process is not None:  # scaled away meanwhile
                    self.say(f"{child.name} (pid {child.process.pid}) draining")
                    with contextlib.suppress(ProcessLookupError):
                        child.process.send_signal(signal.SIGTERM)
                break

    def _forget(self, child: Child) -> None:
        if child in self.children:
            self.children.remove(child)

    def _route(self) -> None:
        """Point the gateway at the processes listening now."""
        live = [c for c in self.children if c.running and c.address and not c.draining]
        for role, service in (
            ("registry", REGISTRY),
            ("orchestrator", ORCHESTRATOR),
            ("generator", GENERATOR),
            ("oracle", ORACLE),
        ):
            self.routes.set(service, [c.address for c in live if c.role == role and c.address])

    # ---- command lines ----------------------------------------------------------------

    def _common(self) -> list[str]:
        return [
            "--host",
            "127.0.0.1",
            "--metrics-port",
            "0",
            "--log-level",
            self.config.log_level,
            "--grace-period",
            format_setting(self.config.grace_period),
            *_server_flags(self.config),
        ]

    def _registry_address(self) -> str:
        """Where the registry listens: its first port, which it keeps across restarts."""
        registry = next(c for c in self.children if c.role == "registry")
        return f"127.0.0.1:{registry.port}"

    def _registry_args(self) -> list[str]:
        return [
            "registry",
            "serve",
            *self._common(),
            "--data-dir",
            str(self.data_dir / "registry"),
            *_store_flags(self.config),
        ]

    def _orchestrator_args(self) -> list[str]:
        return [
            "orchestrator",
            "serve",
            *self._common(),
            "--data-dir",
            str(self.data_dir / "orchestrator"),
            "--registry-address",
            self._registry_address(),
            "--agent-id",
            "orchestrator",
            *_store_flags(self.config),
        ]

    def _generator_args(self, name: str) -> list[str]:
        return [
            "generator",
            "serve",
            *self._common(),
            "--generator-dna-dir",
            str(self.config.dna_dir.resolve()),
            "--registry-address",
            self._registry_address(),
            "--agent-id",
            name,
        ]

    def _oracle_args(self, name: str) -> list[str]:
        config = (
            []
            if self.config.oracle_config is None
            else [
                "--oracle-config",
                str(self.config.oracle_config.resolve()),
            ]
        )
        return [
            "oracle",
            "serve",
            *self._common(),
            *config,
            "--oracle-reports-dir",
            str(self.data_dir / "reports" / name),
            "--registry-address",
            self._registry_address(),
            "--agent-id",
            name,
        ]

    # ---- autoscaling ------------------------------------------------------------------

    def oracle_processes(self) -> list[Child]:
        """The oracle processes that count: running or restarting, not draining."""
        return [c for c in self.children if c.role == "oracle" and not c.draining]

    async def _autoscale(self, policy: Policy) -> None:
        scaler = Autoscaler(policy)
        orchestrator = next(c for c in self.children if c.role == "orchestrator")
        loop = asyncio.get_running_loop()
        complained = False
        while True:
            await asyncio.sleep(self.config.scale_interval)
            try:
                backlog, capacity = read_backlog(await _scrape(orchestrator.metrics_url))
            except (OSError, ValueError, TimeoutError) as exc:
                if not complained:
                    self.say(f"autoscale: cannot read the orchestrator's backlog: {exc}")
                complained = True
                continue
            complained = False
            workers = len(self.oracle_processes())
            decision = scaler.observe(loop.time(), backlog, capacity, workers)
            if decision is not None:
                text = decision.describe()
                self.decisions.append(text)
                del self.decisions[:-1000]
                self.say(f"autoscale: {text}")
                try:
                    await self.scale_oracles(decision.wanted)
                except Exception as exc:  # said; the next sample tries again
                    self.say(f"autoscale: scaling to {decision.wanted} failed: {exc!r}")

    async def scale_oracles(self, wanted: int) -> None:
        """Start or drain oracle processes until `wanted` count (draining ones do not)."""
        async with self._oracle_changes:
            current = self.oracle_processes()
            if wanted > len(current):
                taken = {c.name for c in self.children if c.role == "oracle"}
                names = (f"oracle-{i}" for i in range(1, 10_000) if f"oracle-{i}" not in taken)
                starts = []
                for _ in range(wanted - len(current)):
                    name = next(names)
                    starts.append(
                        self._launch(self._child(name, "oracle", self._oracle_args(name)))
                    )
                for result in await asyncio.gather(*starts, return_exceptions=True):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    if isinstance(result, BaseException):
                        self.say(f"autoscale: {result}")
                self._drop_failed()
            # Those listening first (newest first); one restarting or starting goes when
            # its keeper sees it is draining.
            order = sorted(current, key=lambda c: (c.running and c.address is not None, _index(c)))
            for child in order[::-1][: max(0, len(current) - wanted)]:
                child.draining = True
                self._route()
                if child.running and child.address is not None:
                    assert child.process is not None
                    self.say(f"{child.name} (pid {child.process.pid}) draining")
                    with contextlib.suppress(ProcessLookupError):
                        child.process.send_signal(signal.SIGTERM)

    def _drop_failed(self) -> None:
        """Forget oracle processes that never came up (no keeper task)."""
        self.children = [c for c in self.children if c.task is not None or c.role != "oracle"]

    # ---- output -----------------------------------------------------------------------

    def say(self, text: str) -> None:
        self._say_to(f"helix cluster: {text}")

    def _print_ready(self) -> None:
        assert self.gateway is not None
        low, high = self.config.oracle_bounds
        scale = f"{low}..{high} (autoscaled)" if low < high else str(low)
        self.say(f"oracle processes: {scale}")
        if self.gateway.metrics_port is not None:
            self.say(
                f"gateway metrics on http://{self.config.metrics_host}:{self.gateway.metrics_port}/metrics"
            )
        self._say_to(f"helix listening on {self.gateway.address}")


def _relay(child: Child, line: str) -> None:
    """A line a process printed after its ready line: to our stderr, named."""
    with contextlib.suppress(OSError, ValueError):
        print(f"[{child.name}] {line}", file=sys.stderr, flush=True)


def _index(child: Child) -> int:
    return int(child.name.rpartition("-")[2])


def _tail(child: Child) -> str:
    return (": " + " | ".join(child.output[-5:])) if child.output else ""


def _loopback(address: str) -> str:
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "[::]":
        host = "[::1]"
    return f"{host}:{port}"


def _print(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stdout closed: carry on quietly
        print(text, flush=True)


async def _scrape(url: str | None) -> str:
    """GET a /metrics page over HTTP/1.0 (loopback; bounded in bytes and time)."""
    if url is None:
        raise ValueError("the orchestrator exports no metrics")
    found = re.fullmatch(r"http://([^/:]+|\[[^\]]+\]):(\d+)(/\S*)", url)
    if found is None:
        raise ValueError(f"cannot read metrics from {url!r}")
    host, port, path = found.group(1).strip("[]"), int(found.group(2)), found.group(3)

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            response = b""
            while len(response) <= _MAX_SCRAPE:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                response += chunk
            return response
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    response = await asyncio.wait_for(get(), _SCRAPE_TIMEOUT)
    if len(response) > _MAX_SCRAPE:
        raise ValueError(f"{url} answered more than {_MAX_SCRAPE} bytes")
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    parts = status.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or parts[1] != b"200":
        raise ValueError(f"{url} answered {status[:100]!r}")
    return body.decode(errors="replace")
