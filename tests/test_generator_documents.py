"""Reading DNA documents: every broken rule named by file, field path, rule and line."""

from __future__ import annotations

import json
import math
import re
import time
import tracemalloc
from pathlib import Path
from textwrap import dedent

import pytest
import yaml
from google.protobuf import json_format
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import helix.v1.dna_pb2 as dna_pb2
from helix.common.errors import FieldViolation, InvalidArgument
from helix.common.status import to_rpc_status
from helix.genome import documents, layout
from helix.genome._dna_yaml import MAX_FOUND, MAX_NODES, Walk
from helix.genome.documents import (
    MAX_VIOLATIONS,
    DnaCheck,
    check_dna_bytes,
    check_dna_message,
    dna_name_for,
    file_stem,
    from_dna_violation,
    parse_dna_text,
)
from helix.genome.validation import check_dna

from proto_strategies import messages

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
RULE = re.compile(r"[a-z][a-z0-9_]{0,62}")

GOOD = """\
name: dnas/good
description: every gene kind
genes:
  - {name: x, real: {low: -5.12, high: 5.12, size: 10}}
  - {name: layers, integer: {low: 1, high: 8}}
  - {name: optimizer, choice: {options: [adam, sgd, rmsprop]}}
  - {name: mask, bits: {size: 64}}
  - {name: route, permutation: {size: 52}}
  - {name: primer, sequence: {alphabet: ACGT, min_length: 18, max_length: 24}}
strategy:
  alpha: {population_size: 64, elitism: 2, tournament_size: 3,
          crossover_rate: 0.9, mutation_rate: 0.1}
"""


def found(text: str, filename: str = "dna.yaml") -> list[tuple[str, str, int]]:
    """(field_path, rule, line) of each violation, in order; every one names the file."""
    check = parse_dna_text(dedent(text), filename)
    assert all(v.file == filename for v in check.violations)
    assert all(RULE.fullmatch(v.reason) for v in check.violations)
    assert check.valid == (not check.violations)
    return [(v.field, v.reason, v.line) for v in check.violations]


def one(text: str, filename: str = "dna.yaml") -> FieldViolation:
    check = parse_dna_text(dedent(text), filename)
    assert len(check.violations) == 1, [str(v) for v in check.violations]
    return check.violations[0]


# --- valid documents ----------------------------------------------------------------------


def test_a_valid_document_is_normalised_and_fingerprinted() -> None:
    check = parse_dna_text(GOOD, "good.yaml")
    assert check.valid
    assert check.violations == ()
    assert check.dna == json_format.ParseDict(yaml.safe_load(GOOD), dna_pb2.Dna())
    assert check.normalised == layout.normalise(check.dna)
    assert check.fingerprint == layout.fingerprint(check.normalised)
    assert re.fullmatch("[0-9a-f]{64}", check.fingerprint)


def test_json_camel_case_names_enum_names_and_numbers_strings_and_null() -> None:
    document = {
        "genes": [
            {"name": "lr", "real": {"low": "1e-5", "high": 0.1, "logScale": True}},
            {"name": "n", "integer": {"low": "-9007199254740992", "high": 3.0}},
            {"name": "s", "sequence": {"alphabet": "AC", "maxLength": 4, "minLength": None}},
        ],
        "strategy": {
            "alpha": {
                "real": {"crossover": "NUMERIC_CROSSOVER_BLEND", "bounds": 1},
                "crossoverRate": "0.5",
                "mutationRate": 1e-2,
            }
        },
    }
    check = parse_dna_text(json.dumps(document, indent="\t"), "mixed.json")
    assert check.valid, [str(v) for v in check.violations]
    dna = check.dna
    assert (dna.genes[0].real.low, dna.genes[0].real.log_scale) == (1e-5, True)
    assert (dna.genes[1].integer.low, dna.genes[1].integer.high) == (-(2**53), 3)
    assert not dna.genes[2].sequence.min_length
    alpha = dna.strategy.alpha
    assert alpha.real.crossover == dna_pb2.NUMERIC_CROSSOVER_BLEND
    assert alpha.real.bounds == dna_pb2.BOUND_HANDLING_CLIP
    assert (alpha.crossover_rate, alpha.mutation_rate) == (0.5, 0.01)


