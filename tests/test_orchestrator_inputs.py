"""Bad input for every OrchestratorService RPC, on the embedded suite over real gRPC.

Each refusal carries the code orchestrator.proto promises and names what is wrong (a
google.rpc.BadRequest field violation, or the ErrorInfo reason); a refused CreateRun
creates nothing (ListRuns unchanged, its request_id still free). Someone else's run is
PERMISSION_DENIED whether or not it exists; an admin gets NOT_FOUND for a missing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
from helix.common import errors, pages
from helix.generator.agent import MAJOR_LABEL, generator_labels
from helix.orchestrator.agents import AgentPool
from helix.orchestrator.runs import Orchestrator, RunSettings
from helix.orchestrator.sqlite_store import SqliteRunStore
from helix.orchestrator.store import StoredRunRequest
from helix.security.client import MintingTokenSource, bearer_interceptors
from helix.security.principal import ADMIN_SCOPE, Principal
from helix.security.tokens import mint
from helix.suite import ORCHESTRATOR_SCOPES

from orchestrator_support import RUN_SCOPES, run_request, runs_stub, start_run_suite, watch_to_end
from registry_support import Suite, start_suite
from waiting import eventually

if TYPE_CHECKING:
    from helix.v1.orchestrator_pb2_grpc import OrchestratorServiceAsyncStub as Stub

Code = grpc.StatusCode
PENDING = orchestrator_pb2.RUN_STATE_PENDING
RUNNING = orchestrator_pb2.RUN_STATE_RUNNING
SUCCEEDED = orchestrator_pb2.RUN_STATE_SUCCEEDED
CANCELLED = orchestrator_pb2.RUN_STATE_CANCELLED
GetRun = orchestrator_pb2.GetRunRequest
ListRuns = orchestrator_pb2.ListRunsRequest
CancelRun = orchestrator_pb2.CancelRunRequest
WatchRun = orchestrator_pb2.WatchRunRequest
ListCandidates = orchestrator_pb2.ListRunCandidatesRequest


# --- helpers ------------------------------------------------------------------------------


def details(error: grpc.aio.AioRpcError) -> tuple[str, list[str], dict[str, str]]:
    """The ErrorInfo reason, the BadRequest fields and the ErrorInfo metadata of an error."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status in {error!r}"
    reason, fields, metadata = "", [], {}
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return reason, fields, metadata


async def refused(call: Awaitable[Any], code: Code) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, (caught.value.code(), caught.value.details())
    return caught.value


async def outcome(call: Awaitable[Any]) -> tuple[Code, str]:
    """The status of a call: (OK, "") or its error's code and details."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), str(error.details())
    return Code.OK, ""


async def watch_all(stub: Stub, request: orchestrator_pb2.WatchRunRequest) -> list[Any]:
    return [r.event async for r in stub.WatchRun(request, timeout=30)]


async def drain(stream: AsyncIterable[Any]) -> list[Any]:
    return [item async for item in stream]


class Parties:
    """The suite and its callers: alice and bob (runs.read, runs.write), an admin."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.alice = runs_stub(suite, "alice")
        self.bob = runs_stub(suite, "bob")
        self.admin = runs_stub(suite, "root", (ADMIN_SCOPE,))
        self.finished = orchestrator_pb2.Run()

    async def names(self, stub: Stub) -> list[str]:
        listed = await stub.ListRuns(ListRuns(page_size=1000))
        return [r.name for r in listed.runs]


async def ready(tmp_path: Path, **overrides: Any) -> Parties:
    """A suite whose orchestrator has seen its generator and oracle agents (a first run of
    alice's ran to SUCCEEDED, so unknown DNAs and oracles are told apart from waiting)."""
    parties = Parties(await start_run_suite(tmp_path, **overrides))
    try:
        created = (await parties.alice.CreateRun(run_request(evaluations=200))).run
        await watch_to_end(parties.alice, created.name)
        parties.finished = (await parties.alice.GetRun(GetRun(name=created.name))).run
        assert parties.finished.state == SUCCEEDED, parties.finished.error
    except BaseException:
        await parties.suite.close()
        raise
    return parties


@pytest.fixture
async def parties(tmp_path: Path, store_settings: dict[str, str]) -> AsyncIterator[Parties]:
    found = await ready(tmp_path, **store_settings)
    yield found
    await found.suite.close()


def with_run(**changes: Any) -> orchestrator_pb2.CreateRunRequest:
    request = run_request(evaluations=200)
    for key, value in changes.items():
        setattr(request.run, key, value)
    return request


def inline(change: Any) -> orchestrator_pb2.CreateRunRequest:
    request = run_request(evaluations=200, inline=True)
    change(request.run.dna)
    return request


def budget(**limits: Any) -> orchestrator_pb2.CreateRunRequest:
    request = run_request()
    request.run.budget.Clear()
    for key, value in limits.items():
        if key == "max_duration":
            request.run.budget.max_duration.CopyFrom(value)
        else:
            setattr(request.run.budget, key, value)
    return request


def no_run() -> orchestrator_pb2.CreateRunRequest:
    return orchestrator_pb2.CreateRunRequest(request_id="r1")


def no_dna() -> orchestrator_pb2.CreateRunRequest:
    request = run_request()
    request.run.ClearField("dna_name")
    return request


def no_budget() -> orchestrator_pb2.CreateRunRequest:
    request = run_request()
    request.run.ClearField("budget")
    return request


def with_target(value: float) -> orchestrator_pb2.CreateRunRequest:
    request = run_request()
    request.run.target_score = value
    return request


