"""Hypothesis against OrchestratorService on a live suite: near-valid requests to every RPC
never produce INTERNAL or UNKNOWN, and no run the fuzz got created fails with an internal
error.

tests/test_fuzz.py sends random messages of every request type, which the validation
refuses before they reach the engine. Here the requests start valid and are bent one
field at a time (budgets at and beyond their caps, non-finite targets, inline DNAs from
the examples with random strategy values or wholly random, DNAs paired with oracles that
do not take them, names of runs that exist, are someone else's, or never were; real,
stale, cross-listing and forged page tokens; sequences and etags of every kind), by
alice, bob and an admin, so they reach the run engine, the store and the agents.

The suite is `helix up` in a process of its own (its generator and oracle agents
registered, so runs really run): the agents draw from the `random` module, which must
not run in Hypothesis's process while it draws.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_fuzz import SERVER_FAULTS

import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
from helix.common import pages
from helix.genome.documents import parse_dna_text
from helix.security.keys import load_hs256_dir
from helix.security.tokens import mint

from proto_strategies import DOUBLES, ENUMS, STRINGS, messages

ROOT = Path(__file__).resolve().parent.parent
DNA_DIR = ROOT / "examples" / "dna"
HELIX = str(Path(sys.executable).parent / "helix")
LISTENING = re.compile(r"^helix listening on (?P<address>\S+:\d+)$")
SERVICE = "/helix.v1.OrchestratorService/"
EXAMPLES = {
    name: parse_dna_text((DNA_DIR / f"{name}.yaml").read_text()).dna
    for name in ("rastrigin", "sphere", "onemax", "tsp")
}
ORACLES = [
    "oracles/rastrigin",
    "oracles/sphere",
    "oracles/onemax",
    "oracles/tsp",
    "oracles/nope",
]
PRINCIPALS = ("alice", "bob", "root")
FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)
# Runs the fuzz may leave running: small budgets only; others are cancelled at once so
# the suite's two cores stay free for the calls.
SMALL_BUDGET = 600
ENUM_VALUES: st.SearchStrategy[Any] = ENUMS  # (enum fields take plain ints on the wire)


@dataclass
class Live:
    """The suite process, a channel, tokens per principal, and what the fuzz learnt."""

    process: subprocess.Popen[str]
    channel: grpc.Channel
    tokens: dict[str, str]
    log: Path
    runs: dict[str, str] = field(default_factory=dict)  # name -> owner
    page_tokens: list[str] = field(default_factory=list)
    etags: list[str] = field(default_factory=list)

    def metadata(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[who]}"),)

    def call(self, rpc: str, request: Any, response: Any, who: str) -> Any:
        method = self.channel.unary_unary(
            SERVICE + rpc,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        return method(request, metadata=self.metadata(who), timeout=20)

    def watch(self, request: orchestrator_pb2.WatchRunRequest, who: str) -> list[Any]:
        method = self.channel.unary_stream(
            SERVICE + "WatchRun",
            request_serializer=orchestrator_pb2.WatchRunRequest.SerializeToString,
            response_deserializer=orchestrator_pb2.WatchRunResponse.FromString,
        )
        # A live run's stream rightly waits for its next event: a short deadline ends it.
        return list(method(request, metadata=self.metadata(who), timeout=0.3))


def _read_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: Any) -> Iterator[Live]:
    data_dir = tmp_path_factory.mktemp("orchestrator-fuzz")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIX_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "HELIX_RATE_READ": "1000000",
            "HELIX_RATE_WRITE": "1000000",
            "HELIX_RATE_DATA": "1000000",
            "HELIX_CONCURRENT_SHARE_PER_PRINCIPAL": "1.0",
            "HELIX_ORCHESTRATOR_WAIT_TIMEOUT": "5s",
            "HELIX_GENERATOR_DNA_DIR": str(DNA_DIR),
        }
    )
    log = data_dir / "suite.log"
    with log.open("w") as errors:
        process = subprocess.Popen(
            [HELIX, "up", "--port", "0", "--data-dir", str(data_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,
        )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        address = ""
        while not address:
            try:
                line = lines.get(timeout=30)
            except queue.Empty:
                raise AssertionError(f"helix up did not start: {log.read_text()[-3000:]}") from None
            found = LISTENING.match(line)
            address = found["address"] if found else ""
        _, signer = load_hs256_dir(data_dir / "keys")
        assert signer is not None
        scopes = {"alice": ["runs.read", "runs.write"], "bob": ["runs.read", "runs.write"]}
        tokens = {who: mint(signer, who, scopes.get(who, ["admin"]), 3600) for who in PRINCIPALS}
        with grpc.insecure_channel(address) as channel:
            running = Live(process, channel, tokens, log)
            _wait_for_agents(running)
            yield running
            _check_after(running)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        process.stdout.close()


def _wait_for_agents(live: Live) -> None:
    """One run to its end: the orchestrator then knows the generator and oracle agents
    (an unknown DNA or oracle is refused rather than waited for)."""
    request = _valid_request()
    run = live.call("CreateRun", request, orchestrator_pb2.CreateRunResponse, "alice").run
    live.runs[run.name] = "alice"
    events = list(
        live.channel.unary_stream(
            SERVICE + "WatchRun",
            request_serializer=orchestrator_pb2.WatchRunRequest.SerializeToString,
            response_deserializer=orchestrator_pb2.WatchRunResponse.FromString,
        )(
            orchestrator_pb2.WatchRunRequest(name=run.name),
            metadata=live.metadata("alice"),
            timeout=60,
        )
    )
    assert events[-1].event.state_changed.state == orchestrator_pb2.RUN_STATE_SUCCEEDED


def _check_after(live: Live) -> None:
    """The suite still serves; no run failed with an internal error; no unexpected error
    was logged."""
    assert live.process.poll() is None, "the suite died"
    health = health_pb2_grpc.HealthStub(live.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    listed = live.call(
        "ListRuns",
        orchestrator_pb2.ListRunsRequest(page_size=1000),
        orchestrator_pb2.ListRunsResponse,
        "root",
    )
    internal = [(r.name, r.error) for r in listed.runs if "internal error" in r.error]
    assert not internal, internal
    for run in listed.runs:  # leave nothing running
        if run.state in (orchestrator_pb2.RUN_STATE_PENDING, orchestrator_pb2.RUN_STATE_RUNNING):
            live.call(
                "CancelRun",
                orchestrator_pb2.CancelRunRequest(name=run.name),
                orchestrator_pb2.CancelRunResponse,
                "root",
            )
    text = live.log.read_text(errors="replace")
    assert "unexpected error" not in text, text[text.index("unexpected error") - 500 :][:4000]
    assert "Traceback" not in text, text[text.index("Traceback") :][:4000]


# --- strategies ---------------------------------------------------------------------------


def _valid_request() -> orchestrator_pb2.CreateRunRequest:
    return orchestrator_pb2.CreateRunRequest(
        run=orchestrator_pb2.Run(
            dna_name="dnas/rastrigin",
            oracle="oracles/rastrigin",
            objective=common_pb2.OBJECTIVE_MINIMIZE,
            budget=orchestrator_pb2.RunBudget(max_evaluations=200),
            seed=1,
        ),
        request_id=uuid.uuid4().hex,
    )


def known(values: Callable[[], list[str]], default: str) -> st.SearchStrategy[str]:
    """One of what the fuzz learnt so far (runs, tokens, etags). The choice is an index
    drawn the same way whatever was learnt: Hypothesis requires each draw's shape not to
    depend on state outside the test case."""

    def pick(index: int) -> str:
        found = values()
        return found[index % len(found)] if found else default

    return st.integers(0, 1 << 16).map(pick)


COUNTS = st.one_of(
    st.sampled_from([0, 1, 2, 99, 100, 101, 500, 10**6, 10**6 + 1, 10**12, 10**12 + 1]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
)


@st.composite
def durations(draw: st.DrawFn) -> duration_pb2.Duration:
    seconds = draw(
        st.one_of(
            st.sampled_from([0, 1, 60, 30 * 86_400, 30 * 86_400 + 1, -1, 315_576_000_001]),
            st.integers(-(2**63), 2**63 - 1),
        )
    )
    nanos = draw(st.one_of(st.just(0), st.integers(-(2**31), 2**31 - 1)))
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


@st.composite
def budgets(draw: st.DrawFn) -> orchestrator_pb2.RunBudget:
    budget = orchestrator_pb2.RunBudget()
    if draw(st.booleans()):
        budget.max_evaluations = draw(COUNTS)
    if draw(st.booleans()):
        budget.max_generations = draw(COUNTS) % 2**32
    if draw(st.integers(0, 3)) == 0:
        budget.max_duration.CopyFrom(draw(durations()))
    return budget


@st.composite
def inline_dnas(draw: st.DrawFn) -> dna_pb2.Dna:
    """An example DNA; perhaps with random strategy values or a random gene; or random."""
    how = draw(st.sampled_from(["example", "example", "example", "strategy", "gene", "random"]))
    if how == "random":
        return cast(dna_pb2.Dna, draw(messages(dna_pb2.Dna.DESCRIPTOR)))
    dna = dna_pb2.Dna()
    dna.CopyFrom(EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))])
    if how == "strategy":
        alpha = dna.strategy.alpha
        alpha.population_size = draw(
            st.one_of(st.sampled_from([0, 1, 2, 3, 100_000, 100_001]), st.integers(0, 2**32 - 1))
        )
        if draw(st.booleans()):
            alpha.mutation_rate = draw(DOUBLES)
        if draw(st.booleans()):
            alpha.elitism = draw(st.integers(0, 2**32 - 1))
        if draw(st.booleans()):
            alpha.tournament_size = draw(st.integers(0, 2**32 - 1))
    elif how == "gene":
        dna.genes[0].MergeFrom(cast(dna_pb2.Gene, draw(messages(dna_pb2.Gene.DESCRIPTOR))))
    return dna


def bend(draw: st.DrawFn) -> bool:
    """Whether to bend a field: one time in six, so many requests stay valid and run."""
    return draw(st.integers(0, 5)) == 0


@st.composite
def create_requests(  # noqa: C901 - one branch per field bent
    draw: st.DrawFn, live: Live
) -> orchestrator_pb2.CreateRunRequest:
    request = _valid_request()
    run = request.run
    if draw(st.booleans()):
        run.dna.CopyFrom(draw(inline_dnas()))
    elif draw(st.booleans()):
        run.dna_name = draw(
            st.one_of(st.sampled_from(["dnas/" + n for n in EXAMPLES] + ["dnas/nope"]), STRINGS)
        )
    if bend(draw):
        run.oracle = draw(st.one_of(st.sampled_from(ORACLES), STRINGS))
    if bend(draw):
        run.objective = draw(ENUM_VALUES)
    if bend(draw):
        run.budget.CopyFrom(draw(budgets()))
    if bend(draw):
        run.target_score = draw(DOUBLES)
    if draw(st.booleans()):
        run.ClearField("seed")
    elif draw(st.booleans()):
        run.seed = draw(st.integers(0, 2**64 - 1))
    if bend(draw):
        run.display_name = draw(STRINGS)
    if draw(st.integers(0, 3)) == 0:  # output-only fields, to be ignored
        run.name = draw(st.one_of(known(lambda: sorted(live.runs), "runs/x"), STRINGS))
        run.state = draw(ENUM_VALUES)
        run.etag = draw(STRINGS)
    if bend(draw):
        request.run_id = draw(
            st.one_of(
                st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
                known(lambda: [n.removeprefix("runs/") for n in live.runs], "x"),
                STRINGS,
            )
        )
    if draw(st.integers(0, 3)) == 0:
        request.request_id = draw(st.one_of(st.sampled_from(["same", "again"]), STRINGS))
    return request


@st.composite
def names(draw: st.DrawFn, live: Live) -> str:
    """Mostly runs the fuzz knows (anyone's), else missing or malformed names."""
    if draw(st.integers(0, 4)) < 3:
        return draw(known(lambda: sorted(live.runs), "runs/never-created"))
    fixed = ["runs/never-created", "runs/", "runs/A", "agents/x"]
    return draw(st.one_of(st.sampled_from(fixed), STRINGS))


POSITIONS = st.one_of(
    st.builds(
        lambda a, b: json.dumps([a, b], separators=(",", ":")),
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.floats(min_value=-9e18, max_value=9e18),
            st.text(max_size=5),
            st.none(),
            st.booleans(),
        ),
        st.text(max_size=20),
    ),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
)


