"""read_candidates (genome/batches.py) against the message path it replaces: for valid and
broken batches of every gene kind, it gives the ids and population the message path gives,
or the same violations in the same order. Also the fast paths it takes (records of one
length, genomes placed from the first row, strided gathers) against the general ones."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_generator_codec import BAD_GENOMES, EXAMPLE, EXAMPLE_GENOME

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
from helix.common.errors import FieldViolation, InvalidArgument
from helix.common.validation import check_no_unknown_fields, index
from helix.generator import strategies
from helix.genome import codec, genome_checks
from helix.genome.batches import CandidateRecords, read_candidates
from helix.genome.documents import parse_dna_text
from helix.genome.genome_checks import GenomeScan, gather
from helix.genome.layout import Layout, Population, normalise
from helix.genome.validation import check_candidate

from genome_strategies import GENE_KINDS, GENE_NAMES, dnas, genome_message, populations

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
PATH = "batch.candidates"

Outcome = tuple[list[str], Population] | InvalidArgument


# --- the message path (what the oracle service does with parsed messages) -----------------


def message_path(message: oracle_pb2.VerifyBatch, layout: Layout, path: str = PATH) -> Outcome:
    """What the oracle service did with a parsed batch before read_candidates (service.py
    `_check_candidates` after `check_no_unknown_fields` of the request, then host.py's
    `decode_genomes`), less the count check that stays with the caller."""
    request: oracle_pb2.VerifyStreamRequest | oracle_pb2.VerifyRequest
    if path == PATH:
        request = oracle_pb2.VerifyStreamRequest(batch=message)
    else:
        request = oracle_pb2.VerifyRequest(candidates=message.candidates)
    found = check_no_unknown_fields(request)
    for i, candidate in enumerate(message.candidates):
        if candidate.id and len(candidate.id) == 32 and candidate.HasField("genome"):
            continue
        found += check_candidate(candidate, index(path, i), genome=False)
    if found:
        return InvalidArgument.from_violations(found)
    return outcome_of(
        lambda: (
            [c.id for c in message.candidates],
            genome_checks.decode_genomes(
                layout, [c.genome for c in message.candidates], lambda i: f"{path}[{i}].genome"
            ),
        )
    )


def outcome_of(call: Callable[[], tuple[list[str], Population]]) -> Outcome:
    try:
        return call()
    except InvalidArgument as error:
        return error


def violations(outcome: Outcome) -> tuple[FieldViolation, ...]:
    assert isinstance(outcome, InvalidArgument)
    return outcome.violations


def assert_same_outcome(got: Outcome, want: Outcome, layout: Layout) -> None:
    if isinstance(want, InvalidArgument):
        assert isinstance(got, InvalidArgument), "read_candidates accepted a bad batch"
        assert got.violations == want.violations
        assert str(got) == str(want)
        return
    assert not isinstance(got, InvalidArgument), f"read_candidates refused: {got}"
    assert got[0] == want[0]
    assert_same_population(got[1], want[1], layout)


def assert_same_population(got: Population, want: Population, layout: Layout) -> None:
    assert len(got) == len(want)
    assert codec.encode_genomes(layout, got) == codec.encode_genomes(layout, want)
    np.testing.assert_array_equal(got.reals, want.reals)
    assert not np.signbit(got.reals[got.reals == 0]).any()
    np.testing.assert_array_equal(got.integers, want.integers)
    np.testing.assert_array_equal(got.choices, want.choices)
    np.testing.assert_array_equal(got.bits, want.bits)
    for a, b in zip(got.permutations, want.permutations, strict=True):
        np.testing.assert_array_equal(a, b)
    for got_block, want_block in zip(got.sequences, want.sequences, strict=True):
        np.testing.assert_array_equal(got_block.symbols, want_block.symbols)
        np.testing.assert_array_equal(got_block.lengths, want_block.lengths)


def read(message: oracle_pb2.VerifyBatch, layout: Layout) -> Outcome:
    return outcome_of(lambda: read_candidates(message.SerializeToString(), 2, layout, PATH))


# --- batches ------------------------------------------------------------------------------


@st.composite
def dnas_of(draw: st.DrawFn, kind: str) -> dna_pb2.Dna:
    """DNAs of one to three genes of one kind."""
    names = draw(st.lists(GENE_NAMES, min_size=1, max_size=3, unique=True))
    dna = dna_pb2.Dna()
    for name in names:
        getattr(dna.genes.add(name=name), kind).CopyFrom(draw(GENE_KINDS[kind]))
    return dna


LAYOUTS = st.one_of(*(dnas_of(kind) for kind in sorted(GENE_KINDS)), dnas(max_genes=6)).map(
    lambda dna: Layout(normalise(dna))
)

# Bytes of fields that helix.v1.Genome / helix.v1.Candidate do not define, or define with
# another wire type (then they are unknown too).
UNKNOWN_FIELDS = st.sampled_from(
    [
        b"\x4a\x00",  # 9, length-delimited
        b"\x40\x07",  # 8, varint
        b"\xf8\x07\x01",  # 127, varint (a two-byte tag)
        b"\x09" + bytes(8),  # 1, fixed64: a known number with another wire type
        b"\x10\x01",  # 2, varint
        b"\x5b\x08\x01\x5c",  # 11, a group holding a field
        b"\x35" + bytes(4),  # 6, fixed32
    ]
)
GENOMES = st.builds(
    candidate_pb2.Genome,
    reals=st.lists(st.floats(), max_size=3),
    integers=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
    choices=st.lists(st.integers(0, 2**32 - 1), max_size=3),
    bits=st.binary(max_size=3),
    permutations=st.lists(st.integers(0, 300), max_size=3),
    sequence_lengths=st.lists(st.integers(0, 2**32 - 1), max_size=2),
    sequences=st.binary(max_size=200),
)


HEX = "0123456789abcdef"
BAD_IDS = st.one_of(
    st.text(HEX, min_size=31, max_size=31),
    st.text(HEX, min_size=33, max_size=40),
    st.text(HEX, min_size=32, max_size=32).map(str.upper).filter(lambda s: s != s.lower()),
    st.text(HEX + "g-_ ", min_size=32, max_size=32),
    st.just("é" * 32),  # 32 characters, 64 bytes
    st.just("é" * 16),  # 16 characters, 32 bytes
    st.just("\x00" * 32),
    st.text(min_size=1, max_size=40),
)


NUMERIC = ("reals", "integers", "choices", "permutations")
ODD_VALUES: dict[str, list[float]] = {
    "reals": [math.nan, math.inf, -math.inf, 1e308, -1e308, -0.0],
    "integers": [-(2**63), 2**63 - 1, 2**53 + 1, -1, 0],
    "choices": [2**32 - 1, 127, 128, 200, 5, 0, 1],
    "permutations": [0, 1, 2, 8, 127, 128, 200, 2**32 - 1],  # repeats, or past the size
}


def changes_of(genome: candidate_pb2.Genome) -> list[tuple[str, str]]:
    """The (change, field) pairs that can break this genome, those that reach the value
    checks first (Hypothesis favours the first of a sampled list)."""
    held = [field for field in NUMERIC if len(getattr(genome, field))]
    found = [("value", field) for field in held]
    if genome.sequences:
        found.append(("symbol", "sequences"))
    if genome.sequence_lengths:
        found.append(("length", "sequence_lengths"))
    found += [("bits", "bits"), *(("drop", field) for field in held)]
    return [*found, ("extra", "reals"), ("extra", "integers"), ("unknown", ""), ("nothing", "")]


def break_field(draw: st.DrawFn, genome: candidate_pb2.Genome, change: str, field: str) -> None:
    """A numeric value made odd, a value too many or too few, a symbol beyond its
    alphabet or a sequence length changed."""
    if change == "extra":
        getattr(genome, field).append(0)
        return
    values = getattr(genome, field)
    j = draw(st.integers(0, len(values) - 1))
    if change == "value":
        values[j] = draw(st.sampled_from(ODD_VALUES[field]))
    elif change == "drop":
        del values[j]
    elif change == "symbol":
        symbols = bytearray(values)
        symbols[j] = draw(st.sampled_from([6, 255]))
        genome.sequences = bytes(symbols)
    else:  # a sequence length, and (mostly) its symbols to match: then out of range
        length = draw(st.sampled_from([0, 1, 10, 12, 2**32 - 1]))
        at = sum(values[:j])
        if length < 100 and draw(st.integers(0, 3)):
            rest = genome.sequences[at + values[j] :]
            genome.sequences = genome.sequences[:at] + bytes(length) + rest
        values[j] = length


@st.composite
def broken_genome(draw: st.DrawFn, genome: candidate_pb2.Genome) -> candidate_pb2.Genome:
    """The genome with one thing wrong (or, at times, right after all)."""
    out = candidate_pb2.Genome()
    out.CopyFrom(genome)
    change, field = draw(st.sampled_from(changes_of(out)))
    if change == "unknown":
        out.MergeFromString(draw(UNKNOWN_FIELDS))
    elif change == "bits":
        last = out.bits[-1:] or b"\x00"
        options = [out.bits[:-1] + bytes([last[0] | 0x80]), out.bits + b"\x00", out.bits[:-1]]
        out.bits = draw(st.sampled_from(options))
    elif change != "nothing":
        break_field(draw, out, change, field)
    return out


CANDIDATE_CHANGES = ("id", "wrong id", "genome", "no genome", "unknown", "ok")


@st.composite
def candidates(
    draw: st.DrawFn, pop: Population, row: int, changes: tuple[str, ...]
) -> candidate_pb2.Candidate:
    """A candidate of a population's row, with one of `changes` made (none: valid)."""
    genome = genome_message(pop, row)
    candidate = candidate_pb2.Candidate(
        id=draw(st.sampled_from([codec.genome_id(genome), ""])),
        genome=genome,
        generation=draw(st.sampled_from([0, 0, 1, 127, 128, 2**32 - 1])),
        parent_ids=draw(st.lists(st.sampled_from([codec.genome_id(genome), "p", ""]), max_size=6)),
    )
    if not changes:
        return candidate
    change = draw(st.sampled_from(changes))
    if change == "id":
        candidate.id = draw(BAD_IDS)
    elif change == "wrong id":
        candidate.id = draw(st.text(HEX, min_size=32, max_size=32))  # the caller's to check
    elif change == "genome":
        for _ in range(draw(st.integers(1, 3))):
            candidate.genome.CopyFrom(draw(broken_genome(candidate.genome)))
    elif change == "no genome":
        candidate.ClearField("genome")
    elif change == "unknown":
        extended = candidate.SerializeToString() + draw(UNKNOWN_FIELDS)
        candidate = candidate_pb2.Candidate.FromString(extended)
    return candidate


