"""A mixture of restoration experts routed by a perceiver (the built-in default model's backbone).

``experts`` copies of one registered backbone (``expert`` + ``expert_params``), one per
degradation class; classes listed in ``identity`` get none (their images pass unchanged, as a
"clean" class should). The conditioning vector is read as class probabilities (spec:
``condition: {vector: probs}``): ``hard`` routing sends each image through its most likely
expert only (one network's cost per image, in training too), ``soft`` mixes every expert's
output by the probabilities. Without a vector the experts' outputs are averaged. ``overrides`` and
``identity`` name classes by their words (``classes``, the routing perceiver's class words, wired
from the spec like ``experts``).

Small blind all-in-one models confuse tasks; knowing the degradation is worth several dB
(see the reference notes). Routing by an accurate perceiver gives each expert one task.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from vlir.core import Backbone, Conditioning


MAX_EXPERTS = 128  # a bound against typos (100000 experts would exhaust memory before any error)


def _position_keys(value: Any) -> Any:
    """YAML and JSON keep a class position as the text '1': read it back as the number."""
    if isinstance(value, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in value.items()}
    if isinstance(value, list):
        return [int(k) if isinstance(k, str) and k.isdigit() else k for k in value]
    return value


class Experts(Backbone):
    class Params(Backbone.Params):
        experts: int = Field(6, ge=1, le=MAX_EXPERTS, description="number of experts = degradation classes of the perceiver")
        classes: list[str] = Field(
            default_factory=list, description="class words of the routing perceiver, in order (wired from the "
                                              "spec's perceiver with condition: {vector: probs}); overrides and "
                                              "identity name classes by these words")
        expert: str = Field("nafnet", description="registered backbone used for every expert")
        expert_params: dict[str, Any] = Field(default_factory=dict, description="params of each expert")
        overrides: dict[str | int, dict[str, Any]] = Field(
            default_factory=dict, description="params merged over expert_params for some classes, by class word, "
                                              "e.g. {jpeg-compressed: {width: 32}}: a larger JPEG expert "
                                              "(a number is a class position, as older specs wrote)")
        identity: list[str | int] = Field(
            default_factory=list, description="classes with no expert, by class word: their images pass "
                                              "through unchanged, e.g. [clean]")
        routing: Literal["hard", "soft"] = "hard"

        _positions = field_validator("overrides", "identity", mode="before")(_position_keys)

        @model_validator(mode="after")
        def _known_classes(self):
            if self.classes and len(self.classes) != self.experts:
                raise ValueError(f"experts.classes: {len(self.classes)} class words for {self.experts} experts")
            for field, keys in (("overrides", list(self.overrides)), ("identity", self.identity)):
                words = sorted(k for k in keys if isinstance(k, str) and k not in self.classes)
                if words:
                    raise ValueError(
                        f"experts.{field}: class words {words} are not classes of the routing perceiver "
                        f"{self.classes}" if self.classes else
                        f"experts.{field}: class words {words} need experts.classes (wired from a perceiver "
                        f"with condition: {{vector: probs}}); or give class positions 0..{self.experts - 1}")
                wrong = sorted(k for k in keys if isinstance(k, int) and not 0 <= k < self.experts)
                if wrong:
                    raise ValueError(f"experts.{field}: expert indices {wrong} are not in 0..{self.experts - 1}")
            both = sorted(set(self.position(k) for k in self.overrides) & set(map(self.position, self.identity)))
            if both:
                raise ValueError(f"experts: classes {both} are in both overrides and identity "
                                 "(an identity has no params)")
            if len(set(map(self.position, self.identity))) == self.experts:
                raise ValueError(f"experts.identity: all {self.experts} classes are identities; "
                                 "keep at least one expert")
            return self

        def position(self, key: str | int) -> int:
            """Class position of a class word (or of a position)."""
            return key if isinstance(key, int) else self.classes.index(key)

    multiple_of: ClassVar[int] = 1
    tile_passes: ClassVar[int] = 0

    @classmethod
    def condition_params(cls, vector_dim: int | None, token_dim: int | None) -> dict[str, Any]:
        return {"experts": vector_dim} if vector_dim else {}

    @classmethod
    def class_params(cls, class_words: list[str]) -> dict[str, Any]:
        return {"classes": list(class_words)}

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
        by_position = {p.position(k): v for k, v in p.overrides.items()}
        identity = {p.position(k) for k in p.identity}
        keys = {p.position(k): k for k in p.overrides}  # the override's key as the spec wrote it

        def expert(k: int) -> torch.nn.Module:
            # a params error names expert_params, or the override of class k that brings the key
            try:
                return registry.build("backbone", p.expert, params={**p.expert_params, **by_position.get(k, {})})
            except SpecError as e:
                def where(sub: str) -> str:
                    key = sub.removeprefix("params.")
                    top = key.split(".")[0].split("[")[0]
                    return f"overrides.{keys[k]}.{key}" if top in by_position.get(k, {}) else f"expert_params.{key}"
                raise SpecError([(where(sub), msg) for sub, msg in e.errors]) from e

        self.nets = torch.nn.ModuleList(torch.nn.Identity() if k in identity else expert(k)
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
