"""etcd's gRPC errors as Helix's domain errors: the one table of this package.

No `grpc.aio.AioRpcError` leaves the client. An unreachable or overloaded etcd, a deadline
passed, a stream cut: `Unavailable` (retry). History compacted: `Compacted`, an OUT_OF_RANGE
`REVISION_COMPACTED` carrying the compact revision. A lease etcd does not know: `NotFound`.
etcd refusing Helix's own credentials is not the caller's fault: `Unavailable` too, saying so.
Anything else is a bug on one side or the other: `Internal`, with etcd's message (etcd's
messages hold no secrets: "etcdserver: ...").
"""

from __future__ import annotations

import grpc

from helix.common import errors, reasons

RETRY_AFTER = 1.0

_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # "too many requests", "database space exceeded"
    grpc.StatusCode.CANCELLED,  # the stream or channel cut under a call (not our own cancel)
}
_COMPACTED = "required revision has been compacted"
# The answers that mean "authenticate again" (etcd's ErrGRPCInvalidAuthToken,
# ErrGRPCAuthOldRevision): a simple token expires (5 min by default) or is dropped on a
# restart, a password change or a role change.
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old")
_CREDENTIALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class Compacted(errors.OutOfRange):
    """The revision asked for is older than the history etcd keeps. `compact_revision` is
    the oldest revision still available (0 when etcd did not say, as for a Range): list
    again, then watch from the list's revision."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        if compact_revision > 0:
            message = (
                f"revision {compact_revision - 1} and older have been compacted; the oldest "
                f"available is {compact_revision}: list again, then watch from its revision"
            )
            metadata = {"compact_revision": str(compact_revision)}
        else:
            message = "the revision asked for has been compacted: list again, then watch"
            metadata = {}
        super().__init__(message, reason=reasons.REVISION_COMPACTED, metadata=metadata)


def is_stale_token(error: grpc.aio.AioRpcError) -> bool:
    """Whether etcd rejected the call's auth token as expired or outdated (re-authenticate)."""
    details = error.details() or ""
    return any(text in details for text in _STALE_TOKEN)


def translate(error: grpc.aio.AioRpcError, what: str) -> errors.HelixError:
    """The Helix error for etcd's answer `error` to `what` ("put /agents/x", ...)."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.OUT_OF_RANGE and _COMPACTED in details:
        return Compacted(0)
    if code in _UNAVAILABLE:
        return errors.Unavailable(
            f"etcd did not serve {what}: {code.name}: {details}", retry_after=RETRY_AFTER
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(f"etcd: {what}: {details}")
    if (
        code in _CREDENTIALS
        or "authentication failed" in details
        or "user name is empty" in details
    ):
        return errors.Unavailable(f"etcd refused Helix's credentials for {what}: {details}")
    return errors.Internal(f"etcd failed {what}: {code.name}: {details}")


def closed(what: str) -> errors.Unavailable:
    return errors.Unavailable(f"the etcd client is closed: {what} not sent")