@st.composite
def batches(
    draw: st.DrawFn, changes: tuple[str, ...] = ()
) -> tuple[Layout, oracle_pb2.VerifyBatch]:
    """A layout and a VerifyBatch of its candidates: valid ones, or some with one of
    `changes` made."""
    layout = draw(LAYOUTS)
    pop = draw(populations(layout, min_rows=1, max_rows=6))
    rows = list(range(len(pop)))
    if draw(st.booleans()):  # repeats: records alike (the regular path) if nothing differs
        rows = [rows[0]] * draw(st.integers(1, 12)) + rows[1:]
    batch = oracle_pb2.VerifyBatch(batch_id=draw(st.integers(1, 2**64 - 1)))
    for row in rows:
        bad = draw(st.integers(0, 2)) == 0
        batch.candidates.append(draw(candidates(pop, row, changes if bad else ())))
    return layout, batch


# --- read_candidates against the message path ---------------------------------------------


@PROPERTY
@given(batches())
def test_valid_batches_read_as_the_message_path_reads_them(
    case: tuple[Layout, oracle_pb2.VerifyBatch],
) -> None:
    layout, batch = case
    want = message_path(batch, layout)
    assert not isinstance(want, InvalidArgument)
    assert_same_outcome(read(batch, layout), want, layout)