def test_yaml_merge_keys_and_aliases_are_read_as_safe_load_reads_them() -> None:
    text = """\
    genes:
      - name: a
        real: &unit {low: 0, high: 1, size: 3}
      - name: b
        real: {<<: *unit, high: 2}
      - name: c
        real: *unit
    """
    check = parse_dna_text(dedent(text), "merge.yaml")
    assert check.valid, [str(v) for v in check.violations]
    assert check.dna == json_format.ParseDict(yaml.safe_load(dedent(text)), dna_pb2.Dna())
    assert check.dna.genes[1].real == dna_pb2.RealGene(low=0, high=2, size=3)


def test_a_byte_order_mark_and_crlf_line_ends_are_fine() -> None:
    data = b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode()
    assert check_dna_bytes(data, "good.yaml").valid


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    dna=messages(dna_pb2.Dna.DESCRIPTOR),
    proto_names=st.booleans(),
    as_yaml=st.booleans(),
)
def test_any_dna_printed_as_proto_json_or_yaml_reads_back_the_same(
    dna: dna_pb2.Dna, proto_names: bool, as_yaml: bool
) -> None:
    text = json_format.MessageToJson(dna, preserving_proto_field_name=proto_names)
    filename = "any.json"
    if as_yaml:
        document = json.loads(text)
        text, filename = yaml.safe_dump(document, allow_unicode=True), "any.yaml"
        # PyYAML's emitter does not round-trip a few strings (a lone "\x85"): skip those.
        assume(json.dumps(yaml.safe_load(text)) == json.dumps(document))
    check = parse_dna_text(text, filename)
    # Compared as JSON: NaNs of any bit pattern print alike.
    assert json_format.MessageToJson(check.dna) == json_format.MessageToJson(dna), [
        str(v) for v in check.violations
    ]
    # What the text breaks is what check_dna finds in the message (and the file name rule).
    assert {(v.field, v.reason) for v in check.violations} <= {
        (v.field, v.reason) for v in check_dna(dna, "")
    } | {("name", "name_matches_file")}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_valid_and_reads_as_safe_load_reads_it(path: Path) -> None:
    text = path.read_text()
    check = parse_dna_text(text, str(path))
    assert check.valid, [str(v) for v in check.violations]
    assert check.dna.name == f"dnas/{path.stem}"
    assert check.dna.description
    assert check.dna == json_format.ParseDict(yaml.safe_load(text), dna_pb2.Dna())


def test_the_examples_cover_every_gene_kind_and_both_strategies() -> None:
    kinds, strategies = set(), set()
    for path in EXAMPLES.glob("*.yaml"):
        dna = parse_dna_text(path.read_text(), path.name).dna
        kinds |= {gene.WhichOneof("kind") for gene in dna.genes}
        strategies.add(dna.strategy.WhichOneof("kind"))
    assert kinds == {"real", "integer", "choice", "bits", "permutation", "sequence"}
    assert strategies == {"alpha", "random"}


# --- syntax, shape and the document as a whole --------------------------------------------


def test_a_yaml_syntax_error_names_its_line() -> None:
    violation = one("name: dnas/x\ngenes:\n  - {name: a, bits: {size: 3}\n  - oops\n")
    assert (violation.field, violation.reason, violation.line) == ("", "syntax", 4)
    assert "expected ',' or '}'" in violation.description
    assert re.fullmatch(r"dna\.yaml:4: .*expected ',' or '}'.* \[syntax\]", str(violation))


def test_a_json_syntax_error_names_its_line() -> None:
    violation = one('{\n  "name": "dnas/x",\n  "genes": [}\n', "x.json")
    assert (violation.field, violation.reason, violation.line) == ("", "syntax", 3)
    assert "not valid JSON" in violation.description
    assert str(violation).startswith("x.json:3: not valid JSON")


@pytest.mark.parametrize(
    ("text", "line"),
    [("a: 1\n---\nb: 2\n", 2), ("a: b: c\n", 1), ("a: \x01\n", 1), ("x: [" * 3000, 1)],
)
def test_other_malformed_yaml_is_a_syntax_violation(text: str, line: int) -> None:
    assert found(text) == [("", "syntax", line)]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "null\n", "---\n"])
