"""What resuming a run checks and repairs, so that it ends as an uninterrupted run would.

- :func:`spec_changes`: the fields where the spec now differs from the checkpoint's (settings
  that cannot change the weights, such as ``train.max_steps_this_run``, are left out);
- :func:`weight_mismatches`: checkpoint tensors that do not fit the modules built now, by name;
- :func:`truncate_log`: ``log.jsonl`` without the rows written after the checkpoint (they are
  written again as the steps are redone).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from ..io import atomic_write_text

log = logging.getLogger("vlir.train")

# settings that change how a run is logged, stopped or stored, never what it computes
FREE = frozenset({"train.max_steps_this_run", "train.out", "train.log_every", "train.save_every",
                  "train.keep_checkpoints", "train.images", "data.num_workers", "versions"})


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


def _diff(old: Any, new: Any, path: str, out: list[tuple[str, str, str]]) -> None:
    if path in FREE:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k), out)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            _diff(a, b, f"{path}[{i}]", out)
    elif old != new:
        out.append((path, _short(old), _short(new)))


def spec_changes(old_yaml: str, new_yaml: str) -> list[tuple[str, str, str]]:
    """(YAML path, value then, value now) of every field that differs, in the spec's order."""
    import yaml

    out: list[tuple[str, str, str]] = []
    _diff(yaml.safe_load(old_yaml) or {}, yaml.safe_load(new_yaml) or {}, "", out)
    return out


def weight_mismatches(state: Mapping[str, Mapping[str, Any]], model: Mapping[str, Mapping[str, Any]],
                      trained: Mapping[str, set[str]]) -> list[str]:
    """One line per tensor of a checkpoint's ``components`` that does not fit the modules built now.

    ``model``: each component's ``state_dict()``; ``trained``: the parameter keys of each component
    that the trainer saves now. Reported: components and keys the model lacks, shapes that differ,
    and trained parameters the checkpoint lacks where it holds others of that component (a grown
    architecture; a component that was still frozen then is fine)."""
    lines = []
    for name, sd in state.items():
        if name not in model:
            lines.append(f"{name}: a component this spec does not build (it builds: {', '.join(model)})")
            continue
        own = model[name]
        for k, v in sd.items():
            if k not in own:
                lines.append(f"{name}.{k}: not in the model")
            elif tuple(v.shape) != tuple(own[k].shape):
                lines.append(f"{name}.{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}")
        want = trained.get(name, set())
        if any(k in want for k in sd):
            lines += [f"{name}.{k}: not in the checkpoint" for k in own if k in want and k not in sd]
    return lines


def truncate_log(path: Path, step: int) -> int:
    """Keep the rows of a ``log.jsonl`` up to ``step`` (and drop a line cut short); returns the rows dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            keep = int(row.get("step", 0)) <= step
        except (ValueError, TypeError, AttributeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        log.info("%s: dropped %d row(s) written after step %d", path, dropped, step)
    return dropped