@PROPERTY
@given(batches(CANDIDATE_CHANGES))
def test_broken_batches_give_the_message_paths_violations(
    case: tuple[Layout, oracle_pb2.VerifyBatch],
) -> None:
    layout, batch = case
    assert_same_outcome(read(batch, layout), message_path(batch, layout), layout)


@PROPERTY
@given(batches(("genome", "genome", "genome", "wrong id")))
def test_genomes_that_do_not_fit_give_the_message_paths_violations(
    case: tuple[Layout, oracle_pb2.VerifyBatch],
) -> None:
    """Only genome problems (most then unknown fields aside) reach the decoding checks."""
    layout, batch = case
    assert_same_outcome(read(batch, layout), message_path(batch, layout), layout)


@PROPERTY
@given(batches(CANDIDATE_CHANGES), st.binary(max_size=3), UNKNOWN_FIELDS)
def test_verify_request_candidates_and_other_fields(
    case: tuple[Layout, oracle_pb2.VerifyBatch], oracle: bytes, unknown: bytes
) -> None:
    """VerifyRequest.candidates (field 3, after the oracle and DNA, before the timeout);
    the message's own fields, known or not, are skipped."""
    layout, batch = case
    request = oracle_pb2.VerifyRequest(
        oracle=f"oracles/{oracle.hex()}", dna=layout.dna, candidates=batch.candidates
    )
    request.timeout.seconds = 3
    request.MergeFromString(unknown)
    data = request.SerializeToString()
    got = outcome_of(lambda: read_candidates(data, 3, layout, "candidates"))
    want = message_path(batch, layout, "candidates")
    assert_same_outcome(got, want, layout)


