"""No degradation: the clean image itself (a perceiver's class of undegraded images)."""
from __future__ import annotations

import torch

from vlir.core.components import Degradation

from ._common import as_float, finish


class Clean(Degradation):
    """The identity: returns the image unchanged (clamped to [0, 1], in its own dtype).

    Listed among ``data.degradations``, it teaches a perceiver a ``clean`` class, which a
    restorer can route to no restoration at all (``experts``' ``identity``), so that images
    with nothing to restore are left alone.
    """

    label = "clean"

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "clean")
        return finish(x, dtype)
