"""Genomes on the wire (codec), their decoding checks (genome_checks), named JSON (named),
and GenerateResponse framing (codec), each against protobuf's own serialisation."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common.errors import InvalidArgument
from helix.generator.codec import encode_generate_response
from helix.genome import codec, genome_checks
from helix.genome.layout import Layout, Population, SequenceBlock, normalise
from helix.genome.named import from_named, to_named, to_named_rows
from helix.genome.validation import check_dna

from genome_strategies import (
    dnas,
    genome_message,
    layouts_and_populations,
    without_negative_zero,
)

T = TypeVar("T")
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The worked example of candidate.proto's Genome comment (bounds chosen to fit it).
EXAMPLE_DNA = json_format.ParseDict(
    {
        "genes": [
            {"name": "x", "real": {"low": -5, "high": 5, "size": 2}},
            {"name": "n", "integer": {"low": 0, "high": 10}},
            {"name": "opt", "choice": {"options": ["adam", "sgd", "rmsprop"]}},
            {"name": "m", "bits": {"size": 3}},
            {"name": "route", "permutation": {"size": 3}},
            {"name": "y", "real": {"low": 0, "high": 5}},
            {"name": "k", "bits": {"size": 6}},
            {"name": "primer", "sequence": {"alphabet": "ACGT", "min_length": 2, "max_length": 10}},
        ]
    },
    dna_pb2.Dna(),
)
EXAMPLE = Layout(normalise(EXAMPLE_DNA))
EXAMPLE_NAMED: dict[str, object] = {
    "x": [0.5, -1.0],
    "n": 7,
    "opt": "sgd",
    "m": [1, 0, 1],
    "route": [2, 0, 1],
    "y": 2.5,
    "k": [1, 1, 1, 1, 1, 1],
    "primer": "GATTACA",
}
EXAMPLE_HEX = (
    "0a18000000000000e03f000000000000f0bf000000000000044012010e1a01012202fd01"
    "2a030200013201073a0702000303000100"
)
EXAMPLE_ID = "00e8b319e29f65b5b4dd2afee149c8ac"
# The example's encoding followed by field 9 (varint 1), unknown to helix.v1.Genome.
EXTENDED = candidate_pb2.Genome.FromString(bytes.fromhex(EXAMPLE_HEX) + b"\x48\x01")
EXAMPLE_GENOME = candidate_pb2.Genome(
    reals=[0.5, -1.0, 2.5],
    integers=[7],
    choices=[1],
    bits=b"\xfd\x01",
    permutations=[2, 0, 1],
    sequence_lengths=[7],
    sequences=bytes([2, 0, 3, 3, 0, 1, 0]),
)


def path_of(i: int) -> str:
    return f"g[{i}]"


def violations(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in error.value.violations]


def outcome_of(call: Callable[[], T]) -> T | InvalidArgument:
    """The call's result, or the InvalidArgument it raised."""
    try:
        return call()
    except InvalidArgument as error:
        return error


def assert_same_population(layout: Layout, got: Population, want: Population) -> None:
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


# --- the worked example ---------------------------------------------------------------------


def example_population() -> Population:
    pop = EXAMPLE.empty(1)
    pop.reals[0] = [0.5, -1.0, 2.5]
    pop.integers[0] = [7]
    pop.choices[0] = [1]
    pop.bits[0] = [1, 0, 1, 1, 1, 1, 1, 1, 1]
    pop.permutations[0][0] = [2, 0, 1]
    pop.sequences[0].symbols[0, :7] = [2, 0, 3, 3, 0, 1, 0]
    pop.sequences[0].lengths[0] = 7
    return pop


def test_worked_example_bytes_and_id() -> None:
    pop = example_population()
    encodings = codec.encode_genomes(EXAMPLE, pop)
    assert encodings == [bytes.fromhex(EXAMPLE_HEX)]
    assert len(encodings[0]) == 53
    assert codec.candidate_ids(encodings) == [EXAMPLE_ID]
    assert codec.genome_id(EXAMPLE_GENOME) == EXAMPLE_ID
    assert EXAMPLE_GENOME.SerializeToString(deterministic=True) == encodings[0]


@given(st.lists(st.binary(max_size=300), max_size=40))
def test_id_text_is_the_ids_joined(encodings: list[bytes]) -> None:
    ids = [hashlib.sha256(encoding).hexdigest()[:32] for encoding in encodings]
    text = codec.candidate_id_text(encodings)
    assert text == "".join(ids)
    assert codec.split_ids(text) == codec.candidate_ids(encodings) == ids


def test_worked_example_decodes() -> None:
    pop = genome_checks.decode_genomes(EXAMPLE, [EXAMPLE_GENOME], path_of)
    assert_same_population(EXAMPLE, pop, example_population())


