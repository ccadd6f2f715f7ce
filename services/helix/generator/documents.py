"""DNA documents: YAML or JSON text (or a Dna message) in, the DNA and every broken rule out.

Pure and synchronous (no grpc, no I/O): the library and the CLI call it, the library from a
worker thread. A document is the proto message `helix.v1.Dna` in its canonical JSON
mapping, written as YAML or JSON (dna.proto). The text is composed with PyYAML's safe
loader into a node tree, so every field keeps its line, and the tree is walked against the
Dna descriptor: proto and lowerCamelCase names, enums by name or number, 64-bit integers
as numbers or strings, doubles as numbers or "NaN"/"Infinity"/"-Infinity", null as unset.
What cannot be read becomes a violation ("syntax", "unknown_field", "type", "range",
"enum", "duplicate_key", "oneof"); then `check_dna` runs on what was read, and each of its
violations gets the line of the nearest field path the walk saw.

A field that could not be read is left unset. So that this does not cause a second,
misleading report, `check_dna` violations of that field, and (below the top level) of its
siblings and its parent, are left out: a gene whose `low` was a string is not also told
that `low` must be <= `high`.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import yaml
from google.protobuf import descriptor
from google.protobuf.message import Message
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common.errors import FieldViolation
from helix.common.validation import (
    RESOURCE_ID_PATTERN,
    check_no_unknown_fields,
    index,
    join,
    matches,
    show,
)
from helix.generator import layout
from helix.generator.validation import ENUM, RANGE, UNKNOWN_FIELD, check_dna

MAX_VIOLATIONS = 100
MAX_DOCUMENT_BYTES = 1 << 20
MAX_DESCRIPTION_CHARS = 1024
# Values the walk visits at most (YAML aliases can make a small text expand enormously).
# The largest valid DNA holds about 264000 (256 choice genes of 1024 options).
MAX_NODES = 400_000
DNA_EXTENSIONS = (".yaml", ".yml", ".json")

# Rule codes of the document layer (the field rules are in helix.generator.validation).
SYNTAX = "syntax"
EMPTY = "empty"
TYPE = "type"
DUPLICATE_KEY = "duplicate_key"
ONEOF = "oneof"
TOO_LARGE = "too_large"
NAME_MATCHES_FILE = "name_matches_file"
FILE_TOO_LARGE = "file_too_large"
ENCODING = "encoding"
FALLBACK_RULE = "invalid"

_RULE_PATTERN = "[a-z][a-z0-9_]{0,62}"
# libyaml's loader when PyYAML has it: the same YAML and node tree, ten times faster,
# with nesting capped at 1000 levels (the pure-Python one hits Python's recursion limit).
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _TAG + "merge"
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# "\ud83e\uddec" in JSON text (not preceded by an escaped backslash): one character.
_SURROGATE_PAIR = re.compile(
    r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE
)
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FD = descriptor.FieldDescriptor
_INT_BOUNDS = {
    _FD.CPPTYPE_INT32: (-(2**31), 2**31 - 1, "an int32"),
    _FD.CPPTYPE_INT64: (-(2**63), 2**63 - 1, "an int64"),
    _FD.CPPTYPE_UINT32: (0, 2**32 - 1, "a uint32"),
    _FD.CPPTYPE_UINT64: (0, 2**64 - 1, "a uint64"),
}
# Rules after which the field is unset although the document set it (see module doc).
_UNREAD = frozenset({TYPE, RANGE})


@dataclass(frozen=True, slots=True)
class Violation:
    """One rule a DNA document breaks; `str()` is "file:line: field_path: description [rule]"."""

    file: str
    field_path: str
    rule: str
    description: str
    line: int = 0

    def __str__(self) -> str:
        where = self.file or "<dna>"
        if self.line:
            where += f":{self.line}"
        subject = f"{self.field_path}: " if self.field_path else ""
        return f"{where}: {subject}{self.description} [{self.rule}]"

    def to_proto(self) -> generator_pb2.DnaViolation:
        """The violation as a helix.v1.DnaViolation."""
        return generator_pb2.DnaViolation(
            file=self.file,
            field_path=self.field_path,
            rule=self.rule,
            description=self.description,
            line=self.line,
        )

    def to_field_violation(self, prefix: str = "") -> FieldViolation:
        """The violation for a google.rpc.BadRequest, its field path under `prefix` (e.g.
        "dna" for an inline DNA) and its file and line in the description."""
        where = f"{self.file}:{self.line}: " if self.file and self.line else ""
        where = where or (f"{self.file}: " if self.file else "")
        path = join(prefix, self.field_path) if self.field_path else prefix
        return FieldViolation(path, where + self.description, self.rule)


@dataclass(frozen=True, slots=True)
class DnaCheck:
    """The outcome of reading and checking one DNA.

    `dna` is the DNA as far as it could be read; `violations` the first MAX_VIOLATIONS
    broken rules, in line order, of `total_violations`; `normalised` (defaults filled in)
    and `fingerprint` are set only when the DNA is valid. Treat the messages as read-only.
    """

    file: str
    dna: dna_pb2.Dna
    violations: tuple[Violation, ...]
    total_violations: int
    normalised: dna_pb2.Dna | None = None
    fingerprint: str = ""

    @property
    def valid(self) -> bool:
        """Whether the DNA was read and broke no rule."""
        return self.normalised is not None

    def violation_protos(self) -> list[generator_pb2.DnaViolation]:
        """The violations as helix.v1.DnaViolation messages."""
        return [violation.to_proto() for violation in self.violations]


# --- names --------------------------------------------------------------------------------


def file_stem(filename: str) -> str:
    """The file name without directories and without its extension: `dnas/{stem}`'s id."""
    name = PurePosixPath(filename.replace("\\", "/")).name
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


