"""Authentication and authorisation on a real server: every bad token on every call type."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
from dataclasses import dataclass

import grpc
import jwt
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from helix.common import logs

from auth_support import KeyRing, b64url, claims, hs256_by_hand, make_keyring, public_pem
from echo_service import EchoServicer, String, binding, stubs
from reflection_client import list_services
from waiting import eventually

CALL_TYPES = ["unary", "server_stream", "client_stream", "bidi"]


@pytest.fixture
def keyring(tmp_path) -> KeyRing:
    return make_keyring(tmp_path)


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    logs.configure("DEBUG", stream=stream)
    yield stream
    logs.shutdown()


@dataclass
class Target:
    """A server as the tests call it: an aio channel and the address for sync clients."""

    channel: grpc.aio.Channel
    address: str


async def invoke(target: Target, call_type: str, token: str | None) -> str:
    """Call the echo service with `token` (raw metadata) by one of the four call types.

    Request-streaming calls go through the synchronous client in a thread: grpc.aio's
    client can replace the server's status with INTERNAL "Internal error from Core" when
    the server ends the call before the client's writes are done (grpc/grpc#36066), which
    is exactly what an auth rejection does. The sync client reports what the server sent.
    """
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    if call_type in ("client_stream", "bidi"):
        return await asyncio.to_thread(_invoke_streaming, target.address, call_type, metadata)
    echo = stubs(target.channel)
    if call_type == "unary":
        return (await echo["Echo"](String(value="hi"), metadata=metadata, timeout=5)).value
    replies = echo["Count"](String(value="2"), metadata=metadata, timeout=5)
    return ",".join([r.value async for r in replies])


def _invoke_streaming(address: str, call_type: str, metadata: tuple) -> str:
    with grpc.insecure_channel(address) as channel:
        echo = stubs(channel)  # type: ignore[arg-type]  # the sync channel has the same stubs
        two = iter([String(value="1"), String(value="2")])
        try:
            if call_type == "client_stream":
                return echo["Sum"](two, metadata=metadata, timeout=5).value
            return ",".join(r.value for r in echo["Chat"](two, metadata=metadata, timeout=5))
        except grpc.RpcError as error:
            raise SyncRpcError(error) from None


class SyncRpcError(grpc.aio.AioRpcError):
    """A sync client's error in the shape the tests inspect."""

    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__(
            error.code(),
            grpc.aio.Metadata(),
            grpc.aio.Metadata(*error.trailing_metadata()),  # type: ignore[arg-type]
            error.details(),
        )


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    assert status is not None
    assert status.details[0].Unpack(info)
    assert info.domain == "helix"
    return info.reason


@pytest.fixture
async def secured(start_server, channel_to, keyring):
    server = await start_server([binding(EchoServicer())], security=keyring.security())
    return Target(channel_to(server), server.address)


@pytest.mark.parametrize("call_type", CALL_TYPES)
async def test_valid_token_passes_on_every_call_type(secured, keyring, call_type):
    expected = {"unary": "hi", "server_stream": "0,1", "client_stream": "3", "bidi": "1,2"}
    assert await invoke(secured, call_type, keyring.token()) == expected[call_type]


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
async def test_public_key_tokens_pass(secured, keyring, algorithm):
    token = keyring.ed25519_token() if algorithm == "EdDSA" else keyring.rsa_token()
    assert await invoke(secured, "unary", token) == "hi"


def bad_tokens(keyring: KeyRing) -> dict[str, tuple[str | None, str]]:
    """name -> (token, expected ErrorInfo reason); `None` means no metadata at all."""
    kid = keyring.hs256.kid
    other_secret = b"x" * 64
    none_header = b64url(json.dumps({"alg": "none", "kid": kid, "typ": "JWT"}).encode())
    none_claims = b64url(json.dumps(claims()).encode())
    confused = hs256_by_hand(
        {"alg": "HS256", "kid": "ed", "typ": "JWT"}, claims(), public_pem(keyring.ed25519_private)
    )
    huge = keyring.token(padding="p" * 9000)
    return {
        "missing": (None, "TOKEN_MISSING"),
        "garbage": ("garbage", "TOKEN_MALFORMED"),
        "bad_signature": (
            jwt.encode(claims(), other_secret, algorithm="HS256", headers={"kid": kid}),
            "TOKEN_BAD_SIGNATURE",
        ),
        "alg_none": (f"{none_header}.{none_claims}.", "TOKEN_BAD_ALGORITHM"),
        "algorithm_confusion": (confused, "TOKEN_BAD_ALGORITHM"),
        "expired": (keyring.token(exp=int(time.time()) - 3600), "TOKEN_EXPIRED"),
        "not_yet_valid": (keyring.token(nbf=int(time.time()) + 3600), "TOKEN_NOT_YET_VALID"),
        "wrong_audience": (keyring.token(aud="someone-else"), "TOKEN_WRONG_AUDIENCE"),
        "wrong_issuer": (keyring.token(iss="evil"), "TOKEN_WRONG_ISSUER"),
        "no_exp": (keyring.token(exp=None), "TOKEN_MISSING_CLAIM"),
        "unknown_kid": (
            jwt.encode(claims(), keyring.hs256.key, algorithm="HS256", headers={"kid": "nope"}),
            "TOKEN_UNKNOWN_KEY",
        ),
        "too_large": (huge, "TOKEN_TOO_LARGE"),
        "rsa_public_key_as_secret": (
            hs256_by_hand(
                {"alg": "HS256", "kid": "rsa", "typ": "JWT"},
                claims(),
                public_pem(keyring.rsa_private),
            ),
            "TOKEN_BAD_ALGORITHM",
        ),
        "scope_smuggled_by_unicode_space": (
            keyring.token(scope="agents.read\u00a0admin"),
            "TOKEN_BAD_SCOPE",
        ),
    }