def test_worked_example_named_form() -> None:
    pop = example_population()
    assert to_named(EXAMPLE, pop, 0) == EXAMPLE_NAMED
    assert list(to_named(EXAMPLE, pop, 0)) == list(EXAMPLE_NAMED)  # gene order
    assert from_named(EXAMPLE, EXAMPLE_NAMED) == EXAMPLE_GENOME


def test_worked_example_candidates() -> None:
    pop = genome_checks.decode_genomes(EXAMPLE, [EXAMPLE_GENOME] * 3, path_of)
    parents = [[], ["a" * 32], ["b" * 32, "c" * 32]]
    candidates = codec.to_candidates(EXAMPLE, pop, generation=300, parent_ids=parents)
    for candidate, lineage in zip(candidates, parents, strict=True):
        want = candidate_pb2.Candidate(
            id=EXAMPLE_ID, genome=EXAMPLE_GENOME, generation=300, parent_ids=lineage
        )
        assert candidate == want
        assert candidate.SerializeToString(deterministic=True) == want.SerializeToString(
            deterministic=True
        )
    first = codec.to_candidates(EXAMPLE, pop.take([0]), generation=0, parent_ids=[[]])[0]
    assert not first.generation
    assert first.HasField("genome")


def test_assemble_candidates_needs_one_entry_per_row() -> None:
    with pytest.raises(ValueError, match="one entry per candidate"):
        codec.assemble_candidates([b""], [EXAMPLE_ID], generation=1, parent_ids=[])


# --- properties over random DNAs and populations --------------------------------------------


@PROPERTY
@given(dnas())
def test_strategies_make_valid_dnas(dna: dna_pb2.Dna) -> None:
    assert check_dna(dna, "") == []


@PROPERTY
@given(layouts_and_populations())
def test_encoding_is_protobufs_deterministic_serialisation(case: tuple[Layout, Population]) -> None:
    layout, pop = case
    encodings = codec.encode_genomes(layout, pop)
    ids = codec.candidate_ids(encodings)
    assert len(encodings) == len(ids) == len(pop)
    for row, (encoding, candidate_id) in enumerate(zip(encodings, ids, strict=True)):
        message = genome_message(pop, row)
        canonical = without_negative_zero(message).SerializeToString(deterministic=True)
        assert encoding == canonical
        assert codec.canonical_encoding(message) == canonical
        assert codec.genome_id(message) == candidate_id
        assert len(candidate_id) == 32
        assert int(candidate_id, 16) >= 0


@PROPERTY
@given(layouts_and_populations())
def test_encoding_ignores_memory_layout(case: tuple[Layout, Population]) -> None:
    layout, pop = case
    fortran = Population(
        reals=np.asfortranarray(pop.reals),
        integers=np.asfortranarray(pop.integers),
        choices=np.asfortranarray(pop.choices),
        bits=np.asfortranarray(pop.bits),
        permutations=tuple(np.asfortranarray(p) for p in pop.permutations),
        sequences=tuple(
            SequenceBlock(np.asfortranarray(b.symbols), b.lengths) for b in pop.sequences
        ),
    )
    assert codec.encode_genomes(layout, fortran) == codec.encode_genomes(layout, pop)
    reversed_rows = pop.take(np.arange(len(pop))[::-1])
    assert codec.encode_genomes(layout, reversed_rows) == codec.encode_genomes(layout, pop)[::-1]


@PROPERTY
@given(layouts_and_populations(min_rows=1), st.data())
def test_ids_are_equal_exactly_when_encodings_are(
    case: tuple[Layout, Population], data: st.DataObject
) -> None:
    layout, pop = case
    rows = data.draw(st.lists(st.integers(0, len(pop) - 1), min_size=2, max_size=8))
    encodings = codec.encode_genomes(layout, pop.take(rows))
    ids = codec.candidate_ids(encodings)
    for i in range(len(rows)):
        for j in range(len(rows)):
            assert (ids[i] == ids[j]) == (encodings[i] == encodings[j])
            if rows[i] == rows[j]:
                assert ids[i] == ids[j]


@PROPERTY
@given(layouts_and_populations())
def test_decode_inverts_encode(case: tuple[Layout, Population]) -> None:
    layout, pop = case
    encodings = codec.encode_genomes(layout, pop)
    genomes = [candidate_pb2.Genome.FromString(e) for e in encodings]
    assert_same_population(layout, genome_checks.decode_genomes(layout, genomes, path_of), pop)
    # Messages holding -0.0 decode too, to the same (canonical) population.
    raw = [genome_message(pop, row) for row in range(len(pop))]
    assert_same_population(layout, genome_checks.decode_genomes(layout, raw, path_of), pop)


