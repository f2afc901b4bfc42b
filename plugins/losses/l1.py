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
        if restored.shape != gt.shape:
            raise ValueError(f"l1: restored {tuple(restored.shape)} and gt {tuple(gt.shape)} differ in shape")
        return (restored - gt).abs().mean()
