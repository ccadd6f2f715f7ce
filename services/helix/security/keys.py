"""Keys that sign and verify Helix tokens, and where they come from.

- Embedded default: HS256 secrets, one per file `<kid>.hs256` in a key directory under the
  data dir, created (mode 0600) on first start. The newest signs; all verify, so a new
  secret can be added before an old one is removed (rotation without downtime).
- Real deployments: EdDSA (Ed25519) and RS256 public keys from PEM files, or a JWKS file
  that is re-read when it changes. The algorithm of each key is fixed here, from the key's
  own type, never taken from a token's header.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

HS256_SUFFIX = ".hs256"
_SECRET_BYTES = 64


class KeyMaterialError(ValueError):
    """A key file is missing, unreadable, malformed or of an unsupported type."""


@dataclass(frozen=True)
class VerificationKey:
    """One key that may verify tokens: its id, its one algorithm, and the key material."""

    kid: str
    algorithm: str
    key: Any


@dataclass(frozen=True)
class SigningKey:
    """A key this process signs tokens with (the embedded HS256 secret)."""

    kid: str
    algorithm: str
    key: Any


class KeySet:
    """Verification keys by `kid`. Immutable; a reload builds a new set."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._keys: dict[str, VerificationKey] = {}
        for key in keys:
            if key.kid in self._keys:
                raise KeyMaterialError(f"two keys have the id {key.kid!r}")
            self._keys[key.kid] = key

    def get(self, kid: str | None) -> VerificationKey | None:
        """The key for `kid`; a token without `kid` may use the only key of a one-key set."""
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def merged(self, other: KeySet) -> KeySet:
        return KeySet([*self._keys.values(), *other._keys.values()])


def _check_private_file(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyMaterialError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")


def load_hs256_dir(directory: Path) -> tuple[KeySet, SigningKey | None]:
    """Every `<kid>.hs256` secret in `directory`; the most recently written one signs."""
    keys = []
    newest: tuple[int, SigningKey] | None = None
    for path in sorted(directory.glob(f"*{HS256_SUFFIX}")):
        _check_private_file(path)
        try:
            secret = base64.b64decode(path.read_text().strip(), validate=True)
        except (OSError, ValueError) as exc:
            raise KeyMaterialError(f"{path}: not a base64 secret ({exc})") from None
        if len(secret) < 32:
            raise KeyMaterialError(f"{path}: an HS256 secret needs at least 32 bytes")
        kid = path.name[: -len(HS256_SUFFIX)]
        keys.append(VerificationKey(kid, "HS256", secret))
        written = path.stat().st_mtime_ns
        if newest is None or written >= newest[0]:
            newest = (written, SigningKey(kid, "HS256", secret))
    return KeySet(keys), newest[1] if newest else None


def ensure_hs256_secret(directory: Path) -> tuple[KeySet, SigningKey]:
    """Load the embedded secrets, creating the first one (mode 0600) if there is none."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    keyset, signer = load_hs256_dir(directory)
    if signer is not None:
        return keyset, signer
    kid = f"hs-{secrets.token_hex(4)}"
    path = directory / f"{kid}{HS256_SUFFIX}"
    encoded = base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(encoded + "\n")
    keyset, signer = load_hs256_dir(directory)
    assert signer is not None
    return keyset, signer


def _algorithm_for(key: Any, source: str) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise KeyMaterialError(f"{source}: RSA keys need at least 2048 bits")
        return "RS256"
    raise KeyMaterialError(
        f"{source}: only Ed25519 (EdDSA) and RSA (RS256) public keys are supported"
    )


def load_public_pem(path: Path, kid: str | None = None) -> VerificationKey:
    """A public key from a PEM file; its id is `kid` or the file name without suffix."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyMaterialError(f"{path}: not a readable PEM public key ({exc})") from None
    return VerificationKey(kid or path.stem, _algorithm_for(key, str(path)), key)


def parse_public_key_specs(spec: str) -> list[tuple[str | None, Path]]:
    """Parse `kid=path.pem,other.pem` into (kid or None, path) pairs."""
    pairs: list[tuple[str | None, Path]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        kid, sep, path = item.partition("=")
        pairs.append((kid, Path(path)) if sep else (None, Path(item)))
    return pairs


def parse_jwks(document: Mapping[str, Any] | str, source: str) -> KeySet:
    """Public keys from a JWKS document; each needs `kid` and an EdDSA or RS256 key."""
    try:
        data = json.loads(document) if isinstance(document, str) else dict(document)
        entries = data["keys"]
        if not isinstance(entries, list):
            raise TypeError("'keys' is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyMaterialError(f"{source}: not a JWKS document ({exc})") from None
    keys = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or not entry["kid"]:
            raise KeyMaterialError(f"{source}: keys[{index}] has no 'kid' string")
        if entry.get("use", "sig") != "sig":
            raise KeyMaterialError(f"{source}: keys[{index}] is not a signing key (use != sig)")
        if entry.get("kty") == "oct" or "d" in entry:
            raise KeyMaterialError(f"{source}: keys[{index}] is not a public key")
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            raise KeyMaterialError(f"{source}: keys[{index}] ({entry['kid']}): {exc}") from None
        algorithm = _algorithm_for(jwk.key, f"{source}: keys[{index}]")
        declared = entry.get("alg")
        if declared and declared != algorithm:
            raise KeyMaterialError(
                f"{source}: keys[{index}] says alg {declared} for an {algorithm} key"
            )
        keys.append(VerificationKey(str(entry["kid"]), algorithm, jwk.key))
    return KeySet(keys)


def file_signature(path: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of a file, or None if it is missing: cheap change detection."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_size
