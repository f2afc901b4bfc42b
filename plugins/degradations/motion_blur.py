"""Linear motion blur."""
from __future__ import annotations

import torch

from vlir.core.components import Degradation

from ._common import FloatRange, PixelRange, as_float, filter_per_image, finish, line_kernels, odd, span, uniform


class MotionBlur(Degradation):
    """Blur along a straight line: ``length`` (pixels) and ``angle`` (degrees) drawn per image."""

    label = "motion-blurry"

    class Params(Degradation.Params):
        length: PixelRange = (5.0, 25.0)
        angle: FloatRange = (0.0, 180.0)

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "motion_blur")
        n = x.shape[0]
        length = uniform(self.params.length, n, generator).clamp_min(1.0)
        angle = uniform(self.params.angle, n, generator)
        size = odd(span(self.params.length)[1] + 2)
        k = line_kernels(length, angle, size, normalize=True)
        return finish(filter_per_image(x, k), dtype)
