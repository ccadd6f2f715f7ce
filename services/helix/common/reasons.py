"""The catalogue of every `google.rpc.ErrorInfo.reason` Helix sends.

A reason is the stable, machine-readable name of one condition: clients branch on it, so
the same condition has the same reason in every service, and a reason never changes
meaning. Code raises domain errors with a constant from here (`reason=reasons.STALE_ETAG`);
each entry fixes the error class, and so the status code, it is sent with.
`docs/errors.md` holds this table for humans; tests/test_error_catalogue.py fails when the
two disagree, when code names a reason that is not here, or when a reason is sent with
another code than its entry's.

Pure Python (no grpc): domain cores import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from helix.common import errors


@dataclass(frozen=True, slots=True)
class Reason:
    """One entry: the reason, the error class it is raised with, what it means, who sends it."""

    name: str
    error: type[errors.HelixError]
    meaning: str
    sent_by: str


CATALOGUE: dict[str, Reason] = {}


def _reason(name: str, error: type[errors.HelixError], meaning: str, sent_by: str) -> str:
    if name in CATALOGUE:
        raise ValueError(f"reason {name} is catalogued twice")
    CATALOGUE[name] = Reason(name, error, meaning, sent_by)
    return name


# --- the default reason of each error class (a condition with no reason of its own) ------

INVALID_ARGUMENT = _reason(
    errors.InvalidArgument.default_reason,
    errors.InvalidArgument,
    "The request breaks a field rule; BadRequest lists every violation with its rule code.",
    "every service",
)
UNAUTHENTICATED = _reason(
    errors.Unauthenticated.default_reason,
    errors.Unauthenticated,
    "The credentials are not acceptable (the TOKEN_* reasons say why when known).",
    "every service",
)
PERMISSION_DENIED = _reason(
    errors.PermissionDenied.default_reason,
    errors.PermissionDenied,
    "The caller may not do this.",
    "every service",
)
NOT_FOUND = _reason(
    errors.NotFound.default_reason,
    errors.NotFound,
    "The named resource does not exist, or is not the caller's to see; metadata name.",
    "registry, generator, health (Check of a service not served)",
)
ALREADY_EXISTS = _reason(
    errors.AlreadyExists.default_reason,
    errors.AlreadyExists,
    "A resource with this name exists and belongs to another principal; metadata name.",
    "registry",
)
FAILED_PRECONDITION = _reason(
    errors.FailedPrecondition.default_reason,
    errors.FailedPrecondition,
    "The system is not in a state that allows this operation.",
    "every service",
)
ABORTED = _reason(
    errors.Aborted.default_reason,
    errors.Aborted,
    "A concurrency conflict: read again, then retry.",
    "every service",
)
OUT_OF_RANGE = _reason(
    errors.OutOfRange.default_reason,
    errors.OutOfRange,
    "A position outside the range that can be served.",
    "every service",
)
RESOURCE_EXHAUSTED = _reason(
    errors.ResourceExhausted.default_reason,
    errors.ResourceExhausted,
    "A quota or buffer is exhausted; RetryInfo says when to retry.",
    "every service",
)
UNAVAILABLE = _reason(
    errors.Unavailable.default_reason,
    errors.Unavailable,
    "The service cannot serve this now (starting, draining, its store failed); retry.",
    "registry, generator, health (Watch ends when the drain begins)",
)
UNIMPLEMENTED = _reason(
    errors.Unimplemented.default_reason,
    errors.Unimplemented,
    "The server does not implement this method.",
    "every service",
)
DEADLINE_EXCEEDED = _reason(
    errors.DeadlineExceeded.default_reason,
    errors.DeadlineExceeded,
    "The work could not finish within the caller's deadline.",
    "every service",
)
INTERNAL = _reason(
    errors.Internal.default_reason,
    errors.Internal,
    "An unexpected failure on the server; details are in its log, never on the wire.",
    "every service",
)

# --- the runtime: every server ------------------------------------------------------------

UNDECODABLE_REQUEST = _reason(
    "UNDECODABLE_REQUEST",
    errors.InvalidArgument,
    "The request bytes are not a valid message of the method's request type.",
    "every service",
)
TOO_MANY_CONCURRENT_CALLS = _reason(
    "TOO_MANY_CONCURRENT_CALLS",
    errors.ResourceExhausted,
    "The server runs its maximum of concurrent unary calls (--max-concurrent-rpcs) or "
    "streams (--max-concurrent-streams); metadata pool, limit; RetryInfo.",
    "every service",
)
TOO_MANY_CALLS_FROM_PRINCIPAL = _reason(
    "TOO_MANY_CALLS_FROM_PRINCIPAL",
    errors.ResourceExhausted,
    "The caller holds its share of the server's unary calls or streams "
    "(--concurrent-share-per-principal); metadata pool, limit; QuotaFailure, RetryInfo.",
    "every service",
)
FIRST_MESSAGE_TIMEOUT = _reason(
    "FIRST_MESSAGE_TIMEOUT",
    errors.DeadlineExceeded,
    "A client or bidi stream sent no message within --stream-first-message-timeout; "
    "metadata timeout_seconds.",
    "every service",
)
STREAM_STALLED = _reason(
    "STREAM_STALLED",
    errors.ResourceExhausted,
    "The client read nothing from a response stream for --stream-write-timeout, so the "
    "server cancelled it; metadata write_timeout_seconds; RetryInfo.",
    "every service",
)
NOT_IMPLEMENTED_YET = _reason(
    "NOT_IMPLEMENTED_YET",
    errors.Unimplemented,
    "The method is in the contract but not served yet by this build; metadata method.",
    "oracle, orchestrator (placeholders)",
)
INVALID_PAGE_TOKEN = _reason(
    "INVALID_PAGE_TOKEN",
    errors.InvalidArgument,
    "page_token is not a next_page_token this listing issued (or its filters changed).",
    "every List method",
)

# --- security -----------------------------------------------------------------------------

TOKEN_MISSING = _reason(
    "TOKEN_MISSING",
    errors.Unauthenticated,
    "No bearer token in the authorization metadata.",
    "every service",
)
TOKEN_AMBIGUOUS = _reason(
    "TOKEN_AMBIGUOUS",
    errors.Unauthenticated,
    "More than one authorization metadata entry.",
    "every service",
)
TOKEN_MALFORMED = _reason(
    "TOKEN_MALFORMED",
    errors.Unauthenticated,
    "The authorization value is not 'Bearer <JWT>', or the JWT is not well formed.",
    "every service",
)
TOKEN_TOO_LARGE = _reason(
    "TOKEN_TOO_LARGE",
    errors.Unauthenticated,
    "The token is over 8 KiB.",
    "every service",
)
TOKEN_UNKNOWN_KEY = _reason(
    "TOKEN_UNKNOWN_KEY",
    errors.Unauthenticated,
    "The token's kid names no key of this server (or none was given with several keys).",
    "every service",
)
TOKEN_EXPIRED = _reason(
    "TOKEN_EXPIRED", errors.Unauthenticated, "The token's exp has passed.", "every service"
)
TOKEN_NOT_YET_VALID = _reason(
    "TOKEN_NOT_YET_VALID",
    errors.Unauthenticated,
    "The token's nbf is in the future (beyond the leeway).",
    "every service",
)
TOKEN_WRONG_AUDIENCE = _reason(
    "TOKEN_WRONG_AUDIENCE",
    errors.Unauthenticated,
    "The token's aud is not this server's.",
    "every service",
)
TOKEN_WRONG_ISSUER = _reason(
    "TOKEN_WRONG_ISSUER",
    errors.Unauthenticated,
    "The token's iss is not accepted.",
    "every service",
)
TOKEN_BAD_SIGNATURE = _reason(
    "TOKEN_BAD_SIGNATURE",
    errors.Unauthenticated,
    "The token's signature does not verify with the key its kid names.",
    "every service",
)
TOKEN_BAD_ALGORITHM = _reason(
    "TOKEN_BAD_ALGORITHM",
    errors.Unauthenticated,
    "The token's alg is not the one algorithm its key allows.",
    "every service",
)
TOKEN_MISSING_CLAIM = _reason(
    "TOKEN_MISSING_CLAIM",
    errors.Unauthenticated,
    "The token lacks a required claim (exp, iss, aud, sub).",
    "every service",
)
TOKEN_BAD_SUBJECT = _reason(
    "TOKEN_BAD_SUBJECT",
    errors.Unauthenticated,
    "The token's sub is not a string of 1..256 characters.",
    "every service",
)
TOKEN_BAD_SCOPE = _reason(
    "TOKEN_BAD_SCOPE",
    errors.Unauthenticated,
    "The token's scope is not space-separated RFC 6749 scope tokens.",
    "every service",
)
TOKEN_INVALID = _reason(
    "TOKEN_INVALID",
    errors.Unauthenticated,
    "The token failed verification for another reason.",
    "every service",
)
SCOPE_MISSING = _reason(
    "SCOPE_MISSING",
    errors.PermissionDenied,
    "The token is valid but lacks the scope the method needs; metadata required_scope.",
    "every service",
)
METHOD_NOT_ALLOWED = _reason(
    "METHOD_NOT_ALLOWED",
    errors.PermissionDenied,
    "The method is missing from the scope table, so it is refused to everyone.",
    "every service",
)
RATE_LIMITED = _reason(
    "RATE_LIMITED",
    errors.ResourceExhausted,
    "The principal is over its rate for this class of calls; RetryInfo and QuotaFailure.",
    "every service",
)

# --- registry -----------------------------------------------------------------------------

NOT_OWNER = _reason(
    "NOT_OWNER",
    errors.PermissionDenied,
    "The agent or run belongs to another principal (only it or an admin may see or change "
    "it; a run's caller gets this whether or not the run exists).",
    "registry, orchestrator",
)
STALE_ETAG = _reason(
    "STALE_ETAG",
    errors.Aborted,
    "The etag sent is not the resource's current one; metadata etag is the current one.",
    "registry",
)
EPOCH_MISMATCH = _reason(
    "EPOCH_MISMATCH",
    errors.FailedPrecondition,
    "The agent was registered again since this epoch: this registration was superseded; "
    "metadata epoch is the current one.",
    "registry",
)
REQUEST_ID_REUSED = _reason(
    "REQUEST_ID_REUSED",
    errors.InvalidArgument,
    "request_id was already used by this principal for a different request.",
    "registry",
)
AGENT_TOO_LARGE = _reason(
    "AGENT_TOO_LARGE",
    errors.InvalidArgument,
    "The agent, as it would be stored, is over --registry-max-agent-bytes (64 KiB by "
    "default); BadRequest (field agent, rule too_large) gives its size; metadata limit.",
    "registry",
)
REVISION_COMPACTED = _reason(
    "REVISION_COMPACTED",
    errors.OutOfRange,
    "The revision asked for is older than the history kept; metadata compact_revision is "
    "the oldest available: list again, then watch from its revision.",
    "registry",
)
TOO_MANY_AGENTS = _reason(
    "TOO_MANY_AGENTS",
    errors.ResourceExhausted,
    "The registry holds its maximum of agents (--registry-max-agents); QuotaFailure, RetryInfo.",
    "registry",
)
TOO_MANY_AGENTS_FOR_PRINCIPAL = _reason(
    "TOO_MANY_AGENTS_FOR_PRINCIPAL",
    errors.ResourceExhausted,
    "The caller holds its maximum of agents (--registry-max-agents-per-principal); "
    "QuotaFailure names it, RetryInfo.",
    "registry",
)
TOO_MANY_WATCHERS = _reason(
    "TOO_MANY_WATCHERS",
    errors.ResourceExhausted,
    "The registry (--registry-max-watchers) or the orchestrator serves its maximum of "
    "watches, in all or for this caller.",
    "registry, orchestrator",
)
TOO_MANY_RUNS = _reason(
    "TOO_MANY_RUNS",
    errors.ResourceExhausted,
    "The orchestrator drives its maximum of unfinished runs (--orchestrator-max-runs); "
    "QuotaFailure, RetryInfo.",
    "orchestrator",
)
TOO_MANY_RUNS_FOR_PRINCIPAL = _reason(
    "TOO_MANY_RUNS_FOR_PRINCIPAL",
    errors.ResourceExhausted,
    "The caller has its maximum of unfinished runs (--orchestrator-max-runs-per-principal): "
    "wait for one to end or cancel one; QuotaFailure names it, RetryInfo.",
    "orchestrator",
)
WATCHER_TOO_SLOW = _reason(
    "WATCHER_TOO_SLOW",
    errors.ResourceExhausted,
    "The watch fell further behind than its buffer and was cancelled; resume from the last "
    "revision received + 1.",
    "registry",
)
WRITE_QUEUE_FULL = _reason(
    "WRITE_QUEUE_FULL",
    errors.ResourceExhausted,
    "The registry's write queue is full (--registry-write-queue); RetryInfo.",
    "registry",
)

# --- generator ----------------------------------------------------------------------------

DNA_INVALID = _reason(
    "DNA_INVALID",
    errors.InvalidArgument,
    "The DNA named or sent breaks its rules; BadRequest names file, field, rule and line.",
    "generator",
)
WRONG_ID = _reason(
    "WRONG_ID",
    errors.InvalidArgument,
    "A candidate's id (or its verdict's candidate_id) is not its genome's content hash.",
    "generator",
)
STRATEGY_NOT_IMPLEMENTED = _reason(
    "STRATEGY_NOT_IMPLEMENTED",
    errors.FailedPrecondition,
    "The DNA's strategy is not one this generator implements.",
    "generator",
)
GENERATOR_BUSY = _reason(
    "GENERATOR_BUSY",
    errors.ResourceExhausted,
    "The generator serves its capacity of Generate streams; RetryInfo, metadata capacity.",
    "generator",
)

DNA_SHAPE = _reason(
    "DNA_SHAPE",
    errors.InvalidArgument,
    "The DNA's genes do not have the shape the oracle takes; BadRequest names the gene.",
    "oracle",
)
ORACLE_BUSY = _reason(
    "ORACLE_BUSY",
    errors.ResourceExhausted,
    "The oracle holds its capacity of candidates; RetryInfo, metadata capacity and free.",
    "oracle",
)
BATCH_OVER_CAPACITY = _reason(
    "BATCH_OVER_CAPACITY",
    errors.ResourceExhausted,
    "A Verify batch larger than the oracle's capacity (never fits; no RetryInfo): split it.",
    "oracle",
)
CREDIT_EXCEEDED = _reason(
    "CREDIT_EXCEEDED",
    errors.ResourceExhausted,
    "A VerifyStream batch larger than the credit the server granted; metadata allowance.",
    "oracle",
)
ORACLE_DRAINING = _reason(
    "ORACLE_DRAINING",
    errors.Unavailable,
    "The oracle agent is shutting down: held batches were answered; continue elsewhere.",
    "oracle",
)
CONFIG_HASH_MISMATCH = _reason(
    "CONFIG_HASH_MISMATCH",
    errors.FailedPrecondition,
    "The oracle's configuration is not the one the caller pinned; metadata config_hash.",
    "oracle",
)
STREAM_IDLE = _reason(
    "STREAM_IDLE",
    errors.DeadlineExceeded,
    "A VerifyStream held credit without sending a batch for the idle timeout; reopen it.",
    "oracle",
)


def markdown_table() -> str:
    """The catalogue as the Markdown table of docs/errors.md (code from the one status table)."""
    from helix.common.status import status_code_for  # grpc: only for this rendering

    rows = ["| reason | code | meaning | sent by |", "|---|---|---|---|"]
    for entry in CATALOGUE.values():
        code = status_code_for(entry.error("")).name
        rows.append(f"| `{entry.name}` | {code} | {entry.meaning} | {entry.sent_by} |")
    return "\n".join(rows)


_BEGIN, _END = "<!-- reasons:begin -->", "<!-- reasons:end -->"
_RULES_BEGIN, _RULES_END = "<!-- rules:begin -->", "<!-- rules:end -->"


def render_errors_doc(text: str) -> str:
    """`text` (docs/errors.md) with its two generated tables replaced by the current ones."""
    from helix.common import rules

    for begin, end, table in (
        (_BEGIN, _END, markdown_table()),
        (_RULES_BEGIN, _RULES_END, rules.markdown_table()),
    ):
        head, found, rest = text.partition(begin)
        _, found_end, tail = rest.partition(end)
        if not (found and found_end):
            raise ValueError(f"docs/errors.md lacks the markers {begin} ... {end}")
        text = f"{head}{begin}\n{table}\n{end}{tail}"
    return text
