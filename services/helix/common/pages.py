"""Pagination shared by every List method (AIP-158): page sizes and opaque page tokens.

A page token carries where the next page starts (the last name served, and for listings
that read one snapshot, its revision) and a digest of the listing's filters, so a token
is refused when the filters change between pages. Tokens are opaque to clients (base64url
of a small JSON object) but not secret: they hold nothing the caller could not list.
Every refusal is INVALID_ARGUMENT with reason INVALID_PAGE_TOKEN and a `page_token` field
violation, in every service.

Decoding is strict: a token is accepted only when it is, character for character, the
token this codec issues for the position it names (canonical base64url without padding,
canonical JSON, exactly its four keys with their types: an int version, a printable ASCII
name, a snapshot in 0..2^63-1, a string digest). Anything else, however it was forged, is
INVALID_PAGE_TOKEN, never an exception.

Tokens are not signed (docs/decisions.md, issue 10): a forged token can only name a
position the caller could list anyway. The listing re-checks everything it names (the
filters digest against the request's filters, the snapshot against the revisions it
can serve), the caller's scopes are checked before any listing, and a signature would
tie tokens to a key that standalone replicas do not share.

Pure Python (no grpc).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass

from helix.common import errors, reasons, rules

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_VERSION = 1
# check_page refuses longer tokens before any listing reads them; the codec holds its own
# bound too, as it is a pure function anyone may call.
_MAX_TOKEN_CHARS = 1024
_MAX_SNAPSHOT = 2**63 - 1  # revisions are int64 on the wire
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")  # base64url, unpadded
_NAME = re.compile(r"[\x21-\x7e]+")  # resource names are printable ASCII
_KEYS = frozenset({"v", "a", "s", "f"})


@dataclass(frozen=True, slots=True)
class PageLimits:
    """The page sizes a List method serves; each service's limits extend it."""

    default_page_size: int = DEFAULT_PAGE_SIZE
    max_page_size: int = MAX_PAGE_SIZE

    def __post_init__(self) -> None:
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise ValueError("default_page_size must be within 1..max_page_size")

    def page_size(self, requested: int) -> int:
        """The page size served for a request's page_size (see `page_size`)."""
        return page_size(requested, default=self.default_page_size, maximum=self.max_page_size)


@dataclass(frozen=True, slots=True)
class PagePosition:
    """Where the next page starts: after the name `after`, in the snapshot at `snapshot`
    (0 for listings that do not read a snapshot)."""

    after: str
    snapshot: int = 0


def page_size(
    requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """The page size a server serves: 0 (or less) means `default`, above `maximum` means
    `maximum` (AIP-158 coerces rather than refuses a large page_size)."""
    if requested <= 0:
        return default
    return min(requested, maximum)


def filters_digest(*filters: object) -> str:
    """A short digest of a listing's filters, bound into its page tokens."""
    text = "\x1f".join(str(f) for f in filters)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def invalid_page_token(why: str) -> errors.InvalidArgument:
    """The error for a page token this listing cannot continue from."""
    return errors.InvalidArgument(
        f"page_token {why}",
        [errors.FieldViolation("page_token", why, rules.INVALID_PAGE_TOKEN)],
        reason=reasons.INVALID_PAGE_TOKEN,
    )


def encode_page_token(position: PagePosition, filters: str = "") -> str:
    """The opaque next_page_token for `position` in a listing with these `filters`."""
    raw = {"v": _VERSION, "a": position.after, "s": position.snapshot, "f": filters}
    text = json.dumps(raw, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str, filters: str = "") -> PagePosition:
    """The position a page token continues from; INVALID_PAGE_TOKEN when it is not a token
    of this listing (not one this codec issued, or issued for other `filters`)."""
    decoded = _decode(token)
    if decoded is None:
        raise invalid_page_token("is not a next_page_token of this listing")
    position, found = decoded
    if found != filters:
        raise invalid_page_token("belongs to a listing with other filters")
    return position


def _decode(token: str) -> tuple[PagePosition, str] | None:
    """The position and filters digest of a token this codec issued, else None."""
    if len(token) > _MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token) or len(token) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, binascii.Error, RecursionError):  # JSON and UTF-8 errors included
        return None
    if not isinstance(data, dict) or data.keys() != _KEYS:
        return None
    version, after, snapshot, found = data["v"], data["a"], data["s"], data["f"]
    well_formed = (
        type(version) is int
        and version == _VERSION
        and isinstance(after, str)
        and _NAME.fullmatch(after) is not None
        and type(snapshot) is int
        and 0 <= snapshot <= _MAX_SNAPSHOT
        and isinstance(found, str)
    )
    if not well_formed:
        return None
    position = PagePosition(after, snapshot)
    # Only the exact spelling this codec issues: no other key order, spacing, escapes,
    # number forms, duplicate keys or base64 padding.
    if encode_page_token(position, found) != token:
        return None
    return position, found
