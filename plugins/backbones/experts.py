"""A mixture of restoration experts routed by a perceiver (the built-in default model's backbone).

``experts`` copies of one registered backbone (``expert`` + ``expert_params``), one per
degradation class; classes listed in ``identity`` get none (their images pass unchanged, as a
"clean" class should). The conditioning vector is read as class probabilities (spec:
``condition: {vector: probs}``): ``hard`` routing sends each image through its most likely
expert only (one network's cost per image, in training too), ``soft`` mixes every expert's
output by the probabilities. Without a vector the experts' outputs are averaged.

Small blind all-in-one models confuse tasks; knowing the degradation is worth several dB
(see the reference notes). Routing by an accurate perceiver gives each expert one task.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from vlir.core import Backbone, Conditioning


MAX_EXPERTS = 128  # a bound against typos (100000 experts would exhaust memory before any error)


class Experts(Backbone):
    class Params(Backbone.Params):
        experts: int = Field(6, ge=1, le=MAX_EXPERTS, description="number of experts = degradation classes of the perceiver")
        expert: str = Field("nafnet", description="registered backbone used for every expert")
        expert_params: dict[str, Any] = Field(default_factory=dict, description="params of each expert")
        overrides: dict[int, dict[str, Any]] = Field(
            default_factory=dict, description="params merged over expert_params for some experts, by class "
                                              "index, e.g. {1: {width: 32}}: a larger expert for class 1")
        identity: list[int] = Field(
            default_factory=list, description="class indices with no expert: their images pass through unchanged, "
                                              "e.g. [6] for a perceiver's 'clean' class")
        routing: Literal["hard", "soft"] = "hard"

    multiple_of: ClassVar[int] = 1
    tile_passes: ClassVar[int] = 0

    @classmethod
    def condition_params(cls, vector_dim: int | None, token_dim: int | None) -> dict[str, Any]:
        return {"experts": vector_dim} if vector_dim else {}

    def __init__(self, params=None, registry=None, **overrides: Any):
        super().__init__(params, **overrides)
        from vlir.core.errors import SpecError

        p = self.params
        if registry is None:  # built directly, not through a registry (which passes itself)
            from vlir.core.registry import get_registry

            registry = get_registry()
        try:
            cls = registry.load("backbone", p.expert)
        except LookupError as e:
            raise SpecError([("expert", str(e))]) from e
        if getattr(cls, "diffusion", False):
            raise ValueError(f"experts: expert {p.expert!r} is a diffusion backbone; use a direct one")
        for field, keys in (("overrides", p.overrides), ("identity", p.identity)):
            wrong = sorted(k for k in keys if not 0 <= k < p.experts)
            if wrong:
                raise ValueError(f"experts.{field}: expert indices {wrong} are not in 0..{p.experts - 1}")
        both = sorted(set(p.overrides) & set(p.identity))
        if both:
            raise ValueError(f"experts: classes {both} are in both overrides and identity (an identity has no params)")
        if len(set(p.identity)) == p.experts:
            raise ValueError(f"experts.identity: all {p.experts} classes are identities; keep at least one expert")

        def expert(k: int) -> torch.nn.Module:
            # a params error names expert_params, or the override of class k that brings the key
            try:
                return registry.build("backbone", p.expert, params={**p.expert_params, **p.overrides.get(k, {})})
            except SpecError as e:
                def where(sub: str) -> str:
                    key = sub.removeprefix("params.")
                    top = key.split(".")[0].split("[")[0]
                    return f"overrides.{k}.{key}" if top in p.overrides.get(k, {}) else f"expert_params.{key}"
                raise SpecError([(where(sub), msg) for sub, msg in e.errors]) from e

        self.nets = torch.nn.ModuleList(torch.nn.Identity() if k in p.identity else expert(k)
                                        for k in range(p.experts))
        # tiling aligns to the deepest expert; a shallower one then sees a wider padded border than
        # it gives itself on a whole image, so its tiled pooling differs slightly at that border
        self.multiple_of = math.lcm(*(getattr(n, "multiple_of", 1) for n in self.nets))
        self.tile_passes = max(getattr(n, "tile_passes", 0) for n in self.nets)
        self.bf16_safe = all(getattr(n, "bf16_safe", True) for n in self.nets)  # Identity: safe

    @property
    def pad_mode(self) -> str:
        return next(n for n in self.nets if not isinstance(n, torch.nn.Identity)).pad_mode

    def weights(self, cond: Conditioning | None, batch: int) -> torch.Tensor | None:
        if cond is None or cond.vector is None:
            return None
        w = cond.vector
        if w.shape != (batch, len(self.nets)):
            raise ValueError(f"experts: expected routing probabilities of shape ({batch}, {len(self.nets)}), "
                             f"got {tuple(w.shape)}; feed class probabilities (condition: {{vector: probs}})")
        return w

    def forward(self, lq: torch.Tensor, cond: Conditioning | None = None, **kw: Any) -> torch.Tensor:
        w = self.weights(cond, lq.shape[0])
        if w is None:
            return torch.stack([net(lq) for net in self.nets]).mean(0)
        if self.params.routing == "soft":
            return sum(w[:, k, None, None, None].to(lq.dtype) * net(lq) for k, net in enumerate(self.nets))
        choice = w.argmax(dim=1)
        out = torch.empty_like(lq)
        for k in choice.unique().tolist():
            idx = (choice == k).nonzero().squeeze(1)
            out[idx] = self.nets[k](lq[idx]).to(out.dtype)
        return out

    def example_inputs(self, size: tuple[int, int] = (64, 64), batch: int = 1) -> dict[str, Any]:
        vector = torch.eye(len(self.nets))[torch.arange(batch) % len(self.nets)]
        return {"lq": torch.rand(batch, 3, *size), "cond": Conditioning(vector=vector)}
