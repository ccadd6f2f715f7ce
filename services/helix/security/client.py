"""Client-side credentials: token sources and the interceptor that attaches them.

- `MintingTokenSource`: embedded mode. A service mints its own short-lived token with the
  local signing key and mints a new one when a third of its lifetime is left.
- `FileTokenSource`: distributed mode. Reads a token from a file (a mounted secret) and
  re-reads it when the file changes, checking at most once per `check_interval`.
- `StaticTokenSource`: a token given once (a flag or `HELIX_TOKEN`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

import grpc

from helix.common.channel import details_interceptors
from helix.common.config import ConfigError
from helix.security.keys import SigningKey, file_signature
from helix.security.tokens import TokenPolicy, mint

log = logging.getLogger("helix.security")


class TokenSource(Protocol):
    """Something that can give the token to send now."""

    async def token(self) -> str: ...


class StaticTokenSource:
    """Always the same token."""

    def __init__(self, token: str) -> None:
        token = token.strip()
        if not token:
            raise ValueError("the token is empty")
        self._token = token

    async def token(self) -> str:
        return self._token


class MintingTokenSource:
    """Mints tokens for `subject` with `scopes`, renewing when a third of the TTL is left."""

    def __init__(
        self,
        signer: SigningKey | Callable[[], SigningKey | None],
        subject: str,
        scopes: Iterable[str],
        *,
        ttl: float = 300.0,
        policy: TokenPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._subject = subject
        self._scopes = tuple(scopes)
        self._ttl = ttl
        self._policy = policy
        self._clock = clock
        self._token = ""
        self._renew_at = 0.0

    def current(self) -> str:
        now = self._clock()
        if not self._token or now >= self._renew_at:
            # A callable follows key rotation (e.g. `lambda: security.signer`).
            signer = self._signer() if callable(self._signer) else self._signer
            if signer is None:
                raise ConfigError(f"no signing key to mint {self._subject}'s token with")
            self._token = mint(
                signer, self._subject, self._scopes, self._ttl, self._policy, now=now
            )
            self._renew_at = now + self._ttl * 2 / 3
        return self._token

    async def token(self) -> str:
        return self.current()


class FileTokenSource:
    """The token in a file, re-read when the file changes (checked off the event loop)."""

    def __init__(self, path: Path, check_interval: float = 1.0) -> None:
        self._path = path
        self._interval = check_interval
        self._token = ""
        self._signature: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._lock = asyncio.Lock()

    def _read_if_changed(self) -> None:
        signature = file_signature(self._path)
        if signature is None:
            raise FileNotFoundError(f"token file {self._path} does not exist")
        if signature != self._signature:
            token = self._path.read_text().strip()
            if not token:
                raise ValueError(f"token file {self._path} is empty")
            self._token, self._signature = token, signature

    async def token(self) -> str:
        now = time.monotonic()
        if now - self._checked >= self._interval:
            async with self._lock:
                if now - self._checked >= self._interval:
                    try:
                        await asyncio.to_thread(self._read_if_changed)
                    except (OSError, ValueError) as exc:
                        # Mid-rotation (file briefly missing or empty): keep the last good one.
                        if not self._token:
                            raise
                        log.warning("keeping the previous token: %s", exc)
                    self._checked = now
        return self._token


SERVICE_TOKEN_ENV = "HELIX_SERVICE_TOKEN"
SERVICE_TOKEN_FILE_ENV = "HELIX_SERVICE_TOKEN_FILE"


def service_token_source(
    subject: str,
    scopes: Iterable[str],
    *,
    signer: SigningKey | None,
    policy: TokenPolicy | None = None,
    env: Mapping[str, str] | None = None,
) -> TokenSource:
    """The credentials one Helix service uses to call another.

    Distributed mode: `HELIX_SERVICE_TOKEN_FILE` (a mounted secret, re-read when it
    changes) or `HELIX_SERVICE_TOKEN`. Embedded mode: short-lived tokens minted with the
    suite's own `signer` for `subject` with `scopes`, renewed before they expire.
    """
    env = os.environ if env is None else env
    if env.get(SERVICE_TOKEN_FILE_ENV):
        return FileTokenSource(Path(env[SERVICE_TOKEN_FILE_ENV]))
    if env.get(SERVICE_TOKEN_ENV):
        return StaticTokenSource(env[SERVICE_TOKEN_ENV])
    if signer is not None:
        return MintingTokenSource(signer, subject, scopes, policy=policy)
    raise ConfigError(
        f"no credentials for {subject}'s calls to other services: set "
        f"{SERVICE_TOKEN_FILE_ENV} or {SERVICE_TOKEN_ENV}, or give it a signing key"
    )


def bearer_interceptors(source: TokenSource | None) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors (all four call types) adding `authorization: Bearer <token>` from
    `source` to every call; none without a source."""
    if source is None:
        return []

    async def with_token(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        token = await source.token()
        metadata = grpc.aio.Metadata()
        for key, value in details.metadata or ():
            if key != "authorization":
                metadata.add(key, value)
        metadata.add("authorization", f"Bearer {token}")
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    return details_interceptors(with_token)
