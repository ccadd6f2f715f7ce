"""Pure parts of security: limiter, scope table, ownership, keys, token sources, config."""

from __future__ import annotations

import asyncio
import json
import os
import time

import jwt
import pytest

from helix.common import errors
from helix.common.config import ConfigError, ServerConfig
from helix.common.services import SERVICE_DESCRIPTORS
from helix.security import scopes
from helix.security.client import (
    FileTokenSource,
    MintingTokenSource,
    StaticTokenSource,
    service_token_source,
)
from helix.security.keys import KeyMaterialError, ensure_hs256_secret, load_hs256_dir, parse_jwks
from helix.security.principal import Principal, may_act_on, require_owner
from helix.security.ratelimit import Rate, TokenBucketLimiter
from helix.security.setup import security_from_config
from helix.security.tokens import TokenPolicy, TokenVerifier, inspect_token, mint

from auth_support import claims, make_keyring

# --- rate limiting --------------------------------------------------------------------------


def test_bucket_allows_burst_then_refills_at_rate():
    limiter = TokenBucketLimiter({"read": Rate(rate=10, burst=3)})
    assert [limiter.acquire("a", "read", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a", "read", 0.0)
    assert wait == pytest.approx(0.1)
    assert limiter.acquire("a", "read", 0.1) == 0.0
    assert limiter.acquire("a", "read", 0.1) > 0


def test_principals_and_classes_have_separate_buckets():
    limiter = TokenBucketLimiter({"read": Rate(1, 1), "write": Rate(1, 1)})
    assert limiter.acquire("a", "read", 0.0) == 0.0
    assert limiter.acquire("a", "read", 0.0) > 0
    assert limiter.acquire("b", "read", 0.0) == 0.0
    assert limiter.acquire("a", "write", 0.0) == 0.0
    assert limiter.acquire("a", "admin-only-class", 0.0) == 0.0  # no rate: unlimited


def test_limiter_state_stays_bounded_after_100k_principals():
    limiter = TokenBucketLimiter({"read": Rate(100, 10)}, max_entries=10_000)
    for i in range(100_000):
        limiter.acquire(f"principal-{i}", "read", i * 1e-6)
    assert len(limiter) == 10_000
    # The most recent principals are the ones remembered.
    limiter.acquire("principal-99999", "read", 1.0)
    assert len(limiter) == 10_000


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0.5)])
def test_bad_rates_are_refused(rate, burst):
    with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
        Rate(rate, burst)


# --- scope table ------------------------------------------------------------------------------


def test_every_helix_rpc_has_a_scope_and_nothing_else_does():
    paths = {f"/{s.full_name}/{m.name}" for s in SERVICE_DESCRIPTORS for m in s.methods}
    assert set(scopes.METHOD_SCOPES) == paths
    assert set(scopes.METHOD_SCOPES.values()) <= set(scopes.ALL_SCOPES)
    for scope in scopes.METHOD_SCOPES.values():
        assert scope in scopes.SCOPE_CLASSES


def test_unknown_methods_need_a_scope_nobody_has():
    assert scopes.required_scope("/helix.v1.RegistryService/Nope") is None
    assert scopes.is_open("/grpc.health.v1.Health/Check")
    assert not scopes.is_open("/helix.v1.RegistryService/GetAgent")


# --- ownership --------------------------------------------------------------------------------

ALICE = Principal("alice", frozenset({"runs.read"}))
BOB = Principal("bob", frozenset({"runs.read"}))
ADMIN = Principal("root", frozenset({"admin"}))


def test_owner_and_admin_may_act():
    assert may_act_on(ALICE, "alice")
    assert not may_act_on(BOB, "alice")
    assert may_act_on(ADMIN, "alice")
    assert ADMIN.has_scope("agents.write")