BAD = [
    "missing",
    "garbage",
    "bad_signature",
    "alg_none",
    "algorithm_confusion",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "no_exp",
    "unknown_kid",
    "too_large",
    "rsa_public_key_as_secret",
    "scope_smuggled_by_unicode_space",
]


@pytest.mark.parametrize("call_type", CALL_TYPES)
@pytest.mark.parametrize("case", BAD)
async def test_bad_credentials_are_unauthenticated(secured, keyring, case, call_type):
    token, reason = bad_tokens(keyring)[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await invoke(secured, call_type, token)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value.details()
    assert reason_of(caught.value) == reason
    if token:
        assert token not in str(caught.value.details())


async def test_refusals_are_counted_by_reason(start_server, channel_to, keyring):
    server = await start_server([binding(EchoServicer())], security=keyring.security())
    channel = Target(channel_to(server), server.address)
    for token in (None, "garbage", keyring.token(scope="dna.read")):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await invoke(channel, "unary", token)

    def refused(reason: str) -> float | None:
        return server.metrics.registry.get_sample_value(
            "helix_auth_refused_total", {"reason": reason}
        )

    assert (refused("TOKEN_MISSING"), refused("TOKEN_MALFORMED"), refused("SCOPE_MISSING")) == (
        1,
        1,
        1,
    )


@pytest.mark.parametrize("call_type", CALL_TYPES)
async def test_right_token_wrong_scope_is_permission_denied(secured, keyring, call_type):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await invoke(secured, call_type, keyring.token(scope="dna.read runs.read"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(caught.value) == "SCOPE_MISSING"
    assert "agents.read" in str(caught.value.details())


async def test_admin_holds_every_listed_scope(secured, keyring):
    assert await invoke(secured, "bidi", keyring.token(scope="admin")) == "1,2"


async def test_a_method_missing_from_the_scope_table_is_denied_even_to_admins(secured, keyring):
    metadata = (("authorization", f"Bearer {keyring.token(scope='admin')}"),)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs(secured.channel)["Fail"](String(value="x"), metadata=metadata, timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(caught.value) == "METHOD_NOT_ALLOWED"


async def test_health_and_reflection_need_no_token(secured):
    health = health_pb2_grpc.HealthStub(secured.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert "helix.test.EchoService" in await list_services(secured.channel)


async def test_verified_tokens_are_cached(start_server, channel_to, keyring):
    security = keyring.security()
    server = await start_server([binding(EchoServicer())], security=security)
    channel = Target(channel_to(server), server.address)
    token = keyring.token()
    for _ in range(5):
        await invoke(channel, "unary", token)
    assert (security.verifier.misses, security.verifier.hits) == (1, 4)


async def test_logs_never_contain_a_token(start_server, channel_to, keyring, log_stream):
    server = await start_server([binding(EchoServicer())], security=keyring.security())
    channel = Target(channel_to(server), server.address)
    tokens = [t for t, _ in bad_tokens(keyring).values() if t] + [keyring.token()]
    for token in tokens:
        for call_type in CALL_TYPES:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await invoke(channel, call_type, token)
    # An access line is written when the server finishes a call, which may be just after
    # the client has its answer.
    expected = len(tokens) * len(CALL_TYPES)
    await eventually(
        lambda: log_stream.getvalue().count("rpc finished") >= expected, what="every access line"
    )
    logs.shutdown()
    text = log_stream.getvalue()
    assert text.count("rpc finished") == expected
    for token in tokens:
        signature = token.rpartition(".")[2]
        assert token not in text
        assert len(signature) < 8 or signature not in text
    assert '"principal":"alice"' in text


async def test_rotation_adds_a_secret_without_downtime(start_server, channel_to, keyring):
    security = keyring.security()
    server = await start_server([binding(EchoServicer())], security=security)
    channel = Target(channel_to(server), server.address)
    old = keyring.token()
    new_secret = b"n" * 48
    path = keyring.directory / "hs" / "hs-new.hs256"
    path.write_text(base64.b64encode(new_secret).decode())
    path.chmod(0o600)
    new = jwt.encode(claims(), new_secret, algorithm="HS256", headers={"kid": "hs-new"})
    await eventually(lambda: "hs-new" in security.verifier.keys.kids, what="the new key loaded")
    assert await invoke(channel, "unary", new) == "hi"
    assert await invoke(channel, "unary", old) == "hi"
    assert security.signer is not None
    assert security.signer.kid == "hs-new"


async def test_jwks_file_is_reloaded_when_it_changes(start_server, channel_to, keyring, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    first, second = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()

    def jwk(kid, private):
        return {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key())), "kid": kid}

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk("j1", first)]}))
    security = keyring.security(auth_jwks_file=jwks)
    server = await start_server([binding(EchoServicer())], security=security)
    channel = Target(channel_to(server), server.address)

    def token(kid, private):
        return jwt.encode(claims(), private, algorithm="EdDSA", headers={"kid": kid})

    assert await invoke(channel, "unary", token("j1", first)) == "hi"
    jwks.write_text(json.dumps({"keys": [jwk("j2", second)]}))
    await eventually(lambda: "j2" in security.verifier.keys.kids, what="the JWKS reloaded")
    assert await invoke(channel, "unary", token("j2", second)) == "hi"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await invoke(channel, "unary", token("j1", first))
    assert reason_of(caught.value) == "TOKEN_UNKNOWN_KEY"


