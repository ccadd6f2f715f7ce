"""`helix dna validate` as a user runs it (a real subprocess), and `helix dna list` printing.

`dna list` runs here against a hand-written GeneratorService fake on a real server; the
end-to-end test against `helix up` belongs with the generator service.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
from helix.cli.dna import format_table, list_dnas
from helix.cli.main import _build_parser
from helix.common.server import ServiceBinding

from harness import run_helix

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
OK = re.compile(r"^(?P<file>\S+): ok \((?P<name>dnas/[a-z0-9-]+), fingerprint [0-9a-f]{64}\)$")

GOOD = "genes:\n  - {name: x, real: {low: -1, high: 1, size: 3}}\n"
BAD = "name: dnas/elsewhere\ngenes:\n  - {name: x, real: {low: 2, high: 1}}\n  - {name: x}\n"


async def run(*args: str, env: dict[str, str], cwd: Path | None = None) -> tuple[int, str, str]:
    return await run_helix(*args, env=env, cwd=cwd)


async def test_every_example_validates(helix_env) -> None:
    code, out, err = await run("dna", "validate", str(EXAMPLES), env=helix_env)
    assert (code, err) == (0, "")
    names = [path.stem for path in sorted(EXAMPLES.glob("*.yaml"))]
    assert len(names) >= 7
    matches = [OK.match(line) for line in out.splitlines()]
    assert all(matches), out
    assert [m["name"] for m in matches if m] == [f"dnas/{name}" for name in names]


async def test_valid_files_print_ok_and_exit_0(helix_env, tmp_path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "good-too.json").write_text('{"genes": [{"name": "b", "bits": {"size": 8}}]}')
    code, out, err = await run(
        "dna", "validate", "good.yaml", "good-too.json", env=helix_env, cwd=tmp_path
    )
    assert (code, err) == (0, "")
    matches = [OK.match(line) for line in out.splitlines()]
    assert [(m["file"], m["name"]) for m in matches if m] == [
        ("good.yaml", "dnas/good"),
        ("good-too.json", "dnas/good-too"),
    ]


async def test_invalid_files_print_every_violation_and_exit_1(helix_env, tmp_path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)
    (tmp_path / "broken.json").write_text('{"genes": [\n')
    code, out, err = await run(
        "dna", "validate", "good.yaml", "bad.yaml", "broken.json", env=helix_env, cwd=tmp_path
    )
    assert (code, err) == (1, "")
    assert out.splitlines()[1:] == [
        'bad.yaml:1: name: must equal "dnas/bad" (the file name without its extension), '
        'got "dnas/elsewhere" [name_matches_file]',
        "bad.yaml:3: genes[0].real.low: must be <= high [low_le_high]",
        "bad.yaml:4: genes[1]: must set a kind: one of real, integer, choice, bits, "
        "permutation, sequence [required]",
        "bad.yaml:4: genes[1].name: must be unique within the DNA (same as genes[0].name) "
        "[unique_gene_name]",
        "broken.json:2: not valid JSON: Expecting value (column 1) [syntax]",
    ]
    assert OK.match(out.splitlines()[0])


async def test_a_missing_file_is_an_error_and_the_others_are_still_checked(
    helix_env, tmp_path
) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)
    code, out, err = await run(
        "dna", "validate", "missing.yaml", "good.yaml", "bad.yaml", env=helix_env, cwd=tmp_path
    )
    assert code == 2
    assert err == "helix dna validate: missing.yaml: cannot read: No such file or directory\n"
    assert OK.match(out.splitlines()[0])
    assert "[low_le_high]" in out


async def test_usage_errors_exit_2(helix_env, tmp_path) -> None:
    code, _, err = await run("dna", "validate", env=helix_env)
    assert code == 2
    assert "the following arguments are required: FILE" in err
    code, _, err = await run("dna", env=helix_env)
    assert code == 2
    assert "required: ACTION" in err
    code, _, err = await run("dna", "validate", str(tmp_path), env=helix_env)
    assert code == 2
    assert "no *.yaml, *.yml or *.json files" in err


async def test_files_a_library_would_not_serve_are_reported_and_exit_1(helix_env, tmp_path) -> None:
    # Good DNAs, but a generator would skip these files: validate says so, as ListDnas does.
    (tmp_path / "Upper.yaml").write_text(GOOD)
    (tmp_path / "sphere.txt").write_text(GOOD)
    (tmp_path / "good.yaml").write_text(GOOD)
    code, out, err = await run(
        "dna", "validate", "Upper.yaml", "sphere.txt", "good.yaml", env=helix_env, cwd=tmp_path
    )
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[:2] == [
        'Upper.yaml: the name without its extension, "Upper", is not a DNA id '
        "([a-z][a-z0-9-]{0,62}): a DNA library does not serve it; rename the file [file_name]",
        "sphere.txt: the name does not end in .yaml, .yml or .json: a DNA library does not "
        "serve it [file_name]",
    ]
    assert OK.match(lines[2])


async def test_a_directory_is_checked_as_a_library_serves_it(helix_env, tmp_path) -> None:
    library = tmp_path / "dnas"
    library.mkdir()
    (library / "good.yaml").write_text(GOOD)
    (library / "Upper.yaml").write_text(GOOD)
    (library / ".hidden.yaml").write_text(BAD)  # neither served nor checked
    (library / "notes.txt").write_text("not a DNA")  # not a DNA file: not checked
    secret = tmp_path / "secret.hs256"
    secret.write_text("3f" * 32)
    (library / "key.yaml").symlink_to(secret)
    code, out, err = await run("dna", "validate", str(library), env=helix_env)
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert lines[0].startswith(f"{library / 'Upper.yaml'}: the name without its extension")
    assert lines[0].endswith("[file_name]")
    assert OK.match(lines[1])
    assert lines[2] == (
        f"{library / 'key.yaml'}: the file is a symbolic link to a file outside the library "
        "directory: it is not read (copy the DNA into the directory, or link within it) "
        "[outside_library]"
    )
    assert "3f3f" not in out


# --- dna list -----------------------------------------------------------------------------


def document(name: str, **fields: object) -> generator_pb2.DnaDocument:
    return json_format.ParseDict({"name": name, **fields}, generator_pb2.DnaDocument())


DOCUMENTS = [
    document(
        "dnas/broken",
        source="broken.yaml",
        valid=False,
        dna={"genes": [{"name": "x", "real": {"low": 2, "high": 1}}]},
        violations=[
            {
                "file": "broken.yaml",
                "field_path": "genes[0].real.low",
                "rule": "low_le_high",
                "description": "must be <= high",
                "line": 2,
            }
        ],
    ),
    document(
        "dnas/sphere",
        source="sphere.yaml",
        valid=True,
        fingerprint="ab" * 32,
        dna={"genes": [{"name": "x", "real": {"low": -1, "high": 1}}], "strategy": {"alpha": {}}},
    ),
    document(
        "dnas/tsp",
        source="tsp.yml",
        valid=True,
        fingerprint="cd" * 32,
        dna={"genes": [{"name": "t", "permutation": {"size": 52}}], "strategy": {"random": {}}},
    ),
]


def test_format_table_aligns_columns_and_lists_the_violations() -> None:
    assert format_table(DOCUMENTS).splitlines() == [
        "NAME         VALID   GENES  STRATEGY  FINGERPRINT   SOURCE",
        "dnas/broken  no (1)  1      alpha     -             broken.yaml",
        "dnas/sphere  yes     1      alpha     abababababab  sphere.yaml",
        "dnas/tsp     yes     1      random    cdcdcdcdcdcd  tsp.yml",
        "",
        "broken.yaml:2: genes[0].real.low: must be <= high [low_le_high]",
    ]


def test_dna_list_takes_the_client_flags() -> None:
    args = _build_parser().parse_args(
        ["dna", "list", "--address", "gen:50051", "--token", "t", "--json", "--timeout", "3s"]
    )
    assert (args.address, args.token, args.json, args.timeout) == ("gen:50051", "t", True, "3s")
    assert _build_parser().parse_args(["dna", "list"]).json is False
    with pytest.raises(SystemExit):
        _build_parser().parse_args(["dna", "list", "--page-size", "3"])


class FakeGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    """ListDnas over DOCUMENTS, two per page, recording the requests and their tokens."""

    def __init__(self, fail: bool = False, skipped: int = 0) -> None:
        self.requests: list[generator_pb2.ListDnasRequest] = []
        self.tokens: list[str] = []
        self.fail = fail
        self.skipped = skipped  # files skipped, two of them named on the first page

    async def ListDnas(self, request, context):
        self.requests.append(request)
        self.tokens.append(dict(context.invocation_metadata()).get("authorization", ""))
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "library unavailable")
        start = int(request.page_token or 0)
        following = start + 2 if start + 2 < len(DOCUMENTS) else 0
        response = generator_pb2.ListDnasResponse(
            dnas=DOCUMENTS[start : start + 2], next_page_token=str(following or "")
        )
        if not request.page_token and self.skipped:
            response.total_skipped = self.skipped
            response.skipped.add(file="Upper.yaml", rule="file_name", description="bad name")
            response.skipped.add(file="sub.yaml", rule="unreadable", description="a directory")
        return response


async def serve(start_server, fake: FakeGenerator) -> str:
    def add(server: grpc.aio.Server) -> None:
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(fake, server)

    server = await start_server([ServiceBinding("helix.v1.GeneratorService", add)])
    return server.address


@pytest.mark.parametrize("as_json", [False, True])
async def test_dna_list_prints_every_page(start_server, capsys, as_json) -> None:
    fake = FakeGenerator()  # type: ignore[abstract]
    address = await serve(start_server, fake)
    flags = ["dna", "list", "--address", address, "--token", "secret-token"]
    args = _build_parser().parse_args(flags + (["--json"] if as_json else []))
    assert await list_dnas(args) == 0
    assert [r.page_token for r in fake.requests] == ["", "2"]
    assert {r.page_size for r in fake.requests} == {1000}
    assert fake.tokens == ["Bearer secret-token"] * 2
    out = capsys.readouterr().out
    if as_json:
        parsed = [json.loads(line) for line in out.splitlines()]
        assert [d["name"] for d in parsed] == ["dnas/broken", "dnas/sphere", "dnas/tsp"]
        assert parsed[0]["violations"][0]["fieldPath"] == "genes[0].real.low"  # lowerCamelCase
    else:
        assert out == format_table(DOCUMENTS) + "\n"


async def test_dna_list_reports_a_server_error(start_server, capsys) -> None:
    address = await serve(start_server, FakeGenerator(fail=True))  # type: ignore[abstract]
    args = _build_parser().parse_args(["dna", "list", "--address", address, "--token", "t"])
    assert await list_dnas(args) == 1
    assert "error: UNAVAILABLE: library unavailable" in capsys.readouterr().err


@pytest.mark.parametrize("as_json", [False, True])
async def test_dna_list_names_the_files_the_library_skips(start_server, capsys, as_json) -> None:
    address = await serve(start_server, FakeGenerator(skipped=3))  # type: ignore[abstract]
    flags = ["dna", "list", "--address", address, "--token", "t"]
    args = _build_parser().parse_args(flags + (["--json"] if as_json else []))
    assert await list_dnas(args) == 0
    skipped = [
        "Upper.yaml: not served: bad name [file_name]",
        "sub.yaml: not served: a directory [unreadable]",
        "… and 1 more files not served",
    ]
    out, err = capsys.readouterr()
    if as_json:  # stdout stays one JSON document a line
        assert len([json.loads(line) for line in out.splitlines()]) == 3
        assert err.splitlines() == skipped
    else:
        assert out.splitlines() == [*format_table(DOCUMENTS).splitlines(), "", *skipped]
