"""HTML built by functions that escape every text they are given.

`tag("td", name)` escapes `name`; only `Html` values (what these functions return) pass
through unescaped, so user-controlled text (names, labels, descriptions, violation texts,
metric keys) cannot become markup however it is combined.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

Child = object  # Html, str, numbers, None (skipped) or an iterable of those


class Html(str):
    """Markup that is already safe: built here, never from a caller's text."""

    __slots__ = ()


def escape(value: object) -> Html:
    """`value` as text: &, <, >, " and ' escaped."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(str(value), quote=True))


def _children(children: Iterable[Child]) -> Iterable[str]:
    for child in children:
        if child is None or child is False:
            continue
        if isinstance(child, str):
            yield escape(child)
        elif isinstance(child, Iterable):
            yield from _children(child)
        else:
            yield escape(child)


def join(*children: Child) -> Html:
    """The children side by side, each escaped unless it is `Html`."""
    return Html("".join(_children(children)))


_VOID = frozenset({"br", "hr", "img", "input", "link", "meta"})


def tag(element: str, /, *children: Child, **attrs: object) -> Html:
    """`<element attrs>children</element>`. Attribute names: a trailing `_` is dropped (`class_`)
    and `_` becomes `-` (`data_run`); None and False leave the attribute out, True writes
    it bare; values are escaped."""
    parts = [element]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        parts.append(attr if value is True else f'{attr}="{escape(value)}"')
    opening = f"<{' '.join(parts)}>"
    if element in _VOID:
        return Html(opening)
    return Html(f"{opening}{join(*children)}</{element}>")