def with_ids(run_id: str = "", request_id: str | None = None) -> orchestrator_pb2.CreateRunRequest:
    request = run_request()
    request.run_id = run_id
    if request_id is not None:
        request.request_id = request_id
    return request


def population(size: int) -> Any:
    def change(dna: Any) -> None:
        dna.strategy.alpha.population_size = size

    return change


def low_above_high(dna: Any) -> None:
    dna.genes[0].real.low = 10.0


def no_genes(dna: Any) -> None:
    del dna.genes[:]


def seconds(s: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=s, nanos=nanos)


BAD_CREATES = {
    "no run": (no_run, "run"),
    "dna neither by name nor inline": (no_dna, "run.dna_source"),
    "unknown dna name": (lambda: with_run(dna_name="dnas/nope"), "run.dna_name"),
    "malformed dna name": (lambda: with_run(dna_name="rastrigin"), "run.dna_name"),
    "dna name of another collection": (lambda: with_run(dna_name="oracles/x"), "run.dna_name"),
    "unknown oracle": (lambda: with_run(oracle="oracles/nope"), "run.oracle"),
    "malformed oracle": (lambda: with_run(oracle="rastrigin"), "run.oracle"),
    "no oracle": (lambda: with_run(oracle=""), "run.oracle"),
    "inline dna with low above high": (lambda: inline(low_above_high), "run.dna."),
    "inline dna without genes": (lambda: inline(no_genes), "run.dna."),
    "absurd population": (lambda: inline(population(100_001)), "run.dna."),
    "population of one": (lambda: inline(population(1)), "run.dna."),
    "objective unspecified": (
        lambda: with_run(objective=common_pb2.OBJECTIVE_UNSPECIFIED),
        "run.objective",
    ),
    "objective unknown": (lambda: with_run(objective=42), "run.objective"),
    "no budget": (no_budget, "run.budget"),
    "budget with no limit": (budget, "run.budget"),
    "budget of zeros": (
        lambda: budget(max_evaluations=0, max_generations=0, max_duration=seconds(0)),
        "run.budget",
    ),
    "negative duration": (lambda: budget(max_duration=seconds(-5)), "run.budget.max_duration"),
    "duration nanos out of range": (
        lambda: budget(max_duration=seconds(1, 2_000_000_000)),
        "run.budget.max_duration",
    ),
    "duration above 30 days": (
        lambda: budget(max_duration=seconds(30 * 86_400 + 1)),
        "run.budget.max_duration",
    ),
    "evaluations above 10^12": (
        lambda: budget(max_evaluations=10**12 + 1),
        "run.budget.max_evaluations",
    ),
    "generations above 10^6": (
        lambda: budget(max_generations=10**6 + 1),
        "run.budget.max_generations",
    ),
    "target nan": (lambda: with_target(math.nan), "run.target_score"),
    "target inf": (lambda: with_target(math.inf), "run.target_score"),
    "target -inf": (lambda: with_target(-math.inf), "run.target_score"),
    "display name too long": (lambda: with_run(display_name="d" * 257), "run.display_name"),
    "request_id empty": (lambda: with_ids(request_id=""), "request_id"),
    "request_id too long": (lambda: with_ids(request_id="r" * 65), "request_id"),
    "request_id with a space": (lambda: with_ids(request_id="a b"), "request_id"),
    "request_id not ascii": (lambda: with_ids(request_id="réq"), "request_id"),
    "run_id upper case": (lambda: with_ids("Bad"), "run_id"),
    "run_id starting with a digit": (lambda: with_ids("1run"), "run_id"),
    "run_id too long": (lambda: with_ids("r" * 64), "run_id"),
    "run_id with a slash": (lambda: with_ids("a/b"), "run_id"),
}


# --- CreateRun ----------------------------------------------------------------------------


async def test_bad_create_run_requests_name_the_field_and_create_nothing(
    parties: Parties,
) -> None:
    alice = parties.alice
    before = await parties.names(parties.admin)
    for label, (make, field) in BAD_CREATES.items():
        request = make()
        error = await refused(alice.CreateRun(request, timeout=30), Code.INVALID_ARGUMENT)
        reason, fields, _ = details(error)
        assert reason, label
        assert any(f == field or (field.endswith(".") and f.startswith(field)) for f in fields), (
            label,
            fields,
            error.details(),
        )
    assert await parties.names(parties.admin) == before
    # A request_id a refused request carried is still free: nothing remembered it.
    refused_request = with_run(oracle="oracles/nope")
    await refused(alice.CreateRun(refused_request), Code.INVALID_ARGUMENT)
    good = run_request(evaluations=200)
    good.request_id = refused_request.request_id
    created = (await alice.CreateRun(good)).run
    assert created.state in (PENDING, RUNNING, SUCCEEDED)
    assert await parties.names(parties.admin) == [created.name, *before]


async def test_every_violation_of_a_request_is_listed_at_once(parties: Parties) -> None:
    request = with_run(oracle="nope", objective=common_pb2.OBJECTIVE_UNSPECIFIED)
    request.run.target_score = math.nan
    request.request_id = ""
    error = await refused(parties.alice.CreateRun(request), Code.INVALID_ARGUMENT)
    _, fields, _ = details(error)
    assert {"run.oracle", "run.objective", "run.target_score", "request_id"} <= set(fields)


