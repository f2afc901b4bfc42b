"""Perceive-IR CLIP quality loss: ``mean(1 - p(excellent | restored))``.

The probability comes from the pipeline's quality perceiver (``quality_probs`` [B, 3] over
low / medium / high). The perceiver is run with detached copies of its parameters, so the
gradient reaches ``restored`` but never the perceiver, whether or not it is trainable elsewhere.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.func import functional_call

from vlir.core.classes import QUALITY_TIERS
from vlir.core.components import Loss

from .daclip_contrastive import find_perceiver


class CLIPQuality(Loss):
    """``mean(1 - quality_probs[:, 2])`` of the restored image through a frozen quality perceiver."""

    inputs: ClassVar[tuple[str, ...]] = ("restored", "pipeline")
    perceiver_kinds: ClassVar[tuple[str, ...]] = ("quality_perceiver", "QualityPerceiver")  # quality_probs

    class Params(Loss.Params):
        perceiver: str | None = None  # role; default the first of perceiver_kinds (or the only perceiver)

    def forward(self, restored: torch.Tensor, pipeline: Any, **_) -> torch.Tensor:
        p = find_perceiver(pipeline, self.params.perceiver, self.perceiver_kinds, "clip_quality")
        frozen = {k: v.detach() for k, v in p.named_parameters()}
        frozen.update(dict(p.named_buffers()))
        perception = functional_call(p, frozen, (restored,))
        probs = getattr(perception, "quality_probs", None)
        if probs is None or probs.dim() != 2 or probs.shape[1] != len(QUALITY_TIERS):
            raise ValueError(f"clip_quality: perceiver {type(p).__name__} must give quality_probs "
                             f"[B, {len(QUALITY_TIERS)}] ({', '.join(QUALITY_TIERS)}); got "
                             f"{None if probs is None else tuple(probs.shape)}")
        return (1.0 - probs[:, QUALITY_TIERS.index("high")]).mean()
