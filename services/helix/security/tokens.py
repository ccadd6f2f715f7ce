"""Minting and verifying JWTs, with a bounded cache of verified tokens.

Verification fixes the algorithm from the key (selected by `kid`), never from the token;
requires `exp`, `iss`, `aud` and `sub`; checks `nbf` with a small leeway; and caps token
size. A verified token is cached until it expires, so the signature is checked once per
token rather than once per call; the cache is bounded and is emptied when keys change.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from helix.common import errors, reasons
from helix.security.keys import KeySet, SigningKey
from helix.security.principal import Principal

MAX_TOKEN_BYTES = 8 * 1024
# How long a verified token is trusted from the cache before its signature is checked again
# (so a token with an absurd exp cannot live in the cache for ever).
MAX_CACHE_SECONDS = 300.0
_SCOPE = re.compile(r"([\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*)?")


@dataclass(frozen=True)
class TokenPolicy:
    """What a valid token must say: issuer, audience, and the leeway on time claims."""

    issuer: str = "helix"
    audience: str = "helix"
    leeway: float = 10.0


def _reject(message: str, reason: str) -> errors.Unauthenticated:
    return errors.Unauthenticated(message, reason=reason)


_JWT_ERRORS: list[tuple[type[Exception], str, str]] = [
    (jwt.ExpiredSignatureError, "the token has expired", reasons.TOKEN_EXPIRED),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf)", reasons.TOKEN_NOT_YET_VALID),
    (
        jwt.InvalidAudienceError,
        "the token is not for this audience (aud)",
        reasons.TOKEN_WRONG_AUDIENCE,
    ),
    (
        jwt.InvalidIssuerError,
        "the token is from an unknown issuer (iss)",
        reasons.TOKEN_WRONG_ISSUER,
    ),
    (
        jwt.InvalidSignatureError,
        "the token's signature does not verify",
        reasons.TOKEN_BAD_SIGNATURE,
    ),
    (
        jwt.InvalidAlgorithmError,
        "the token's algorithm is not allowed",
        reasons.TOKEN_BAD_ALGORITHM,
    ),
    (
        jwt.MissingRequiredClaimError,
        "the token lacks a required claim",
        reasons.TOKEN_MISSING_CLAIM,
    ),
]


class TokenVerifier:
    """Turns a bearer token into a `Principal` or raises `Unauthenticated`."""

    def __init__(
        self,
        keys: KeySet,
        policy: TokenPolicy | None = None,
        *,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._policy = policy or TokenPolicy()
        # sha256(token) -> (principal, trusted until): keys stay small however long tokens are.
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock
        self._decoder = jwt.PyJWT()
        self.hits = 0
        self.misses = 0

    @property
    def keys(self) -> KeySet:
        return self._keys

    def replace_keys(self, keys: KeySet) -> None:
        """Swap in a new key set (rotation, JWKS reload); forgets every cached token."""
        self._keys = keys
        self._cache.clear()

    def verify(self, token: str) -> Principal:
        """The principal of `token`, from the cache while it is unexpired, else verified."""
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None:
            principal, trusted_until = cached
            if now < trusted_until:
                self._cache.move_to_end(key)
                self.hits += 1
                return principal
            del self._cache[key]
            if now >= principal.expires_at + self._policy.leeway:
                raise _reject("the token has expired", reasons.TOKEN_EXPIRED)
        self.misses += 1
        principal = self._verify_uncached(token)
        trusted_until = min(principal.expires_at + self._policy.leeway, now + MAX_CACHE_SECONDS)
        self._cache[key] = (principal, trusted_until)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    def _verify_uncached(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise _reject(
                f"the token is larger than {MAX_TOKEN_BYTES} bytes", reasons.TOKEN_TOO_LARGE
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _reject("the token is not a well-formed JWT", reasons.TOKEN_MALFORMED) from None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _reject("the token's kid is not a string", reasons.TOKEN_MALFORMED)
        key = self._keys.get(kid)
        if key is None:
            raise _reject("the token's key id (kid) is not known here", reasons.TOKEN_UNKNOWN_KEY)
        policy = self._policy
        try:
            claims = self._decoder.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=policy.audience,
                issuer=policy.issuer,
                leeway=policy.leeway,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            for kind, message, reason in _JWT_ERRORS:
                if isinstance(exc, kind):
                    raise _reject(message, reason) from None
            raise _reject("the token is not valid", reasons.TOKEN_INVALID) from None
        return _principal_from(claims)


def _principal_from(claims: dict[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 256:
        raise _reject(
            "the token's subject (sub) must be a string of 1..256 characters",
            reasons.TOKEN_BAD_SUBJECT,
        )
    scope = claims.get("scope", "")
    # RFC 6749 §3.3: scope tokens separated by single spaces (%x20), each of %x21 / %x23-5B
    # / %x5D-7E. Splitting on any whitespace would let "read\u00a0admin" grant admin here
    # while an issuer that splits on spaces sees one harmless scope.
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise _reject(
            "the token's scope must be space-separated RFC 6749 scope tokens",
            reasons.TOKEN_BAD_SCOPE,
        )
    exp = claims["exp"]
    if not isinstance(exp, int | float) or exp != exp:
        raise _reject("the token's exp is not a number", reasons.TOKEN_MALFORMED)
    return Principal(subject, frozenset(s for s in scope.split(" ") if s), float(exp))


def mint(
    signer: SigningKey,
    subject: str,
    scopes: Iterable[str],
    ttl: float,
    policy: TokenPolicy | None = None,
    *,
    now: float | None = None,
) -> str:
    """A token for `subject` with `scopes`, valid for `ttl` seconds, signed by `signer`."""
    policy = policy or TokenPolicy()
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": subject,
        "scope": " ".join(sorted(set(scopes))),
        "iss": policy.issuer,
        "aud": policy.audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + max(1, int(ttl)),
    }
    return jwt.encode(claims, signer.key, algorithm=signer.algorithm, headers={"kid": signer.kid})


def inspect_token(token: str) -> dict[str, Any]:
    """The header and claims of a token, NOT verified (for `helix token inspect`)."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise ValueError(f"not a well-formed JWT: {exc}") from None
    return {"header": header, "claims": claims}
