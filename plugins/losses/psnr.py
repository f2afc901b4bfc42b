"""PSNR loss (NAFNet / Restormer training): minus the batch's mean PSNR, up to a constant.

``10 / ln 10 * mean_i ln(mse_i + eps)``, with ``mse_i`` the mean squared error of image ``i``
over its channels and pixels: each image counts by its PSNR, so well-restored images keep
their weight (an MSE would let the worst images dominate). Images in [0, 1].
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field

from vlir.core.components import Loss


class PSNR(Loss):
    """``10 / ln 10 * mean_i ln(mean_chw (restored_i - gt_i)^2 + eps)`` (eps 1e-8)."""

    inputs: ClassVar[tuple[str, ...]] = ("restored", "gt")

    class Params(Loss.Params):
        eps: float = Field(1e-8, gt=0)

    def forward(self, restored: torch.Tensor, gt: torch.Tensor, **_) -> torch.Tensor:
        self.check_pair(restored, gt)
        mse = (restored - gt).pow(2).flatten(1).mean(1)
        return 10 / math.log(10) * torch.log(mse + self.params.eps).mean()
