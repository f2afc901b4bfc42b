"""Synthetic low light: darkening by gamma and gain, then shot and read noise."""
from __future__ import annotations

import torch

from vlir.core.components import Degradation

from ._common import FloatRange, as_float, finish, randn, uniform


class LowLight(Degradation):
    """``y = scale * x ** gamma``, then noise of variance ``shot * y + read ** 2`` (all per image)."""

    label = "low-light"

    class Params(Degradation.Params):
        gamma: FloatRange = (1.5, 2.5)
        scale: FloatRange = (0.1, 0.5)
        shot: FloatRange = (0.0, 0.01)  # signal-dependent variance per unit intensity
        read: FloatRange = (0.0, 0.01)  # signal-independent std, [0, 1] scale

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "low_light")
        n = x.shape[0]

        def draw(v):
            return uniform(v, n, generator).float().to(x.device)[:, None, None, None]

        gamma, scale, shot, read = draw(self.params.gamma), draw(self.params.scale), \
            draw(self.params.shot), draw(self.params.read)
        y = scale * x.clamp(0, 1) ** gamma
        std = (shot * y + read ** 2).sqrt()
        return finish(y + std * randn(x.shape, generator, x.device), dtype)