@PROPERTY
@given(layouts_and_populations())
def test_named_json_round_trips(case: tuple[Layout, Population]) -> None:
    layout, pop = case
    encodings = codec.encode_genomes(layout, pop)
    rows = to_named_rows(layout, pop)
    assert len(rows) == len(pop)
    for row, named in enumerate(rows):
        assert to_named(layout, pop, row) == named
        text = json.dumps(named, allow_nan=False, ensure_ascii=False)
        parsed = json.loads(text)
        assert list(parsed) == [gene.name for gene in layout.genes]
        genome = from_named(layout, parsed, "named")
        assert genome.SerializeToString(deterministic=True) == encodings[row]
        for gene in layout.genes:
            value = parsed[gene.name]
            if gene.kind in ("real", "integer", "choice"):
                assert isinstance(value, list) == (gene.size > 1)
            values = value if isinstance(value, list) else [value]
            want = {"real": float, "choice": str, "sequence": str}.get(gene.kind, int)
            assert all(type(v) is want for v in values)


@PROPERTY
@given(layouts_and_populations(min_rows=1))
def test_negative_zero_has_the_id_of_zero(case: tuple[Layout, Population]) -> None:
    layout, pop = case
    zeros = pop.take(np.arange(len(pop)))
    negative = pop.take(np.arange(len(pop)))
    spans_zero = (layout.real_low <= 0) & (layout.real_high >= 0)
    zeros.reals[:, spans_zero] = 0.0
    negative.reals[:, spans_zero] = -0.0
    assert codec.encode_genomes(layout, zeros) == codec.encode_genomes(layout, negative)
    for row in range(len(pop)):
        assert codec.genome_id(genome_message(negative, row)) == codec.genome_id(
            genome_message(zeros, row)
        )


def test_negative_zero_in_a_message() -> None:
    plain = candidate_pb2.Genome(reals=[0.0, 1.5])
    signed = candidate_pb2.Genome(reals=[-0.0, 1.5])
    assert plain.SerializeToString() != signed.SerializeToString()
    assert codec.genome_id(plain) == codec.genome_id(signed)
    assert math.copysign(1.0, signed.reals[0]) < 0  # the argument is left alone


def test_unknown_fields_are_not_part_of_the_id() -> None:
    assert EXTENDED.SerializeToString() != bytes.fromhex(EXAMPLE_HEX)
    assert codec.genome_id(EXTENDED) == EXAMPLE_ID


@PROPERTY
@given(layouts_and_populations(min_rows=1, max_rows=5), st.data())
def test_take_copies_the_given_rows_in_order(
    case: tuple[Layout, Population], data: st.DataObject
) -> None:
    """Rows may repeat or count from the end (-1 is the last), as in NumPy indexing."""
    layout, pop = case
    n = len(pop)
    rows = data.draw(st.lists(st.integers(-n, n - 1), max_size=7))
    taken = pop.take(rows)
    encodings = codec.encode_genomes(layout, pop)
    assert codec.encode_genomes(layout, taken) == [encodings[row] for row in rows]
    assert len(taken) == len(rows)
    assert taken.permutations == () or taken.permutations[0].shape[0] == len(rows)
    for block in taken.sequences:
        assert block.lengths.shape == (len(rows),)
    if rows:  # a copy: writing to it leaves the population alone
        taken.reals[...] = 7.0
        taken.bits[...] = True
        assert codec.encode_genomes(layout, pop) == encodings
    with pytest.raises(IndexError):
        pop.take([n])


@PROPERTY
@given(layouts_and_populations(min_rows=1, max_rows=3))
def test_candidates_carry_id_genome_and_lineage(case: tuple[Layout, Population]) -> None:
    layout, pop = case
    parents = [[f"{row:032x}"] * (row % 3) for row in range(len(pop))]
    encodings = codec.encode_genomes(layout, pop)
    ids = codec.candidate_ids(encodings)
    candidates = codec.assemble_candidates(encodings, ids, generation=7, parent_ids=parents)
    assert candidates == codec.to_candidates(layout, pop, generation=7, parent_ids=parents)
    wire = codec.encode_candidates(encodings, ids, generation=7, parent_ids=parents)
    for row, candidate in enumerate(candidates):
        assert candidate.id == ids[row]
        assert candidate.genome.SerializeToString(deterministic=True) == encodings[row]
        assert candidate.generation == 7
        assert list(candidate.parent_ids) == parents[row]
        assert candidate.SerializeToString(deterministic=True) == wire[row]


# Parent pools: candidate ids (the matrix path), or ids of other lengths or non-ASCII
# characters (the row by row path).
CANDIDATE_IDS = st.lists(
    st.from_regex(r"[0-9a-f]{32}", fullmatch=True), min_size=1, max_size=6, unique=True
)
OTHER_IDS = st.lists(st.text(max_size=40), min_size=1, max_size=6, unique=True)


