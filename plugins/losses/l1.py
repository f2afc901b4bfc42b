"""L1: mean absolute error between the restored image and the ground truth."""
from __future__ import annotations

from typing import ClassVar

import torch

from vlir.core.components import Loss


class L1(Loss):
    """``mean |restored - gt|``."""

    inputs: ClassVar[tuple[str, ...]] = ("restored", "gt")

    class Params(Loss.Params):
        pass

    def forward(self, restored: torch.Tensor, gt: torch.Tensor, **_) -> torch.Tensor:
        self.check_pair(restored, gt)
        return (restored - gt).abs().mean()
