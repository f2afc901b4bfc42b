"""Synthetic low light: darkening by gamma and gain, then shot and read noise."""
from __future__ import annotations

import torch

from vlir.core.components import Degradation

from ._common import NonNegativeRange, PositiveRange, Unit, UnitRange, as_float, finish, rand, randn, span, uniform


class LowLight(Degradation):
    """``y = scale * x ** gamma``, then noise of variance ``shot * y + read ** 2`` (all per image).

    ``cast`` gives the dark image a colour cast (per-channel gains ``1 + U(-cast, cast)``, as a
    camera's white balance fails in low light); 0 keeps the colours. ``gain`` is the camera's
    amplification after the sensor (ISO): it brightens the dark image and its noise alike.
    """

    label = "low-light"

    class Params(Degradation.Params):
        gamma: PositiveRange = (1.5, 2.5)
        scale: UnitRange = (0.1, 0.5)
        shot: NonNegativeRange = (0.0, 0.01)  # signal-dependent variance per unit intensity
        read: NonNegativeRange = (0.0, 0.01)  # signal-independent std, [0, 1] scale
        cast: Unit = 0.0
        gain: PositiveRange = 1.0

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "low_light")
        n = x.shape[0]

        def draw(v):
            return uniform(v, n, generator).float().to(x.device)[:, None, None, None]

        gamma, scale, shot, read = draw(self.params.gamma), draw(self.params.scale), \
            draw(self.params.shot), draw(self.params.read)
        y = scale * x.clamp(0, 1) ** gamma
        if self.params.cast > 0:  # drawn only when asked, so the plain model keeps its random stream
            y = y * (1 + self.params.cast * (2 * rand((n, 3, 1, 1), generator) - 1)).to(x.device)
        std = (shot * y + read ** 2).sqrt()
        out = y + std * randn(x.shape, generator, x.device)
        if span(self.params.gain) != (1.0, 1.0):
            out = out * draw(self.params.gain)
        return finish(out, dtype)
