"""OracleService on a real server: every RPC, VerifyStream's protocol, capacity, drain,
idle streams, the cache, configuration reload and reports, with builtin and command
oracles (real worker subprocesses)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
from helix.common import errors, reasons
from helix.common.config import Duration
from helix.common.server import HelixServer
from helix.genome import codec
from helix.genome.documents import parse_dna_text
from helix.genome.layout import Layout, normalise
from helix.oracle.serving import OracleService, oracle_service
from helix.oracle.settings import OracleSettings

from waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "oracle_workers" / "worker.py"
PASSED = candidate_pb2.VERDICT_STATUS_PASSED
ERROR = candidate_pb2.VERDICT_STATUS_ERROR

SPHERE_DNA = """
genes:
  - name: x
    real: {low: -5, high: 5, size: 10}
"""
WORKER_DNA = """
genes:
  - name: x
    real: {low: -5, high: 5, size: 3}
  - name: poison
    integer: {low: 0, high: 1}
"""


def config_text(worker_mode: str = "ok", sphere_capacity: int = 1000) -> str:
    return f"""
oracles:
  sphere:
    kind: builtin
    capacity: {sphere_capacity}
  tsp:
    kind: builtin
    params: {{instance: berlin52.tsp}}
  summer:
    kind: command
    argv: ["{sys.executable}", worker.py, {worker_mode}]
    workers: 2
    timeout: 5s
    cache: true