@st.composite
def children_cases(
    draw: st.DrawFn,
) -> tuple[Layout, Population, int, np.ndarray[Any, np.dtype[np.int64]] | None, list[str]]:
    """A population with a generation, a pool of parent ids and a lineage into it: -1 for
    no parent, anywhere in a row (also before a present one), 0 to 3 columns, or None."""
    layout, pop = draw(layouts_and_populations(min_rows=1, max_rows=6))
    pool = draw(CANDIDATE_IDS if draw(st.integers(0, 3)) else OTHER_IDS)
    generation = draw(st.sampled_from([0, 1, 127, 128, 2**32 - 1]))
    if draw(st.integers(0, 5)) == 0:
        return layout, pop, generation, None, pool
    columns = draw(st.integers(0, 3))
    index = st.integers(-1, len(pool) - 1)
    cells = draw(st.lists(index, min_size=len(pop) * columns, max_size=len(pop) * columns))
    lineage = np.asarray(cells, dtype=np.int64).reshape(len(pop), columns)
    return layout, pop, generation, lineage, pool


@PROPERTY
@given(children_cases())
def test_children_are_protobufs_serialisation_of_their_candidates(
    case: tuple[Layout, Population, int, np.ndarray[Any, np.dtype[np.int64]] | None, list[str]],
) -> None:
    layout, pop, generation, lineage, pool = case
    records = codec.encode_children(layout, pop, generation=generation, lineage=lineage, pool=pool)
    encodings = codec.encode_genomes(layout, pop)
    ids = codec.candidate_ids(encodings)
    rows = [[]] * len(pop) if lineage is None else lineage.tolist()
    parent_ids = [[pool[j] for j in row if j >= 0] for row in rows]
    assert records == codec.encode_candidates(
        encodings, ids, generation=generation, parent_ids=parent_ids
    )
    for row, record in enumerate(records):
        candidate = candidate_pb2.Candidate(
            id=ids[row],
            genome=without_negative_zero(genome_message(pop, row)),
            generation=generation,
            parent_ids=parent_ids[row],
        )
        assert record == candidate.SerializeToString(deterministic=True)


def test_children_of_no_rows_and_of_the_worked_example() -> None:
    empty = EXAMPLE.empty(0)
    assert codec.encode_children(EXAMPLE, empty, generation=3, lineage=None, pool=[]) == []
    pop = Population.concat([example_population(), example_population()])
    parent = "0123456789abcdef" * 2
    lineage = np.array([[-1, 0], [-1, -1]], dtype=np.int64)  # a gap: the parent moves first
    first, second = codec.encode_children(
        EXAMPLE, pop, generation=2, lineage=lineage, pool=[parent, "f" * 32]
    )
    assert first == candidate_pb2.Candidate(
        id=EXAMPLE_ID, genome=EXAMPLE_GENOME, generation=2, parent_ids=[parent]
    ).SerializeToString(deterministic=True)
    assert second == candidate_pb2.Candidate(
        id=EXAMPLE_ID, genome=EXAMPLE_GENOME, generation=2
    ).SerializeToString(deterministic=True)


def test_children_of_one_genome_width_are_rows_of_one_matrix() -> None:
    """Reals only: every genome is as long, the records are prefixes of matrix rows."""
    dna = json_format.ParseDict({"genes": [{"name": "x", "real": {"size": 3}}]}, dna_pb2.Dna())
    layout = Layout(normalise(dna))
    pop = layout.empty(3)
    pop.reals[:] = [[0.5, -0.0, 1.0], [0.25, 0.0, -1.0], [0.5, 0.0, 1.0]]
    pool = ["a" * 32, "b" * 32]
    lineage = np.array([[1, 0], [0, -1], [-1, -1]], dtype=np.int64)
    records = codec.encode_children(layout, pop, generation=0, lineage=lineage, pool=pool)
    expected = [
        candidate_pb2.Candidate(
            id=codec.genome_id(candidate_pb2.Genome(reals=reals)),
            genome=candidate_pb2.Genome(reals=reals),
            parent_ids=parents,
        ).SerializeToString(deterministic=True)
        for reals, parents in [
            ([0.5, 0.0, 1.0], pool[::-1]),
            ([0.25, 0.0, -1.0], pool[:1]),
            ([0.5, 0.0, 1.0], []),
        ]
    ]
    assert records == expected
    # Ids of other lengths take the row by row path, even when they add up to whole ids.
    odd = ["c" * 31, "d" * 33]
    both = np.array([[0, 1], [1, 0], [0, 1]], dtype=np.int64)
    records = codec.encode_children(layout, pop, generation=0, lineage=both, pool=odd)
    parents = [candidate_pb2.Candidate.FromString(r).parent_ids for r in records]
    assert parents == [odd, odd[::-1], odd]


