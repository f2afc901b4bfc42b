"""A ~20-line third-party vlir backbone: residual conv stack with optional FiLM conditioning."""
import torch
from torch import nn

from vlir.core import Backbone


class TinyRes(Backbone):
    class Params(Backbone.Params):
        width: int = 16
        depth: int = 2
        cond_dim: int | None = None  # degradation-vector size; set by vlir when a perceiver feeds it

    presets = {"wide": {"width": 32}}

    @classmethod
    def condition_params(cls, vector_dim, token_dim):
        return {"cond_dim": vector_dim}

    def __init__(self, params=None, **overrides):
        super().__init__(params, **overrides)
        p = self.params
        self.head = nn.Conv2d(3, p.width, 3, padding=1)
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(p.width, p.width, 3, padding=1), nn.GELU())
                                    for _ in range(p.depth)])
        self.tail = nn.Conv2d(p.width, 3, 3, padding=1)
        self.film = nn.Linear(p.cond_dim, 2 * p.width) if p.cond_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight), nn.init.zeros_(self.film.bias)

    def forward(self, lq, cond=None):
        x = self.head(lq)
        if self.film is not None and cond is not None and cond.vector is not None:
            scale, shift = self.film(cond.vector)[:, :, None, None].chunk(2, dim=1)
            x = x * (1 + scale) + shift
        return lq + self.tail(self.body(x))
