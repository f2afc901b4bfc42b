"""No degradation: the clean image itself (a perceiver's class of undegraded images)."""
from __future__ import annotations

import torch

from vlir.core.components import Degradation

from ._common import Probability, QualityRange, as_float, finish
from .jpeg import jpeg_some


class Clean(Degradation):
    """The identity: returns the image unchanged (clamped to [0, 1], in its own dtype).

    Listed among ``data.degradations``, it teaches a perceiver a ``clean`` class, which a
    restorer can route to no restoration at all (``experts``' ``identity``), so that images
    with nothing to restore are left alone. With ``jpeg_probability`` > 0 an image is, with that
    probability, saved as a camera or photo site saves it: JPEG at a high ``jpeg`` quality, which
    is still clean (nothing a restorer should touch).
    """

    label = "clean"

    class Params(Degradation.Params):
        jpeg: QualityRange = (90, 98)
        jpeg_probability: Probability = 0.0

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "clean")
        if self.params.jpeg_probability > 0:  # drawn only when asked, so the plain class keeps its random stream
            x = jpeg_some(x, self.params.jpeg, self.params.jpeg_probability, generator)
        return finish(x, dtype)