# --- GenerateResponse framing -----------------------------------------------------------------

UINT32 = st.one_of(
    st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 127, 128, 16_383, 16_384, 2**32 - 1])
)
# Candidates of every size class: a length prefix of one, two or three varint bytes.
CANDIDATES = st.builds(
    candidate_pb2.Candidate,
    id=st.text(max_size=40),
    genome=st.builds(
        candidate_pb2.Genome,
        reals=st.lists(st.floats(), max_size=20),
        integers=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
        sequences=st.binary(max_size=300) | st.just(bytes(20_000)),
    ),
    generation=UINT32,
    parent_ids=st.lists(st.text(max_size=40), max_size=3),
)


def response_wire(
    candidates: list[candidate_pb2.Candidate], generation: int, remaining: int
) -> bytes:
    """What protobuf itself makes of the response."""
    response = generator_pb2.GenerateResponse(
        candidates=candidates, generation=generation, remaining=remaining
    )
    return response.SerializeToString(deterministic=True)


@PROPERTY
@given(st.lists(CANDIDATES, max_size=6), UINT32, UINT32)
def test_generate_response_is_protobufs_deterministic_serialisation(
    candidates: list[candidate_pb2.Candidate], generation: int, remaining: int
) -> None:
    records = [c.SerializeToString(deterministic=True) for c in candidates]
    encoded = encode_generate_response(records, generation, remaining)
    assert encoded == response_wire(candidates, generation, remaining)


@pytest.mark.parametrize(
    ("size", "generation", "remaining"),
    [(0, 0, 0), (0, 5, 0), (0, 0, 5), (1, 0, 0), (3, 2**32 - 1, 2**32 - 1), (2, 128, 16_384)],
)
def test_generate_response_edges(size: int, generation: int, remaining: int) -> None:
    candidates = [candidate_pb2.Candidate(id=EXAMPLE_ID, genome=EXAMPLE_GENOME)] * size
    records = [c.SerializeToString(deterministic=True) for c in candidates]
    encoded = encode_generate_response(records, generation, remaining)
    assert encoded == response_wire(candidates, generation, remaining)
    assert (size, generation, remaining) != (0, 0, 0) or encoded == b""


@PROPERTY
@given(layouts_and_populations(max_rows=5), UINT32, UINT32)
def test_generate_response_frames_encoded_candidates(
    case: tuple[Layout, Population], generation: int, remaining: int
) -> None:
    layout, pop = case
    encodings = codec.encode_genomes(layout, pop)
    ids = codec.candidate_ids(encodings)
    lineage = [[ids[0]] * (row % 3) for row in range(len(pop))]
    records = codec.encode_candidates(encodings, ids, generation=generation, parent_ids=lineage)
    encoded = encode_generate_response(records, generation, remaining)
    candidates = codec.assemble_candidates(
        encodings, ids, generation=generation, parent_ids=lineage
    )
    assert encoded == response_wire(candidates, generation, remaining)
    assert list(generator_pb2.GenerateResponse.FromString(encoded).candidates) == candidates


@pytest.mark.parametrize(("generation", "remaining"), [(-1, 0), (0, -1), (2**32, 0), (0, 2**32)])
def test_generate_response_refuses_values_beyond_uint32(generation: int, remaining: int) -> None:
    with pytest.raises(ValueError, match="uint32"):
        encode_generate_response([], generation, remaining)


def test_generate_response_tags_follow_the_descriptor() -> None:
    response = generator_pb2.GenerateResponse.DESCRIPTOR
    field = response.fields_by_name["remaining"]
    assert codec.wire_tag(response, "remaining", field.type, 0) == bytes([field.number << 3])
    # A field whose type no longer matches the hand encoding stops the import.
    with pytest.raises(TypeError, match=r"GenerateResponse\.remaining changed type"):
        codec.wire_tag(response, "remaining", FieldDescriptor.TYPE_SINT32, 0)


# --- genomes that do not fit the DNA --------------------------------------------------------


def _genome(**fields: Any) -> candidate_pb2.Genome:
    """The worked example's genome with some fields replaced."""
    genome = candidate_pb2.Genome()
    genome.CopyFrom(EXAMPLE_GENOME)
    for name, value in fields.items():
        genome.ClearField(name)  # type: ignore[arg-type]
        if isinstance(value, bytes):
            setattr(genome, name, value)
        else:
            getattr(genome, name).extend(value)
    return genome


