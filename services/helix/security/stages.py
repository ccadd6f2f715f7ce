"""The security stages of the server call chain: authentication+scopes, then rate limits."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from helix.common import errors, logs, reasons
from helix.common.interceptors import Call, MethodInfo, Stage
from helix.security import scopes
from helix.security.metrics import SecurityStats
from helix.security.principal import Principal, current_principal, set_current_principal
from helix.security.ratelimit import TokenBucketLimiter
from helix.security.tokens import TokenVerifier

_BEARER = "bearer "


class AuthStage(Stage):
    """Verifies `authorization: Bearer <JWT>` and the scope the method needs.

    Health and reflection are open. No or a bad token → UNAUTHENTICATED; a valid token
    without the method's scope, or a method missing from the scope table →
    PERMISSION_DENIED. The principal is then available through `current_principal()`.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        extra_scopes: Mapping[str, str] | None = None,
        stats: SecurityStats | None = None,
    ):
        self._verifier = verifier
        self._extra = dict(extra_scopes or {})
        self._stats = stats or SecurityStats()
        # path -> required scope (None: not in any table), or "" for open methods
        self._required: dict[str, str | None] = {}

    def bind(self, info: MethodInfo) -> None:
        self._required[info.path] = (
            "" if scopes.is_open(info.path) else scopes.required_scope(info.path, self._extra)
        )

    def before(self, call: Call) -> None:
        required = self._required[call.info.path]
        if required == "":
            if call.info.request_streaming or call.info.response_streaming:
                self._identify(call)
            return
        try:
            self._authorise(call, required)
        except errors.HelixError as refused:
            self._stats.auth_refused[refused.reason] += 1
            raise

    def _identify(self, call: Call) -> None:
        """An open stream (health Watch, reflection) needs no token, but a valid one names
        its caller, so the caller's calls count in its own share of the stream pool
        rather than in the one `anonymous` share that callers without a token use."""
        try:
            principal = self._verifier.verify(_bearer_token(call))
        except errors.HelixError:
            return  # no token, or not a valid one: anonymous, as open methods allow
        set_current_principal(principal)
        logs.principal_var.set(principal.subject)

    def _authorise(self, call: Call, required: str | None) -> None:
        principal = self._verifier.verify(_bearer_token(call))
        set_current_principal(principal)
        logs.principal_var.set(principal.subject)
        if required is None:
            raise errors.PermissionDenied(
                f"{call.info.path} is not in the scope table, so nobody may call it",
                reason=reasons.METHOD_NOT_ALLOWED,
            )
        if not principal.has_scope(required):
            raise errors.PermissionDenied(
                f"{call.info.path} requires the scope {required!r}",
                reason=reasons.SCOPE_MISSING,
                metadata={"required_scope": required},
            )


def _bearer_token(call: Call) -> str:
    value: str | bytes | None = None
    for key, found in call.metadata():
        if key == "authorization":
            if value is not None:
                # A proxy may have checked another copy than the one we would read.
                raise errors.Unauthenticated(
                    "send exactly one authorization metadata entry", reason=reasons.TOKEN_AMBIGUOUS
                )
            value = found
    if value is None:
        raise errors.Unauthenticated(
            "no credentials: send metadata 'authorization: Bearer <token>'",
            reason=reasons.TOKEN_MISSING,
        )
    if isinstance(value, bytes) or not value[: len(_BEARER)].lower() == _BEARER:
        raise errors.Unauthenticated(
            "the authorization metadata must be 'Bearer <token>'", reason=reasons.TOKEN_MALFORMED
        )
    token = value[len(_BEARER) :].strip()
    if not token:
        raise errors.Unauthenticated("the bearer token is empty", reason=reasons.TOKEN_MISSING)
    return token


class RateLimitStage(Stage):
    """Token buckets per principal and rate class; over the limit → RESOURCE_EXHAUSTED."""

    def __init__(
        self,
        limiter: TokenBucketLimiter,
        extra_scopes: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        stats: SecurityStats | None = None,
    ) -> None:
        self._limiter = limiter
        self._stats = stats or SecurityStats()
        self._extra = dict(extra_scopes or {})
        self._clock = clock
        self._classes: dict[str, str | None] = {}

    def bind(self, info: MethodInfo) -> None:
        if scopes.is_open(info.path):
            self._classes[info.path] = None
            return
        scope = scopes.required_scope(info.path, self._extra)
        self._classes[info.path] = scopes.SCOPE_CLASSES.get(scope or "", scopes.WRITE)

    def before(self, call: Call) -> None:
        rate_class = self._classes[call.info.path]
        if rate_class is None:
            return
        principal: Principal = current_principal()
        wait = self._limiter.acquire(principal.subject, rate_class, self._clock())
        if wait > 0:
            self._stats.rate_limited[rate_class] += 1
            raise errors.ResourceExhausted(
                f"rate limit for {rate_class} calls exceeded; retry in {wait:.3f}s",
                retry_after=wait,
                quota_subject=f"principal:{principal.subject}/{rate_class}",
                reason=reasons.RATE_LIMITED,
                metadata={"rate_class": rate_class},
            )
