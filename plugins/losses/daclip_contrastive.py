"""DA-CLIP objective as a trainer loss: delegates to the perceiver's own ``objective``.

The objective (caption/content InfoNCE + degradation term) lives in the daclip perceiver,
so this loss only finds the perceiver and calls ``objective(batch)["loss"]`` on the whole
batch dict (input ``batch``: the perceiver reads ``lq``, ``caption`` and the degradation
labels / names from it).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from vlir.core.components import Loss


def find_perceiver(pipeline: Any, role: str | None, names: tuple[str, ...], owner: str) -> nn.Module:
    """The perceiver of ``pipeline`` at ``role``; with ``role`` None, the first whose registry
    name or class name is in ``names`` (the loss's ``perceiver_kinds``), else the only perceiver
    there is (a pipeline built by hand; a spec needs one of ``names`` or a role: check_wiring)."""
    ps = getattr(pipeline, "perceivers", None)
    if ps is None:
        raise TypeError(f"{owner}: input 'pipeline' ({type(pipeline).__name__}) has no 'perceivers'")
    if role is not None:
        if role not in ps:
            raise KeyError(f"{owner}: pipeline has no perceiver role {role!r}; roles: {list(ps.keys())}")
        return ps[role]
    for m in ps.values():
        if getattr(m, "name", "") in names or type(m).__name__ in names:
            return m
    if len(ps) == 1:
        return next(iter(ps.values()))
    raise ValueError(f"{owner}: no perceiver of kind {list(names)} among roles {list(ps.keys())}; "
                     f"set Params 'perceiver' to the role to use")


class DACLIPContrastive(Loss):
    """``pipeline.perceivers[role].objective(batch)["loss"]``; role default: the daclip perceiver."""

    inputs: ClassVar[tuple[str, ...]] = ("pipeline", "batch")
    perceiver_kinds: ClassVar[tuple[str, ...]] = ("daclip", "DACLIP")

    class Params(Loss.Params):
        perceiver: str | None = None  # role; default the first of perceiver_kinds (or the only perceiver)

    def forward(self, pipeline: Any, batch: Mapping[str, Any], **_) -> torch.Tensor:
        p = find_perceiver(pipeline, self.params.perceiver, self.perceiver_kinds, "daclip_contrastive")
        if not callable(getattr(p, "objective", None)):
            raise TypeError(f"daclip_contrastive: perceiver {type(p).__name__} has no objective()")
        out = p.objective(dict(batch))
        if not isinstance(out, Mapping) or "loss" not in out:
            raise ValueError(f"daclip_contrastive: {type(p).__name__}.objective() must return a dict "
                             f"with a 'loss' entry; got {type(out).__name__}"
                             + (f" with keys {list(out)}" if isinstance(out, Mapping) else ""))
        return out["loss"]
