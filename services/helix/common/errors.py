"""Domain errors shared by every Helix service.

These exceptions are pure Python: domain cores raise them without importing grpc, and
`helix.common.status` maps each class to a status code plus `google.rpc.Status`
details in one table. A message must be safe to show to the caller: never put a
secret, a token or a stack trace in one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One broken rule of one field of a request or document — the one violation type of
    every Helix service, file and command.

    `field` is a path in proto field names (`agent.labels["team"]`, `genes[2].real.low`;
    empty for the document as a whole); `reason` a stable rule code from
    `helix.common.rules`, sent as `google.rpc.BadRequest.FieldViolation.reason` and as
    `DnaViolation.rule`; `file` and `line` say where a document broke the rule (empty and 0
    for a request). `str()` is "file:line: field: description [reason]" (the parts that are
    set).
    """

    field: str
    description: str
    reason: str
    file: str = ""
    line: int = 0

    def __str__(self) -> str:
        where = f"{self.where}: " if self.where else ""
        return f"{where}{self.subject}{self.description} [{self.reason}]"

    @property
    def where(self) -> str:
        """ "file:line", "file" or "" (a request field)."""
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file

    @property
    def subject(self) -> str:
        return f"{self.field}: " if self.field else ""

    def under(self, prefix: str) -> FieldViolation:
        """The same violation with its field path under `prefix` (an inline document:
        `genes[0]` under `dna` is `dna.genes[0]`)."""
        if not prefix:
            return self
        field = f"{prefix}.{self.field}" if self.field else prefix
        return replace(self, field=field)


def _finite_delay(seconds: float | None) -> float | None:
    """A retry hint in seconds within 0..1 day, or None when it is not a usable number."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), 86_400.0)


class HelixError(Exception):
    """Base of every error a Helix service reports to its caller on purpose.

    `reason` is a stable UPPER_SNAKE_CASE identifier for `google.rpc.ErrorInfo`;
    `metadata` adds machine-readable context (string keys and values only).
    """

    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}


class InvalidArgument(HelixError):
    """The request is malformed; `violations` lists every bad field, not just the first."""

    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Iterable[FieldViolation] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = tuple(violations)

    @classmethod
    def from_violations(cls, violations: Iterable[FieldViolation]) -> InvalidArgument:
        """Build the error for a non-empty list of violations, summarised in the message."""
        found = tuple(violations)
        if not found:
            raise ValueError("from_violations needs at least one violation")
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        return cls(f"invalid {first.field}: {first.description}{more}", found)


class Unauthenticated(HelixError):
    """Missing, malformed, expired or otherwise unacceptable credentials."""

    default_reason = "UNAUTHENTICATED"


class PermissionDenied(HelixError):
    """The caller is known but may not do this."""

    default_reason = "PERMISSION_DENIED"


class NotFound(HelixError):
    """The named resource does not exist (or no longer does)."""

    default_reason = "NOT_FOUND"


class AlreadyExists(HelixError):
    """A resource with this name exists already."""

    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(HelixError):
    """The system is not in a state in which this operation is allowed."""

    default_reason = "FAILED_PRECONDITION"


class Aborted(HelixError):
    """A concurrency conflict, such as a stale etag: re-read, then retry."""

    default_reason = "ABORTED"


class OutOfRange(HelixError):
    """A position (revision, page, sequence) outside the range that can be served."""

    default_reason = "OUT_OF_RANGE"


class ResourceExhausted(HelixError):
    """A quota, rate limit or buffer is exhausted; `retry_after` seconds is a hint."""

    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        quota_subject: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = _finite_delay(retry_after)
        self.quota_subject = quota_subject


class Unavailable(HelixError):
    """The service cannot serve this now (starting, draining, a dependency is down)."""

    default_reason = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = _finite_delay(retry_after)


class Unimplemented(HelixError):
    """The method exists in the contract but this server does not serve it."""

    default_reason = "UNIMPLEMENTED"


class DeadlineExceeded(HelixError):
    """The work could not finish within the caller's deadline."""

    default_reason = "DEADLINE_EXCEEDED"


class Internal(HelixError):
    """An invariant was broken. The message is shown to the caller, so keep it general."""

    default_reason = "INTERNAL"
