"""Walking a YAML node tree against a message descriptor: the reading half of documents.py.

Pure and synchronous. `Walk` reads the mapping nodes PyYAML composed from a DNA document
into a proto message field by field, the way the proto3 JSON mapping reads JSON: proto
and lowerCamelCase names, enums by name or number, 64-bit integers as numbers or
strings, doubles as numbers or "NaN"/"Infinity"/"-Infinity", null as unset, plus YAML
merge keys. It records the line of every field path it sees, and every value it cannot
store becomes a `FieldViolation` ("unknown_field", "type", "range", "enum", "duplicate_key",
"oneof", "too_large") while the field is left unset. documents.py composes the text and
turns the walk into a `DnaCheck`.

PyYAML composes aliases as shared nodes, so a small text can stand for an enormous tree
(`genes: [*g, *g, …]`, `<<: [*a, *a, …]`). The walk is what pays for that expansion, so
it is bounded by work, not by text size: every value, every key, every key/value pair a
merge key brings in and every violation is counted against one budget (MAX_NODES), and
the walk stops with one "too_large" violation once it is spent. A merge source named twice
in one merge list is merged once. Violations past MAX_FOUND are counted, not described,
so a text with hundreds of thousands of unknown keys costs no more than its budget.
A violation quotes at most EXCERPT_CHARS of the text (a value, a key, a tag), and never
the whole document.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor
from google.protobuf.message import Message
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from helix.common.errors import FieldViolation
from helix.common.rules import DUPLICATE_KEY, ENUM, ONEOF, RANGE, TOO_LARGE, TYPE, UNKNOWN_FIELD
from helix.common.validation import index, join, show

YAML_TAG = "tag:yaml.org,2002:"
# Values, keys and merged key/value pairs the walk visits at most (YAML aliases can make
# a small text expand enormously). The largest valid DNA holds about 264000 values (256
# choice genes of 1024 options) and a few keys per gene.
MAX_NODES = 400_000
# Characters of the document's text a violation quotes at most (a value, a tag, a key).
EXCERPT_CHARS = 64
# Violations a walk describes; the rest are only counted (documents.py shows 100).
MAX_FOUND = 1_000
_VIOLATION_COST = 4  # units of the budget one violation costs

_MERGE_TAG = YAML_TAG + "merge"
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FD = descriptor.FieldDescriptor
_INT_BOUNDS = {
    _FD.CPPTYPE_INT32: (-(2**31), 2**31 - 1, "an int32"),
    _FD.CPPTYPE_INT64: (-(2**63), 2**63 - 1, "an int64"),
    _FD.CPPTYPE_UINT32: (0, 2**32 - 1, "a uint32"),
    _FD.CPPTYPE_UINT64: (0, 2**64 - 1, "a uint64"),
}


@functools.lru_cache(maxsize=64)
def _fields_by_name(message_type: descriptor.Descriptor) -> dict[str, descriptor.FieldDescriptor]:
    """A message's fields by proto name and by lowerCamelCase JSON name."""
    fields: dict[str, descriptor.FieldDescriptor] = {}
    for f in message_type.fields:
        fields[f.name] = f
        fields.setdefault(f.json_name, f)
    return fields


