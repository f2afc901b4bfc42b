"""Synthetic rain streaks."""
from __future__ import annotations

import torch
from pydantic import Field

from vlir.core.components import Degradation

from ._common import (FloatRange, PixelRange, UnitRange, as_float, filter_per_image, finish, gaussian_kernels,
                      line_kernels, odd, rand, span, uniform)


class Rain(Degradation):
    """Sparse random drops smeared into streaks along one direction, then screen-blended.

    Per image: ``density`` (drops per pixel), streak ``length`` (pixels), ``angle`` (degrees from
    vertical) and ``intensity`` (peak brightness of a streak). Streaks are grey and slightly
    softened (Gaussian, ``width`` pixels); blending is ``1 - (1 - img) (1 - streaks)``.
    """

    label = "rainy"
    symmetry = "flips"  # streaks near vertical: a quarter turn would make them horizontal

    class Params(Degradation.Params):
        density: UnitRange = (0.002, 0.008)
        length: PixelRange = (10.0, 30.0)
        angle: FloatRange = (-20.0, 20.0)
        intensity: UnitRange = (0.4, 0.9)
        width: float = Field(0.6, ge=0.0)  # 0: no softening

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "rain")
        n, _, h, w = x.shape
        density = uniform(self.params.density, n, generator).float()[:, None, None, None]
        length = uniform(self.params.length, n, generator).clamp_min(1.0)
        angle = 90.0 + uniform(self.params.angle, n, generator)
        intensity = uniform(self.params.intensity, n, generator).float()[:, None, None, None]
        u = rand((n, 1, h, w), generator)
        bright = rand((n, 1, h, w), generator)
        drops = (u < density).float() * (0.5 + 0.5 * bright)
        streaks = filter_per_image(drops, line_kernels(length, angle, odd(span(self.params.length)[1] + 2),
                                                       normalize=False))
        if self.params.width > 0:
            streaks = filter_per_image(streaks, gaussian_kernels(torch.full((n,), self.params.width), 3))
        streaks = (streaks * intensity).clamp(0, 1).to(x.device)
        return finish(1 - (1 - x) * (1 - streaks), dtype)