def test_an_empty_document_is_one_violation(text: str) -> None:
    violation = one(text, "empty.yaml")
    assert (violation.field, violation.reason, violation.line) == ("", "empty", 1)
    assert str(violation) == (
        "empty.yaml:1: the document is empty: a DNA is a mapping with at least genes [empty]"
    )
    assert one("", "empty.json").reason == "empty"


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- a\n- b\n", "got a list"),
        ("just text\n", "got a string"),
        ("42", "got a number"),
    ],
)
def test_a_document_that_is_not_a_mapping_is_a_type_violation(text: str, got: str) -> None:
    violation = one(text)
    assert (violation.field, violation.reason, violation.line) == ("", "type", 1)
    # Not quoted: a document that is one scalar (a key file, say) is not echoed back.
    assert violation.description == f"must be a mapping (a helix.v1.Dna), {got}"


def test_violations_quote_at_most_a_short_excerpt_of_the_text() -> None:
    secret = "3f" * 32  # 64 characters, as an HS256 key file holds
    assert secret not in str(one(secret + "\n").description)
    long = "x" * 5000
    text = f"? {long}\n: 1\ngenes:\n  - name: {long}\n    real: {{low: {'9' * 5000}, "
    text += f"high: !{long} 1}}\n  - {{name: y, integer: {{low: '{long}', high: 1}}}}\n"
    check = parse_dna_text(text, "long.yaml")
    assert check.violations
    for violation in check.violations:
        assert "x" * 70 not in f"{violation.field} {violation.description}", violation
        assert "9" * 70 not in violation.description, violation
    (unknown,) = (v for v in check.violations if v.reason == "unknown_field")
    assert unknown.field == "x" * 64 + "…"


def test_duplicate_keys_are_violations_in_yaml_and_json() -> None:
    text = """\
    genes:
      - name: a
        bits: {size: 3}
        bits: {size: 4}
    strategy:
      alpha: {population_size: 10, populationSize: 12}
    genes: []
    """
    assert found(text) == [
        ("genes[0].bits", "duplicate_key", 4),
        ("strategy.alpha.population_size", "duplicate_key", 6),
        ("genes", "duplicate_key", 7),
    ]
    check = parse_dna_text(dedent(text), "dna.yaml")
    assert check.dna.genes[0].bits.size == 3  # the first one counts
    assert "given more than once (first on line 3)" in check.violations[0].description
    json_text = '{"genes": [{"name": "a", "bits": {"size": 1}}],\n "genes": []}'
    assert found(json_text, "d.json") == [("genes", "duplicate_key", 2)]


def test_an_alias_bomb_is_stopped() -> None:
    # 8 kB of text whose aliases expand to 600000 values: the walk gives up at 400000.
    options = "o: &o [" + ", ".join(f"o{i}" for i in range(1000)) + "]\n"
    bomb = options + "g: &g {name: x, choice: {options: *o}}\n"
    bomb += "genes: [" + ", ".join(["*g"] * 600) + "]\n"
    check = parse_dna_text(bomb, "bomb.yaml")
    assert sorted((v.field, v.reason) for v in check.violations) == [
        ("", "too_large"),
        ("g", "unknown_field"),
        ("o", "unknown_field"),
    ]
    (too_large,) = (v for v in check.violations if v.reason == "too_large")
    assert "more than 400000 values (YAML aliases?)" in too_large.description


