"""Shared fixtures: real servers on 127.0.0.1 port 0, real channels, real processes and
Helix clusters of either deployment shape (see harness.py)."""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helix.common.config import Duration, ServerConfig
from helix.common.server import HelixServer, ServiceBinding, create_server

from etcd_support import EtcdCluster, SessionEtcd, etcd_available
from harness import SHAPES, Cluster, Processes, Shape, clean_env

StartServer = Callable[..., Awaitable[HelixServer]]
StartCluster = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start real servers on a free loopback port; all are stopped after the test."""
    started: list[HelixServer] = []

    async def start(
        services: Sequence[ServiceBinding],
        security: Any = None,
        extra_stages: Sequence[Any] = (),
        **overrides: Any,
    ) -> HelixServer:
        settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "grace_period": Duration(1)}
        settings.update(overrides)
        server, _ = create_server(
            ServerConfig(**settings), services, security=security, extra_stages=extra_stages
        )
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.shutdown(0)


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[HelixServer], grpc.aio.Channel]]:
    """Open plain channels to servers; all are closed after the test."""
    channels: list[grpc.aio.Channel] = []

    def open_channel(server: HelixServer) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(server.address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        await channel.close()


@pytest.fixture
def helix_env(tmp_path: Path) -> dict[str, str]:
    """An environment for `helix` subprocesses: no stray HELIX_* settings, a private data dir."""
    # Registry tests count agents and revisions: keep the embedded generator out of them.
    return clean_env({"data_dir": tmp_path / "data", "generator_self_register": False})


@pytest.fixture(autouse=True)
def catalogue_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every error a server in this process sends has a catalogued reason, raised with its
    entry's error class, and every field violation a listed rule code (docs/errors.md)."""
    from helix.common import reasons, rules
    from helix.common.errors import HelixError, InvalidArgument
    from helix.common.status import to_rpc_status as real

    problems: list[str] = []

    def checked(error: HelixError) -> Any:
        entry = reasons.CATALOGUE.get(error.reason)
        if entry is None:
            problems.append(f"reason {error.reason!r} is not catalogued ({error.message})")
        elif not isinstance(error, entry.error):
            expected = entry.error.__name__
            problems.append(f"{error.reason} sent as {type(error).__name__}, not {expected}")
        if isinstance(error, InvalidArgument):
            problems.extend(
                f"rule {v.reason!r} of {v.field} is not listed"
                for v in error.violations
                if v.reason not in rules.RULES
            )
        return real(error)

    monkeypatch.setattr("helix.common.interceptors.to_rpc_status", checked)
    yield
    assert not problems, "\n".join(problems)


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    """Start real processes; every one still running is stopped after the test, however it
    ended. Their stderr is kept in tmp_path/logs."""
    async with Processes(tmp_path / "logs") as started:
        yield started


@pytest.fixture
async def clusters(tmp_path: Path, processes: Processes) -> AsyncIterator[StartCluster]:
    """Start Helix clusters: `await clusters(shape, **options)` (see `harness.Cluster`);
    all are stopped after the test."""
    started: list[Cluster] = []

    async def start(shape: Shape, **options: Any) -> Cluster:
        cluster = Cluster(
            shape, tmp_path / f"{shape}-{len(started) + 1}", processes=processes, **options
        )
        started.append(cluster)
        return await cluster.start()

    yield start
    for cluster in reversed(started):
        await cluster.close()


@pytest.fixture(params=SHAPES)
def shape(request: pytest.FixtureRequest) -> Shape:
    """Each deployment shape in turn: a test taking it runs once embedded, once as
    separate processes."""
    value: Shape = request.param
    return value


@pytest.fixture
async def cluster(shape: Shape, clusters: StartCluster) -> Cluster:
    """A cluster of each shape with default options: the registry and one generator."""
    return await clusters(shape)


@pytest.fixture
async def etcd(tmp_path: Path, processes: Processes) -> AsyncIterator[EtcdCluster]:
    """A real single-member etcd on free loopback ports with a temporary data dir, serving;
    stopped after the test. Skips when the `etcd` binary is not installed."""
    if not etcd_available():
        pytest.skip("the etcd binary is not installed (Debian: apt-get install etcd-server)")
    async with EtcdCluster(processes, tmp_path / "etcd") as started:
        yield started


@pytest.fixture
async def etcd_cluster(tmp_path: Path, processes: Processes) -> AsyncIterator[EtcdCluster]:
    """A real 3-member etcd cluster on loopback, a leader elected and every member serving
    (for fault tests: members can be killed and restarted); stopped after the test."""
    if not etcd_available():
        pytest.skip("the etcd binary is not installed (Debian: apt-get install etcd-server)")
    async with EtcdCluster(processes, tmp_path / "etcd", size=3) as started:
        yield started


@pytest.fixture(scope="session")
def session_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionEtcd]:
    """One real etcd member (fsync on) for the whole session: the suites that run against
    both stores use it, each test under its own key prefix (`store_settings`)."""
    if not etcd_available():
        pytest.skip("the etcd binary is not installed (Debian: apt-get install etcd-server)")
    started = SessionEtcd(tmp_path_factory.mktemp("session-etcd")).start()
    yield started
    started.stop()


@pytest.fixture(params=["sqlite", "etcd"])
def store_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings of each store in turn: a test taking it runs once on the embedded
    SQLite files, once on etcd (the session's member, under a prefix of its own)."""
    if request.param == "sqlite":
        return {}
    etcd: SessionEtcd = request.getfixturevalue("session_etcd")
    return {"store": f"etcd://{etcd.endpoint}", "etcd_prefix": f"/test-{uuid.uuid4().hex}"}


# Tests of whole topologies, faults and benchmarks: minutes of processes starting, dying
# and restarting, through the same library calls (grpcio, protobuf, PyJWT…) the rest of the
# suite makes. `make test` runs them; CI's pass on the oldest releases the dependency ranges
# allow (`make test-lowest`) leaves them out (-m "not slow") to stay well inside its time.
SLOW_FILES = frozenset(
    {
        "test_bench_dashboard.py",
        "test_bench_polyglot.py",
        "test_bench_quality.py",
        "test_bench_run.py",
        "test_bench_scale.py",
        "test_cluster.py",
        "test_contract_stubs.py",
        "test_dashboard_browser.py",
        "test_dashboard_cli.py",
        "test_deploy_compose.py",
        "test_deploy_kubernetes.py",
        "test_loadtest.py",
        "test_node_client.py",
        "test_node_oracle.py",
        "test_orchestrator_reliability.py",
        "test_orchestrator_replicas.py",
        "test_registry_etcd.py",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    """Started in the background of a non-interactive shell (`nohup make test &`, some CI
    runners), the test process inherits SIGINT ignored, and so would every process a test
    starts: a test that sends one Ctrl-C would wait for nothing. The test process takes
    the default back, which the processes it starts inherit. (Before, a test that had
    installed and removed an asyncio SIGINT handler earlier in the same process did it by
    chance: `helix agents watch`'s Ctrl-C test failed when it ran before any such test.)"""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