def test_strangers_get_the_same_not_found_whether_or_not_it_exists():
    with pytest.raises(errors.NotFound) as exists:
        require_owner(BOB, "alice", "runs/r1")
    with pytest.raises(errors.NotFound) as missing:
        require_owner(BOB, None, "runs/r2")
    assert type(exists.value) is type(missing.value)
    assert exists.value.reason == missing.value.reason
    require_owner(ALICE, "alice", "runs/r1")
    require_owner(ADMIN, "alice", "runs/r1")


# --- keys ---------------------------------------------------------------------------------------


def test_embedded_secret_is_created_private_and_reused(tmp_path):
    keys, signer = ensure_hs256_secret(tmp_path / "keys")
    files = list((tmp_path / "keys").iterdir())
    assert len(files) == 1
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "keys").stat().st_mode & 0o777) == "0o700"
    again, signer_again = ensure_hs256_secret(tmp_path / "keys")
    assert signer_again == signer
    assert keys.kids == again.kids == [signer.kid]


def test_a_secret_readable_by_others_is_refused(tmp_path):
    _, signer = ensure_hs256_secret(tmp_path)
    path = tmp_path / f"{signer.kid}.hs256"
    path.chmod(0o644)
    with pytest.raises(KeyMaterialError, match="readable by others"):
        load_hs256_dir(tmp_path)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "not a JWKS document"),
        ('{"keys": {}}', "not a JWKS document"),
        ('{"keys": [{"kty": "OKP"}]}', "has no 'kid'"),
        ('{"keys": [{"kid": "a", "kty": "oct", "k": "c2VjcmV0"}]}', "not a public key"),
    ],
)
def test_bad_jwks_documents_are_refused(document, message):
    with pytest.raises(KeyMaterialError, match=message):
        parse_jwks(document, "jwks.json")


def test_no_keys_at_all_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no token verification keys"):
        security_from_config(ServerConfig(port=0))


def test_broken_public_key_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match="not a readable PEM public key"):
        security_from_config(ServerConfig(port=0, auth_public_keys=str(bad)))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tls_cert_file": "cert.pem"}, "TLS needs both a certificate file and a key file"),
        ({"auth_leeway": 600}, "HELIX_AUTH_LEEWAY: must be within 0s..5m"),
        ({"rate_read": 0.0}, "HELIX_RATE_READ: 0.0 is not within"),
        ({"auth_issuer": " "}, "HELIX_AUTH_ISSUER: must not be empty"),
    ],
)
def test_bad_security_settings_are_refused(tmp_path, settings, message):
    resolved = {k: (tmp_path / v if k.startswith("tls") else v) for k, v in settings.items()}
    if "tls_cert_file" in resolved:
        resolved["tls_cert_file"].write_text("x")
    with pytest.raises(ConfigError, match=message):
        ServerConfig(port=0, **resolved)


# --- tokens -------------------------------------------------------------------------------------


def test_verifier_caches_until_expiry_then_refuses(tmp_path):
    keyring = make_keyring(tmp_path)
    now = [time.time()]
    verifier = TokenVerifier(
        keyring.security().verifier.keys, TokenPolicy(leeway=0), clock=lambda: now[0]
    )
    token = keyring.token(exp=int(now[0]) + 5)
    assert verifier.verify(token).subject == "alice"
    assert verifier.verify(token).subject == "alice"
    assert (verifier.misses, verifier.hits) == (1, 1)
    now[0] += 10
    with pytest.raises(errors.Unauthenticated) as caught:
        verifier.verify(token)
    assert caught.value.reason == "TOKEN_EXPIRED"