PAGE_SIZES = st.one_of(st.integers(0, 1200), st.integers(-(2**31), 2**31 - 1))


def page_tokens(live: Live, digest: str) -> st.SearchStrategy[str]:
    """Real tokens (of any listing), tokens forged for this listing's filters digest (or
    another), or junk.

    Forged positions stay within int64 and finite doubles: beyond them is a known bug,
    tested in test_orchestrator_inputs.py (test_forged_page_tokens_are_refused_...)."""
    forged = st.builds(
        lambda after, found: pages.encode_page_token(pages.PagePosition(after), found),
        POSITIONS,
        st.one_of(st.just(digest), st.text(max_size=16)),
    )
    return st.one_of(st.just(""), known(lambda: live.page_tokens, ""), forged, STRINGS)


# --- the calls ----------------------------------------------------------------------------


def outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, Any]:
    try:
        answer = call()
    except grpc.RpcError as error:
        code, details = error.code(), str(error.details())
        assert code not in SERVER_FAULTS, (code, details)
        event(code.name)
        return code, details, None
    event("OK")
    return grpc.StatusCode.OK, "", answer


def after_create(live: Live, who: str, answer: Any) -> None:
    run = answer.run
    live.runs.setdefault(run.name, who)
    live.etags.append(run.etag)
    small = 0 < run.budget.max_evaluations <= SMALL_BUDGET
    if not small and run.state in (
        orchestrator_pb2.RUN_STATE_PENDING,
        orchestrator_pb2.RUN_STATE_RUNNING,
    ):
        outcome(
            lambda: live.call(
                "CancelRun",
                orchestrator_pb2.CancelRunRequest(name=run.name),
                orchestrator_pb2.CancelRunResponse,
                who,
            )
        )


