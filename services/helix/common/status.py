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

from helix.common import errors

DOMAIN = "helix"

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


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = math.floor(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def to_rpc_status(error: errors.HelixError) -> status_pb2.Status:
    """Build the rich status for a domain error: ErrorInfo first, then kind-specific details."""
    code = status_code_for(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    info.metadata.update(error.metadata)
    status.details.add().Pack(info)
    if isinstance(error, errors.InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest()
        for violation in error.violations:
            bad.field_violations.add(field=violation.field, description=violation.description)
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
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN))
    return status


def to_grpc_status(status: status_pb2.Status) -> grpc.Status:
    """Wrap a `google.rpc.Status` for `ServicerContext.abort_with_status`."""
    converted: grpc.Status = rpc_status.to_status(status)
    return converted