@pytest.mark.parametrize(("genome", "paths"), BAD_GENOMES)
def test_each_genome_problem_as_the_message_path_names_it(
    genome: candidate_pb2.Genome, paths: list[str]
) -> None:
    """test_generator_codec's genomes that do not fit its worked example, one per check,
    in a batch with good ones."""
    batch = oracle_pb2.VerifyBatch(batch_id=1)
    for row, each in enumerate([EXAMPLE_GENOME, genome, EXAMPLE_GENOME]):
        batch.candidates.add(id=codec.genome_id(each) if row else "", genome=each)
    got = violations(read(batch, EXAMPLE))
    assert got == violations(message_path(batch, EXAMPLE))
    expected = [path.replace("g[1]", f"{PATH}[1].genome") for path in paths]
    assert [v.field for v in got] in (expected, [f"{PATH}[1].genome.9"])


def test_ids_are_those_given() -> None:
    layout, pop = example_population("sphere", 3, seed=5)
    genomes = [genome_message(pop, row) for row in range(3)]
    batch = oracle_pb2.VerifyBatch(batch_id=1)
    for given_id, genome in zip(["", "ab" * 16, codec.genome_id(genomes[2])], genomes, strict=True):
        batch.candidates.add(id=given_id, genome=genome)
    ids, got = read_candidates(batch.SerializeToString(), 2, layout, PATH)
    assert ids == ["", "ab" * 16, codec.genome_id(genomes[2])]
    assert_same_population(got, pop, layout)


def test_no_candidates() -> None:
    layout = example_layout("sphere")
    ids, pop = read_candidates(
        oracle_pb2.VerifyBatch(batch_id=7).SerializeToString(), 2, layout, PATH
    )
    assert ids == []
    assert len(pop) == 0
    assert read_candidates(b"", 2, layout, PATH)[0] == []


def test_genome_violations_are_capped_and_the_others_are_not() -> None:
    layout, pop = example_population("sphere", 150, seed=2)
    batch = oracle_pb2.VerifyBatch(batch_id=1)
    for row in range(150):
        genome = genome_message(pop, row)
        genome.reals[0] = math.nan
        batch.candidates.add(genome=genome)
    got = violations(read(batch, layout))
    assert len(got) == genome_checks.MAX_VIOLATIONS
    assert got == violations(message_path(batch, layout))
    assert got[0].field == "batch.candidates[0].genome.reals[0]"
    for candidate in batch.candidates:
        candidate.id = "X" * 31
    got = violations(read(batch, layout))
    assert len(got) == 150
    assert got == violations(message_path(batch, layout))
    assert [v.reason for v in got[:1]] == ["pattern"]


def test_unknown_fields_come_first_then_ids_and_genomes() -> None:
    layout, pop = example_population("sphere", 3, seed=3)
    batch = oracle_pb2.VerifyBatch(batch_id=1)
    batch.candidates.add(id="bad")
    genome = genome_message(pop, 1)
    genome.MergeFromString(b"\x4a\x00")
    batch.candidates.add(genome=genome)
    extended = candidate_pb2.Candidate(genome=genome_message(pop, 2)).SerializeToString()
    batch.candidates.append(candidate_pb2.Candidate.FromString(extended + b"\x10\x01\x40\x07"))
    got = [(v.field, v.reason) for v in violations(read(batch, layout))]
    assert got == [
        ("batch.candidates[1].genome.9", "unknown_field"),
        ("batch.candidates[2].2", "unknown_field"),
        ("batch.candidates[2].8", "unknown_field"),
        ("batch.candidates[0].id", "pattern"),
        ("batch.candidates[0].genome", "required"),
    ]
    assert violations(read(batch, layout)) == violations(message_path(batch, layout))
    records = CandidateRecords.find(batch.SerializeToString(), 2)
    request = oracle_pb2.VerifyStreamRequest(batch=batch)
    assert records.unknown_fields(PATH) == check_no_unknown_fields(request)
    assert [v.field for v in records.candidate_violations(PATH)] == [f for f, _ in got[3:]]