"""


def dna(text: str) -> dna_pb2.Dna:
    check = parse_dna_text(text)
    assert check.valid, check.violations
    return check.dna


def candidates(
    text: str, rows: np.ndarray, poison: list[int] | None = None
) -> list[candidate_pb2.Candidate]:
    layout = Layout(normalise(dna(text)))
    pop = layout.empty(len(rows))
    pop.reals[:] = rows
    if poison is not None:
        pop.integers[:, 0] = poison
    return codec.to_candidates(layout, pop, generation=0, parent_ids=[()] * len(rows))


def sphere_batch(n: int, seed: int = 0) -> tuple[list[candidate_pb2.Candidate], np.ndarray]:
    rows = np.random.default_rng(seed).uniform(-5, 5, size=(n, 10))
    return candidates(SPHERE_DNA, rows), (rows**2).sum(axis=1)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "oracles"
    folder.mkdir()
    shutil.copy(ROOT / "examples" / "tsp" / "berlin52.tsp", folder / "berlin52.tsp")
    shutil.copy(WORKER, folder / "worker.py")
    (folder / "oracles.yaml").write_text(config_text())
    return folder


Started = tuple[HelixServer, OracleService, Any]


@pytest.fixture
async def oracle_server(
    start_server: Callable[..., Any], config_dir: Path, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    channels: list[grpc.aio.Channel] = []

    async def start(**overrides: Any) -> Started:
        settings = {
            "port": 0,
            "oracle_config": config_dir / "oracles.yaml",
            "oracle_reports_dir": tmp_path / "reports",
            "oracle_config_poll": Duration(0.1),
            **overrides,
        }
        service = oracle_service(OracleSettings(**settings))
        server = await start_server([service.binding], grace_period=Duration(5))
        channel = grpc.aio.insecure_channel(server.address)
        channels.append(channel)
        return server, service, oracle_pb2_grpc.OracleServiceStub(channel)

    yield start
    for channel in channels:
        await channel.close()


def details(error: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """The ErrorInfo reason and the BadRequest fields of an error."""
    status = rpc_status.from_call(error)
    assert status is not None
    reason, fields = "", []
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return reason, fields


# --- ListOracles, GetOracle -------------------------------------------------------------


async def test_list_and_get_oracles(oracle_server: Callable[..., Any]) -> None:
    _, _, stub = await oracle_server()
    first = await stub.ListOracles(oracle_pb2.ListOraclesRequest(page_size=2))
    assert [o.name for o in first.oracles] == ["oracles/sphere", "oracles/summer"]
    rest = await stub.ListOracles(oracle_pb2.ListOraclesRequest(page_token=first.next_page_token))
    assert [o.name for o in rest.oracles] == ["oracles/tsp"]
    assert not rest.next_page_token
    got = (await stub.GetOracle(oracle_pb2.GetOracleRequest(name="oracles/tsp"))).oracle
    assert got.kind == oracle_pb2.ORACLE_KIND_BUILTIN
    assert len(got.config_hash) == 64
    assert got.objective == 1
    assert got.capacity >= 1
    summer = (await stub.GetOracle(oracle_pb2.GetOracleRequest(name="oracles/summer"))).oracle
    assert summer.kind == oracle_pb2.ORACLE_KIND_COMMAND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetOracle(oracle_pb2.GetOracleRequest(name="oracles/nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# --- Verify -----------------------------------------------------------------------------


async def test_verify_scores_every_candidate_in_order(oracle_server: Callable[..., Any]) -> None:
    _, _, stub = await oracle_server()
    batch, expected = sphere_batch(50)
    batch[3].id = ""  # an empty id is allowed
    batch.append(batch[0])  # a duplicate is answered at its place too
    response = await stub.Verify(
        oracle_pb2.VerifyRequest(oracle="oracles/sphere", dna=dna(SPHERE_DNA), candidates=batch)
    )
    verdicts = response.verdicts
    assert len(verdicts) == 51
    assert all(v.status == PASSED for v in verdicts)
    np.testing.assert_allclose([v.score for v in verdicts[:50]], expected, rtol=1e-12)
    assert verdicts[50].score == verdicts[0].score
    assert verdicts[3].candidate_id == codec.genome_id(batch[3].genome)
    assert [v.candidate_id for v in verdicts[:3]] == [c.id for c in batch[:3]]


async def test_tsp_scores_the_tour_length(oracle_server: Callable[..., Any]) -> None:
    _, _, stub = await oracle_server()
    tsp = dna("genes:\n  - name: tour\n    permutation: {size: 52}\n")
    layout = Layout(normalise(tsp))
    pop = layout.empty(1)
    pop.permutations[0][0] = np.arange(52)
    batch = codec.to_candidates(layout, pop, generation=0, parent_ids=[()])
    response = await stub.Verify(
        oracle_pb2.VerifyRequest(oracle="oracles/tsp", dna=tsp, candidates=batch)
    )
    assert response.verdicts[0].status == PASSED
    assert response.verdicts[0].score == 29_000 or response.verdicts[0].score > 7542


@pytest.mark.parametrize(
    ("mutate", "code", "reason", "field"),
    [
        (
            lambda r: r.ClearField("candidates"),
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "candidates",
        ),
        (lambda r: setattr(r, "oracle", "oracles/nope"), "NOT_FOUND", "NOT_FOUND", None),
        (
            lambda r: setattr(r, "oracle", "sphere"),
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "oracle",
        ),
        (lambda r: r.ClearField("dna"), "INVALID_ARGUMENT", "INVALID_ARGUMENT", "dna"),
        (
            lambda r: setattr(r.candidates[1], "id", "0" * 32),
            "INVALID_ARGUMENT",
            "WRONG_ID",
            "candidates[1].id",
        ),
        (
            lambda r: r.candidates[2].genome.reals.append(1.0),
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "candidates[2].genome.reals",
        ),
        (
            lambda r: r.timeout.CopyFrom(duration_pb2.Duration(seconds=-1)),
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "timeout",
        ),
    ],
)
async def test_verify_refuses_bad_requests_with_details(
    oracle_server: Callable[..., Any], mutate: Any, code: str, reason: str, field: str | None
) -> None:
    _, _, stub = await oracle_server()
    batch, _ = sphere_batch(3)
    request = oracle_pb2.VerifyRequest(
        oracle="oracles/sphere", dna=dna(SPHERE_DNA), candidates=batch
    )
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Verify(request)
    assert caught.value.code().name == code
    got_reason, fields = details(caught.value)
    assert got_reason == reason
    if field is not None:
        assert any(f.startswith(field) for f in fields), fields


async def test_a_dna_of_the_wrong_shape_names_the_gene(oracle_server: Callable[..., Any]) -> None:
    _, _, stub = await oracle_server()
    tsp = dna("genes:\n  - name: tour\n    permutation: {size: 10}\n")
    layout = Layout(normalise(tsp))
    batch = codec.to_candidates(layout, layout.empty(1), generation=0, parent_ids=[()])
    for oracle in ("oracles/sphere", "oracles/tsp"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Verify(oracle_pb2.VerifyRequest(oracle=oracle, dna=tsp, candidates=batch))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reason, fields = details(caught.value)
        assert reason == "DNA_SHAPE"
        assert fields, fields
        assert fields[0].startswith("dna.genes"), fields


async def test_ten_thousand_and_one_candidates_are_refused(
    oracle_server: Callable[..., Any],
) -> None:
    _, _, stub = await oracle_server(max_receive_message_bytes=64 << 20)
    one, _ = sphere_batch(1)
    request = oracle_pb2.VerifyRequest(oracle="oracles/sphere", dna=dna(SPHERE_DNA))
    request.candidates.extend(one * 10_001)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Verify(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value)[1] == ["candidates"]


async def test_a_batch_over_the_free_capacity_is_busy_with_retry_info(
    oracle_server: Callable[..., Any], config_dir: Path
) -> None:
    (config_dir / "oracles.yaml").write_text(config_text(sphere_capacity=10))
    _, _, stub = await oracle_server()
    holder = stub.VerifyStream()  # holds half the capacity: 5 candidates
    await holder.write(open_message())
    assert (await holder.read()).credit.candidates == 5
    batch, _ = sphere_batch(6)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Verify(
            oracle_pb2.VerifyRequest(oracle="oracles/sphere", dna=dna(SPHERE_DNA), candidates=batch)
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(caught.value)[0] == "ORACLE_BUSY"
    await holder.done_writing()
    while await holder.read() != grpc.aio.EOF:
        pass
    response = await stub.Verify(
        oracle_pb2.VerifyRequest(oracle="oracles/sphere", dna=dna(SPHERE_DNA), candidates=batch)
    )  # the window was given back
    assert len(response.verdicts) == 6


async def test_a_batch_over_the_whole_capacity_says_to_split_it(
    oracle_server: Callable[..., Any], config_dir: Path
) -> None:
    (config_dir / "oracles.yaml").write_text(config_text(sphere_capacity=10))
    _, _, stub = await oracle_server()
    batch, _ = sphere_batch(11)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Verify(
            oracle_pb2.VerifyRequest(oracle="oracles/sphere", dna=dna(SPHERE_DNA), candidates=batch)
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(caught.value)[0] == "BATCH_OVER_CAPACITY"
    assert "at most 10" in str(caught.value.details())


# --- command oracles through the service -------------------------------------------------


async def test_a_crashing_worker_gives_an_error_verdict_and_the_rest_are_scored(
    oracle_server: Callable[..., Any], config_dir: Path
) -> None:
    (config_dir / "oracles.yaml").write_text(config_text(worker_mode="crash"))
    _, _, stub = await oracle_server()
    rows = np.arange(12, dtype=float).reshape(4, 3) / 10
    batch = candidates(WORKER_DNA, rows, poison=[0, 1, 0, 0])
    response = await stub.Verify(
        oracle_pb2.VerifyRequest(oracle="oracles/summer", dna=dna(WORKER_DNA), candidates=batch)
    )
    statuses = [v.status for v in response.verdicts]
    assert statuses[1] == ERROR
    assert "boom: poisoned candidate" in response.verdicts[1].message
    assert [statuses[i] for i in (0, 2, 3)] == [PASSED] * 3
    assert response.verdicts[2].score == pytest.approx(rows[2].sum())


async def test_cached_verdicts_do_not_run_the_worker_again(
    oracle_server: Callable[..., Any],
) -> None:
    _, service, stub = await oracle_server()
    batch = candidates(WORKER_DNA, np.full((3, 3), 0.5), poison=[0, 0, 0])
    batch = [*batch[:1], *candidates(WORKER_DNA, np.array([[0.1, 0.2, 0.3], [1, 1, 1]]), [0, 0])]
    request = oracle_pb2.VerifyRequest(
        oracle="oracles/summer", dna=dna(WORKER_DNA), candidates=batch
    )
    first = await stub.Verify(request)
    pool = service.host.get("oracles/summer").oracle.pool  # type: ignore[attr-defined,unused-ignore]
    ran = sum(pool.counters.verdicts.values())
    second = await stub.Verify(request)
    assert sum(pool.counters.verdicts.values()) == ran == 3
    assert [v.cached for v in second.verdicts] == [True] * 3
    for a, b in zip(first.verdicts, second.verdicts, strict=True):
        assert (a.candidate_id, a.status, a.score, dict(a.metrics)) == (
            b.candidate_id,
            b.status,
            b.score,
            dict(b.metrics),
        )


# --- VerifyStream -------------------------------------------------------------------------


def open_message(
    oracle: str = "oracles/sphere", text: str = SPHERE_DNA
) -> oracle_pb2.VerifyStreamRequest:
    return oracle_pb2.VerifyStreamRequest(
        open=oracle_pb2.VerifyStreamOpen(oracle=oracle, dna=dna(text))
    )


def batch_message(
    batch_id: int, batch: list[candidate_pb2.Candidate]
) -> oracle_pb2.VerifyStreamRequest:
    return oracle_pb2.VerifyStreamRequest(
        batch=oracle_pb2.VerifyBatch(batch_id=batch_id, candidates=batch)
    )


async def test_a_stream_answers_every_batch_within_its_credit(
    oracle_server: Callable[..., Any],
) -> None:
    _, _, stub = await oracle_server()
    batches = [sphere_batch(100, seed) for seed in range(12)]
    call = stub.VerifyStream()
    await call.write(open_message())
    first = await call.read()
    allowance = first.credit.candidates
    assert allowance == 500  # half of the sphere's capacity of 1000
    answered: dict[int, oracle_pb2.VerdictBatch] = {}
    sent, credit_total = 0, allowance
    pending = list(enumerate(batches, start=1))
    while len(answered) < len(batches):
        while pending and len(pending[0][1][0]) <= allowance:
            batch_id, (batch, _) = pending.pop(0)
            await call.write(batch_message(batch_id, batch))
            allowance -= len(batch)
            sent += len(batch)
        response = await call.read()
        if response.WhichOneof("kind") == "credit":
            allowance += response.credit.candidates
            credit_total += response.credit.candidates
        else:
            answered[response.verdicts.batch_id] = response.verdicts
        assert sent <= credit_total
    await call.done_writing()
    while (rest := await call.read()) != grpc.aio.EOF:
        assert rest.WhichOneof("kind") == "credit"
    assert await call.code() == grpc.StatusCode.OK
    for batch_id, (_, expected) in enumerate(batches, start=1):
        scores = [v.score for v in answered[batch_id].verdicts]
        np.testing.assert_allclose(scores, expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("messages", "code", "reason"),
    [
        ("batch_first", "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("second_open", "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("duplicate_batch", "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("over_credit", "RESOURCE_EXHAUSTED", "CREDIT_EXCEEDED"),
        ("empty_batch", "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("unknown_oracle", "NOT_FOUND", "NOT_FOUND"),
    ],
)
async def test_a_stream_that_breaks_the_protocol_fails_with_the_documented_code(
    oracle_server: Callable[..., Any], messages: str, code: str, reason: str
) -> None:
    _, _, stub = await oracle_server()
    batch, _ = sphere_batch(10)
    script = {
        "batch_first": [batch_message(1, batch)],
        "second_open": [open_message(), open_message()],
        "duplicate_batch": [open_message(), batch_message(7, batch), batch_message(7, batch)],
        "over_credit": [open_message(), batch_message(1, batch * 51)],
        "empty_batch": [open_message(), batch_message(1, [])],
        "unknown_oracle": [open_message("oracles/nope")],
    }[messages]
    call = stub.VerifyStream(iter(script))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code().name == code
    assert details(caught.value)[0] == reason


async def test_streams_share_capacity_and_a_full_oracle_is_busy(
    oracle_server: Callable[..., Any],
) -> None:
    _, _, stub = await oracle_server()
    calls = [stub.VerifyStream() for _ in range(3)]
    credits = []
    for call in calls[:2]:
        await call.write(open_message())
        credits.append((await call.read()).credit.candidates)
    assert credits == [500, 500]
    await calls[2].write(open_message())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await calls[2].read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(caught.value)[0] == "ORACLE_BUSY"
    await calls[0].done_writing()
    assert await calls[0].code() == grpc.StatusCode.OK
    # The first stream's window is free again.
    again = stub.VerifyStream()
    await again.write(open_message())
    assert (await again.read()).credit.candidates == 500
    for call in (calls[1], again):
        call.cancel()


async def test_an_idle_stream_is_ended_and_gives_its_window_back(
    oracle_server: Callable[..., Any],
) -> None:
    _, service, stub = await oracle_server(oracle_stream_idle_timeout=Duration(0.3))
    call = stub.VerifyStream()
    await call.write(open_message())
    await call.read()
    hosted = service.host.get("oracles/sphere")
    assert hosted.free == 500
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert details(caught.value)[0] == "STREAM_IDLE"
    await eventually(lambda: hosted.free == 1000)


async def test_a_draining_server_answers_held_batches_then_ends_unavailable(
    oracle_server: Callable[..., Any], config_dir: Path
) -> None:
    slow = config_text(worker_mode="ok").replace("worker.py, ok]", "worker.py, ok]\n    env: []")
    (config_dir / "oracles.yaml").write_text(slow)
    server, service, stub = await oracle_server()
    call = stub.VerifyStream()
    await call.write(open_message("oracles/summer", WORKER_DNA))
    await call.read()
    batch = candidates(WORKER_DNA, np.full((4, 3), 0.25), poison=[0, 0, 0, 0])
    await call.write(batch_message(1, batch))
    # The server has the batch (one still on its way when the drain begins is simply
    # unanswered, which the protocol allows: the client re-sends it elsewhere).
    await eventually(lambda: any(s.seen.lows for s in service.servicer.streams))
    shutdown = server.shutdown(5)  # a task: the drain runs while the stream is read
    got = []

    async def read_all() -> None:
        while (response := await call.read()) != grpc.aio.EOF:
            got.append(response)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all()
    await shutdown
    answered = [r.verdicts for r in got if r.WhichOneof("kind") == "verdicts"]
    assert [b.batch_id for b in answered] == [1]
    assert all(v.status == PASSED for v in answered[0].verdicts)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details(caught.value)[0] == "ORACLE_DRAINING"


async def test_a_batch_arriving_after_the_stream_ended_is_not_verified(
    oracle_server: Callable[..., Any],
) -> None:
    # A drain ends a stream as soon as it holds nothing; a batch the client sent before it
    # saw the end may still arrive. The client re-sends that batch elsewhere (it got no
    # answer), so verifying it here too would verify and report its candidates twice.
    _, service, stub = await oracle_server()
    call = stub.VerifyStream()
    await call.write(open_message())
    await call.read()
    (stream,) = service.servicer.streams
    stream.end(errors.Unavailable("ending", reason=reasons.ORACLE_DRAINING))
    assert await call.code() == grpc.StatusCode.UNAVAILABLE
    batch, _ = sphere_batch(5)
    stream.take(batch_message(1, batch))  # as the reader would, had it been on the wire
    assert (stream.held, stream.tasks) == (0, set())
    await asyncio.sleep(0.2)
    assert (service.host.stats.batches, service.host.stats.verified) == (0, {})


# --- configuration reload and reports ------------------------------------------------------


async def test_a_valid_change_is_picked_up_and_an_invalid_one_keeps_the_old(
    oracle_server: Callable[..., Any], config_dir: Path
) -> None:
    _, service, stub = await oracle_server()
    path = config_dir / "oracles.yaml"
    before = (await stub.GetOracle(oracle_pb2.GetOracleRequest(name="oracles/sphere"))).oracle
    path.write_text(config_text() + "  onemax:\n    kind: builtin\n")

    async def names() -> list[str]:
        return [o.name for o in (await stub.ListOracles(oracle_pb2.ListOraclesRequest())).oracles]

    async def has_onemax() -> bool:
        return "oracles/onemax" in await names()

    await eventually(has_onemax)
    same = (await stub.GetOracle(oracle_pb2.GetOracleRequest(name="oracles/sphere"))).oracle
    assert same.config_hash == before.config_hash  # unchanged oracles keep their hash
    path.write_text("oracles:\n  sphere:\n    kind: builtin\n    capacity: -3\n")
    await eventually(lambda: service.host.stats.reload_failures == 1)
    assert not service.host.stats.config_valid
    assert "oracles/onemax" in await names()  # the old configuration still serves
    batch, expected = sphere_batch(5)
    response = await stub.Verify(
        oracle_pb2.VerifyRequest(oracle="oracles/sphere", dna=dna(SPHERE_DNA), candidates=batch)
    )
    np.testing.assert_allclose([v.score for v in response.verdicts], expected)
    # Back to the version served: valid again, nothing restarted.
    path.write_text(config_text() + "  onemax:\n    kind: builtin\n")
    await eventually(lambda: service.host.stats.config_valid)


async def test_reports_hold_every_verification(
    oracle_server: Callable[..., Any], tmp_path: Path
) -> None:
    _, _, stub = await oracle_server()
    batch, _ = sphere_batch(20)
    await stub.Verify(
        oracle_pb2.VerifyRequest(oracle="oracles/sphere", dna=dna(SPHERE_DNA), candidates=batch),
        metadata=(("x-helix-run", "runs/r1"),),
    )
    report = tmp_path / "reports" / "verdicts.jsonl"
    await eventually(lambda: report.exists() and len(report.read_text().splitlines()) == 20)
    import json

    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [line["candidate_id"] for line in lines] == [c.id for c in batch]
    assert all(line["run"] == "runs/r1" and line["oracle"] == "sphere" for line in lines)
    assert all(line["status"] == "PASSED" for line in lines)


async def test_an_unwritable_report_directory_degrades_but_verdicts_still_return(
    oracle_server: Callable[..., Any], tmp_path: Path
) -> None:
    _, service, stub = await oracle_server()
    reports = tmp_path / "reports"
    shutil.rmtree(reports)
    reports.write_text("not a directory")  # root ignores permission bits: make it a file
    batch, expected = sphere_batch(5)
    response = await stub.Verify(
        oracle_pb2.VerifyRequest(oracle="oracles/sphere", dna=dna(SPHERE_DNA), candidates=batch)
    )
    np.testing.assert_allclose([v.score for v in response.verdicts], expected)
    writer = service.host.reports
    assert writer is not None
    await eventually(lambda: writer.degraded and writer.dropped >= 5)


async def test_an_oracle_whose_workers_keep_failing_makes_its_agent_degraded(
    config_dir: Path, tmp_path: Path
) -> None:
    import helix.v1.registry_pb2 as registry_pb2

    from registry_support import start_suite

    (config_dir / "dead.py").write_text("import sys\nsys.exit('no model here')\n")
    (config_dir / "oracles.yaml").write_text(
        f'oracles:\n  dead:\n    kind: command\n    argv: ["{sys.executable}", dead.py]\n'
        "  sphere:\n    kind: builtin\n"
    )
    suite = await start_suite(
        tmp_path / "data",
        oracle_config=config_dir / "oracles.yaml",
        generator_self_register=True,
    )
    try:
        registry = suite.stub()

        async def oracle_agent() -> registry_pb2.Agent | None:
            listed = await registry.ListAgents(registry_pb2.ListAgentsRequest())
            return next((a for a in listed.agents if a.name == "agents/embedded-oracle"), None)

        agent = await eventually(oracle_agent)
        assert list(agent.oracle.oracles) == ["oracles/dead", "oracles/sphere"]

        async def degraded() -> bool:
            found = await oracle_agent()
            return found is not None and found.health == registry_pb2.AGENT_HEALTH_DEGRADED

        await eventually(degraded, 20)
    finally:
        await suite.close()


async def test_a_cached_builtin_answers_from_the_cache(
    oracle_server: Callable[..., Any], config_dir: Path
) -> None:
    # An empty cache is falsy (it has a length): the first pass once skipped storing.
    (config_dir / "oracles.yaml").write_text(
        config_text()
        + "  sphere-cached:\n    kind: builtin\n    function: sphere\n    cache: true\n"
    )
    _, service, stub = await oracle_server()
    batch, expected = sphere_batch(30)
    request = oracle_pb2.VerifyRequest(
        oracle="oracles/sphere-cached", dna=dna(SPHERE_DNA), candidates=batch
    )
    first = await stub.Verify(request)
    second = await stub.Verify(request)
    assert [v.cached for v in first.verdicts] == [False] * 30
    assert [v.cached for v in second.verdicts] == [True] * 30
    np.testing.assert_allclose([v.score for v in second.verdicts], expected)
    assert service.host.cache is not None
    assert service.host.cache.stats().hits == 30


async def test_a_stream_faster_than_the_report_writer_waits_for_credit_not_lines_dropped(
    oracle_server: Callable[..., Any], tmp_path: Path
) -> None:
    _, service, stub = await oracle_server(oracle_report_queue_lines=64)
    batches = [sphere_batch(50, seed)[0] for seed in range(20)]
    call = stub.VerifyStream()
    await call.write(open_message())
    allowance = (await call.read()).credit.candidates
    pending, answered = list(enumerate(batches, start=1)), 0
    while answered < len(batches):
        while pending and len(pending[0][1]) <= allowance:
            batch_id, batch = pending.pop(0)
            await call.write(batch_message(batch_id, batch))
            allowance -= len(batch)
        response = await call.read()
        if response.WhichOneof("kind") == "credit":
            allowance += response.credit.candidates
        else:
            answered += 1
    await call.done_writing()
    while await call.read() != grpc.aio.EOF:  # credit granted before the half-close
        pass
    assert await call.code() == grpc.StatusCode.OK
    writer = service.host.reports
    assert writer is not None
    report = tmp_path / "reports" / "verdicts.jsonl"
    await eventually(lambda: report.exists() and len(report.read_text().splitlines()) == 1000)
    assert writer.dropped == 0


async def test_a_client_that_reads_nothing_gets_no_more_credit(
    oracle_server: Callable[..., Any],
) -> None:
    # Credit comes back only once a batch's verdicts went to the transport: a client that
    # sends on without reading runs out of credit instead of piling verdicts up here.
    _, service, stub = await oracle_server()
    batch, _ = sphere_batch(500)
    most = 0
    sending = asyncio.Event()

    async def requests() -> AsyncIterator[oracle_pb2.VerifyStreamRequest]:
        nonlocal most
        yield open_message()
        for batch_id in range(1, 2001):
            yield batch_message(batch_id, batch)
            await asyncio.sleep(0)
            for stream in service.servicer.streams:
                most = max(most, stream.out.qsize())
        sending.set()

    call = stub.VerifyStream(requests())
    await asyncio.sleep(3)  # nothing read meanwhile
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(caught.value)[0] == "CREDIT_EXCEEDED"
    assert most <= 3  # verdicts waiting to be sent: the window's worth at most
    assert not sending.is_set()  # the stream ended long before the client was done


async def test_a_description_only_edit_is_served_without_a_restart(
    oracle_server: Callable[..., Any], config_dir: Path
) -> None:
    _, service, stub = await oracle_server()
    before = service.host.get("oracles/summer")
    pool = before.oracle.pool  # type: ignore[attr-defined,unused-ignore]
    await eventually(lambda: pool.counters.worker_starts == 2)  # its two workers are up
    starts = pool.counters.worker_starts
    edited = config_text().replace("    cache: true\n", "    cache: true\n    description: sums\n")
    (config_dir / "oracles.yaml").write_text(edited)

    async def described() -> bool:
        got = await stub.GetOracle(oracle_pb2.GetOracleRequest(name="oracles/summer"))
        return got.oracle.description == "sums"

    await eventually(described)
    assert service.host.get("oracles/summer") is before  # the same running oracle
    assert pool.counters.worker_starts == starts  # no worker restarted
