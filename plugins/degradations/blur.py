"""Isotropic Gaussian blur."""
from __future__ import annotations

import torch
from pydantic import field_validator

from vlir.core.components import Degradation

from ._common import PositiveRange, as_float, filter_per_image, finish, gaussian_kernels, uniform


class GaussianBlur(Degradation):
    """Blur with an isotropic Gaussian kernel, ``sigma`` (pixels) drawn per image.

    The kernel equals BasicSR's ``bivariate_Gaussian(kernel_size, sigma, sigma, 0, isotropic=True)``;
    borders are reflected.
    """

    label = "blurry"

    class Params(Degradation.Params):
        sigma: PositiveRange = (1.0, 3.0)
        kernel_size: int = 21

        @field_validator("kernel_size")
        @classmethod
        def _odd(cls, v: int) -> int:
            if v < 1 or v % 2 == 0:
                raise ValueError(f"kernel_size must be a positive odd number, got {v}")
            return v

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "blur")
        sigma = uniform(self.params.sigma, x.shape[0], generator)
        k = gaussian_kernels(sigma, self.params.kernel_size)
        return finish(filter_per_image(x, k), dtype)
