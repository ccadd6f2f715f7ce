"""The oracle configuration file: every problem named by file, field, rule and line; the
config_hash; paths confined to the configuration's folder; YAML bombs refused."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from helix.oracle.config import builtin_config, parse_config, read_config

ROOT = Path(__file__).resolve().parent.parent
TSP = "oracles:\n  t:\n    kind: builtin\n    function: tsp\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    base = tmp_path / "conf"
    base.mkdir()
    shutil.copy(ROOT / "examples" / "tsp" / "berlin52.tsp", base / "berlin52.tsp")
    (base / "worker.py").write_text("print('hi')\n")
    (base / "pkg").mkdir()
    (base / "pkg" / "scoring.py").write_text("def f(g):\n    return 1.0\n")
    return base


GOOD = """\
oracles:
  sphere:
    kind: builtin
  tsp:
    kind: builtin
    params: {instance: berlin52.tsp}
    description: berlin52
  worker:
    kind: command
    argv: [python3, worker.py]
    workers: 3
    in_flight: 4
    timeout: 2s
    env: [HOME]
    limits: {cpu_seconds: 10, memory: 512MiB}
  scorer:
    kind: python
    entry_point: scoring:f
    path: pkg
    batch: true
  far:
    kind: remote
    address: 127.0.0.1:7000
    oracle: sphere
