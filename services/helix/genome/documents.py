"""DNA documents: YAML or JSON text (or a Dna message) in, the DNA and every broken rule out.

Pure and synchronous (no grpc, no I/O): the library and the CLI call it, the library from a
worker thread. A document is the proto message `helix.v1.Dna` in its canonical JSON
mapping, written as YAML or JSON (dna.proto). The text is composed with PyYAML's safe
loader into a node tree, so every field keeps its line, and the tree is walked against the
Dna descriptor (_dna_yaml.py): proto and lowerCamelCase names, enums by name or number,
64-bit integers as numbers or strings, doubles as numbers or "NaN"/"Infinity"/"-Infinity",
null as unset.
What cannot be read becomes a violation ("syntax", "unknown_field", "type", "range",
"enum", "duplicate_key", "oneof"); then `check_dna` runs on what was read, and each of its
violations gets the line of the nearest field path the walk saw. A document whose reading
costs more than the walk's budget (YAML aliases and merge keys expanding) gets "too_large"
as its first violation and no structural checks.

A field that could not be read is left unset. So that this does not cause a second,
misleading report, `check_dna` violations of that field, and (below the top level) of its
siblings and its parent, are left out: a gene whose `low` was a string is not also told
that `low` must be <= `high`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common import rules
from helix.common.errors import FieldViolation
from helix.common.rules import (
    EMPTY,
    ENCODING,
    FILE_TOO_LARGE,
    NAME_MATCHES_FILE,
    RANGE,
    SYNTAX,
    TYPE,
    UNKNOWN_FIELD,
)
from helix.common.validation import (
    RESOURCE_ID_PATTERN,
    check_no_unknown_fields,
    matches,
    show,
)
from helix.genome import layout
from helix.genome._dna_yaml import YAML_TAG, Walk, excerpt
from helix.genome.validation import check_dna

MAX_VIOLATIONS = 100
MAX_DOCUMENT_BYTES = 1 << 20
MAX_DESCRIPTION_CHARS = 1024
DNA_EXTENSIONS = (".yaml", ".yml", ".json")

# libyaml's loader when PyYAML has it: the same YAML and node tree, ten times faster,
# with nesting capped at 1000 levels (the pure-Python one hits Python's recursion limit).
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
# "\ud83e\uddec" in JSON text (not preceded by an escaped backslash): one character.
_SURROGATE_PAIR = re.compile(
    r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE
)
# Rules after which the field is unset although the document set it (see module doc).
_UNREAD = frozenset({TYPE, RANGE})


@dataclass(frozen=True, slots=True)
class DnaCheck:
    """The outcome of reading and checking one DNA.

    `dna` is the DNA as far as it could be read; `violations` the first MAX_VIOLATIONS
    broken rules, in line order, of `total_violations`; `normalised` (defaults filled in)
    and `fingerprint` are set only when the DNA is valid. Treat the messages as read-only.
    """

    file: str
    dna: dna_pb2.Dna
    violations: tuple[FieldViolation, ...]
    total_violations: int
    normalised: dna_pb2.Dna | None = None
    fingerprint: str = ""

    @property
    def valid(self) -> bool:
        """Whether the DNA was read and broke no rule."""
        return self.normalised is not None

    def violation_protos(self) -> list[generator_pb2.DnaViolation]:
        """The violations as helix.v1.DnaViolation messages."""
        return [dna_violation(violation) for violation in self.violations]


def dna_violation(violation: FieldViolation) -> generator_pb2.DnaViolation:
    """A violation of a DNA document as a helix.v1.DnaViolation."""
    return generator_pb2.DnaViolation(
        file=violation.file,
        field_path=violation.field,
        rule=violation.reason,
        description=violation.description,
        line=violation.line,
    )


def from_dna_violation(violation: generator_pb2.DnaViolation) -> FieldViolation:
    """A helix.v1.DnaViolation (as stored in a DnaDocument) as a FieldViolation."""
    return FieldViolation(
        violation.field_path,
        violation.description,
        violation.rule,
        violation.file,
        violation.line,
    )


# --- names --------------------------------------------------------------------------------


def _base_name(filename: str) -> str:
    """The file name without directories (a library lists thousands: no pathlib here)."""
    name = filename.replace("\\", "/").rstrip("/").rpartition("/")[2]
    return "" if name == "." else name


def file_stem(filename: str) -> str:
    """The file name without directories and without its extension: `dnas/{stem}`'s id."""
    name = _base_name(filename)
    for extension in DNA_EXTENSIONS:
        if name.endswith(extension) and len(name) > len(extension):
            return name[: -len(extension)]
    return PurePosixPath(name).stem


