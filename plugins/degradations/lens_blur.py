"""Optical blur: anisotropic Gaussian (a soft or astigmatic lens) and defocus discs."""
from __future__ import annotations

import math

import torch
from vlir.core.components import Degradation

from ._common import (PixelRange, Probability, anisotropic_gaussian_kernels, as_float, disc_kernels,
                      filter_per_image, finish, odd, rand, span, uniform)


class LensBlur(Degradation):
    """Per image, with probability ``defocus`` a defocus disc of ``radius`` pixels, otherwise an
    anisotropic Gaussian with standard deviations ``sigma`` (drawn per axis) turned by a random
    angle (BasicSR's ``bivariate_Gaussian``, as Real-ESRGAN's first-order blur)."""

    label = "blurry"

    class Params(Degradation.Params):
        sigma: PixelRange = (0.5, 3.5)
        radius: PixelRange = (1.0, 5.0)
        defocus: Probability = 0.3

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "lens_blur")
        n = x.shape[0]
        p = self.params
        size = odd(max(6 * span(p.sigma)[1], 2 * span(p.radius)[1] + 3))
        gauss = anisotropic_gaussian_kernels(uniform(p.sigma, n, generator), uniform(p.sigma, n, generator),
                                             uniform((0.0, math.pi), n, generator), size)
        disc = disc_kernels(uniform(p.radius, n, generator), size)
        pick = (rand((n,), generator) < p.defocus).float()[:, None, None]
        return finish(filter_per_image(x, pick * disc + (1 - pick) * gauss), dtype)
