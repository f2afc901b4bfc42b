"""``backbone: {type: auto, weights: FILE}``: the architecture and its sizes read from the checkpoint.

spandrel-style: every registered backbone whose module defines ``detect(state_dict) -> Params | None``
is asked in turn (vlir's own: Restormer, NAFNet, DA-CLIP's conditional UNet, in their official
layouts; a third-party backbone gets the same by defining ``detect`` next to its class). When
none recognises the file and the ``spandrel`` extra is installed, spandrel's detection is tried
(``type: spandrel``). ``auto`` is resolved while the spec is read: the spec then names the
detected backbone and its params, so a saved pipeline says exactly what it holds.
"""
from __future__ import annotations

import importlib
from typing import Any

from vlir.core.errors import SpecError
from vlir.core.io import load_checkpoint, unwrap_state_dict

AUTO = "auto"


def state_dict(path: str) -> dict[str, Any]:
    """The state dict of a checkpoint file (official wrappers and ``module.`` prefixes removed)."""
    return unwrap_state_dict(load_checkpoint(path))


def detect(sd: dict[str, Any], registry=None) -> tuple[str, dict[str, Any]] | None:
    """``(backbone name, params)`` of the first registered backbone whose ``detect`` recognises ``sd``,
    then spandrel's (when installed); None when nothing does."""
    from vlir.core.registry import get_registry

    registry = registry or get_registry()
    for entry in registry.list("backbone"):
        if entry.name == "spandrel" or not isinstance(entry.target, str):
            continue
        module = importlib.import_module(entry.target.partition(":")[0])
        found = getattr(module, "detect", None)
        params = found(sd) if callable(found) else None
        if params is not None:
            return entry.name, params.model_dump(mode="json")
    try:
        from .spandrel import Spandrel
    except ImportError:  # the spandrel extra is not installed
        return None
    params = Spandrel.detect_params(sd)
    return None if params is None else ("spandrel", params)


def resolve(comp: dict[str, Any], path: str = "backbone", registry=None) -> None:
    """Fill a spec's ``{type: auto | spandrel, weights: FILE}`` component in place from its file:
    the detected type and its params (fields the spec sets itself win)."""
    kind = comp.get("type")
    weights = comp.get("weights")
    if not weights:
        raise SpecError([(f"{path}.weights", f"type {kind} reads the architecture from a checkpoint: "
                                             "give weights: FILE")])
    if comp.get("preset"):
        raise SpecError([(f"{path}.preset", f"type {kind} takes no preset: the sizes come from {weights}")])
    try:
        sd = state_dict(str(weights))
        if kind == AUTO:
            found = detect(sd, registry)
        else:
            from .spandrel import Spandrel

            params = Spandrel.detect_params(sd)
            found = None if params is None else ("spandrel", params)
    except (ImportError, ValueError, OSError) as e:  # CheckpointError is a ValueError
        raise SpecError([(f"{path}.weights", str(e))]) from e
    if found is None:
        where = "no vlir backbone layout" + ("" if kind != AUTO else " and no spandrel architecture")
        raise SpecError([(f"{path}.weights", f"{weights}: {where} recognises this state dict "
                                             f"({len(sd)} tensors, first keys {list(sd)[:3]})")])
    name, params = found
    comp["type"] = name
    comp["params"] = {**params, **(comp.get("params") or {})}


def describe(path: str) -> dict[str, Any]:
    """What ``vlir inspect --weights FILE`` prints: the detected type and params of a checkpoint."""
    from vlir.core.io import CheckpointError

    comp = {"type": AUTO, "weights": path}
    try:
        resolve(comp)
    except SpecError as e:
        raise CheckpointError("; ".join(msg for _, msg in e.errors)) from None
    return {"type": comp["type"], "params": comp["params"]}
