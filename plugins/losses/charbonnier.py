"""Charbonnier loss: a smooth L1, ``mean sqrt((restored - gt)^2 + eps^2)``."""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from vlir.core.components import Loss


class Charbonnier(Loss):
    """``mean sqrt((restored - gt)^2 + eps^2)`` (eps 1e-3)."""

    inputs: ClassVar[tuple[str, ...]] = ("restored", "gt")

    class Params(Loss.Params):
        eps: float = Field(1e-3, gt=0)

    def forward(self, restored: torch.Tensor, gt: torch.Tensor, **_) -> torch.Tensor:
        self.check_pair(restored, gt)
        eps = self.params.eps
        return torch.sqrt((restored - gt) ** 2 + eps * eps).mean()