def excerpt(text: str) -> str:
    """At most EXCERPT_CHARS of a document's text, as a violation may quote it."""
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _node_kind(node: Node, *, quote: bool = True) -> str:
    """How a node reads to a person: "a list", "a string ("x")", "a boolean (yes)"… With
    `quote` False, without its value ("a string")."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag, value = node.tag, node.value
    kinds = {"str": "a string", "int": "a number", "float": "a number", "bool": "a boolean"}
    kinds |= {"timestamp": "a date", "binary": "binary data"}
    if tag == YAML_TAG + "null":
        return "null"
    if tag.startswith(YAML_TAG) and tag[len(YAML_TAG) :] in kinds:
        kind = kinds[tag[len(YAML_TAG) :]]
        if not quote:
            return kind
        return f"{kind} ({show(value) if tag == YAML_TAG + 'str' else excerpt(value)})"
    return f"a value tagged {excerpt(tag)}"


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
class Walk:
    """One walk of a YAML node tree against a message descriptor."""

    file: str
    is_json: bool
    found: list[FieldViolation] = field(default_factory=list)
    # Violations found beyond MAX_FOUND: counted, not described.
    dropped: int = 0
    lines: dict[str, int] = field(default_factory=dict)
    budget: int = MAX_NODES
    # The "too_large" violation once the budget is spent (kept apart from `found`).
    too_large: FieldViolation | None = None
    constructor: SafeConstructor = field(default_factory=SafeConstructor)

    @property
    def exhausted(self) -> bool:
        """Whether the budget ran out (the walk then stopped where it was)."""
        return self.too_large is not None

    def report(
        self, path: str, rule: str, description: str | Callable[[], str], node: Node
    ) -> None:
        """Record a violation; `description` may be a function, called only for the first
        MAX_FOUND violations (a suggestion for an unknown key is not free). A violation
        costs more of the budget than a value: it is more work."""
        if not self.spend(node, _VIOLATION_COST):
            return
        if len(self.found) >= MAX_FOUND:
            self.dropped += 1
            return
        text = description if isinstance(description, str) else description()
        self.found.append(FieldViolation(path, text, rule, self.file, node.start_mark.line + 1))

    def spend(self, node: Node, cost: int = 1) -> bool:
        """Count `cost` units of work at `node`; False (and, the first time, the
        "too_large" violation) once the budget is spent."""
        self.budget -= cost
        if self.budget >= 0:
            return True
        if self.too_large is None:
            text = f"the document expands to more than {MAX_NODES} values (YAML aliases?)"
            line = node.start_mark.line + 1
            self.too_large = FieldViolation("", text, TOO_LARGE, self.file, line)
        return False

    def message(self, node: Node, message: Message, path: str) -> None:
        """Read a mapping node into `message`, field by field."""
        if not self.spend(node):
            return
        self.lines.setdefault(path, node.start_mark.line + 1)
        schema = message.DESCRIPTOR
        if not isinstance(node, MappingNode):
            # The whole document quoted would be its text, not an excerpt: a file that is
            # one long string (a key, say) must not be echoed.
            got = _node_kind(node, quote=bool(path))
            expected = f"must be a mapping (a {schema.full_name}), got {got}"
            self.report(path, TYPE, expected, node)
            return
        fields = _fields_by_name(schema)
        seen: dict[str, int] = {}
        oneofs: dict[str, str] = {}
        for key_node, value_node in self.pairs(node, path, depth=0):
            if not self.spend(key_node):
                return
            key_text = str(key_node.value) if isinstance(key_node, ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            f = fields.get(key_text) if isinstance(key_node, ScalarNode) else None
            known = f.name if f is not None else key_text  # a field's two names are one key
            field_path = join(path, f.name if f is not None else excerpt(key_text))
            if known in seen:
                text = f"is given more than once (first on line {seen[known]})"
                self.report(field_path, DUPLICATE_KEY, text, key_node)
                continue
            seen[known] = line
            if f is None:
                hint = functools.partial(_unknown, key_text, schema)
                self.report(field_path, UNKNOWN_FIELD, hint, key_node)
                continue
            self.lines[field_path] = line
            if isinstance(value_node, ScalarNode) and value_node.tag == YAML_TAG + "null":
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
        """The key/value pairs of a mapping with YAML merge keys (`<<: *base`) applied.

        Every merge source and every pair a merge brings in is paid for from the budget, at
        every level, so the lists built here never outgrow it; a source listed twice is
        merged once. [] once the budget is spent."""
        explicit: list[tuple[Node, Node]] = []
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                explicit.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            seen: set[int] = set()
            for source in sources:
                if not self.spend(source):
                    return []
                if not isinstance(source, MappingNode):
                    text = f"a merge key (<<) takes mappings, got {_node_kind(source)}"
                    self.report(path, TYPE, text, source)
                elif depth < 16 and id(source) not in seen:
                    seen.add(id(source))  # `<<: [*a, *a]` is `<<: *a`
                    found = self.pairs(source, path, depth + 1)
                    if not self.spend(source, len(found)):
                        return []
                    merged += found
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
                if self.exhausted:
                    return
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
        if cpp == _FD.CPPTYPE_STRING and tag == YAML_TAG + "str" and not self.json_number(node):
            return _unicode(text) if f.type != _FD.TYPE_BYTES else _base64(text)
        if cpp == _FD.CPPTYPE_BOOL and tag == YAML_TAG + "bool":
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
        return self.is_json and node.style is None and node.tag == YAML_TAG + "str"

    def kind(self, node: Node) -> str:
        if isinstance(node, ScalarNode) and self.json_number(node):
            return f"a number ({excerpt(node.value)})"
        return _node_kind(node)

    def double(self, node: ScalarNode) -> float:
        tag, text = node.tag, node.value
        if tag == YAML_TAG + "float":
            try:
                return float(self.constructor.construct_yaml_float(node))
            except ValueError:
                raise _Unread(TYPE, f"must be a number, got {self.kind(node)}") from None
        if tag == YAML_TAG + "int":
            return float(self.integer_value(node))
        if tag == YAML_TAG + "str":  # proto JSON accepts numbers written as strings
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
        if tag == YAML_TAG + "int":
            value = self.integer_value(node)
        elif tag == YAML_TAG + "str" and len(text) <= 40 and _INTEGER_TEXT.fullmatch(text):
            value = int(text)  # proto JSON writes 64-bit integers as strings
        elif tag in (YAML_TAG + "float", YAML_TAG + "str"):
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
    if node.tag == YAML_TAG + "str":
        value = enum.values_by_name.get(node.value)
        if value is None:
            names = ", ".join(v.name for v in enum.values)
            raise _Unread(ENUM, f"must be one of {names} (got {show(node.value)})")
        return int(value.number)
    if node.tag == YAML_TAG + "int" and _INTEGER_TEXT.fullmatch(node.value):
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