def _finish(file: str, dna: dna_pb2.Dna, found: Iterable[Violation]) -> DnaCheck:
    """Order, cap and clean the violations; normalise and fingerprint a valid DNA."""
    ordered = sorted(found, key=lambda v: v.line)  # stable: same-line rules keep their order
    if not ordered:
        normalised = layout.normalise(dna)
        return DnaCheck(file, dna, (), 0, normalised, layout.fingerprint(normalised))
    shown = tuple(
        Violation(
            file,
            v.field_path,
            v.rule if matches(_RULE_PATTERN, v.rule) else FALLBACK_RULE,
            _clip(v.description),
            v.line,
        )
        for v in ordered[:MAX_VIOLATIONS]
    )
    return DnaCheck(file, dna, shown, len(ordered))


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


def _structural(dna: dna_pb2.Dna, file: str, lines: dict[str, int]) -> list[Violation]:
    """check_dna's violations, plus name_matches_file, each with its nearest known line."""
    found = check_dna(dna, "")
    if file and dna.name and not any(v.field == "name" for v in found):
        problem = _name_matches_file(dna.name, file)
        if problem is not None:
            found.append(FieldViolation("name", problem, NAME_MATCHES_FILE))
    return [
        Violation(file, v.field, v.reason or FALLBACK_RULE, v.description, _line_of(v.field, lines))
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
        Violation(filename, v.field, UNKNOWN_FIELD, v.description)
        for v in check_no_unknown_fields(dna)
    ]
    found += _structural(dna, filename, {})
    return _finish(filename, dna, found)


# --- text ---------------------------------------------------------------------------------


def file_problem(filename: str, rule: str, description: str, line: int = 0) -> DnaCheck:
    """The check of a file that could not be read as a DNA at all (one violation)."""
    return _finish(filename, dna_pb2.Dna(), [Violation(filename, "", rule, description, line)])


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
    is a Violation naming `filename`, the field path, the rule and the 1-based line.
    """
    is_json = filename.endswith(".json")
    dna = dna_pb2.Dna()

    def whole(rule: str, problem: tuple[str, int]) -> DnaCheck:
        return _finish(filename, dna, [Violation(filename, "", rule, *problem)])

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
    if root is None or (isinstance(root, ScalarNode) and root.tag == _TAG + "null"):
        return whole(EMPTY, ("the document is empty: a DNA is a mapping with at least genes", 1))
    walk = _Walk(filename, is_json)
    walk.message(root, dna, "")
    if not isinstance(root, MappingNode) or walk.exhausted:
        return _finish(filename, dna, walk.found)
    scopes = [_unread_scope(v.field_path) for v in walk.found if v.rule in _UNREAD]
    structural = [
        v
        for v in _structural(dna, filename, walk.lines)
        if not any(_within(v.field_path, scope) for scope in scopes)
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
        words = [w for w in (exc.context, exc.problem) if w]
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


@functools.lru_cache(maxsize=64)
def _fields_by_name(message_type: descriptor.Descriptor) -> dict[str, descriptor.FieldDescriptor]:
    """A message's fields by proto name and by lowerCamelCase JSON name."""
    fields: dict[str, descriptor.FieldDescriptor] = {}
    for f in message_type.fields:
        fields[f.name] = f
        fields.setdefault(f.json_name, f)
    return fields