def test_many_parent_ids_are_read_by_protobuf() -> None:
    """More parent ids than the NumPy walk reads: such rows are parsed, and are fine."""
    layout, pop = example_population("tsp", 4, seed=4)
    batch = oracle_pb2.VerifyBatch(batch_id=1)
    for row in range(4):
        batch.candidates.add(genome=genome_message(pop, row), parent_ids=["p"] * (row * 3))
    assert_same_outcome(read(batch, layout), message_path(batch, layout), layout)


def test_a_field_with_a_two_byte_tag() -> None:
    """Records of field 20 (a two-byte tag) read as those of field 2."""
    layout, pop = example_population("hyperparameters", 50, seed=6)
    encodings = codec.encode_genomes(layout, pop)
    records = codec.encode_candidates(
        encodings, codec.candidate_ids(encodings), generation=1, parent_ids=[[]] * 50
    )
    frame = b"".join(codec.varint(20 << 3 | 2) + codec.varint(len(r)) + r for r in records)
    ids, got = read_candidates(b"\x08\x01" + frame + b"\xa8\x01\x05", 20, layout, "c")
    assert ids == codec.candidate_ids(encodings)
    assert_same_population(got, pop, layout)


def test_data_that_is_not_a_message_is_refused() -> None:
    layout = example_layout("sphere")
    with pytest.raises(ValueError, match="not a serialised message"):
        read_candidates(b"\x12\x05\x0a\x00", 2, layout, PATH)
    apart = b"\x12\x00" + b"\x12\x02\x0a\x00" + b"\x08\x01" + b"\x12\x00"  # not together
    with pytest.raises(ValueError, match="not together"):
        read_candidates(apart, 2, layout, PATH)


# --- the example DNAs, 1,000 candidates each ----------------------------------------------


def example_layout(name: str) -> Layout:
    check = parse_dna_text((EXAMPLES / f"{name}.yaml").read_text(), f"{name}.yaml")
    assert check.normalised is not None
    return Layout(check.normalised)


def example_population(name: str, n: int, seed: int) -> tuple[Layout, Population]:
    layout = example_layout(name)
    chunks = strategies.generate(layout, None, n, seed, 0)
    return layout, Population.concat([chunk.children for chunk in chunks])


@pytest.mark.parametrize("name", sorted(path.stem for path in EXAMPLES.glob("*.yaml")))
def test_a_thousand_candidates_of_each_example_dna_decode_exactly(name: str) -> None:
    layout, pop = example_population(name, 1000, seed=11)
    encodings = codec.encode_genomes(layout, pop)
    ids = codec.candidate_ids(encodings)
    lineage = [[ids[(i + 1) % 1000], ids[(i + 7) % 1000]][: i % 3] for i in range(1000)]
    batch = oracle_pb2.VerifyBatch(
        batch_id=1,
        candidates=codec.assemble_candidates(encodings, ids, generation=4, parent_ids=lineage),
    )
    got_ids, got = read_candidates(batch.SerializeToString(), 2, layout, PATH)
    assert got_ids == ids
    assert_same_population(got, pop, layout)
    assert codec.candidate_ids(codec.encode_genomes(layout, got)) == ids
    assert_same_outcome((got_ids, got), message_path(batch, layout), layout)
    plain = oracle_pb2.VerifyBatch(batch_id=2)  # ids and genomes only: records alike
    for candidate in batch.candidates:
        plain.candidates.add(id=candidate.id, genome=candidate.genome)
    assert_same_outcome(read(plain, layout), (ids, pop), layout)


# --- fast paths against the general ones --------------------------------------------------


def scan_arrays(scan: GenomeScan, rows: int) -> tuple[list[int], ...]:
    return (
        scan.start[:rows].tolist(),
        scan.size[:rows].tolist(),
        scan.foreign[:rows].tolist(),
    )


