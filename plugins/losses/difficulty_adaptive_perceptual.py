"""Perceive-IR difficulty-adaptive contrastive perceptual loss on VGG16 features.

Per sample, over taps j = relu1_2, relu2_2, relu3_1, relu3_3 with weights w_j, and
d = mean L1 distance of the feature maps::

    L = sum_j w_j d(R, GT) / max(eps, lq_weight * d(R, LQ) + sum_k m_k w_k d(R, P_k))

averaged over the batch. P_k are proxy (medium-quality) restorations, m_k their per-sample
masks, and w_k = hard_weight if PSNR(P_k, GT) <= the model's probe mean PSNR (a proxy no
better than the model: a hard negative) else easy_weight. The probe PSNR is the only state
(buffer ``probe_psnr``, 0 dB until the trainer calls ``update_probe``: every proxy is then
easy). VGG16 weights are read from a local file and kept out of the state dict.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import torch
from pydantic import Field, field_validator

from vlir.core.components import Loss

from ._vgg import TAPS, VGGTaps


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR in dB of images in [0, 1] (both clamped to [0, 1])."""
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference."""
    return (a - b).abs().flatten(1).mean(1)


class DifficultyAdaptivePerceptual(Loss):
    """Perceive-IR's difficulty-adaptive perceptual loss (see module doc)."""

    inputs: ClassVar[tuple[str, ...]] = ("restored", "gt", "lq", "proxies", "proxy_masks")
    optional_inputs: ClassVar[tuple[str, ...]] = ("proxies", "proxy_masks")  # None: no proxies / all ones

    class Params(Loss.Params):
        lq_weight: float = Field(2.0, ge=0)
        hard_weight: float = Field(1.25, ge=0)
        easy_weight: float = Field(0.75, ge=0)
        eps: float = Field(1e-6, gt=0)
        layer_weights: list[float] = [1 / 12, 1 / 6, 1 / 3, 1.0]  # relu1_2, relu2_2, relu3_1, relu3_3
        vgg_weights: str | None = None  # local vgg16-397923af.pth or .safetensors; None: torch hub cache
        allow_random_vgg: bool = False  # tests only: random VGG (with a warning) when no weights

        @field_validator("layer_weights")
        @classmethod
        def _four(cls, v: list[float]) -> list[float]:
            if len(v) != len(TAPS):
                raise ValueError(f"layer_weights needs {len(TAPS)} values ({', '.join(TAPS)}), got {len(v)}")
            return v

    def __init__(self, params=None, **overrides):
        super().__init__(params, **overrides)
        self.vgg = VGGTaps(tuple(TAPS), weights=self.params.vgg_weights,
                           allow_random=self.params.allow_random_vgg,
                           owner="difficulty_adaptive_perceptual")
        self.register_buffer("probe_psnr", torch.zeros(()))

    def update_probe(self, mean_psnr: float) -> None:
        """Set the model's current mean PSNR on the probe set (dB); called by the trainer each epoch."""
        v = float(mean_psnr)
        if not math.isfinite(v):
            raise ValueError(f"difficulty_adaptive_perceptual: probe mean PSNR must be finite, got {mean_psnr}")
        self.probe_psnr.fill_(v)

    def proxy_weights(self, proxies: Sequence[torch.Tensor], gt: torch.Tensor) -> torch.Tensor:
        """[B, K] difficulty weights: hard_weight where PSNR(P_k, GT) <= probe_psnr else easy_weight."""
        if not proxies:
            return gt.new_zeros(gt.shape[0], 0)
        with torch.no_grad():
            p = torch.stack([psnr(pk.detach().float(), gt.detach().float()) for pk in proxies], dim=1)
            hard = p <= self.probe_psnr.to(p.device)
            return torch.where(hard, p.new_tensor(self.params.hard_weight),
                               p.new_tensor(self.params.easy_weight)).to(gt.dtype)

    def forward(self, restored: torch.Tensor, gt: torch.Tensor, lq: torch.Tensor,
                proxies: Sequence[torch.Tensor] | None = None, proxy_masks: torch.Tensor | None = None,
                **_: Any) -> torch.Tensor:
        if proxies is None:
            proxies = []
        elif torch.is_tensor(proxies):  # one proxy [B, 3, H, W] or a stack [B, K, 3, H, W]
            proxies = [proxies] if proxies.dim() == 4 else list(proxies.unbind(1))
        proxies = list(proxies)
        b = restored.shape[0]
        for name, t in [("gt", gt), ("lq", lq)] + [(f"proxies[{k}]", p) for k, p in enumerate(proxies)]:
            if t.shape != restored.shape:
                raise ValueError(f"difficulty_adaptive_perceptual: {name} {tuple(t.shape)} does not match "
                                 f"restored {tuple(restored.shape)}")
        k = len(proxies)
        if proxy_masks is None:
            masks = restored.new_ones(b, k)
        else:
            masks = torch.as_tensor(proxy_masks).to(device=restored.device, dtype=restored.dtype)
            if masks.shape != (b, k):
                raise ValueError(f"difficulty_adaptive_perceptual: proxy_masks {tuple(masks.shape)} must be "
                                 f"[batch, n_proxies] = [{b}, {k}]")
        coef = masks * self.proxy_weights(proxies, gt).to(masks.dtype)  # [B, K]

        f_r = self.vgg(restored)
        with torch.no_grad():
            f_o = self.vgg(torch.cat([gt, lq, *proxies], dim=0).to(restored.dtype))
        total = restored.new_zeros(b)
        for w, fr, fo in zip(self.params.layer_weights, f_r, f_o):
            parts = fo.split(b, dim=0)  # gt, lq, proxies...
            num = _dist(fr, parts[0])
            den = self.params.lq_weight * _dist(fr, parts[1])
            for i in range(k):
                den = den + coef[:, i] * _dist(fr, parts[2 + i])
            total = total + w * num / den.clamp_min(self.params.eps)
        return total.mean()

    def example_inputs(self, size: tuple[int, int] = (64, 64), batch: int = 2) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)
        img = lambda: torch.rand(batch, 3, *size, generator=g)  # noqa: E731
        return {"restored": img(), "gt": img(), "lq": img(), "proxies": [img(), img()],
                "proxy_masks": torch.ones(batch, 2)}