async def test_unknown_fields_are_refused(parties: Parties) -> None:
    channel = parties.suite.channels[0]  # alice's
    raw: Any = channel.unary_unary("/helix.v1.OrchestratorService/GetRun")
    payload = GetRun(name=parties.finished.name).SerializeToString() + b"\xa8\x1f\x01"  # 501: 1
    error = await refused(raw(payload, timeout=10), Code.INVALID_ARGUMENT)
    assert details(error)[1] == ["501"]


async def test_a_dna_both_named_and_inline_on_the_wire_is_read_as_the_last_one(
    parties: Parties,
) -> None:
    """A oneof cannot hold both: protobuf keeps the field that comes last on the wire, so
    the server sees that one — here an unknown name, refused naming it."""
    inline_part = run_request(evaluations=200, inline=True)
    named_part = orchestrator_pb2.CreateRunRequest(
        run=orchestrator_pb2.Run(dna_name="dnas/nope"), request_id=inline_part.request_id
    )
    payload = inline_part.SerializeToString() + named_part.SerializeToString()
    seen = orchestrator_pb2.CreateRunRequest.FromString(payload)
    assert seen.run.WhichOneof("dna_source") == "dna_name"
    before = await parties.names(parties.alice)
    raw: Any = parties.suite.channels[0].unary_unary("/helix.v1.OrchestratorService/CreateRun")
    error = await refused(raw(payload, timeout=10), Code.INVALID_ARGUMENT)
    assert "run.dna_name" in details(error)[1]
    assert await parties.names(parties.alice) == before


async def test_output_only_fields_set_by_the_caller_are_ignored(parties: Parties) -> None:
    request = run_request(evaluations=200)
    run = request.run
    run.name = "runs/chosen-by-caller"
    run.owner = "mallory"
    run.state = orchestrator_pb2.RUN_STATE_SUCCEEDED
    run.stop_reason = orchestrator_pb2.RUN_STOP_REASON_TARGET_REACHED
    run.error = "forged"
    run.etag = "v999"
    run.dna_fingerprint = "f" * 64
    run.oracle_config_hash = "0" * 64
    run.progress.evaluations = 10**9
    run.create_time.FromSeconds(1)
    created = (await parties.alice.CreateRun(request)).run
    assert created.name != "runs/chosen-by-caller"
    assert created.owner == "alice"
    assert created.state == PENDING
    assert created.stop_reason == orchestrator_pb2.RUN_STOP_REASON_UNSPECIFIED
    assert created.error == ""
    assert created.etag != "v999"
    assert created.progress.evaluations == 0
    assert created.create_time.seconds > 1
    assert created.dna_fingerprint == ""
    assert created.oracle_config_hash == ""
    # And nothing was created under the forged name.
    await refused(parties.admin.GetRun(GetRun(name="runs/chosen-by-caller")), Code.NOT_FOUND)
    await watch_to_end(parties.alice, created.name)
    final = (await parties.alice.GetRun(GetRun(name=created.name))).run
    assert final.state == SUCCEEDED, final.error
    assert final.dna_fingerprint != "f" * 64
    assert final.oracle_config_hash != "0" * 64


async def test_a_request_id_is_idempotent_per_principal_and_refused_for_another_body(
    parties: Parties,
) -> None:
    alice, bob = parties.alice, parties.bob
    request = run_request(evaluations=200)
    first = (await alice.CreateRun(request)).run
    again = (await alice.CreateRun(request)).run
    assert again.name == first.name
    assert again.create_time == first.create_time
    changed = orchestrator_pb2.CreateRunRequest()
    changed.CopyFrom(request)
    changed.run.budget.max_evaluations = 300
    error = await refused(alice.CreateRun(changed), Code.INVALID_ARGUMENT)
    reason, fields, _ = details(error)
    assert reason == "REQUEST_ID_REUSED"
    assert fields == ["request_id"]
    with_id = orchestrator_pb2.CreateRunRequest()
    with_id.CopyFrom(request)
    with_id.run_id = "another-id"
    error = await refused(alice.CreateRun(with_id), Code.INVALID_ARGUMENT)
    assert details(error)[0] == "REQUEST_ID_REUSED"
    # The same request_id from someone else is someone else's request.
    bobs = (await bob.CreateRun(request)).run
    assert bobs.name != first.name
    assert bobs.owner == "bob"
    names = await parties.names(parties.admin)
    assert names.count(first.name) == 1
    assert names.count(bobs.name) == 1
    assert len(names) == 3  # the fixture's run, alice's, bob's


async def test_a_taken_run_id_is_already_exists_and_changes_nothing(parties: Parties) -> None:
    taken = parties.finished.name.removeprefix("runs/")
    for stub in (parties.alice, parties.bob):
        await refused(stub.CreateRun(with_ids(taken)), Code.ALREADY_EXISTS)
    run = (await parties.alice.GetRun(GetRun(name=parties.finished.name))).run
    assert run == parties.finished
    assert await parties.names(parties.admin) == [parties.finished.name]


# --- names: the run RPCs ------------------------------------------------------------------

BAD_NAMES = ["", "runs/", "runs/Bad", "runs/1x", "runs/a/b", "agents/x", "x", "runs/" + "r" * 64]


def name_calls(stub: Stub, name: str) -> dict[str, Awaitable[Any]]:
    return {
        "GetRun": stub.GetRun(GetRun(name=name), timeout=30),
        "CancelRun": stub.CancelRun(CancelRun(name=name), timeout=30),
        "WatchRun": drain(stub.WatchRun(WatchRun(name=name), timeout=30)),
        "ListRunCandidates": stub.ListRunCandidates(ListCandidates(name=name), timeout=30),
    }


