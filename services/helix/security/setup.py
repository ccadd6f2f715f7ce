"""Assemble a server's security from its configuration: keys, verifier, stages, key reload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from helix.common.aio import cancel_and_wait
from helix.common.config import ConfigError, ServerConfig
from helix.common.interceptors import Stage
from helix.security import keys as keymod
from helix.security import scopes
from helix.security.keys import KeyMaterialError, KeySet, SigningKey
from helix.security.metrics import SecurityStats, register_metrics
from helix.security.ratelimit import Rate, TokenBucketLimiter
from helix.security.stages import AuthStage, RateLimitStage
from helix.security.tokens import TokenPolicy, TokenVerifier

log = logging.getLogger("helix.security")


@dataclass(frozen=True)
class KeySources:
    """Where verification keys come from; reloaded together when any file changes."""

    hs256_dir: Path | None = None
    public_keys: str = ""
    jwks_file: Path | None = None

    def load(self, *, missing_ok: bool = False) -> tuple[KeySet, SigningKey | None]:
        """Read every configured key (blocking file I/O: call it off the event loop).

        With `missing_ok` (reloads), a key file that no longer exists contributes no key:
        deleting a key's file revokes it. A file that exists but does not parse raises.
        """
        keyset = KeySet([])
        signer = None
        if self.hs256_dir is not None:
            keyset, signer = keymod.load_hs256_dir(self.hs256_dir)
        pems = [
            keymod.load_public_pem(p, kid)
            for kid, p in keymod.parse_public_key_specs(self.public_keys)
            if not (missing_ok and not p.exists())
        ]
        keyset = keyset.merged(KeySet(pems))
        if self.jwks_file is not None and not (missing_ok and not self.jwks_file.exists()):
            try:
                text = self.jwks_file.read_text()
            except OSError as exc:
                raise KeyMaterialError(f"{self.jwks_file}: {exc}") from None
            keyset = keyset.merged(keymod.parse_jwks(text, str(self.jwks_file)))
        return keyset, signer

    def signature(self) -> tuple[object, ...]:
        """A cheap fingerprint of the key files, to notice changes (blocking: stat calls)."""
        files: list[Path] = []
        if self.hs256_dir is not None:
            files.extend(sorted(self.hs256_dir.glob(f"*{keymod.HS256_SUFFIX}")))
        files.extend(p for _, p in keymod.parse_public_key_specs(self.public_keys))
        if self.jwks_file is not None:
            files.append(self.jwks_file)
        return tuple((str(p), keymod.file_signature(p)) for p in files)


@dataclass
class Security:
    """A server's verifier, limiter and the chain stages that use them."""

    verifier: TokenVerifier
    limiter: TokenBucketLimiter
    policy: TokenPolicy
    signer: SigningKey | None = None
    sources: KeySources | None = None
    reload_interval: float = 5.0
    extra_scopes: Mapping[str, str] = field(default_factory=dict)
    # The key files' fingerprint when the keys in use were read (taken before reading, so a
    # change racing with the read is still noticed).
    loaded_signature: tuple[object, ...] = ()
    stats: SecurityStats = field(default_factory=SecurityStats)
    _reloader: asyncio.Task[None] | None = None

    def stages(self, registry: CollectorRegistry | None = None) -> list[Stage]:
        """Auth then rate limiting, to follow the default stages of the chain; refusals are
        counted on `registry` when given."""
        if registry is not None:
            register_metrics(self.stats, registry)
        return [
            AuthStage(self.verifier, self.extra_scopes, self.stats),
            RateLimitStage(self.limiter, self.extra_scopes, stats=self.stats),
        ]

    def start(self) -> None:
        """Begin watching key files for changes (rotation, JWKS updates)."""
        if self.sources is not None and self._reloader is None:
            self._reloader = asyncio.create_task(self._watch(self.sources))

    async def stop(self) -> None:
        reloader, self._reloader = self._reloader, None
        await cancel_and_wait([reloader])

    async def _watch(self, sources: KeySources) -> None:
        seen = self.loaded_signature
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                current = await asyncio.to_thread(sources.signature)
                if current == seen:
                    continue
                seen = current
                keyset, signer = await asyncio.to_thread(lambda: sources.load(missing_ok=True))
            except Exception as exc:  # a bad file must not end the watch (CancelledError passes)
                self.stats.key_reload_failures += 1
                log.error(
                    "key files changed but do not load; keeping the current keys until they "
                    "are fixed: %s",
                    exc,
                )
                continue
            # Deleted files revoke their keys, even the last one: then every token is refused.
            self.verifier.replace_keys(keyset)
            self.signer = signer if signer is not None else self.signer
            self.stats.key_reloads += 1
            if len(keyset) == 0:
                log.error("no verification key is left: every authenticated call is refused")
            log.info("verification keys reloaded", extra={"kids": keyset.kids})


def rates_from(config: ServerConfig) -> dict[str, Rate]:
    """The per-class token-bucket rates of a server configuration."""

    def rate(per_second: float) -> Rate:
        return Rate(per_second, max(1.0, per_second * config.rate_burst))

    return {
        scopes.READ: rate(config.rate_read),
        scopes.WRITE: rate(config.rate_write),
        scopes.DATA: rate(config.rate_data),
    }


def security_from_config(
    config: ServerConfig,
    *,
    embedded_key_dir: Path | None = None,
    extra_scopes: Mapping[str, str] | None = None,
) -> Security:
    """Build a server's security; `embedded_key_dir` gets an HS256 secret if it has none.

    Blocking file I/O: call it before the event loop serves. Raises `ConfigError` when no
    key is configured or a key file is unusable.
    """
    hs256_dir = config.auth_hs256_dir or embedded_key_dir
    if embedded_key_dir is not None and config.auth_hs256_dir is None:
        try:
            keymod.ensure_hs256_secret(embedded_key_dir)
        except (OSError, KeyMaterialError) as exc:
            raise ConfigError(f"embedded signing key in {embedded_key_dir}: {exc}") from None
    sources = KeySources(hs256_dir, config.auth_public_keys, config.auth_jwks_file)
    try:
        signature = sources.signature()
        keyset, signer = sources.load()
    except (OSError, KeyMaterialError) as exc:
        raise ConfigError(f"authentication keys: {exc}") from None
    if len(keyset) == 0:
        raise ConfigError(
            "no token verification keys: set --auth-hs256-dir, --auth-public-keys or "
            "--auth-jwks-file (HELIX_AUTH_*)"
        )
    policy = TokenPolicy(config.auth_issuer, config.auth_audience, config.auth_leeway)
    return Security(
        verifier=TokenVerifier(keyset, policy, cache_size=config.auth_token_cache_size),
        limiter=TokenBucketLimiter(rates_from(config), config.rate_limit_principals),
        policy=policy,
        signer=signer,
        sources=sources,
        reload_interval=config.auth_reload_interval,
        extra_scopes=dict(extra_scopes or {}),
        loaded_signature=signature,
    )
