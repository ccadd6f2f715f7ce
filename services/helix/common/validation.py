"""Pure, reusable request-validation primitives.

Every `check_*` function returns a list of `FieldViolation` (empty when the value is
fine) and never raises, whatever it is given: validators run on untrusted input before
anything else looks at it. Each violation names the field by its path in proto field
names (`agent.labels["team"]`, `candidates[3].genome.reals`) and says the rule in a few
words ("must not be empty", "must be at most 63 characters"), so a caller reading a
`google.rpc.BadRequest` knows what to fix. Service validators compose these primitives,
one function per request type (see `helix.registry.validation` and its siblings).

No grpc here: this module is part of the pure core.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
from collections.abc import Collection, Sized
from typing import Any

from google.protobuf import descriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from helix.common import rules
from helix.common.errors import FieldViolation

try:  # protobuf >= 4.21 exposes unknown fields through this module only.
    from google.protobuf.unknown_fields import UnknownFieldSet as _UnknownFieldSet
except ImportError:  # pragma: no cover - older protobuf runtimes
    _UnknownFieldSet = None  # type: ignore[assignment, misc]

Violations = list[FieldViolation]

RESOURCE_ID_PATTERN = "[a-z][a-z0-9-]{0,62}"
REQUEST_ID_PATTERN = "[A-Za-z0-9_-]+"

MAX_REQUEST_ID_LEN = 64
MAX_PAGE_TOKEN_LEN = 1024
MAX_ETAG_LEN = 64
MAX_ENDPOINT_LEN = 259

# google.protobuf.Duration's own range: about +-10000 years.
_MAX_DURATION_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000
# How much of a caller's value is echoed back in a path or description.
_SHOW_CHARS = 64
# Nesting deeper than any Helix message; guards the unknown-field walk.
_MAX_DEPTH = 64


# --- field paths --------------------------------------------------------------------------


def join(path: str, name: str) -> str:
    """`path.name`, or `name` at the root."""
    return f"{path}.{name}" if path else name


def index(path: str, i: int) -> str:
    """The path of element `i` of a repeated field: `path[i]`."""
    return f"{path}[{i}]"


def key(path: str, map_key: object) -> str:
    """The path of one map entry: `path["key"]` (long keys are shortened)."""
    return f"{path}[{show(map_key)}]"


def show(value: object) -> str:
    """A value as it is echoed back to the caller: quoted, escaped and at most ~64 chars."""
    if isinstance(value, str):
        text = value if len(value) <= _SHOW_CHARS else value[:_SHOW_CHARS] + "…"
        return json.dumps(text, ensure_ascii=False)
    return str(value)


def format_seconds(seconds: float) -> str:
    """A duration bound for humans: 0s, 500ms, 5s, 90s, 5m, 1h, 30d."""
    if seconds == 0:
        return "0s"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count = seconds / size
        if count == int(count) and (unit == "s" or abs(count) >= 1):
            return f"{int(count)}{unit}"
    if abs(seconds) < 1 and (seconds * 1000) == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def matches(pattern: str, value: str) -> bool:
    """Whether the whole of `value` matches `pattern`."""
    return _compiled(pattern).fullmatch(value) is not None


# --- strings, names, ids ------------------------------------------------------------------


def check_string(
    value: str,
    path: str,
    *,
    required: bool,
    max_len: int,
    pattern: str | None = None,
) -> Violations:
    """A string field: non-empty if required, at most `max_len` code points, `pattern`."""
    if not value:
        return [FieldViolation(path, "must not be empty", rules.REQUIRED)] if required else []
    if len(value) > max_len:
        return [FieldViolation(path, f"must be at most {max_len} characters", rules.TOO_LONG)]
    if pattern is not None and not matches(pattern, value):
        return [FieldViolation(path, f"must match {pattern}", rules.PATTERN)]
    return []


def check_resource_id(value: str, path: str, *, required: bool = True) -> Violations:
    """A resource id such as the `{agent}` of `agents/{agent}`: `[a-z][a-z0-9-]{0,62}`."""
    return check_string(value, path, required=required, max_len=63, pattern=RESOURCE_ID_PATTERN)


def check_resource_name(
    value: str, collection: str, path: str, *, required: bool = True
) -> Violations:
    """A resource name `{collection}/{id}`, id matching `[a-z][a-z0-9-]{0,62}`."""
    if not value:
        return [FieldViolation(path, "must not be empty", rules.REQUIRED)] if required else []
    prefix = collection + "/"
    resource_id = value[len(prefix) :]
    well_formed = value.startswith(prefix) and len(resource_id) <= 63
    if well_formed and matches(RESOURCE_ID_PATTERN, resource_id):
        return []
    return [
        FieldViolation(
            path,
            f'must be a resource name "{prefix}{{id}}" with id matching {RESOURCE_ID_PATTERN}',
            rules.PATTERN,
        )
    ]


def check_request_id(value: str, path: str, required: bool = True) -> Violations:
    """An idempotency key: 1 to 64 characters matching `[A-Za-z0-9_-]+`."""
    return check_string(
        value, path, required=required, max_len=MAX_REQUEST_ID_LEN, pattern=REQUEST_ID_PATTERN
    )


def check_etag(value: str, path: str) -> Violations:
    """An optional opaque etag sent back by the client: at most 64 characters."""
    return check_string(value, path, required=False, max_len=MAX_ETAG_LEN)


# --- numbers ------------------------------------------------------------------------------


def check_finite(value: float, path: str) -> Violations:
    """A double that must be neither NaN nor an infinity."""
    return [] if math.isfinite(value) else [FieldViolation(path, "must be finite", rules.FINITE)]


def check_range(
    value: float,
    path: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_exclusive: bool = False,
) -> Violations:
    """A number within [low, high] (either bound may be absent); NaN always fails."""
    too_low = low is not None and (value <= low if low_exclusive else value < low)
    too_high = high is not None and value > high
    if not (too_low or too_high or math.isnan(value)):
        return []
    lo, hi = format_number(low), format_number(high)
    if low is not None and high is not None:
        if low_exclusive:
            return [
                FieldViolation(path, f"must be greater than {lo} and at most {hi}", rules.RANGE)
            ]
        return [FieldViolation(path, f"must be within {lo}..{hi}", rules.RANGE)]
    if low is not None:
        if low == 0 and not low_exclusive:
            return [FieldViolation(path, "must not be negative", rules.RANGE)]
        word = "greater than" if low_exclusive else "at least"
        return [FieldViolation(path, f"must be {word} {lo}", rules.RANGE)]
    return [FieldViolation(path, f"must be at most {hi}", rules.RANGE)]


def format_number(value: float | None) -> str:
    """A bound for humans: integral values without a decimal point."""
    if value is None:
        return ""
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(value)


def check_enum(
    value: int,
    enum_type: descriptor.EnumDescriptor,
    path: str,
    *,
    required: bool = False,
) -> Violations:
    """An enum field: a value the schema knows and, if required, not the zero value."""
    known = enum_type.values_by_number
    if value not in known:
        names = ", ".join(v.name for v in enum_type.values if v.number != 0 or not required)
        return [FieldViolation(path, f"must be one of {names} (got {value})", rules.ENUM)]
    if required and value == 0:
        return [FieldViolation(path, f"must be set (not {known[0].name})", rules.REQUIRED)]
    return []


# --- repeated fields, pages ---------------------------------------------------------------


def check_repeated_len(values: Sized, path: str, max_len: int, min_len: int = 0) -> Violations:
    """A repeated field with between `min_len` and `max_len` entries."""
    count = len(values)
    if count < min_len:
        if min_len == 1:
            return [FieldViolation(path, "must not be empty", rules.REQUIRED)]
        return [FieldViolation(path, f"must have at least {min_len} entries", rules.TOO_FEW)]
    if count > max_len:
        return [
            FieldViolation(
                path, f"must have at most {max_len} entries (got {count})", rules.TOO_MANY
            )
        ]
    return []


def check_page(page_size: int, page_token: str, path_prefix: str = "") -> Violations:
    """AIP-158 paging: page_size not negative, page_token at most 1024 characters.

    A page_size above the maximum is not an error: the server coerces it (see
    `helix.common.pages.page_size`).
    """
    found: Violations = []
    if page_size < 0:
        found.append(FieldViolation(path_prefix + "page_size", "must not be negative", rules.RANGE))
    found += check_string(
        page_token, path_prefix + "page_token", required=False, max_len=MAX_PAGE_TOKEN_LEN
    )
    return found


# --- durations ----------------------------------------------------------------------------


def duration_is_valid(d: Duration) -> bool:
    """Whether `d` is a well-formed google.protobuf.Duration (range and matching signs)."""
    if abs(d.seconds) > _MAX_DURATION_SECONDS or abs(d.nanos) >= _NANOS:
        return False
    return not (d.seconds > 0 > d.nanos or d.seconds < 0 < d.nanos)


def check_duration(
    d: Duration,
    path: str,
    min_s: float | None = None,
    max_s: float | None = None,
    *,
    min_exclusive: bool = False,
) -> Violations:
    """A well-formed Duration within [min_s, max_s] (or (min_s, max_s] if min_exclusive)."""
    if not duration_is_valid(d):
        return [
            FieldViolation(
                path,
                "must be a valid duration (|seconds| <= 315576000000, |nanos| < 1e9, same sign)",
                rules.DURATION,
            )
        ]
    total = d.seconds * _NANOS + d.nanos
    low = None if min_s is None else round(min_s * _NANOS)
    high = None if max_s is None else round(max_s * _NANOS)
    too_low = low is not None and (total <= low if min_exclusive else total < low)
    too_high = high is not None and total > high
    if not (too_low or too_high):
        return []
    if min_s is not None and max_s is not None:
        if min_exclusive:
            text = f"must be greater than {format_seconds(min_s)} and at most "
            return [FieldViolation(path, text + format_seconds(max_s), rules.RANGE)]
        return [
            FieldViolation(
                path,
                f"must be within {format_seconds(min_s)}..{format_seconds(max_s)}",
                rules.RANGE,
            )
        ]
    if min_s is not None:
        if min_s == 0 and not min_exclusive:
            return [FieldViolation(path, "must not be negative", rules.RANGE)]
        word = "greater than" if min_exclusive else "at least"
        return [FieldViolation(path, f"must be {word} {format_seconds(min_s)}", rules.RANGE)]
    return [FieldViolation(path, f"must be at most {format_seconds(max_s or 0)}", rules.RANGE)]


def duration_seconds(d: Duration) -> float:
    """A Duration as float seconds."""
    return d.seconds + d.nanos / _NANOS


# --- endpoints ----------------------------------------------------------------------------

_DNS_LABEL = "[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?"


def _host_problem(host: str) -> str | None:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "host in brackets must be an IPv6 address"
        return None
    if ":" in host:
        return "an IPv6 host must be in brackets, e.g. [::1]:50051"
    labels = host.split(".")
    if labels[-1].isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "host must be a DNS name or a dotted IPv4 address"
        return None
    if len(host) > 253 or not all(len(x) <= 63 and matches(_DNS_LABEL, x) for x in labels):
        return "host must be a DNS name, an IPv4 address or a bracketed IPv6 address"
    return None


def check_endpoint(
    value: str, path: str, *, required: bool = True, max_len: int = MAX_ENDPOINT_LEN
) -> Violations:
    """A gRPC endpoint "host:port": DNS name, IPv4 or [IPv6] host; port 1 to 65535."""
    if not value:
        return [FieldViolation(path, "must not be empty", rules.REQUIRED)] if required else []
    if len(value) > max_len:
        return [FieldViolation(path, f"must be at most {max_len} characters", rules.TOO_LONG)]
    host, colon, port = value.rpartition(":")
    if not colon or not host:
        return [FieldViolation(path, 'must be "host:port"', rules.ENDPOINT)]
    found: Violations = []
    problem = _host_problem(host)
    if problem is not None:
        found.append(FieldViolation(path, problem, rules.ENDPOINT))
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        found.append(FieldViolation(path, "port must be a number within 1..65535", rules.ENDPOINT))
    return found


# --- field masks --------------------------------------------------------------------------


def check_field_mask(
    mask: FieldMask, allowed_paths: Collection[str], path: str, *, required: bool = True
) -> Violations:
    """An update mask naming only `allowed_paths` (or "*" for all of them)."""
    if not mask.paths:
        if not required:
            return []
        return [FieldViolation(join(path, "paths"), "must not be empty", rules.REQUIRED)]
    allowed = ", ".join(sorted(allowed_paths))
    return [
        FieldViolation(
            index(join(path, "paths"), i),
            f"{show(p)} cannot be updated; allowed: {allowed}, *",
            rules.FIELD_MASK,
        )
        for i, p in enumerate(mask.paths)
        if p != "*" and p not in allowed_paths
    ]


def mask_paths(mask: FieldMask, allowed_paths: Collection[str]) -> frozenset[str]:
    """The allowed paths a mask selects, with "*" expanded; unknown paths are dropped."""
    if "*" in mask.paths:
        return frozenset(allowed_paths)
    return frozenset(p for p in mask.paths if p in allowed_paths)


# --- unknown fields -----------------------------------------------------------------------


def _unknown_field_numbers(message: Message) -> list[int]:
    if _UnknownFieldSet is not None:
        unknown = _UnknownFieldSet(message)
        return sorted({int(unknown[i].field_number) for i in range(len(unknown))})
    legacy: Any = message
    return sorted({int(f.field_number) for f in legacy.UnknownFields()})


def check_own_unknown_fields(message: Message, path: str = "") -> Violations:
    """The unknown fields of `message` itself, not of the messages it holds (for callers
    that check those another way: a batch's candidates read from their bytes)."""
    try:
        numbers = _unknown_field_numbers(message)
    except Exception:  # a validator must never raise on input
        return []
    schema = message.DESCRIPTOR.full_name
    return [
        FieldViolation(
            join(path, str(number)),
            f"is an unknown field (number {number}) of {schema}: not in this server's schema",
            rules.UNKNOWN_FIELD,
        )
        for number in numbers
    ]


def has_unknown_fields(message: Message) -> bool:
    """Whether any unknown field is anywhere in `message` (one pass in C, no Python walk)."""
    clean = type(message)()
    clean.CopyFrom(message)
    clean.DiscardUnknownFields()
    return clean.ByteSize() != message.ByteSize()


def _walk_unknown(
    message: Message, path: str, skip: Collection[str], found: Violations, depth: int
) -> None:
    if depth > _MAX_DEPTH:
        return
    schema = message.DESCRIPTOR.full_name
    for number in _unknown_field_numbers(message):
        found.append(
            FieldViolation(
                join(path, str(number)),
                f"is an unknown field (number {number}) of {schema}: not in this server's schema",
                rules.UNKNOWN_FIELD,
            )
        )
    for field, value in message.ListFields():
        field_path = join(path, field.name)
        if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE and field_path not in skip:
            for item_path, item in _submessages(field, value, field_path):
                _walk_unknown(item, item_path, skip, found, depth + 1)


def _submessages(
    field: descriptor.FieldDescriptor, value: Any, path: str
) -> list[tuple[str, Message]]:
    """The messages a message-typed field holds, with their paths: map values, list items
    or the one message."""
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        if entry.fields_by_name["value"].type != descriptor.FieldDescriptor.TYPE_MESSAGE:
            return []
        return [(key(path, map_key), item) for map_key, item in value.items()]
    if field.is_repeated:
        return [(index(path, i), item) for i, item in enumerate(value)]
    return [(path, value)]


def check_no_unknown_fields(
    message: Message, path: str = "", *, skip: Collection[str] = ()
) -> Violations:
    """Fields, at any depth, that the server's schema does not know (sent by a newer client).

    An unknown field is reported at `path.<field number>`, as protobuf's text format names
    it. Subtrees whose paths are in `skip` are not inspected. Never raises: should the
    runtime fail to inspect a message, that message is taken as having no unknown fields.
    """
    found: Violations = []
    try:
        if has_unknown_fields(message):
            _walk_unknown(message, path, skip, found, 0)
    except Exception:  # a validator must never raise on input; report what was found
        return found
    return found