async def test_malformed_names_are_invalid_argument_naming_the_field(parties: Parties) -> None:
    for stub in (parties.alice, parties.admin):
        for name in BAD_NAMES:
            for rpc, call in name_calls(stub, name).items():
                error = await refused(call, Code.INVALID_ARGUMENT)
                assert details(error)[1] == ["name"], (rpc, name)


async def test_someone_elses_or_a_missing_run_is_denied_the_same_way_to_non_admins(
    parties: Parties,
) -> None:
    theirs = parties.finished.name
    missing = "runs/never-created"
    for stub, name in ((parties.bob, theirs), (parties.bob, missing), (parties.alice, missing)):
        for rpc, call in name_calls(stub, name).items():
            error = await refused(call, Code.PERMISSION_DENIED)
            reason, _, _ = details(error)
            assert reason == "NOT_OWNER", (rpc, name)
            # Nothing in the message tells existing runs from missing ones.
            assert "does not exist" not in str(error.details()), (rpc, name)
    # bob's refusals changed nothing of alice's run.
    assert (await parties.alice.GetRun(GetRun(name=theirs))).run == parties.finished


async def test_an_admin_gets_not_found_for_a_missing_run_and_sees_everyone_elses(
    parties: Parties,
) -> None:
    for _rpc, call in name_calls(parties.admin, "runs/never-created").items():
        await refused(call, Code.NOT_FOUND)
    name = parties.finished.name
    assert (await parties.admin.GetRun(GetRun(name=name))).run == parties.finished
    listed = await parties.admin.ListRunCandidates(ListCandidates(name=name, page_size=3))
    assert len(listed.candidates) == 3
    events = await watch_all(parties.admin, WatchRun(name=name))
    assert events[-1].state_changed.state == SUCCEEDED
    assert await parties.names(parties.admin) == [name]
    assert await parties.names(parties.bob) == []


# --- CancelRun ----------------------------------------------------------------------------


async def test_cancel_with_a_stale_etag_is_aborted_and_with_the_current_one_cancels(
    parties: Parties,
) -> None:
    alice = parties.alice
    request = run_request(evaluations=10**9)  # runs until cancelled
    created = (await alice.CreateRun(request)).run

    async def moved_on() -> orchestrator_pb2.Run | None:
        run = (await alice.GetRun(GetRun(name=created.name))).run
        return run if run.state == RUNNING and run.progress.evaluations else None

    await eventually(moved_on, 30, what="the run to verify its first generation")
    error = await refused(
        alice.CancelRun(CancelRun(name=created.name, etag=created.etag)), Code.ABORTED
    )
    assert details(error)[0] == "STALE_ETAG"
    assert (await alice.GetRun(GetRun(name=created.name))).run.state == RUNNING
    error = await refused(
        alice.CancelRun(CancelRun(name=created.name, etag="e" * 65)), Code.INVALID_ARGUMENT
    )
    assert details(error)[1] == ["etag"]
    # bob cannot cancel it, with or without its etag.
    current = (await alice.GetRun(GetRun(name=created.name))).run
    await refused(
        parties.bob.CancelRun(CancelRun(name=created.name, etag=current.etag)),
        Code.PERMISSION_DENIED,
    )
    cancelled = (await alice.CancelRun(CancelRun(name=created.name))).run
    assert cancelled.state == CANCELLED
    assert cancelled.end_time.seconds > 0
    # Its progress and candidates so far stay readable, and stop moving.
    assert cancelled.progress.evaluations >= current.progress.evaluations > 0
    listed = await alice.ListRunCandidates(ListCandidates(name=created.name, page_size=5))
    assert listed.candidates[0] == cancelled.progress.best
    later = (await alice.GetRun(GetRun(name=created.name))).run
    assert later == cancelled
    # Cancelling a CANCELLED run returns it unchanged, whatever the etag.
    for etag in ("", created.etag, "not-an-etag-of-it"):
        again = (await alice.CancelRun(CancelRun(name=created.name, etag=etag))).run
        assert again == cancelled
    events = await watch_all(alice, WatchRun(name=created.name))
    assert events[-1].state_changed.state == CANCELLED


async def test_cancelling_a_finished_run_is_failed_precondition(parties: Parties) -> None:
    name = parties.finished.name
    for etag in ("", parties.finished.etag, "stale"):
        await refused(
            parties.alice.CancelRun(CancelRun(name=name, etag=etag)), Code.FAILED_PRECONDITION
        )
    assert (await parties.alice.GetRun(GetRun(name=name))).run == parties.finished


# --- pages --------------------------------------------------------------------------------


async def test_page_size_and_token_checks_of_list_runs(parties: Parties) -> None:
    alice = parties.alice
    error = await refused(alice.ListRuns(ListRuns(page_size=-1)), Code.INVALID_ARGUMENT)
    assert details(error)[1] == ["page_size"]
    for token in ("garbage", "x" * 1025, "e30", pages.encode_page_token(pages.PagePosition("a"))):
        error = await refused(alice.ListRuns(ListRuns(page_token=token)), Code.INVALID_ARGUMENT)
        assert details(error)[1] == ["page_token"], token
    error = await refused(alice.ListRuns(ListRuns(state=cast(Any, 77))), Code.INVALID_ARGUMENT)
    assert details(error)[1] == ["state"]
    huge = await alice.ListRuns(ListRuns(page_size=2**31 - 1))
    assert [r.name for r in huge.runs] == [parties.finished.name]
    assert not huge.next_page_token


