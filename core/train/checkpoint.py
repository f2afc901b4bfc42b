"""Training checkpoints: plain dicts of tensors and primitives, written atomically.

They load with ``torch.load(weights_only=True)`` (``vlir.core.io.load_checkpoint``): random
number generator states are stored as tensors and lists, never as pickled objects.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import CheckpointError, atomic_path, load_checkpoint

FORMAT = "vlir-train"
VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")


# -- random number generators ------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python ``random`` states as tensors and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": list(internal),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(x) for x in p["internal"]), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), i)


# -- files -------------------------------------------------------------------------------------
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


def load(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``) and check its format."""
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vlir training checkpoint (no format: {FORMAT})")
    if int(obj.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {obj['version']} is newer than this "
                              f"vlir reads ({VERSION}); upgrade vlir")
    return obj


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
