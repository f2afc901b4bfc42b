"""Error types shown to users (import-light: no torch, no pydantic)."""
from __future__ import annotations


class UserError(Exception):
    """A mistake of the user (an option, a file, a spec), not a bug: ``vlir`` prints its message as
    one line (``vlir COMMAND: error: ...``) and exits with status 2. Subclass it for such errors."""


class SpecError(ValueError):
    """A spec with one or more errors, each with its YAML path."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "spec"):
        self.errors = errors
        self.source = source
        lines = "\n".join(f"  {path}: {msg}" if path else f"  {msg}" for path, msg in errors)
        n = len(errors)
        super().__init__(f"{source}: {n} error{'s' if n != 1 else ''}\n{lines}")
