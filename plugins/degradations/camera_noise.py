"""Real camera noise: Poisson-Gaussian noise on raw Bayer samples, through a simple in-camera pipeline."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from vlir.core.components import Degradation

from ._common import (PositiveRange, Probability, QualityRange, as_float, finish, linear_to_srgb, log_uniform, randn,
                      srgb_to_linear, uniform)
from .jpeg import jpeg_some

# bilinear demosaicing as a normalised convolution of each channel's samples
_BILINEAR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])


def bayer_masks(h: int, w: int, device=None) -> torch.Tensor:
    """RGGB colour-filter masks [3, H, W] (1 where the sensor samples that channel)."""
    m = torch.zeros(3, h, w, device=device)
    m[0, 0::2, 0::2] = 1
    m[1, 0::2, 1::2] = 1
    m[1, 1::2, 0::2] = 1
    m[2, 1::2, 1::2] = 1
    return m


def demosaic(raw: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaic of raw mosaics [B, 1, H, W] with ``masks`` [3, H, W] -> [B, 3, H, W]."""
    h, w = raw.shape[-2:]
    k = _BILINEAR.to(raw)[None, None]
    mode = "reflect" if h > 1 and w > 1 else "replicate"

    def conv(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (1, 1, 1, 1), mode=mode)
        return F.conv2d(t.reshape(-1, 1, h + 2, w + 2), k).reshape(-1, 3, h, w)

    return conv(raw * masks[None]) / conv(masks[None]).clamp_min(1e-6)


class CameraNoise(Degradation):
    """Signal-dependent, channel-correlated sensor noise as a camera makes it.

    Per image (after Brooks et al., "Unprocessing Images for Learned Raw Denoising", CVPR 2019):
    the sRGB image is linearised (gamma ``gamma``), sampled through an RGGB Bayer filter, given
    Poisson-Gaussian noise of variance ``shot * x + read ** 2`` on each raw sample (the
    heteroscedastic Gaussian approximation; ``shot`` log-uniform, ``read`` log-uniform or, when
    not given, from Brooks' fit ``log read = 2.18 log shot + 1.2 + N(0, 0.26)``), demosaiced
    bilinearly (which spreads each sample's noise over neighbouring pixels and channels),
    re-encoded with the gamma and, with probability ``jpeg_probability``, JPEG-compressed at a
    quality from ``jpeg``.
    """

    label = "noisy"

    class Params(Degradation.Params):
        shot: PositiveRange = (1e-4, 1.2e-2)  # drawn log-uniformly: > 0
        read: PositiveRange | None = None
        gamma: PositiveRange = 2.2
        jpeg: QualityRange = (60, 95)
        jpeg_probability: Probability = 0.5

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x, dtype = as_float(img, "camera_noise")
        n, _, h, w = x.shape
        p = self.params

        def col(t: torch.Tensor) -> torch.Tensor:
            return t.float().to(x.device)[:, None, None, None]

        shot = log_uniform(p.shot, n, generator)
        if p.read is None:
            read = torch.exp(2.18 * shot.log() + 1.2 + 0.26 * randn((n,), generator).double())
        else:
            read = log_uniform(p.read, n, generator)
        gamma = col(uniform(p.gamma, n, generator))
        masks = bayer_masks(h, w, x.device)
        raw = (srgb_to_linear(x, gamma) * masks[None]).sum(1, keepdim=True)
        std = (col(shot) * raw + col(read) ** 2).sqrt()
        raw = (raw + std * randn(raw.shape, generator, x.device)).clamp(0, 1)
        out = linear_to_srgb(demosaic(raw, masks), gamma).clamp(0, 1)
        return finish(jpeg_some(out, p.jpeg, p.jpeg_probability, generator), dtype)