@FUZZ
@given(data=st.data())
def test_create_run_never_faults(live: Live, data: st.DataObject) -> None:
    who = data.draw(st.sampled_from(PRINCIPALS), label="who")
    request = data.draw(create_requests(live), label="request")
    code, details, answer = outcome(
        lambda: live.call("CreateRun", request, orchestrator_pb2.CreateRunResponse, who)
    )
    if code == grpc.StatusCode.OK:
        assert answer.run.owner == who
        after_create(live, who, answer)
    else:
        assert code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.ALREADY_EXISTS,
        ), (code, details)


@FUZZ
@given(data=st.data())
def test_run_reads_never_fault(live: Live, data: st.DataObject) -> None:
    who = data.draw(st.sampled_from(PRINCIPALS), label="who")
    name = data.draw(names(live), label="name")
    rpc = data.draw(st.sampled_from(["GetRun", "CancelRun", "WatchRun", "ListRunCandidates"]))
    if rpc == "GetRun":
        outcome(
            lambda: live.call(
                "GetRun",
                orchestrator_pb2.GetRunRequest(name=name),
                orchestrator_pb2.GetRunResponse,
                who,
            )
        )
    elif rpc == "CancelRun":
        etags = known(lambda: live.etags, "")
        etag = data.draw(st.one_of(etags, etags, STRINGS), label="etag")
        outcome(
            lambda: live.call(
                "CancelRun",
                orchestrator_pb2.CancelRunRequest(name=name, etag=etag),
                orchestrator_pb2.CancelRunResponse,
                who,
            )
        )
    elif rpc == "WatchRun":
        after = data.draw(
            st.one_of(st.integers(0, 40), st.integers(-(2**63), 2**63 - 1)), label="after"
        )
        outcome(
            lambda: live.watch(
                orchestrator_pb2.WatchRunRequest(name=name, after_sequence=after), who
            )
        )
    else:
        status: Any = data.draw(st.one_of(st.integers(0, 5), ENUMS), label="status")
        token = data.draw(
            page_tokens(live, pages.filters_digest("candidates", name, status)),
            label="page_token",
        )
        size = data.draw(PAGE_SIZES, label="page_size")
        code, _, answer = outcome(
            lambda: live.call(
                "ListRunCandidates",
                orchestrator_pb2.ListRunCandidatesRequest(
                    name=name, page_size=size, page_token=token, status=status
                ),
                orchestrator_pb2.ListRunCandidatesResponse,
                who,
            )
        )
        if code == grpc.StatusCode.OK and answer.next_page_token:
            live.page_tokens.append(answer.next_page_token)


@FUZZ
@given(data=st.data())
def test_list_runs_never_faults(live: Live, data: st.DataObject) -> None:
    who = data.draw(st.sampled_from(PRINCIPALS), label="who")
    state: Any = data.draw(st.one_of(st.integers(0, 5), ENUMS), label="state")
    digest = pages.filters_digest("runs", who, state)
    token = data.draw(
        page_tokens(live, digest),
        label="page_token",
    )
    size = data.draw(PAGE_SIZES, label="page_size")
    code, _, answer = outcome(
        lambda: live.call(
            "ListRuns",
            orchestrator_pb2.ListRunsRequest(page_size=size, page_token=token, state=state),
            orchestrator_pb2.ListRunsResponse,
            who,
        )
    )
    if code == grpc.StatusCode.OK:
        if who != "root":
            assert all(r.owner == who for r in answer.runs)
        if answer.next_page_token:
            live.page_tokens.append(answer.next_page_token)