def _walk(text: str) -> tuple[Walk, float, int]:
    """Walk `text` (composed as documents.py composes it): the walk, seconds taken and the
    peak of memory allocated meanwhile."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        root = yaml.compose(text, Loader=documents._LOADER)
        assert root is not None
        walk = Walk("bomb.yaml", False)
        walk.message(root, dna_pb2.Dna(), "")
        return walk, time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _mapping(prefix: str, keys: int) -> str:
    return "{" + ", ".join(f"{prefix}{i}: {i}" for i in range(keys)) + "}"


# What these documents cost before their expansion was counted: 1.4 GB and 9 s for the
# first. The bounds below are generous (the walks take a few MB and well under a second).
_SECONDS, _BYTES = 5.0, 64 << 20


def test_a_merge_key_repeating_one_source_merges_it_once() -> None:
    # 1,000 keys merged 20,000 times in 90 kB: merged once, as `<<: *a` would be.
    text = (
        f"a: &a {_mapping('k', 1000)}\ngenes: []\nstrategy:\n  <<: [{', '.join(['*a'] * 20_000)}]\n"
    )
    walk, seconds, peak = _walk(text)
    assert MAX_NODES - walk.budget < 30_000  # each source and each merged pair, once
    assert (seconds < _SECONDS, peak < _BYTES) == (True, True), (seconds, peak)
    check = parse_dna_text(text, "bomb.yaml")
    assert check.total_violations == 1 + 1000  # "a", then strategy.k0…k999
    assert {v.reason for v in check.violations} == {"unknown_field"}


def test_nested_merge_keys_spend_the_budget_on_what_they_expand_to() -> None:
    # Each level merges two distinct mappings of the level below: 2^14 copies of 1,000 keys.
    text = f"l0: &l0 {_mapping('k', 1000)}\nl0b: &l0b {_mapping('j', 1000)}\n"
    for depth in range(1, 15):
        text += f"l{depth}: &l{depth} {{<<: [*l{depth - 1}, *l{depth - 1}b]}}\n"
        text += f"l{depth}b: &l{depth}b {{<<: [*l{depth - 1}b, *l{depth - 1}], x: 1}}\n"
    text += "strategy: {<<: *l14}\n"
    walk, seconds, peak = _walk(text)
    assert walk.exhausted
    assert (seconds < _SECONDS, peak < _BYTES) == (True, True), (seconds, peak)
    check = parse_dna_text(text, "bomb.yaml")
    assert (check.violations[0].reason, check.violations[0].field) == ("too_large", "")
    assert "more than 400000 values" in check.violations[0].description


def test_unknown_keys_repeated_by_aliases_are_counted_not_each_described() -> None:
    # 20,000 genes, each the same mapping of 1,000 unknown keys: 20 million violations.
    text = f"g: &g {_mapping('k', 1000)}\ngenes: [{', '.join(['*g'] * 20_000)}]\n"
    walk, seconds, peak = _walk(text)
    assert walk.exhausted
    assert len(walk.found) <= MAX_FOUND
    assert (seconds < _SECONDS, peak < _BYTES) == (True, True), (seconds, peak)
    check = parse_dna_text(text, "bomb.yaml")
    assert check.violations[0].reason == "too_large"
    assert len(check.violations) == MAX_VIOLATIONS
    assert check.total_violations < MAX_NODES


def test_the_violations_are_capped_at_100_in_line_order() -> None:
    genes = "".join(f"  - {{name: g{i}, bits: {{size: 0}}}}\n" for i in range(150))
    check = parse_dna_text("genes:\n" + genes, "many.yaml")
    assert check.total_violations == 150
    assert len(check.violations) == MAX_VIOLATIONS
    assert [v.line for v in check.violations] == list(range(2, 102))


# --- fields -------------------------------------------------------------------------------


def test_unknown_fields_at_the_top_and_nested_name_the_closest_field() -> None:
    text = """\
    genes:
      - name: x
        real: {low: 0, hihg: 1}
    colour: red
    """
    assert found(text) == [
        ("genes[0].real.hihg", "unknown_field", 3),
        ("colour", "unknown_field", 4),
    ]
    check = parse_dna_text(dedent(text), "dna.yaml")
    assert "is not a field of helix.v1.RealGene; did you mean high?" in str(check.violations[0])
    assert "known fields: name, description, genes, strategy" in str(check.violations[1])


def test_wrong_types_are_named_with_what_was_found() -> None:
    text = """\
    name: 5
    genes:
      - name: x
        real: {low: abc, high: 1}
      - name: y
        real: [1, 2]
      - name: z
        choice: {options: [yes, "no", 3]}
      - name: w
        bits: {size: [8]}
    strategy: alpha
    """
    assert found(text) == [
        ("name", "type", 1),
        ("genes[0].real.low", "type", 4),
        ("genes[1].real", "type", 6),
        ("genes[2].choice.options[0]", "type", 8),
        ("genes[2].choice.options[2]", "type", 8),
        ("genes[3].bits.size", "type", 10),
        ("strategy", "type", 11),
    ]
    descriptions = [v.description for v in parse_dna_text(dedent(text), "d.yaml").violations]
    assert descriptions == [
        "must be a string, got a number (5) (quote it to make it a string)",
        'must be a number, got a string ("abc")',
        "must be a mapping (a helix.v1.RealGene), got a list",
        "must be a string, got a boolean (yes) (quote it to make it a string)",
        "must be a string, got a number (3) (quote it to make it a string)",
        "must be an integer, got a list",
        'must be a mapping (a helix.v1.Strategy), got a string ("alpha")',
    ]


def test_a_field_that_could_not_be_read_is_not_also_checked() -> None:
    # low is unset after its type error; "low <= high" or "must set a kind" would mislead.
    text = "genes:\n  - {name: x, real: {low: abc, high: -1}}\n  - {name: y, real: 5}\n"
    assert found(text) == [("genes[0].real.low", "type", 2), ("genes[1].real", "type", 3)]


def test_numbers_out_of_their_type_range_and_unknown_enum_names() -> None:
    text = """\
    genes:
      - {name: p, permutation: {size: -1}}
      - {name: b, bits: {size: 4294967296}}
    strategy:
      alpha: {real: {bounds: CLIP, mutation: 7}}
    """
    assert found(text) == [
        ("genes[0].permutation.size", "range", 2),
        ("genes[1].bits.size", "range", 3),
        ("strategy.alpha.real.bounds", "enum", 5),
        ("strategy.alpha.real.mutation", "enum", 5),
    ]


def test_an_empty_gene_name_is_required() -> None:
    assert found("genes:\n  - name: ''\n    bits: {size: 1}\n") == [
        ("genes[0].name", "required", 2)
    ]
    assert found("genes:\n  - bits: {size: 1}\n") == [("genes[0].name", "required", 2)]


def test_gene_names_must_be_unique() -> None:
    text = "genes:\n  - {name: x, bits: {size: 1}}\n  - {name: y, bits: {size: 1}}\n"
    text += "  - name: x\n    bits: {size: 2}\n"
    violation = one(text)
    assert (violation.field, violation.reason, violation.line) == (
        "genes[2].name",
        "unique_gene_name",
        4,
    )
    assert "same as genes[0].name" in violation.description


def test_low_must_not_exceed_high() -> None:
    text = "genes:\n  - name: x\n    real:\n      high: 1\n      low: 2\n"
    text += "  - name: n\n    integer: {low: 3, high: -3}\n"
    assert found(text) == [
        ("genes[0].real.low", "low_le_high", 5),
        ("genes[1].integer.low", "low_le_high", 7),
    ]


def test_log_scale_needs_a_positive_low_and_bounds_must_be_finite() -> None:
    text = "genes:\n  - {name: x, real: {low: 0, high: 1, log_scale: true}}\n"
    text += "  - {name: y, real: {low: .nan, high: Infinity}}\n"
    assert found(text) == [
        ("genes[0].real.low", "log_scale_positive", 2),
        ("genes[1].real.low", "finite", 3),
        ("genes[1].real.high", "finite", 3),
    ]


def test_choice_options_must_be_given_distinct_and_short() -> None:
    text = "genes:\n  - {name: a, choice: {options: []}}\n  - {name: b, choice: {}}\n"
    text += f"  - name: c\n    choice:\n      options: [p, q, p, '', {'o' * 129}]\n"
    assert found(text) == [
        ("genes[0].choice.options", "required", 2),
        ("genes[1].choice.options", "required", 3),
        ("genes[2].choice.options[2]", "unique_option", 6),
        ("genes[2].choice.options[3]", "required", 6),
        ("genes[2].choice.options[4]", "too_long", 6),
    ]


def test_sizes_of_zero_where_not_allowed_and_over_the_caps() -> None:
    text = """\
    genes:
      - {name: b, bits: {size: 0}}
      - {name: p, permutation: {size: 1}}
      - {name: s, sequence: {alphabet: AC}}
      - {name: r, real: {low: 0, high: 1, size: 100001}}
      - {name: c, bits: {size: 1000001}}
    strategy:
      alpha: {population_size: 1}
    """
    assert found(text) == [
        ("genes[0].bits.size", "range", 2),
        ("genes[1].permutation.size", "range", 3),
        ("genes[2].sequence.max_length", "range", 4),
        ("genes[3].real.size", "range", 5),
        ("genes[4].bits.size", "range", 6),
        ("strategy.alpha.population_size", "range", 8),
    ]


def test_too_many_genes_and_too_large_a_genome() -> None:
    genes = "".join(f"  - {{name: g{i}, bits: {{size: 1}}}}\n" for i in range(257))
    assert found("genes:\n" + genes) == [("genes", "too_many", 1)]
    huge = "genes:\n" + "".join(
        f"  - {{name: g{i}, real: {{low: 0, high: 1, size: 100000}}}}\n" for i in range(2)
    )
    violation = one(huge)
    assert (violation.field, violation.reason, violation.line) == (
        "genes",
        "genome_too_large",
        1,
    )
    assert found("name: dnas/x\n", "x.yaml") == [("genes", "required", 1)]


def test_an_alphabet_must_not_repeat_a_symbol() -> None:
    violation = one("genes:\n  - name: s\n    sequence: {alphabet: ACGTA, max_length: 4}\n")
    assert (violation.field, violation.reason, violation.line) == (
        "genes[0].sequence.alphabet",
        "unique_symbol",
        3,
    )
    assert violation.description == 'must not repeat symbols ("A")'


def test_min_length_must_not_exceed_max_length() -> None:
    text = "genes:\n  - name: s\n    sequence:\n      alphabet: AC\n"
    text += "      max_length: 4\n      min_length: 5\n"
    assert found(text) == [("genes[0].sequence.min_length", "min_le_max_length", 6)]


def test_two_kinds_in_one_gene_break_the_oneof() -> None:
    text = "genes:\n  - name: x\n    real: {low: 0, high: 1}\n    integer: {low: 0, high: 1}\n"
    violation = one(text)
    assert (violation.field, violation.reason, violation.line) == (
        "genes[0].integer",
        "oneof",
        4,
    )
    assert violation.description.startswith("kind is already set by real: set exactly one of")
    assert parse_dna_text(text, "d.yaml").dna.genes[0].WhichOneof("kind") == "real"
    two = "genes: [{name: x, bits: {size: 1}}]\nstrategy: {alpha: {}, random: {}}\n"
    assert found(two) == [("strategy.random", "oneof", 2)]
    assert found("genes:\n  - name: x\n") == [("genes[0]", "required", 2)]


# --- the file name ------------------------------------------------------------------------


def test_name_must_match_the_file_name() -> None:
    text = "genes: [{name: x, bits: {size: 1}}]\nname: dnas/other\n"
    violation = one(text, "lib/sphere.yaml")
    assert (violation.field, violation.reason, violation.line) == (
        "name",
        "name_matches_file",
        2,
    )
    assert str(violation) == (
        'lib/sphere.yaml:2: name: must equal "dnas/sphere" (the file name without its '
        'extension), got "dnas/other" [name_matches_file]'
    )
    assert parse_dna_text(text, "other.yml").valid
    assert parse_dna_text(text, "").valid  # inline: no file to match
    assert parse_dna_text(text.replace("name: dnas/other\n", ""), "Any Name.yaml").valid
    bad_stem = one(text, "Other.yaml")
    assert bad_stem.reason == "name_matches_file"
    assert "is not a DNA id" in bad_stem.description
    assert found("name: dnas/Bad\ngenes: [{name: x, bits: {size: 1}}]\n") == [
        ("name", "pattern", 1)  # and no name_matches_file on top
    ]


@pytest.mark.parametrize(
    ("filename", "stem", "name"),
    [
        ("sphere.yaml", "sphere", "dnas/sphere"),
        ("a/b/tsp-52.yml", "tsp-52", "dnas/tsp-52"),
        ("x.json", "x", "dnas/x"),
        ("x.tar.yaml", "x.tar", ""),
        ("Upper.yaml", "Upper", ""),
        (".yaml", ".yaml", ""),
        ("a" * 64 + ".yaml", "a" * 64, ""),
    ],
)
def test_file_stems_and_names(filename: str, stem: str, name: str) -> None:
    assert (file_stem(filename), dna_name_for(filename)) == (stem, name)


# --- bytes and messages -------------------------------------------------------------------


def test_bytes_that_are_too_many_or_not_utf8() -> None:
    too_large = check_dna_bytes(b"a" * 11, "big.yaml", max_bytes=10)
    assert [(v.reason, v.line) for v in too_large.violations] == [("file_too_large", 0)]
    assert str(too_large.violations[0]) == "big.yaml: the file is over 10 bytes [file_too_large]"
    latin = check_dna_bytes(b"genes:\n  - name: caf\xe9\n", "latin.yaml")
    assert [(v.reason, v.line) for v in latin.violations] == [("encoding", 2)]


def test_a_message_is_checked_with_its_unknown_fields_and_without_lines() -> None:
    dna = parse_dna_text(GOOD, "good.yaml").dna
    assert check_dna_message(dna).valid
    broken = dna_pb2.Dna.FromString(dna.SerializeToString() + b"\xf8\x06\x01")
    broken.genes[0].real.low = 10
    check = check_dna_message(broken, "inline.yaml")
    assert [(v.field, v.reason, v.line) for v in check.violations] == [
        ("111", "unknown_field", 0),
        ("genes[0].real.low", "low_le_high", 0),
        ("name", "name_matches_file", 0),
    ]
    assert (
        str(check.violations[1]) == "inline.yaml: genes[0].real.low: must be <= high [low_le_high]"
    )


def test_violations_convert_to_protos_and_request_violations() -> None:
    check: DnaCheck = parse_dna_text("genes:\n  - {name: x, real: {low: 2, high: 1}}\n", "x.yaml")
    (proto,) = check.violation_protos()
    assert (proto.file, proto.field_path, proto.rule, proto.line) == (
        "x.yaml",
        "genes[0].real.low",
        "low_le_high",
        2,
    )
    assert from_dna_violation(proto) == check.violations[0]
    (detail,) = to_rpc_status(InvalidArgument.from_violations(check.violations)).details[1:]
    bad = error_details_pb2.BadRequest()
    detail.Unpack(bad)
    assert [(v.field, v.description, v.reason) for v in bad.field_violations] == [
        ("genes[0].real.low", "x.yaml:2: must be <= high", "low_le_high")
    ]
    inline = check_dna_message(check.dna).violations[0].under("dna")
    assert (inline.field, inline.description) == ("dna.genes[0].real.low", "must be <= high")


def test_every_check_dna_violation_has_a_rule_code() -> None:
    dna = json_format.ParseDict(
        {
            "name": "dnas/Bad",
            "description": "d" * 4097,
            "genes": [
                {"name": "x", "real": {"low": 5, "high": -1, "size": 100_001}},
                {"name": "x", "real": {"low": -1e308, "high": 1e308, "log_scale": True}},
                {"name": "Bad", "integer": {"low": str(2**53 + 1), "high": 0}},
                {"name": "c", "choice": {"options": ["a", "a", "", "o" * 129]}},
                {"name": "b", "bits": {"size": 0}},
                {"name": "s", "sequence": {"alphabet": "ACCA", "min_length": 5, "max_length": 4}},
                {"name": "k"},
            ],
            "strategy": {
                "alpha": {
                    "population_size": 1,
                    "elitism": 1,
                    "tournament_size": 2,
                    "mutation_rate": -0.1,
                    "real": {"gaussian_sigma": 0, "bounds": 7},
                    "integer": {"polynomial_eta": "NaN"},
                    "permutation": {"mutation": 3},
                }
            },
        },
        dna_pb2.Dna(),
    )
    violations = check_dna(dna, "")
    assert len(violations) > 20
    assert all(RULE.fullmatch(v.reason) for v in violations), violations
    assert {v.reason for v in violations} >= {
        "pattern",
        "too_long",
        "low_le_high",
        "range",
        "unique_gene_name",
        "finite",
        "log_scale_positive",
        "unique_option",
        "required",
        "unique_symbol",
        "min_le_max_length",
        "enum",
    }
    assert math.isnan(dna.strategy.alpha.integer.polynomial_eta)
