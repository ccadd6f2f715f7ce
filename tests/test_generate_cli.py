"""`helix dna get` and `helix generate` as a user runs them, against `helix up` serving the
example DNAs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import helix.v1.dna_pb2 as dna_pb2
from helix.cli.dna import gene_domain

from harness import run_helix as run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
async def suite(clusters, tmp_path):
    library = tmp_path / "library"
    shutil.copytree(EXAMPLES, library)
    (library / "broken.yaml").write_text("genes:\n  - {name: x, real: {low: 2, high: 1}}\n")
    return await clusters("embedded", generators=0, dna_dir=library)


def flags(suite) -> list[str]:
    return ["--address", suite.address_of("generator"), "--data-dir", str(suite.data_dir)]


async def test_dna_get_shows_a_document(suite, helix_env):
    code, out, err = await run("dna", "get", "hyperparameters", *flags(suite), env=helix_env)
    assert code == 0, err
    assert out.startswith("name         dnas/hyperparameters\n")
    assert re.search(r"^valid        yes$", out, re.MULTILINE)
    assert re.search(r"^learning_rate +real +\[1e-05, 0\.1\], log scale$", out, re.MULTILINE), out
    assert re.search(r"^optimizer +choice +adam \| sgd \| rmsprop \| adagrad$", out, re.MULTILINE)
    code, out, err = await run("dna", "get", "dnas/sphere", "--json", *flags(suite), env=helix_env)
    assert code == 0, err
    document = json.loads(out)
    assert document["name"] == "dnas/sphere"
    assert document["valid"] is True
    assert "updateTime" in document  # lowerCamelCase, as every Helix command prints


async def test_dna_get_shows_the_violations_of_an_invalid_document(suite, helix_env):
    code, out, err = await run("dna", "get", "broken", *flags(suite), env=helix_env)
    assert code == 0, err
    assert re.search(r"^valid        no \(1 violations\)$", out, re.MULTILINE)
    assert "broken.yaml:2: genes[0].real.low: must be <= high [low_le_high]" in out


async def test_dna_get_errors(suite, helix_env):
    code, out, err = await run("dna", "get", "nope", *flags(suite), env=helix_env)
    assert (code, out) == (1, "")
    assert "error: NOT_FOUND: dnas/nope not found" in err
    code, _, err = await run("dna", "get", "Not A Name", *flags(suite), env=helix_env)
    assert code == 2
    assert "bad DNA name 'Not A Name'" in err


async def test_generate_prints_named_candidates_deterministically(suite, helix_env):
    args = ["generate", "--dna", "sphere", "--count", "5", "--seed", "7", *flags(suite)]
    code, out, err = await run(*args, env=helix_env)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 5
    for line in lines:
        candidate_id, named = line.split("  ", 1)
        assert ID.match(candidate_id)
        genes = json.loads(named)
        assert list(genes) == ["x"]
        assert len(genes["x"]) == 10
        assert all(-5.12 <= value <= 5.12 for value in genes["x"])
    code, again, _ = await run(*args, env=helix_env)
    assert (code, again) == (0, out)
    code, other, _ = await run(
        *args[: -len(flags(suite))], "--seed", "8", *flags(suite), env=helix_env
    )
    assert code == 0
    assert other != out


async def test_generate_from_a_local_file_as_json_lines(suite, helix_env, tmp_path):
    dna_file = EXAMPLES / "hyperparameters.yaml"
    args = ["generate", "--dna", str(dna_file), "--count", "3", "--json", *flags(suite)]
    code, out, err = await run(*args, env=helix_env)
    assert code == 0, err
    shown = [json.loads(line) for line in out.splitlines()]
    assert [c["generation"] for c in shown] == [0, 0, 0]
    assert all(ID.match(c["id"]) for c in shown)
    genes = shown[0]["genes"]
    assert list(genes) == ["learning_rate", "layers", "units", "optimizer", "dropout", "features"]
    assert genes["optimizer"] in ("adam", "sgd", "rmsprop", "adagrad")
    assert len(genes["features"]) == 16
    # The library's copy of the same DNA gives the same candidates.
    code, same, _ = await run(*args[:2], "hyperparameters", *args[3:], env=helix_env)
    assert (code, same) == (0, out)


async def test_generate_bad_input(suite, helix_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("genes:\n  - {name: x, real: {low: 2, high: 1}}\n")
    cases = [
        (["--dna", str(bad)], 2, "is not a valid DNA:\n" + f"{bad}:2: genes[0].real.low"),
        (["--dna", str(tmp_path / "missing.yaml")], 2, "cannot read: No such file"),
        (
            ["--dna", "broken"],
            1,
            "dnas/broken is not a valid DNA (see `helix dna get dnas/broken`)",
        ),
        (["--dna", "nope"], 1, "error: NOT_FOUND: dnas/nope not found"),
        (["--dna", "sphere", "--count", "0"], 2, "--count must be within 1..1000000, not 0"),
        (["--dna", "sphere", "--seed", "-1"], 2, "--seed must be within 0..18446744073709551615"),
        (["--dna", "Bad Name"], 2, "bad DNA name 'Bad Name'"),
    ]
    for args, status, message in cases:
        code, out, err = await run("generate", *args, *flags(suite), env=helix_env)
        assert (code, out) == (status, ""), (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err


def test_gene_domains_read_like_the_dna():
    gene = dna_pb2.Gene(name="x", real=dna_pb2.RealGene(low=-1, high=2.5, size=3))
    assert gene_domain(gene) == ("real x3", "[-1, 2.5]")
    gene = dna_pb2.Gene(name="r", permutation=dna_pb2.PermutationGene(size=52))
    assert gene_domain(gene) == ("permutation", "of 0..51")
    gene = dna_pb2.Gene(
        name="s", sequence=dna_pb2.SequenceGene(alphabet="AB", min_length=1, max_length=4)
    )
    assert gene_domain(gene) == ("sequence", "over AB, length 1..4")