@PROPERTY
@given(GENOMES, st.integers(1, 5), GENOMES, st.sampled_from([b"", b"\x4a\x00", b"\x08\x01"]))
def test_genomes_placed_from_the_first_row_as_walked(
    genome: candidate_pb2.Genome, repeats: int, other: candidate_pb2.Genome, unknown: bytes
) -> None:
    """Rows alike (placed from the first) scan as they do when another row makes the scan
    walk every row."""
    genome.MergeFromString(unknown)
    alike = GenomeScan.of_genomes([genome] * repeats)
    walked = GenomeScan.of_genomes([genome] * repeats + [other, candidate_pb2.Genome(reals=[1])])
    assert scan_arrays(alike, repeats) == scan_arrays(walked, repeats)
    assert alike.foreign.any() == bool(unknown)


def relative(scan: GenomeScan, starts: list[int]) -> list[list[list[int]]]:
    """Each row's field offsets from its start (0 where absent), sizes and foreign flag."""
    at = np.where(scan.size > 0, scan.start - np.array(starts, dtype=np.int64)[:, None], 0)
    return [at.tolist(), scan.size.tolist(), [[int(f)] for f in scan.foreign]]


def scan_rows(genomes: list[candidate_pb2.Genome]) -> list[list[list[int]]]:
    encodings = [g.SerializeToString() for g in genomes]
    starts = np.cumsum([0, *map(len, encodings)])[:-1].tolist()
    return relative(GenomeScan.of_genomes(genomes), starts)


@PROPERTY
@given(st.lists(GENOMES, max_size=5), st.data())
def test_a_scan_of_many_genomes_finds_what_scans_of_each_find(
    genomes: list[candidate_pb2.Genome], data: st.DataObject
) -> None:
    for genome in genomes:
        genome.MergeFromString(data.draw(st.sampled_from([b"", b"", b"\x4a\x00", b"\x10\x01"])))
    alone = [scan_rows([genome]) for genome in genomes]
    together = scan_rows(genomes)
    for k in range(3):
        assert together[k] == [row for one in alone for row in one[k]]


def reference_scan(row: bytes) -> tuple[list[int], list[int], bool]:
    """What GenomeScan finds in one row, from its definition: up to seven length-delimited
    fields of increasing numbers 1..7 that fit the row, anything else making it foreign.
    Field offsets are from the row's start (0 where absent)."""
    start, size = [0] * 8, [0] * 8
    pos = last = 0
    while pos < len(row):
        tag, length, body = row[pos], 0, pos + 1
        for shift in range(0, 70, 7):
            if body >= len(row):
                return start, size, True
            length |= (row[body] & 0x7F) << shift
            body += 1
            if row[body - 1] < 0x80:
                break
        field = tag >> 3
        if tag & 7 != 2 or not last < field <= 7 or body + length > len(row):
            return start, size, True
        start[field], size[field], last, pos = body, length, field, body + length
    return start, size, False


@st.composite
def raw_rows(draw: st.DrawFn) -> list[bytes]:
    """Rows of tag, size and body chunks, most rows sharing one sequence of tags (as
    genomes of one DNA do); bodies may be cut short and tags repeat or go backwards."""
    tags = st.sampled_from([0x0A, 0x12, 0x1A, 0x22, 0x3A, 0x08, 0x4A, 0x42, 0xA2])
    shared = draw(st.lists(tags, max_size=5))
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row = b""
        for tag in shared if draw(st.integers(0, 3)) else draw(st.lists(tags, max_size=5)):
            length = draw(st.sampled_from([0, 1, 2, 8, 130]))
            row += bytes([tag]) + codec.varint(length) + bytes(length)
        rows.append(row[: draw(st.integers(0, len(row)))] if draw(st.integers(0, 5)) == 0 else row)
    return rows


@PROPERTY
@given(raw_rows())
def test_a_scan_finds_the_fields_its_definition_finds(rows: list[bytes]) -> None:
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    ends = np.cumsum(lengths)
    buf = np.frombuffer(b"".join(rows), dtype=np.uint8)
    scan = GenomeScan.of_ranges(buf, ends - lengths, ends)
    found = relative(scan, (ends - lengths).tolist())
    for i, row in enumerate(rows):
        start, size, foreign = reference_scan(row)
        assert found[1][i] == size
        assert found[0][i] == [at if length else 0 for at, length in zip(start, size, strict=True)]
        assert found[2][i] == [int(foreign)]


