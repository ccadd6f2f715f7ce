"""A YAML document as plain Python values, with the line of every value and a work budget.

Pure and synchronous. Configuration files that are not protobuf messages (the oracle
configuration) are read with this: `read_tree` composes the text with PyYAML's safe
loader and converts the node tree itself, so that

- every value's path (`oracles.tsp.params.instance`, `oracles.x.argv[2]`) has its 1-based
  line, for violations that name file, field, rule and line as DNA files do;
- the conversion is bounded by work, not by text size: every value, key and merged
  key/value pair costs one unit of `max_nodes`, so alias and merge-key bombs stop with one
  `too_large` violation in milliseconds (see _dna_yaml.py for the same rule on DNAs);
- a mapping merged twice into one mapping counts once, a duplicate key is a violation,
  keys must be strings, nesting is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from helix.common import rules
from helix.common.errors import FieldViolation
from helix.common.validation import index, join
from helix.genome.documents import _LOADER, _yaml_problem

MAX_NODES = 100_000
MAX_DEPTH = 32
MAX_FOUND = 100
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Spent(Exception):
    """The work budget is spent: the walk stops."""


@dataclass
class Tree:
    """What `read_tree` found: the value (None if unreadable), lines, violations."""

    value: Any
    lines: dict[str, int] = field(default_factory=dict)
    violations: list[FieldViolation] = field(default_factory=list)

    def line(self, path: str) -> int:
        """The line of `path`, else of its nearest ancestor that has one (1 at worst)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.lines.get("", 1)


class _Walk:
    def __init__(self, filename: str, max_nodes: int) -> None:
        self.filename = filename
        self.left = max_nodes
        self.lines: dict[str, int] = {}
        self.found: list[FieldViolation] = []
        self.constructor = SafeConstructor()

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _Spent

    def report(self, path: str, node: Node, description: str, rule: str) -> None:
        if len(self.found) < MAX_FOUND:
            line = node.start_mark.line + 1
            self.found.append(FieldViolation(path, description, rule, self.filename, line))

    def value(self, node: Node, path: str, depth: int) -> Any:
        self.spend()
        self.lines.setdefault(path, node.start_mark.line + 1)
        if depth > MAX_DEPTH:
            self.report(path, node, f"nests deeper than {MAX_DEPTH} levels", rules.TOO_LARGE)
            return None
        if isinstance(node, ScalarNode):
            try:
                return self.constructor.construct_object(node, deep=False)
            except ConstructorError as exc:
                self.report(path, node, f"cannot be read: {exc.problem}", rules.TYPE)
                return None
        if isinstance(node, SequenceNode):
            return [
                self.value(item, index(path, i), depth + 1) for i, item in enumerate(node.value)
            ]
        if isinstance(node, MappingNode):
            return self.mapping(node, path, depth)
        self.report(path, node, "is not a value", rules.TYPE)  # pragma: no cover
        return None

    def mapping(self, node: MappingNode, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            self.spend()
            if key_node.tag == _MERGE_TAG:
                merged += self.merge_sources(value_node, path)
                continue
            key = self.key(key_node, path)
            if key is None:
                continue
            if key in out:
                self.report(join(path, key), key_node, "is given twice", rules.DUPLICATE_KEY)
                continue
            self.lines.setdefault(join(path, key), key_node.start_mark.line + 1)
            out[key] = self.value(value_node, join(path, key), depth + 1)
        for key_node, value_node in merged:  # explicit keys win over merged ones
            self.spend()
            key = self.key(key_node, path)
            if key is not None and key not in out:
                out[key] = self.value(value_node, join(path, key), depth + 1)
        return out

    def merge_sources(self, node: Node, path: str) -> list[tuple[Node, Node]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        pairs: list[tuple[Node, Node]] = []
        seen: set[int] = set()
        for source in sources:
            self.spend()
            if not isinstance(source, MappingNode):
                self.report(path, source, "a merge key (<<) takes mappings only", rules.TYPE)
                continue
            if id(source) in seen:
                continue
            seen.add(id(source))
            for pair in source.value:
                self.spend()
                pairs.append(pair)
        return pairs

    def key(self, node: Node, path: str) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:str":
            return str(node.value)
        self.report(path, node, "keys must be strings", rules.TYPE)
        return None


def read_tree(text: str, filename: str, *, max_nodes: int = MAX_NODES) -> Tree:
    """The YAML (or JSON) document `text` as Python values; never raises on any input."""

    def whole(description: str, rule: str, line: int = 1) -> Tree:
        return Tree(None, {}, [FieldViolation("", description, rule, filename, line)])

    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        description, line = _yaml_problem(exc, text)
        return whole(description, rules.SYNTAX, line)
    except RecursionError:
        return whole("the document nests too deeply", rules.SYNTAX)
    except UnicodeError:
        return whole("the text is not valid Unicode", rules.SYNTAX)
    if root is None:
        return whole("the document is empty", rules.EMPTY)
    walk = _Walk(filename, max_nodes)
    try:
        value = walk.value(root, "", 0)
    except _Spent:
        description = (
            f"the document expands to more than {max_nodes} values (YAML aliases and merge "
            "keys count each time they are used)"
        )
        return Tree(
            None, walk.lines, [FieldViolation("", description, rules.TOO_LARGE, filename, 1)]
        )
    except RecursionError:
        return whole("the document nests too deeply", rules.SYNTAX)
    return Tree(value, walk.lines, walk.found)