async def test_page_tokens_stay_with_their_listing(parties: Parties) -> None:
    alice = parties.alice
    for _ in range(2):
        await alice.CreateRun(run_request(evaluations=100))
    first = await alice.ListRuns(ListRuns(page_size=1))
    assert len(first.runs) == 1
    assert first.next_page_token
    # Another caller, or other filters, cannot continue this listing.
    every = orchestrator_pb2.RUN_STATE_UNSPECIFIED
    for stub, state in ((parties.bob, every), (parties.admin, every), (alice, SUCCEEDED)):
        error = await refused(
            stub.ListRuns(ListRuns(page_size=1, page_token=first.next_page_token, state=state)),
            Code.INVALID_ARGUMENT,
        )
        assert details(error)[:2] == ("INVALID_PAGE_TOKEN", ["page_token"])
    name = parties.finished.name
    other = (await alice.CreateRun(run_request(evaluations=200))).run
    await watch_to_end(alice, other.name)
    listed = await alice.ListRunCandidates(ListCandidates(name=name, page_size=10))
    assert len(listed.candidates) == 10
    assert listed.next_page_token
    for request in (
        ListCandidates(name=other.name, page_size=10, page_token=listed.next_page_token),
        ListCandidates(
            name=name,
            page_size=10,
            page_token=listed.next_page_token,
            status=candidate_pb2.VERDICT_STATUS_PASSED,
        ),
    ):
        error = await refused(alice.ListRunCandidates(request), Code.INVALID_ARGUMENT)
        assert details(error)[:2] == ("INVALID_PAGE_TOKEN", ["page_token"])


async def test_list_runs_pages_through_every_run(parties: Parties) -> None:
    alice = parties.alice
    for _ in range(3):
        await alice.CreateRun(run_request(evaluations=100))
    everything = await parties.names(alice)
    assert len(everything) == 4
    first = await alice.ListRuns(ListRuns(page_size=1))
    paged = [r.name for r in first.runs]
    token = first.next_page_token
    while token:
        page = await alice.ListRuns(ListRuns(page_size=1, page_token=token))
        paged += [r.name for r in page.runs]
        token = page.next_page_token
    assert paged == everything


async def test_list_run_candidates_pages_through_every_candidate(parties: Parties) -> None:
    alice = parties.alice
    name = parties.finished.name
    huge = await alice.ListRunCandidates(ListCandidates(name=name, page_size=2**31 - 1))
    everything = [c.candidate.id for c in huge.candidates]
    assert len(everything) == parties.finished.progress.evaluations
    first = await alice.ListRunCandidates(ListCandidates(name=name, page_size=10))
    # bob may not continue alice's listing: her run is not visible to him.
    await refused(
        parties.bob.ListRunCandidates(
            ListCandidates(name=name, page_size=10, page_token=first.next_page_token)
        ),
        Code.PERMISSION_DENIED,
    )
    paged = [c.candidate.id for c in first.candidates]
    token = first.next_page_token
    while token:
        page = await alice.ListRunCandidates(
            ListCandidates(name=name, page_size=10, page_token=token)
        )
        paged += [c.candidate.id for c in page.candidates]
        token = page.next_page_token
    assert paged == everything