def _node_kind(node: Node) -> str:
    """How a node reads to a person: "a list", "a string ("x")", "a boolean (yes)"…"""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag, value = node.tag, node.value
    kinds = {"str": "a string", "int": "a number", "float": "a number", "bool": "a boolean"}
    kinds |= {"timestamp": "a date", "binary": "binary data"}
    if tag == _TAG + "null":
        return "null"
    if tag.startswith(_TAG) and tag[len(_TAG) :] in kinds:
        return f"{kinds[tag[len(_TAG) :]]} ({show(value) if tag == _TAG + 'str' else value})"
    return f"a value tagged {tag}"


def _expected(f: descriptor.FieldDescriptor) -> str:
    """What a field's value must be, for a "type" violation."""
    cpp = f.cpp_type
    if cpp == _FD.CPPTYPE_MESSAGE and f.message_type is not None:
        return f"a mapping (a {f.message_type.full_name})"
    if cpp == _FD.CPPTYPE_STRING:
        return "a base64 string" if f.type == _FD.TYPE_BYTES else "a string"
    if cpp == _FD.CPPTYPE_BOOL:
        return "true or false"
    if cpp == _FD.CPPTYPE_ENUM and f.enum_type is not None:
        return f"an enum value name ({', '.join(v.name for v in f.enum_type.values)})"
    if cpp in (_FD.CPPTYPE_DOUBLE, _FD.CPPTYPE_FLOAT):
        return "a number"
    return "an integer"


class _Unread(Exception):
    """A value that cannot be stored in its field; carries the rule and the description."""

    def __init__(self, rule: str, description: str) -> None:
        super().__init__(description)
        self.rule, self.description = rule, description


