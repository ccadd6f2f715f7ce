"""Agent labels and label selectors (Kubernetes style): checks, parsing and matching.

Labels live on agents only, so this is the registry's; the CLI and the client library
parse selectors with it too. Pure: no grpc, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from helix.common import rules
from helix.common.errors import FieldViolation
from helix.common.validation import Violations, check_repeated_len, key, matches, show

LABEL_NAME_PATTERN = "[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
DNS_SUBDOMAIN_PATTERN = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
MAX_LABELS = 64
MAX_LABEL_NAME_LEN = 63
MAX_LABEL_PREFIX_LEN = 253
MAX_LABEL_SELECTOR_LEN = 1024


def _label_key_problem(label_key: str) -> str | None:
    """Why `label_key` is not a Kubernetes-style label key, or None if it is one."""
    prefix, slash, name = label_key.rpartition("/")
    if slash:
        if not prefix or len(prefix) > MAX_LABEL_PREFIX_LEN or "/" in prefix:
            return (
                f"key prefix must be a DNS subdomain of at most {MAX_LABEL_PREFIX_LEN} "
                "characters, followed by one /"
            )
        if not matches(DNS_SUBDOMAIN_PATTERN, prefix):
            return f"key prefix must match {DNS_SUBDOMAIN_PATTERN}"
    if not name:
        return "key name must not be empty"
    if len(name) > MAX_LABEL_NAME_LEN:
        return f"key name must be at most {MAX_LABEL_NAME_LEN} characters"
    if not matches(LABEL_NAME_PATTERN, name):
        return f"key name must match {LABEL_NAME_PATTERN}"
    return None


def _label_value_problem(value: str) -> str | None:
    """Why `value` is not a label value, or None if it is one (empty is fine)."""
    if len(value) > MAX_LABEL_NAME_LEN:
        return f"value must be at most {MAX_LABEL_NAME_LEN} characters"
    if value and not matches(LABEL_NAME_PATTERN, value):
        return f"value must be empty or match {LABEL_NAME_PATTERN}"
    return None


def check_labels(labels: Mapping[str, str], path: str, max_entries: int = MAX_LABELS) -> Violations:
    """Kubernetes-style labels: at most `max_entries`, valid keys and values.

    Over the cap, only the first `max_entries` keys (in sorted order) are inspected.
    """
    found = check_repeated_len(labels, path, max_entries)
    for label_key in sorted(labels)[:max_entries]:
        for problem in (_label_key_problem(label_key), _label_value_problem(labels[label_key])):
            if problem is not None:
                found.append(FieldViolation(key(path, label_key), problem, rules.LABEL))
    return found


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One requirement of an equality-based label selector.

    `op` is one of "=", "!=", "exists", "!exists"; `value` is empty for the last two.
    """

    key: str
    op: str
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label map satisfies this requirement."""
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


def _parse_requirement(text: str) -> LabelRequirement | str:
    """One requirement, or a description of what is wrong with it."""
    token = text.strip()
    if not token:
        return "has an empty requirement (stray comma?)"
    for op, name in (("!=", "!="), ("==", "="), ("=", "=")):
        if op in token:
            left, _, right = token.partition(op)
            requirement = LabelRequirement(left.strip(), name, right.strip())
            break
    else:
        if token.startswith("!"):
            requirement = LabelRequirement(token[1:].strip(), "!exists")
        else:
            requirement = LabelRequirement(token, "exists")
    problem = _label_key_problem(requirement.key) or _label_value_problem(requirement.value)
    if problem is not None:
        return f"requirement {show(token)}: {problem}"
    return requirement


def parse_label_selector(selector: str) -> tuple[list[LabelRequirement], list[str]]:
    """Parse `k=v,k==v,k!=v,k,!k` into requirements plus a description of each bad one."""
    requirements: list[LabelRequirement] = []
    problems: list[str] = []
    if not selector.strip():
        return requirements, problems
    for part in selector.split(","):
        parsed = _parse_requirement(part)
        if isinstance(parsed, str):
            problems.append(parsed)
        else:
            requirements.append(parsed)
    return requirements, problems


def check_label_selector(
    selector: str, path: str, max_len: int = MAX_LABEL_SELECTOR_LEN
) -> Violations:
    """An equality-based Kubernetes label selector of at most `max_len` characters."""
    if len(selector) > max_len:
        return [FieldViolation(path, f"must be at most {max_len} characters", rules.TOO_LONG)]
    _, problems = parse_label_selector(selector)
    return [FieldViolation(path, problem, rules.SELECTOR) for problem in problems]