def is_dna_id(stem: str) -> bool:
    """Whether `stem` can be the `{dna}` of a resource name "dnas/{dna}"."""
    return len(stem) <= 63 and matches(RESOURCE_ID_PATTERN, stem)


def dna_name_for(filename: str) -> str:
    """The resource name a library serves `filename` as, or "" if it is not served."""
    stem = file_stem(filename)
    return f"dnas/{stem}" if is_dna_id(stem) else ""


def why_not_served(filename: str) -> str | None:
    """Why a DNA library does not serve a file of this name (rule "file_name"), or None
    when it serves it as `dna_name_for(filename)`."""
    name = _base_name(filename)
    if not name.endswith(DNA_EXTENSIONS):
        return "the name does not end in .yaml, .yml or .json: a DNA library does not serve it"
    stem = file_stem(name)
    if not is_dna_id(stem):
        return (
            f"the name without its extension, {show(stem)}, is not a DNA id "
            f"({RESOURCE_ID_PATTERN}): a DNA library does not serve it; rename the file"
        )
    return None


def _name_matches_file(name: str, filename: str) -> str | None:
    """Why `name` does not fit `filename` (rule "name_matches_file"), or None if it does."""
    stem = file_stem(filename)
    if name == f"dnas/{stem}":
        return None
    if is_dna_id(stem):
        return f'must equal "dnas/{stem}" (the file name without its extension), got {show(name)}'
    return (
        f"must match the file name, but {show(stem)} is not a DNA id "
        f"({RESOURCE_ID_PATTERN}): rename the file or leave name out"
    )


# --- results ------------------------------------------------------------------------------


def _clip(text: str) -> str:
    if len(text) <= MAX_DESCRIPTION_CHARS:
        return text
    return text[: MAX_DESCRIPTION_CHARS - 1] + "…"


def _finish(
    file: str,
    dna: dna_pb2.Dna,
    found: Iterable[FieldViolation],
    *,
    first: FieldViolation | None = None,
    uncounted: int = 0,
) -> DnaCheck:
    """Order, cap and clean the violations; normalise and fingerprint a valid DNA.

    `first` goes before the others, whatever its line; `uncounted` violations were found
    but not described (they count in total_violations)."""
    ordered = sorted(found, key=lambda v: v.line)  # stable: same-line rules keep their order
    if first is not None:
        ordered.insert(0, first)
    if not ordered:
        normalised = layout.normalise(dna)
        return DnaCheck(file, dna, (), 0, normalised, layout.fingerprint(normalised))
    shown = tuple(
        FieldViolation(
            v.field,
            _clip(v.description),
            v.reason if v.reason in rules.RULES else rules.INVALID,
            file,
            v.line,
        )
        for v in ordered[:MAX_VIOLATIONS]
    )
    return DnaCheck(file, dna, shown, len(ordered) + uncounted)


def _parent(path: str) -> str:
    """`genes[2].real` for `genes[2].real.low`, `genes` for `genes[2]`, "" at the top."""
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith((root + ".", root + "["))


def _unread_scope(path: str) -> str:
    """The subtree whose structural checks an unread field at `path` would mislead: the
    field's message (its siblings' rules may involve it), or the list item or top-level
    field itself."""
    parent = _parent(path)
    return path if path.endswith("]") or not parent else parent


def _structural(dna: dna_pb2.Dna, file: str, lines: dict[str, int]) -> list[FieldViolation]:
    """check_dna's violations, plus name_matches_file, each with its nearest known line."""
    found = check_dna(dna, "")
    if file and dna.name and not any(v.field == "name" for v in found):
        problem = _name_matches_file(dna.name, file)
        if problem is not None:
            found.append(FieldViolation("name", problem, NAME_MATCHES_FILE))
    return [
        FieldViolation(v.field, v.description, v.reason, file, _line_of(v.field, lines))
        for v in found
    ]


def _line_of(path: str, lines: dict[str, int]) -> int:
    """The line of `path`, or of its nearest ancestor the text mentions (0 if none)."""
    while path not in lines and path:
        path = _parent(path)
    return lines.get(path, 0)


# --- a Dna message ------------------------------------------------------------------------


def check_dna_message(dna: dna_pb2.Dna, filename: str = "") -> DnaCheck:
    """Check a DNA given as a message (ValidateDna with `dna`, an inline DNA).

    Unknown fields (sent by a newer client) are violations ("unknown_field"); so is a
    `name` that does not fit `filename`, when both are set. Lines are all 0.
    """
    found = [
        FieldViolation(v.field, v.description, UNKNOWN_FIELD, filename)
        for v in check_no_unknown_fields(dna)
    ]
    found += _structural(dna, filename, {})
    return _finish(filename, dna, found)


# --- text ---------------------------------------------------------------------------------


