"""The rules a DNA document can break, and `Violation`: one broken rule with its place.

The field rules (required, range, pattern, ...) are in `helix.generator.validation`;
these are the document layer's: syntax, types, keys, sizes and names.
"""

from __future__ import annotations

from dataclasses import dataclass

import helix.v1.generator_pb2 as generator_pb2
from helix.common.errors import FieldViolation
from helix.common.validation import join

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

YAML_TAG = "tag:yaml.org,2002:"
# Values the walk visits at most (YAML aliases can make a small text expand enormously).
# The largest valid DNA holds about 264000 (256 choice genes of 1024 options).
MAX_NODES = 400_000


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
