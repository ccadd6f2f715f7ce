"""The remote oracle kind: an oracle server forwarding to another OracleService over its
own channel, with deadlines and credit (services/helix/oracle/remote.py).

Real servers on 127.0.0.1 port 0: a "far" server (a real oracle server, or a hand-written
fake OracleService where the far side must misbehave) and a "near" server whose
configuration has `kind: remote` pointing at it.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
from helix.common import errors, reasons
from helix.common.channel import tls_channel_credentials
from helix.common.config import Duration
from helix.common.server import HelixServer, ServiceBinding
from helix.genome.codec import genome_id
from helix.oracle import remote
from helix.oracle.remote import RemoteOracle, checked_verdict
from helix.oracle.serving import OracleService, oracle_service
from helix.oracle.settings import OracleSettings

from auth_support import make_keyring
from tls_support import make_pki
from waiting import eventually

PASSED = candidate_pb2.VERDICT_STATUS_PASSED
ERROR = candidate_pb2.VERDICT_STATUS_ERROR
TIMEOUT = candidate_pb2.VERDICT_STATUS_TIMEOUT
SPHERE_DNA = dna_pb2.Dna(
    name="dnas/sphere-3d",
    genes=[dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=-5, high=5, size=3))],
)


def candidates(n: int, offset: float = 0.0) -> list[candidate_pb2.Candidate]:
    return [
        candidate_pb2.Candidate(genome=candidate_pb2.Genome(reals=[i / 50 + offset, 1.0, -2.0]))
        for i in range(n)
    ]


def sphere(candidate: candidate_pb2.Candidate) -> float:
    return sum(v * v for v in candidate.genome.reals)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


StartOracle = Callable[..., Awaitable[tuple[HelixServer, OracleService]]]


@pytest.fixture
def start_oracle(start_server: Any, tmp_path: Path) -> StartOracle:
    """Start an oracle server on the configuration `text` (a file in its own folder)."""
    count = 0

    async def start(
        text: str,
        *,
        files: dict[str, str] | None = None,
        security: Any = None,
        settings: dict[str, Any] | None = None,
        **server: Any,
    ) -> tuple[HelixServer, OracleService]:
        nonlocal count
        count += 1
        folder = tmp_path / f"oracle-{count}"
        folder.mkdir()
        for name, content in (files or {}).items():
            (folder / name).write_text(content)
        (folder / "oracles.yaml").write_text(text)
        options = {"oracle_config_poll": Duration(0.1), **(settings or {})}
        service = oracle_service(OracleSettings(oracle_config=folder / "oracles.yaml", **options))
        started = await start_server([service.binding], security=security, **server)
        return started, service

    return start


def remote_config(address: str, oracle: str = "sphere", **extra: str) -> str:
    lines = ["oracles:", "  proxied:", "    kind: remote", f"    address: {address}"]
    lines.append(f"    oracle: {oracle}")
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def proxied(service: OracleService) -> RemoteOracle:
    oracle = service.host.oracles["proxied"].oracle
    assert isinstance(oracle, RemoteOracle)
    return oracle


async def verify(
    channel: grpc.aio.Channel,
    oracle: str,
    batch: list[candidate_pb2.Candidate],
    *,
    dna: dna_pb2.Dna = SPHERE_DNA,
    candidate_timeout: float | None = None,
    credentials: grpc.CallCredentials | None = None,
) -> list[candidate_pb2.Verdict]:
    request = oracle_pb2.VerifyRequest(oracle=oracle, dna=dna, candidates=batch)
    if candidate_timeout is not None:
        request.timeout.FromNanoseconds(int(candidate_timeout * 1e9))
    stub = oracle_pb2_grpc.OracleServiceStub(channel)
    response = await stub.Verify(request, timeout=30, credentials=credentials)
    return list(response.verdicts)


# --- forwarding to a real oracle server -----------------------------------------------------


async def test_verdicts_through_a_remote_oracle_equal_the_remote_ones(start_oracle, channel_to):
    far, far_service = await start_oracle("oracles:\n  sphere:\n    kind: builtin\n")
    near, near_service = await start_oracle(remote_config(far.address))
    batch = candidates(50)
    direct = await verify(channel_to(far), "oracles/sphere", batch)
    forwarded = await verify(channel_to(near), "oracles/proxied", batch)
    assert [(v.candidate_id, v.status, v.score) for v in forwarded] == [
        (v.candidate_id, v.status, v.score) for v in direct
    ]
    assert [v.score for v in forwarded] == pytest.approx([sphere(c) for c in batch])
    assert proxied(near_service).healthy
    # What the near agent reports: a remote oracle, with the far side's objective and a
    # config_hash combining both configurations (the verdict cache is keyed by it).
    stub = oracle_pb2_grpc.OracleServiceStub(channel_to(near))
    info = (await stub.GetOracle(oracle_pb2.GetOracleRequest(name="oracles/proxied"))).oracle
    far_info = far_service.host.oracles["sphere"].spec.info()
    configured = near_service.host.oracles["proxied"].configured.config_hash
    assert info.kind == oracle_pb2.ORACLE_KIND_REMOTE
    assert info.objective == common_pb2.OBJECTIVE_MINIMIZE  # learned from the far side
    assert (
        info.config_hash
        == hashlib.sha256(f"{configured}:{far_info.config_hash}".encode()).hexdigest()
    )
    assert far.address in info.description


async def test_a_changed_remote_configuration_is_not_served_from_the_cache(
    start_oracle, channel_to, monkeypatch
):
    monkeypatch.setattr(remote, "REFRESH", 0.1)
    far, far_service = await start_oracle("oracles:\n  sphere:\n    kind: builtin\n")
    near, near_service = await start_oracle(remote_config(far.address))
    batch = candidates(5)
    first = await verify(channel_to(near), "oracles/proxied", batch)
    assert [v.score for v in first] == pytest.approx([sphere(c) for c in batch])
    again = await verify(channel_to(near), "oracles/proxied", batch)
    assert all(v.cached for v in again)  # the near agent's cache answered
    hash_before = near_service.host.oracles["proxied"].spec.config_hash

    # The far side now computes another function under the same oracle id.
    config = Path(str(far_service.host.config_file))
    text = "oracles:\n  sphere:\n    kind: builtin\n    function: rastrigin\n"
    await asyncio.to_thread(config.write_text, text)
    await eventually(
        lambda: near_service.host.oracles["proxied"].spec.config_hash != hash_before,
        what="the near agent to learn the far side's new config_hash",
    )
    after = await verify(channel_to(near), "oracles/proxied", batch)
    assert not any(v.cached for v in after)
    direct = await verify(channel_to(far), "oracles/sphere", batch)
    assert [v.score for v in after] == [v.score for v in direct]
    assert [v.score for v in after] != pytest.approx([v.score for v in first])


async def test_credit_of_a_small_remote_is_respected(start_oracle, channel_to):
    # capacity 10, half of it per stream: a batch of 100 goes out as pieces of at most 5.
    far, far_service = await start_oracle(
        "oracles:\n  sphere:\n    kind: builtin\n    capacity: 10\n"
    )
    near, near_service = await start_oracle(remote_config(far.address))
    batch = candidates(100)
    verdicts = await verify(channel_to(near), "oracles/proxied", batch)
    assert [v.status for v in verdicts] == [PASSED] * 100
    assert [v.score for v in verdicts] == pytest.approx([sphere(c) for c in batch])
    assert far_service.host.stats.batches >= 20
    assert proxied(near_service).resent == 0  # a credit overrun would have broken a stream


async def test_one_stream_per_dna_and_timeout_closed_when_idle(
    start_oracle, channel_to, monkeypatch
):
    far, far_service = await start_oracle("oracles:\n  sphere:\n    kind: builtin\n")
    near, near_service = await start_oracle(remote_config(far.address))
    oracle = proxied(near_service)
    channel = channel_to(near)
    await verify(channel, "oracles/proxied", candidates(10))
    (stream,) = oracle.streams.values()
    await verify(channel, "oracles/proxied", candidates(10, 0.5))
    assert list(oracle.streams.values()) == [stream]  # the same call carried both batches
    assert len(far_service.servicer.streams) == 1
    # (new candidates each time: the near agent's cache would answer repeated ones)
    await verify(channel, "oracles/proxied", candidates(10, 0.1), candidate_timeout=2.0)
    assert len(oracle.streams) == 2  # another timeout: another stream
    assert len(far_service.servicer.streams) == 2
    held = far_service.host.oracles["sphere"]
    assert held.free < held.spec.capacity  # each open stream holds a window of the far side

    # Idle streams are half-closed, giving the far side its capacity back.
    monkeypatch.setattr(remote, "IDLE_CLOSE", 0.2)
    await verify(channel, "oracles/proxied", candidates(10, 0.2))
    await verify(channel, "oracles/proxied", candidates(10, 0.3), candidate_timeout=2.0)
    await eventually(lambda: not oracle.streams, what="the idle streams to close")
    await eventually(lambda: not far_service.servicer.streams, what="the far side to end them")
    assert held.free == held.spec.capacity
    assert oracle.healthy  # closing an idle stream is no failure


async def test_a_dna_the_remote_refuses_gives_error_verdicts_with_its_reasons(
    start_oracle, channel_to
):
    far, _ = await start_oracle("oracles:\n  sphere:\n    kind: builtin\n")
    near, near_service = await start_oracle(remote_config(far.address))
    bits = dna_pb2.Dna(
        name="dnas/bits", genes=[dna_pb2.Gene(name="b", bits=dna_pb2.BitsGene(size=8))]
    )
    batch = [
        candidate_pb2.Candidate(genome=candidate_pb2.Genome(bits=bytes([i]))) for i in range(3)
    ]
    verdicts = await verify(channel_to(near), "oracles/proxied", batch, dna=bits)
    assert [v.status for v in verdicts] == [ERROR] * 3
    message = verdicts[0].message
    assert far.address in message
    assert "INVALID_ARGUMENT" in message
    assert "open.dna.genes[0]" in message  # the far side's BadRequest, naming the gene
    assert proxied(near_service).healthy  # the caller's DNA, not the remote, was wrong


async def test_remote_down_at_start_then_up_recovers(start_oracle, channel_to):
    port = free_port()
    address = f"127.0.0.1:{port}"
    near, near_service = await start_oracle(remote_config(address))
    oracle = proxied(near_service)
    assert not oracle.healthy
    assert not near_service.host.healthy
    verdicts = await verify(channel_to(near), "oracles/proxied", candidates(4))
    assert [v.status for v in verdicts] == [ERROR] * 4
    assert all(address in v.message and "unreachable" in v.message for v in verdicts)

    await start_oracle("oracles:\n  sphere:\n    kind: builtin\n", port=port)
    await eventually(lambda: oracle.healthy, 20, what="the remote oracle to recover")
    batch = candidates(4)
    verdicts = await verify(channel_to(near), "oracles/proxied", batch)
    assert [v.status for v in verdicts] == [PASSED] * 4
    assert [v.score for v in verdicts] == pytest.approx([sphere(c) for c in batch])


async def test_an_unknown_remote_oracle_is_degraded_with_a_clear_message(start_oracle, channel_to):
    far, _ = await start_oracle("oracles:\n  sphere:\n    kind: builtin\n")
    near, near_service = await start_oracle(remote_config(far.address, oracle="nothing"))
    assert not proxied(near_service).healthy
    (verdict,) = await verify(channel_to(near), "oracles/proxied", candidates(1))
    assert verdict.status == ERROR
    assert "oracles/nothing" in verdict.message
    assert "NOT_FOUND" in verdict.message


class SlowOracle:
    """A far oracle busy with real work: the builtin, after a pause per batch."""

    def __init__(self, inner: Any, pause: float) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.pause = pause
        self.healthy = True

    def check_dna(self, layout: Any) -> Any:
        return self.inner.check_dna(layout)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.inner.close()

    async def evaluate(self, *args: Any) -> Any:
        await asyncio.sleep(self.pause)
        return await self.inner.evaluate(*args)


@pytest.mark.parametrize("grace", [2.0, 0.0], ids=["drain", "cut"])
async def test_a_remote_stopping_mid_stream_loses_no_candidate(start_oracle, channel_to, grace):
    # Capacity 4, all of it for one stream: 40 candidates take ten pieces of 4, 0.2 s each.
    far, far_service = await start_oracle(
        "oracles:\n  sphere:\n    kind: builtin\n    capacity: 4\n    cache: false\n",
        settings={"oracle_stream_share": 1.0},
    )
    hosted = far_service.host.oracles["sphere"]
    hosted.oracle = SlowOracle(hosted.oracle, 0.2)
    near, near_service = await start_oracle(remote_config(far.address))
    batch = candidates(40)
    call = asyncio.ensure_future(verify(channel_to(near), "oracles/proxied", batch))
    await eventually(
        lambda: far_service.host.stats.verified.get(("sphere", "VERDICT_STATUS_PASSED"), 0) >= 8,
        what="the far side to have answered a few pieces",
    )
    await far.shutdown(grace)
    verdicts = await call
    # One verdict per candidate, in order: none lost, none doubled.
    assert [v.candidate_id for v in verdicts] == [genome_id(c.genome) for c in batch]
    statuses = Counter(v.status for v in verdicts)
    assert statuses[PASSED] >= 8
    assert statuses[ERROR] >= 1
    assert set(statuses) <= {PASSED, ERROR}
    for candidate, verdict in zip(batch, verdicts, strict=True):
        if verdict.status == PASSED:
            assert verdict.score == pytest.approx(sphere(candidate))
        else:
            assert far.address in verdict.message
    assert not proxied(near_service).healthy  # unreachable now


# --- a far side that misbehaves (a hand-written fake OracleService) -------------------------


class FakeRemote(oracle_pb2_grpc.OracleServiceServicer):
    """An OracleService whose VerifyStream keeps the credit protocol (and checks that the
    client does) but misbehaves on purpose: `break_first` fails its first stream after
    taking a batch, `break_always` every stream, `hang` never answers, `wrong_ids` answers
    the second candidate of each batch with the first one's id."""

    def __init__(self, mode: str, window: int = 8) -> None:
        self.mode = mode
        self.window = window
        self.streams = 0
        self.sent: Counter[str] = Counter()
        self.overruns = 0

    def info(self, name: str) -> oracle_pb2.OracleInfo:
        return oracle_pb2.OracleInfo(
            name=name,
            kind=oracle_pb2.ORACLE_KIND_COMMAND,
            config_hash="a" * 64,
            capacity=self.window,
            objective=common_pb2.OBJECTIVE_MINIMIZE,
        )

    async def ListOracles(self, request: Any, context: Any) -> oracle_pb2.ListOraclesResponse:
        return oracle_pb2.ListOraclesResponse(oracles=[self.info("oracles/sphere")])

    async def GetOracle(self, request: Any, context: Any) -> oracle_pb2.GetOracleResponse:
        return oracle_pb2.GetOracleResponse(oracle=self.info(request.name))

    async def Verify(self, request: Any, context: Any) -> oracle_pb2.VerifyResponse:
        raise errors.Unimplemented("this fake serves VerifyStream only")

    async def VerifyStream(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[oracle_pb2.VerifyStreamResponse]:
        self.streams += 1
        number = self.streams
        messages = aiter(request_iterator)
        first = await anext(messages)
        assert first.WhichOneof("kind") == "open"
        allowance = self.window
        yield oracle_pb2.VerifyStreamResponse(
            credit=oracle_pb2.VerifyCredit(candidates=self.window)
        )
        async for message in messages:
            batch = message.batch
            n = len(batch.candidates)
            if n > allowance:
                self.overruns += 1
            allowance -= n
            self.sent.update(c.id for c in batch.candidates)
            if self.mode == "break_always" or (self.mode == "break_first" and number == 1):
                raise errors.Unavailable("going away", reason=reasons.ORACLE_DRAINING)
            if self.mode == "hang":
                continue
            verdicts = [
                candidate_pb2.Verdict(candidate_id=c.id, status=PASSED, score=sphere(c))
                for c in batch.candidates
            ]
            if self.mode == "wrong_ids" and n > 1:
                verdicts[1].candidate_id = verdicts[0].candidate_id
            yield oracle_pb2.VerifyStreamResponse(
                verdicts=oracle_pb2.VerdictBatch(batch_id=batch.batch_id, verdicts=verdicts)
            )
            allowance += n
            yield oracle_pb2.VerifyStreamResponse(credit=oracle_pb2.VerifyCredit(candidates=n))


@pytest.fixture
def start_fake(start_server: Any) -> Callable[[FakeRemote], Awaitable[HelixServer]]:
    async def start(fake: FakeRemote) -> HelixServer:
        def add(server: grpc.aio.Server) -> None:
            oracle_pb2_grpc.add_OracleServiceServicer_to_server(fake, server)

        server: HelixServer = await start_server([ServiceBinding("helix.v1.OracleService", add)])
        return server

    return start


async def test_a_broken_stream_is_reopened_and_its_pieces_resent_once(
    start_fake, start_oracle, channel_to
):
    fake = FakeRemote("break_first")
    far = await start_fake(fake)
    near, near_service = await start_oracle(remote_config(far.address))
    batch = candidates(20)
    verdicts = await verify(channel_to(near), "oracles/proxied", batch)
    assert [v.status for v in verdicts] == [PASSED] * 20
    assert [v.score for v in verdicts] == pytest.approx([sphere(c) for c in batch])
    assert fake.streams == 2
    first_piece = [c for c, sends in fake.sent.items() if sends == 2]
    assert len(first_piece) == 8  # the piece the broken stream took, sent once more
    assert proxied(near_service).resent == 8
    assert fake.overruns == 0
    assert proxied(near_service).healthy  # an answered piece resets the failure count


async def test_pieces_failing_twice_get_error_verdicts_and_degrade_the_oracle(
    start_fake, start_oracle, channel_to
):
    fake = FakeRemote("break_always")
    far = await start_fake(fake)
    near, near_service = await start_oracle(remote_config(far.address))
    verdicts = await verify(channel_to(near), "oracles/proxied", candidates(20))
    assert len(verdicts) == 20
    assert {v.status for v in verdicts} == {ERROR}
    assert all(far.address in v.message for v in verdicts)
    assert "UNAVAILABLE (ORACLE_DRAINING): going away" in verdicts[0].message
    assert set(fake.sent.values()) == {2}  # every candidate sent exactly twice
    assert not proxied(near_service).healthy  # consecutive failed pieces


async def test_a_piece_past_its_deadline_gets_timeout_verdicts(
    start_fake, start_oracle, channel_to, monkeypatch
):
    monkeypatch.setattr(remote, "DEADLINE_MARGIN", 0.2)
    fake = FakeRemote("hang")
    far = await start_fake(fake)
    near, _ = await start_oracle(remote_config(far.address))
    started = asyncio.get_running_loop().time()
    verdicts = await verify(
        channel_to(near), "oracles/proxied", candidates(3), candidate_timeout=0.1
    )
    elapsed = asyncio.get_running_loop().time() - started
    assert [v.status for v in verdicts] == [TIMEOUT] * 3
    assert "no verdicts within 0.3" in verdicts[0].message
    assert far.address in verdicts[0].message
    assert fake.streams == 2  # re-sent once on a new stream
    assert elapsed < 5


async def test_a_cancelled_call_sends_nothing_more(
    start_fake, start_oracle, channel_to, monkeypatch
):
    monkeypatch.setattr(remote, "DEADLINE_MARGIN", 0.3)
    fake = FakeRemote("hang", window=4)
    far = await start_fake(fake)
    near, near_service = await start_oracle(remote_config(far.address))
    oracle = proxied(near_service)
    request = oracle_pb2.VerifyRequest(
        oracle="oracles/proxied", dna=SPHERE_DNA, candidates=candidates(20)
    )
    request.timeout.FromMilliseconds(100)
    stub = oracle_pb2_grpc.OracleServiceStub(channel_to(near))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Verify(request, timeout=0.2)  # the client gives up first
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The piece in flight runs out its deadline; what was queued behind it is dropped.
    await eventually(lambda: not oracle.streams, what="the stream to finish and close")
    assert sum(fake.sent.values()) == 4  # the first piece only, never re-sent
    assert fake.streams == 1


async def test_a_verdict_for_the_wrong_candidate_is_an_error(start_fake, start_oracle, channel_to):
    fake = FakeRemote("wrong_ids", window=4)
    far = await start_fake(fake)
    near, _ = await start_oracle(remote_config(far.address))
    batch = candidates(8)
    verdicts = await verify(channel_to(near), "oracles/proxied", batch)
    wrong = [i for i, v in enumerate(verdicts) if v.status == ERROR]
    assert wrong == [1, 5]  # the second candidate of each piece of 4
    assert "remote answered the wrong candidate" in verdicts[1].message
    assert all(verdicts[i].score == pytest.approx(sphere(batch[i])) for i in (0, 2, 3, 4))


# --- TLS and a bearer token from a file -----------------------------------------------------


async def test_tls_and_the_token_file_reach_a_secured_remote(start_oracle, channel_to, tmp_path):
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    keys = make_keyring(tmp_path)
    far, _ = await start_oracle(
        "oracles:\n  sphere:\n    kind: builtin\n",
        security=keys.security(),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
    )
    # A token that may read oracles but not verify: reachable, yet every stream refused.
    files = {"ca.pem": pki.ca.read_text(), "token": keys.mint("near-agent", ["oracles.read"])}
    near, near_service = await start_oracle(
        remote_config(far.address, ca_file="ca.pem", token_file="token"), files=files
    )
    oracle = proxied(near_service)
    assert oracle.problem is None
    (verdict,) = await verify(channel_to(near), "oracles/proxied", candidates(1))
    assert verdict.status == ERROR
    assert "PERMISSION_DENIED" in verdict.message

    # The token file is re-read when it changes (a rotated secret).
    token_file = oracle.configured.base_dir / "token"
    token_file.write_text(keys.mint("near-agent", ["oracles.read", "verify"]))

    async def passes() -> bool:
        (verdict,) = await verify(channel_to(near), "oracles/proxied", candidates(1, 0.5))
        return verdict.status == PASSED

    await eventually(passes, what="the rotated token to be used")
    # Without the CA the far side's certificate is not trusted: ca_file did the work.
    async with grpc.aio.secure_channel(far.address, tls_channel_credentials(None)) as untrusted:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await oracle_pb2_grpc.OracleServiceStub(untrusted).ListOracles(
                oracle_pb2.ListOraclesRequest(), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# --- pure pieces ------------------------------------------------------------------------------


def test_checked_verdict_refuses_what_a_verdict_may_not_carry() -> None:
    good = candidate_pb2.Verdict(candidate_id="a" * 32, status=PASSED, score=1.5)
    assert checked_verdict(good, "a" * 32) is good
    cases = {
        "wrong candidate": candidate_pb2.Verdict(candidate_id="b" * 32, status=PASSED),
        "no valid status": candidate_pb2.Verdict(candidate_id="a" * 32),
        "not a finite number": candidate_pb2.Verdict(
            candidate_id="a" * 32, status=PASSED, score=float("nan")
        ),
        "invalid metrics": candidate_pb2.Verdict(
            candidate_id="a" * 32, status=PASSED, metrics={"Bad Key": 1.0}
        ),
    }
    for expected, verdict in cases.items():
        checked = checked_verdict(verdict, "a" * 32)
        assert checked.status == ERROR
        assert checked.candidate_id == "a" * 32
        assert expected in checked.message
    long = candidate_pb2.Verdict(candidate_id="a" * 32, status=ERROR, message="x" * 5000)
    assert len(checked_verdict(long, "a" * 32).message) == 1024