def file_problem(filename: str, rule: str, description: str, line: int = 0) -> DnaCheck:
    """The check of a file that could not be read as a DNA at all (one violation)."""
    return _finish(filename, dna_pb2.Dna(), [FieldViolation("", description, rule, filename, line)])


def check_dna_bytes(data: bytes, filename: str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> DnaCheck:
    """Read a DNA file's content: at most `max_bytes` of UTF-8, then as `parse_dna_text`."""
    if len(data) > max_bytes:
        return file_problem(filename, FILE_TOO_LARGE, f"the file is over {max_bytes} bytes")
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is not content
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        description = f"the file is not UTF-8 text (byte {exc.start} cannot be decoded)"
        return file_problem(filename, ENCODING, description, line)
    return parse_dna_text(text, filename)


def parse_dna_text(text: str, filename: str = "") -> DnaCheck:
    """Read a DNA document (YAML, or JSON when `filename` ends in .json) and check it.

    Never raises on any input: every problem, from a syntax error to a broken field rule,
    is a FieldViolation naming `filename`, the field path, the rule and the 1-based line.
    """
    is_json = filename.endswith(".json")
    dna = dna_pb2.Dna()

    def whole(rule: str, problem: tuple[str, int]) -> DnaCheck:
        description, line = problem
        return _finish(filename, dna, [FieldViolation("", description, rule, filename, line)])

    if is_json and text.strip():
        json_problem = _json_syntax_problem(text)
        if json_problem is not None:
            return whole(SYNTAX, json_problem)
        text = _json_as_yaml(text)
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        return whole(SYNTAX, _yaml_problem(exc, text))
    except RecursionError:
        return whole(SYNTAX, ("the document nests too deeply", 1))
    except UnicodeError as exc:  # a str with lone surrogates: not text a file can hold
        line = text.count("\n", 0, getattr(exc, "start", 0)) + 1
        return whole(SYNTAX, ("the text is not valid Unicode (a lone surrogate)", line))
    if root is None or (isinstance(root, ScalarNode) and root.tag == YAML_TAG + "null"):
        return whole(EMPTY, ("the document is empty: a DNA is a mapping with at least genes", 1))
    walk = Walk(filename, is_json)
    walk.message(root, dna, "")
    if not isinstance(root, MappingNode) or walk.exhausted or walk.dropped:
        # A partial walk (or one with violations beyond counting) makes structural checks
        # of what was read meaningless; "too_large" is then the first violation.
        return _finish(filename, dna, walk.found, first=walk.too_large, uncounted=walk.dropped)
    scopes = [_unread_scope(v.field) for v in walk.found if v.reason in _UNREAD]
    structural = [
        v
        for v in _structural(dna, filename, walk.lines)
        if not any(_within(v.field, scope) for scope in scopes)
    ]
    return _finish(filename, dna, walk.found + structural)


def _json_syntax_problem(text: str) -> tuple[str, int] | None:
    """A JSON syntax error as (description, line), or None for well-formed JSON."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno
    except RecursionError:
        return "the document nests too deeply", 1
    return None


def _json_as_yaml(text: str) -> str:
    """Well-formed JSON made safe for the YAML reader, meaning unchanged: tabs (only ever
    whitespace in valid JSON) become spaces, and characters YAML rejects or reads as line
    breaks (only ever inside JSON strings) become \\u escapes, and surrogate pairs, which
    libyaml refuses, one \\U escape."""
    text = text.replace("\t", " ")
    text = _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return _SURROGATE_PAIR.sub(_joined_pair, text)


def _joined_pair(match: re.Match[str]) -> str:
    """A JSON surrogate-pair escape as the one YAML escape of its character."""
    backslashes, high, low = match.group(1), int(match.group(2), 16), int(match.group(3), 16)
    return f"{backslashes}\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"


def _yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[str, int]:
    """A YAML error as (description, 1-based line)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        # The parser's words may quote the text (an alias, a tag): an excerpt at most.
        words = [excerpt(w) for w in (exc.context, exc.problem) if w]
        description = ": ".join(words) if words else "malformed YAML"
        if exc.context and exc.context_mark and exc.problem_mark:
            description += f" (from line {exc.context_mark.line + 1})"
        return description, mark.line + 1 if mark else 1
    if isinstance(exc, yaml.reader.ReaderError):
        if _LOADER is yaml.SafeLoader:
            line = text.count("\n", 0, exc.position) + 1
        else:  # libyaml counts bytes of UTF-8
            line = text.encode("utf-8", "replace").count(b"\n", 0, exc.position) + 1
        return f"unacceptable character #x{exc.character:04x}: {exc.reason}", line
    return f"malformed YAML: {exc}", 1