LENGTH = "g[1].sequence_lengths[0]"
BAD_GENOMES = [
    pytest.param(_genome(reals=[0.5, -1.0]), ["g[1].reals"], id="reals count"),
    pytest.param(_genome(reals=[]), ["g[1].reals"], id="reals missing"),
    pytest.param(_genome(reals=[0.5, math.nan, 2.5]), ["g[1].reals[1]"], id="real NaN"),
    pytest.param(_genome(reals=[0.5, -1.0, math.inf]), ["g[1].reals[2]"], id="real infinite"),
    pytest.param(_genome(reals=[5.5, -1.0, 2.5]), ["g[1].reals[0]"], id="real out of bounds"),
    pytest.param(_genome(reals=[0.5, -1.0, -1e-300]), ["g[1].reals[2]"], id="real below low"),
    pytest.param(_genome(integers=[7, 7]), ["g[1].integers"], id="integers count"),
    pytest.param(_genome(integers=[11]), ["g[1].integers[0]"], id="integer too high"),
    pytest.param(_genome(integers=[-1]), ["g[1].integers[0]"], id="integer negative"),
    pytest.param(_genome(integers=[-(2**63)]), ["g[1].integers[0]"], id="integer huge"),
    pytest.param(_genome(choices=[]), ["g[1].choices"], id="choices count"),
    pytest.param(_genome(choices=[3]), ["g[1].choices[0]"], id="choice index"),
    pytest.param(_genome(choices=[2**32 - 1]), ["g[1].choices[0]"], id="choice huge index"),
    pytest.param(_genome(bits=b"\xfd"), ["g[1].bits"], id="bits length"),
    pytest.param(_genome(bits=b"\xfd\x01\x00"), ["g[1].bits"], id="bits too long"),
    pytest.param(_genome(bits=b"\xfd\x03"), ["g[1].bits"], id="bits high bits"),
    pytest.param(_genome(permutations=[2, 0]), ["g[1].permutations"], id="permutations count"),
    pytest.param(
        _genome(permutations=[2, 0, 3]), ["g[1].permutations[2]"], id="permutation element"
    ),
    pytest.param(
        _genome(permutations=[2, 1, 1]), ["g[1].permutations[2]"], id="permutation repeat"
    ),
    pytest.param(
        _genome(sequence_lengths=[7, 0]), ["g[1].sequence_lengths"], id="sequence_lengths count"
    ),
    pytest.param(
        _genome(sequence_lengths=[11], sequences=bytes(11)), [LENGTH], id="sequence too long"
    ),
    pytest.param(
        _genome(sequence_lengths=[1], sequences=b"\x00"), [LENGTH], id="sequence too short"
    ),
    pytest.param(_genome(sequences=b"\x00"), ["g[1].sequences"], id="sequences size"),
    pytest.param(
        _genome(sequences=bytes([2, 0, 3, 4, 0, 1, 9])), ["g[1].sequences[3]"], id="symbol"
    ),
    pytest.param(EXTENDED, ["g[1]"], id="unknown field"),
]


@pytest.mark.parametrize(("genome", "paths"), BAD_GENOMES)
def test_decode_names_the_bad_field(genome: candidate_pb2.Genome, paths: list[str]) -> None:
    with pytest.raises(InvalidArgument) as error:
        genome_checks.decode_genomes(EXAMPLE, [EXAMPLE_GENOME, genome, EXAMPLE_GENOME], path_of)
    assert violations(error) == paths
    assert error.value.reason == "INVALID_ARGUMENT"


def test_decode_reports_every_row_in_order() -> None:
    genomes = [
        _genome(choices=[5], reals=[9.0, 9.0, 9.0]),
        EXAMPLE_GENOME,
        _genome(integers=[1, 2], permutations=[0, 0, 1]),
    ]
    with pytest.raises(InvalidArgument) as error:
        genome_checks.decode_genomes(EXAMPLE, genomes, path_of)
    assert violations(error) == ["g[0].reals[0]", "g[0].choices[0]", "g[2].integers"]
    reals = error.value.violations[0].description
    assert "-5..5" in reals
    assert "gene x" in reals
    assert "(and 2 more)" in reals


def test_decode_caps_the_violations() -> None:
    genomes = [_genome(integers=[99], choices=[9])] * 150
    with pytest.raises(InvalidArgument) as error:
        genome_checks.decode_genomes(EXAMPLE, genomes, path_of)
    found = violations(error)
    assert len(found) == genome_checks.MAX_VIOLATIONS
    assert found[:3] == ["g[0].integers[0]", "g[0].choices[0]", "g[1].integers[0]"]


def test_decode_accepts_negative_zero_and_no_genomes() -> None:
    pop = genome_checks.decode_genomes(EXAMPLE, [_genome(reals=[-0.0, -0.0, 0.0])], path_of)
    assert not np.signbit(pop.reals).any()
    empty = genome_checks.decode_genomes(EXAMPLE, [], path_of)
    assert len(empty) == 0
    assert codec.encode_genomes(EXAMPLE, empty) == []
    assert to_named_rows(EXAMPLE, empty) == []