async def test_list_run_candidates_checks_its_page_fields(parties: Parties) -> None:
    alice = parties.alice
    name = parties.finished.name
    error = await refused(
        alice.ListRunCandidates(ListCandidates(name=name, page_size=-5)), Code.INVALID_ARGUMENT
    )
    assert details(error)[1] == ["page_size"]
    error = await refused(
        alice.ListRunCandidates(ListCandidates(name=name, status=cast(Any, 99))),
        Code.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["status"]
    for token in ("garbage", "y" * 1025):
        error = await refused(
            alice.ListRunCandidates(ListCandidates(name=name, page_token=token)),
            Code.INVALID_ARGUMENT,
        )
        assert details(error)[1] == ["page_token"]
    huge = await alice.ListRunCandidates(ListCandidates(name=name, page_size=2**31 - 1))
    assert len(huge.candidates) == parties.finished.progress.evaluations
    scores = [c.verdict.score for c in huge.candidates]
    assert scores == sorted(scores)


def forged_run_token(subject: str, after: str) -> str:
    filters = pages.filters_digest("runs", subject, 0)
    return pages.encode_page_token(pages.PagePosition(after), filters)


def forged_candidate_token(name: str, after: str) -> str:
    filters = pages.filters_digest("candidates", name, 0)
    return pages.encode_page_token(pages.PagePosition(after), filters)


FORGED_POSITIONS = [
    '[1e400,"runs/x"]',  # an infinite create time
    "[1" + "0" * 30 + ',"runs/x"]',  # beyond int64
    "[-1" + "0" * 30 + ',"runs/x"]',
    '[1,"runs/x",3]',
    '{"a":1}',
    '[NaN,"x"]',
    '["a","b"]',
    "null",
    "1" + "0" * 400,
]


async def test_forged_page_tokens_are_refused_never_internal(parties: Parties) -> None:
    """Tokens are not signed: a client may forge one for its own listing's filters. A
    forged position must be INVALID_PAGE_TOKEN or serve a page, never INTERNAL."""
    alice, name = parties.alice, parties.finished.name
    for after in FORGED_POSITIONS:
        code, text = await outcome(
            alice.ListRuns(ListRuns(page_token=forged_run_token("alice", after)))
        )
        assert code in (Code.OK, Code.INVALID_ARGUMENT), (after, code, text)
        code, text = await outcome(
            alice.ListRunCandidates(
                ListCandidates(name=name, page_token=forged_candidate_token(name, after))
            )
        )
        assert code in (Code.OK, Code.INVALID_ARGUMENT), (after, code, text)


# --- WatchRun -----------------------------------------------------------------------------


async def test_watch_with_a_negative_after_sequence_is_invalid_argument(parties: Parties) -> None:
    error = await refused(
        drain(parties.alice.WatchRun(WatchRun(name=parties.finished.name, after_sequence=-1))),
        Code.INVALID_ARGUMENT,
    )
    assert details(error)[1] == ["after_sequence"]


async def test_watching_a_finished_run_replays_from_after_sequence_and_ends(
    parties: Parties,
) -> None:
    name = parties.finished.name
    events = await watch_all(parties.alice, WatchRun(name=name))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    tail = await watch_all(parties.alice, WatchRun(name=name, after_sequence=len(events) - 2))
    assert tail == events[-2:]


@pytest.mark.parametrize("beyond", [0, 1, 10**12])
async def test_watching_a_finished_run_from_its_end_ends(parties: Parties, beyond: int) -> None:
    """A client whose stream broke right after the terminal event resumes from its
    sequence: the run is over, so the stream ends with nothing; beyond the last event is
    OUT_OF_RANGE (last_sequence). It never hangs."""
    name = parties.finished.name
    last = len(await watch_all(parties.alice, WatchRun(name=name)))
    stream = parties.alice.WatchRun(WatchRun(name=name, after_sequence=last + beyond), timeout=30)
    try:
        async with asyncio.timeout(3):
            code, text = await outcome(drain(stream))
    finally:
        stream.cancel()
    assert code == (Code.OK if beyond == 0 else Code.OUT_OF_RANGE), (code, text)


async def test_watching_a_live_run_from_beyond_its_end_is_out_of_range(
    parties: Parties,
) -> None:
    created = (await parties.alice.CreateRun(run_request(evaluations=1000))).run
    stream = parties.alice.WatchRun(WatchRun(name=created.name, after_sequence=10**12), timeout=60)
    try:
        async with asyncio.timeout(8):
            code, text = await outcome(drain(stream))
    finally:
        stream.cancel()
    assert code == Code.OUT_OF_RANGE, (code, text)  # nothing would ever come
    events = await watch_all(parties.alice, WatchRun(name=created.name))
    assert events[-1].state_changed.state == SUCCEEDED


async def test_watch_from_before_the_retained_events_is_out_of_range(tmp_path: Path) -> None:
    parties = await ready(tmp_path, orchestrator_keep_events=4)
    try:
        name = parties.finished.name
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch_all(parties.alice, WatchRun(name=name))
        assert caught.value.code() == Code.OUT_OF_RANGE
        _reason, _, metadata = details(caught.value)
        first = int(metadata["first_sequence"])
        assert first > 1
        kept = await watch_all(parties.alice, WatchRun(name=name, after_sequence=first - 1))
        assert len(kept) == 4
        assert [e.sequence for e in kept] == list(range(first, first + 4))
        assert kept[-1].state_changed.state == SUCCEEDED
    finally:
        await parties.suite.close()


# --- authentication and scopes ------------------------------------------------------------


def stub_with(suite: Suite, metadata: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(suite.server.address)
    suite.channels.append(channel)
    path = "/helix.v1.OrchestratorService/"
    calls: dict[str, tuple[Any, Any]] = {
        "CreateRun": (run_request(), orchestrator_pb2.CreateRunResponse),
        "GetRun": (GetRun(name="runs/x"), orchestrator_pb2.GetRunResponse),
        "ListRuns": (ListRuns(), orchestrator_pb2.ListRunsResponse),
        "CancelRun": (CancelRun(name="runs/x"), orchestrator_pb2.CancelRunResponse),
        "ListRunCandidates": (
            ListCandidates(name="runs/x"),
            orchestrator_pb2.ListRunCandidatesResponse,
        ),
    }
    out: dict[str, Any] = {}
    for rpc, (request, response) in calls.items():
        method = channel.unary_unary(
            path + rpc,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        out[rpc] = lambda m=method, r=request: m(r, metadata=metadata, timeout=10)
    watch = channel.unary_stream(
        path + "WatchRun",
        request_serializer=WatchRun.SerializeToString,
        response_deserializer=orchestrator_pb2.WatchRunResponse.FromString,
    )
    out["WatchRun"] = lambda: drain(watch(WatchRun(name="runs/x"), metadata=metadata, timeout=10))
    return out


WRITES = {"CreateRun", "CancelRun"}


async def test_calls_without_a_valid_token_or_scope_are_refused(parties: Parties) -> None:
    suite = parties.suite
    signer = suite.server.security.signer
    expired = mint(signer, "alice", RUN_SCOPES, 60, now=1_000_000.0)
    unauthenticated = {
        "no token": (),
        "garbage token": (("authorization", "Bearer not-a-token"),),
        "expired token": (("authorization", f"Bearer {expired}"),),
    }
    before = await parties.names(parties.admin)
    for metadata in unauthenticated.values():
        for call in stub_with(suite, metadata).values():
            await refused(call(), Code.UNAUTHENTICATED)
    scoped = {
        "agents only": ("agents.read", "agents.write"),
        "read only": ("runs.read",),
        "write only": ("runs.write",),
    }
    for label, scopes in scoped.items():
        token = mint(signer, "carol", scopes, 3600)
        for rpc, call in stub_with(suite, (("authorization", f"Bearer {token}"),)).items():
            allowed = ("runs.write" if rpc in WRITES else "runs.read") in scopes
            if allowed:
                continue
            error = await refused(call(), Code.PERMISSION_DENIED)
            assert error.details(), (label, rpc)
    assert await parties.names(parties.admin) == before


# --- retries and limits -------------------------------------------------------------------


async def test_a_retry_after_the_run_ended_returns_it_in_its_current_state(
    parties: Parties,
) -> None:
    request = run_request(evaluations=200)
    created = (await parties.alice.CreateRun(request)).run
    await watch_to_end(parties.alice, created.name)
    again = (await parties.alice.CreateRun(request)).run
    assert again.name == created.name
    assert again.state == SUCCEEDED
    assert again.progress.evaluations >= 200


class RetriesMeet(SqliteRunStore):
    """The real store, except that `find_request` returns only once `callers` CreateRun
    calls have looked their request_id up (or a second passed: an engine that serializes
    them is not held up): retries that overlap in time, for certain."""

    def __init__(self, path: Path, callers: int) -> None:
        super().__init__(path)
        self.callers = callers
        self.arrived = 0
        self.met = asyncio.Event()

    async def find_request(self, owner: str, request_id: str) -> StoredRunRequest | None:
        found = await super().find_request(owner, request_id)
        self.arrived += 1
        if self.arrived >= self.callers:
            self.met.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                await self.met.wait()
        return found


@pytest.mark.parametrize("run_id", ["", "chosen-id"])
async def test_overlapping_retries_of_one_create_run_create_one_run(
    tmp_path: Path, run_id: str
) -> None:
    """A client whose first CreateRun timed out retries while the first is still being
    served: every attempt gets the first response, and one run exists. (The engine of the
    suite's orchestrator, on its real store and agent pool; the store only makes sure the
    attempts overlap.)"""
    registry = await start_suite(tmp_path / "registry")
    signer = registry.server.security.signer
    reads = MintingTokenSource(signer, "orchestrator", ["agents.read"])
    pool = AgentPool(
        lambda: grpc.aio.insecure_channel(
            registry.server.address, interceptors=bearer_interceptors(reads)
        ),
        grpc.aio.insecure_channel,
    )
    store = RetriesMeet(tmp_path / "runs.sqlite3", callers=3)
    engine = Orchestrator(store, pool)
    await engine.start()
    alice = Principal("alice", frozenset(RUN_SCOPES))
    try:
        request = run_request(evaluations=1000)
        request.run_id = run_id
        answers = await asyncio.gather(
            *(engine.create(alice, request) for _ in range(3)), return_exceptions=True
        )
        listed, _ = await engine.list_runs(alice, 0, None, 100)
        assert [a for a in answers if isinstance(a, BaseException)] == []
        assert len({a.name for a in answers}) == 1  # type: ignore[union-attr]
        assert len(listed) == 1
    finally:
        await engine.stop()
        await registry.close()


async def test_a_pending_run_cancels_by_etag_and_says_what_it_waits_for(
    tmp_path: Path,
) -> None:
    """No agent registered: the run waits (PENDING with the reason), its etag moves when
    the reason is recorded, a stale etag is ABORTED and the current one cancels it."""
    suite = await start_run_suite(tmp_path, generator_self_register=False)
    try:
        alice = runs_stub(suite, "alice")
        created = (await alice.CreateRun(run_request(dna="dnas/nope", oracle="oracles/x"))).run
        assert created.state == PENDING

        async def waiting() -> orchestrator_pb2.Run | None:
            run = (await alice.GetRun(GetRun(name=created.name))).run
            return run if run.state_message else None

        run = await eventually(waiting, 30, what="the run to record what it waits for")
        assert "dnas/nope" in run.state_message
        assert "oracles/x" in run.state_message
        assert run.etag != created.etag
        error = await refused(
            alice.CancelRun(CancelRun(name=created.name, etag=created.etag)), Code.ABORTED
        )
        assert details(error)[0] == "STALE_ETAG"
        admin = runs_stub(suite, "root", (ADMIN_SCOPE,))
        cancelled = (await admin.CancelRun(CancelRun(name=created.name, etag=run.etag))).run
        assert cancelled.state == CANCELLED
        assert cancelled.state_message == ""
        events = await watch_all(alice, WatchRun(name=created.name))
        states = [e.state_changed.state for e in events]
        assert states == [PENDING, PENDING, CANCELLED]
        assert events[1].state_changed.message == run.state_message
    finally:
        await suite.close()


async def test_one_principal_cannot_hold_unbounded_watch_streams(tmp_path: Path) -> None:
    """64 WatchRun streams per principal (the default): the next is RESOURCE_EXHAUSTED
    (TOO_MANY_WATCHERS); others still watch; a closed stream gives its place back. (No
    agent: the runs wait, PENDING, so no stream falls behind meanwhile.)"""
    suite = await start_run_suite(tmp_path, generator_self_register=False)
    alice, bob = runs_stub(suite, "alice"), runs_stub(suite, "bob")
    streams = []
    try:
        created = (await alice.CreateRun(run_request())).run
        for _ in range(64):
            stream = alice.WatchRun(WatchRun(name=created.name), timeout=60)
            streams.append(stream)
            await stream.read()  # subscribed: its first event arrived
        extra = alice.WatchRun(WatchRun(name=created.name), timeout=30)
        error = await refused(drain(extra), Code.RESOURCE_EXHAUSTED)
        assert details(error)[0] == "TOO_MANY_WATCHERS"
        mine = (await bob.CreateRun(run_request())).run
        bobs = bob.WatchRun(WatchRun(name=mine.name), timeout=30)
        first = await bobs.read()
        assert isinstance(first, orchestrator_pb2.WatchRunResponse)
        assert first.event.sequence == 1
        bobs.cancel()
        streams.pop().cancel()

        async def admitted() -> bool:
            again = alice.WatchRun(WatchRun(name=created.name), timeout=30)
            try:
                return isinstance(await again.read(), orchestrator_pb2.WatchRunResponse)
            finally:
                again.cancel()

        await eventually(
            admitted, 30, what="a closed stream's place to be given back", ignore=(grpc.RpcError,)
        )
    finally:
        for stream in streams:
            stream.cancel()
        await suite.close()


async def test_a_broken_watch_resumed_from_its_last_sequence_misses_nothing(
    parties: Parties,
) -> None:
    alice = parties.alice
    created = (await alice.CreateRun(run_request(evaluations=3000))).run
    received: list[orchestrator_pb2.RunEvent] = []
    for _ in range(3):  # break the stream twice, a few events in
        stream = alice.WatchRun(
            WatchRun(name=created.name, after_sequence=received[-1].sequence if received else 0),
            timeout=60,
        )
        for _ in range(4):
            response = await stream.read()
            if not isinstance(response, orchestrator_pb2.WatchRunResponse):
                break  # EOF: the run ended
            received.append(response.event)
        stream.cancel()
    received += await watch_to_end(alice, created.name, received[-1].sequence)
    assert [e.sequence for e in received] == list(range(1, len(received) + 1))
    assert received[-1].state_changed.state == SUCCEEDED
    assert received == await watch_all(alice, WatchRun(name=created.name))


async def test_only_the_best_keep_best_candidates_are_retained(tmp_path: Path) -> None:
    parties = await ready(tmp_path, orchestrator_keep_best=20)
    try:
        run = parties.finished
        assert run.progress.evaluations >= 200
        listed = await parties.alice.ListRunCandidates(
            ListCandidates(name=run.name, page_size=1000)
        )
        assert len(listed.candidates) == 20
        assert listed.candidates[0] == run.progress.best
        keys = [(c.verdict.score, c.candidate.id) for c in listed.candidates]
        assert keys == sorted(keys)
        # Every new best the run reported scores at least as well as the 20th kept one.
        events = await watch_all(parties.alice, WatchRun(name=run.name))
        bests = [e.new_best.best for e in events if e.HasField("new_best")]
        assert bests[-1] == run.progress.best
        assert bests[-1].verdict.score <= keys[-1][0]
    finally:
        await parties.suite.close()


async def test_a_watcher_that_does_not_keep_up_is_told_and_can_resume(tmp_path: Path) -> None:
    """The engine of the suite's orchestrator with per-watcher queues of 4 events, over a
    suite's registry and agents: a watcher that stops reading while the run goes on gets
    RESOURCE_EXHAUSTED (WATCHER_TOO_SLOW), never a silent gap; one that keeps up, and the
    slow one resuming from its last sequence, get every event once."""
    suite = await start_run_suite(tmp_path / "suite", orchestrator_embedded=False)
    signer = suite.server.security.signer
    calls = MintingTokenSource(signer, "helix-orchestrator", ORCHESTRATOR_SCOPES)

    def dial(address: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(calls))

    pool = AgentPool(
        lambda: dial(suite.server.address), dial, generator_major=generator_labels()[MAJOR_LABEL]
    )
    engine = Orchestrator(
        SqliteRunStore(tmp_path / "runs.sqlite3"), pool, RunSettings(watcher_queue=4)
    )
    await engine.start()
    alice = Principal("alice", frozenset(RUN_SCOPES))
    try:
        run = await engine.create(alice, run_request(evaluations=10**9))
        fast_events: list[orchestrator_pb2.RunEvent] = []

        async def keep_up() -> None:
            async for event in engine.watch(alice, run.name, 0):
                fast_events.append(event)

        fast = asyncio.create_task(keep_up())
        slow = engine.watch(alice, run.name, 0)
        first = await anext(slow)  # subscribed; then it stops reading

        async def generations() -> bool:
            return (await engine.get(alice, run.name)).progress.generation >= 6

        await eventually(generations, 30, what="the run to complete 6 generations")
        # The slow watcher first gets the rest of the history it read when it subscribed
        # (one page, however many events the run had by then), then the news that its
        # queue overflowed meanwhile.
        received = [first]

        async def read_until_refused() -> None:
            for _ in range(500):
                received.append(await anext(slow))

        with pytest.raises(errors.ResourceExhausted) as caught:
            await read_until_refused()
        assert caught.value.reason == "WATCHER_TOO_SLOW"
        assert [e.sequence for e in received] == list(range(1, len(received) + 1))
        await engine.cancel(alice, run.name, "")
        async with asyncio.timeout(30):
            await fast
        assert fast_events[-1].state_changed.state == CANCELLED
        assert [e.sequence for e in fast_events] == list(range(1, len(fast_events) + 1))
        resumed = [event async for event in engine.watch(alice, run.name, received[-1].sequence)]
        assert [*received, *resumed] == fast_events
        assert engine.watchers.count == 0
    finally:
        await engine.stop()
        await suite.close()
