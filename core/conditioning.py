"""What a perceiver saw (``Perception``) and what a backbone can consume (``Conditioning``)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from .classes import QUALITY_TIERS


@dataclass
class Conditioning:
    """Inputs a backbone may use; every field is optional and backbones ignore what they can't use.

    - ``tokens``: content tokens ``[B, N, D]`` for cross-attention.
    - ``vector``: degradation vector ``[B, D]`` (FiLM, prompt modules).
    - ``guidance``: optional per-level feature maps.
    """

    tokens: torch.Tensor | None = None
    vector: torch.Tensor | None = None
    guidance: list[torch.Tensor] | None = None

    def to(self, *args, **kwargs) -> "Conditioning":
        return Conditioning(
            tokens=None if self.tokens is None else self.tokens.to(*args, **kwargs),
            vector=None if self.vector is None else self.vector.to(*args, **kwargs),
            guidance=None if self.guidance is None else [g.to(*args, **kwargs) for g in self.guidance],
        )


@dataclass
class Perception:
    """What a perceiver saw in a batch of images.

    - ``content``: clean-content embedding ``[B, D]`` or tokens ``[B, N, D]``.
    - ``degradation``: degradation embedding ``[B, D]``.
    - ``class_names`` / ``class_probs``: named degradation classes and ``[B, K]`` probabilities.
    - ``quality_probs``: ``[B, 3]`` probabilities over low / medium / high quality;
      ``quality_score``: ``[B]`` in [0, 1].
    - ``presence`` / ``severity``: a multi-label perceiver's ``[B, K]`` probability that each class
      of ``class_names`` is present (independently: an image can be dark and noisy; clean when
      none is) and its predicted severity in [0, 1]; None for single-label perceivers.
    """

    content: torch.Tensor | None = None
    degradation: torch.Tensor | None = None
    class_names: list[str] | None = None
    class_probs: torch.Tensor | None = None
    quality_probs: torch.Tensor | None = None
    quality_score: torch.Tensor | None = None
    presence: torch.Tensor | None = None
    severity: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_conditioning(self) -> Conditioning:
        tokens = self.content
        if tokens is not None and tokens.dim() == 2:
            tokens = tokens[:, None, :]
        vector = self.degradation
        if vector is None and self.quality_probs is not None:
            vector = self.quality_probs
        return Conditioning(tokens=tokens, vector=vector)

    def top(self) -> list[tuple[str, float]]:
        """(class name, probability) of the most likely degradation per image."""
        if self.class_probs is None or not self.class_names:
            return []
        p, i = self.class_probs.detach().max(dim=-1)
        return [(self.class_names[int(k)], float(v)) for v, k in zip(p, i)]

    def as_dict(self, index: int = 0) -> dict:
        """JSON-friendly summary of one image of the batch."""
        out: dict = {}
        if self.class_probs is not None and self.class_names:
            out["degradation"] = {n: round(float(p), 6) for n, p in zip(self.class_names, self.class_probs[index].detach())}
        for key in ("presence", "severity"):
            v = getattr(self, key)
            if v is not None and self.class_names:
                out[key] = {n: round(float(p), 6) for n, p in zip(self.class_names, v[index].detach())}
        if self.quality_probs is not None:
            out["quality"] = {n: round(float(p), 6) for n, p in zip(QUALITY_TIERS, self.quality_probs[index].detach())}
        if self.quality_score is not None:
            out["quality_score"] = round(float(self.quality_score[index]), 6)
        return out

    def detach(self) -> "Perception":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.detach()
            elif f.name == "extras":
                v = {k: t.detach() for k, t in v.items()}
            kw[f.name] = v
        return Perception(**kw)
