"""Error types shown to users (import-light: no torch, no pydantic)."""
from __future__ import annotations


class UserError(Exception):
    """A mistake of the user (an option, a file, a spec), not a bug: ``vlir`` prints its message as
    one line (``vlir COMMAND: error: ...``) and exits with status 2. Subclass it for such errors."""


CLIError = UserError  # the name used by commands before the error types were merged


class SpecError(UserError, ValueError):
    """A spec with one or more errors, each with its YAML path.

    ``errors`` is a list of ``(path, message)``; a plain message (``SpecError("bad")``, e.g. from a
    ``vlir_adjust_spec`` hook) is one error without a path.
    """

    def __init__(self, errors: "list[tuple[str, str]] | str", source: str = "spec"):
        if isinstance(errors, str):
            errors = [("", errors)]
        self.errors = [(str(path), str(msg)) for path, msg in errors]
        self.source = source
        lines = "\n".join(f"  {path}: {msg}" if path else f"  {msg}" for path, msg in self.errors)
        n = len(self.errors)
        super().__init__(f"{source}: {n} error{'s' if n != 1 else ''}\n{lines}")

    def __reduce__(self):  # picklable (DataLoader workers, multiprocessing)
        return type(self), (self.errors, self.source)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that every ``KeyboardInterrupt`` handler (the
    trainer's checkpoint, atomic writes' clean-up) also runs on ``kill``; ``vlir`` exits 143."""


TILE_HINT = "use --tile 512 (or smaller) to bound memory"


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is memory running out: Python's ``MemoryError``, PyTorch's CUDA/MPS "out of
    memory" or its CPU allocator's "can't allocate memory"."""
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text


def memory_message(e: BaseException) -> str:
    """One line for a run that ran out of memory, saying to use ``--tile``."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"out of memory ({first}); {TILE_HINT}"
