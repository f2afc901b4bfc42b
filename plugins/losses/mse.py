"""MSE: mean squared error between the restored image and the ground truth."""
from __future__ import annotations

from typing import ClassVar

import torch

from vlir.core.components import Loss


class MSE(Loss):
    """``mean (restored - gt)^2``."""

    inputs: ClassVar[tuple[str, ...]] = ("restored", "gt")

    class Params(Loss.Params):
        pass

    def forward(self, restored: torch.Tensor, gt: torch.Tensor, **_) -> torch.Tensor:
        self.check_pair(restored, gt)
        return torch.nn.functional.mse_loss(restored, gt)
