"""Camera shake: blur along random motion trajectories."""
from __future__ import annotations

import torch
from vlir.core.components import Degradation

from ._common import NonNegativeRange, PixelRange, as_float, filter_per_image, finish, odd, randn, span, uniform


def trajectory_kernels(length: torch.Tensor, curl: torch.Tensor, size: int, generator=None,
                       points: int = 64) -> torch.Tensor:
    """Kernels [n, size, size] (sum 1) of random camera paths, after Boracchi and Foi (2012):
    a path of ``points`` steps whose direction turns by N(0, ``curl``) radians per step, scaled to
    ``length`` pixels end to end at most, centred, and splatted bilinearly onto the kernel grid."""
    n = length.shape[0]
    turn = randn((n, points), generator).double() * curl.double()[:, None]
    heading = (randn((n, 1), generator).double() * 3.0) + turn.cumsum(1)
    path = torch.stack([heading.cos(), heading.sin()], -1).cumsum(1)  # [n, points, 2]
    path = path - path.mean(1, keepdim=True)
    extent = (path.amax(1) - path.amin(1)).amax(-1).clamp_min(1e-6)  # [n]
    path = path * (length.double().clamp_min(1.0) / extent)[:, None, None] + (size - 1) / 2
    k = torch.zeros(n, size * size, dtype=torch.float64)
    x0, y0 = path[..., 0].floor(), path[..., 1].floor()
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = (x0 + dx).clamp(0, size - 1), (y0 + dy).clamp(0, size - 1)
            wgt = (1 - (path[..., 0] - x0 - dx).abs()) * (1 - (path[..., 1] - y0 - dy).abs())
            k.scatter_add_(1, (yi * size + xi).long(), wgt.clamp_min(0))
    k = k.reshape(n, size, size)
    return (k / k.sum(dim=(1, 2), keepdim=True)).float()


class Shake(Degradation):
    """Motion blur of a shaking hand-held camera: a random curved trajectory per image, of
    ``length`` pixels (extent) and ``curl`` (radians of random turn per step; 0 is a straight line)."""

    label = "motion-blurry"

    class Params(Degradation.Params):
        length: PixelRange = (5.0, 25.0)
        curl: NonNegativeRange = (0.05, 0.4)

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "shake")
        n = x.shape[0]
        length = uniform(self.params.length, n, generator)
        curl = uniform(self.params.curl, n, generator)
        k = trajectory_kernels(length, curl, odd(span(self.params.length)[1] + 3), generator)
        return finish(filter_per_image(x, k), dtype)
