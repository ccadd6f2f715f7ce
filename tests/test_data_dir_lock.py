"""One process per data dir: a second `helix up` (or `helix registry serve`) on a data dir
in use exits at once naming the holder, and the first keeps serving writes."""

from __future__ import annotations

import pytest

import helix.v1.registry_pb2 as registry_pb2
from helix.common.config import DataDirBusy

from harness import clean_env
from harness import run_helix as run
from registry_support import register_request, start_suite
from waiting import eventually

# "At once": well before a second server could have started and registered its generator.
REFUSED_WITHIN = 20.0


async def test_a_second_suite_on_a_data_dir_in_use_exits_at_once(clusters):
    cluster = await clusters("embedded")  # its generator registers itself, as `make run`'s does
    registry = cluster.registry()
    await eventually(
        lambda: _registered(registry, "agents/embedded-generator"),
        what="the first suite's generator to register",
    )
    first = cluster.member("suite").process
    data_dir = str(cluster.data_dir)

    code, out, err = await run(
        "up", "--port", "0", "--data-dir", data_dir, env=clean_env(), within=REFUSED_WITHIN
    )

    assert code == 1, err
    assert "listening" not in out
    assert "Traceback" not in err
    line = err.strip()
    assert "\n" not in line
    assert data_dir in line
    assert f"pid {first.pid}" in line  # the holder, by pid and command line
    assert " up " in line
    # The first suite never noticed: it still commits writes.
    response = await registry.RegisterAgent(register_request("after-refusal"), timeout=5)
    assert response.agent.name == "agents/after-refusal"
    assert "UNIQUE constraint" not in first.stderr_text()


async def test_a_standalone_registry_is_refused_a_suite_data_dir(clusters):
    cluster = await clusters("embedded", generators=0)
    code, out, err = await run(
        "registry",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(cluster.data_dir),
        env=clean_env(),
        within=REFUSED_WITHIN,
    )
    assert code == 1, err
    assert "listening" not in out
    assert f"pid {cluster.member('suite').process.pid}" in err


async def test_the_lock_dies_with_its_process(clusters):
    cluster = await clusters("embedded", generators=0)
    registry = cluster.registry()
    await registry.RegisterAgent(register_request("before-kill"), timeout=5)
    await cluster.kill("suite")  # kill -9: no chance to release anything
    assert (cluster.data_dir / "helix.lock").exists()  # the file stays; the lock does not
    await cluster.restart("suite")
    found = await cluster.registry().GetAgent(
        registry_pb2.GetAgentRequest(name="agents/before-kill"), timeout=5
    )
    assert found.agent.name == "agents/before-kill"


async def test_in_process_suites_take_the_lock_in_turn(tmp_path):
    data = tmp_path / "data"
    first = await start_suite(data)
    try:
        with pytest.raises(DataDirBusy, match="one process per data dir"):
            await start_suite(data)
        await first.stub().RegisterAgent(register_request("a1"), timeout=5)
    finally:
        await first.close()
    # Released when the suite stopped: the next one (and the one after) start.
    for _ in range(2):
        again = await start_suite(data)
        await again.close()


async def test_a_failed_start_releases_the_lock(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "registry.sqlite3").write_bytes(b"not a database" * 1000)
    with pytest.raises(Exception, match=r"registry\.sqlite3"):
        await start_suite(data)
    (data / "registry.sqlite3").unlink()
    suite = await start_suite(data)
    await suite.close()


async def _registered(registry, name: str) -> bool:
    listed = await registry.ListAgents(registry_pb2.ListAgentsRequest(), timeout=5)
    return any(agent.name == name for agent in listed.agents)