"""


def one(text: str, folder: Path) -> tuple[str, str, int]:
    check = parse_config(text, "oracles.yaml", folder)
    assert not check.valid
    assert not check.oracles
    violation = check.violations[0]
    assert violation.file == "oracles.yaml"
    return violation.field, violation.reason, violation.line


def test_a_good_configuration_is_read_with_defaults(folder: Path) -> None:
    check = parse_config(GOOD, "oracles.yaml", folder)
    assert check.valid, check.violations
    assert sorted(check.oracles) == ["far", "scorer", "sphere", "tsp", "worker"]
    worker = check.oracles["worker"]
    assert worker.capacity == 12
    assert worker.timeout == 2.0
    assert worker.cache
    assert worker.settings["limits"]["memory"] == 512 << 20
    assert worker.settings["env"] == ["HOME"]
    sphere = check.oracles["sphere"]
    assert not sphere.cache
    assert sphere.objective == 1
    assert sphere.description
    assert check.oracles["far"].settings == {"address": "127.0.0.1:7000", "oracle": "sphere"}
    assert all(len(s.config_hash) == 64 for s in check.oracles.values())


@pytest.mark.parametrize(
    ("text", "field", "rule", "line"),
    [
        ("oracles:\n  x:\n    kind: magic\n", "oracles.x.kind", "enum", 3),
        ("oracles:\n  x:\n    function: sphere\n", "oracles.x.kind", "required", 2),
        ("oracles:\n  Bad_Name:\n    kind: builtin\n", "oracles.Bad_Name", "pattern", 2),
        (
            "oracles:\n  sphere:\n    kind: builtin\n    colour: red\n",
            "oracles.sphere.colour",
            "unknown_field",
            4,
        ),
        (
            "oracles:\n  sphere:\n    kind: builtin\n    capacity: 0\n",
            "oracles.sphere.capacity",
            "range",
            4,
        ),
        (
            "oracles:\n  sphere:\n    kind: builtin\n    timeout: soon\n",
            "oracles.sphere.timeout",
            "type",
            4,
        ),
        (
            "oracles:\n  x:\n    kind: builtin\n    function: cube\n",
            "oracles.x.function",
            "enum",
            4,
        ),
        (
            TSP + "    params: {instance: ../x.tsp}\n",
            "oracles.t.params.instance",
            "outside_base",
            5,
        ),
        (
            TSP + "    params: {instance: /etc/passwd}\n",
            "oracles.t.params.instance",
            "outside_base",
            5,
        ),
        (
            TSP + "    params: {instance: worker.py}\n",
            "oracles.t.params.instance",
            "invalid_instance",
            5,
        ),
        (
            "oracles:\n  c:\n    kind: command\n    argv: python3 worker.py\n",
            "oracles.c.argv",
            "type",
            4,
        ),
        ("oracles:\n  c:\n    kind: command\n", "oracles.c.argv", "required", 2),
        (
            'oracles:\n  c:\n    kind: command\n    argv: [python3]\n    env: ["A B"]\n',
            "oracles.c.env[0]",
            "pattern",
            5,
        ),
        (
            "oracles:\n  p:\n    kind: python\n    entry_point: nocolon\n",
            "oracles.p.entry_point",
            "pattern",
            4,
        ),
        (
            "oracles:\n  p:\n    kind: python\n    entry_point: a:b\n    path: ../..\n",
            "oracles.p.path",
            "outside_base",
            5,
        ),
        (
            "oracles:\n  r:\n    kind: remote\n    address: nowhere\n",
            "oracles.r.address",
            "endpoint",
            4,
        ),
        (
            "oracles:\n  s:\n    kind: builtin\n    function: sphere\n  s:\n    kind: builtin\n",
            "oracles.s",
            "duplicate_key",
            5,
        ),
        ("oracles: [1, 2]\n", "oracles", "type", 1),
        ("oracles:\n  sphere: {kind: builtin\n", "", "syntax", 3),
        ("", "", "empty", 1),
        ("nothing: here\n", "oracles", "required", 1),
    ],
)
def test_each_problem_names_field_rule_and_line(
    folder: Path, text: str, field: str, rule: str, line: int
) -> None:
    assert one(text, folder) == (field, rule, line)


def test_a_merge_bomb_is_refused_at_once(folder: Path) -> None:
    lines = ["a0: &a0 {kind: builtin}"]
    for i in range(1, 25):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    lines.append("oracles:\n  sphere:\n    <<: *a0\n    x: *a24")
    started = time.perf_counter()
    check = parse_config("\n".join(lines) + "\n", "bomb.yaml", folder)
    assert time.perf_counter() - started < 5
    assert [v.reason for v in check.violations] == ["too_large"]


def test_a_symlink_out_of_the_folder_is_refused(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.tsp"
    shutil.copy(folder / "berlin52.tsp", outside)
    (folder / "link.tsp").symlink_to(outside)
    text = TSP + "    params: {instance: link.tsp}\n"
    assert one(text, folder)[1] == "outside_base"


def test_the_hash_is_the_normalised_configuration_and_its_files(
    folder: Path, tmp_path: Path
) -> None:
    base = parse_config(GOOD, "oracles.yaml", folder).oracles
    # Defaults written out, keys reordered, another folder with the same files: same hash.
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    spelled = GOOD.replace(
        "  sphere:\n    kind: builtin\n",
        "  sphere:\n    cache: false\n    kind: builtin\n    timeout: 10\n",
    )
    again = parse_config(spelled, "x.yaml", other).oracles
    assert {k: v.config_hash for k, v in base.items()} == {
        k: v.config_hash for k, v in again.items()
    }
    # An edited instance file or worker script changes the hash of its oracle only.
    (other / "worker.py").write_text("print('changed')\n")
    with (other / "berlin52.tsp").open("a") as f:
        f.write("\n")
    changed = parse_config(GOOD, "x.yaml", other).oracles
    assert changed["worker"].config_hash != base["worker"].config_hash
    assert changed["tsp"].config_hash != base["tsp"].config_hash
    assert changed["sphere"].config_hash == base["sphere"].config_hash


def test_files_that_are_too_big_or_not_text_are_refused(folder: Path) -> None:
    assert read_config(folder / "x.yaml", b"\xff\xfe").violations[0].reason == "encoding"
    big = read_config(folder / "x.yaml", b"#" * (2 << 20))
    assert big.violations[0].reason == "file_too_large"


def test_the_builtin_default_hosts_every_builtin(folder: Path) -> None:
    check = parse_config(builtin_config(folder), "<builtin>", folder)
    assert check.valid, check.violations
    assert {"sphere", "rastrigin", "onemax", "trap", "tsp"} <= set(check.oracles)


def test_long_arguments_and_folders_in_argv_are_arguments_not_files(folder: Path) -> None:
    script = "import sys; print(sys.argv)  # " + "x" * 400  # longer than a file name may be
    text = f"oracles:\n  c:\n    kind: command\n    argv: [python3, -c, {script!r}, pkg, .]\n"
    check = parse_config(text, "oracles.yaml", folder)
    assert check.valid, check.violations
    assert check.oracles["c"].settings["files"] == {}
