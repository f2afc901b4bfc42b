"""Additive white Gaussian noise."""
from __future__ import annotations

import torch

from vlir.core.components import Degradation

from ._common import NonNegativeRange, as_float, finish, randn, uniform


class GaussianNoise(Degradation):
    """Add N(0, sigma^2) noise per pixel and channel; ``sigma`` on the 0-255 scale, one per image."""

    label = "noisy"

    class Params(Degradation.Params):
        sigma: NonNegativeRange = (15.0, 50.0)

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "noise")
        sigma = uniform(self.params.sigma, x.shape[0], generator).float().to(x.device) / 255.0
        noise = randn(x.shape, generator, x.device)
        return finish(x + sigma[:, None, None, None] * noise, dtype)
