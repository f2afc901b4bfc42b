"""Rain streaks as the deraining datasets draw them: several layers of motion-blurred streaks."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from vlir.core.components import Degradation

from ._common import (CountRange, FloatRange, PixelRange, UnitRange, as_float, filter_per_image, finish,
                      gaussian_kernels, line_kernels, odd, rand, randint, span, uniform)


class RainStreaks(Degradation):
    """Layers of streaks in one wind direction, from light (Rain100L-like) to heavy (Rain100H-like).

    Per image: ``layers`` streak layers share a main ``angle`` (degrees from vertical), each turned
    by up to ``spread`` degrees; per layer, random drops (``density`` per pixel, brightness in
    [0.5, 1]) are drawn into lines of ``length`` pixels (motion blur of the falling drop), widened
    by a Gaussian of ``width`` pixels (keeping its energy) and scaled by ``intensity``. Layers are summed and added to the
    image by ``blend`` (``screen``: ``1 - (1 - img)(1 - rain)``; ``sum``: ``img + rain``, clipped),
    with an optional veil (the haze of dense rain) of strength ``veil`` towards grey-white.
    The presets ``light`` and ``heavy`` are in the registry.
    """

    label = "rainy"
    symmetry = "flips"  # streaks near vertical: a quarter turn would make them horizontal

    class Params(Degradation.Params):
        layers: CountRange = (1, 3)
        density: UnitRange = (0.0005, 0.004)  # drops per pixel
        length: PixelRange = (10.0, 40.0)
        width: PixelRange = (0.3, 1.2)
        angle: FloatRange = (-25.0, 25.0)
        spread: float = Field(5.0, ge=0.0)  # each layer turns by U(-spread, spread) degrees
        intensity: UnitRange = (0.3, 0.8)
        veil: UnitRange = (0.0, 0.1)
        blend: Literal["screen", "sum"] = "screen"

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "rain_streaks")
        n, _, h, w = x.shape
        p = self.params
        layers = randint(p.layers, n, generator)
        angle = uniform(p.angle, n, generator)
        veil = uniform(p.veil, n, generator).float()[:, None, None, None]
        size = odd(span(p.length)[1] + 2)
        rain = torch.zeros(n, 1, h, w)
        for layer in range(int(span(p.layers)[1])):
            on = (layers > layer).float()[:, None, None, None]
            density = uniform(p.density, n, generator).float()[:, None, None, None]
            length = uniform(p.length, n, generator).clamp_min(1.0)
            turn = uniform((-p.spread, p.spread), n, generator)
            width = uniform(p.width, n, generator).float()
            intensity = uniform(p.intensity, n, generator).float()[:, None, None, None]
            drops = (rand((n, 1, h, w), generator) < density).float() * (0.5 + 0.5 * rand((n, 1, h, w), generator))
            streaks = filter_per_image(drops, line_kernels(length, 90.0 + angle + turn, size, normalize=False))
            # widening keeps a streak's energy: wider streaks are fainter, as out-of-focus drops
            streaks = filter_per_image(streaks, gaussian_kernels(width, odd(4 * span(p.width)[1] + 1)))
            rain = rain + on * intensity * streaks.clamp(0, 1)
        rain = rain.clamp(0, 1).to(x.device)
        out = 1 - (1 - x) * (1 - rain) if p.blend == "screen" else x + rain
        veil = veil.to(x.device)
        return finish(out * (1 - veil) + 0.9 * veil, dtype)
