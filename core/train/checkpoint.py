"""Training checkpoints: plain dicts of tensors and primitives, written atomically.

They load with ``torch.load(weights_only=True)`` (``vlir.core.io.load_checkpoint``). A run
folder's newest checkpoint that cannot be read (a copy cut short, a full disk) is skipped for
the newest one that can (:func:`load_newest`).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from ..io import CheckpointError, atomic_path, load_checkpoint

log = logging.getLogger("vlir.train")
FORMAT = "vlir-train"
VERSION = 2  # 2: no random states (every step seeds its own streams: vlir.core.train.trainer)
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def save(state: dict[str, Any], folder: str | Path, step: int, keep: int | None = None) -> Path:
    """Write ``state`` as ``folder/step_<step>.pt`` atomically; keep the newest ``keep`` files."""
    folder = Path(folder)
    path = folder / checkpoint_name(step)
    state = {"format": FORMAT, "version": VERSION, **_cpu(state)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    if keep is not None:
        for _, old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def _reason(e: BaseException) -> str:
    """Why a file did not load, in one short clause (torch's advice to load unsafely left out)."""
    cause = e.__cause__ or e
    text = (str(cause).strip().splitlines() or [""])[0]
    if "weights only" in text.lower() or "weights_only" in text:
        return "it holds objects other than tensors and plain containers, which vlir does not load"
    text = text.split(". ")[0].rstrip(".")  # torch's first sentence; the rest is advice
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def load(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``) and check its format."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes): a write that was cut short")
    try:
        obj = load_checkpoint(path)
    except CheckpointError as e:
        if not path.is_file():
            raise
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({_reason(e)})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vlir training checkpoint (no format: {FORMAT})")
    if int(obj.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {obj['version']} is newer than this "
                              f"vlir reads ({VERSION}); upgrade vlir")
    return obj


def load_newest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file, or the newest readable one of a run folder (``run/checkpoints``) or checkpoint
    folder; unreadable newer ones are skipped with a warning. Returns (path, state)."""
    path = Path(path)
    if path.is_file():
        return path, load(path)
    for folder in (path / "checkpoints", path):
        found = list_checkpoints(folder)
        if not found:
            continue
        errors = []
        for _, p in reversed(found):
            try:
                state = load(p)
            except CheckpointError as e:
                errors.append(str(e))
                continue
            for message in errors:
                log.warning("skipping %s; resuming from %s, the newest readable checkpoint", message, p.name)
            return p, state
        raise CheckpointError(f"{folder}: no readable checkpoint:\n  " + "\n  ".join(errors))
    raise FileNotFoundError(f"{path}: no training checkpoint (step_*.pt) here or under {path / 'checkpoints'}")


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the newest one in a run folder (``run/checkpoints``) or checkpoint folder."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = latest_checkpoint(folder)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path}: no training checkpoint (step_*.pt) here or under {path / 'checkpoints'}")
