"""Hypothesis strategies for valid DNAs, their layouts and populations of valid genomes.

Genes are small (a few values each) but cover every kind and the edges of the wire format:
log-scale reals, size-0 genes, reals spanning 0 (so -0.0 turns up), integers up to 2^53,
one-option choices, more than 127 options or permutation elements (two-byte varints), bit
counts that are not multiples of 8, unicode alphabets, and min_length == max_length.
`genome_message` builds a row's Genome field by field, independently of the codec.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
from helix.genome.layout import Layout, Population, normalise

GENE_NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
MAX_INTEGER = 2**53
SIZES = st.integers(0, 4)


@st.composite
def real_genes(draw: st.DrawFn) -> dna_pb2.RealGene:
    """Real genes: log-scale, spanning 0, huge or degenerate (low == high) ranges."""
    size = draw(SIZES)
    if draw(st.booleans()):
        low = draw(st.floats(1e-9, 1e9))
        high = draw(st.floats(low, low * 1e6))
        return dna_pb2.RealGene(low=low, high=high, size=size, log_scale=True)
    bound = draw(st.sampled_from([1.0, 1e6, 1e307]))
    ends = draw(st.lists(st.floats(-bound, bound), min_size=2, max_size=2))
    return dna_pb2.RealGene(low=min(ends), high=max(ends), size=size)


@st.composite
def integer_genes(draw: st.DrawFn) -> dna_pb2.IntegerGene:
    """Integer genes, from one value to the full +-2^53 range."""
    bound = draw(st.sampled_from([3, 1000, MAX_INTEGER]))
    end = st.integers(-bound, bound) | st.sampled_from([-bound, bound])
    ends = draw(st.lists(end, min_size=2, max_size=2))
    return dna_pb2.IntegerGene(low=min(ends), high=max(ends), size=draw(SIZES))


@st.composite
def choice_genes(draw: st.DrawFn) -> dna_pb2.ChoiceGene:
    """Choice genes with 1 to 5 options, or sometimes 128 to 200 (two-byte indices)."""
    if draw(st.integers(0, 9)) == 0:
        options = [f"o{i}" for i in range(draw(st.integers(128, 200)))]
    else:
        options = draw(
            st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=5, unique=True)
        )
    return dna_pb2.ChoiceGene(options=options, size=draw(SIZES))


@st.composite
def permutation_genes(draw: st.DrawFn) -> dna_pb2.PermutationGene:
    """Permutations of 2 to 8 elements, or sometimes 128 to 140 (two-byte elements)."""
    large = draw(st.integers(0, 9)) == 0
    return dna_pb2.PermutationGene(size=draw(st.integers(128, 140) if large else st.integers(2, 8)))


@st.composite
def sequence_genes(draw: st.DrawFn) -> dna_pb2.SequenceGene:
    """Sequences over 1 to 6 (sometimes 250 to 256) unicode symbols, 0 to 9 long."""
    symbols = st.characters(exclude_categories=["Cs"])
    if draw(st.integers(0, 9)) == 0:
        alphabet = "".join(chr(0x100 + i) for i in range(draw(st.integers(250, 256))))
    else:
        alphabet = "".join(draw(st.lists(symbols, min_size=1, max_size=6, unique=True)))
    max_length = draw(st.integers(1, 9))
    min_length = draw(st.sampled_from([0, max_length, draw(st.integers(0, max_length))]))
    return dna_pb2.SequenceGene(alphabet=alphabet, min_length=min_length, max_length=max_length)


GENE_KINDS = {
    "real": real_genes(),
    "integer": integer_genes(),
    "choice": choice_genes(),
    "bits": st.builds(dna_pb2.BitsGene, size=st.integers(1, 20) | st.integers(60, 80)),
    "permutation": permutation_genes(),
    "sequence": sequence_genes(),
}


@st.composite
def dnas(draw: st.DrawFn, max_genes: int = 7) -> dna_pb2.Dna:
    """Valid DNAs (genes only; the strategy is left unset) with 1 to max_genes genes."""
    names = draw(st.lists(GENE_NAMES, min_size=1, max_size=max_genes, unique=True))
    dna = dna_pb2.Dna()
    for name in names:
        kind = draw(st.sampled_from(sorted(GENE_KINDS)))
        gene = dna.genes.add(name=name)
        getattr(gene, kind).CopyFrom(draw(GENE_KINDS[kind]))
    return dna


def layouts(max_genes: int = 7) -> st.SearchStrategy[Layout]:
    """Layouts of valid DNAs."""
    return dnas(max_genes).map(lambda dna: Layout(normalise(dna)))


@st.composite
def populations(
    draw: st.DrawFn, layout: Layout, min_rows: int = 0, max_rows: int = 4
) -> Population:
    """Populations of valid genomes of a layout; reals include -0.0 where 0 is in bounds."""
    n = draw(st.integers(min_rows, max_rows))
    pop = layout.empty(n)
    for row in range(n):
        for j in range(layout.n_reals):
            low, high = float(layout.real_low[j]), float(layout.real_high[j])
            special = [v for v in (low, high, -0.0, 0.0) if low <= v <= high]
            pop.reals[row, j] = draw(st.floats(low, high) | st.sampled_from(special))
        for j in range(layout.n_integers):
            low, high = int(layout.integer_low[j]), int(layout.integer_high[j])
            pop.integers[row, j] = draw(st.integers(low, high) | st.sampled_from([low, high]))
        for j in range(layout.n_choices):
            pop.choices[row, j] = draw(st.integers(0, int(layout.choice_counts[j]) - 1))
        pop.bits[row] = draw(
            st.lists(st.booleans(), min_size=layout.n_bits, max_size=layout.n_bits)
        )
        for elements, size in zip(pop.permutations, layout.permutation_sizes, strict=True):
            elements[row] = draw(st.permutations(range(size)))
        for block, spec in zip(pop.sequences, layout.sequences, strict=True):
            length = draw(st.integers(spec.min_length, spec.max_length))
            symbol = st.integers(0, len(spec.alphabet) - 1)
            block.symbols[row, :length] = draw(st.lists(symbol, min_size=length, max_size=length))
            block.lengths[row] = length
    return pop


@st.composite
def layouts_and_populations(
    draw: st.DrawFn, min_rows: int = 0, max_rows: int = 4
) -> tuple[Layout, Population]:
    """A layout and a population of it."""
    layout = draw(layouts())
    return layout, draw(populations(layout, min_rows, max_rows))


def genome_message(pop: Population, row: int) -> candidate_pb2.Genome:
    """One row as a Genome message, built field by field (no codec involved)."""
    sequences = [(block.symbols[row], int(block.lengths[row])) for block in pop.sequences]
    return candidate_pb2.Genome(
        reals=[float(v) for v in pop.reals[row]],
        integers=[int(v) for v in pop.integers[row]],
        choices=[int(v) for v in pop.choices[row]],
        bits=np.packbits(pop.bits[row], bitorder="little").tobytes(),
        permutations=[int(v) for elements in pop.permutations for v in elements[row]],
        sequence_lengths=[length for _, length in sequences],
        sequences=b"".join(symbols[:length].tobytes() for symbols, length in sequences),
    )


def without_negative_zero(genome: candidate_pb2.Genome) -> candidate_pb2.Genome:
    """A copy with -0.0 reals replaced by 0.0 (the canonical form)."""
    copy = candidate_pb2.Genome()
    copy.CopyFrom(genome)
    copy.reals[:] = [value + 0.0 for value in genome.reals]
    return copy
