"""Pagination shared by every List method (AIP-158): page sizes and opaque page tokens.

A page token carries where the next page starts (the last name served, and for listings
that read one snapshot, its revision) and a digest of the listing's filters, so a token
is refused when the filters change between pages. Tokens are opaque to clients (base64url
of a small JSON object) but not secret: they hold nothing the caller could not list.
Every refusal is INVALID_ARGUMENT with reason INVALID_PAGE_TOKEN and a `page_token` field
violation, in every service.

Pure Python (no grpc).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from helix.common import errors, reasons, rules

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_VERSION = 1


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
    of this listing (malformed, another version, or other `filters`)."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        version, after, snapshot, found = data["v"], data["a"], data["s"], data["f"]
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error):
        raise invalid_page_token("is not a next_page_token of this listing") from None
    well_formed = (
        version == _VERSION
        and isinstance(after, str)
        and after
        and isinstance(snapshot, int)
        and not isinstance(snapshot, bool)
        and snapshot >= 0
        and isinstance(found, str)
    )
    if not well_formed:
        raise invalid_page_token("is not a next_page_token of this listing")
    if found != filters:
        raise invalid_page_token("belongs to a listing with other filters")
    return PagePosition(after, snapshot)
