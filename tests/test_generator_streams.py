"""The random streams of a chunk (strategies._Streams): one independent generator per
(seed, generation, chunk, draw, gene), reproducible, whatever order they are asked in."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from numpy.random.bit_generator import ISeedSequence

from helix.generator.strategies import DRAWS_PER_GENE, Draw, _Streams

MAX_SEED, MAX_GENERATION, MAX_CHUNK = 2**64 - 1, 2**32 - 1, 2**32 - 1


def words(streams: _Streams, draw: Draw, gene: int = 0) -> tuple[int, ...]:
    return tuple(streams(draw, gene).integers(0, 2**63, 4).tolist())


class GivenWords(ISeedSequence):
    def __init__(self, words: np.ndarray[tuple[int], np.dtype[np.uint64]]) -> None:
        self.words = words

    def generate_state(self, n_words: int, dtype: npt.DTypeLike = np.uint32) -> Any:
        assert n_words == self.words.size
        return self.words


def test_a_stream_is_the_pcg64_seeded_by_its_philox_block() -> None:
    """The documented derivation (generator v2), rebuilt from NumPy's public Philox: key
    (seed, generation << 32 | chunk), block draw + DRAWS_PER_GENE * gene."""
    seed, generation, chunk = 2**63 + 5, 3, 7
    philox = np.random.Philox(key=np.array([seed, generation << 32 | chunk], dtype=np.uint64))
    blocks = philox.random_raw(4 * (DRAWS_PER_GENE * 2 + len(Draw)))
    streams = _Streams(seed, generation, chunk)
    for draw, gene in [(Draw.TOURNAMENT, 0), (Draw.SEQUENCE_DELETION, 0), (Draw.REAL_CROSSOVER, 2)]:
        block = int(draw) + DRAWS_PER_GENE * gene
        seeded = np.random.PCG64(GivenWords(blocks[4 * block : 4 * block + 4]))  # type: ignore[arg-type]
        expected = np.random.Generator(seeded).random(5)
        assert streams(draw, gene).random(5).tolist() == expected.tolist()


def test_a_stream_is_a_function_of_its_key() -> None:
    for key in [(0, 0, 0), (5, 1, 0), (MAX_SEED, MAX_GENERATION, MAX_CHUNK)]:
        assert words(_Streams(*key), Draw.TOURNAMENT) == words(_Streams(*key), Draw.TOURNAMENT)
        assert words(_Streams(*key), Draw.SEQUENCE_DELETION, 9) == words(
            _Streams(*key), Draw.SEQUENCE_DELETION, 9
        )


def test_every_key_and_draw_has_its_own_stream() -> None:
    """No two (seed, generation, chunk, draw, gene) of a grid share their first words,
    including seeds and generations whose bits could collide in a packed key."""
    seeds = [0, 1, 2**32, MAX_SEED]
    generations = [0, 1, MAX_GENERATION]
    chunks = [0, 1, MAX_CHUNK]
    seen: dict[tuple[int, ...], tuple[int, ...]] = {}
    for seed, generation, chunk in itertools.product(seeds, generations, chunks):
        streams = _Streams(seed, generation, chunk)
        for draw, gene in itertools.product(Draw, [0, 1, 30]):
            first = words(streams, draw, gene)
            assert first not in seen, (seen[first], (seed, generation, chunk, draw, gene))
            seen[first] = (seed, generation, chunk, draw, gene)


def test_streams_do_not_depend_on_the_order_they_are_asked_in() -> None:
    """A far gene grows the chunk's seed words; the streams asked for before stay as they
    were, and a fresh chunk gives the same ones in any order."""
    early = _Streams(7, 3, 2)
    first = words(early, Draw.PERMUTATION_CROSSOVER)
    far = words(early, Draw.PERMUTATION_MUTATION, 200)
    assert words(early, Draw.PERMUTATION_CROSSOVER) == first
    late = _Streams(7, 3, 2)
    assert words(late, Draw.PERMUTATION_MUTATION, 200) == far
    assert words(late, Draw.PERMUTATION_CROSSOVER) == first


def test_each_call_is_a_fresh_generator() -> None:
    streams = _Streams(1, 1, 1)
    a, b = streams(Draw.REAL_MUTATION), streams(Draw.REAL_MUTATION)
    assert a is not b
    assert a.bit_generator is not b.bit_generator
    assert a.random() == b.random()


def test_streams_look_uniform_and_uncorrelated() -> None:
    """A coarse sanity check of the seeding: neighbouring streams' doubles have the mean
    and variance of U(0, 1) and no correlation between them."""
    streams = _Streams(0, 0, 0)
    samples = np.array([streams(draw).random(20_000) for draw in Draw])
    assert np.allclose(samples.mean(axis=1), 0.5, atol=0.01)
    assert np.allclose(samples.var(axis=1), 1 / 12, atol=0.003)
    correlation = np.corrcoef(samples)[~np.eye(len(Draw), dtype=bool)]
    assert np.abs(correlation).max() < 0.04


@pytest.mark.parametrize(
    "key", [(-1, 0, 0), (2**64, 0, 0), (0, -1, 0), (0, 2**32, 0), (0, 0, -1), (0, 0, 2**32)]
)
def test_keys_out_of_range_are_refused(key: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="2\\^"):
        _Streams(*key)