def test_verifier_cache_is_bounded(tmp_path):
    keyring = make_keyring(tmp_path)
    verifier = TokenVerifier(keyring.security().verifier.keys, cache_size=3)
    for i in range(10):
        verifier.verify(keyring.token(sub=f"user-{i}"))
    assert len(verifier._cache) == 3


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"sub": ""}, "TOKEN_BAD_SUBJECT"),
        ({"sub": "x" * 300}, "TOKEN_BAD_SUBJECT"),
        ({"scope": ["a", "b"]}, "TOKEN_BAD_SCOPE"),
        ({"aud": None}, "TOKEN_MISSING_CLAIM"),
        ({"iss": None}, "TOKEN_MISSING_CLAIM"),
    ],
)
def test_bad_claims_are_refused(tmp_path, overrides, reason):
    keyring = make_keyring(tmp_path)
    verifier = keyring.security().verifier
    token = jwt.encode(
        claims(**overrides),
        keyring.hs256.key,
        algorithm="HS256",
        headers={"kid": keyring.hs256.kid},
    )
    with pytest.raises(errors.Unauthenticated) as caught:
        verifier.verify(token)
    assert caught.value.reason == reason


def test_minted_tokens_verify_and_inspect(tmp_path):
    keyring = make_keyring(tmp_path)
    token = mint(keyring.hs256, "svc:oracle", ["verify", "agents.write"], 60)
    principal = keyring.security().verifier.verify(token)
    assert principal.subject == "svc:oracle"
    assert principal.scopes == {"verify", "agents.write"}
    shown = inspect_token(token)
    assert shown["header"]["kid"] == keyring.hs256.kid
    assert shown["claims"]["scope"] == "agents.write verify"
    with pytest.raises(ValueError, match="not a well-formed JWT"):
        inspect_token("nope")


# --- token sources ------------------------------------------------------------------------------


async def test_minting_source_renews_when_a_third_of_the_ttl_is_left(tmp_path):
    keyring = make_keyring(tmp_path)
    now = [1_000_000.0]
    source = MintingTokenSource(keyring.hs256, "svc", ["verify"], ttl=300, clock=lambda: now[0])
    first = await source.token()
    now[0] += 150
    assert await source.token() == first
    now[0] += 60  # 210 s in: less than a third of 300 s left
    renewed = await source.token()
    assert renewed != first
    assert inspect_token(renewed)["claims"]["exp"] == int(now[0]) + 300


async def test_file_source_rereads_a_changed_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("first-token\n")
    source = FileTokenSource(path, check_interval=0.0)
    assert await source.token() == "first-token"
    path.write_text("second-token-longer\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert await source.token() == "second-token-longer"


async def test_file_source_reports_a_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        await FileTokenSource(tmp_path / "none").token()
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        await FileTokenSource(tmp_path / "empty").token()


def test_static_source_refuses_an_empty_token():
    with pytest.raises(ValueError, match="empty"):
        StaticTokenSource("  ")
    assert asyncio.run(StaticTokenSource(" t ").token()) == "t"


def test_jwks_keys_carry_their_algorithm(tmp_path):
    keyring = make_keyring(tmp_path)
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(keyring.ed25519_private.public_key()))
    keys = parse_jwks(json.dumps({"keys": [{**jwk, "kid": "e1"}]}), "jwks")
    found = keys.get("e1")
    assert found is not None
    assert found.algorithm == "EdDSA"


async def test_service_token_source_prefers_the_mounted_secret(tmp_path):
    keyring = make_keyring(tmp_path)
    secret = tmp_path / "service-token"
    secret.write_text("from-the-file")
    env = {"HELIX_SERVICE_TOKEN_FILE": str(secret), "HELIX_SERVICE_TOKEN": "from-env"}
    source = service_token_source("svc:gen", ["agents.write"], signer=keyring.hs256, env=env)
    assert await source.token() == "from-the-file"
    env.pop("HELIX_SERVICE_TOKEN_FILE")
    source = service_token_source("svc:gen", ["agents.write"], signer=keyring.hs256, env=env)
    assert await source.token() == "from-env"
    minted = service_token_source("svc:gen", ["agents.write"], signer=keyring.hs256, env={})
    principal = keyring.security().verifier.verify(await minted.token())
    assert (principal.subject, set(principal.scopes)) == ("svc:gen", {"agents.write"})
    with pytest.raises(ConfigError, match="no credentials for svc:gen"):
        service_token_source("svc:gen", ["agents.write"], signer=None, env={})
