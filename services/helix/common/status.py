"""The one table that maps Helix domain errors to gRPC status codes and details.

Every error a client sees carries a `google.rpc.Status` in the `grpc-status-details-bin`
trailer with exactly one `ErrorInfo` (domain `helix`), plus `BadRequest` for invalid
input and `RetryInfo` (and `QuotaFailure`) where retrying later can help. Clients decode
it with `grpc_status.rpc_status.from_call`.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from helix.common import errors, reasons

DOMAIN = "helix"
# Trailers must fit gRPC's metadata limits (clients may refuse over 8 KiB, and the status
# travels base64-encoded): cap what a status carries to about 4 KiB.
MAX_MESSAGE_CHARS = 512
MAX_VIOLATIONS = 50
MAX_DESCRIPTION_CHARS = 200
VIOLATIONS_BUDGET_BYTES = 2500

_TABLE: dict[type[errors.HelixError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def status_code_for(error: errors.HelixError) -> grpc.StatusCode:
    """The status code for a domain error: its nearest class in the table, else INTERNAL."""
    for cls in type(error).__mro__:
        code = _TABLE.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = math.floor(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def to_rpc_status(error: errors.HelixError) -> status_pb2.Status:
    """Build the rich status for a domain error: ErrorInfo first, then kind-specific details."""
    code = status_code_for(error)
    status = status_pb2.Status(code=code.value[0], message=_clip(error.message, MAX_MESSAGE_CHARS))
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    info.metadata.update(
        {
            _clip(k, 64): _clip(v, MAX_DESCRIPTION_CHARS)
            for k, v in list(error.metadata.items())[:16]
        }
    )
    violations = error.violations if isinstance(error, errors.InvalidArgument) else ()
    bad = error_details_pb2.BadRequest()
    budget = VIOLATIONS_BUDGET_BYTES
    for violation in violations[:MAX_VIOLATIONS]:
        field = _clip(violation.field, MAX_DESCRIPTION_CHARS)
        where = f"{violation.where}: " if violation.where else ""
        description = _clip(where + violation.description, MAX_DESCRIPTION_CHARS)
        reason = _clip(violation.reason, 64)
        budget -= len(field.encode()) + len(description.encode()) + len(reason.encode()) + 10
        if budget < 0 and bad.field_violations:
            break
        bad.field_violations.add(field=field, description=description, reason=reason)
    if len(bad.field_violations) < len(violations):
        info.metadata["violations_total"] = str(len(violations))
        info.metadata["violations_shown"] = str(len(bad.field_violations))
    status.details.add().Pack(info)
    if violations:
        status.details.add().Pack(bad)
    retry_after = getattr(error, "retry_after", None)
    if isinstance(error, errors.ResourceExhausted | errors.Unavailable) and retry_after is not None:
        retry = error_details_pb2.RetryInfo(retry_delay=_duration(max(retry_after, 0.0)))
        status.details.add().Pack(retry)
    if isinstance(error, errors.ResourceExhausted) and error.quota_subject:
        quota = error_details_pb2.QuotaFailure()
        quota.violations.add(subject=error.quota_subject, description=error.message)
        status.details.add().Pack(quota)
    return status


def internal_status(message: str) -> status_pb2.Status:
    """The status sent for an unexpected exception: generic text, never a traceback."""
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reasons.INTERNAL, domain=DOMAIN))
    return status


def to_grpc_status(status: status_pb2.Status) -> grpc.Status:
    """Wrap a `google.rpc.Status` for `ServicerContext.abort_with_status`."""
    converted: grpc.Status = rpc_status.to_status(status)
    return converted