def test_rows_of_one_length_with_other_fields() -> None:
    """Rows of the first row's length whose tags or sizes differ are walked."""
    genomes = [
        candidate_pb2.Genome(reals=[1.0]),  # 0a 08 + 8 bytes
        candidate_pb2.Genome(bits=bytes(8)),  # 22 08 + 8 bytes
        candidate_pb2.Genome(reals=[1.0]),
        candidate_pb2.Genome(choices=[1, 2], sequences=bytes(4)),  # 1a 02 01 02 3a 04 + 4
        candidate_pb2.Genome(reals=[2.0]),
    ]
    assert len({g.ByteSize() for g in genomes}) == 1
    assert scan_rows(genomes)[:2] == [
        [row for g in genomes for row in scan_rows([g])[k]] for k in range(2)
    ]
    layout, pop = example_population("sphere", 1, seed=1)
    genome = genome_message(pop, 0)
    plain = candidate_pb2.Candidate(id="a" * 32, genome=genome)
    lineage = candidate_pb2.Candidate(genome=genome, parent_ids=["b" * 32])
    batch = oracle_pb2.VerifyBatch(batch_id=1, candidates=[plain, lineage, plain])
    assert len({c.ByteSize() for c in batch.candidates}) == 1
    ids, _ = read_candidates(batch.SerializeToString(), 2, layout, PATH)
    assert ids == ["a" * 32, "", "a" * 32]
    assert_same_outcome(read(batch, layout), message_path(batch, layout), layout)
    with_generation = candidate_pb2.Candidate(id="a" * 32, genome=genome, generation=1)
    other_generation = candidate_pb2.Candidate(id="a" * 32, genome=genome, generation=2)
    batch = oracle_pb2.VerifyBatch(batch_id=1, candidates=[with_generation, other_generation])
    assert_same_outcome(read(batch, layout), message_path(batch, layout), layout)


@PROPERTY
@given(
    st.lists(st.integers(0, 50), min_size=0, max_size=6, unique=True),
    st.integers(0, 5),
    st.integers(1, 9),
)
def test_gather_strided_or_not(starts: list[int], width: int, step: int) -> None:
    buf = np.arange(80, dtype=np.uint8)
    for rows in (np.array(sorted(starts), dtype=np.int64), np.arange(len(starts)) * step):
        want = np.array([buf[s : s + width] for s in rows.tolist()], dtype=np.uint8)
        assert gather(buf, rows, width).tolist() == want.reshape(len(rows), width).tolist()


@PROPERTY
@given(batches(CANDIDATE_CHANGES))
def test_records_alike_read_as_walked(case: tuple[Layout, oracle_pb2.VerifyBatch]) -> None:
    """The fields of records of one length (read from the first record) equal those the
    row-by-row walk finds when a last, different record makes it walk them all."""
    _, batch = case
    first = batch.candidates[0]
    alike = oracle_pb2.VerifyBatch(batch_id=1, candidates=[first] * 3)
    odd = candidate_pb2.Candidate(id="x", parent_ids=["y"] * 7)
    walked = oracle_pb2.VerifyBatch(batch_id=1, candidates=[first] * 3 + [odd])
    a = CandidateRecords.find(alike.SerializeToString(), 2)
    w = CandidateRecords.find(walked.SerializeToString(), 2)
    assert len(a) == 3
    assert len(w) == 4
    for name in ("starts", "ends", "id_start", "id_size", "has_genome", "leftover"):
        assert getattr(a, name).tolist() == getattr(w, name)[:3].tolist(), name
    assert scan_arrays(a.genomes, 3) == scan_arrays(w.genomes, 3)
    assert a.ids() == w.ids()[:3]
    assert w.leftover.tolist() == [*a.leftover.tolist(), True]


def test_the_worked_example_in_a_batch() -> None:
    """candidate.proto's worked example, read from a batch with its id."""
    batch = oracle_pb2.VerifyBatch(batch_id=1)
    batch.candidates.add(id="00e8b319e29f65b5b4dd2afee149c8ac", genome=EXAMPLE_GENOME)
    ids, pop = read_candidates(batch.SerializeToString(), 2, EXAMPLE, PATH)
    assert ids == ["00e8b319e29f65b5b4dd2afee149c8ac"]
    assert pop.reals.tolist() == [[0.5, -1.0, 2.5]]
    assert pop.permutations[0].tolist() == [[2, 0, 1]]
    assert pop.sequences[0].lengths.tolist() == [7]
    assert pop.sequences[0].symbols[0, :7].tolist() == [2, 0, 3, 3, 0, 1, 0]