@dataclass
class _Walk:
    """One walk of a YAML node tree against a message descriptor."""

    file: str
    is_json: bool
    found: list[Violation] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)
    budget: int = MAX_NODES
    exhausted: bool = False
    constructor: SafeConstructor = field(default_factory=SafeConstructor)

    def report(self, path: str, rule: str, description: str, node: Node) -> None:
        self.found.append(Violation(self.file, path, rule, description, node.start_mark.line + 1))

    def spend(self, node: Node) -> bool:
        """Count one visited node; False (and one violation) once the budget is spent."""
        self.budget -= 1
        if self.budget >= 0:
            return True
        if not self.exhausted:
            self.exhausted = True
            text = f"the document expands to more than {MAX_NODES} values (YAML aliases?)"
            self.report("", TOO_LARGE, text, node)
        return False

    def message(self, node: Node, message: Message, path: str) -> None:
        """Read a mapping node into `message`, field by field."""
        if not self.spend(node):
            return
        self.lines.setdefault(path, node.start_mark.line + 1)
        schema = message.DESCRIPTOR
        if not isinstance(node, MappingNode):
            expected = f"must be a mapping (a {schema.full_name}), got {_node_kind(node)}"
            self.report(path, TYPE, expected, node)
            return
        fields = _fields_by_name(schema)
        seen: dict[str, int] = {}
        oneofs: dict[str, str] = {}
        for key_node, value_node in self.pairs(node, path, depth=0):
            key_text = str(key_node.value) if isinstance(key_node, ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            f = fields.get(key_text) if isinstance(key_node, ScalarNode) else None
            field_path = join(path, f.name if f is not None else key_text)
            if field_path in seen:
                text = f"is given more than once (first on line {seen[field_path]})"
                self.report(field_path, DUPLICATE_KEY, text, key_node)
                continue
            seen[field_path] = line
            if f is None:
                self.report(field_path, UNKNOWN_FIELD, _unknown(key_text, schema), key_node)
                continue
            self.lines[field_path] = line
            if isinstance(value_node, ScalarNode) and value_node.tag == _TAG + "null":
                continue  # proto JSON: null means unset
            oneof = f.containing_oneof
            if oneof is not None:
                if oneof.name in oneofs:
                    members = ", ".join(m.name for m in oneof.fields)
                    text = (
                        f"{oneof.name} is already set by {oneofs[oneof.name]}: "
                        f"set exactly one of {members}"
                    )
                    self.report(field_path, ONEOF, text, key_node)
                    continue
                oneofs[oneof.name] = f.name
            self.field(value_node, message, f, field_path)

    def pairs(self, node: MappingNode, path: str, depth: int) -> list[tuple[Node, Node]]:
        """The key/value pairs of a mapping with YAML merge keys (`<<: *base`) applied."""
        explicit: list[tuple[Node, Node]] = []
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                explicit.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if isinstance(source, MappingNode) and depth < 16 and self.spend(source):
                    merged += self.pairs(source, path, depth + 1)
                elif not isinstance(source, MappingNode):
                    text = f"a merge key (<<) takes mappings, got {_node_kind(source)}"
                    self.report(path, TYPE, text, source)
        taken = {k.value for k, _ in explicit if isinstance(k, ScalarNode)}
        result: list[tuple[Node, Node]] = []
        for key_node, value_node in merged:  # the first source to name a key wins
            if isinstance(key_node, ScalarNode) and key_node.value not in taken:
                taken.add(key_node.value)
                result.append((key_node, value_node))
        return result + explicit

    def field(self, node: Node, message: Message, f: descriptor.FieldDescriptor, path: str) -> None:
        """Read one field's (non-null) value node into `message`."""
        if f.is_repeated:
            if not isinstance(node, SequenceNode):
                text = f"must be a list of {_expected(f)} values, got {_node_kind(node)}"
                self.report(path, TYPE, text, node)
                return
            target = getattr(message, f.name)
            for i, item in enumerate(node.value):
                item_path = index(path, i)
                self.lines.setdefault(item_path, item.start_mark.line + 1)
                # An unreadable item still takes its place (as the default value), so the
                # indices of the items after it stay those of the text.
                if f.cpp_type == _FD.CPPTYPE_MESSAGE:
                    self.message(item, target.add(), item_path)
                elif self.spend(item) and not self.scalar_into(item, f, item_path, target.append):
                    target.append(_zero(f))
            return
        if f.cpp_type == _FD.CPPTYPE_MESSAGE:
            if not isinstance(node, MappingNode):  # leave the field unset
                self.report(path, TYPE, f"must be {_expected(f)}, got {self.kind(node)}", node)
                return
            child = getattr(message, f.name)
            child.SetInParent()
            self.message(node, child, path)
        elif self.spend(node):
            self.scalar_into(node, f, path, lambda value: setattr(message, f.name, value))

    def scalar_into(
        self,
        node: Node,
        f: descriptor.FieldDescriptor,
        path: str,
        store: Callable[[Any], object],
    ) -> bool:
        """Store a scalar field's value; False (and a violation) if it cannot be read."""
        try:
            value = self.scalar(node, f)
        except _Unread as problem:
            self.report(path, problem.rule, problem.description, node)
            return False
        try:
            store(value)
        except (TypeError, ValueError) as exc:  # the runtime refused it: say so, never raise
            self.report(path, TYPE, f"cannot be stored: {exc}", node)
            return False
        return True

    def scalar(self, node: Node, f: descriptor.FieldDescriptor) -> Any:
        """The Python value of a scalar field, or _Unread."""
        if not isinstance(node, ScalarNode):
            raise _Unread(TYPE, f"must be {_expected(f)}, got {_node_kind(node)}")
        tag, text, cpp = node.tag, node.value, f.cpp_type
        if cpp == _FD.CPPTYPE_STRING and tag == _TAG + "str" and not self.json_number(node):
            return _unicode(text) if f.type != _FD.TYPE_BYTES else _base64(text)
        if cpp == _FD.CPPTYPE_BOOL and tag == _TAG + "bool":
            return self.constructor.construct_yaml_bool(node)
        if cpp == _FD.CPPTYPE_ENUM:
            return _enum_value(node, f)
        if cpp in (_FD.CPPTYPE_DOUBLE, _FD.CPPTYPE_FLOAT):
            return self.double(node)
        if cpp in _INT_BOUNDS:
            return self.integer(node, f)
        hint = " (quote it to make it a string)" if cpp == _FD.CPPTYPE_STRING else ""
        raise _Unread(TYPE, f"must be {_expected(f)}, got {self.kind(node)}{hint}")

    def json_number(self, node: ScalarNode) -> bool:
        """Whether a node is a JSON number that YAML 1.1 reads as a string (`1e-5`)."""
        return self.is_json and node.style is None and node.tag == _TAG + "str"

    def kind(self, node: Node) -> str:
        if isinstance(node, ScalarNode) and self.json_number(node):
            return f"a number ({node.value})"
        return _node_kind(node)

    def double(self, node: ScalarNode) -> float:
        tag, text = node.tag, node.value
        if tag == _TAG + "float":
            try:
                return float(self.constructor.construct_yaml_float(node))
            except ValueError:
                raise _Unread(TYPE, f"must be a number, got {self.kind(node)}") from None
        if tag == _TAG + "int":
            return float(self.integer_value(node))
        if tag == _TAG + "str":  # proto JSON accepts numbers written as strings
            if text in _SPECIAL_DOUBLES:
                return _SPECIAL_DOUBLES[text]
            if _JSON_NUMBER.fullmatch(text):
                return float(text)
        raise _Unread(TYPE, f"must be a number, got {self.kind(node)}")

    def integer_value(self, node: ScalarNode) -> int:
        try:
            value: int = self.constructor.construct_yaml_int(node)
        except ValueError:  # e.g. more digits than Python converts
            raise _Unread(RANGE, "is too large a number") from None
        return value

    def integer(self, node: ScalarNode, f: descriptor.FieldDescriptor) -> int:
        tag, text = node.tag, node.value
        if tag == _TAG + "int":
            value = self.integer_value(node)
        elif tag == _TAG + "str" and len(text) <= 40 and _INTEGER_TEXT.fullmatch(text):
            value = int(text)  # proto JSON writes 64-bit integers as strings
        elif tag in (_TAG + "float", _TAG + "str"):
            number = self.double(node)  # proto JSON takes an integral 1.0 or 1e3 too
            if not (math.isfinite(number) and number == int(number)):
                raise _Unread(TYPE, f"must be an integer, got {self.kind(node)}")
            value = int(number)
        else:
            raise _Unread(TYPE, f"must be an integer, got {self.kind(node)}")
        low, high, name = _INT_BOUNDS[f.cpp_type]
        if not low <= value <= high:
            if low == 0 and value < 0:
                raise _Unread(RANGE, f"must not be negative (it is {name})")
            raise _Unread(RANGE, f"must be within {low}..{high} (it is {name})")
        return value


def _zero(f: descriptor.FieldDescriptor) -> object:
    """The proto3 default of a scalar field's type."""
    cpp = f.cpp_type
    if cpp == _FD.CPPTYPE_STRING:
        return b"" if f.type == _FD.TYPE_BYTES else ""
    if cpp == _FD.CPPTYPE_BOOL:
        return False
    return 0.0 if cpp in (_FD.CPPTYPE_DOUBLE, _FD.CPPTYPE_FLOAT) else 0


def _unknown(key: str, schema: Any) -> str:
    names = [f.name for f in schema.fields]
    close = difflib.get_close_matches(key, names + [f.json_name for f in schema.fields], n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known fields: {', '.join(names)}"
    return f"is not a field of {schema.full_name}{hint}"


def _enum_value(node: ScalarNode, f: descriptor.FieldDescriptor) -> int:
    enum = f.enum_type
    if enum is None:
        raise _Unread(TYPE, "has an enum type this server does not know")
    if node.tag == _TAG + "str":
        value = enum.values_by_name.get(node.value)
        if value is None:
            names = ", ".join(v.name for v in enum.values)
            raise _Unread(ENUM, f"must be one of {names} (got {show(node.value)})")
        return int(value.number)
    if node.tag == _TAG + "int" and _INTEGER_TEXT.fullmatch(node.value):
        number = int(node.value)
        if -(2**31) <= number < 2**31:
            return number  # an unknown number is reported by check_dna ("enum")
        raise _Unread(RANGE, f"must be within {-(2**31)}..{2**31 - 1} (an enum number)")
    raise _Unread(TYPE, f"must be {_expected(f)}, got {_node_kind(node)}")


def _unicode(text: str) -> str:
    """`text` with escaped UTF-16 surrogate pairs ("\\ud83e\\uddec", as JSON writes
    characters beyond U+FFFF) joined into the characters they encode."""
    if not _SURROGATE.search(text):
        return text
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if "\ufffd" in joined and "\ufffd" not in text:
        raise _Unread(TYPE, "must be valid Unicode (it holds an unpaired surrogate escape)")
    return joined


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/") + "==", validate=False)
    except (binascii.Error, ValueError):
        raise _Unread(TYPE, "must be base64 data") from None
