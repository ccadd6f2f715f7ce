"""Keys and tokens for security tests: real HS256 secrets, Ed25519 and RSA key pairs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from helix.common.config import Duration, ServerConfig
from helix.security.keys import SigningKey, ensure_hs256_secret
from helix.security.setup import Security, security_from_config
from helix.security.tokens import TokenPolicy, mint

ECHO = "/helix.test.EchoService/"
# The echo service's scopes for tests: every method but `Fail` (left unmapped on purpose).
ECHO_SCOPES = {
    ECHO + "Echo": "agents.read",
    ECHO + "Sleep": "agents.read",
    ECHO + "Count": "agents.read",
    ECHO + "CountThenFail": "agents.read",
    ECHO + "Sum": "agents.read",
    ECHO + "Chat": "agents.read",
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT built without PyJWT (which refuses PEM-looking secrets)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(sub: str = "alice", scope: str = "agents.read", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    found = {
        "sub": sub,
        "scope": scope,
        "iss": "helix",
        "aud": "helix",
        "iat": now,
        "exp": now + 600,
    }
    found.update(overrides)
    return {k: v for k, v in found.items() if v is not None}


@dataclass
class KeyRing:
    """Every kind of key a test needs, on disk where a server reads them."""

    directory: Path
    hs256: SigningKey
    ed25519_private: ed25519.Ed25519PrivateKey
    rsa_private: rsa.RSAPrivateKey
    ed25519_pem: Path
    rsa_pem: Path

    def token(self, sub: str = "alice", scope: str = "agents.read", **overrides: Any) -> str:
        return jwt.encode(
            claims(sub, scope, **overrides),
            self.hs256.key,
            algorithm="HS256",
            headers={"kid": self.hs256.kid},
        )

    def ed25519_token(self, sub: str = "alice", scope: str = "agents.read") -> str:
        return jwt.encode(
            claims(sub, scope), self.ed25519_private, algorithm="EdDSA", headers={"kid": "ed"}
        )

    def rsa_token(self, sub: str = "alice", scope: str = "agents.read") -> str:
        return jwt.encode(
            claims(sub, scope), self.rsa_private, algorithm="RS256", headers={"kid": "rsa"}
        )

    def config(self, **overrides: Any) -> ServerConfig:
        settings: dict[str, Any] = {
            "port": 0,
            "grace_period": Duration(1),
            "auth_hs256_dir": self.directory / "hs",
            "auth_public_keys": f"ed={self.ed25519_pem},rsa={self.rsa_pem}",
            "auth_reload_interval": Duration(0.1),
        }
        settings.update(overrides)
        return ServerConfig(**settings)

    def security(self, **overrides: Any) -> Security:
        return security_from_config(self.config(**overrides), extra_scopes=ECHO_SCOPES)

    def mint(self, sub: str, scopes: list[str], ttl: float = 600) -> str:
        return mint(self.hs256, sub, scopes, ttl, TokenPolicy())


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_keyring(directory: Path) -> KeyRing:
    _, signer = ensure_hs256_secret(directory / "hs")
    ed = ed25519.Ed25519PrivateKey.generate()
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_pem = directory / "ed.pem"
    rs_pem = directory / "rsa.pem"
    ed_pem.write_bytes(public_pem(ed))
    rs_pem.write_bytes(public_pem(rs))
    return KeyRing(directory, signer, ed, rs, ed_pem, rs_pem)
