"""One error vocabulary: every ErrorInfo reason and rule code Helix sends is catalogued.

Static checks read the source of every service (a reason or rule written as a literal
must be catalogued; reasons must be named through `helix.common.reasons`); docs/errors.md
must hold exactly the generated tables; and `catalogue_guard` (tests/conftest.py) checks
every error a server of the test suite actually sends.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from helix.common import errors, reasons, rules
from helix.common.status import status_code_for

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "services" / "helix"
DOC = ROOT / "docs" / "errors.md"
ERROR_CLASSES = {
    name
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, errors.HelixError)
}

# The default reasons are the canonical code names, which also appear as code names.
DEFAULT_REASONS = {getattr(errors, name).default_reason for name in ERROR_CLASSES}


def sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SERVICES.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"


def is_violation_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name == "FieldViolation"


def test_docs_errors_md_holds_the_generated_tables() -> None:
    text = DOC.read_text()
    assert reasons.render_errors_doc(text) == text, (
        "docs/errors.md is out of date with helix.common.reasons / helix.common.rules: "
        "run `make errors-doc` and commit the result"
    )


def test_every_catalogued_reason_is_upper_snake_case_with_a_known_error_class() -> None:
    for name, entry in reasons.CATALOGUE.items():
        assert name == entry.name
        assert name.isupper(), name
        assert " " not in name, name
        assert issubclass(entry.error, errors.HelixError), name
        assert entry.meaning.endswith("."), f"{name}: say the meaning in a sentence"
        # The code comes from the one status table: the catalogue cannot contradict it.
        assert status_code_for(entry.error("")).name


def test_every_error_class_default_reason_is_catalogued() -> None:
    for name in ERROR_CLASSES:
        cls = getattr(errors, name)
        assert cls.default_reason in reasons.CATALOGUE, f"errors.{name}.default_reason"


def test_every_rule_code_is_lower_snake_case() -> None:
    for code, meaning in rules.RULES.items():
        assert code == code.lower(), code
        assert code.replace("_", "").isalpha(), code
        assert meaning, code


def test_services_name_reasons_through_the_catalogue() -> None:
    """A reason is `reasons.NAME` (checked by mypy to exist); a literal is refused, so
    a typo or a new reason cannot bypass the catalogue."""
    problems = []
    for path, tree in sources():
        if path.name in ("reasons.py", "errors.py"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "reason":
                value = node.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    problems.append(f"{where(path, value)}: reason={value.value!r}")
                if isinstance(value, ast.Attribute) and getattr(value.value, "id", "") == (
                    "reasons"
                ):
                    assert value.attr in reasons.CATALOGUE, where(path, value)
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in reasons.CATALOGUE
                and node.value not in DEFAULT_REASONS
            ):
                problems.append(f"{where(path, node)}: the literal {node.value!r}")
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", "") == "default_reason" for t in node.targets
            ):
                value = node.value
                if isinstance(value, ast.Constant):
                    problems.append(f"{where(path, value)}: default_reason={value.value!r}")
    assert not problems, "use a constant of helix.common.reasons:\n" + "\n".join(problems)


def test_services_give_every_field_violation_a_listed_rule() -> None:
    """Each FieldViolation(...) in the code names its rule: `rules.NAME`, a variable
    holding one, or a literal that is listed."""
    problems = []
    for path, tree in sources():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and is_violation_call(node)):
                continue
            reason = node.args[2] if len(node.args) > 2 else None
            for keyword in node.keywords:
                if keyword.arg == "reason":
                    reason = keyword.value
            if reason is None:
                problems.append(f"{where(path, node)}: FieldViolation without a rule")
            elif isinstance(reason, ast.Constant) and reason.value not in rules.RULES:
                problems.append(f"{where(path, node)}: unlisted rule {reason.value!r}")
            elif (
                isinstance(reason, ast.Attribute)
                and getattr(reason.value, "id", "") == "rules"
                and reason.attr not in vars(rules)
            ):
                problems.append(f"{where(path, node)}: rules.{reason.attr} does not exist")
    assert not problems, "\n".join(problems)


def test_services_raise_each_reason_with_its_entry_error_class() -> None:
    """`errors.X(..., reason=reasons.Y)` in the code: X is Y's entry's class (or a subclass),
    so the code a reason is sent with is the catalogue's."""
    problems = []
    for path, tree in sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            cls = getattr(errors, name, None)
            if not (isinstance(cls, type) and issubclass(cls, errors.HelixError)):
                continue
            for keyword in node.keywords:
                value = keyword.value
                if keyword.arg == "reason" and isinstance(value, ast.Attribute):
                    entry = reasons.CATALOGUE[value.attr]
                    if not issubclass(cls, entry.error):
                        found = f"{name}, catalogued as {entry.error.__name__}"
                        problems.append(f"{where(path, node)}: {value.attr} raised as {found}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("entry", list(reasons.CATALOGUE.values()), ids=lambda e: e.name)
def test_each_catalogued_reason_is_sent_somewhere(entry: reasons.Reason) -> None:
    """The catalogue lists what Helix sends, not what it might: a reason no code names
    is stale (the default reasons of the error classes count as named)."""
    if entry.name in DEFAULT_REASONS:
        return
    names = {
        node.attr
        for _, tree in sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "reasons"
    }
    assert entry.name in names, f"{entry.name} is catalogued but never sent: remove it"