def test_empty_sequences_are_omitted_from_the_wire() -> None:
    dna = json_format.ParseDict(
        {
            "genes": [
                {"name": "a", "sequence": {"alphabet": "xy", "max_length": 3}},
                {"name": "b", "sequence": {"alphabet": "z", "min_length": 1, "max_length": 1}},
            ]
        },
        dna_pb2.Dna(),
    )
    layout = Layout(normalise(dna))
    genomes = [
        candidate_pb2.Genome(sequence_lengths=[0, 1], sequences=b"\x00"),
        candidate_pb2.Genome(sequence_lengths=[2, 1], sequences=b"\x01\x00\x00"),
    ]
    pop = genome_checks.decode_genomes(layout, genomes, path_of)
    assert to_named_rows(layout, pop) == [{"a": "", "b": "z"}, {"a": "yx", "b": "z"}]
    assert codec.encode_genomes(layout, pop) == [g.SerializeToString() for g in genomes]
    no_symbols = candidate_pb2.Genome(sequence_lengths=[0, 0])
    assert no_symbols.SerializeToString() == b"\x32\x02\x00\x00"
    with pytest.raises(InvalidArgument) as error:
        genome_checks.decode_genomes(layout, [genomes[1], no_symbols], path_of)
    assert violations(error) == ["g[1].sequence_lengths[1]"]
    bad_symbols = candidate_pb2.Genome(sequence_lengths=[2, 1], sequences=b"\x02\x00\x01")
    with pytest.raises(InvalidArgument) as error:
        genome_checks.decode_genomes(layout, [bad_symbols], path_of)
    assert violations(error) == ["g[0].sequences[0]"]  # one per row and field, counting the rest
    assert error.value.violations[0].description == (
        "must be a symbol index below 2 (gene a) (and 1 more)"
    )


GENOME_FIELDS: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "reals": st.lists(st.floats(), max_size=4),
        "integers": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
        "choices": st.lists(st.integers(0, 2**32 - 1), max_size=3),
        "bits": st.binary(max_size=3),
        "permutations": st.lists(st.integers(0, 2**32 - 1), max_size=5),
        "sequence_lengths": st.lists(st.integers(0, 2**32 - 1), max_size=3),
        "sequences": st.binary(max_size=12),
    },
)
NEAR_EXAMPLE = st.builds(
    lambda changes: _genome(**changes),
    st.fixed_dictionaries(
        {},
        optional={
            "reals": st.lists(st.floats(-6, 6), min_size=3, max_size=3),
            "integers": st.lists(st.integers(-1, 11), min_size=1, max_size=1),
            "choices": st.lists(st.integers(0, 3), min_size=1, max_size=1),
            "bits": st.binary(min_size=2, max_size=2),
            "permutations": st.permutations([0, 1, 2]) | st.lists(st.integers(0, 3), min_size=3),
            "sequences": st.binary(min_size=7, max_size=7),
        },
    ),
)


@PROPERTY
@given(st.lists(st.builds(candidate_pb2.Genome) | NEAR_EXAMPLE, max_size=4), st.data())
def test_decode_of_arbitrary_genomes_rejects_or_fits(
    genomes: list[candidate_pb2.Genome], data: st.DataObject
) -> None:
    genomes += data.draw(
        st.lists(GENOME_FIELDS.map(lambda f: candidate_pb2.Genome(**f)), max_size=2)
    )
    for genome in genomes:
        if data.draw(st.integers(0, 9)) == 0:
            genome.MergeFromString(b"\x4a\x00")  # field 9, length-delimited: unknown here
    outcome = outcome_of(lambda: genome_checks.decode_genomes(EXAMPLE, genomes, path_of))
    if isinstance(outcome, InvalidArgument):
        assert 1 <= len(outcome.violations) <= genome_checks.MAX_VIOLATIONS
        rows = [int(v.field[2 : v.field.index("]")]) for v in outcome.violations]
        assert rows == sorted(rows)
    else:
        encodings = codec.encode_genomes(EXAMPLE, outcome)
        assert encodings == [codec.canonical_encoding(g) for g in genomes]


# --- named JSON that does not fit the DNA ----------------------------------------------------

_DROP = object()


def _named(**changes: object) -> dict[str, object]:
    named = dict(EXAMPLE_NAMED)
    for name, value in changes.items():
        if value is _DROP:
            del named[name]
        else:
            named[name] = value
    return named