async def test_a_flooding_principal_does_not_starve_others(start_server, channel_to, keyring):
    security = keyring.security(rate_read=5.0, rate_burst=1.0)
    server = await start_server([binding(EchoServicer())], security=security)
    channel = Target(channel_to(server), server.address)
    flooder, bystander = keyring.token(sub="flood"), keyring.token(sub="calm")
    outcomes = await asyncio.gather(
        *(invoke(channel, "unary", flooder) for _ in range(40)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(refused) >= 30
    error = refused[0]
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(error) == "RATE_LIMITED"
    status = rpc_status.from_call(error)
    kinds = {d.TypeName() for d in status.details}
    assert {"google.rpc.RetryInfo", "google.rpc.QuotaFailure"} <= kinds
    # The other principal's calls keep succeeding.
    for _ in range(4):
        assert await invoke(channel, "unary", bystander) == "hi"
    limited = server.metrics.registry.get_sample_value(
        "helix_rate_limited_total", {"rate_class": "read"}
    )
    assert limited == len(refused)


async def test_two_authorization_entries_are_refused(secured, keyring):
    metadata = (
        ("authorization", f"Bearer {keyring.token()}"),
        ("authorization", "Bearer garbage"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs(secured.channel)["Echo"](String(value="x"), metadata=metadata, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(caught.value) == "TOKEN_AMBIGUOUS"


async def test_deleting_a_key_file_revokes_its_tokens_even_cached(
    start_server, channel_to, keyring
):
    security = keyring.security(auth_public_keys=f"ed={keyring.ed25519_pem}")
    server = await start_server([binding(EchoServicer())], security=security)
    channel = Target(channel_to(server), server.address)
    token = keyring.ed25519_token()
    assert await invoke(channel, "unary", token) == "hi"  # now cached
    keyring.ed25519_pem.unlink()
    await eventually(lambda: "ed" not in security.verifier.keys.kids, what="the deleted key gone")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await invoke(channel, "unary", token)
    assert reason_of(caught.value) == "TOKEN_UNKNOWN_KEY"
    assert await invoke(channel, "unary", keyring.token()) == "hi"  # HS256 key still there


async def test_a_broken_key_file_keeps_the_current_keys(start_server, channel_to, keyring):
    security = keyring.security()
    server = await start_server([binding(EchoServicer())], security=security)
    channel = Target(channel_to(server), server.address)
    keyring.rsa_pem.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n")
    await eventually(lambda: security.stats.key_reload_failures, what="the broken file noticed")
    assert security.stats.key_reloads == 0
    assert security._reloader is not None
    assert not security._reloader.done()
    assert await invoke(channel, "unary", keyring.ed25519_token()) == "hi"
