"""Haze by the atmospheric scattering model with a synthetic depth map."""
from __future__ import annotations

import torch
from pydantic import Field

from vlir.core.components import Degradation

from ._common import NonNegativeRange, Unit, UnitRange, as_float, finish, rand, smooth_field, uniform


class Haze(Degradation):
    """``I = J t + A (1 - t)``, ``t = exp(-beta d)``.

    The depth ``d`` in [0, 1] mixes a vertical ramp (far at the top) with a smooth random field
    of ``cells`` x ``cells`` cells; ``beta`` and the airlight ``A`` are drawn per image. ``tint``
    colours the airlight (a per-channel offset up to that size: bluish skies, yellow smog); 0 keeps
    it grey.
    """

    label = "hazy"
    symmetry = "mirror"  # far (hazier) at the top: only a horizontal flip keeps that

    class Params(Degradation.Params):
        beta: NonNegativeRange = (0.6, 1.8)  # scattering coefficient (0: no haze)
        airlight: UnitRange = (0.7, 1.0)
        cells: int = Field(4, ge=1, le=256)
        ramp: Unit = 0.5  # weight of the vertical ramp in the depth map
        tint: Unit = 0.0

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "haze")
        n, _, h, w = x.shape
        beta = uniform(self.params.beta, n, generator).float().to(x.device)[:, None, None, None]
        air = uniform(self.params.airlight, n, generator).float().to(x.device)[:, None, None, None]
        field = smooth_field(n, h, w, generator, cells=max(1, self.params.cells), device=x.device)
        ramp = torch.linspace(1.0, 0.0, h, device=x.device)[None, None, :, None].expand(n, 1, h, w)
        a = min(max(self.params.ramp, 0.0), 1.0)
        d = a * ramp + (1 - a) * field
        t = torch.exp(-beta * d)
        if self.params.tint > 0:  # drawn only when asked, so untinted haze keeps its random stream
            air = air * (1 + self.params.tint * (2 * rand((n, 3, 1, 1), generator) - 1)).to(x.device)
        return finish(x * t + air * (1 - t), dtype)