BAD_NAMED = [
    pytest.param(_named(n=_DROP), ["n"], id="missing gene"),
    pytest.param(_named(z=1), ["z"], id="unknown gene"),
    pytest.param(_named(**{"Not A Gene": 1}), ['["Not A Gene"]'], id="odd key"),
    pytest.param(_named(x=0.5), ["x"], id="array expected"),
    pytest.param(_named(x=[0.5]), ["x"], id="array length"),
    pytest.param(_named(x=[0.5, "1"]), ["x[1]"], id="element not a number"),
    pytest.param(_named(x=[0.5, True]), ["x[1]"], id="bool is not a number"),
    pytest.param(_named(x=[0.5, 5.5]), ["x[1]"], id="real out of bounds"),
    pytest.param(_named(x=[math.nan, 0.5]), ["x[0]"], id="real not finite"),
    pytest.param(_named(x=[10**400, 0.5]), ["x[0]"], id="real huge int"),
    pytest.param(_named(y=[2.5]), ["y"], id="scalar expected"),
    pytest.param(_named(n=True), ["n"], id="integer bool"),
    pytest.param(_named(n=7.5), ["n"], id="integer fraction"),
    pytest.param(_named(n=11), ["n"], id="integer out of bounds"),
    pytest.param(_named(n="7"), ["n"], id="integer string"),
    pytest.param(_named(opt="sgdx"), ["opt"], id="unknown option"),
    pytest.param(_named(opt=1), ["opt"], id="option index"),
    pytest.param(_named(m=[1, 0]), ["m"], id="bits length"),
    pytest.param(_named(m=[1, 0, 2]), ["m[2]"], id="bit value"),
    pytest.param(_named(m=[True, 0, 1]), ["m[0]"], id="bit bool"),
    pytest.param(_named(k=1), ["k"], id="bits scalar"),
    pytest.param(_named(route=[0, 0, 1]), ["route[1]"], id="permutation repeat"),
    pytest.param(_named(route=[0, 1, 3]), ["route[2]"], id="permutation element"),
    pytest.param(_named(route="012"), ["route"], id="permutation string"),
    pytest.param(_named(primer="GATXACA"), ["primer[3]"], id="sequence symbol"),
    pytest.param(_named(primer="A" * 11), ["primer"], id="sequence too long"),
    pytest.param(_named(primer="A"), ["primer"], id="sequence too short"),
    pytest.param(_named(primer="U"), ["primer", "primer[0]"], id="sequence length and symbol"),
    pytest.param(_named(primer=["G"]), ["primer"], id="sequence not a string"),
    pytest.param(
        _named(x=[9, 9], n=_DROP, opt=None, zz=0), ["x[0]", "n", "opt", "zz"], id="several"
    ),
]


@pytest.mark.parametrize(("named", "paths"), BAD_NAMED)
def test_from_named_names_the_bad_field(named: dict[str, object], paths: list[str]) -> None:
    with pytest.raises(InvalidArgument) as error:
        from_named(EXAMPLE, named)
    assert violations(error) == paths
    with pytest.raises(InvalidArgument) as error:
        from_named(EXAMPLE, named, "named")
    assert violations(error) == [("named" if p[0] == "[" else "named.") + p for p in paths]


def test_from_named_accepts_integral_numbers_in_either_form() -> None:
    named = _named(x=[1, -1], n=7.0, y=2, m=[1.0, 0, 1], route=[2.0, 0, 1])
    genome = from_named(EXAMPLE, named)
    assert list(genome.reals) == [1.0, -1.0, 2.0]
    assert list(genome.integers) == [7]
    assert genome.bits == EXAMPLE_GENOME.bits
    assert list(genome.permutations) == [2, 0, 1]
    signed = from_named(EXAMPLE, _named(x=[-0.0, 0.5]))
    assert signed == from_named(EXAMPLE, _named(x=[0.0, 0.5]))
    assert not math.copysign(1.0, signed.reals[0]) < 0


def test_from_named_needs_an_object() -> None:
    with pytest.raises(InvalidArgument) as error:
        from_named(EXAMPLE, [1, 2], "genome")  # type: ignore[arg-type]
    assert violations(error) == ["genome"]


NAMED_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 12)
    | st.floats()
    | st.sampled_from(["sgd", "GATTACA", "AC"])
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)


@PROPERTY
@given(st.dictionaries(st.sampled_from([*EXAMPLE_NAMED, "zz"]), NAMED_VALUES, max_size=3))
def test_from_named_of_arbitrary_objects_rejects_or_fits(changes: dict[str, object]) -> None:
    named = {**EXAMPLE_NAMED, **changes}
    outcome = outcome_of(lambda: from_named(EXAMPLE, named, "obj"))
    if isinstance(outcome, InvalidArgument):
        assert 1 <= len(outcome.violations) <= genome_checks.MAX_VIOLATIONS
        assert all(v.field.startswith("obj.") for v in outcome.violations)
    else:
        pop = genome_checks.decode_genomes(EXAMPLE, [outcome], path_of)
        encoding = outcome.SerializeToString(deterministic=True)
        assert codec.encode_genomes(EXAMPLE, pop) == [encoding]
