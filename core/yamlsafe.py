"""Reading YAML that may be hostile: bounded size, nesting and alias expansion.

``yaml.safe_load`` runs no code, but a document of a few hundred bytes can still hold a billion
values through aliases of aliases ("billion laughs"): loading shares them, and the first reader that
walks the result (validation, a copy, a dump) expands them into memory without bound. A document
nested thousands of levels deep ends in a ``RecursionError``. :func:`load` first walks the parser's
event stream (flat, no recursion, nothing built), counts every value as it would be after expanding
the aliases and the nesting depth, and refuses the document before anything reads it.
"""
from __future__ import annotations

from typing import Any

from .errors import SpecError

MAX_CHARS = 4_000_000  # a spec is a few KB; its longest honest list is far below this
MAX_DEPTH = 64  # nesting levels of mappings and lists
MAX_NODES = 100_000  # values after expanding aliases (the default spec has a few hundred)


def _loader() -> type:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check(text: str, source: str = "YAML") -> None:
    """Raise :class:`SpecError` if ``text`` is too long, nested too deep or its aliases expand to
    too many values. YAML syntax errors are left to the loader (``yaml.YAMLError``)."""
    import yaml

    if len(text) > MAX_CHARS:
        raise SpecError([("", f"the file has {len(text):,} characters, more than the {MAX_CHARS:,} "
                              f"accepted for a spec")], source=source)
    try:
        _scan(yaml, text, source)
    except yaml.YAMLError as e:
        if "nesting depth" not in str(e):
            raise
        # libyaml stops flow collections at 1000 levels while reading ahead, before _scan sees them
        raise SpecError([("", f"nested more than {MAX_DEPTH} levels deep (mappings and lists)")],
                        source=source) from None


def _scan(yaml: Any, text: str, source: str) -> None:
    sizes: dict[str, int] = {}  # anchor -> values it stands for, expanded
    stack: list[list[Any]] = [[None, 0]]  # open collections: [anchor, values so far]
    for event in yaml.parse(text, Loader=_loader()):
        line = event.start_mark.line + 1 if event.start_mark else "?"
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:  # an unknown or still open anchor: the loader reports it
                continue
            n = sizes[event.anchor]
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            stack.append([event.anchor, 1])
            if len(stack) - 1 > MAX_DEPTH:
                raise SpecError([("", f"line {line}: nested more than {MAX_DEPTH} levels deep "
                                      f"(mappings and lists)")], source=source)
            continue
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, n = stack.pop()
            if anchor is not None:
                sizes[anchor] = n
        elif isinstance(event, yaml.ScalarEvent):
            n = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        else:  # stream and document events
            continue
        stack[-1][1] += n
        if stack[-1][1] > MAX_NODES:
            raise SpecError([("", f"line {line}: YAML aliases (*name) expand to more than {MAX_NODES:,} "
                                  f"values; write the values out instead of nesting aliases")], source=source)


def load(text: str, source: str = "YAML") -> Any:
    """``yaml.safe_load`` of ``text`` after :func:`check` (plain YAML only: no Python tags)."""
    import yaml

    check(text, source)
    return yaml.load(text, Loader=_loader())  # noqa: S506 - a safe loader
