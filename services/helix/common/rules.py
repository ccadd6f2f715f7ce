"""The one list of rule codes: what `FieldViolation.reason` says a field broke.

Every violation Helix reports — a request field (`google.rpc.BadRequest.FieldViolation.reason`),
a DNA document (`DnaViolation.rule`), a named genome — carries one of these codes, stable
across versions, in lower_snake_case, so a client can branch on the rule while the
description stays free text for humans. docs/errors.md lists them;
tests/test_error_catalogue.py checks that every violation a server sends uses one.

Pure Python (no grpc, no protobuf).
"""

from __future__ import annotations

RULES: dict[str, str] = {}


def _rule(code: str, meaning: str) -> str:
    if code in RULES:
        raise ValueError(f"rule {code} is listed twice")
    RULES[code] = meaning
    return code


# --- any field ----------------------------------------------------------------------------

REQUIRED = _rule("required", "must be set: empty, unset or zero where a value is required")
TOO_LONG = _rule("too_long", "a string over its length cap")
PATTERN = _rule("pattern", "a string, name or id that does not match its pattern")
RANGE = _rule("range", "a number outside its bounds")
FINITE = _rule("finite", "NaN or an infinity where a finite number is needed")
ENUM = _rule(
    "enum", "a value that is not one of those allowed: an unknown enum number, a choice option"
)
TOO_MANY = _rule("too_many", "a repeated field, map or document over its cap of entries")
TOO_FEW = _rule("too_few", "a repeated field under its minimum number of entries")
UNKNOWN_FIELD = _rule("unknown_field", "a field this server's schema does not know")
ONEOF = _rule("oneof", "more than one field of a oneof, or the wrong one, is set")
DURATION = _rule("duration", "not a valid google.protobuf.Duration (range, matching signs)")
LABEL = _rule("label", "a label key or value that is not a Kubernetes-style label")
SELECTOR = _rule("selector", "a label selector that cannot be parsed")
ENDPOINT = _rule("endpoint", 'not a "host:port" gRPC endpoint')
FIELD_MASK = _rule("field_mask", "an update_mask path that cannot be updated")
WRONG_KIND = _rule("wrong_kind", "details that do not match the resource's kind")
UNDECODABLE = _rule("undecodable", "bytes that are not a valid message of the expected type")
MISMATCH = _rule("mismatch", "a value that must equal another one, and does not")
WRONG_ID = _rule("wrong_id", "a candidate id that is not the content hash of its genome")
INVALID_PAGE_TOKEN = _rule("invalid_page_token", "not a page token this listing issued")
REUSED = _rule("reused", "an idempotency key already used for a different request")
UNKNOWN = _rule("unknown", "names something (a DNA, an oracle) no live agent serves")

# --- documents (DNA files and texts) ------------------------------------------------------

SYNTAX = _rule("syntax", "the text is not YAML or JSON (with the line of the problem)")
EMPTY = _rule("empty", "the document holds nothing")
TYPE = _rule("type", "a value of the wrong type for its field")
DUPLICATE_KEY = _rule("duplicate_key", "a key given twice in one mapping")
TOO_LARGE = _rule(
    "too_large", "a document or message larger (expanded or serialized) than it may be"
)
FILE_TOO_LARGE = _rule("file_too_large", "the file is over the size limit")
ENCODING = _rule("encoding", "the file is not UTF-8 text")
UNREADABLE = _rule("unreadable", "the file cannot be read (permissions, gone, not a file)")
NAME_MATCHES_FILE = _rule("name_matches_file", "a document's name that differs from its file's")
DUPLICATE_NAME = _rule("duplicate_name", "two files define the same name")
FILE_NAME = _rule(
    "file_name", "a file a DNA library does not serve: not named {dna}.yaml, .yml or .json"
)
OUTSIDE_LIBRARY = _rule(
    "outside_library", "a DNA file that is a link to a file outside the library directory"
)
OUTSIDE_BASE = _rule(
    "outside_base", "a file path (.., absolute, or a link) that leads outside its base directory"
)
INVALID_INSTANCE = _rule(
    "invalid_instance", "an oracle instance file or inline instance that is malformed"
)
DNA_SHAPE = _rule("dna_shape", "a DNA whose genes do not have the shape an oracle accepts")
INVALID = _rule("invalid", "a rule code this version does not know (an older peer's)")

# --- DNA rules (dna.proto) ----------------------------------------------------------------

LOW_LE_HIGH = _rule("low_le_high", "a gene's low is above its high")
LOG_SCALE_POSITIVE = _rule("log_scale_positive", "a log-scale real gene's low is not > 0")
UNIQUE_GENE_NAME = _rule("unique_gene_name", "two genes of one DNA share a name")
UNIQUE_OPTION = _rule("unique_option", "a choice gene lists an option twice")
UNIQUE_SYMBOL = _rule("unique_symbol", "a sequence alphabet repeats a symbol")
MIN_LE_MAX_LENGTH = _rule("min_le_max_length", "a sequence gene's min_length is above max_length")
GENOME_TOO_LARGE = _rule("genome_too_large", "the DNA's worst-case genome is over 1 MiB")

# --- genomes against their DNA ------------------------------------------------------------

GENOME_SHAPE = _rule(
    "genome_shape", "a genome whose fields do not have the counts its DNA lays out"
)
NOT_A_PERMUTATION = _rule("not_a_permutation", "a permutation gene that repeats or misses values")
SYMBOL = _rule("symbol", "a sequence symbol that is not in the gene's alphabet")
PADDING = _rule("padding", "bits set past the end of a bits gene in its last byte")
UNKNOWN_GENE = _rule("unknown_gene", "a named genome key that is not a gene of the DNA")


def markdown_table() -> str:
    """The rule codes as the Markdown table of docs/errors.md."""
    rows = ["| rule | meaning |", "|---|---|"]
    rows += [f"| `{code}` | {meaning} |" for code, meaning in RULES.items()]
    return "\n".join(rows)
