"""Supervised contrastive loss (SupCon, Khosla et al. 2020) on degradation embeddings.

Perceive-IR uses it (tau 0.1) to pull together the degradation embeddings of images with
the same degradation and push apart the others.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from pydantic import Field

from vlir.core.components import Loss


def supcon(emb: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """SupCon over a batch: mean over anchors that have a positive of
    ``-mean_{p in P(i)} log softmax_{a != i}(z_i . z_a / tau)[p]`` with ``z`` L2-normalised.

    Returns 0 (still attached to ``emb``) when no sample shares its label with another.
    """
    if emb.dim() != 2:
        emb = emb.flatten(1)
    labels = labels.reshape(-1).to(emb.device)
    if labels.numel() != emb.shape[0]:
        raise ValueError(f"degradation_contrastive: {emb.shape[0]} embeddings but {labels.numel()} labels")
    z = F.normalize(emb.to(torch.promote_types(emb.dtype, torch.float32)), dim=-1)
    logits = z @ z.t() / tau
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # the anchor is not in its own denominator
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return emb.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has])
    return per_anchor.mean().to(emb.dtype)


class DegradationContrastive(Loss):
    """SupCon on ``perception[role].degradation`` with the batch's degradation labels."""

    inputs: ClassVar[tuple[str, ...]] = ("perception", "degradation")
    # the perceivers that give a degradation embedding (the first perception with one is read)
    perceiver_kinds: ClassVar[tuple[str, ...]] = ("daclip", "DACLIP", "lora_caption_aligner", "LoraCaptionAligner")

    class Params(Loss.Params):
        tau: float = Field(0.1, gt=0)
        perceiver: str | None = None  # role; default the first with a degradation embedding

    def forward(self, perception: Mapping[str, Any], degradation: torch.Tensor, **_) -> torch.Tensor:
        role = self.params.perceiver
        if role is not None:
            if role not in perception:
                raise KeyError(f"degradation_contrastive: no perceiver role {role!r}; "
                               f"roles: {list(perception)}")
            p = perception[role]
            if p.degradation is None:
                raise ValueError(f"degradation_contrastive: perceiver {role!r} gives no degradation embedding")
        else:
            p = next((q for q in perception.values() if q.degradation is not None), None)
            if p is None:
                raise ValueError("degradation_contrastive: no perceiver gives a degradation embedding "
                                 f"(roles: {list(perception)})")
        if not torch.is_tensor(degradation):
            degradation = torch.as_tensor(degradation)
        return supcon(p.degradation, degradation, self.params.tau)

    def example_inputs(self, size: tuple[int, int] = (64, 64), batch: int = 2) -> dict[str, Any]:
        from vlir.core.conditioning import Perception

        g = torch.Generator().manual_seed(0)
        emb = torch.randn(batch, 16, generator=g)
        return {"perception": {"perceiver": Perception(degradation=emb)},
                "degradation": torch.arange(batch) % 2}
